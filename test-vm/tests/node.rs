//! The whole mission, end to end, for real: the offline stand-in release served on
//! 127.0.0.1 → `nodeforge image` on the debootstrap base → `test-vm boot` under QEMU, with
//! nodeforge's guest agent checking the node stage by stage over CRI. Two disk boots, one per
//! runtime source: the cri-containerd-cni bundle (standin.toml: systemd driver) and the
//! per-component releases, containerd + runc + CNI plugins + crictl (standin-components.toml:
//! cgroupfs driver, another pod subnet; its crictl is checked by the agent's `cri` stage),
//! and one netboot of the cpio artifact.
//!
//! Slow by nature (each boot is about a minute under TCG): the boots take turns, because
//! two TCG guests on a 2-core machine would each run at half speed and race their timeouts.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "../../builder/tests/common/http_server.rs"]
#[allow(dead_code)] // shared with builder's tests, which use more of it
mod http_server;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use http_server::TestServer;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn tmp_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-e2e")
}

/// A workspace binary built beside test-vm (`cargo build --workspace`, which `make test` runs).
fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_test-vm")).with_file_name(name);
    assert!(p.is_file(), "{} is missing: run `cargo build --workspace` first (make test does)", p.display());
    p
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixture(script: &str, out: &Path) {
    let o = Command::new("bash").arg(repo_root().join(script)).arg(out).output().unwrap();
    assert!(o.status.success(), "{script}: {}", text(&o));
}

struct Inputs {
    mirror: PathBuf,
    rootfs: PathBuf,
    server: TestServer,
}

fn inputs() -> &'static Inputs {
    static I: OnceLock<Inputs> = OnceLock::new();
    I.get_or_init(|| {
        let mirror = tmp_root().join("mirror");
        let base = tmp_root().join("base");
        fixture("fixtures/standin/build-standin.sh", &mirror);
        fixture("fixtures/base/build-base.sh", &base);
        let server = TestServer::start();
        server.serve_dir("", &mirror);
        Inputs { rootfs: base.join("rootfs.tar"), mirror, server }
    })
}

/// `nodeforge image` for one of the stand-in's profiles, once per test run.
fn image(profile: &str) -> PathBuf {
    image_with(profile, &[])
}

/// `nodeforge image` with extra flags (such as `--first-boot`), once per profile and flags.
fn image_with(profile: &str, flags: &[&str]) -> PathBuf {
    static DONE: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let key = format!("{profile}{}", flags.join(""));
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(&key) {
        return p.clone();
    }
    let i = inputs();
    let out = tmp_root().join(format!("image-{key}"));
    let _ = fs::remove_dir_all(&out);
    let started = Instant::now();
    let o = Command::new(workspace_bin("nodeforge"))
        .args(["image", "--profile"])
        .arg(i.mirror.join(format!("{profile}.toml")))
        .args(["--mirror", &i.server.base(), "--base"])
        .arg(&i.rootfs)
        .arg("--out")
        .arg(&out)
        .args(flags)
        .env("NODEFORGE_CACHE_DIR", tmp_root().join("cache"))
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NODEFORGE_MIRROR")
        .output()
        .unwrap();
    assert!(o.status.success(), "nodeforge image {profile}: {}", text(&o));
    eprintln!("nodeforge image {profile} {flags:?}: {:.1} s", started.elapsed().as_secs_f64());
    done.insert(key, out.clone());
    out
}

/// Boot with test-vm and return its JSON report; the boots take turns.
fn boot(dir: &Path, netboot: bool) -> serde_json::Value {
    boot_with(dir, netboot, &["--timeout", "600"])
}

/// [`boot`] with test-vm flags of the caller's choosing (limits).
fn boot_with(dir: &Path, netboot: bool, flags: &[&str]) -> serde_json::Value {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = dir.join(if netboot { "netboot.json" } else { "disk.json" });
    let junit = dir.join(if netboot { "netboot.junit.xml" } else { "disk.junit.xml" });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-vm"));
    cmd.arg("boot").arg("--kernel").arg(dir.join("vmlinuz")).arg("--seed").arg(dir.join("seed.img"));
    if netboot {
        cmd.arg("--netboot").arg("--initrd").arg(dir.join("rootfs.cpio.gz")).args(["--memory", "3072"]);
    } else {
        cmd.arg("--initrd").arg(dir.join("initrd.img")).arg("--disk").arg(dir.join("disk.qcow2"));
    }
    cmd.args(["--accel", "auto"])
        .args(flags)
        .arg("--json")
        .arg(&report)
        .arg("--junit")
        .arg(&junit)
        .arg("--agent")
        .arg(workspace_bin("nodeforge-agent"));
    let started = Instant::now();
    let o = cmd.output().unwrap();
    // The harness prints the QEMU command line, the failing stage and the serial tail itself.
    assert!(o.status.success(), "test-vm boot {}: {}", dir.display(), text(&o));
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    eprintln!("boot took {:.1} s", started.elapsed().as_secs_f64());
    assert!(junit.is_file());
    serde_json::from_slice(&fs::read(&report).unwrap()).unwrap()
}

fn assert_node(report: &serde_json::Value, subnet: &str) {
    assert_eq!(report["verdict"], "pass", "{report:#}");
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["kernel", "boot", "cloud-init", "containerd", "cri", "pod", "kubelet-config"]);
    assert!(report["stages"].as_array().unwrap().iter().all(|s| s["verdict"] == "pass"), "{report:#}");
    let v = &report["cri_version"];
    assert_eq!(v["runtime_name"], "containerd", "{v}");
    assert_eq!(v["runtime_api_version"], "v1", "{v}");
    let ip: std::net::Ipv4Addr = report["pod_ip"].as_str().unwrap().parse().unwrap();
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    assert!(net.contains(&ip), "pod IP {ip} outside {net}");
}

#[test]
fn disk_boot_systemd_driver() {
    let report = boot(&image("standin"), false);
    assert_node(&report, "10.88.0.0/16");
}

/// The per-component path: containerd's own archive, runc, the CNI plugins and crictl as
/// separate releases, with the cgroupfs driver and another pod subnet.
#[test]
fn disk_boot_per_component_release_cgroupfs_driver_other_subnet() {
    let report = boot(&image("standin-components"), false);
    assert_node(&report, "10.244.7.0/24");
    // The profile pins crictl: the agent ran it on the node, through the rendered crictl.yaml.
    let cri = report["stages"].as_array().unwrap().iter().find(|s| s["name"] == "cri").unwrap();
    let crictl = &cri["detail"]["crictl"];
    assert_eq!(crictl["path"], "/usr/local/bin/crictl", "{cri:#}");
    assert_eq!(crictl["version"]["runtime_name"], "containerd", "{cri:#}");
}

#[test]
fn netboot_of_the_cpio_artifacts() {
    let report = boot(&image("standin"), true);
    assert_node(&report, "10.88.0.0/16");
    assert_eq!(report["mode"], "netboot");
}

/// A stock image made a node by its seed alone: the disk is the base without the overlay
/// (standing in for a Debian cloud image), and first boot unpacks overlay.tar.gz from the
/// seed volume, starts containerd and imports the images. Every stage must pass as on a
/// baked image.
///
/// `boot` (systemd `running`) includes cloud-final, and so the unpacking and the image
/// import, which a baked image does not do at boot: it gets the cloud-init stage's limit.
#[test]
fn first_boot_turns_the_stock_base_into_a_node() {
    let dir = image_with("standin", &["--first-boot"]);
    let report = boot_with(&dir, false, &["--timeout", "1200", "--stage-timeout", "boot=600"]);
    assert_node(&report, "10.88.0.0/16");
}
