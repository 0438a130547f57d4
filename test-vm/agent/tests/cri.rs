//! The CRI stages against a real containerd: Debian's containerd, runc and CNI plugins
//! (`make test` installs them), a private daemon in a temp directory, and the test images
//! built by fixtures/images/build-test-images.sh and imported with `ctr`. systemd and
//! cloud-init are scripted (this host does not boot with them); everything CRI is real.
//!
//! Needs root (containerd mounts snapshots, the CNI plugins create network namespaces).

#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

use std::fs;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodeforge_agent::cri::{Cri, connect};
use nodeforge_agent::exec::{CmdOutput, Runner, SystemRunner};
use nodeforge_agent::kubelet::KubeletView;
use nodeforge_agent::notify::Readiness;
use nodeforge_agent::report::{Memory, Reporter};
use nodeforge_agent::stages::pod::PodOptions;
use nodeforge_agent::stages::{self, Deadline, containerd, cri, kubelet_config, pod};
use nodeforge_agent::{CgroupDriver, CriApi, Event, EventKind, Expect, Stage};

const SANDBOX: &str = "registry.k8s.io/pause:3.9";
const TEST_IMAGE: &str = "nodeforge.test/busybox:1";
/// A subnet and bridge of our own: the bridge plugin creates the bridge in this host's
/// network namespace.
const SUBNET: &str = "10.213.7.0/24";
const BRIDGE: &str = "nfagent0";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.is_file(), "{path} is missing: install the Debian package `{package}` (make test does)");
    p
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// systemd as PID 1 decides the driver this host can use (runc's systemd driver needs it).
fn host_cgroup_driver() -> CgroupDriver {
    let pid1 = fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() == "systemd" { CgroupDriver::Systemd } else { CgroupDriver::Cgroupfs }
}

/// A private containerd; killed, with the shims it started and the bridge its pods made, on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    fn start(driver: CgroupDriver) -> Containerd {
        let containerd = tool("/usr/bin/containerd", "containerd");
        tool("/usr/sbin/runc", "runc");
        for p in ["bridge", "host-local", "loopback"] {
            tool(&format!("/usr/lib/cni/{p}"), "containernetworking-plugins");
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("net.d")).unwrap();
        fs::write(
            d.join("net.d/10-agent-test.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "nodeforge-agent-test", "plugins": [
                  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
                    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]],
                              "dataDir": "{}"}}}}]}}"#,
                d.join("ipam").display()
            ),
        )
        .unwrap();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
required_plugins = ["io.containerd.grpc.v1.cri"]
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX}"
  # CRI gives sandboxes oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which a
  # container-based CI sandbox may lack (runc then dies with "can't get final child's PID").
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = {systemd}
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{netd}"
  max_conf_num = 1
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                socket = socket.display(),
                opt = d.join("opt").display(),
                systemd = driver == CgroupDriver::Systemd,
                netd = d.join("net.d").display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Containerd { child, dir, socket };
        let start = Instant::now();
        while !c.socket.exists() {
            let exited = c.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(15),
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new(tool("/usr/bin/ctr", "containerd"));
        cmd.arg("--address").arg(&self.socket).args(["--namespace", "k8s.io"]);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; ours name our socket on their command line.
        let ours = self.socket.display().to_string();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&ours)
                && let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>()
            {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
    }
}

fn expect(api: CriApi, driver: CgroupDriver, socket: &Path) -> Expect {
    serde_json::from_value(serde_json::json!({
        "cri_endpoint_default": format!("unix://{}", socket.display()),
        "sandbox_image": SANDBOX,
        "images": [SANDBOX, TEST_IMAGE],
        "cni_subnet": SUBNET,
        "cgroup_driver": driver.as_str(),
        "cri_api": api.as_str(),
        "containerd_version": containerd_version(),
        "stage_timeouts_s": {"cri": 30, "pod": 60, "kubelet-config": 30, "containerd": 30}
    }))
    .unwrap()
}

/// What `containerd --version` says, e.g. `1.6.20~ds1` -> `1.6.20`.
fn containerd_version() -> String {
    let out = run(Command::new("/usr/bin/containerd").arg("--version"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.split_whitespace().nth(2).unwrap_or_default();
    v.trim_start_matches('v').split('~').next().unwrap_or_default().to_owned()
}

/// systemctl and cloud-init answer as on a booted node whose kubelet drop-in points at our
/// socket; anything else (ctr) really runs.
struct BootedNode {
    dropin: PathBuf,
    config_dir: PathBuf,
    /// systemd's notify socket, as the agent's unit sees it: the boot (`is-system-running`)
    /// cannot finish before the agent said READY on it.
    notify: Option<UnixDatagram>,
    ready_seen: Mutex<bool>,
}

impl BootedNode {
    fn is_system_running(&self) -> CmdOutput {
        let Some(sock) = &self.notify else { return CmdOutput::ok("running\n") };
        let mut seen = self.ready_seen.lock().unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = sock.recv(&mut buf) {
            assert_eq!(&buf[..n], b"READY=1\n");
            *seen = true;
        }
        // Like systemd: multi-user.target waits for the agent's unit to be ready.
        assert!(*seen, "the agent waited for the whole boot before saying READY: that wait never ends");
        CmdOutput::ok("running\n")
    }
}

impl Runner for BootedNode {
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let line = format!("{program} {}", args.join(" "));
        let answer = match line.as_str() {
            "systemctl is-system-running" => self.is_system_running(),
            "systemctl --failed --plain --no-legend --no-pager" => CmdOutput::ok(""),
            "systemctl is-active default.target"
            | "systemctl is-active containerd.service"
            | "systemctl is-active local-fs.target" => CmdOutput::ok("active\n"),
            // No kubelet runs on this node: the pod stage has none to pause.
            "systemctl is-active kubelet.service" => CmdOutput::ok("inactive\n"),
            "cloud-init status --wait --long" => CmdOutput::ok("status: done\n"),
            l if l.starts_with("systemctl show nodeforge-preload-images.service") => {
                CmdOutput::ok("LoadState=not-found\nActiveState=inactive\nResult=success\n")
            }
            l if l.starts_with("systemctl show --no-pager -p Id") => CmdOutput::ok(
                "Id=containerd.service\nInactiveExitTimestampMonotonic=5000000\nActiveEnterTimestampMonotonic=6500000\n",
            ),
            l if l.starts_with("systemctl show kubelet.service") => CmdOutput::ok(&format!(
                "LoadState=loaded\nDropInPaths={}\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir={}\"\nEnvironmentFiles=\n",
                self.dropin.display(),
                self.config_dir.display()
            )),
            l if l.starts_with("systemctl") || l.starts_with("cloud-init") => panic!("unscripted: {l}"),
            _ => return SystemRunner.run(program, args, timeout),
        };
        Ok(answer)
    }
}

#[test]
fn stages_against_a_real_containerd() {
    let uid = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = uid.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()) == Some("0");
    assert!(root, "starting a real containerd needs root; run the tests as root");
    let t0 = Instant::now();
    let driver = host_cgroup_driver();
    let ctrd = Containerd::start(driver);
    let d = ctrd.dir.path().to_owned();
    eprintln!("containerd up in {:?} (cgroup driver {})", t0.elapsed(), driver.as_str());

    let images = d.join("images");
    run(Command::new("bash")
        .arg(repo_root().join("fixtures/images/build-test-images.sh"))
        .arg(&images)
        .arg(SANDBOX)
        .stdout(Stdio::null()));
    for tar in ["sandbox.tar", "test-busybox.tar"] {
        run(ctrd.ctr().args(["images", "import"]).arg(images.join(tar)));
    }
    eprintln!("images built and imported at {:?}", t0.elapsed());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let v1 = expect(CriApi::V1, driver, &ctrd.socket);
    let dl = || Deadline::after(Duration::from_secs(60));

    // cri: Version + Status over v1 and over v1alpha2 (containerd 1.6 serves both).
    for api in [CriApi::V1, CriApi::V1alpha2] {
        let e = expect(api, driver, &ctrd.socket);
        let t = Instant::now();
        let o = rt.block_on(cri::run(&SystemRunner, &ctrd.socket, None, &e, dl()));
        assert!(o.ok, "cri {api:?}: {o:#?}\n{}", ctrd.log());
        assert_eq!(o.detail["version"]["runtime_api_version"], api.as_str());
        eprintln!("cri {}: {:?} {}", api.as_str(), t.elapsed(), o.message);
    }

    // containerd (CRI half): images present; the sandbox image unpinned until labelled, as
    // after a `ctr images import`; Debian's 1.6.20 does not fill CRI's Image.pinned.
    let mut client = rt.block_on(async { Cri::new(connect(&ctrd.socket).await.unwrap(), CriApi::V1) });
    let o = rt.block_on(containerd::check_images(&mut client, &SystemRunner, &ctrd.socket, &v1));
    assert!(!o.ok && o.message.contains("not pinned"), "{o:#?}");
    run(ctrd.ctr().args(["images", "label", SANDBOX, "io.cri-containerd.pinned=pinned"]));
    let o = rt.block_on(containerd::check_images(&mut client, &SystemRunner, &ctrd.socket, &v1));
    assert!(o.ok, "{o:#?}");
    eprintln!("containerd images: {} ({})", o.message, o.detail["pinned_note"]);
    let mut missing = v1.clone();
    missing.images.push("docker.io/library/nope:1".into());
    let o = rt.block_on(containerd::check_images(&mut client, &SystemRunner, &ctrd.socket, &missing));
    assert!(!o.ok && o.detail["missing"] == serde_json::json!(["docker.io/library/nope:1"]), "{o:#?}");

    // pod: a sandbox and a container, both APIs; every run cleans up after itself.
    let pod_opts = PodOptions { log_root: d.join("pods"), cgroup_parent: None };
    for api in [CriApi::V1, CriApi::V1alpha2] {
        let e = expect(api, driver, &ctrd.socket);
        let t = Instant::now();
        let o = rt.block_on(pod::run(&ctrd.socket, &e, &pod_opts, dl()));
        assert!(o.ok, "pod {api:?}: {o:#?}\n{}", ctrd.log());
        assert!(o.detail["log_line"].as_str().unwrap().ends_with(" stdout F hello-from-nodeforge"), "{o:#?}");
        eprintln!(
            "pod {}: {:?} ip {} (run_pod_sandbox {} ms, exited {} ms, cleanup {} ms)",
            api.as_str(),
            t.elapsed(),
            o.detail["pod_ip"],
            o.detail["run_pod_sandbox_ms"],
            o.detail["exited_ms"],
            o.detail["cleanup_ms"]
        );
    }
    let left = run(ctrd.ctr().args(["containers", "ls", "-q"]));
    assert!(left.stdout.is_empty(), "containers left behind: {}", String::from_utf8_lossy(&left.stdout));
    assert_eq!(fs::read_dir(d.join("pods")).unwrap().count(), 0, "pod log directories left behind");

    // pod with an IP outside the expected subnet fails (and still cleans up).
    let mut elsewhere = v1.clone();
    elsewhere.cni_subnet = "192.0.2.0/24".parse().unwrap();
    let o = rt.block_on(pod::run(&ctrd.socket, &elsewhere, &pod_opts, dl()));
    assert!(!o.ok && o.message.contains("outside the CNI subnet"), "{o:#?}");
    assert!(o.detail.get("cleanup_errors").is_none(), "{o:#?}");

    // kubelet-config: containerd's effective config against a kubelet view.
    let view = KubeletView {
        endpoint: format!("unix://{}", ctrd.socket.display()),
        endpoint_source: "test".into(),
        cgroup_driver: Some(driver.as_str().into()),
        cgroup_driver_source: "test".into(),
        drop_in_paths: vec![],
        config_files: vec![],
        fallback: false,
    };
    let o = rt.block_on(kubelet_config::run(&ctrd.socket, &v1, &view, dl()));
    assert!(o.ok, "{o:#?}");
    assert_eq!(o.detail["containerd"]["endpoint"], ctrd.socket.display().to_string(), "{o:#?}");
    let other = if driver == CgroupDriver::Systemd { "cgroupfs" } else { "systemd" };
    let wrong = KubeletView { cgroup_driver: Some(other.into()), ..view.clone() };
    let o = rt.block_on(kubelet_config::run(&ctrd.socket, &v1, &wrong, dl()));
    assert!(!o.ok && o.message.contains("cgroup drivers differ"), "{o:#?}");
    let elsewhere = KubeletView { endpoint: "unix:///run/elsewhere.sock".into(), ..view };
    let o = rt.block_on(kubelet_config::run(&ctrd.socket, &v1, &elsewhere, dl()));
    assert!(!o.ok && o.message.contains("containerd serves"), "{o:#?}");

    // The whole pipeline as the binary runs it, with systemd and cloud-init scripted and the
    // kubelet's endpoint found through a drop-in's --config-dir.
    let config_dir = d.join("kubelet.conf.d");
    fs::create_dir(&config_dir).unwrap();
    fs::write(
        config_dir.join("20-nodeforge-containerd.conf"),
        format!(
            "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix://{}\ncgroupDriver: {}\n",
            ctrd.socket.display(),
            driver.as_str()
        ),
    )
    .unwrap();
    // Both orders; the runtime-first one with a notify socket that the boot waits on.
    for runtime_first in [false, true] {
        let notify_path = d.join(format!("notify-{runtime_first}"));
        let notify = runtime_first.then(|| {
            let sock = UnixDatagram::bind(&notify_path).unwrap();
            sock.set_nonblocking(true).unwrap();
            sock
        });
        let node = BootedNode {
            dropin: d.join("20-nodeforge-containerd.conf"),
            config_dir: config_dir.clone(),
            notify,
            ready_seen: Mutex::new(false),
        };
        let mut readiness = if runtime_first {
            Readiness::to_socket(notify_path.to_string_lossy().into_owned())
        } else {
            Readiness::none()
        };
        let mut e = v1.clone();
        e.cri_endpoint_default = "unix:///nonexistent.sock".into(); // must not be used: a drop-in exists
        e.runtime_first = runtime_first;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reporter = Reporter::new(Box::new(Memory(lines.clone())));
        let t = Instant::now();
        let passed = rt.block_on(stages::run_all(&e, &node, &mut reporter, &pod_opts, &mut readiness));
        let events: Vec<Event> = lines.lock().unwrap().iter().map(|l| Event::parse_line(l).unwrap().unwrap()).collect();
        assert!(passed, "{events:#?}");
        let ends: Vec<(Stage, EventKind)> =
            events.iter().filter(|e| e.event != EventKind::Start).map(|e| (e.stage, e.event)).collect();
        let mut want: Vec<(Stage, EventKind)> =
            Stage::order(runtime_first).iter().map(|s| (*s, EventKind::Pass)).collect();
        want.push((Stage::Done, EventKind::Pass));
        assert_eq!(ends, want);
        assert_eq!(*node.ready_seen.lock().unwrap(), runtime_first);
        assert!(readiness.sent());
        let cloud_init = events.iter().find(|e| e.stage == Stage::CloudInit && e.event == EventKind::Pass).unwrap();
        assert_eq!(cloud_init.detail["timeline"]["containerd.service"]["active_s"], 6.5, "{cloud_init:?}");
        eprintln!("run_all (runtime first: {runtime_first}): {:?}", t.elapsed());
    }
    eprintln!("total {:?}", t0.elapsed());
}
