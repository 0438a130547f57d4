//! Real tools for consumer checks: run with a deadline, fail loudly when missing, and a
//! throwaway containerd in a temp directory.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fail (not skip) when a tool is missing: a consumer check that silently does not run
/// is worse than a red test telling you what to install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: install the Debian package `{package}` (make test does)");
}

/// Run with a deadline; the child is killed if it overruns.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut guard = KillOnDrop(child);
    let start = Instant::now();
    while guard.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < limit, "{cmd:?} took longer than {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    guard.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    guard.0.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    Output { status: guard.0.wait().unwrap(), stdout: out, stderr: err }
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}

/// Start containerd on `config` with its root, state, socket and `opt` directory moved into
/// `dir`. A wrapper config `imports` the rendered one unchanged: imports replace whole
/// plugin sections, and the rendered file never sets the `opt` plugin, so nothing of ours
/// is overridden. The wrapper has the rendered file's schema version (2 for containerd 1.x,
/// 3 for 2.x), so containerd 2.x migrates neither.
pub fn start_containerd(containerd: &Path, config: &Path, dir: &Path) -> (KillOnDrop, PathBuf) {
    let wrapper = dir.join("wrapper.toml");
    let rendered = fs::read_to_string(config).unwrap();
    let version = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = "))
        .unwrap_or_else(|| panic!("{} has no version line", config.display()));
    fs::write(
        &wrapper,
        format!(
            "version = {version}\nimports = [{:?}]\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {:?}\n",
            config.display().to_string(),
            dir.join("opt").display().to_string()
        ),
    )
    .unwrap();
    let socket = dir.join("c.sock");
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new(containerd)
        .arg("-c")
        .arg(&wrapper)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(&socket)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (KillOnDrop(child), socket)
}

/// Start containerd and wait (10 s at most) for its socket; panics with its log otherwise.
pub fn start_containerd_ready(containerd: &Path, config: &Path, dir: &Path) -> (KillOnDrop, PathBuf) {
    let (mut daemon, socket) = start_containerd(containerd, config, dir);
    let start = Instant::now();
    while !socket.exists() {
        let exited = daemon.0.try_wait().unwrap();
        let log = || fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        assert!(exited.is_none(), "containerd exited ({exited:?}):\n{}", log());
        assert!(start.elapsed() < Duration::from_secs(10), "no containerd socket after 10 s:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, socket)
}
