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
//!
//! Config schema v3 (containerd 2.x) goes through a real containerd 2.2 instead: the one
//! fixtures/upstream/build-upstream.sh builds from its Go module (Debian's 1.6.20 would load a
//! v3 file and silently ignore every v3 section). `config dump` and a daemon whose three CRI
//! plugins must load, as for schema 2. Lines with no binary here (2.0, 2.1) are checked
//! against the documented default key tree instead (`v3_configs_match_the_documented_layout`).
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::containerd::{is_root, run, start_containerd, tool};
use common::standin::standin;
use nodeforge::profile::{ConfigVersion, LoadedProfile, Profile};
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
    schema: ConfigVersion,
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
        schema: p.containerd.effective_config_version(),
        root,
    }
}

impl Node {
    fn config(&self) -> PathBuf {
        self.root.path().join("etc/containerd/config.toml")
    }

    /// The real containerd and ctr that judge this node's config: Debian's 1.6 for schema 2,
    /// the Go-built 2.2 for schema 3 of the 2.2 line; `None` for a v3 line with no binary here.
    fn judge(&self) -> Option<(PathBuf, PathBuf)> {
        match self.schema {
            ConfigVersion::V3 if self.version.minor_line() == UPSTREAM_LINE => {
                let bin = &standin().bin;
                Some((bin.join("containerd"), bin.join("ctr")))
            }
            ConfigVersion::V3 => None,
            _ => Some((tool("containerd", "containerd"), tool("ctr", "containerd"))),
        }
    }

    /// `(type, id)` of the CRI plugins `ctr plugins ls` must show `ok`.
    fn cri_plugins(&self) -> &'static [(&'static str, &'static str)] {
        match self.schema {
            ConfigVersion::V3 => &[
                ("io.containerd.cri.v1", "images"),
                ("io.containerd.cri.v1", "runtime"),
                ("io.containerd.grpc.v1", "cri"),
            ],
            _ => &[("io.containerd.grpc.v1", "cri")],
        }
    }
}

/// The containerd line fixtures/upstream builds (versions.env: CONTAINERD_VERSION).
const UPSTREAM_LINE: (u64, u64) = (2, 2);

#[test]
fn containerd_config_dump_reads_every_profile() {
    let mut v3 = 0;
    for path in profiles() {
        let node = render_node(&path);
        let Some((containerd, _)) = node.judge() else { continue };
        if node.schema == ConfigVersion::V3 {
            check_v3_dump(&node, &containerd);
            v3 += 1;
            continue;
        }
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
    assert!(v3 >= 2, "the shipped schema-3 profiles of the 2.2 line went through containerd 2.x config dump");
}

/// containerd 2.x's dump of a schema-3 file: the same facts, where 2.x keeps them.
fn check_v3_dump(node: &Node, containerd: &Path) {
    let out =
        run(Command::new(containerd).arg("-c").arg(node.config()).args(["config", "dump"]), Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: containerd 2.x config dump failed: {stderr}", node.name);
    assert!(!stderr.contains("Ignoring unknown key"), "{}: containerd 2.x ignored keys: {stderr}", node.name);
    let dump: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(dump["version"].as_integer(), Some(3), "{}", node.name);
    let images = &dump["plugins"]["io.containerd.cri.v1.images"];
    assert_eq!(images["pinned_images"]["sandbox"].as_str(), Some(node.sandbox.as_str()), "{}", node.name);
    assert_eq!(images["registry"]["config_path"].as_str(), Some("/etc/containerd/certs.d"), "{}", node.name);
    let runc = &dump["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"];
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"), "{}", node.name);
    assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(node.systemd_cgroup), "{}", node.name);
    let required: Vec<&str> =
        dump["required_plugins"].as_array().unwrap().iter().filter_map(toml::Value::as_str).collect();
    for id in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"] {
        assert!(required.contains(&id), "{}: {id} not required: {required:?}", node.name);
    }
}

#[test]
fn real_containerd_loads_cri_with_every_profile() {
    assert!(is_root(), "starting a real containerd needs root (its snapshotters mount); run the tests as root");
    let mut v3 = 0;
    for path in profiles() {
        let node = render_node(&path);
        let Some((containerd, ctr)) = node.judge() else { continue };
        v3 += usize::from(node.schema == ConfigVersion::V3);
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
        for (kind, id) in node.cri_plugins() {
            let row: Vec<&str> = table
                .lines()
                .find(|l| l.split_whitespace().take(2).eq([*kind, *id]))
                .unwrap_or_else(|| panic!("{}: no {kind} {id} plugin listed:\n{table}", node.name))
                .split_whitespace()
                .collect();
            assert_eq!(row.last(), Some(&"ok"), "{}: {kind} {id} not ok:\n{table}", node.name);
        }
        drop(daemon);
    }
    assert!(v3 >= 2, "the shipped schema-3 profiles of the 2.2 line went through containerd 2.x");
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

/// The same negative control for schema 3 on containerd 2.x: the deprecated mirrors next to
/// the rendered config_path make the images plugin fail, and required_plugins stops the
/// daemon.
#[test]
fn broken_cri_section_stops_containerd_2() {
    assert!(is_root(), "starting a real containerd needs root; run the tests as root");
    let path = profiles().into_iter().find(|p| p.ends_with("standin-components.toml")).unwrap();
    let node = render_node(&path);
    assert_eq!(node.schema, ConfigVersion::V3);
    let (containerd, _) = node.judge().unwrap();
    let mut text = fs::read_to_string(node.config()).unwrap();
    text.push_str(
        "\n[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n  endpoint = ['https://m.example']\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    fs::write(&broken, text).unwrap();
    let (mut daemon, _) = start_containerd(&containerd, &broken, dir.path());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "containerd 2.x kept running without CRI");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = fs::read_to_string(dir.path().join("containerd.log")).unwrap();
    assert!(log.contains("config_path"), "{log}");
}

/// The documented default key tree of a containerd 2.x line (tests/fixtures/containerd-v3/).
fn v3_layout(line: (u64, u64)) -> toml::Table {
    let name = match line {
        (2, 0) => "2.0",
        (2, 1) => "2.1",
        _ => "2.2",
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/containerd-v3/{name}.toml"));
    toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// Every leaf of `rendered` must exist in `layout` with the same TOML type (and, for arrays
/// whose documented value is not empty, the same element type). Returns the mismatches.
fn layout_mismatches(rendered: &toml::Table, layout: &toml::Table, path: &str, out: &mut Vec<String>) {
    for (k, v) in rendered {
        let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        let Some(want) = layout.get(k) else {
            out.push(format!("`{here}` is not a key of the documented layout"));
            continue;
        };
        match (v, want) {
            (toml::Value::Table(r), toml::Value::Table(l)) => layout_mismatches(r, l, &here, out),
            (toml::Value::Array(r), toml::Value::Array(l)) => {
                if let Some(first) = l.first() {
                    for e in r.iter().filter(|e| type_name(e) != type_name(first)) {
                        out.push(format!(
                            "`{here}` holds a {}, the layout a list of {}",
                            type_name(e),
                            type_name(first)
                        ));
                    }
                }
            }
            (r, l) if type_name(r) != type_name(l) => {
                out.push(format!("`{here}` is a {}, the layout has a {}", type_name(r), type_name(l)))
            }
            _ => {}
        }
    }
}

/// The fallback for 2.x lines with no binary here (2.0, 2.1; 2.2 also goes through the real
/// containerd 2.2 above): every key a schema-v3
/// config.toml sets, for each shipped v3 profile and for one synthetic profile per 2.x line,
/// must exist with the same TOML type in the default configuration containerd documents for
/// that line, encoded in tests/fixtures/containerd-v3/. A misspelled key, a v2 section name, a
/// key of the wrong line (`bin_dirs` on 2.0) or a wrong type fails here; whether a real 2.x
/// daemon accepts the values is not proven.
#[test]
fn v3_configs_match_the_documented_layout() {
    let mut checked = 0;
    let mut targets: Vec<(String, Profile)> = Vec::new();
    for path in profiles() {
        let loaded = LoadedProfile::load(&path).unwrap();
        if loaded.profile.containerd.effective_config_version() == ConfigVersion::V3 {
            targets.push((loaded.profile.name.clone(), loaded.profile));
        }
    }
    assert!(!targets.is_empty(), "no shipped profile renders schema v3");
    for line in ["2.0.7", "2.1.6", "2.2.1"] {
        let text = format!(
            "name = \"v3-{line}\"\n[kubernetes]\nversion = \"1.35.1\"\n[containerd]\nversion = \"{line}\"\n\
             [containerd.release]\nsha256 = \"{z}\"\n[runc]\nversion = \"1.3.4\"\nsha256 = \"{z}\"\n\
             [cni_plugins]\nversion = \"1.8.0\"\nsha256 = \"{z}\"\n[node]\ncgroup_driver = \"cgroupfs\"\n",
            z = "0".repeat(64)
        );
        targets.push((format!("synthetic {line}"), Profile::parse(&text).unwrap()));
    }
    for (name, p) in &targets {
        let rendered = render::render_profile(p).unwrap();
        let Some(Rendered::File(f)) = rendered.iter().find(|r| r.path() == "etc/containerd/config.toml") else {
            panic!("{name}: no config.toml")
        };
        let table: toml::Table = toml::from_str(std::str::from_utf8(&f.bytes).unwrap()).unwrap();
        assert_eq!(table["version"].as_integer(), Some(3), "{name}");
        let mut bad = Vec::new();
        layout_mismatches(&table, &v3_layout(p.containerd.version.minor_line()), "", &mut bad);
        assert!(bad.is_empty(), "{name}: {}", bad.join("; "));
        checked += 1;
    }
    assert!(checked >= 4);

    // Negative controls: the check can fail, for each kind of mistake.
    let good: toml::Table =
        toml::from_str("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/opt/cni/bin']\n")
            .unwrap();
    let mut bad = Vec::new();
    layout_mismatches(&good, &v3_layout((2, 0)), "", &mut bad);
    assert_eq!(bad.len(), 1, "2.0 has no bin_dirs: {bad:?}");
    bad.clear();
    layout_mismatches(&good, &v3_layout((2, 1)), "", &mut bad);
    assert!(bad.is_empty(), "{bad:?}");
    let wrong: toml::Table = toml::from_str(
        "[plugins.'io.containerd.grpc.v1.cri']\nsandbox_image = 'x'\n\
         [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = 'true'\n\
         [plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = [1]\n",
    )
    .unwrap();
    bad.clear();
    layout_mismatches(&wrong, &v3_layout((2, 2)), "", &mut bad);
    assert_eq!(bad.len(), 3, "{bad:?}");
}

/// A stand-in for the kubelet package's base unit (kubernetes/release kubelet.service): the
/// one test-vm injects into nodes without a kubelet of their own.
const KUBELET_SERVICE: &str = include_str!("../../overlays/test-vm/kubelet.service");

/// kubeadm's 10-kubeadm.conf as the deb installs it (runtime-facts §4.2): the file nodeforge
/// ships for `[kubernetes.binaries]` nodes, the same directives.
const KUBEADM_DROPIN: &str = include_str!("../../overlays/etc/systemd/system/kubelet.service.d/10-kubeadm.conf");

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
