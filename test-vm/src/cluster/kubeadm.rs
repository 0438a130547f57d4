//! kubeadm's side: its configuration file, its phases (run as child processes, bounded in
//! time, output into `logs/kubeadm.log`), and the host copies of the kubeconfigs it writes.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::layout::{Layout, write_private};
use super::pki::BootstrapToken;
use super::{GUEST_HOST, NODE_NAME};
use crate::supervise::{self, tail};

/// The groups of kubeadm's default node token: what its RBAC lets post CSRs and be approved.
pub const TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
/// The kubeconfigs the control plane needs: kubeadm's and its own use, a user's, the
/// controller-manager's. No scheduler (not in the binary set) and no kubelet (no node here).
pub const KUBECONFIGS: [&str; 3] = ["admin", "super-admin", "controller-manager"];

/// `kubeadm version -o short`: the default Kubernetes version.
pub fn version(kubeadm: &Path) -> Result<String> {
    let out = Command::new(kubeadm)
        .args(["version", "-o", "short"])
        .output()
        .with_context(|| format!("running {} version", kubeadm.display()))?;
    if !out.status.success() {
        bail!("{} version failed ({}): {}", kubeadm.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    check_version(&v).with_context(|| format!("{} version -o short", kubeadm.display()))?;
    Ok(v)
}

/// `vMAJOR.MINOR.PATCH` with an optional `-suffix`, as kubeadm's `kubernetesVersion` takes it.
pub fn check_version(v: &str) -> Result<()> {
    let core = v.strip_prefix('v').map(|rest| rest.split(['-', '+']).next().unwrap_or(rest));
    let ok = core.is_some_and(|c| {
        let parts: Vec<&str> = c.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if !ok {
        bail!("`{v}` is not a Kubernetes version like v1.34.4");
    }
    Ok(())
}

/// A JSON string is a valid YAML double-quoted scalar: paths and versions go in quoted.
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Which paths a rendered configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The work directory's: for the phases that write certificates and kubeconfigs here.
    Host,
    /// A kubeadm node's (`/etc/kubernetes/pki`, `/var/lib/etcd`): for the phases that upload
    /// configuration to the cluster. kubeadm derives the kubelet's `clientCAFile` from
    /// `certificatesDir`, and every joining node's kubelet reads it from the uploaded
    /// `kubelet-config`: a work-directory path there makes each joined kubelet exit with
    /// "unable to load client CA file".
    Cluster,
}

/// kubeadm's configuration: what `kubeadm init` would be given for a control plane whose
/// guests reach it at 10.0.2.2:`api_port` (QEMU user networking's host address).
pub fn render_config(layout: &Layout, version: &str, token: &BootstrapToken, api_port: u16, view: View) -> String {
    let (pki, etcd) = match view {
        View::Host => (layout.pki(), layout.etcd_data()),
        View::Cluster => (Path::new("/etc/kubernetes/pki").to_owned(), Path::new("/var/lib/etcd").to_owned()),
    };
    format!(
        r#"# Written by test-vm control-plane. Holds the bootstrap token: keep it private.
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: {token}
  description: "test-vm control plane"
  ttl: 24h0m0s
  usages: [signing, authentication]
  groups: [{group}]
localAPIEndpoint:
  advertiseAddress: {GUEST_HOST}
  bindPort: {api_port}
nodeRegistration:
  name: {NODE_NAME}
  # Set so kubeadm does not look for a container runtime on this host (there is none).
  criSocket: unix:///var/run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: kubernetes
kubernetesVersion: {version}
controlPlaneEndpoint: "{GUEST_HOST}:{api_port}"
certificatesDir: {pki}
apiServer:
  certSANs: ["{GUEST_HOST}", "127.0.0.1", "localhost"]
networking:
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
etcd:
  local:
    dataDir: {etcd}
"#,
        token = q(&token.expose()),
        group = q(TOKEN_GROUP),
        version = q(version),
        pki = q(&pki.to_string_lossy()),
        etcd = q(&etcd.to_string_lossy()),
    )
}

/// Runs kubeadm phases into one log.
#[derive(Debug)]
pub struct Kubeadm<'a> {
    pub bin: &'a Path,
    pub layout: &'a Layout,
}

impl Kubeadm<'_> {
    pub fn log(&self) -> std::path::PathBuf {
        self.layout.log("kubeadm")
    }

    /// `kubeadm ARGS`, which must succeed before `deadline`. The command line is written to
    /// the log before kubeadm's own output (no secret is ever on it: the token is in the
    /// configuration file).
    pub fn run(&self, args: &[&OsStr], deadline: Instant) -> Result<()> {
        let log = self.log();
        let line =
            supervise::shell_line(OsStr::new("kubeadm"), &args.iter().map(|a| a.to_os_string()).collect::<Vec<_>>());
        {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            writeln!(f, "$ {line}").with_context(|| format!("writing {}", log.display()))?;
        }
        let mut cmd = supervise::command(self.bin.as_os_str());
        cmd.args(args);
        supervise::log_to(&mut cmd, &log)?;
        let mut child = cmd.spawn().with_context(|| format!("starting {} through setpriv", self.bin.display()))?;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for kubeadm")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{line}` did not finish in time; last lines of {}:\n{}", log.display(), indent(&tail(&log, 20)));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("`{line}` failed ({status}); last lines of {}:\n{}", log.display(), indent(&tail(&log, 20)));
        }
        Ok(())
    }

    /// `kubeadm init phase ARGS --config CONFIG [EXTRA]`: DIR/kubeadm.yaml for the host
    /// [`View`], DIR/kubeadm-cluster.yaml for the cluster's.
    pub fn phase(&self, args: &[&str], extra: &[&OsStr], view: View, deadline: Instant) -> Result<()> {
        let config = match view {
            View::Host => self.layout.kubeadm_config(),
            View::Cluster => self.layout.kubeadm_cluster_config(),
        };
        let mut all: Vec<&OsStr> = ["init", "phase"].iter().chain(args).map(OsStr::new).collect();
        all.extend([OsStr::new("--config"), config.as_os_str()]);
        all.extend_from_slice(extra);
        self.run(&all, deadline)
    }

    /// The certificates, then kubeadm's kubeconfigs (naming the guest endpoint) and their
    /// host copies (naming 127.0.0.1). Kubeconfigs of an earlier attempt on other ports are
    /// removed first: kubeadm refuses to overwrite one that names another server.
    pub fn pki_and_kubeconfigs(&self, api_port: u16, deadline: Instant) -> Result<()> {
        self.phase(&["certs", "all"], &[], View::Host, deadline)?;
        let guest_dir = self.layout.guest_kubeconfigs();
        for name in KUBECONFIGS {
            let file = guest_dir.join(format!("{name}.conf"));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
            }
            let dir = [OsStr::new("--kubeconfig-dir"), guest_dir.as_os_str()];
            self.phase(&["kubeconfig", name], &dir, View::Host, deadline)?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let host = host_kubeconfig(&text, api_port).with_context(|| format!("{}", file.display()))?;
            write_private(&self.layout.host_kubeconfig(name), host.as_bytes())?;
        }
        Ok(())
    }
}

/// The guest endpoint's URL.
pub fn guest_server(api_port: u16) -> String {
    format!("https://{GUEST_HOST}:{api_port}")
}

/// The same API server from the host.
pub fn host_server(api_port: u16) -> String {
    format!("https://127.0.0.1:{api_port}")
}

/// A kubeadm kubeconfig with its one `server:` line turned from the guest endpoint to
/// 127.0.0.1; everything else (CA, client certificate, names) as kubeadm wrote it. The API
/// server's certificate has 127.0.0.1 among its SANs, so TLS verification still holds.
pub fn host_kubeconfig(text: &str, api_port: u16) -> Result<String> {
    let from = format!("server: {}\n", guest_server(api_port));
    let to = format!("server: {}\n", host_server(api_port));
    let n = text.matches(&from).count();
    if n != 1 {
        bail!("expected exactly one `{}` line, found {n}", from.trim_end());
    }
    Ok(text.replacen(&from, &to, 1))
}

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for ok in ["v1.34.4", "v1.35.0-rc.1", "v1.34.4+k3s1"] {
            check_version(ok).expect(ok);
        }
        for bad in ["1.34.4", "v1.34", "v1.34.x", "", "v1..4"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_names_the_guest_endpoint_and_work_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::create(&tmp.path().join("cp")).expect("layout");
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").expect("token");
        let y = render_config(&layout, "v1.34.4", &token, 41234, View::Host);
        for want in [
            "apiVersion: kubeadm.k8s.io/v1beta4",
            "controlPlaneEndpoint: \"10.0.2.2:41234\"",
            "advertiseAddress: 10.0.2.2\n  bindPort: 41234",
            "certSANs: [\"10.0.2.2\", \"127.0.0.1\", \"localhost\"]",
            "serviceSubnet: 10.96.0.0/12",
            "kubernetesVersion: \"v1.34.4\"",
            "- token: \"abcdef.0123456789abcdef\"",
            "groups: [\"system:bootstrappers:kubeadm:default-node-token\"]",
        ] {
            assert!(y.contains(want), "{want:?} missing from\n{y}");
        }
        assert!(y.contains(&format!("certificatesDir: \"{}/pki\"", layout.dir().display())));
        // Both documents parse as YAML.
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&y).expect("yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["etcd"]["local"]["dataDir"], format!("{}/etcd", layout.dir().display()));
        // What joining nodes are told: a kubeadm node's paths, nothing of this host's.
        let c = render_config(&layout, "v1.34.4", &token, 41234, View::Cluster);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&c).expect("yaml");
        assert_eq!(docs[1]["certificatesDir"], "/etc/kubernetes/pki");
        assert_eq!(docs[1]["etcd"]["local"]["dataDir"], "/var/lib/etcd");
        assert!(!c.contains(&layout.dir().display().to_string()), "{c}");
        assert_eq!(
            y.replace(&layout.dir().display().to_string(), "X"),
            c.replace("/etc/kubernetes", "X").replace("/var/lib/etcd", "X/etcd")
        );
    }

    #[test]
    fn host_copy_changes_only_the_server() {
        let kc = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://10.0.2.2:6443\n  name: kubernetes\n";
        let host = host_kubeconfig(kc, 6443).expect("host");
        assert_eq!(host, kc.replace("https://10.0.2.2:6443", "https://127.0.0.1:6443"));
        assert!(host_kubeconfig(kc, 6444).is_err(), "another port");
        assert!(host_kubeconfig(&format!("{kc}{kc}"), 6443).is_err(), "two servers");
    }
}
