//! Runs that meet, and runs that die: two and three builds into one `--out`, a build waiting
//! for the directory and stopped by Ctrl-C, a commit that fails or is `kill -9`ed between two
//! renames, and the temp files killed downloads leave in the cache. Real processes against a
//! crafted bundle served over HTTP on 127.0.0.1; every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::craft::{bundle_profile, elf, good_entries, gz, noise, tar};
use common::http_server::{Route, TestServer};
use common::{nodeforge, s, text};
use sha2::{Digest, Sha256};

const BUNDLE: &str = "/cri-containerd-cni-1.7.27-linux-amd64.tar.gz";

/// A bundle whose containerd carries 40 MiB of noise: a build spends a second or more
/// compressing it into the two overlay archives, long enough for other builds to meet it.
fn big_bundle() -> Vec<u8> {
    let mut entries = good_entries();
    for e in &mut entries {
        if e.0 == "usr/local/bin/containerd" {
            e.3 = elf(62).into_iter().chain(noise(40 << 20, 7)).collect();
        }
    }
    gz(&tar(&entries))
}

struct Setup {
    server: TestServer,
    tmp: tempfile::TempDir,
    /// Two profiles of the same bundle whose artifacts differ (another pod subnet).
    profiles: [PathBuf; 2],
}

impl Setup {
    fn new() -> Self {
        let server = TestServer::start();
        let bundle = big_bundle();
        let sha = hex::encode(Sha256::digest(&bundle));
        server.route(BUNDLE, Route::Bytes(bundle));
        let tmp = tempfile::tempdir().unwrap();
        let url = server.url(BUNDLE);
        let profiles = [("a", "10.88.0.0/16"), ("b", "10.99.0.0/16")].map(|(name, subnet)| {
            let p = tmp.path().join(format!("{name}.toml"));
            let extra = format!("[node]\ncni_subnet = \"{subnet}\"\n");
            fs::write(&p, bundle_profile(&format!("node-{name}"), &url, &sha, &extra)).unwrap();
            p
        });
        let setup = Self { server, tmp, profiles };
        // Warm the cache, so the builds below meet while they write, not while they download.
        let o = nodeforge(&["fetch", "--profile", s(&setup.profiles[0])], &setup.cache());
        assert!(o.status.success(), "{}", text(&o));
        setup
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Start `build --profile <profiles[which]> --out <out>`, stderr to `<log>`.
    fn spawn_build(&self, which: usize, out: &Path, log: &str, env: &[(&str, &str)]) -> Child {
        let err = fs::File::create(self.path(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_nodeforge"))
            .args(["build", "--profile", s(&self.profiles[which]), "--out", s(out)])
            .env("NODEFORGE_CACHE_DIR", self.cache())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("NODEFORGE_MIRROR")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

/// Wait for `child`, killing it (and failing) after `limit`.
fn wait(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `cond` every 10 ms for at most `limit`.
fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn temp_entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else { return vec![] };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nodeforge-tmp-"))
        .collect()
}

/// `sha256sum -c --strict SHA256SUMS` in `out`.
fn verifies(out: &Path) -> bool {
    Command::new("sha256sum")
        .args(["-c", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(out)
        .output()
        .unwrap()
        .status
        .success()
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn two_and_three_builds_into_one_out_all_succeed_and_the_set_verifies() {
    let st = Setup::new();
    for n in [2, 3] {
        let out = st.path(&format!("out-{n}"));
        let started = Instant::now();
        let mut first = st.spawn_build(0, &out, &format!("{n}-0.log"), &[]);
        // The others start while the first is writing into its work directory.
        until(Duration::from_secs(30), "the first build's work directory", || !temp_entries(&out).is_empty());
        std::thread::sleep(Duration::from_millis(300));
        let mut others: Vec<Child> =
            (1..n).map(|i| st.spawn_build(i % 2, &out, &format!("{n}-{i}.log"), &[])).collect();
        let status = wait(&mut first, Duration::from_secs(120), "the first build");
        assert!(status.success(), "the first build failed: {}", st.log(&format!("{n}-0.log")));
        for (i, child) in others.iter_mut().enumerate() {
            let log = format!("{n}-{}.log", i + 1);
            let status = wait(child, Duration::from_secs(120), "a later build");
            assert!(status.success(), "build {} of {n} failed: {}", i + 2, st.log(&log));
        }
        let waited = (1..n).any(|i| st.log(&format!("{n}-{i}.log")).contains("waiting until it is done"));
        assert!(waited, "no later build said it waited: {}", st.log(&format!("{n}-1.log")));
        assert!(verifies(&out), "the final set does not verify");
        assert!(temp_entries(&out).is_empty(), "left behind: {:?}", temp_entries(&out));
        eprintln!("{n} builds into one --out: {:.1} s", started.elapsed().as_secs_f64());
    }
}

#[test]
fn a_build_waiting_for_the_output_directory_ends_on_ctrl_c() {
    let st = Setup::new();
    let out = st.path("out");
    let mut first = st.spawn_build(0, &out, "first.log", &[]);
    until(Duration::from_secs(30), "the first build's work directory", || !temp_entries(&out).is_empty());
    let mut second = st.spawn_build(1, &out, "second.log", &[]);
    until(Duration::from_secs(30), "the second build to say it waits", || {
        st.log("second.log").contains("waiting until it is done")
    });
    signal(&second, "-INT");
    let asked = Instant::now();
    let status = wait(&mut second, Duration::from_secs(10), "the waiting build after SIGINT");
    assert_eq!(status.code(), Some(130), "{}", st.log("second.log"));
    eprintln!("a waiting build ended {:.2} s after SIGINT", asked.elapsed().as_secs_f64());
    let status = wait(&mut first, Duration::from_secs(120), "the first build");
    assert!(status.success(), "{}", st.log("first.log"));
    assert!(verifies(&out));
}

/// The lock is `flock` on the directory itself, so `flock -s DIR …` (util-linux) holds a
/// build off while it reads the set, as the README suggests.
#[test]
fn a_reader_holding_flock_on_the_directory_holds_a_build_off() {
    let st = Setup::new();
    let out = st.path("out");
    let o = nodeforge(&["build", "--profile", s(&st.profiles[0]), "--out", s(&out)], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    let mut reader = Command::new("flock").args(["-s", s(&out), "sleep", "2"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut build = st.spawn_build(1, &out, "held.log", &[]);
    until(Duration::from_secs(30), "the build to wait for the reader", || {
        st.log("held.log").contains("waiting until it is done")
    });
    assert!(wait(&mut build, Duration::from_secs(60), "the build").success(), "{}", st.log("held.log"));
    assert!(started.elapsed() > Duration::from_millis(1500), "the build did not wait for the reader");
    let _ = reader.wait();
    assert!(verifies(&out));
}

#[test]
fn a_commit_that_fails_part_way_leaves_no_list_that_could_verify_a_mix() {
    let st = Setup::new();
    let out = st.path("out");
    let o = nodeforge(&["build", "--profile", s(&st.profiles[0]), "--out", s(&out)], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    assert!(verifies(&out));

    // manifest.json is renamed in after the overlays and the seed: make that rename fail.
    fs::remove_file(out.join("manifest.json")).unwrap();
    fs::create_dir(out.join("manifest.json")).unwrap();
    fs::write(out.join("manifest.json/keep"), b"x").unwrap();
    let o = nodeforge(&["build", "--profile", s(&st.profiles[1]), "--out", s(&out)], &st.cache());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("manifest.json"), "{}", text(&o));
    assert!(
        !out.join("SHA256SUMS").exists() || verifies(&out),
        "a SHA256SUMS that does not verify is left beside a half-replaced set"
    );
    assert!(!out.join("SHA256SUMS").exists(), "the old list must be gone once the set is being replaced");
    assert!(temp_entries(&out).is_empty(), "left behind: {:?}", temp_entries(&out));

    fs::remove_dir_all(out.join("manifest.json")).unwrap();
    let o = nodeforge(&["build", "--profile", s(&st.profiles[1]), "--out", s(&out)], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    assert!(verifies(&out));
}

#[test]
fn kill_9_between_two_renames_leaves_no_list_and_the_next_build_recovers() {
    let st = Setup::new();
    let out = st.path("out");
    let o = nodeforge(&["build", "--profile", s(&st.profiles[0]), "--out", s(&out)], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    let old: Vec<(String, Vec<u8>)> = ["overlay.tar.gz", "overlay.cpio.gz", "seed.img", "manifest.json"]
        .iter()
        .map(|n| (n.to_string(), fs::read(out.join(n)).unwrap()))
        .collect();

    // A debug-build hook holds the commit 1.5 s after each rename.
    let mut child = st.spawn_build(1, &out, "killed.log", &[("NODEFORGE_TEST_COMMIT_PAUSE_MS", "1500")]);
    until(Duration::from_secs(60), "the commit to start", || !out.join("SHA256SUMS").exists());
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, "-KILL");
    let _ = child.wait();
    assert!(!out.join("SHA256SUMS").exists(), "a list is present after a kill mid-commit");
    let changed: Vec<&str> =
        old.iter().filter(|(n, bytes)| fs::read(out.join(n)).unwrap() != *bytes).map(|(n, _)| n.as_str()).collect();
    assert!(!changed.is_empty() && changed.len() < old.len(), "not killed between renames: {changed:?} replaced");

    let o = nodeforge(&["build", "--profile", s(&st.profiles[1]), "--out", s(&out)], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    assert!(verifies(&out));
    assert!(temp_entries(&out).is_empty(), "the killed build's work directory was not swept");
}

#[test]
fn temp_files_of_killed_downloads_are_swept_and_a_live_one_is_kept() {
    let st = Setup::new();
    st.server.route("/slow.tar.gz", Route::Endless { chunk: vec![0x1f; 8192], interval: Duration::from_millis(20) });
    let tmp = st.cache().join("tmp");
    let names = || -> Vec<String> {
        fs::read_dir(&tmp)
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    // Each profile pins another digest, so the downloads run side by side (one cache lock each).
    let spawn = |digit: char| {
        let p = st.path(&format!("slow-{digit}.toml"));
        let sha = digit.to_string().repeat(64);
        fs::write(&p, bundle_profile("slow", &st.server.url("/slow.tar.gz"), &sha, "")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_nodeforge"))
            .args(["fetch", "--profile", s(&p)])
            .env("NODEFORGE_CACHE_DIR", st.cache())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut killed: Vec<Child> = ['3', '4', '5'].into_iter().map(spawn).collect();
    until(Duration::from_secs(20), "three downloads to start", || names().len() == 3);
    for child in &mut killed {
        signal(child, "-KILL");
        let _ = child.wait();
    }
    let stale = names();
    assert_eq!(stale.len(), 3);

    // The next run sweeps what the killed ones left; its own download stays while it lives.
    let mut live = spawn('6');
    until(Duration::from_secs(20), "the stale temp files to be swept and a new download to start", || {
        let now = names();
        now.len() == 1 && !stale.contains(&now[0])
    });
    let o = nodeforge(&["fetch", "--profile", s(&st.profiles[0])], &st.cache());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(names().len(), 1, "the live download's temp file was swept");
    signal(&live, "-INT");
    assert_eq!(wait(&mut live, Duration::from_secs(10), "the live download").code(), Some(130));
    assert!(names().is_empty(), "the interrupted download did not remove its temp file");
}
