//! Inputs that are not files, or too large to be what they claim: a FIFO or a device as the
//! profile, the token file, the lock file, the CA certificate or the overlay; and signals
//! while a run is blocked. Every such run must end at once with an error naming the path,
//! and SIGINT/SIGTERM must always end a run with exit 130.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http_server::{Route, TestServer};
use common::s;

const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn good_profile(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("good.toml");
    let text = format!(
        "name = \"node-a\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
         [containerd.bundle]\nsha256 = \"{ZERO}\"\n"
    );
    fs::write(&p, text).unwrap();
    p
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// Start nodeforge with a 4 GiB address-space limit, so a run that reads a device into
/// memory fails instead of filling the machine.
fn spawn(args: &[&str], cache: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_nodeforge"))
        .args(args)
        .env("NODEFORGE_CACHE_DIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The run's exit code and stderr. It must end by itself within 5 s; if not, it gets SIGTERM
/// and must end within 5 s more (then it fails the test either way).
fn finish(mut child: Child, what: &str) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut termed = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!termed, "{what}: blocked until SIGTERM: {err}");
            return (out.status.code(), err);
        }
        if Instant::now() > deadline {
            assert!(!termed, "{what}: ignored SIGTERM");
            termed = true;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(5));
            if child.try_wait().unwrap().is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: blocked and ignored SIGTERM");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifos_devices_and_oversized_files_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let good = good_profile(tmp.path());
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let big = tmp.path().join("big.toml");
    fs::write(&big, format!("{}\n# {}\n", fs::read_to_string(&good).unwrap(), "x".repeat(2 << 20))).unwrap();
    let out = tmp.path().join("out");
    let hash = format!("sha256:{}", "a".repeat(64));
    let seed = |flag: &'static str, value: &str| -> Vec<String> {
        let mut v: Vec<String> =
            ["seed", "--profile", s(&good), "--node", "n1", "--out", s(&out)].map(String::from).to_vec();
        if flag == "--token-file" {
            v.extend(["--join-endpoint", "10.0.0.1:6443", "--ca-cert-hash", &hash].map(String::from));
        }
        v.extend([flag.to_owned(), value.to_owned()]);
        v
    };
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (["check", "--profile", s(&fifo)].map(String::from).to_vec(), 3, "a FIFO, not a regular file"),
        (["check", "--profile", "/dev/zero"].map(String::from).to_vec(), 3, "a character device"),
        (["check", "--profile", s(tmp.path())].map(String::from).to_vec(), 3, "a directory"),
        (["check", "--profile", s(&big)].map(String::from).to_vec(), 3, "larger than the limit"),
        (seed("--token-file", s(&fifo)), 2, "a FIFO"),
        (seed("--token-file", "/dev/zero"), 2, "a character device"),
        (seed("--overlay", s(&fifo)), 2, "a FIFO"),
        (
            ["build", "--profile", s(&good), "--out", s(&out), "--locked", "--lock", s(&fifo)]
                .map(String::from)
                .to_vec(),
            3,
            "a FIFO",
        ),
        (["fetch", "--profile", s(&good), "--ca-cert", s(&fifo)].map(String::from).to_vec(), 4, "a FIFO"),
    ];
    for (args, code, says) in cases {
        let what = args.join(" ");
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, err) = finish(spawn(&args, &cache), &what);
        assert_eq!(got, Some(code), "{what}: {err}");
        assert!(err.contains(says), "{what}: expected `{says}` in: {err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{what} took {:?}", started.elapsed());
    }
    assert!(!out.exists(), "an output directory was created");
}

#[test]
fn a_signal_ends_a_run_blocked_on_a_silent_server() {
    let server = TestServer::start();
    let hold = Duration::from_secs(120);
    server.route("/silent.tar.gz", Route::Silent { claimed: 1 << 20, body: vec![0x1f; 1000], hold });
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let profile = tmp.path().join("p.toml");
    fs::write(
        &profile,
        format!(
            "name = \"node-a\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{ZERO}\"\nurl = \"{}\"\n",
            server.url("/silent.tar.gz")
        ),
    )
    .unwrap();
    for sig in ["-INT", "-TERM"] {
        let mut child = spawn(&["fetch", "--profile", s(&profile)], &cache);
        let start = Instant::now();
        while server.hits("/silent.tar.gz") == 0 || fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count()) == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "the download never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The body stalls after 1000 bytes; the stall timeout (60 s) is far away.
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
        let asked = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if asked.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{sig}: a download blocked on a silent server did not end within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{sig}: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{sig} ended a blocked download after {:.2} s", asked.elapsed().as_secs_f64());
    }
}
