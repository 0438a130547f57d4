//! The `join` stage against a stand-in API server on 127.0.0.1 replaying recorded responses
//! (`fixtures/api/`): the stage function itself, no QEMU. Nothing here talks to a real
//! kube-apiserver or kubelet; none can be installed on the machines this runs on.

#![cfg(feature = "join")]
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

mod common;

use std::time::{Duration, Instant};

use common::apiserver::{ApiServer, TOKEN, write_kubeconfig};
use test_vm::join::{JoinResult, JoinSpec, wait_for_node};

const NOTFOUND: (u16, &str) = (404, "status-404-not-found.json");
const NOTREADY: (u16, &str) = (200, "node-notready.json");
const READY: (u16, &str) = (200, "node-ready.json");

fn spec(kubeconfig: std::path::PathBuf, timeout: Duration) -> JoinSpec {
    JoinSpec {
        kubeconfig,
        node_name: "worker-1".into(),
        expected_runtime: "containerd://1.6.20".into(),
        timeout,
        poll: Duration::from_millis(100),
        pod_image: None,
    }
}

/// Run the stage against a server replaying `steps` for worker-1.
fn join(steps: &[(u16, &str)], timeout: Duration) -> (JoinResult, ApiServer, Duration) {
    let server = ApiServer::start(&[("worker-1", steps)]);
    let dir = tempfile::tempdir().unwrap();
    let s = spec(server.kubeconfig(dir.path()), timeout);
    let start = Instant::now();
    let r = wait_for_node(&s, &mut || None);
    (r, server, start.elapsed())
}

#[test]
fn registers_then_becomes_ready() {
    let (r, server, _) = join(&[NOTFOUND, NOTFOUND, NOTREADY, READY], Duration::from_secs(20));
    assert!(r.passed, "{r:?}");
    assert_eq!(r.message, "node `worker-1` Ready on containerd://1.6.20");
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "one GET per poll until Ready: {seen:?}");
    for s in &seen {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("GET", "/api/v1/nodes/worker-1"));
        assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    }
    assert_eq!(r.detail["ready"]["reason"], "KubeletReady");
    assert_eq!(r.detail["kubelet_version"], "v1.30.2");
    assert_eq!(r.detail["server"], server.url());
    let row = r.detail["row"].as_str().unwrap();
    let lines: Vec<&str> = row.lines().collect();
    assert_eq!(lines.len(), 2, "{row}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    assert!(lines[1].starts_with("worker-1   Ready    <none>   "), "{row}");
    assert!(
        lines[1].ends_with("v1.30.2   10.0.2.15     <none>        Debian GNU/Linux 12 (bookworm)   6.1.0-27-amd64   containerd://1.6.20"),
        "{row}"
    );
    // The columns line up under the header, as kubectl's tabwriter lays them out.
    for col in ["VERSION", "INTERNAL-IP", "OS-IMAGE", "CONTAINER-RUNTIME"] {
        let at = lines[0].find(col).unwrap();
        assert_ne!(lines[1].as_bytes()[at], b' ', "{col} misaligned:\n{row}");
        assert_eq!(lines[1].as_bytes()[at - 1], b' ', "{col} misaligned:\n{row}");
    }
}

#[test]
fn a_different_containerd_fails_naming_both_versions() {
    let (r, _, took) = join(&[NOTFOUND, (200, "node-ready-containerd-1.7.27.json")], Duration::from_secs(20));
    assert!(!r.passed);
    assert_eq!(
        r.message,
        "node `worker-1` runs containerd://1.7.27, expected containerd://1.6.20 (status.nodeInfo.containerRuntimeVersion)"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A wrong runtime is final even before Ready: it fails at registration.
    let (r, _, took) = join(&[(200, "node-notready-docker.json")], Duration::from_secs(20));
    assert!(!r.passed);
    assert!(r.message.contains("runs docker://24.0.7, expected containerd://1.6.20"), "{}", r.message);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn never_ready_fails_at_the_timeout_with_the_kubelets_reason() {
    let (r, server, took) = join(&[NOTFOUND, NOTREADY], Duration::from_secs(2));
    assert!(!r.passed);
    assert_eq!(
        r.message,
        "node `worker-1` registered but was not Ready within 2 s: Ready=False KubeletNotReady: container runtime \
         network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: \
         cni plugin not initialized"
    );
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(6), "{took:?}");
    assert!(server.requests().len() >= 5, "polled every 100 ms: {}", server.requests().len());
    assert_eq!(r.detail["ready"]["status"], "False");
}

#[test]
fn never_registered_fails_at_the_timeout() {
    let (r, _, took) = join(&[NOTFOUND], Duration::from_secs(1));
    assert!(!r.passed);
    let server = r.detail["server"].as_str().unwrap().to_owned();
    assert_eq!(
        r.message,
        format!("node `worker-1` did not register with {server} within 1 s (GET nodes/worker-1: 404 NotFound)")
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn unauthorized_and_forbidden_fail_fast_with_the_servers_message() {
    let (r, server, took) = join(&[(401, "status-401-unauthorized.json")], Duration::from_secs(60));
    assert!(!r.passed);
    assert_eq!(
        r.message,
        format!(
            "the API server at {} refused the kubeconfig's credentials (401 Unauthorized): Unauthorized",
            server.url()
        )
    );
    assert!(took < Duration::from_secs(5), "401 is final, not retried until the timeout: {took:?}");
    assert_eq!(server.requests().len(), 1);

    let (r, _, took) = join(&[NOTFOUND, (403, "status-403-forbidden.json")], Duration::from_secs(60));
    assert!(!r.passed);
    assert!(r.message.contains("does not allow the kubeconfig's user to get nodes (403 Forbidden)"), "{}", r.message);
    assert!(
        r.message.contains("cannot get resource \"nodes\" in API group \"\" at the cluster scope"),
        "{}",
        r.message
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_refused_connection_is_named() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let s = spec(write_kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}")), Duration::from_secs(2));
    let start = Instant::now();
    let r = wait_for_node(&s, &mut || None);
    assert!(!r.passed);
    assert!(r.message.starts_with(&format!("cannot reach the API server at http://127.0.0.1:{port}")), "{}", r.message);
    assert!(r.message.to_lowercase().contains("connection refused"), "{}", r.message);
    assert!(start.elapsed() < Duration::from_secs(6), "{:?}", start.elapsed());
}

#[test]
fn a_missing_or_broken_kubeconfig_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path().join("nope"), Duration::from_secs(1));
    let r = wait_for_node(&s, &mut || None);
    assert!(!r.passed && r.message.starts_with("reading the kubeconfig"), "{}", r.message);
    std::fs::write(dir.path().join("kc"), "apiVersion: v1\nkind: Config\nclusters: []\n").unwrap();
    let s = spec(dir.path().join("kc"), Duration::from_secs(1));
    let r = wait_for_node(&s, &mut || None);
    assert!(!r.passed && r.message.starts_with("the kubeconfig"), "{}", r.message);
}

#[test]
fn the_caller_can_stop_the_wait() {
    let server = ApiServer::start(&[("worker-1", &[NOTREADY])]);
    let dir = tempfile::tempdir().unwrap();
    let s = spec(server.kubeconfig(dir.path()), Duration::from_secs(60));
    let start = Instant::now();
    let mut asked = 0;
    let r = wait_for_node(&s, &mut || {
        asked += 1;
        (asked > 10).then(|| "interrupted by a signal".to_owned())
    });
    assert!(!r.passed);
    assert_eq!(r.message, "interrupted by a signal");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}
