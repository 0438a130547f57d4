//! `nodeforge replace` against a real API server (the control plane of `test_vm::cluster`),
//! with Node objects whose status this test writes itself, so that each outcome is decided by
//! the real API server's answers (evictions, PodDisruptionBudgets, graceful deletion, RBAC)
//! in seconds, without booting a machine. The whole replacement of a real node, booted twice
//! under QEMU, is `scripts/replace-demo.sh`, which `make test` runs.
//!
//! The reprovision step is a shell command given to replace: here it is `kubectl` writing the
//! Node's status as a machine booting the new image would (a new boot id, Ready, a runtime).

#![cfg(feature = "join")]
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use test_vm::cluster::{ControlPlane, ControlPlaneConfig};

mod upstream {
    include!("common/upstream.rs");
}

fn bin_dir() -> PathBuf {
    upstream::bin_dir()
}

struct Cluster {
    kubeconfig: PathBuf,
    _cp: ControlPlane,
    _dir: tempfile::TempDir,
}

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&ControlPlaneConfig::new(bin_dir(), dir.path().join("cp"))).unwrap();
        Cluster { kubeconfig: cp.info().admin_kubeconfig.clone(), _cp: cp, _dir: dir }
    })
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn kubectl_line(kubeconfig: &Path) -> String {
    format!("{} --kubeconfig {} --request-timeout=20s", bin_dir().join("kubectl").display(), kubeconfig.display())
}

/// `kubectl ARGS` (a shell line, for stdin documents), which must succeed.
fn kubectl(args: &str, stdin: &str) -> String {
    let line = format!("{} {args}", kubectl_line(&cluster().kubeconfig));
    let mut child = Command::new("sh")
        .args(["-c", &line])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "kubectl {args}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The shell command that writes `node`'s status as a machine that booted with `boot` would.
fn status_patch(node: &str, boot: &str, runtime: &str) -> String {
    let now = "$(date -u +%Y-%m-%dT%H:%M:%SZ)";
    format!(
        "{} patch node {node} --subresource=status --type=merge -p \"{{\\\"status\\\":{{\\\"conditions\\\":[{{\\\"type\\\":\\\"Ready\\\",\\\"status\\\":\\\"True\\\",\\\"reason\\\":\\\"KubeletReady\\\",\\\"message\\\":\\\"test\\\",\\\"lastHeartbeatTime\\\":\\\"{now}\\\",\\\"lastTransitionTime\\\":\\\"{now}\\\"}}],\\\"nodeInfo\\\":{{\\\"bootID\\\":\\\"{boot}\\\",\\\"containerRuntimeVersion\\\":\\\"{runtime}\\\",\\\"kubeletVersion\\\":\\\"v1.34.4\\\",\\\"kernelVersion\\\":\\\"6.1.0-test\\\",\\\"osImage\\\":\\\"Debian GNU/Linux 12 (bookworm)\\\",\\\"machineID\\\":\\\"m\\\",\\\"systemUUID\\\":\\\"s\\\",\\\"kubeProxyVersion\\\":\\\"\\\",\\\"operatingSystem\\\":\\\"linux\\\",\\\"architecture\\\":\\\"amd64\\\"}}}}}}\" >/dev/null",
        kubectl_line(&cluster().kubeconfig)
    )
}

/// A Node `name` as its first machine left it: Ready on containerd 1.6, boot `old`.
fn node(name: &str) {
    kubectl("apply -f -", &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"));
    let o = Command::new("sh").args(["-c", &status_patch(name, "old", "containerd://1.6.20")]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// A pod bound to `node`, in `phase` (written by the test, as the kubelet would).
fn pod(name: &str, node: &str, labels: &str, phase: &str) {
    kubectl(
        "apply -f -",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: nodeforge.test/busybox:1}}]}}\n"
        ),
    );
    let ready = if phase == "Running" { "True" } else { "False" };
    kubectl(
        &format!(
            "patch pod {name} --subresource=status --type=merge -p '{{\"status\":{{\"phase\":\"{phase}\",\
             \"conditions\":[{{\"type\":\"Ready\",\"status\":\"{ready}\"}}]}}}}'"
        ),
        "",
    );
}

fn replace(node: &str, extra: &[&str]) -> Output {
    let nodeforge = Path::new(env!("CARGO_BIN_EXE_test-vm")).with_file_name("nodeforge");
    assert!(nodeforge.is_file(), "run `cargo build --workspace` first (make test does)");
    Command::new(nodeforge)
        .args(["replace", "--node", node, "--expect-runtime", "containerd://2.2.9", "--kubeconfig"])
        .arg(&cluster().kubeconfig)
        .args(extra)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn cordoned(node: &str) -> bool {
    kubectl(&format!("get node {node} -o jsonpath={{.spec.unschedulable}}"), "") == "true"
}

#[test]
fn a_node_that_comes_back_on_the_new_runtime_is_uncordoned_and_reported() {
    node("back-ok");
    // Finished pods go at once (no grace period): the drain's eviction and its wait for them
    // are exercised without a kubelet.
    pod("done-1", "back-ok", "app: done", "Succeeded");
    let cmd = status_patch("back-ok", "new", "containerd://2.2.9");
    let o = replace("back-ok", &["--reprovision-cmd", &cmd, "--timeout", "60s", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["before"]["container_runtime_version"], "containerd://1.6.20", "{r:#}");
    assert_eq!(r["after"]["container_runtime_version"], "containerd://2.2.9", "{r:#}");
    assert_eq!(r["before"]["boot_id"], "old");
    assert_eq!(r["after"]["boot_id"], "new");
    assert_eq!(r["after"]["row"][9], "containerd://2.2.9");
    assert_eq!(r["after"]["unschedulable"], false);
    assert_eq!(r["drained"], serde_json::json!([{"namespace": "default", "name": "done-1", "verdict": "evicted"}]));
    assert!(!cordoned("back-ok"));
    assert_eq!(kubectl("get pods --field-selector spec.nodeName=back-ok -o name", ""), "");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("cordoning `back-ok`") && stderr.contains("uncordoning"), "{stderr}");
}

#[test]
fn a_disruption_budget_blocks_the_drain_and_the_node_stays_cordoned() {
    node("pdb-node");
    pod("guarded", "pdb-node", "app: guarded", "Running");
    kubectl(
        "apply -f -",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guarded, namespace: default}\n\
         spec: {minAvailable: 1, selector: {matchLabels: {app: guarded}}}\n",
    );
    // The disruption controller must have seen the pod before a refusal is certain.
    for _ in 0..100 {
        if kubectl("get pdb guarded -o jsonpath={.status.currentHealthy}", "") == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let o = replace("pdb-node", &["--force", "--drain-timeout", "6s", "--reprovision-cmd", "false"]);
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("default/guarded (PodDisruptionBudget guarded)") && err.contains("left cordoned"), "{err}");
    assert!(cordoned("pdb-node"));
    assert_eq!(kubectl("get pod guarded -o jsonpath={.metadata.deletionTimestamp}", ""), "", "not evicted");
}

#[test]
fn pods_that_would_be_lost_stop_the_drain_before_any_eviction() {
    node("lossy");
    pod("orphan", "lossy", "app: orphan", "Running");
    pod("done-2", "lossy", "app: done", "Succeeded");
    let o = replace("lossy", &["--reprovision-cmd", "false"]);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("default/orphan: no controller would recreate it (--force"), "{err}");
    assert!(cordoned("lossy"));
    // Nothing was evicted, the finished pod included.
    assert_eq!(kubectl("get pods --field-selector spec.nodeName=lossy -o name", "").lines().count(), 2);
}

#[test]
fn each_failure_after_the_drain_has_its_own_exit_code_and_leaves_the_node_cordoned() {
    node("fails-reprovision");
    let o = replace("fails-reprovision", &["--reprovision-cmd", "echo reprovisioning; exit 3"]);
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exit status: 3"), "{}", text(&o));
    assert!(cordoned("fails-reprovision"));

    node("never-back");
    let o = replace("never-back", &["--reprovision-cmd", "true", "--timeout", "5s"]);
    assert_eq!(o.status.code(), Some(13), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was not back Ready on containerd://2.2.9 from a new boot within 5 s")
            && err.contains("still the old boot"),
        "{err}"
    );
    assert!(cordoned("never-back"));

    node("wrong-runtime");
    let cmd = status_patch("wrong-runtime", "new", "containerd://1.7.27");
    let o = replace("wrong-runtime", &["--reprovision-cmd", &cmd, "--runtime-grace", "4s", "--timeout", "60s"]);
    assert_eq!(o.status.code(), Some(14), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Ready on containerd://1.7.27, expected containerd://2.2.9"), "{err}");
    assert!(cordoned("wrong-runtime"));
}
