//! The QEMU command line ([`Guest`]) and the QEMU process ([`Qemu`]), which is always reaped.
//!
//! Reaping, layer by layer (unsafe code is forbidden in this workspace, so no `pre_exec`):
//! * [`Qemu`] kills and waits for the process in `Drop`: success, failure, timeout, an error
//!   returned with `?`, and a panic of the harness (unwinding runs destructors);
//! * SIGINT/SIGTERM/SIGHUP set a flag the run loop polls every few milliseconds, so a signal
//!   ends the run through that same `Drop`;
//! * `kill -9` of the harness runs no code at all: QEMU is started through util-linux
//!   `setpriv --pdeathsig KILL`, which sets `PR_SET_PDEATHSIG` and then execs QEMU, so the
//!   kernel kills QEMU when the harness dies. The death signal is tied to the *thread* that
//!   spawned QEMU, so spawn from a thread that outlives the VM (the binary uses its main
//!   thread). A harness killed in the microseconds between fork and `prctl` could still leak
//!   a QEMU; nothing short of pre_exec closes that window.
//! * QEMU runs in its own process group, so a terminal's Ctrl-C reaches only the harness,
//!   which then stops QEMU in order instead of racing it.
//!
//! The command line that does this is [`crate::supervise::command`], shared with the control
//! plane's components.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use anyhow::{Context, Result};

use crate::accel::{self, Accel, Probe};
use crate::protocol::AGENT_PORT;
use crate::supervise;

/// A VM to boot: what `qemu-system-x86_64` is given.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The per-run copy-on-write disk (qcow2); `None` in netboot mode.
    pub disk: Option<PathBuf>,
    /// The cloud-init NoCloud seed, attached read-only.
    pub seed: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub serial_log: PathBuf,
    pub agent_log: PathBuf,
}

impl Guest {
    pub fn args(&self, accel: Accel) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&dyn AsRef<OsStr>]| a.extend(parts.iter().map(|p| p.as_ref().to_owned()));
        push(&[&"-machine", &"q35", &"-accel", &accel.as_str(), &"-cpu", &accel.cpu()]);
        push(&[&"-m", &self.memory_mib.to_string(), &"-smp", &self.cpus.to_string()]);
        // No default devices, no display, no monitor: every device below is deliberate.
        // `-no-reboot` with the guest's `panic=-1` turns a kernel panic into a QEMU exit.
        push(&[&"-nodefaults", &"-no-user-config", &"-display", &"none", &"-no-reboot"]);
        push(&[&"-kernel", &self.kernel, &"-initrd", &self.initrd, &"-append", &self.cmdline]);
        push(&[&"-chardev", &file_chardev("serial0", &self.serial_log), &"-serial", &"chardev:serial0"]);
        if let Some(disk) = &self.disk {
            // cache=unsafe: the overlay is thrown away after the run, so flushes buy nothing.
            let drive = drive("disk0", disk, "qcow2", "cache=unsafe");
            push(&[&"-drive", &drive, &"-device", &"virtio-blk-pci,drive=disk0"]);
        }
        if let Some(seed) = &self.seed {
            let drive = drive("seed0", seed, "raw", "readonly=on");
            push(&[&"-drive", &drive, &"-device", &"virtio-blk-pci,drive=seed0"]);
        }
        push(&[&"-netdev", &"user,id=net0", &"-device", &"virtio-net-pci,netdev=net0"]);
        push(&[&"-device", &"virtio-serial-pci,id=vser0"]);
        push(&[&"-chardev", &file_chardev("agent0", &self.agent_log)]);
        push(&[&"-device", &format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}")]);
        a
    }
}

/// QEMU option values are comma-separated; a comma inside a path is written doubled.
fn escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

fn file_chardev(id: &str, path: &Path) -> String {
    format!("file,id={id},path={}", escape(path))
}

fn drive(id: &str, path: &Path, format: &str, extra: &str) -> String {
    format!("if=none,id={id},file={},format={format},{extra}", escape(path))
}

/// Boot only the firmware under KVM (no kernel, no disk, 64 MiB) and decide with
/// [`accel::firmware_probe`] whether KVM runs guests here; `Err` carries the reason it does not.
/// Takes at most [`accel::KVM_PROBE_LIMIT`] plus QEMU's start and kill. `work` holds the log.
pub fn probe_kvm(program: &OsStr, work: &Path) -> std::result::Result<(), String> {
    let log = work.join("kvm-probe-firmware.log");
    let stderr_log = work.join("kvm-probe-qemu.log");
    let mut args: Vec<OsString> = Vec::new();
    for a in ["-machine", "q35", "-accel", "kvm", "-cpu", Accel::Kvm.cpu(), "-m", "64", "-smp", "1"] {
        args.push(a.into());
    }
    for a in ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"] {
        args.push(a.into());
    }
    // SeaBIOS writes its log to the debug port 0x402.
    args.extend(["-chardev".into(), file_chardev("fw0", &log).into()]);
    args.extend(["-device".into(), "isa-debugcon,iobase=0x402,chardev=fw0".into()]);
    let mut vm = Qemu::spawn(program, &args, &stderr_log).map_err(|e| format!("{e:#}"))?;
    let started = std::time::Instant::now();
    loop {
        let exited = vm.try_wait().map_err(|e| format!("{e:#}"))?.is_some();
        let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        match accel::firmware_probe(started.elapsed(), &text, exited, accel::KVM_PROBE_LIMIT) {
            Probe::Wait => std::thread::sleep(std::time::Duration::from_millis(20)),
            Probe::Started => return Ok(()),
            Probe::GiveUp(reason) => {
                let qemu_said = crate::serial::tail_lines(&stderr_log, 3);
                return Err(if qemu_said.is_empty() { reason } else { format!("{reason}; QEMU: {qemu_said}") });
            }
        }
    }
}

/// Reports print QEMU's command line through this (it lives with the other child-process code).
pub use crate::supervise::shell_line;

/// A running QEMU, killed and reaped when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    exited: Option<ExitStatus>,
}

impl Qemu {
    /// Start `program args` under `setpriv --pdeathsig KILL`, stdin from /dev/null, stdout
    /// and stderr into `stderr_log` (QEMU's own complaints: a failed accelerator, a bad option).
    pub fn spawn(program: &OsStr, args: &[OsString], stderr_log: &Path) -> Result<Self> {
        File::create(stderr_log).with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = supervise::command(program);
        cmd.args(args);
        supervise::log_to(&mut cmd, stderr_log)?;
        let child = cmd.spawn().with_context(|| {
            format!("starting {} through setpriv (util-linux) failed", Path::new(program).display())
        })?;
        Ok(Self { child, exited: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once QEMU has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("waiting for QEMU")?;
        }
        Ok(self.exited)
    }

    /// SIGKILL and reap. QEMU keeps no state worth a clean shutdown: the disk is a throwaway
    /// overlay and the logs are written as they come.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Create the run's copy-on-write disk: a qcow2 whose backing file is the built image, so the
/// image is only ever read and every run starts from the same bytes.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let base = base.canonicalize().with_context(|| format!("the disk image {}", base.display()))?;
    let format = image_format(&base)?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .context("running qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        anyhow::bail!(
            "qemu-img create for {} failed ({}): {}",
            overlay.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `qcow2` if the file starts with the qcow magic, else `raw`: by content, not by file name.
pub fn image_format(path: &Path) -> Result<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut magic).with_context(|| format!("reading {}", path.display()))?;
    Ok(if n == 4 && magic == *b"QFI\xfb" { "qcow2" } else { "raw" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_devices_the_guest_needs() {
        let g = Guest {
            kernel: "/k/vmlinuz".into(),
            initrd: "/w/initrd.img".into(),
            cmdline: "console=ttyS0 root=LABEL=root rw panic=-1".into(),
            disk: Some("/w/run,1.qcow2".into()),
            seed: Some("/a/seed.img".into()),
            memory_mib: 2048,
            cpus: 2,
            serial_log: "/w/serial.log".into(),
            agent_log: "/w/agent.jsonl".into(),
        };
        let line = shell_line(OsStr::new("qemu-system-x86_64"), &g.args(Accel::Tcg));
        for want in [
            "-machine q35 -accel tcg -cpu max -m 2048 -smp 2",
            "-no-reboot",
            "-append 'console=ttyS0 root=LABEL=root rw panic=-1'",
            "-chardev file,id=serial0,path=/w/serial.log -serial chardev:serial0",
            "file=/w/run,,1.qcow2,format=qcow2,cache=unsafe",
            "file=/a/seed.img,format=raw,readonly=on",
            "virtio-net-pci,netdev=net0",
            "virtserialport,bus=vser0.0,chardev=agent0,name=org.nodeforge.agent",
        ] {
            assert!(line.contains(want), "{want:?} missing from {line}");
        }
        assert!(shell_line(OsStr::new("q"), &g.args(Accel::Kvm)).contains("-accel kvm -cpu host"));
    }
}
