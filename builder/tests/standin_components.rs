//! The per-component releases end to end: containerd's own archive, runc, the CNI plugins
//! and crictl, each as its project publishes it (the real programs, built from their Go
//! modules by fixtures/upstream/build-upstream.sh, served over real HTTP on 127.0.0.1 and
//! reached through `--mirror`), plus kubelet, kubeadm and kubectl as on dl.k8s.io, fetched
//! with `nodeforge fetch` and assembled by `nodeforge build`. The overlay must carry every
//! component where the bundle puts it, executable, and the packed crictl must reach the
//! overlay's own containerd 2.x, started on the overlay's schema-3 config.toml, through the
//! crictl.yaml nodeforge rendered. arm64 is built (not run): its binaries must be arm64.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::containerd::{is_root, run, start_containerd_ready};
use common::http_server::TestServer;
use common::standin::standin;
use common::{nodeforge, s, text};

/// The four archives' paths on the mirror, as on GitHub.
fn component_paths(arch: &str) -> Vec<String> {
    let st = standin();
    let (v, r, c, k) = (&st.containerd_version, &st.runc_version, &st.cni_version, &st.crictl_version);
    let kube = &st.kubernetes_version;
    let mut paths = vec![
        format!("/containerd/containerd/releases/download/v{v}/containerd-{v}-linux-{arch}.tar.gz"),
        format!("/opencontainers/runc/releases/download/v{r}/runc.{arch}"),
        format!("/containernetworking/plugins/releases/download/v{c}/cni-plugins-linux-{arch}-v{c}.tgz"),
        format!("/kubernetes-sigs/cri-tools/releases/download/v{k}/crictl-v{k}-linux-{arch}.tar.gz"),
    ];
    for bin in ["kubelet", "kubeadm", "kubectl"] {
        paths.push(format!("/release/v{kube}/bin/linux/{arch}/{bin}"));
    }
    paths
}

/// Regular files and their permission bits in overlay.tar.gz, by path relative to `/`.
fn overlay_files(archive: &Path) -> BTreeMap<String, u32> {
    let gz = flate2::read::GzDecoder::new(fs::File::open(archive).unwrap());
    let mut tar = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let path = e.path().unwrap().to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_owned();
            out.insert(path, e.header().mode().unwrap() & 0o7777);
        }
    }
    out
}

/// `fetch` then `build` of one profile against the stand-in mirror; returns the out dir.
fn fetch_and_build(server: &TestServer, profile: &Path, arch: &str, tmp: &Path) -> PathBuf {
    let cache = tmp.join("cache");
    let base = server.base();
    let o = nodeforge(&["fetch", "--profile", s(profile), "--mirror", &base], &cache);
    assert!(o.status.success(), "nodeforge fetch {}: {}", profile.display(), text(&o));
    let paths = component_paths(arch);
    for p in &paths {
        assert_eq!(server.hits(p), 1, "{p} fetched {} times", server.hits(p));
    }
    let out = tmp.join("out");
    let o = nodeforge(&["build", "--profile", s(profile), "--mirror", &base, "--out", s(&out)], &cache);
    assert!(o.status.success(), "nodeforge build {}: {}", profile.display(), text(&o));
    for p in &paths {
        assert_eq!(server.hits(p), 1, "{p}: the build must use what fetch cached");
    }
    out
}

/// The ELF machine of a file: 62 is x86-64, 183 is AArch64.
fn elf_machine(path: &Path) -> u16 {
    let mut head = [0u8; 20];
    fs::File::open(path).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], b"\x7fELF", "{} is not an ELF file", path.display());
    u16::from_le_bytes([head[18], head[19]])
}

fn extract(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let t = Command::new("tar").args(["-xzf", s(archive), "-C", s(into)]).output().unwrap();
    assert!(t.status.success(), "{}", text(&t));
}

#[test]
fn per_component_standin_builds_a_complete_overlay_whose_crictl_reaches_containerd() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_and_build(&server, &st.components_profile, "amd64", tmp.path());

    let files = overlay_files(&out.join("overlay.tar.gz"));
    for want in [
        "usr/local/bin/containerd",
        "usr/local/bin/containerd-shim-runc-v2",
        "usr/local/bin/ctr",
        "usr/local/sbin/runc",
        "opt/cni/bin/bridge",
        "opt/cni/bin/host-local",
        "opt/cni/bin/loopback",
        "opt/cni/bin/portmap",
        "usr/local/bin/crictl",
        "usr/bin/kubelet",
        "usr/bin/kubeadm",
        "usr/bin/kubectl",
    ] {
        assert_eq!(files.get(want), Some(&0o755), "{want} missing from the overlay or not 0755");
    }
    assert!(files.contains_key("etc/crictl.yaml") && files.contains_key("etc/containerd/config.toml"));

    let node = tmp.path().join("node");
    extract(&out.join("overlay.tar.gz"), &node);
    let crictl = node.join("usr/local/bin/crictl");
    let v = run(Command::new(&crictl).arg("--version"), Duration::from_secs(10));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success() && said.starts_with(&format!("crictl version v{}", st.crictl_version)), "{}", text(&v));
    let rv = run(Command::new(node.join("usr/local/sbin/runc")).arg("--version"), Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&rv.stdout).contains(&st.runc_version), "{}", text(&rv));

    let kv = run(Command::new(node.join("usr/bin/kubelet")).arg("--version"), Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&kv.stdout).trim(), format!("Kubernetes v{}", st.kubernetes_version));

    // The overlay's containerd 2.x on the overlay's schema-3 config, in a temp root.
    assert!(is_root(), "starting a real containerd needs root (its snapshotters mount); run the tests as root");
    let daemon_dir = tmp.path().join("daemon");
    fs::create_dir(&daemon_dir).unwrap();
    let (daemon, socket) = start_containerd_ready(
        &node.join("usr/local/bin/containerd"),
        &node.join("etc/containerd/config.toml"),
        &daemon_dir,
    );
    // The rendered crictl.yaml, its socket moved to the test daemon's: crictl must take the
    // endpoint from the file, named by --config or by $CRI_CONFIG_FILE.
    let rendered = fs::read_to_string(node.join("etc/crictl.yaml")).unwrap();
    let node_endpoint = "unix:///run/containerd/containerd.sock";
    assert!(rendered.contains(&format!("runtime-endpoint: {node_endpoint}")), "{rendered}");
    let config = tmp.path().join("crictl.yaml");
    fs::write(&config, rendered.replace(node_endpoint, &format!("unix://{}", socket.display()))).unwrap();

    let expected_version = |o: &Output| {
        assert!(o.status.success(), "{}", text(o));
        let out = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "Version:  0.1.0");
        assert_eq!(lines[1], "RuntimeName:  containerd");
        let rv = lines[2].strip_prefix("RuntimeVersion:  ").unwrap_or_else(|| panic!("{out}"));
        let rv = rv.trim_start_matches('v');
        assert!(
            rv.strip_prefix(st.containerd_version.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['~', '+', '-'])),
            "RuntimeVersion {rv} is not containerd {}",
            st.containerd_version
        );
        assert_eq!(lines[3], "RuntimeApiVersion:  v1");
    };
    let limit = Duration::from_secs(20);
    expected_version(&run(Command::new(&crictl).arg("--config").arg(&config).arg("version"), limit));
    expected_version(&run(Command::new(&crictl).env("CRI_CONFIG_FILE", &config).arg("version"), limit));
    // A flag wins over the file.
    let elsewhere = tmp.path().join("crictl-elsewhere.yaml");
    fs::write(&elsewhere, rendered.replace(node_endpoint, "unix:///nonexistent/containerd.sock")).unwrap();
    let endpoint = format!("unix://{}", socket.display());
    expected_version(&run(
        Command::new(&crictl)
            .arg("--config")
            .arg(&elsewhere)
            .args(["--runtime-endpoint", &endpoint, "--timeout", "5s"])
            .arg("version"),
        limit,
    ));

    let info = run(Command::new(&crictl).arg("--config").arg(&config).arg("info"), limit);
    assert!(info.status.success(), "{}", text(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let conditions = info["status"]["conditions"].as_array().unwrap();
    let runtime_ready = conditions.iter().find(|c| c["type"] == "RuntimeReady").unwrap();
    assert_eq!(runtime_ready["status"], true, "{info:#}");
    assert!(info.get("config").is_some(), "containerd's verbose status carries its CRI config: {info:#}");

    let images = run(Command::new(&crictl).arg("--config").arg(&config).arg("images"), limit);
    assert!(images.status.success(), "{}", text(&images));
    assert!(String::from_utf8_lossy(&images.stdout).starts_with("IMAGE "), "{}", text(&images));
    drop(daemon);

    // No daemon: a clear failure, not a hang.
    let gone = run(Command::new(&crictl).arg("--config").arg(&config).args(["--timeout", "1s", "version"]), limit);
    assert!(!gone.status.success(), "{}", text(&gone));
}

#[test]
fn arm64_per_component_standin_builds_with_arm64_binaries() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_and_build(&server, &st.arm64_profile, "arm64", tmp.path());
    let files = overlay_files(&out.join("overlay.tar.gz"));
    let arm64_bins = [
        "usr/local/bin/containerd",
        "usr/local/bin/containerd-shim-runc-v2",
        "usr/local/sbin/runc",
        "opt/cni/bin/bridge",
        "usr/local/bin/crictl",
        "usr/bin/kubelet",
        "usr/bin/kubeadm",
    ];
    for want in arm64_bins {
        assert_eq!(files.get(want), Some(&0o755), "{want} missing from the arm64 overlay or not 0755");
    }
    let node = tmp.path().join("node");
    extract(&out.join("overlay.tar.gz"), &node);
    for bin in arm64_bins {
        assert_eq!(elf_machine(&node.join(bin)), 183, "{bin} is not an AArch64 binary");
    }
}
