//! Choosing between KVM and TCG.
//!
//! Where `/dev/kvm` opens but nested virtualisation is broken, a KVM guest prints nothing
//! and hangs, and `-cpu host` can abort QEMU outright (vm-facts). `auto` therefore treats KVM
//! as a probe: the first attempt must show serial output within a short grace period, or it is
//! killed and the boot starts again under TCG. The decision is a pure function of elapsed time,
//! bytes seen and whether QEMU is still running, so it is tested without a VM.
//!
//! Waiting for the kernel's first line costs the whole grace period (8 s) on every boot of a
//! machine whose KVM is broken. So before that, `auto` boots only the firmware under KVM
//! (`qemu::probe_kvm`): SeaBIOS logs its power-on self test to the debug port and
//! ends it with `Booting from ...` in a fraction of a second under a working KVM (0.7 s even
//! under TCG here), while a broken nested KVM stops half-way (here after `Scan for VGA option
//! rom`). [`firmware_probe`] decides on that log within [`KVM_PROBE_LIMIT`].

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// KVM if /dev/kvm is usable and the guest starts; otherwise TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `-cpu host` is what works under KVM elsewhere; TCG cannot pass a host CPU through, and
    /// `max` gives it every feature it emulates.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the current user can open `/dev/kvm` read-write, which is what QEMU needs.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The accelerators to try, in order.
pub fn plan(choice: AccelChoice, kvm_usable: bool) -> Vec<Accel> {
    match (choice, kvm_usable) {
        (AccelChoice::Auto, true) => vec![Accel::Kvm, Accel::Tcg],
        (AccelChoice::Auto, false) | (AccelChoice::Tcg, _) => vec![Accel::Tcg],
        (AccelChoice::Kvm, _) => vec![Accel::Kvm],
    }
}

/// The verdict on an attempt that has a fallback after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing yet, still within the grace period.
    Wait,
    /// The guest printed something: this accelerator works, stop probing.
    Started,
    /// Kill this attempt and try the next accelerator, for this reason.
    GiveUp(String),
}

pub fn probe(elapsed: Duration, serial_bytes: u64, qemu_exited: bool, grace: Duration) -> Probe {
    if serial_bytes > 0 {
        Probe::Started
    } else if qemu_exited {
        Probe::GiveUp("QEMU exited before the guest printed anything".into())
    } else if elapsed >= grace {
        Probe::GiveUp(format!("no serial output within {} s", grace.as_secs_f32()))
    } else {
        Probe::Wait
    }
}

/// How long the firmware-only KVM guest has to finish its power-on self test.
pub const KVM_PROBE_LIMIT: Duration = Duration::from_millis(1500);

/// SeaBIOS's debug-port lines that end its power-on self test: it tries the boot devices
/// (there are none in the probe, so it goes on to say it found none).
const POST_DONE: [&str; 2] = ["Booting from ", "No bootable device"];

/// The verdict on the firmware-only KVM guest, from its debug-port log so far.
pub fn firmware_probe(elapsed: Duration, firmware_log: &str, qemu_exited: bool, limit: Duration) -> Probe {
    if POST_DONE.iter().any(|m| firmware_log.contains(m)) {
        Probe::Started
    } else if qemu_exited {
        Probe::GiveUp("QEMU exited before the firmware finished under KVM".into())
    } else if elapsed >= limit {
        let last = firmware_log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("(nothing)");
        Probe::GiveUp(format!(
            "the firmware did not finish its self test under KVM within {} s (last: {})",
            limit.as_secs_f32(),
            last.trim()
        ))
    } else {
        Probe::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_tries_kvm_first_only_when_usable_or_asked() {
        assert_eq!(plan(AccelChoice::Auto, true), [Accel::Kvm, Accel::Tcg]);
        assert_eq!(plan(AccelChoice::Auto, false), [Accel::Tcg]);
        assert_eq!(plan(AccelChoice::Kvm, false), [Accel::Kvm]);
        assert_eq!(plan(AccelChoice::Tcg, true), [Accel::Tcg]);
    }

    #[test]
    fn probe_gives_up_on_silence_or_early_exit_and_not_before() {
        let grace = Duration::from_secs(6);
        let s = Duration::from_secs;
        // A fake clock and a fake serial byte count, as the run loop would feed them.
        assert_eq!(probe(s(0), 0, false, grace), Probe::Wait);
        assert_eq!(probe(s(5), 0, false, grace), Probe::Wait);
        assert!(matches!(probe(s(6), 0, false, grace), Probe::GiveUp(m) if m.contains("no serial output within 6")));
        assert!(matches!(probe(s(1), 0, true, grace), Probe::GiveUp(m) if m.contains("exited")));
        assert_eq!(probe(s(1), 12, false, grace), Probe::Started);
        // Output wins over a later exit: a guest that printed and then died is not a KVM problem.
        assert_eq!(probe(s(9), 12, true, grace), Probe::Started);
    }

    #[test]
    fn firmware_probe_passes_on_the_end_of_post_and_gives_up_at_the_limit() {
        let limit = Duration::from_millis(1500);
        let ms = Duration::from_millis;
        // What this machine's broken nested KVM leaves in the log, and what TCG gets to.
        let stuck = "SeaBIOS (version 1.16.2)\nRunning on KVM\nScan for VGA option rom\n";
        let done = format!("{stuck}Booting from Hard Disk...\n");
        assert_eq!(firmware_probe(ms(200), stuck, false, limit), Probe::Wait);
        assert_eq!(firmware_probe(ms(300), &done, false, limit), Probe::Started);
        assert_eq!(firmware_probe(ms(300), "No bootable device.\n", false, limit), Probe::Started);
        assert!(matches!(firmware_probe(ms(1500), stuck, false, limit),
            Probe::GiveUp(m) if m.contains("within 1.5 s") && m.contains("Scan for VGA option rom")));
        assert!(matches!(firmware_probe(ms(100), "", true, limit), Probe::GiveUp(m) if m.contains("exited")));
        assert!(matches!(firmware_probe(ms(1600), "", false, limit), Probe::GiveUp(m) if m.contains("(nothing)")));
    }
}
