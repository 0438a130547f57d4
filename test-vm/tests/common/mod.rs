//! A fake guest for the harness's own tests: Debian's kernel, busybox-static as the whole
//! userland, and a shell script standing in for `nodeforge-agent`. It boots in a few seconds
//! under TCG and speaks the agent protocol over the real virtio-serial port, so the harness
//! is tested end to end without a node image.
//!
//! The fake `/init` loads virtio_console (and virtio_blk) from the kernel package, does what
//! nodeforge's initramfs AGENT HOOK does (copy `/nodeforge/*` to `/run/nodeforge/`, units to
//! `/run/systemd/system/`), scribbles on the disk (so copy-on-write is tested for real) and
//! runs the agent. The agent's behaviour is a [`Scenario`].

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nodeforge::overlay::{Content, Origin, Overlay};

pub mod apiserver;

/// Inputs fetched once per test binary by `fixtures/fake-guest-inputs.sh`.
pub fn inputs() -> &'static Path {
    static INPUTS: OnceLock<PathBuf> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-guest-inputs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-guest-inputs.sh");
        let status = Command::new("bash").arg(&script).arg(&out).status().expect("running fake-guest-inputs.sh");
        assert!(status.success(), "{} failed", script.display());
        out
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every stage passes, with CRI version and pod IP details, then `done`; unless a disk
    /// (the seed) starts with `FAIL-CONTAINERD`, then `containerd` fails as in
    /// [`Scenario::FailContainerd`]: one set of artifacts, one failing node of a fleet.
    Pass,
    /// `containerd` fails with a message.
    FailContainerd,
    /// A real kernel panic (sysrq) after `boot` passed.
    Panic,
    /// `cloud-init` starts and never ends.
    Hang,
    /// systemd's emergency-mode text on the console, then silence.
    Emergency,
}

const EMIT: &str = r#"
port=
for n in /sys/class/virtio-ports/*/name; do
  [ "$(cat "$n")" = org.nodeforge.agent ] && port=/dev/$(basename "$(dirname "$n")")
done
[ -n "$port" ] || { echo "fake-agent: no org.nodeforge.agent port" >/dev/console; exit 1; }
exec 3>"$port"
ms() { read -r up _ </proc/uptime; echo "${up%.*}${up#*.}0"; }
emit() { printf '{"stage":"%s","event":"%s","elapsed_ms":%s,"message":"%s","detail":%s}\n' "$1" "$2" "$(ms)" "$3" "${4:-null}" >&3; }
pass() { emit "$1" start ""; emit "$1" pass "${2:-ok}" "$3"; }
# expect.json arrived through the hook: the agent reads its expectations from there.
driver=$(sed -n 's/.*"cgroup_driver": "\([a-z]*\)".*/\1/p' "$1")
[ -f /run/systemd/system/multi-user.target.wants/nodeforge-agent.service ] || { emit boot fail "units missing"; exit 1; }
if grep -q nodeforge.netboot=1 /proc/cmdline && [ ! -f /etc/overlay-marker ]; then
  emit boot fail "netboot, but the overlay cpio was not appended"; exit 1
fi
pass boot "reached default target" "{\"cgroup_driver\":\"$driver\"}"
"#;

fn agent_script(s: Scenario) -> String {
    let body = match s {
        Scenario::Pass => {
            r#"pass cloud-init
for d in /dev/vd?; do
  if dd if="$d" bs=512 count=1 2>/dev/null | grep -q FAIL-CONTAINERD; then
    emit containerd start ""; emit containerd fail "the seed on $d asked containerd to fail" '{"active_state":"failed"}'
    emit done fail ""; sleep 100000
  fi
done
pass containerd
pass cri "Version and Status" '{"version":{"runtime_name":"containerd","runtime_version":"1.6.20~ds1","runtime_api_version":"v1","version":"0.1.0"},"runtime_ready":true,"network_ready":true}'
pass pod "sandbox READY" '{"pod_ip":"10.88.0.2"}'
pass kubelet-config
emit done pass ""
"#
        }
        Scenario::FailContainerd => {
            "pass cloud-init\nemit containerd start \"\"\nemit containerd fail \"containerd.service is failed\" '{\"active_state\":\"failed\"}'\nemit done fail \"\"\n"
        }
        Scenario::Panic => "echo c > /proc/sysrq-trigger\n",
        Scenario::Hang => "emit cloud-init start \"\"\nsleep 100000\n",
        Scenario::Emergency => {
            "echo 'You are in emergency mode. After logging in, type \"journalctl -xb\" to view' >/dev/console\nsleep 100000\n"
        }
    };
    format!("#!/bin/sh\n{EMIT}{body}sleep 100000\n")
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m; done
# nodeforge's initramfs AGENT HOOK, as proposed: /nodeforge/* but units/ to /run/nodeforge/,
# units/ to /run/systemd/system/.
mkdir -p /run/nodeforge /run/systemd/system
cp -a /nodeforge/units/. /run/systemd/system/
for f in /nodeforge/*; do [ "$f" = /nodeforge/units ] || cp -a "$f" /run/nodeforge/; done
# Write to the disk: the harness must have given the guest a copy-on-write layer.
[ -b /dev/vda ] && echo scribbled-by-the-guest | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null
echo "fake-init: starting the agent" >/dev/console
/run/nodeforge/agent /run/nodeforge/expect.json
poweroff -f
"#;

/// A directory laid out like `nodeforge image` output, for the fake guest.
#[derive(Debug)]
pub struct FakeArtifacts {
    pub dir: tempfile::TempDir,
}

impl FakeArtifacts {
    pub fn new(scenario: Scenario) -> Self {
        let inputs = inputs();
        let dir = tempfile::Builder::new().prefix("fake-artifacts-").tempdir().unwrap();
        let d = dir.path();
        std::fs::copy(inputs.join("vmlinuz"), d.join("vmlinuz")).unwrap();

        let origin = || Origin::Static { source: "fake-guest".into() };
        let on_disk = |p: PathBuf| Content::Inline(std::fs::read(p).unwrap());
        let mut o = Overlay::new();
        o.add_file("bin/busybox", 0o755, on_disk(inputs.join("busybox")), origin()).unwrap();
        o.add_file("init", 0o755, Content::Inline(INIT.into()), origin()).unwrap();
        o.add_file("modules.order", 0o644, on_disk(inputs.join("modules.order")), origin()).unwrap();
        for m in std::fs::read_to_string(inputs.join("modules.order")).unwrap().lines() {
            o.add_file(&format!("modules/{m}"), 0o644, on_disk(inputs.join("modules").join(m)), origin()).unwrap();
        }
        for dir in ["dev", "proc", "sys", "run", "tmp"] {
            o.add_dir(dir, 0o755, origin()).unwrap();
        }
        test_vm::initrd::write_cpio_gz(&o, &d.join("initrd.img")).unwrap();
        // Netboot artifacts: the same tree as the root filesystem, and an overlay cpio that
        // the fake agent looks for.
        std::fs::copy(d.join("initrd.img"), d.join("rootfs.cpio.gz")).unwrap();
        let mut overlay = Overlay::new();
        overlay.add_file("etc/overlay-marker", 0o644, Content::Inline(b"overlay\n".to_vec()), origin()).unwrap();
        test_vm::initrd::write_cpio_gz(&overlay, &d.join("overlay.cpio.gz")).unwrap();

        let agent = d.join("fake-agent.sh");
        std::fs::write(&agent, agent_script(scenario)).unwrap();

        let mut qemu_img = Command::new("qemu-img");
        qemu_img.args(["create", "-q", "-f", "qcow2"]).arg(d.join("disk.qcow2")).arg("16M");
        assert!(qemu_img.status().unwrap().success());
        std::fs::write(d.join("seed.img"), vec![0u8; 64 * 1024]).unwrap();

        let profile = nodeforge::profile::Profile::parse(&format!(
            "name = \"fake\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.6.20\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n[node]\ncgroup_driver = \"cgroupfs\"\n",
            "a".repeat(64)
        ))
        .unwrap();
        let manifest = serde_json::json!({"profile": {"name": "fake", "profile": profile}});
        std::fs::write(d.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `test-vm boot` for this guest, with a JSON and JUnit report and the serial log in the
    /// artifacts dir (its path also identifies this run's QEMU in /proc).
    pub fn command(&self) -> Command {
        self.command_with_accel("tcg")
    }

    pub fn command_with_accel(&self, accel: &str) -> Command {
        let mut c = self.base_command(accel);
        c.arg("--initrd").arg(self.path("initrd.img"));
        c.arg("--disk").arg(self.path("disk.qcow2"));
        c
    }

    /// Netboot: `rootfs.cpio.gz` as the initrd, `overlay.cpio.gz` found beside it.
    pub fn netboot_command(&self) -> Command {
        let mut c = self.base_command("tcg");
        c.arg("--initrd").arg(self.path("rootfs.cpio.gz")).arg("--netboot");
        c
    }

    fn base_command(&self, accel: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_test-vm"));
        // Work directories (kept by failed runs) go inside the artifacts dir, removed with it.
        c.env("TMPDIR", self.dir.path());
        c.arg("boot");
        c.arg("--kernel").arg(self.path("vmlinuz"));
        c.arg("--seed").arg(self.path("seed.img"));
        c.arg("--agent").arg(self.path("fake-agent.sh"));
        c.arg("--json").arg(self.path("report.json"));
        c.arg("--junit").arg(self.path("junit.xml"));
        c.arg("--serial-log").arg(self.path("serial.log"));
        c.args(["--memory", "256", "--accel", accel]);
        c
    }

    /// Another seed image beside the artifacts: 64 KiB starting with `marker`.
    pub fn seed(&self, name: &str, marker: &str) -> PathBuf {
        let mut bytes = marker.as_bytes().to_vec();
        bytes.resize(64 * 1024, 0);
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// `test-vm fleet` for this guest, writing into `out`; add `--node NAME=SEED`.
    pub fn fleet_command(&self, out: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_test-vm"));
        c.env("TMPDIR", self.dir.path());
        c.arg("fleet");
        c.arg("--kernel").arg(self.path("vmlinuz"));
        c.arg("--initrd").arg(self.path("initrd.img"));
        c.arg("--disk").arg(self.path("disk.qcow2"));
        c.arg("--agent").arg(self.path("fake-agent.sh"));
        c.arg("--out").arg(out);
        c.args(["--memory", "256", "--accel", "tcg"]);
        c
    }

    pub fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("report.json")).unwrap()).unwrap()
    }

    /// PIDs of live QEMU processes whose command line names this run's serial log.
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids_with(&self.path("serial.log"))
    }
}

pub fn qemu_pids_with(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        // QEMU itself, not `setpriv --pdeathsig KILL -- qemu-system-…` before its exec: until
        // setpriv has set the death signal, a harness killed then would leave QEMU behind.
        let program = cmdline.split('\0').next().unwrap_or_default();
        if !program.contains("qemu-system") || !cmdline.contains(&marker) {
            continue;
        }
        // A zombie has already died; it only waits for a parent (or init) to reap it.
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if status.lines().any(|l| l.starts_with("State:") && l.contains('Z')) {
            continue;
        }
        pids.push(pid);
    }
    pids
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
