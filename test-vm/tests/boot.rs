//! End-to-end runs of the `test-vm` binary against the fake guest (see `common`), under TCG.
//! Each boot takes ~5–8 s of wall time on two cores.

#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{FakeArtifacts, Scenario, wait_until};
use sha2::{Digest, Sha256};

fn sha256(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn run(a: &FakeArtifacts, extra: &[&str]) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let out = a.command().args(extra).output().unwrap();
    (out, start.elapsed())
}

fn show(out: &std::process::Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_passing_run_reports_every_stage_and_leaves_the_image_alone() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let before = sha256(&a.path("disk.qcow2"));
    let (out, took) = run(&a, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    eprintln!("fake-guest pass run: {took:?}");

    let r = a.report();
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["accel"], "tcg");
    let names: Vec<_> = r["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["kernel", "boot", "cloud-init", "containerd", "cri", "pod", "kubelet-config"]);
    assert!(r["stages"].as_array().unwrap().iter().all(|s| s["verdict"] == "pass" && s["duration_ms"].is_u64()));
    assert_eq!(r["cri_version"]["runtime_name"], "containerd");
    assert_eq!(r["cri_version"]["runtime_api_version"], "v1");
    assert_eq!(r["pod_ip"], "10.88.0.2");
    // expect.json reached the agent through the appended archive: the profile said cgroupfs.
    assert_eq!(r["stages"][1]["detail"]["cgroup_driver"], "cgroupfs");
    assert!(r["qemu_command"].as_str().unwrap().contains("-accel tcg"));
    assert!(r["workdir"].is_null(), "a passing run removes its work directory");

    let junit = std::fs::read_to_string(a.path("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"7\" failures=\"0\""), "{junit}");
    assert_eq!(junit.matches("<testcase ").count(), 7);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verdict: PASS"), "{stdout}");

    // The guest wrote to its disk; the built image did not change, and a second run works.
    assert!(std::fs::read_to_string(a.path("serial.log")).unwrap().contains("starting the agent"));
    assert_eq!(sha256(&a.path("disk.qcow2")), before, "the base image was modified");
    let (again, _) = run(&a, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    assert_eq!(sha256(&a.path("disk.qcow2")), before);
    assert!(a.qemu_pids().is_empty(), "QEMU left running after success");
}

#[test]
fn netboot_appends_the_overlay_cpio() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let out = a.netboot_command().output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = a.report();
    assert_eq!((r["verdict"].as_str(), r["mode"].as_str()), (Some("pass"), Some("netboot")));
    assert!(!r["qemu_command"].as_str().unwrap().contains("virtio-blk-pci,drive=disk0"));
    // The agent's check is live: a cpio without the marker in place of the overlay fails.
    let out = a.netboot_command().arg("--overlay").arg(a.path("initrd.img")).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(a.report()["failure"]["message"].as_str().unwrap().contains("overlay cpio was not appended"));
}

#[test]
fn a_failing_stage_stops_the_run_with_its_message() {
    let a = FakeArtifacts::new(Scenario::FailContainerd);
    let (out, _) = run(&a, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = a.report();
    assert_eq!(r["verdict"], "fail");
    assert_eq!(r["failure"]["stage"], "containerd");
    assert_eq!(r["failure"]["message"], "containerd.service is failed");
    let verdicts: Vec<_> = r["stages"].as_array().unwrap().iter().map(|s| s["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["pass", "pass", "pass", "fail", "not-run", "not-run", "not-run"]);
    assert_eq!(r["stages"][3]["detail"]["active_state"], "failed");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stage `containerd` failed"), "{stderr}");
    assert!(stderr.contains("qemu-system-x86_64 -machine q35"), "the QEMU command line: {stderr}");
    assert!(stderr.contains("fake-init: starting the agent"), "the serial tail: {stderr}");
    let junit = std::fs::read_to_string(a.path("junit.xml")).unwrap();
    assert!(junit.contains("<failure message=\"containerd.service is failed\">"), "{junit}");
    assert!(junit.contains("skipped=\"3\""), "{junit}");
    // A failed run keeps its logs.
    let workdir = std::path::PathBuf::from(r["workdir"].as_str().unwrap());
    assert!(workdir.join("agent.jsonl").is_file());
    assert!(!workdir.join("run.qcow2").exists(), "but not the disk layer");
    std::fs::remove_dir_all(workdir).unwrap();
    assert!(a.qemu_pids().is_empty(), "QEMU left running after a failure");
}

#[test]
fn a_kernel_panic_fails_within_seconds_not_at_the_timeout() {
    let a = FakeArtifacts::new(Scenario::Panic);
    // panic=0 (last wins) keeps the panicked guest alive: the harness must read the console
    // rather than wait for QEMU to exit.
    let (out, took) = run(&a, &["--append", "panic=0", "--timeout", "300"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = a.report();
    // The crash can overtake the agent's last write to the port, so `boot` may not have
    // been reported yet.
    assert!(["boot", "cloud-init"].contains(&r["failure"]["stage"].as_str().unwrap()), "{r}");
    assert!(r["failure"]["message"].as_str().unwrap().starts_with("kernel panic"), "{r}");
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert!(a.qemu_pids().is_empty());
}

#[test]
fn emergency_mode_fails_fast() {
    let a = FakeArtifacts::new(Scenario::Emergency);
    let (out, took) = run(&a, &["--timeout", "300"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = a.report();
    assert!(r["failure"]["message"].as_str().unwrap().contains("emergency mode"), "{r}");
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

#[test]
fn a_hanging_stage_hits_its_own_timeout() {
    let a = FakeArtifacts::new(Scenario::Hang);
    let (out, took) = run(&a, &["--stage-timeout", "cloud-init=2", "--timeout", "300"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = a.report();
    assert_eq!(r["failure"]["stage"], "cloud-init");
    // The agent's limit plus the harness's grace of 5 s.
    assert_eq!(r["failure"]["message"], "timed out after 7 s");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(a.qemu_pids().is_empty(), "QEMU left running after a timeout");
}

/// Start a hanging run in the background and wait until its QEMU is up.
fn start_hanging(a: &FakeArtifacts) -> (std::process::Child, u32) {
    let child = a.command().args(["--timeout", "300"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut qemu = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            qemu = a.qemu_pids().first().copied().unwrap_or(0);
            qemu != 0
        }),
        "QEMU never started"
    );
    (child, qemu)
}

fn alive(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status.is_empty() && !status.lines().any(|l| l.starts_with("State:") && l.contains('Z'))
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
}

#[test]
fn sigint_and_sigterm_stop_qemu_and_exit_130() {
    for sig in ["INT", "TERM"] {
        let a = FakeArtifacts::new(Scenario::Hang);
        let (mut child, qemu) = start_hanging(&a);
        signal(child.id(), sig);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "SIG{sig}");
        assert!(!alive(qemu), "QEMU {qemu} survived SIG{sig} to the harness");
        assert_eq!(a.report()["failure"]["message"], "interrupted by a signal");
    }
}

#[test]
fn kill_9_of_the_harness_takes_qemu_with_it() {
    let a = FakeArtifacts::new(Scenario::Hang);
    let (mut child, qemu) = start_hanging(&a);
    signal(child.id(), "KILL");
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(qemu)), "QEMU {qemu} outlived a SIGKILLed harness");
}

#[test]
fn a_panicking_harness_still_reaps_qemu() {
    // The Drop guard, as unwinding from a panic runs it: a QEMU that would idle forever.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("panic-marker.log");
    let args: Vec<std::ffi::OsString> = ["-machine", "none", "-nodefaults", "-display", "none", "-name"]
        .iter()
        .map(Into::into)
        .chain([marker.clone().into_os_string()])
        .collect();
    let pid = std::panic::catch_unwind(|| {
        let vm = test_vm::qemu::Qemu::spawn("qemu-system-x86_64".as_ref(), &args, &dir.path().join("err")).unwrap();
        assert!(wait_until(Duration::from_secs(10), || !common::qemu_pids_with(&marker).is_empty()));
        std::panic::panic_any(vm.pid());
    })
    .unwrap_err();
    let pid = *pid.downcast::<u32>().unwrap();
    assert!(!alive(pid), "QEMU {pid} survived a panic");
    assert!(common::qemu_pids_with(&marker).is_empty());
}

#[test]
fn auto_falls_back_to_tcg_when_kvm_stays_silent() {
    let a = FakeArtifacts::new(Scenario::Pass);
    let start = Instant::now();
    let out = a.command_with_accel("auto").args(["--kvm-grace", "4"]).output().unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let r = a.report();
    let attempts = r["accel_attempts"].as_array().unwrap();
    if !test_vm::accel::kvm_usable() {
        assert_eq!(attempts.len(), 1);
        assert_eq!(r["accel"], "tcg");
    } else if r["accel"] == "tcg" {
        // This machine: /dev/kvm opens, the KVM guest never prints (or `-cpu host` aborts).
        assert_eq!(attempts[0]["accel"], "kvm");
        assert_ne!(attempts[0]["outcome"], "used");
        eprintln!("kvm abandoned: {} (whole run {took:?})", attempts[0]["outcome"]);
        assert!(attempts[0]["outcome"].as_str().unwrap().starts_with("probe: "), "the firmware probe, not the grace");
        assert!(r["stages"][0]["duration_ms"].as_u64().unwrap() < 30_000);
    } else {
        assert_eq!(r["accel"], "kvm", "KVM works here");
    }
    assert!(a.qemu_pids().is_empty());
}

/// The firmware-only KVM probe of `--accel auto` decides within 2 s, whether KVM works or not
/// (here it does not: SeaBIOS stops half-way through its self test).
#[test]
fn the_kvm_probe_decides_within_two_seconds() {
    if !test_vm::accel::kvm_usable() {
        eprintln!("no usable /dev/kvm: auto never probes here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qemu = std::env::var_os("TEST_VM_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let start = Instant::now();
    let verdict = test_vm::qemu::probe_kvm(&qemu, dir.path());
    let took = start.elapsed();
    eprintln!("kvm probe: {verdict:?} in {took:?}");
    assert!(took < Duration::from_secs(2), "the KVM probe took {took:?}");
}

/// A QEMU whose guest prints the kernel banner and a line of its boot, then nothing, as a
/// TCG guest did once in CI (stuck at 0.91 s of guest time). It notes its pid at each start.
const STALLING_QEMU: &str = r#"#!/bin/sh
echo $$ >>"$(dirname "$0")/starts"
for a in "$@"; do
  case "$a" in file,id=serial0,path=*) log=${a#file,id=serial0,path=} ;; esac
done
printf '[    0.000000] Linux version 6.1.0-57-amd64 (stalling stand-in)\n' >>"$log"
printf '[    0.912247] VFS: Dquot-cache hash table entries: 512 (order 0, 4096 bytes)\n' >>"$log"
exec sleep 600
"#;

#[test]
fn a_kernel_that_stalls_before_init_is_booted_once_more_then_fails_boot_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let a = FakeArtifacts::new(Scenario::Pass);
    let qemu = a.path("stalling-qemu");
    std::fs::write(&qemu, STALLING_QEMU).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = Instant::now();
    let out =
        a.command().env("TEST_VM_QEMU", &qemu).args(["--kernel-stall", "3", "--timeout", "120"]).output().unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    // Two boots, each given up after 3 s of silence: not the boot stage's 360 s.
    assert!(took < Duration::from_secs(40), "took {took:?}");
    let pids = std::fs::read_to_string(a.path("starts")).unwrap();
    assert_eq!(pids.lines().count(), 2, "{pids}");

    let r = a.report();
    assert_eq!((r["failure"]["stage"].as_str(), r["accel"].as_str()), (Some("boot"), Some("tcg")), "{r:#}");
    let msg = r["failure"]["message"].as_str().unwrap();
    assert!(msg.starts_with("the guest's kernel stalled before starting init"), "{msg}");
    assert!(msg.contains("no console output for 3 s after `[    0.912247] VFS: Dquot-cache"), "{msg}");
    let attempts = r["accel_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{r:#}");
    assert!(attempts[0]["outcome"].as_str().unwrap().ends_with("; booted again"), "{r:#}");
    assert_eq!(attempts[1]["outcome"], "used");
    for pid in pids.lines() {
        assert!(!Path::new("/proc").join(pid).exists(), "the stalled QEMU {pid} was left running");
    }
}
