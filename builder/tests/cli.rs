//! The `nodeforge` binary end to end: the offline stand-in release served over real HTTP on
//! 127.0.0.1 and fetched through `--mirror` (the same code path as GitHub), hostile inputs
//! refused with the documented exit codes, and nothing left behind when a build fails.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::craft::{file, gz, tar, with};
use common::http_server::{Route, TestServer};
use common::standin::{repo_root, standin};
use common::{nodeforge, s, text};
use sha2::{Digest, Sha256};

/// Names in a directory, for "nothing was written" assertions (temp files included).
fn listing(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<String> = rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn cached_blobs(cache: &Path) -> Vec<String> {
    listing(&cache.join("sha256"))
}

/// A copy of the stand-in profile with its bundle pointed at `url` and pinned to `sha256`.
fn profile_variant(dir: &Path, name: &str, url: Option<&str>, sha256: &str) -> PathBuf {
    let base = fs::read_to_string(&standin().profile).unwrap();
    // The bundle only: the image archives sit beside the original profile.
    let base = base.split("\n[[image]]").next().unwrap();
    let mut out = String::new();
    // The bundle only, too: the Kubernetes binaries would be fetched from dl.k8s.io.
    let mut in_binaries = false;
    for line in base.lines() {
        if line.starts_with('[') {
            in_binaries = line == "[kubernetes.binaries]";
        }
        if in_binaries {
            continue;
        }
        if line.starts_with("sha256 = ") {
            out.push_str(&format!("sha256 = \"{sha256}\"\n"));
            if let Some(u) = url {
                out.push_str(&format!("url = \"{u}\"\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let p = dir.join(name);
    fs::write(&p, out).unwrap();
    p
}

#[test]
fn build_against_the_standin_is_complete_verified_and_reproducible() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out1, out2) = (tmp.path().join("cache"), tmp.path().join("a"), tmp.path().join("b"));
    let base = server.base();

    let o = nodeforge(&["build", "--profile", s(&st.profile), "--mirror", &base, "--out", s(&out1)], &cache);
    assert!(o.status.success(), "{}", text(&o));
    let bundle_path =
        format!("/containerd/containerd/releases/download/v{0}/cri-containerd-cni-{0}-linux-amd64.tar.gz", st.version);
    assert_eq!(server.hits(&bundle_path), 1);
    assert_eq!(
        listing(&out1),
        ["SHA256SUMS", "manifest.json", "overlay.cpio.gz", "overlay.tar.gz", "seed.img"],
        "exactly the artifacts, no temp files"
    );

    // Warm cache: no download, and byte-identical artifacts.
    let o = nodeforge(&["--json", "build", "--profile", s(&st.profile), "--mirror", &base, "--out", s(&out2)], &cache);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.hits(&bundle_path), 1, "the second build must use the cache");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["artifacts"].as_array().unwrap().len(), 4);
    for name in listing(&out1) {
        assert_eq!(
            fs::read(out1.join(&name)).unwrap(),
            fs::read(out2.join(&name)).unwrap(),
            "{name} differs between builds"
        );
    }

    // SHA256SUMS verifies with the real sha256sum.
    let sums = Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS"]).current_dir(&out1).output().unwrap();
    assert!(sums.status.success(), "{}", text(&sums));

    // The manifest's per-file digests are true of the tar archive's contents.
    let x = tmp.path().join("x");
    fs::create_dir(&x).unwrap();
    let t = Command::new("tar").args(["-xzf", s(&out1.join("overlay.tar.gz")), "-C", s(&x)]).output().unwrap();
    assert!(t.status.success(), "{}", text(&t));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(out1.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest["entries"].as_array().unwrap();
    let mut files = 0;
    for e in entries.iter().filter(|e| e["type"] == "file") {
        let rel = e["path"].as_str().unwrap().trim_start_matches('/');
        let digest = hex::encode(Sha256::digest(fs::read(x.join(rel)).unwrap()));
        assert_eq!(e["sha256"].as_str().unwrap(), digest, "{rel}");
        files += 1;
    }
    assert!(files > 20, "only {files} files in the manifest");
    let containerd = entries.iter().find(|e| e["path"] == "/usr/local/bin/containerd").expect("containerd in manifest");
    assert_eq!(containerd["origin"]["kind"], "upstream");
    assert_eq!(containerd["origin"]["sha256"], st.sha256.as_str());
    assert_eq!(manifest["profile"]["sha256"], hex::encode(Sha256::digest(fs::read(&st.profile).unwrap())));
    // What the node needs is there; what it does not is not.
    for want in ["usr/local/bin/ctr", "usr/local/sbin/runc", "opt/cni/bin/bridge", "etc/containerd/config.toml"] {
        assert!(x.join(want).is_file(), "{want} missing from the overlay");
    }
    assert!(!x.join("opt/containerd").exists() && !x.join("cri-containerd.DEPRECATED.txt").exists());
    // The extracted containerd really runs, and says the stand-in's version.
    let v = Command::new(x.join("usr/local/bin/containerd")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(&st.version), "{}", text(&v));
}

#[test]
fn a_checksum_mismatch_exits_4_and_leaves_nothing() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = "1".repeat(64);
    let profile = profile_variant(tmp.path(), "p.toml", None, &wrong);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let o = nodeforge(&["build", "--profile", s(&profile), "--mirror", &server.base(), "--out", s(&out)], &cache);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&wrong) && err.contains(&st.sha256), "expected and actual digests named: {err}");
    assert!(err.contains("cri-containerd-cni-"), "the URL is named: {err}");
    assert!(!out.exists(), "output directory created: {:?}", listing(&out));
    assert!(cached_blobs(&cache).is_empty(), "poisoned cache: {:?}", cached_blobs(&cache));
}

#[test]
fn http_errors_and_json_errors() {
    let server = TestServer::start();
    server.route("/missing.tar.gz", Route::Status(404));
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(tmp.path(), "p.toml", Some(&server.url("/missing.tar.gz")), &"2".repeat(64));
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let o = nodeforge(&["--json", "build", "--profile", s(&profile), "--out", s(&out)], &cache);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 4);
    assert!(v["error"].as_str().unwrap().contains("404"), "{v}");
    assert!(!out.exists());
}

#[test]
fn a_hostile_bundle_exits_5_and_leaves_nothing() {
    let server = TestServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "traversal",
            gz(&tar(&with(file("usr/local/../../../etc/cron.d/x", b"x".to_vec())))),
            "usr/local/../../../etc/cron.d/x",
        ),
        ("device", gz(&tar(&with(("dev/sda", b'4', "", vec![])))), "block device"),
        ("not-gzip", tar(&with(file("x", vec![]))), "not gzip"),
    ];
    for (name, bytes, expect) in cases {
        let route = format!("/{name}.tar.gz");
        server.route(&route, Route::Bytes(bytes.clone()));
        let sha = hex::encode(Sha256::digest(&bytes));
        let profile = profile_variant(tmp.path(), &format!("{name}.toml"), Some(&server.url(&route)), &sha);
        let (cache, out) = (tmp.path().join("cache"), tmp.path().join(format!("out-{name}")));
        let o = nodeforge(&["build", "--profile", s(&profile), "--out", s(&out)], &cache);
        assert_eq!(o.status.code(), Some(5), "{name}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(expect), "{name}: {}", text(&o));
        assert!(listing(&out).is_empty(), "{name}: left {:?}", listing(&out));
    }
}

#[test]
fn an_interrupted_build_leaves_no_artifact_and_no_cache_entry() {
    let server = TestServer::start();
    server.route("/slow.tar.gz", Route::Endless { chunk: vec![0x1f; 4096], interval: Duration::from_millis(20) });
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile_variant(tmp.path(), "p.toml", Some(&server.url("/slow.tar.gz")), &"3".repeat(64));
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["build", "--profile", s(&profile), "--out", s(&out)])
        .env("NODEFORGE_CACHE_DIR", &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the download is under way (a temp file exists), then Ctrl-C it.
    let start = Instant::now();
    while listing(&cache.join("tmp")).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "nodeforge ignored SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(listing(&cache.join("tmp")).is_empty(), "temp download left: {:?}", listing(&cache.join("tmp")));
    assert!(cached_blobs(&cache).is_empty());
    assert!(listing(&out).is_empty());
}

#[test]
fn check_refuses_what_cannot_work_with_reason_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let seed = repo_root().join("profiles/seed-1.4.4.toml");
    let o = nodeforge(&["check", "--profile", s(&seed)], &cache);
    assert!(o.status.success(), "{}", text(&o));

    // The seed as it was published: the k8s.gc.io typo.
    let typo = tmp.path().join("typo.toml");
    fs::write(&typo, fs::read_to_string(&seed).unwrap().replace("registry.k8s.io/pause:3.1", "k8s.gc.io/pause:3.1"))
        .unwrap();
    let o = nodeforge(&["check", "--profile", s(&typo)], &cache);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("k8s.gc.io") && out.contains("fix: use `registry.k8s.io`"), "{out}");

    // containerd 1.4 (CRI v1alpha2 only) under a kubelet that needs CRI v1.
    let mismatch = tmp.path().join("mismatch.toml");
    fs::write(&mismatch, fs::read_to_string(&seed).unwrap().replace("version = \"1.14.10\"", "version = \"1.30.2\""))
        .unwrap();
    let o = nodeforge(&["--json", "check", "--profile", s(&mismatch)], &cache);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = v["findings"].as_array().unwrap().iter().find(|f| f["code"] == "cri-api-mismatch").expect("cri finding");
    assert!(f["fix"].as_str().unwrap().contains("1.6"), "{f}");

    // A typo in a key names the line and column.
    let bad = tmp.path().join("bad.toml");
    fs::write(&bad, fs::read_to_string(&seed).unwrap().replace("cgroup_driver", "cgroup_drvier")).unwrap();
    let o = nodeforge(&["build", "--profile", s(&bad), "--out", s(&tmp.path().join("o"))], &cache);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("line ") && err.contains("cgroup_drvier"), "{err}");
}

#[test]
fn render_writes_the_generated_files_without_downloading() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tree");
    let profile = repo_root().join("profiles/containerd-1.7.toml");
    let o = nodeforge(&["--json", "render", "--profile", s(&profile), "--out", s(&out)], &tmp.path().join("cache"));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["path"] == "/etc/containerd/config.toml"));
    for f in files.iter().filter(|f| f.get("sha256").is_some()) {
        let rel = f["path"].as_str().unwrap().trim_start_matches('/');
        assert_eq!(hex::encode(Sha256::digest(fs::read(out.join(rel)).unwrap())), f["sha256"].as_str().unwrap());
    }
    assert!(!tmp.path().join("cache").exists(), "render must not touch the download cache");
}

/// The first-boot unit, run for real: the built overlay's own containerd started on the
/// overlay's config.toml, then every `ExecStart=` of nodeforge-preload-images.service run
/// with the overlay's `ctr` (only the socket and the root prefix are changed), and the
/// result read back from containerd.
#[test]
fn the_preload_unit_imports_and_pins_the_images_into_a_real_containerd() {
    use common::containerd::{is_root, run, start_containerd_ready};
    assert!(is_root(), "starting a real containerd needs root");
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = nodeforge(
        &["build", "--profile", s(&st.profile), "--mirror", &server.base(), "--out", s(&out)],
        &tmp.path().join("cache"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let node = tmp.path().join("node");
    fs::create_dir(&node).unwrap();
    let t = Command::new("tar").args(["-xzf", s(&out.join("overlay.tar.gz")), "-C", s(&node)]).output().unwrap();
    assert!(t.status.success(), "{}", text(&t));

    let daemon_dir = tmp.path().join("daemon");
    fs::create_dir(&daemon_dir).unwrap();
    let (daemon, socket) = start_containerd_ready(
        &node.join("usr/local/bin/containerd"),
        &node.join("etc/containerd/config.toml"),
        &daemon_dir,
    );
    let unit = fs::read_to_string(node.join("etc/systemd/system/nodeforge-preload-images.service")).unwrap();
    let wanted = node.join("etc/systemd/system/multi-user.target.wants/nodeforge-preload-images.service");
    assert!(fs::symlink_metadata(&wanted).is_ok(), "the preload unit is not enabled");
    let steps: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
    assert!(steps.len() >= 3, "{unit}");
    for step in steps {
        let mut argv: Vec<String> = step.split_whitespace().map(str::to_owned).collect();
        // Paths on the node become paths under the extracted overlay; a program the overlay
        // does not carry (touch) is the base system's.
        for (i, a) in argv.iter_mut().enumerate().filter(|(_, a)| a.starts_with('/')) {
            let inside = format!("{}{a}", node.display());
            if i > 0 || Path::new(&inside).exists() {
                *a = inside;
            }
        }
        let mut cmd = Command::new(&argv[0]);
        if argv[0].ends_with("/ctr") {
            cmd.arg("--address").arg(&socket);
        }
        let r = run(cmd.args(&argv[1..]), Duration::from_secs(60));
        assert!(r.status.success(), "{step}: {}", text(&r));
    }
    let ctr = node.join("usr/local/bin/ctr");
    let ls = run(
        Command::new(&ctr).arg("--address").arg(&socket).args(["-n", "k8s.io", "images", "ls"]),
        Duration::from_secs(10),
    );
    let table = String::from_utf8_lossy(&ls.stdout);
    let pause =
        table.lines().find(|l| l.starts_with("registry.k8s.io/pause:3.10.1 ")).unwrap_or_else(|| panic!("{table}"));
    assert!(pause.contains("io.cri-containerd.pinned=pinned"), "sandbox image not pinned: {pause}");
    assert!(table.lines().any(|l| l.starts_with("nodeforge.test/busybox:1 ")), "{table}");
    // The stamp makes the unit skip itself on the next boot.
    let condition = unit.lines().find_map(|l| l.strip_prefix("ConditionPathExists=!")).expect("a stamp condition");
    assert!(node.join(condition.trim_start_matches('/')).exists(), "stamp {condition} not written");
    drop(daemon);
}
