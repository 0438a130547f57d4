//! The control plane for real: etcd, kube-apiserver, kube-controller-manager and kubeadm
//! built from their Go modules by fixtures/upstream/build-upstream.sh (kubectl too), started
//! on 127.0.0.1 by `test_vm::cluster` and by `test-vm control-plane`. `NODEFORGE_K8S_BIN_DIR`
//! points at other builds of the same programs instead. One control plane at a time: they
//! share a lock (two cores, ~450 MB each).

#![cfg(feature = "join")]
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use test_vm::cluster::{
    BootstrapToken, ComponentError, ControlPlane, ControlPlaneConfig, ControlPlaneInfo, jws_is_valid,
};

const START_LIMIT: Duration = Duration::from_secs(150);

mod upstream {
    include!("common/upstream.rs");
}

fn bin_dir() -> PathBuf {
    upstream::bin_dir()
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config(bins: &Path, dir: &Path) -> ControlPlaneConfig {
    let mut c = ControlPlaneConfig::new(bins, dir);
    c.start_timeout = START_LIMIT;
    c
}

/// `kubectl --kubeconfig KC ARGS`, which must succeed; its stdout. Never echoes the output
/// of a command that may carry a token (`secret`).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Processes whose command line mentions `dir`: what a control plane in `dir` left running.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

/// The process exists and is not a zombie (a killed child of a killed parent stays a zombie
/// until init reaps it).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`; COMM may contain spaces and parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn read_token(info: &ControlPlaneInfo) -> BootstrapToken {
    let meta = fs::metadata(&info.token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "token file mode");
    BootstrapToken::parse(&fs::read_to_string(&info.token_file).unwrap()).unwrap()
}

/// Neither the token nor its secret in any log of the work directory or in `texts`.
fn assert_token_not_in(info: &ControlPlaneInfo, token: &BootstrapToken, texts: &[(&str, &str)]) {
    let mut all: Vec<(String, String)> = texts.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    for e in fs::read_dir(info.dir.join("logs")).unwrap().flatten() {
        all.push((e.path().display().to_string(), fs::read_to_string(e.path()).unwrap()));
    }
    assert!(all.len() >= 4, "etcd, kube-apiserver, kube-controller-manager and kubeadm logs");
    for (name, text) in all {
        assert!(!text.contains(token.secret()), "the bootstrap token's secret appears in {name}");
    }
}

#[test]
fn starts_a_control_plane_a_guest_can_join() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let t0 = Instant::now();
    let cp = ControlPlane::start(&config(&bin_dir(), &dir)).unwrap();
    let info = cp.info().clone();
    let rss: Vec<String> = info.components.iter().map(|c| format!("{} {:.0} MiB", c.name, rss_mib(c.pid))).collect();
    eprintln!("ready in {:.1} s; steps: {:?}; RSS: {}", t0.elapsed().as_secs_f64(), info.timings, rss.join(", "));
    assert!(info.endpoint.starts_with("10.0.2.2:") && info.server == format!("https://{}", info.endpoint));
    let admin = info.admin_kubeconfig.clone();
    assert_eq!(kubectl(&admin, &["get", "--raw", "/readyz"]).trim(), "ok");

    // cluster-info names the guest endpoint and is signed for our token.
    let token = read_token(&info);
    let ci: serde_json::Value = serde_json::from_str(&kubectl(
        &admin,
        &["-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json"],
    ))
    .unwrap();
    let kubeconfig = ci["data"]["kubeconfig"].as_str().unwrap();
    assert!(kubeconfig.contains(&format!("server: {}\n", info.server)), "{kubeconfig}");
    let jws = ci["data"][format!("jws-kubeconfig-{}", token.id())].as_str().unwrap();
    assert!(jws_is_valid(jws, kubeconfig, token.id(), token.secret()), "cluster-info's signature does not verify");

    // The pin is the one kubeadm computes. (That output holds a new token: never printed.)
    let out = Command::new(bin_dir().join("kubeadm"))
        .args(["token", "create", "--print-join-command", "--kubeconfig"])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "kubeadm token create failed: {}", String::from_utf8_lossy(&out.stderr));
    let join = String::from_utf8(out.stdout).unwrap();
    let hash = join.split_whitespace().skip_while(|w| *w != "--discovery-token-ca-cert-hash").nth(1);
    assert_eq!(hash, Some(info.ca_cert_hash.as_str()), "kubeadm's --discovery-token-ca-cert-hash");

    // What kubeadm's phases create.
    let crbs = ["kubeadm:kubelet-bootstrap", "kubeadm:node-autoapprove-bootstrap", "kubeadm:get-nodes"];
    let got = kubectl(&admin, &[&["get", "clusterrolebinding", "-o", "name"][..], &crbs].concat());
    assert_eq!(got.lines().count(), 3, "{got}");
    let cms =
        kubectl(&admin, &["-n", "kube-system", "get", "configmap", "kubeadm-config", "kubelet-config", "-o", "name"]);
    assert_eq!(cms.lines().count(), 2, "{cms}");
    // Joining nodes read them: they must name a kubeadm node's paths, nothing of this host's
    // (a kubelet given this work directory's CA path exits at start).
    let kubelet =
        kubectl(&admin, &["-n", "kube-system", "get", "configmap", "kubelet-config", "-o", "jsonpath={.data.kubelet}"]);
    assert!(kubelet.contains("clientCAFile: /etc/kubernetes/pki/ca.crt"), "{kubelet}");
    let cluster = kubectl(
        &admin,
        &["-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "jsonpath={.data.ClusterConfiguration}"],
    );
    assert!(cluster.contains("certificatesDir: /etc/kubernetes/pki"), "{cluster}");
    let here = info.dir.display().to_string();
    assert!(!kubelet.contains(&here) && !cluster.contains(&here), "{kubelet}\n{cluster}");
    // The `kubernetes` Service's endpoint is what a guest's pods reach the API server by.
    let eps = kubectl(
        &admin,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}",
        ],
    );
    assert_eq!(eps, info.endpoint);

    kubelet_style_tls_bootstrap(&info, &token, tmp.path());

    let summary = info.summary();
    let json = serde_json::to_string(&info).unwrap();
    assert!(!summary.contains(token.secret()) && !json.contains(token.secret()));
    assert_token_not_in(&info, &token, &[]);
}

/// What a kubelet does with the bootstrap token after `kubeadm join`'s discovery, without a
/// kubelet: read cluster-info anonymously, read kubeadm's ConfigMaps as the token's user,
/// post a node-client CSR that the controller-manager approves and signs with the CA.
fn kubelet_style_tls_bootstrap(info: &ControlPlaneInfo, token: &BootstrapToken, tmp: &Path) {
    let ca = &info.ca_cert;
    let kc = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {user}\n",
            info.host_server,
            ca.display()
        )
    };
    let raw = anonymous_get(info, "/api/v1/namespaces/kube-public/configmaps/cluster-info");
    assert!(raw.contains(&info.server), "anonymous cluster-info: {raw}");
    let bootstrap = tmp.join("bootstrap-kubelet.conf");
    fs::write(&bootstrap, kc(&format!("{{token: {}}}", token.expose()))).unwrap();
    fs::set_permissions(&bootstrap, fs::Permissions::from_mode(0o600)).unwrap();
    let cms = kubectl(
        &bootstrap,
        &["-n", "kube-system", "get", "configmap", "kubeadm-config", "kubelet-config", "-o", "name"],
    );
    assert_eq!(cms.lines().count(), 2, "the token's user reads kubeadm's ConfigMaps");

    let key = tmp.join("node.key");
    let csr = tmp.join("node.csr");
    let ok = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/O=system:nodes/CN=system:node:guest-1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl req");
    use base64::Engine;
    let request = base64::engine::general_purpose::STANDARD.encode(fs::read(&csr).unwrap());
    let manifest = tmp.join("csr.yaml");
    fs::write(
        &manifest,
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: node-csr-guest-1\n\
             spec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  \
             usages: [digital signature, client auth]\n"
        ),
    )
    .unwrap();
    kubectl(&bootstrap, &["create", "-f", &manifest.to_string_lossy()]);
    let t0 = Instant::now();
    let cert = loop {
        let c = kubectl(
            &info.admin_kubeconfig,
            &["get", "csr", "node-csr-guest-1", "-o", "jsonpath={.status.certificate}"],
        );
        if !c.is_empty() {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the CSR was not approved and signed within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let pem = tmp.join("node.crt");
    fs::write(&pem, base64::engine::general_purpose::STANDARD.decode(cert.trim()).unwrap()).unwrap();
    let verify = Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg(&pem).output().unwrap();
    assert!(verify.status.success(), "the issued certificate: {}", String::from_utf8_lossy(&verify.stdout));
    eprintln!("TLS bootstrap: CSR approved and signed in {:.1} s", t0.elapsed().as_secs_f64());
}

/// GET without credentials, verifying the server with the CA (kubectl would ask for a user
/// name instead).
fn anonymous_get(info: &ControlPlaneInfo, path: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_file(&info.ca_cert).unwrap();
    let mut config = kube::Config::new(info.host_server.parse().unwrap());
    config.root_cert = Some(vec![ca.to_vec()]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube::Client::try_from(config).unwrap();
        client.request_text(http::Request::get(path).body(Vec::new()).unwrap()).await.unwrap()
    })
}

#[test]
fn stop_leaves_no_process_and_a_fresh_start_works() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let mut cp = ControlPlane::start(&config(&bin_dir(), &first)).unwrap();
    let pids: Vec<u32> = cp.info().components.iter().map(|c| c.pid).collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| alive(*p)));
    let t0 = Instant::now();
    cp.stop();
    eprintln!("stopped in {:.1} s", t0.elapsed().as_secs_f64());
    cp.stop(); // idempotent
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} still exists");
    }
    assert_eq!(processes_under(&first), Vec::<String>::new());
    drop(cp);

    // Again in a fresh directory: nothing of the first is in the way (ports, files).
    let second = tmp.path().join("second");
    let cp = ControlPlane::start(&config(&bin_dir(), &second)).unwrap();
    assert_eq!(kubectl(&cp.info().admin_kubeconfig, &["get", "--raw", "/readyz"]).trim(), "ok");
    let pids: Vec<u32> = cp.info().components.iter().map(|c| c.pid).collect();
    drop(cp);
    assert!(pids.iter().all(|p| !alive(*p)), "Drop stops everything");
    assert_eq!(processes_under(&second), Vec::<String>::new());
}

/// `nodeforge replace` against the real API server, where no node is needed to tell the
/// failure: a node that does not exist (exit 2), credentials the API server accepts but RBAC
/// grants nothing (a client certificate kubeadm signs for an unknown user: exit 16), and an
/// API server that is not there (exit 15). Each message names what went wrong.
#[test]
fn replace_refuses_a_missing_node_a_forbidden_user_and_an_unreachable_cluster() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&config(&bin_dir(), &tmp.path().join("cp"))).unwrap();
    let info = cp.info();
    let nodeforge = Path::new(env!("CARGO_BIN_EXE_test-vm")).with_file_name("nodeforge");
    assert!(nodeforge.is_file(), "run `cargo build --workspace` first (make test does)");
    let replace = |kubeconfig: &Path, node: &str| {
        let o = Command::new(&nodeforge)
            .args(["replace", "--node", node, "--expect-runtime", "containerd://2.2.9", "--reprovision-cmd", "false"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };

    let (code, err) = replace(&info.admin_kubeconfig, "no-such-node");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("there is no node `no-such-node`"), "{err}");

    // A user of the cluster's CA whom RBAC grants nothing.
    let out = Command::new(bin_dir().join("kubeadm"))
        .args(["kubeconfig", "user", "--client-name", "nodeforge-test-nobody", "--config"])
        .arg(info.dir.join("kubeadm.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubeadm kubeconfig user: {}", String::from_utf8_lossy(&out.stderr));
    let nobody = String::from_utf8(out.stdout).unwrap().replace(&info.server, &info.host_server);
    let nobody_file = tmp.path().join("nobody.conf");
    fs::write(&nobody_file, nobody).unwrap();
    let (code, err) = replace(&nobody_file, "any-node");
    assert_eq!(code, Some(16), "{err}");
    assert!(err.contains("forbidden") && err.contains("nodeforge-test-nobody"), "{err}");

    // Nothing listens on port 1 of the loopback.
    let admin = fs::read_to_string(&info.admin_kubeconfig).unwrap();
    let gone_file = tmp.path().join("gone.conf");
    fs::write(&gone_file, admin.replace(&info.host_server, "https://127.0.0.1:1")).unwrap();
    let (code, err) = replace(&gone_file, "any-node");
    assert_eq!(code, Some(15), "{err}");
    assert!(err.contains("cannot reach the API server at https://127.0.0.1:1"), "{err}");
}

/// A bin dir with the real programs, except kube-apiserver: `script`.
fn bins_with_fake_apiserver(tmp: &Path, script: &str) -> PathBuf {
    let bins = tmp.join("bin");
    fs::create_dir(&bins).unwrap();
    for name in ["etcd", "kube-controller-manager", "kubeadm"] {
        std::os::unix::fs::symlink(bin_dir().join(name), bins.join(name)).unwrap();
    }
    let fake = bins.join("kube-apiserver");
    fs::write(&fake, script).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    bins
}

#[test]
fn a_component_that_exits_fails_the_start_and_leaves_nothing_running() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\necho 'stand-in kube-apiserver: refusing to serve'\necho 'E1203 fatal: no' >&2\nexit 1\n";
    let bins = bins_with_fake_apiserver(tmp.path(), script);
    let dir = tmp.path().join("cp");
    let t0 = Instant::now();
    let err = ControlPlane::start(&config(&bins, &dir)).map(|_| ()).unwrap_err();
    let elapsed = t0.elapsed();
    let msg = format!("{err:#}");
    let ce = err.downcast_ref::<ComponentError>().unwrap_or_else(|| panic!("not a ComponentError: {msg}"));
    assert_eq!(ce.component, "kube-apiserver", "{msg}");
    assert!(msg.starts_with("kube-apiserver exited (exit status: 1)"), "{msg}");
    assert!(msg.contains("stand-in kube-apiserver: refusing to serve") && msg.contains("E1203 fatal: no"), "{msg}");
    assert!(msg.contains(&dir.join("logs/kube-apiserver.log").display().to_string()), "{msg}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert_eq!(processes_under(&dir), Vec::<String>::new(), "etcd was stopped");
}

#[test]
fn a_component_that_never_becomes_ready_fails_the_start_in_time() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let bins =
        bins_with_fake_apiserver(tmp.path(), "#!/bin/sh\necho 'stand-in kube-apiserver: hanging'\nexec sleep 600\n");
    let dir = tmp.path().join("cp");
    let mut cfg = config(&bins, &dir);
    cfg.start_timeout = Duration::from_secs(15);
    let t0 = Instant::now();
    let err = ControlPlane::start(&cfg).map(|_| ()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(t0.elapsed() < Duration::from_secs(40), "took {:?}", t0.elapsed());
    assert!(
        msg.starts_with("kube-apiserver did not become ready (GET /readyz) within the start limit of 15 s"),
        "{msg}"
    );
    assert!(msg.contains("stand-in kube-apiserver: hanging"), "{msg}");
    assert_eq!(processes_under(&dir), Vec::<String>::new());
}

/// `test-vm control-plane` in the background, its stdout and stderr in files.
struct Cli {
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Cli {
    fn start(tmp: &Path, dir: &Path, extra: &[&str], stdin: Stdio) -> Self {
        let (stdout, stderr) = (tmp.join("stdout"), tmp.join("stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_test-vm"))
            .arg("control-plane")
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdin(stdin)
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, stdout, stderr }
    }

    fn output(&self) -> (String, String) {
        (fs::read_to_string(&self.stdout).unwrap(), fs::read_to_string(&self.stderr).unwrap())
    }

    /// Wait for `path` to exist while the command runs.
    fn wait_for_file(&mut self, path: &Path) {
        let t0 = Instant::now();
        while !path.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("test-vm control-plane exited ({status}) before ready: {:?}", self.output());
            }
            assert!(t0.elapsed() < START_LIMIT, "not ready within {START_LIMIT:?}: {:?}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("test-vm control-plane did not exit within {limit:?}: {:?}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cli_prints_writes_the_ready_file_and_stops_on_sigterm() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let ready = tmp.path().join("ready.json");
    let mut cli = Cli::start(tmp.path(), &dir, &["--ready-file", &ready.to_string_lossy()], Stdio::null());
    cli.wait_for_file(&ready);
    let info: ControlPlaneInfo = serde_json::from_slice(&fs::read(&ready).unwrap()).unwrap();
    let (stdout, _) = cli.output();
    for want in [&info.endpoint, &info.ca_cert_hash, &info.token_file.display().to_string()] {
        assert!(stdout.contains(want.as_str()), "{want} missing from stdout:\n{stdout}");
    }
    assert_eq!(kubectl(&info.admin_kubeconfig, &["get", "--raw", "/readyz"]).trim(), "ok");
    let token = read_token(&info);

    let kill = Command::new("kill").args(["-TERM", &cli.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    assert_eq!(cli.wait_exit(Duration::from_secs(60)), 130, "exit code after SIGTERM: {:?}", cli.output());
    for c in &info.components {
        assert!(!alive(c.pid), "{} (pid {}) still exists", c.name, c.pid);
    }
    assert_eq!(processes_under(&dir), Vec::<String>::new());
    assert!(!ready.exists(), "the ready file is removed at stop");
    let (stdout, stderr) = cli.output();
    assert!(stderr.contains("stopped"), "{stderr}");
    assert_token_not_in(&info, &token, &[("stdout", &stdout), ("stderr", &stderr)]);
}

#[test]
fn cli_prints_json_and_stops_when_stdin_ends() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let mut cli = Cli::start(tmp.path(), &dir, &["--json", "--stop-on-stdin-eof"], Stdio::piped());
    let stdout_path = cli.stdout.clone();
    let t0 = Instant::now();
    let info: ControlPlaneInfo = loop {
        if let Ok(info) = serde_json::from_str(&fs::read_to_string(&stdout_path).unwrap()) {
            break info;
        }
        assert!(cli.child.try_wait().unwrap().is_none(), "exited early: {:?}", cli.output());
        assert!(t0.elapsed() < START_LIMIT, "no JSON within {START_LIMIT:?}: {:?}", cli.output());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(info.components.len(), 3);
    drop(cli.child.stdin.take()); // EOF
    assert_eq!(cli.wait_exit(Duration::from_secs(60)), 0, "{:?}", cli.output());
    assert!(info.components.iter().all(|c| !alive(c.pid)));
    assert_eq!(processes_under(&dir), Vec::<String>::new());
}

#[test]
fn a_sigkilled_cli_leaves_no_component_running() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let ready = tmp.path().join("ready.json");
    let mut cli = Cli::start(tmp.path(), &dir, &["--ready-file", &ready.to_string_lossy()], Stdio::null());
    cli.wait_for_file(&ready);
    let info: ControlPlaneInfo = serde_json::from_slice(&fs::read(&ready).unwrap()).unwrap();
    assert!(info.components.iter().all(|c| alive(c.pid)));
    // No code of test-vm runs after SIGKILL: PR_SET_PDEATHSIG (setpriv) kills the components.
    cli.child.kill().unwrap();
    cli.child.wait().unwrap();
    let t0 = Instant::now();
    while info.components.iter().any(|c| alive(c.pid)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "components outlived a SIGKILLed test-vm: {:?}",
            info.components
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_under(&dir), Vec::<String>::new());
}
