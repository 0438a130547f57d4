//! The whole mission, end to end, for real: the release mirror served on 127.0.0.1 (Debian's
//! containerd 1.6 bundle; Kubernetes, containerd 2.x, runc, the CNI plugins and crictl built
//! from their Go modules) → `nodeforge image` on the debootstrap base → `test-vm boot` under
//! QEMU, with nodeforge's guest agent checking the node stage by stage over CRI, and against
//! a real control plane on 127.0.0.1 (`test_vm::cluster`), the real `kubeadm join` from the
//! seed and the join stage: Node Ready with the built runtime, a pod bound to it Succeeded.
//!
//! The bundle node with a join is `make demo` itself, which `make test` runs (so a broken
//! demo fails CI), and the containerd 2.x node joining is the replace demo's second boot.
//! Here: a netboot of the containerd 2.x node's cpio artifacts whose CA pin is wrong, which
//! must fail the join stage in kubeadm's own words long before its timeout while every
//! runtime stage passes; and a stock base made a node by its seed alone (first boot). The
//! `test-vm fleet` mechanics (nodes side by side, one vCPU each) are `tests/fleet.rs`'s.
//!
//! Slow by nature (each boot is about a minute under TCG): the boots take turns, because
//! two TCG guests on a 2-core machine would each run at half speed and race their timeouts.

#![cfg(feature = "join")] // the control plane and the join stage are kube-rs
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use test_support::http_server::TestServer;
use test_vm::cluster::{ControlPlane, ControlPlaneConfig};

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

/// One boot at a time: see the module comment.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The control plane every joining node of this test binary joins; started once.
fn control_plane() -> &'static Mutex<ControlPlane> {
    static CP: OnceLock<Mutex<ControlPlane>> = OnceLock::new();
    CP.get_or_init(|| {
        let dir = tmp_root().join("control-plane");
        let _ = fs::remove_dir_all(&dir);
        let cfg = ControlPlaneConfig::new(inputs().mirror.join("bin"), &dir);
        let started = Instant::now();
        let cp = ControlPlane::start(&cfg).unwrap_or_else(|e| panic!("the control plane did not start: {e:#}"));
        eprintln!("control plane ready in {:.1} s", started.elapsed().as_secs_f64());
        Mutex::new(cp)
    })
}

/// What a seed needs of the control plane (its CA pin is the test's to choose), and the host's
/// kubeconfig.
struct Cluster {
    endpoint: String,
    token_file: PathBuf,
    kubeconfig: PathBuf,
}

fn cluster() -> Cluster {
    let mut cp = control_plane().lock().unwrap_or_else(|e| e.into_inner());
    cp.check().unwrap_or_else(|e| panic!("the control plane is down: {e}"));
    let i = cp.info();
    Cluster { endpoint: i.endpoint.clone(), token_file: i.token_file.clone(), kubeconfig: i.admin_kubeconfig.clone() }
}

/// `nodeforge seed` for one node of `profile` that joins with these settings.
fn join_seed(profile: &str, node: &str, endpoint: &str, token_file: &Path, ca_cert_hash: &str) -> PathBuf {
    let out = tmp_root().join(format!("seed-{node}"));
    let _ = fs::remove_dir_all(&out);
    let o = Command::new(workspace_bin("nodeforge"))
        .args(["seed", "--profile"])
        .arg(inputs().mirror.join(format!("{profile}.toml")))
        .args(["--node", node, "--join-endpoint", endpoint, "--ca-cert-hash", ca_cert_hash])
        .arg("--token-file")
        .arg(token_file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "nodeforge seed {node}: {}", text(&o));
    out.join("seed.img")
}

/// Boot the image with its own seed and test-vm flags of the caller's choosing (limits).
fn boot_with(dir: &Path, netboot: bool, flags: &[&str]) -> serde_json::Value {
    boot_seeded(dir, netboot, &dir.join("seed.img"), flags)
}

/// [`boot_with`] with another seed than the image's own; the boot must pass.
fn boot_seeded(dir: &Path, netboot: bool, seed: &Path, flags: &[&str]) -> serde_json::Value {
    let (o, report) = run_boot(dir, netboot, seed, flags);
    // The harness prints the QEMU command line, the failing stage and the serial tail itself.
    assert!(o.status.success(), "test-vm boot {}: {}", dir.display(), text(&o));
    report
}

/// One `test-vm boot`, passing or not: its output and its JSON report. The boots take turns.
fn run_boot(dir: &Path, netboot: bool, seed: &Path, flags: &[&str]) -> (Output, serde_json::Value) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = dir.join(if netboot { "netboot.json" } else { "disk.json" });
    let junit = dir.join(if netboot { "netboot.junit.xml" } else { "disk.junit.xml" });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-vm"));
    cmd.arg("boot").arg("--kernel").arg(dir.join("vmlinuz")).arg("--seed").arg(seed);
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
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    eprintln!("boot took {:.1} s", started.elapsed().as_secs_f64());
    let json = fs::read(&report).unwrap_or_else(|e| panic!("no report {} ({e}): {}", report.display(), text(&o)));
    assert!(junit.is_file());
    (o, serde_json::from_slice(&json).unwrap())
}

/// The stage order of a node whose image carries the runtime: its runtime is checked as soon
/// as containerd is up, before cloud-init's final stage (the join) has run.
const RUNTIME_FIRST: [&str; 7] = ["kernel", "boot", "containerd", "cri", "pod", "cloud-init", "kubelet-config"];
/// The order on a node whose seed brings the runtime (first boot): cloud-init first.
const CLOUD_INIT_FIRST: [&str; 7] = ["kernel", "boot", "cloud-init", "containerd", "cri", "pod", "kubelet-config"];

fn assert_node(report: &serde_json::Value, subnet: &str, order: [&str; 7]) {
    assert_eq!(report["verdict"], "pass", "{report:#}");
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(&stages[..7], order);
    assert!(report["stages"].as_array().unwrap().iter().all(|s| s["verdict"] == "pass"), "{report:#}");
    let v = &report["cri_version"];
    assert_eq!(v["runtime_name"], "containerd", "{v}");
    assert_eq!(v["runtime_api_version"], "v1", "{v}");
    let ip: std::net::Ipv4Addr = report["pod_ip"].as_str().unwrap().parse().unwrap();
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    assert!(net.contains(&ip), "pod IP {ip} outside {net}");
}

fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name}"))
}

/// The containerd 2.x node (the per-component path: containerd's own archive, runc, the CNI
/// plugins and crictl as separate releases, the cgroupfs driver, another pod subnet) booted
/// from its cpio artifacts, with a seed whose CA pin is not the cluster's. Every agent stage
/// passes, runtime first (the pinned crictl, CRI v2.2.9, a pod in 10.244.7.0/24), and the
/// join, which cannot succeed, fails the join stage at once in kubeadm's own words read from
/// the guest, not after the stage's 600 s. The bundle node joining is `make demo`, the 2.x
/// node joining the replace demo's second boot.
#[test]
fn netboot_of_the_containerd_2_cpio_artifacts_and_a_wrong_ca_pin_fails_fast_in_kubeadms_words() {
    let dir = image("standin-components");
    let c = cluster();
    let wrong_pin = format!("sha256:{}", "ab".repeat(32));
    let seed = join_seed("standin-components", "wrong-pin", &c.endpoint, &c.token_file, &wrong_pin);
    let kubeconfig = c.kubeconfig.to_str().unwrap();
    let flags = ["--timeout", "900", "--kubeconfig", kubeconfig, "--join-timeout", "600"];
    let (o, report) = run_boot(&dir, true, &seed, &flags);
    assert_eq!(o.status.code(), Some(1), "the join must fail: {}", text(&o));
    assert_eq!(report["mode"], "netboot");
    for s in RUNTIME_FIRST {
        assert_eq!(stage(&report, s)["verdict"], "pass", "{s}: {report:#}");
    }
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(&stages[..7], RUNTIME_FIRST);
    let ip: std::net::Ipv4Addr = report["pod_ip"].as_str().unwrap().parse().unwrap();
    assert!("10.244.7.0/24".parse::<ipnet::Ipv4Net>().unwrap().contains(&ip), "pod IP {ip}");
    // The profile pins crictl: the agent ran it on the node, through the rendered crictl.yaml.
    let cri = stage(&report, "cri");
    assert_eq!(cri["detail"]["crictl"]["path"], "/usr/local/bin/crictl", "{cri:#}");
    assert_eq!(cri["detail"]["crictl"]["version"]["runtime_name"], "containerd", "{cri:#}");
    let version = fs::read_to_string(inputs().mirror.join("upstream.env")).unwrap();
    let version =
        version.lines().find_map(|l| l.strip_prefix("UPSTREAM_CONTAINERD_VERSION=")).unwrap().trim_matches('\'');
    assert_eq!(report["cri_version"]["runtime_version"], format!("v{version}"), "{report:#}");

    // The guest's timeline: the agent was ready (its pod stage over) before cloud-final, and
    // so the join, began.
    let timeline = &stage(&report, "cloud-init")["detail"]["timeline"];
    let at = |unit: &str, when: &str| timeline[unit][when].as_f64().unwrap_or_else(|| panic!("{unit}: {timeline:#}"));
    assert!(at("nodeforge-agent.service", "active_s") <= at("cloud-final.service", "started_s"), "{timeline:#}");
    assert!(at("containerd.service", "active_s") < at("nodeforge-agent.service", "active_s"), "{timeline:#}");

    let join = stage(&report, "join");
    assert_eq!(join["verdict"], "fail", "{join:#}");
    let msg = join["message"].as_str().unwrap();
    assert!(msg.starts_with("kubeadm join failed on the node: ") && msg.contains("none of the public keys"), "{msg}");
    // At once: not after the 600 s join timeout.
    assert!(join["duration_ms"].as_u64().unwrap() < 5_000, "{join:#}");
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
    assert_node(&report, "10.88.0.0/16", CLOUD_INIT_FIRST);
}
