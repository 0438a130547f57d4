//! Downloads against a real HTTP(S) server on 127.0.0.1: caching, verification, failure
//! modes, redirects, mirrors, locking, interrupts and proxies.

// A failed unwrap in a test is a test failure with a location: what we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nodeforge::digest::Sha256Hex;
use nodeforge::fetch::{Artifact, FetchError, FetchOptions, Fetcher};
use nodeforge::io::{Interrupt, Interrupted};
use sha2::{Digest, Sha256};
use url::Url;

use common::http_server::{Route, TestServer};
use common::tls::TestCa;

fn sha(bytes: &[u8]) -> Sha256Hex {
    Sha256Hex(Sha256::digest(bytes).into())
}

/// Bytes that are not text and not all alike, so a wrong offset changes the digest.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn artifact(url: &str, bytes: &[u8]) -> Artifact {
    Artifact { name: "a.tar.gz".into(), url: url.into(), sha256: sha(bytes) }
}

fn fetcher(cache: &Path) -> Fetcher {
    Fetcher::new(FetchOptions::new(cache)).expect("fetcher")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// No entry and no leftover temp file: a failed fetch must leave the cache as it was.
fn assert_cache_empty(cache: &Path) {
    assert_eq!(files_in(&cache.join("sha256")), Vec::<PathBuf>::new(), "cache entries");
    assert_eq!(files_in(&cache.join("tmp")), Vec::<PathBuf>::new(), "temp files");
}

fn fetch_error(f: &Fetcher, a: &Artifact) -> anyhow::Error {
    f.fetch(a).expect_err("the fetch should fail")
}

#[test]
fn downloads_verifies_and_reuses_the_cache() {
    let server = TestServer::start();
    let body = payload(300_000);
    server.route("/a.tar.gz", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(&server.url("/a.tar.gz"), &body);

    let got = fetcher(cache.path()).fetch(&a).unwrap();
    assert_eq!(got.path, cache.path().join("sha256").join(a.sha256.to_string()));
    assert_eq!((got.sha256, got.size), (a.sha256, body.len() as u64));
    assert_eq!(fs::read(&got.path).unwrap(), body);
    assert!(fs::metadata(&got.path).unwrap().permissions().readonly());

    // Again, and from a second fetcher as a later build would: no request either time.
    assert_eq!(fetcher(cache.path()).fetch(&a).unwrap(), got);
    assert_eq!(fetcher(cache.path()).fetch(&a).unwrap(), got);
    assert_eq!(server.hits("/a.tar.gz"), 1);
    assert!(files_in(&cache.path().join("tmp")).is_empty());
}

#[test]
fn a_poisoned_cache_entry_is_replaced() {
    let server = TestServer::start();
    let body = payload(10_000);
    server.route("/a.tar.gz", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(&server.url("/a.tar.gz"), &body);
    let f = fetcher(cache.path());
    let entry = f.fetch(&a).unwrap().path;

    fs::remove_file(&entry).unwrap();
    fs::write(&entry, b"someone else's bytes").unwrap();
    let again = f.fetch(&a).unwrap();
    assert_eq!(again.path, entry);
    assert_eq!(fs::read(&entry).unwrap(), body);
    assert_eq!(server.hits("/a.tar.gz"), 2);
}

#[test]
fn checksum_mismatch_names_url_and_both_digests_and_caches_nothing() {
    let server = TestServer::start();
    server.route("/a.tar.gz", Route::Bytes(b"what the server has".to_vec()));
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(&server.url("/a.tar.gz"), b"what the profile pinned");

    let err = fetch_error(&fetcher(cache.path()), &a);
    let text = format!("{err:#}");
    assert!(text.contains(&server.url("/a.tar.gz")), "{text}");
    assert!(text.contains(&a.sha256.to_string()), "{text}");
    assert!(text.contains(&sha(b"what the server has").to_string()), "{text}");
    assert!(matches!(err.downcast_ref(), Some(FetchError::ChecksumMismatch { .. })), "{text}");
    assert_cache_empty(cache.path());
}

#[test]
fn http_error_statuses_name_url_and_status() {
    let server = TestServer::start();
    server.route("/boom", Route::Status(500));
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    for (path, code) in [("/missing", "404"), ("/boom", "500")] {
        let err = fetch_error(&f, &artifact(&server.url(path), b"x"));
        let text = err.to_string();
        assert!(text.contains(&server.url(path)) && text.contains(code), "{text}");
        assert!(matches!(err.downcast_ref(), Some(FetchError::HttpStatus { .. })), "{text}");
        assert_eq!(text.contains("check the version"), code == "404", "{text}");
    }
    assert_cache_empty(cache.path());
}

#[test]
fn credentials_and_tokens_never_appear_in_errors() {
    let server = TestServer::start();
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let url = format!("http://alice:hunter2@{}/missing?token=t0ps3cret", server.addr());
    let text = format!("{:#}", fetch_error(&f, &artifact(&url, b"x")));
    assert!(text.contains("/missing") && text.contains("404"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("t0ps3cret"), "{text}");

    // Connection refused: reqwest's own message would repeat the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://alice:hunter2@{closed}/x?token=t0ps3cret");
    let text = format!("{:#}", fetch_error(&f, &artifact(&url, b"x")));
    assert!(text.contains(&closed.to_string()), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("t0ps3cret"), "{text}");
}

#[test]
fn a_truncated_body_is_reported_as_such() {
    let server = TestServer::start();
    server.route("/short", Route::Truncated { claimed: 5000, body: payload(1200) });
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_error(&fetcher(cache.path()), &artifact(&server.url("/short"), &payload(5000)));
    let text = format!("{err:#}");
    assert!(matches!(err.downcast_ref(), Some(FetchError::Truncated { expected: 5000, received: 1200, .. })), "{text}");
    assert!(text.contains(&server.url("/short")) && text.contains("closed early"), "{text}");
    assert_cache_empty(cache.path());
}

#[test]
fn bodies_over_the_cap_are_refused_with_or_without_content_length() {
    let server = TestServer::start();
    server.route("/exact", Route::Bytes(payload(4096)));
    server.route("/big", Route::Bytes(payload(4097)));
    server.route("/endless", Route::Endless { chunk: vec![0; 1024], interval: Duration::ZERO });
    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    options.max_download_bytes = 4096;
    let f = Fetcher::new(options).unwrap();

    for path in ["/big", "/endless"] {
        let err = fetch_error(&f, &artifact(&server.url(path), b"irrelevant"));
        let text = format!("{err:#}");
        assert!(matches!(err.downcast_ref(), Some(FetchError::TooLarge { limit: 4096, .. })), "{text}");
        assert!(text.contains(&server.url(path)), "{text}");
    }
    assert_cache_empty(cache.path());
    f.fetch(&artifact(&server.url("/exact"), &payload(4096))).expect("exactly at the cap is fine");
}

#[test]
fn a_stalled_download_times_out() {
    let server = TestServer::start();
    let stall = Route::Endless { chunk: vec![1; 1024], interval: Duration::from_secs(5) };
    server.route("/stall", stall);
    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    options.stall_timeout = Duration::from_millis(300);
    let f = Fetcher::new(options).unwrap();
    let started = Instant::now();
    let err = fetch_error(&f, &artifact(&server.url("/stall"), b"x"));
    let text = format!("{err:#}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert!(text.contains(&server.url("/stall")) && text.contains("no data for 0.3 s"), "{text}");
    assert_cache_empty(cache.path());
}

#[test]
fn any_bytes_are_fine_when_the_digest_matches() {
    let server = TestServer::start();
    let mut body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0x00, b'\r', b'\n']);
    // No Content-Length: the body runs to the connection close.
    server.route("/garbage", Route::BytesNoLength(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let got = fetcher(cache.path()).fetch(&artifact(&server.url("/garbage"), &body)).unwrap();
    assert_eq!(fs::read(got.path).unwrap(), body);
}

#[test]
fn plain_http_redirects_are_followed_and_loops_stop() {
    let server = TestServer::start();
    let body = payload(2000);
    server.route("/old", Route::Redirect(server.url("/new")));
    server.route("/new", Route::Bytes(body.clone()));
    server.route("/loop", Route::Redirect(server.url("/loop")));
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());

    let got = f.fetch(&artifact(&server.url("/old"), &body)).unwrap();
    assert_eq!(fs::read(got.path).unwrap(), body);
    assert_eq!((server.hits("/old"), server.hits("/new")), (1, 1));

    let err = fetch_error(&f, &artifact(&server.url("/loop"), b"x"));
    assert!(matches!(err.downcast_ref(), Some(FetchError::TooManyRedirects { .. })), "{err:#}");
    assert!(server.hits("/loop") <= 12, "{}", server.hits("/loop"));
}

#[test]
fn https_with_a_private_ca_works_and_a_downgrade_redirect_is_refused() {
    let ca = TestCa::new();
    let https = ca.https_server();
    let http = TestServer::start();
    let body = payload(5000);
    https.route("/a.tar.gz", Route::Bytes(body.clone()));
    https.route("/down", Route::Redirect(http.url("/a.tar.gz")));
    http.route("/a.tar.gz", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let ca_file = cache.path().join("ca.pem");
    fs::write(&ca_file, &ca.ca_pem).unwrap();

    // Without the CA the server is not trusted: proves the option is what makes it work.
    let untrusting = fetcher(&cache.path().join("c1"));
    assert!(untrusting.fetch(&artifact(&https.url("/a.tar.gz"), &body)).is_err());

    let mut options = FetchOptions::new(cache.path().join("c2"));
    options.ca_cert = Some(ca_file);
    let f = Fetcher::new(options).unwrap();
    let got = f.fetch(&artifact(&https.url("/a.tar.gz"), &body)).unwrap();
    assert_eq!(fs::read(got.path).unwrap(), body);

    let err = fetch_error(&f, &Artifact { name: "b".into(), ..artifact(&https.url("/down"), b"other") });
    let text = err.to_string();
    assert!(matches!(err.downcast_ref(), Some(FetchError::InsecureRedirect { .. })), "{text}");
    assert!(text.contains(&https.url("/down")) && text.contains(&http.url("/a.tar.gz")), "{text}");
    assert_eq!(http.hits("/a.tar.gz"), 0, "the plain-http target must not be contacted");
}

#[test]
fn a_mirror_with_a_path_prefix_serves_the_upstream_layout() {
    let name = "cri-containerd-cni-1.7.27-linux-amd64.tar.gz";
    let rel = format!("containerd/containerd/releases/download/v1.7.27/{name}");
    let body = payload(50_000);
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir_all(tree.path().join(&rel).parent().unwrap()).unwrap();
    fs::write(tree.path().join(&rel), &body).unwrap();
    let server = TestServer::start();
    server.serve_dir("/github", tree.path());

    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    options.mirror = Some(Url::parse(&server.url("/github/")).unwrap());
    let f = Fetcher::new(options).unwrap();
    let a = Artifact { name: name.into(), url: format!("https://github.com/{rel}"), sha256: sha(&body) };
    assert_eq!(fs::read(f.fetch(&a).unwrap().path).unwrap(), body);
    assert_eq!(server.hits(&format!("/github/{rel}")), 1);
    assert_eq!(server.total_hits(), 1);
}

#[test]
fn two_builds_sharing_a_cache_download_once() {
    let server = TestServer::start();
    let body = payload(8 << 20);
    server.route("/big.tar.gz", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(&server.url("/big.tar.gz"), &body);
    let start = Barrier::new(2);

    let results: Vec<_> = thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    // Separate fetchers, as two processes would have: separate lock handles.
                    let f = fetcher(cache.path());
                    start.wait();
                    f.fetch(&a)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap().unwrap()).collect()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(server.hits("/big.tar.gz"), 1);
    assert_eq!(fs::read(&results[0].path).unwrap().len(), body.len());
    assert!(files_in(&cache.path().join("tmp")).is_empty());
}

/// Raising a signal sets every flag installed in this process, so the tests that do it
/// take turns, each with a fresh flag.
static SIGNAL_TESTS: Mutex<()> = Mutex::new(());

fn raise_sighup_after(delay: Duration) {
    thread::sleep(delay);
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
}

#[test]
fn an_interrupted_download_leaves_nothing() {
    let _turn = SIGNAL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let server = TestServer::start();
    let slow = Route::Endless { chunk: vec![7; 16 * 1024], interval: Duration::from_millis(10) };
    server.route("/slow", slow);
    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    // The real path: a signal sets the flag the binary would install.
    options.interrupt = Interrupt::install().unwrap();
    let f = Fetcher::new(options).unwrap();

    let result = thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            // Wait until bytes are flowing, so the interrupt lands mid-download.
            while files_in(&cache.path().join("tmp")).is_empty() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            raise_sighup_after(Duration::from_millis(50));
        });
        f.fetch(&artifact(&server.url("/slow"), b"never"))
    });
    let err = result.expect_err("interrupted");
    assert!(err.is::<Interrupted>(), "{err:#}");
    assert_eq!(server.hits("/slow"), 1);
    assert_cache_empty(cache.path());
}

#[test]
fn waiting_for_the_cache_lock_can_be_interrupted() {
    let _turn = SIGNAL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let server = TestServer::start();
    server.route("/a", Route::Bytes(b"a".to_vec()));
    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    options.interrupt = Interrupt::install().unwrap();
    let f = Fetcher::new(options).unwrap();
    let a = artifact(&server.url("/a"), b"a");

    // Another build holds this digest's lock and does not let go.
    let lock_path = cache.path().join("locks").join(format!("{}.lock", a.sha256));
    let held = fs::File::create(&lock_path).unwrap();
    held.lock().unwrap();

    let result = thread::scope(|s| {
        s.spawn(|| raise_sighup_after(Duration::from_millis(150)));
        f.fetch(&a)
    });
    let err = result.expect_err("interrupted while waiting");
    assert!(err.is::<Interrupted>(), "{err:#}");
    assert_eq!(server.hits("/a"), 0);
}

#[test]
fn local_files_are_verified_and_copied_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("pause.tar");
    let body = payload(20_000);
    fs::write(&image, &body).unwrap();
    let cache = dir.path().join("cache");
    let f = fetcher(&cache);

    let got = f.fetch_local(&image, &sha(&body)).unwrap();
    assert_eq!(got.path, cache.join("sha256").join(sha(&body).to_string()));
    fs::write(&image, b"changed after the check").unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), body, "the cached copy is what was verified");

    let other = dir.path().join("other.tar");
    fs::write(&other, b"not it").unwrap();
    let err = f.fetch_local(&other, &sha(b"wanted")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err.downcast_ref(), Some(FetchError::ChecksumMismatch { .. })), "{text}");
    assert!(text.contains(&other.display().to_string()), "{text}");
    assert!(files_in(&cache.join("tmp")).is_empty());

    let missing = f.fetch_local(&dir.path().join("nope.tar"), &sha(b"x")).unwrap_err();
    assert!(missing.to_string().contains("nope.tar"), "{missing:#}");
}

/// The proxy settings come from the environment, which a test cannot change for itself
/// without `unsafe` (forbidden here) and without disturbing the tests running beside it. So
/// this test runs the test binary again with the environment set, asking it to run only
/// `proxy_probe_child`.
#[test]
fn proxy_environment_is_honoured() {
    let proxy = TestServer::start();
    let origin = TestServer::start();
    let body = payload(3000);
    proxy.route("/via-proxy.bin", Route::Bytes(body.clone()));
    origin.route("/direct.bin", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();

    let run = |url: &str, no_proxy: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "proxy_probe_child", "--nocapture", "--test-threads=1"])
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("no_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env("HTTP_PROXY", proxy.base())
            .env("NO_PROXY", no_proxy)
            .env("NODEFORGE_PROBE_URL", url)
            .env("NODEFORGE_PROBE_SHA256", sha(&body).to_string())
            .env("NODEFORGE_PROBE_CACHE", cache.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stdout));
    };

    // A host that cannot resolve: only the proxy can have answered.
    run("http://nodeforge-proxy-probe.invalid/via-proxy.bin", "");
    let lines = proxy.request_lines();
    assert!(
        lines.iter().any(|l| l.starts_with("GET http://nodeforge-proxy-probe.invalid/via-proxy.bin ")),
        "{lines:?}"
    );

    // NO_PROXY sends 127.0.0.1 straight to the origin.
    fs::remove_dir_all(cache.path().join("sha256")).unwrap();
    run(&origin.url("/direct.bin"), "127.0.0.1");
    assert_eq!((origin.hits("/direct.bin"), proxy.hits("/direct.bin")), (1, 0));
}

/// Does nothing unless started by `proxy_environment_is_honoured`.
#[test]
fn proxy_probe_child() {
    let Ok(url) = std::env::var("NODEFORGE_PROBE_URL") else {
        return;
    };
    let sha256 = std::env::var("NODEFORGE_PROBE_SHA256").unwrap().parse().unwrap();
    let cache = std::env::var("NODEFORGE_PROBE_CACHE").unwrap();
    let a = Artifact { name: "probe".into(), url, sha256 };
    if let Err(e) = fetcher(Path::new(&cache)).fetch(&a) {
        panic!("fetch through the environment's proxy settings failed: {e:#}");
    }
}

/// A server that sends half the body and then nothing, connection open: reported as a stall
/// after the stall timeout, not as a connection that closed.
#[test]
fn a_silent_server_is_reported_as_stalled() {
    let server = TestServer::start();
    let hold = Duration::from_secs(30);
    server.route("/silent", Route::Silent { claimed: 10_000, body: payload(5_000), hold });
    let cache = tempfile::tempdir().unwrap();
    let mut options = FetchOptions::new(cache.path());
    options.stall_timeout = Duration::from_secs(1);
    let f = Fetcher::new(options).unwrap();
    let started = Instant::now();
    let err = fetch_error(&f, &artifact(&server.url("/silent"), &payload(10_000)));
    let took = started.elapsed();
    let text = format!("{err:#}");
    eprintln!("silent server: failed after {:.2} s: {text}", took.as_secs_f64());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(text.contains("no data for 1 s") && text.contains("5000 of 10000 bytes"), "{text}");
    assert!(!text.contains("closed early"), "{text}");
    let stalled =
        matches!(err.downcast_ref(), Some(FetchError::Stalled { received: 5000, expected: Some(10_000), .. }));
    assert!(stalled, "{text}");
    assert_cache_empty(cache.path());
}

/// One byte now and then never trips the stall timeout; `nodeforge fetch` with the minimum
/// rate and window set small through the environment stops it within seconds.
#[test]
fn a_trickling_server_is_stopped_by_the_minimum_rate() {
    let server = TestServer::start();
    server.route("/trickle.tar.gz", Route::Endless { chunk: vec![1; 10], interval: Duration::from_millis(200) });
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    fs::write(
        &profile,
        format!(
            "name = \"node-a\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\nurl = \"{}\"\n",
            "0".repeat(64),
            server.url("/trickle.tar.gz")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["fetch", "--profile", profile.to_str().unwrap()])
        .env("NODEFORGE_CACHE_DIR", tmp.path().join("cache"))
        .env("NODEFORGE_STALL_TIMEOUT", "1")
        .env("NODEFORGE_MIN_DOWNLOAD_RATE", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a server sending 50 bytes/s kept the fetch running for 15 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("trickling server: failed after {:.2} s", took.as_secs_f64());
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("slower than 200 B/s over 1") && err.contains("trickle.tar.gz"), "{err}");
}

/// A cache entry replaced by a FIFO would block `open`; it is replaced like a damaged entry.
#[test]
fn a_cache_entry_that_is_a_fifo_is_replaced_not_waited_on() {
    let server = TestServer::start();
    let body = payload(5000);
    server.route("/a.tar.gz", Route::Bytes(body.clone()));
    let cache = tempfile::tempdir().unwrap();
    let a = artifact(&server.url("/a.tar.gz"), &body);
    fetcher(cache.path()).fetch(&a).unwrap();
    let entry = cache.path().join("sha256").join(a.sha256.to_string());
    fs::remove_file(&entry).unwrap();
    assert!(Command::new("mkfifo").arg(&entry).status().unwrap().success());

    let (tx, rx) = std::sync::mpsc::channel();
    let dir = cache.path().to_owned();
    thread::spawn(move || {
        let _ = tx.send(fetcher(&dir).fetch(&a).map(|c| fs::read(c.path).unwrap()).map_err(|e| format!("{e:#}")));
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("fetch blocked on a FIFO in the cache");
    assert_eq!(got.unwrap(), body);
    assert_eq!(server.hits("/a.tar.gz"), 2, "fetched again");
}

/// The download cap applies to local image archives too, before a byte is copied.
#[test]
fn local_sources_obey_the_download_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let small = dir.path().join("small.tar");
    fs::write(&small, payload(4096)).unwrap();
    let mut options = FetchOptions::new(&cache);
    options.max_download_bytes = 1024;
    let err = Fetcher::new(options).unwrap().fetch_local(&small, &sha(&payload(4096))).unwrap_err();
    let text = format!("{err:#}");
    assert!(matches!(err.downcast_ref(), Some(FetchError::TooLarge { limit: 1024, .. })), "{text}");
    assert!(text.contains("small.tar"), "{text}");
    assert!(files_in(&cache.join("tmp")).is_empty() && files_in(&cache.join("sha256")).is_empty());

    // 3 GiB, sparse: refused by its size with the default cap (2 GiB), nothing copied.
    let sparse = dir.path().join("sparse.tar");
    fs::File::create(&sparse).unwrap().set_len(3 << 30).unwrap();
    let started = Instant::now();
    let err = fetcher(&cache).fetch_local(&sparse, &sha(b"x")).unwrap_err();
    assert!(matches!(err.downcast_ref(), Some(FetchError::TooLarge { .. })), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(files_in(&cache.join("tmp")).is_empty());
}
