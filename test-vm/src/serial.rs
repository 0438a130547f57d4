//! Reading the guest's output files as QEMU writes them, and recognising on the serial
//! console what ends a boot early.
//!
//! QEMU writes both channels (the serial console and the agent's virtio-serial port) to plain
//! files in the run's work directory. Files, not sockets: nothing is lost if the guest writes
//! before the harness looks, and the files are the run's record afterwards.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Follows a file that another process appends to, returning complete lines.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
    partial: Vec<u8>,
    bytes: u64,
}

impl Tail {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned(), file: None, partial: Vec::new(), bytes: 0 }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The complete lines appended since the last call (without their newline). A file that
    /// does not exist yet has no lines: QEMU creates it when it starts.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else { return Ok(Vec::new()) };
        let start = self.partial.len();
        file.read_to_end(&mut self.partial)?;
        self.bytes += (self.partial.len() - start) as u64;
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(Vec::new()) };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        Ok(complete[..complete.len() - 1].split(|&b| b == b'\n').map(clean).collect())
    }

    /// Whatever is left without a final newline (the last words before a hard stop).
    pub fn flush_partial(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        Some(clean(&std::mem::take(&mut self.partial)))
    }
}

/// Lossy UTF-8 without `\r` and terminal escape sequences (systemd colours `[FAILED]`).
pub fn clean(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte(0x40..=0x7e)
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` lines of a log file, for failure reports.
pub fn tail_lines(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    // Read at most the last 64 KiB: enough for 60 console lines, cheap for a huge log.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let lines: Vec<String> = bytes.split(|&b| b == b'\n').map(clean).collect();
    let lines = if lines.last().is_some_and(String::is_empty) { &lines[..lines.len() - 1] } else { &lines[..] };
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a serial console line means to the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The kernel's banner: stage 0 passed.
    KernelBanner,
    /// The boot cannot succeed any more: fail now, not at the timeout.
    Fatal(String),
    /// The boot will fail, but the agent may still say why in more detail (a failed
    /// cloud-init module: the agent's `cloud-init` stage quotes the failing command's own
    /// error): fail with this message only if no verdict arrives within a grace period.
    Doomed(String),
}

/// Where the guest's kernel is in its own boot, read off its console. Until it starts init,
/// a healthy kernel keeps printing; the one silent stretch is unpacking a large initramfs
/// (hundreds of MB in netboot mode: tens of seconds under TCG).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum KernelPhase {
    /// Before init, and not unpacking the initramfs.
    #[default]
    Booting,
    /// `Trying to unpack rootfs image as initramfs...` until `Freeing initrd memory`.
    Unpacking,
    /// `Run /init as init process` (or another init): the kernel's own boot is over.
    Init,
}

impl KernelPhase {
    /// The phase after one more console line.
    pub fn after(self, line: &str) -> KernelPhase {
        match self {
            KernelPhase::Init => KernelPhase::Init,
            // The kernel's own line (KERN_INFO: a `loglevel=` below 7 hides it), or nodeforge's
            // /init speaking.
            _ if line.contains("Run ") && line.contains(" as init process") => KernelPhase::Init,
            _ if line.starts_with("nodeforge-initramfs: ") => KernelPhase::Init,
            _ if line.contains("Trying to unpack rootfs image as initramfs") => KernelPhase::Unpacking,
            _ if line.contains("Freeing initrd memory") => KernelPhase::Booting,
            phase => phase,
        }
    }
}

/// Units the agent's stages depend on: their failing to start is final for the run.
/// systemd 252 prints `Failed to start containerd.service - <description>.` (status unit
/// format `combined`) and `Dependency failed for ...` for units pulled down with one.
const NEEDED_UNITS: [&str; 9] = [
    "containerd.service",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-config.service",
    "cloud-final.service",
    "nodeforge-agent.service",
    // nodeforge's first-boot image import (builder/src/render/preload.rs, private there).
    "nodeforge-preload-images.service",
    "systemd-modules-load.service",
    "systemd-sysctl.service",
];

/// Lines that mean the boot is over. Matched as substrings of the cleaned line.
const FATAL: [(&str, &str); 6] = [
    ("Kernel panic - not syncing", "kernel panic"),
    ("nodeforge-initramfs: FATAL", "the initramfs gave up"),
    ("You are in emergency mode", "systemd entered emergency mode"),
    ("Entering emergency mode", "systemd entered emergency mode"),
    ("Give root password for maintenance", "systemd entered emergency mode"),
    // What systemd's emergency shell prints where root has no password (Debian images).
    ("Cannot open access to console, the root account is locked", "systemd entered emergency mode"),
];

pub fn classify(line: &str) -> Option<Signal> {
    if line.contains("Linux version ") {
        return Some(Signal::KernelBanner);
    }
    for (pattern, what) in FATAL {
        if line.contains(pattern) {
            return Some(Signal::Fatal(format!("{what}: {}", line.trim())));
        }
    }
    for prefix in ["Failed to start ", "Dependency failed for "] {
        if let Some(at) = line.find(prefix) {
            // The unit name comes first, with its suffix; a description may follow " - ".
            let named = &line[at + prefix.len()..];
            if let Some(needed) = NEEDED_UNITS.iter().find(|u| named.starts_with(*u)) {
                let msg = format!("{needed} failed: {}", line.trim());
                // A failed cloud-init stage leaves the agent running: it reports the cause.
                return Some(if needed.starts_with("cloud-") { Signal::Doomed(msg) } else { Signal::Fatal(msg) });
            }
        }
    }
    // cloud-init 22.4 logs a failing config module at WARNING, which its console handler
    // prints: `util.py[WARNING]: Running module locale (<module ...>) failed`. Its final
    // message has no error wording, so this line is the early sign; `cloud-init status`
    // (the agent's check) is the authoritative one, and says more.
    if line.contains("[WARNING]: Running module ") && line.trim_end().ends_with("failed") {
        return Some(Signal::Doomed(format!("cloud-init module failed: {}", line.trim())));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_banner_and_fatal_lines() {
        let doomed = |l: &str| match classify(l) {
            Some(Signal::Doomed(m)) => m,
            other => panic!("{l}: {other:?}"),
        };
        let banner = "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)";
        assert_eq!(classify(banner), Some(Signal::KernelBanner));
        let fatal = |l: &str| match classify(l) {
            Some(Signal::Fatal(m)) => m,
            other => panic!("{l:?} gave {other:?}"),
        };
        assert!(
            fatal("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs").starts_with("kernel panic")
        );
        assert!(fatal("nodeforge-initramfs: FATAL: no root device LABEL=root").contains("initramfs"));
        assert!(fatal("You are in emergency mode. After logging in, type \"journalctl -xb\"").contains("emergency"));
        let failed = "[FAILED] Failed to start containerd.service - containerd container runtime.";
        assert!(
            fatal(&clean(format!("\x1b[0;1;31m{failed}\x1b[0m").as_bytes())).starts_with("containerd.service failed")
        );
        assert!(
            fatal("[DEPEND] Dependency failed for nodeforge-agent.service - nodeforge test agent").contains("agent")
        );
        let ci = "[   30.1] cloud-init[412]: 2026-11-27 12:00:00,000 - util.py[WARNING]: Running module locale \
                  (<module 'cloudinit.config.cc_locale' from '/usr/lib/...'>) failed";
        assert!(doomed(ci).starts_with("cloud-init module failed"));
    }

    #[test]
    fn follows_the_kernels_own_boot_to_init() {
        let lines = [
            "[    0.91] VFS: Dquot-cache hash table entries: 512 (order 0, 4096 bytes)",
            "[    1.59] Trying to unpack rootfs image as initramfs...",
            "[    2.59] clocksource: Switched to clocksource tsc",
            "[   31.56] Freeing initrd memory: 437904K",
            "[   32.67] Run /init as init process",
            "[   33.00] Freeing initrd memory: 1K",
        ];
        assert_eq!(KernelPhase::Booting.after("nodeforge-initramfs: switching root"), KernelPhase::Init);
        let phases: Vec<KernelPhase> = lines
            .iter()
            .scan(KernelPhase::default(), |p, l| {
                *p = p.after(l);
                Some(*p)
            })
            .collect();
        use KernelPhase::*;
        assert_eq!(phases, [Booting, Unpacking, Unpacking, Booting, Init, Init]);
    }

    #[test]
    fn ignores_noise() {
        assert_eq!(classify("[FAILED] Failed to start ssh.service - OpenBSD Secure Shell server."), None);
        assert_eq!(classify("Cloud-init v. 22.4.2 finished at Thu, 27 Nov 2026. Datasource DataSourceNoCloud."), None);
        assert_eq!(classify("[  OK  ] Started containerd.service - containerd container runtime."), None);
    }

    #[test]
    fn tail_returns_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut t = Tail::new(&p);
        assert!(t.poll().unwrap().is_empty());
        std::fs::write(&p, b"one\r\ntw").unwrap();
        assert_eq!(t.poll().unwrap(), ["one"]);
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"o\nthree").unwrap();
        assert_eq!(t.poll().unwrap(), ["two"]);
        assert_eq!(t.flush_partial().as_deref(), Some("three"));
        assert_eq!(t.bytes(), 14);
        assert_eq!(tail_lines(&p, 2), "two\nthree");
    }
}
