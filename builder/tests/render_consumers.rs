//! The rendered files, fed to the real programs that read them on a node.
//!
//! * `containerd config dump` (Debian's containerd, 1.6.20 on bookworm) decodes every plugin
//!   section into containerd's own structs, so a type error or a misplaced key fails here.
//! * A real containerd daemon starts on each rendered config.toml in a temporary root and
//!   must report the CRI plugin `ok`: `dump` does not run CRI's own validation, the daemon
//!   does. A corrupted copy must make the daemon exit (negative control for
//!   `required_plugins` and for this test's ability to fail).
//! * `systemd-analyze verify` on containerd.service, the preload unit and the kubelet drop-in.
//!
//! The same installed containerd checks profiles written for 1.4 and 1.7: it catches schema
//! and syntax mistakes, not differences between release lines (the unit tests and goldens
//! pin those). Tools come from Debian packages `containerd` and `systemd`; `make test`
//! installs them.
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::containerd::{is_root, run, start_containerd, tool};
use nodeforge::profile::LoadedProfile;
use nodeforge::render::{self, Rendered};

fn profiles() -> Vec<PathBuf> {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [base.join("../profiles"), base.join("tests/profiles")] {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty());
    out
}

struct Node {
    name: String,
    version: nodeforge::version::Version,
    sandbox: String,
    systemd_cgroup: bool,
    has_preload: bool,
    root: tempfile::TempDir,
}

/// Render a profile into a fresh directory laid out like the node's `/`.
fn render_node(path: &Path) -> Node {
    let loaded = LoadedProfile::load(path).unwrap();
    let rendered = render::render(&loaded).unwrap();
    let root = tempfile::tempdir().unwrap();
    for r in &rendered {
        let dest = root.path().join(r.path());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        match r {
            Rendered::File(f) => {
                fs::write(&dest, &f.bytes).unwrap();
                fs::set_permissions(&dest, fs::Permissions::from_mode(f.mode)).unwrap();
            }
            Rendered::Link(l) => symlink(&l.target, &dest).unwrap(),
        }
    }
    let p = &loaded.profile;
    Node {
        name: p.name.clone(),
        version: p.containerd.version.clone(),
        sandbox: render::sandbox_image(p).to_string(),
        systemd_cgroup: p.node.cgroup_driver == nodeforge::profile::CgroupDriver::Systemd,
        has_preload: !p.images.is_empty(),
        root,
    }
}

impl Node {
    fn config(&self) -> PathBuf {
        self.root.path().join("etc/containerd/config.toml")
    }
}

#[test]
fn containerd_config_dump_reads_every_profile() {
    let containerd = tool("containerd", "containerd");
    for path in profiles() {
        let node = render_node(&path);
        let out = run(
            Command::new(&containerd).arg("-c").arg(node.config()).args(["config", "dump"]),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: config dump failed: {stderr}", node.name);
        let dump: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let cri = &dump["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some(node.sandbox.as_str()), "{}", node.name);
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"), "{}", node.name);
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(node.systemd_cgroup), "{}", node.name);
        let want_path = if node.version.at_least(1, 5, 0) { "/etc/containerd/certs.d" } else { "" };
        assert_eq!(cri["registry"]["config_path"].as_str(), Some(want_path), "{}", node.name);
        assert_eq!(dump["required_plugins"][0].as_str(), Some("io.containerd.grpc.v1.cri"), "{}", node.name);
    }
}

#[test]
fn real_containerd_loads_cri_with_every_profile() {
    let containerd = tool("containerd", "containerd");
    let ctr = tool("ctr", "containerd");
    assert!(is_root(), "starting a real containerd needs root (its snapshotters mount); run the tests as root");
    for path in profiles() {
        let node = render_node(&path);
        let dir = tempfile::tempdir().unwrap();
        let (mut daemon, socket) = start_containerd(&containerd, &node.config(), dir.path());
        let start = Instant::now();
        while !socket.exists() {
            let exited = daemon.0.try_wait().unwrap();
            let log = || fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default();
            assert!(exited.is_none(), "{}: containerd exited ({exited:?}):\n{}", node.name, log());
            assert!(start.elapsed() < Duration::from_secs(10), "{}: no socket after 10 s:\n{}", node.name, log());
            std::thread::sleep(Duration::from_millis(20));
        }
        let out =
            run(Command::new(&ctr).arg("--address").arg(&socket).args(["plugins", "ls"]), Duration::from_secs(10));
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: ctr plugins ls: {}", node.name, String::from_utf8_lossy(&out.stderr));
        let cri: Vec<&str> = table
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["io.containerd.grpc.v1", "cri"]))
            .unwrap_or_else(|| panic!("{}: no CRI plugin listed:\n{table}", node.name))
            .split_whitespace()
            .collect();
        assert_eq!(cri.last(), Some(&"ok"), "{}: CRI plugin not ok:\n{table}", node.name);
        drop(daemon);
    }
}

#[test]
fn broken_cri_section_stops_containerd() {
    let containerd = tool("containerd", "containerd");
    assert!(is_root(), "starting a real containerd needs root; run the tests as root");
    let standin = profiles().into_iter().find(|p| p.ends_with("standin.toml")).unwrap();
    let node = render_node(&standin);
    // The deprecated mirrors table next to config_path: valid TOML that `config dump`
    // accepts, but CRI's validation refuses it, and required_plugins makes that fatal.
    let mut text = fs::read_to_string(node.config()).unwrap();
    text.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m.example\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    fs::write(&broken, text).unwrap();
    let (mut daemon, _) = start_containerd(&containerd, &broken, dir.path());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "containerd kept running without CRI");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = fs::read_to_string(dir.path().join("containerd.log")).unwrap();
    assert!(log.contains("cannot be set when `config_path` is provided"), "{log}");
}

/// A stand-in for the kubelet package's base unit (kubernetes/release kubelet.service).
const KUBELET_SERVICE: &str = "[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

/// A stand-in for kubeadm's 10-kubeadm.conf as the deb installs it (runtime-facts §4.2).
const KUBEADM_DROPIN: &str = "[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// `systemd-analyze verify --root` on the rendered units. The root holds the host's own
/// units (for sysinit.target and friends), executable stubs for every binary our units
/// start, and a kubelet.service + 10-kubeadm.conf shaped like the kubeadm packages'. The
/// kubelet is NOT installed here: this checks the drop-in's syntax and that it merges into
/// the kubelet unit, not that a real kubelet accepts the flags (the VM tests do that).
/// A profile with `[kubernetes.binaries]` renders its own kubelet.service and 10-kubeadm.conf
/// under /etc/systemd/system, which take precedence over the stand-ins: those are verified.
#[test]
fn systemd_analyze_verifies_units() {
    let analyze = tool("systemd-analyze", "systemd");
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("no systemd unit directory with sysinit.target: install the Debian package `systemd`");
    for path in profiles() {
        let node = render_node(&path);
        let root = node.root.path();
        let units = root.join("usr/lib/systemd/system");
        fs::create_dir_all(units.join("kubelet.service.d")).unwrap();
        let cp = run(Command::new("cp").arg("-a").arg(host_units.join(".")).arg(&units), Duration::from_secs(10));
        assert!(cp.status.success(), "{}", String::from_utf8_lossy(&cp.stderr));
        fs::write(units.join("kubelet.service"), KUBELET_SERVICE).unwrap();
        fs::write(units.join("kubelet.service.d/10-kubeadm.conf"), KUBEADM_DROPIN).unwrap();
        for stub in
            ["usr/local/bin/containerd", "usr/local/bin/ctr", "usr/bin/kubelet", "usr/bin/touch", "sbin/modprobe"]
        {
            let p = root.join(stub);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut ours = vec!["containerd.service", "kubelet.service"];
        if node.has_preload {
            ours.push("nodeforge-preload-images.service");
        }
        let out = run(
            Command::new(&analyze).arg("verify").arg(format!("--root={}", root.display())).arg("--man=no").args(&ours),
            Duration::from_secs(15),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Host units outside our transaction may have their own complaints on some
        // machines; ours must have none.
        let about_ours: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                ours.iter().any(|u| l.contains(u)) || l.contains("nodeforge") || l.contains(&*root.to_string_lossy())
            })
            .collect();
        assert!(out.status.success() && about_ours.is_empty(), "{}: systemd-analyze verify:\n{stderr}", node.name);
    }
}
