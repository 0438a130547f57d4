//! The running components: started in order through one [`Spawner`], checked for an early
//! exit, stopped in reverse order (SIGTERM, then SIGKILL after a grace period).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::kubeadm::indent;
use crate::supervise::{self, Spawner, Supervised};

/// Lines of a component's log quoted in an error.
pub const TAIL_LINES: usize = 20;

/// A component that exited or did not become ready. Public so callers can tell which one
/// failed (`component`) without parsing the message.
#[derive(Debug, Clone)]
pub struct ComponentError {
    /// `etcd`, `kube-apiserver`, `kube-controller-manager`.
    pub component: String,
    /// What happened: "exited (exit status: 1) before it was ready", "did not ... within 60 s".
    pub problem: String,
    pub log: PathBuf,
    /// The last [`TAIL_LINES`] lines of `log`.
    pub tail: String,
}

impl ComponentError {
    pub fn new(component: &str, problem: String, log: &Path) -> Self {
        let tail = supervise::tail(log, TAIL_LINES);
        Self { component: component.to_owned(), problem, log: log.to_owned(), tail }
    }

    /// The component could not bind its port (taken since it was picked): worth a retry on
    /// other ports.
    pub fn port_in_use(&self) -> bool {
        self.tail.contains("address already in use")
    }
}

impl fmt::Display for ComponentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}; last lines of {}:\n{}", self.component, self.problem, self.log.display(), indent(&self.tail))
    }
}

impl std::error::Error for ComponentError {}

/// Children in start order, each under `setpriv --pdeathsig KILL`, spawned from one thread
/// that lives as long as this value.
#[derive(Debug)]
pub struct Running {
    // Declared (and so dropped) before the spawner, whose end would kill them.
    children: Vec<Supervised>,
    spawner: Spawner,
    grace: Duration,
}

impl Running {
    pub fn new(grace: Duration) -> Result<Self> {
        Ok(Self { children: Vec::new(), spawner: Spawner::new()?, grace })
    }

    /// Start `program args` as `name`, output into `log`.
    pub fn start(&mut self, name: &str, program: &Path, args: &[String], log: &Path) -> Result<u32> {
        let mut cmd = supervise::command(program.as_os_str());
        cmd.args(args);
        supervise::log_to(&mut cmd, log)?;
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("starting {name} ({}) through setpriv (util-linux)", program.display()))?;
        let s = Supervised::new(name, log, child);
        let pid = s.pid();
        self.children.push(s);
        Ok(pid)
    }

    /// An error for the first component that has exited.
    pub fn check(&mut self, when: &str) -> Result<(), ComponentError> {
        for c in &mut self.children {
            let exited = match c.try_wait() {
                Ok(s) => s,
                Err(e) => return Err(ComponentError::new(&c.name, format!("cannot be waited for: {e:#}"), &c.log)),
            };
            if let Some(status) = exited {
                return Err(ComponentError::new(&c.name, format!("exited ({status}) {when}"), &c.log));
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<(String, u32, PathBuf)> {
        self.children.iter().map(|c| (c.name.clone(), c.pid(), c.log.clone())).collect()
    }

    pub fn log_of(&self, name: &str) -> Option<PathBuf> {
        self.children.iter().find(|c| c.name == name).map(|c| c.log.clone())
    }

    /// Stop every child, last started first. Idempotent.
    pub fn stop_all(&mut self) {
        while let Some(mut c) = self.children.pop() {
            c.stop(self.grace);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_the_log_and_spot_a_taken_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("etcd.log");
        // etcd 3.6.4's last line when its client port was taken.
        let fatal = r#"{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:58747: bind: address already in use"}"#;
        std::fs::write(&log, format!("starting\n{fatal}\n")).expect("write");
        let e = ComponentError::new("etcd", "exited (exit status: 1) before it was ready".into(), &log);
        assert!(e.port_in_use());
        let text = e.to_string();
        assert!(text.starts_with("etcd exited (exit status: 1) before it was ready; last lines of "), "{text}");
        assert!(text.ends_with(&format!("  | starting\n  | {fatal}")), "{text}");
        std::fs::write(&log, "E1203 run.go:72] \"command failed\" err=\"bad flag\"\n").expect("write");
        assert!(!ComponentError::new("etcd", "exited".into(), &log).port_in_use());
    }
}
