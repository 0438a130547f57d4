//! What a user of the control plane needs, as text (stdout) and as the ready file (JSON).
//! The bootstrap token itself is in neither: only the path of the file holding it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::GUEST_HOST;
use super::components::{APISERVER, CONTROLLER_MANAGER, ETCD, Ports};
use super::kubeadm::{guest_server, host_server};
use super::layout::Layout;
use super::running::Running;

/// The ready file's content (`--ready-file`, `--json`), and [`super::ControlPlane::info`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneInfo {
    /// `v1.34.4`: kubeadm's `kubernetesVersion`, which the API server reports.
    pub kubernetes_version: String,
    /// `10.0.2.2:PORT`: what `kubeadm join` takes in a guest.
    pub endpoint: String,
    /// `https://10.0.2.2:PORT`: the server in `cluster-info` and kubeadm's kubeconfigs.
    pub server: String,
    /// `https://127.0.0.1:PORT`: the same API server from this host.
    pub host_server: String,
    /// A file holding the bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}` and a newline), mode 0600.
    pub token_file: PathBuf,
    /// `sha256:HEX`: `--discovery-token-ca-cert-hash`.
    pub ca_cert_hash: String,
    pub ca_cert: PathBuf,
    /// kubeadm's `admin.conf` naming https://127.0.0.1:PORT: for kubectl on this host.
    pub admin_kubeconfig: PathBuf,
    /// kubeadm's own `admin.conf`, naming https://10.0.2.2:PORT: for inside a guest.
    pub guest_admin_kubeconfig: PathBuf,
    /// The work directory.
    pub dir: PathBuf,
    /// In start order.
    pub components: Vec<ComponentInfo>,
    /// From the call to start until ready.
    pub ready_ms: u64,
    /// When each step was done, from the call to start.
    pub timings: Vec<Timing>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// `etcd`, `kube-apiserver`, `kube-controller-manager`.
    pub name: String,
    pub pid: u32,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Its main port on 127.0.0.1: etcd's client port, the API server's, the
    /// controller-manager's secure port.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub step: String,
    pub at_ms: u64,
}

impl ControlPlaneInfo {
    pub(super) fn new(
        layout: &Layout,
        version: &str,
        ports: Ports,
        ca_cert_hash: String,
        running: &Running,
        ready: Duration,
        timings: Vec<Timing>,
    ) -> Self {
        let port_of = |name: &str| match name {
            ETCD => ports.etcd_client,
            APISERVER => ports.api,
            CONTROLLER_MANAGER => ports.controller_manager,
            _ => 0,
        };
        let components = running
            .pids()
            .into_iter()
            .map(|(name, pid, log)| ComponentInfo { port: port_of(&name), name, pid, log })
            .collect();
        Self {
            kubernetes_version: version.to_owned(),
            endpoint: format!("{GUEST_HOST}:{}", ports.api),
            server: guest_server(ports.api),
            host_server: host_server(ports.api),
            token_file: layout.token_file(),
            ca_cert_hash,
            ca_cert: layout.ca_cert(),
            admin_kubeconfig: layout.host_kubeconfig("admin"),
            guest_admin_kubeconfig: layout.guest_kubeconfigs().join("admin.conf"),
            dir: layout.dir().to_owned(),
            components,
            ready_ms: ready.as_millis() as u64,
            timings,
        }
    }

    /// The text `test-vm control-plane` prints.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "control plane ready in {:.1} s: Kubernetes {}\n",
            self.ready_ms as f64 / 1000.0,
            self.kubernetes_version
        );
        let rows = [
            ("join endpoint", format!("{} (from this host: {})", self.endpoint, self.host_server)),
            ("token file", self.token_file.display().to_string()),
            ("CA cert hash", self.ca_cert_hash.clone()),
            ("admin kubeconfig", self.admin_kubeconfig.display().to_string()),
        ];
        for (k, v) in rows {
            s.push_str(&format!("  {k:<18}{v}\n"));
        }
        for c in &self.components {
            s.push_str(&format!("  {:<24}pid {:<8} port {:<6} {}\n", c.name, c.pid, c.port, c.log.display()));
        }
        s.push_str(&format!(
            "  join from a guest:  kubeadm join {} --token \"$TOKEN\" --discovery-token-ca-cert-hash {}\n",
            self.endpoint, self.ca_cert_hash
        ));
        s.push_str(&format!("                      (TOKEN: the content of {})\n", self.token_file.display()));
        s
    }

    /// Write the JSON atomically: a temporary file beside `path`, synced, renamed over it.
    pub fn write_ready_file(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).context("serialising the ready file")?;
        tmp.write_all(format!("{json}\n").as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        tmp.as_file().sync_all().with_context(|| format!("syncing {}", path.display()))?;
        tmp.persist(path).with_context(|| format!("renaming onto {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPlaneInfo {
        ControlPlaneInfo {
            kubernetes_version: "v1.34.4".into(),
            endpoint: "10.0.2.2:41000".into(),
            server: "https://10.0.2.2:41000".into(),
            host_server: "https://127.0.0.1:41000".into(),
            token_file: "/w/token".into(),
            ca_cert_hash: "sha256:00ff".into(),
            ca_cert: "/w/pki/ca.crt".into(),
            admin_kubeconfig: "/w/host/admin.conf".into(),
            guest_admin_kubeconfig: "/w/kubeconfig/admin.conf".into(),
            dir: "/w".into(),
            components: vec![ComponentInfo {
                name: "etcd".into(),
                pid: 42,
                log: "/w/logs/etcd.log".into(),
                port: 41001,
            }],
            ready_ms: 11_800,
            timings: vec![Timing { step: "etcd".into(), at_ms: 2000 }],
        }
    }

    #[test]
    fn summary_and_ready_file() {
        let info = sample();
        let text = info.summary();
        for want in ["ready in 11.8 s: Kubernetes v1.34.4", "10.0.2.2:41000", "/w/token", "sha256:00ff", "pid 42"] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.json");
        info.write_ready_file(&path).expect("write");
        let back: ControlPlaneInfo = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(back, info);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left");
    }
}
