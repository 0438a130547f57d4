//! The `join` stage through the CLI, and `test-vm fleet`, with the fake guest (see `common`)
//! under TCG and the stand-in API server on 127.0.0.1 (`common::apiserver`).

// Every test here either needs the join stage or passes --kubeconfig to a fleet.
#![cfg(feature = "join")]
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::apiserver::ApiServer;
use common::{FakeArtifacts, Scenario, qemu_pids_with, wait_until};

fn show(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The `<testsuite>` elements of a JUnit document, read with an XML parser: (name, tests,
/// failures, the testcase names). Panics on malformed XML.
fn suites(xml: &str) -> Vec<(String, u32, u32, Vec<String>)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let attr = |e: &quick_xml::events::BytesStart, key: &str| {
        e.attributes()
            .map(Result::unwrap)
            .find(|a| a.key.as_ref() == key.as_bytes())
            .map(|a| a.unescape_value().unwrap().into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut depth_names = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testsuite" => {
                let n = |k| attr(&e, k).parse().unwrap();
                out.push((attr(&e, "name"), n("tests"), n("failures"), Vec::new()));
            }
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testcase" => {
                out.last_mut().unwrap().3.push(attr(&e, "name"));
            }
            Event::Start(e) => depth_names.push(e.name().as_ref().to_vec()),
            Event::End(e) if e.name().as_ref() != b"testsuite" && e.name().as_ref() != b"testcase" => {
                assert_eq!(depth_names.pop().as_deref(), Some(e.name().as_ref()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn boot_with_a_kubeconfig_runs_the_join_stage() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let server = ApiServer::start(&[("fake-node", &[(404, "status-404-not-found.json"), (200, "node-ready.json")])]);
    let kc = server.kubeconfig(a.dir.path());
    let out = a.command().arg("--kubeconfig").arg(&kc).args(["--node-name", "fake-node"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = a.report();
    let stages = r["stages"].as_array().unwrap();
    let join = stages.last().unwrap();
    assert_eq!((join["name"].as_str(), join["verdict"].as_str()), (Some("join"), Some("pass")), "{r}");
    assert_eq!(join["message"], "node `fake-node` Ready on containerd://1.6.20");
    assert_eq!(join["detail"]["container_runtime_version"], "containerd://1.6.20");
    assert!(server.requests().len() >= 2, "asked until Ready");
    // The row is printed, as kubectl would.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NAME        STATUS   ROLES    AGE"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("fake-node   Ready    <none>")), "{stdout}");
    let junit = std::fs::read_to_string(a.path("junit.xml")).unwrap();
    let s = suites(&junit);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].1, s[0].2), (8, 0));
    assert_eq!(s[0].3.last().map(String::as_str), Some("join"));
    assert!(a.qemu_pids().is_empty(), "QEMU left running after the join");
}

#[test]
fn a_wrong_runtime_fails_the_join_stage() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let server = ApiServer::start(&[("fake-node", &[(200, "node-ready.json")])]);
    let kc = server.kubeconfig(a.dir.path());
    let out = a
        .command()
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["--node-name", "fake-node", "--expect-runtime-version", "containerd://1.7.27"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = a.report();
    assert_eq!(r["failure"]["stage"], "join");
    let msg = r["failure"]["message"].as_str().unwrap();
    assert!(msg.contains("runs containerd://1.6.20, expected containerd://1.7.27"), "{msg}");
    let junit = std::fs::read_to_string(a.path("junit.xml")).unwrap();
    assert!(junit.contains("name=\"join\""), "{junit}");
    assert_eq!(suites(&junit)[0].2, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stage `join` failed") && stderr.contains("fake-init: starting the agent"), "{stderr}");
}

#[test]
fn a_seed_without_a_hostname_needs_node_name() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let kc = common::apiserver::write_kubeconfig(a.dir.path(), "http://127.0.0.1:1");
    let out = a.command().arg("--kubeconfig").arg(&kc).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a FAT seed image") && stderr.contains("--node-name"), "{stderr}");
    assert!(a.qemu_pids().is_empty());
}

/// Two nodes from one image: `node-a` passes (and joins), `node-b`'s seed makes containerd fail.
fn check_fleet(a: &FakeArtifacts, out_dir: &Path, out: &Output, server: &ApiServer) {
    assert_eq!(out.status.code(), Some(1), "one node failed: {}", show(out));
    let ra = json(&out_dir.join("node-a/report.json"));
    let rb = json(&out_dir.join("node-b/report.json"));
    assert_eq!(ra["verdict"], "pass", "{ra}");
    assert_eq!(ra["stages"].as_array().unwrap().last().unwrap()["name"], "join");
    assert_eq!(rb["failure"]["stage"], "containerd", "{rb}");
    assert!(rb["failure"]["message"].as_str().unwrap().contains("asked containerd to fail"), "{rb}");
    assert!(rb["stages"].as_array().unwrap().last().unwrap()["verdict"] == "not-run", "join not reached");
    // Each node had its own serial log, its own copy-on-write layer of the one disk.
    for n in ["node-a", "node-b"] {
        let serial = std::fs::read_to_string(out_dir.join(n).join("serial.log")).unwrap();
        assert!(serial.contains("fake-init: starting the agent"), "{n}: {serial}");
        assert!(out_dir.join(n).join("junit.xml").is_file());
    }
    let (qa, qb) = (ra["qemu_command"].as_str().unwrap(), rb["qemu_command"].as_str().unwrap());
    assert!(qa.contains("seed-a.img") && qb.contains("seed-b.img"));
    assert!(
        qa.contains(&a.path("vmlinuz").display().to_string()) && qb.contains(&a.path("vmlinuz").display().to_string())
    );
    assert_ne!(qa.split("run.qcow2").next(), qb.split("run.qcow2").next(), "one disk layer each");
    // Only node-a reached the join stage, under its own name.
    assert!(server.requests().iter().all(|s| s.path == "/api/v1/nodes/node-a"), "{:?}", server.requests());
    assert!(!server.requests().is_empty());

    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap();
    let s = suites(&junit);
    let names: Vec<&str> = s.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["test-vm.disk.node-a", "test-vm.disk.node-b"], "{junit}");
    assert_eq!((s[0].1, s[0].2), (8, 0));
    assert_eq!((s[1].1, s[1].2), (8, 1));
    assert!(junit.starts_with("<?xml") && junit.contains("<testsuites name=\"test-vm\" tests=\"16\" failures=\"1\""));

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("== node node-a ==") && stdout.contains("== node node-b =="), "{stdout}");
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("NODE ")).collect();
    assert!(table[1].starts_with("node-a") && table[1].contains(" pass "), "{stdout}");
    assert!(
        table[2].starts_with("node-b") && table[2].contains(" FAIL ") && table[2].contains("containerd"),
        "{stdout}"
    );
    assert!(stdout.contains("fleet: 1 of 2 nodes passed"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("test-vm: node-b: stage `containerd` failed"), "{stderr}");
    for n in ["node-a", "node-b"] {
        assert!(qemu_pids_with(&out_dir.join(n).join("serial.log")).is_empty(), "{n}: QEMU left running");
    }
}

fn fleet_setup() -> (FakeArtifacts, ApiServer) {
    let a = FakeArtifacts::new(Scenario::Pass);
    a.seed("seed-a.img", "");
    a.seed("seed-b.img", "FAIL-CONTAINERD");
    let server = ApiServer::start(&[("node-a", &[(404, "status-404-not-found.json"), (200, "node-ready.json")])]);
    (a, server)
}

fn nodes(a: &FakeArtifacts) -> Vec<String> {
    ["a", "b"]
        .iter()
        .flat_map(|n| ["--node".into(), format!("node-{n}={}", a.path(&format!("seed-{n}.img")).display())])
        .collect()
}

#[test]
fn a_sequential_fleet_reports_each_node_and_fails_if_one_fails() {
    let (a, server) = fleet_setup();
    let out_dir = a.path("out");
    let out = a
        .fleet_command(&out_dir)
        .args(nodes(&a))
        .arg("--kubeconfig")
        .arg(server.kubeconfig(a.dir.path()))
        .output()
        .unwrap();
    check_fleet(&a, &out_dir, &out, &server);
}

#[test]
fn a_parallel_fleet_runs_its_nodes_at_once() {
    let (a, server) = fleet_setup();
    let out_dir = a.path("out");
    let child = a
        .fleet_command(&out_dir)
        .args(nodes(&a))
        .arg("--kubeconfig")
        .arg(server.kubeconfig(a.dir.path()))
        .args(["--parallel", "2", "--cpus", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both QEMUs are alive at the same moment.
    let both = wait_until(Duration::from_secs(60), || {
        ["node-a", "node-b"].iter().all(|n| !qemu_pids_with(&out_dir.join(n).join("serial.log")).is_empty())
    });
    let out = child.wait_with_output().unwrap();
    assert!(both, "the two nodes never ran at once: {}", show(&out));
    check_fleet(&a, &out_dir, &out, &server);
    assert!(json(&out_dir.join("node-a/report.json"))["qemu_command"].as_str().unwrap().contains("-smp 1"));
}

#[test]
fn more_vcpus_than_cores_is_refused_unless_forced() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let cores = std::thread::available_parallelism().unwrap().get();
    let out = a
        .fleet_command(&a.path("out"))
        .args(["--node", "n1=s1", "--node", "n2=s2", "--parallel", "2", "--cpus", &cores.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("this host has {cores} cores")) && stderr.contains("--overcommit"), "{stderr}");
    assert!(!a.path("out").exists(), "refused before anything was written");
}
