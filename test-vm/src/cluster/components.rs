//! The three components and their command lines: the flags kubeadm v1.34's static-pod
//! manifests give them (cmd/kubeadm/app/phases/controlplane/manifests.go and
//! phases/etcd/local.go), with the work directory's paths, free ports and every listener on
//! 127.0.0.1. Guests see the API server as 10.0.2.2 (QEMU user networking's host address).

use std::net::TcpListener;
use std::path::Path;

use anyhow::{Context, Result};

use super::layout::Layout;
use super::{GUEST_HOST, NODE_NAME};

pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// Everything this module starts, in start order (stopped in reverse).
pub const ALL: [&str; 3] = [ETCD, APISERVER, CONTROLLER_MANAGER];

/// Free TCP ports on 127.0.0.1, one per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub api: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub etcd_metrics: u16,
    pub controller_manager: u16,
}

impl Ports {
    /// Bind five listeners on 127.0.0.1:0 at once (so the ports differ), note the ports and
    /// release them. Another process can take one before the component binds it; the start
    /// then sees "address already in use" in the component's log and tries again.
    pub fn pick() -> Result<Self> {
        let listeners = (0..5)
            .map(|_| TcpListener::bind(("127.0.0.1", 0)).context("binding a free port on 127.0.0.1"))
            .collect::<Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()).context("reading a bound port"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            api: ports[0],
            etcd_client: ports[1],
            etcd_peer: ports[2],
            etcd_metrics: ports[3],
            controller_manager: ports[4],
        })
    }
}

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// kubeadm's local etcd (3.6 flags), client, peer and metrics URLs on 127.0.0.1 only.
pub fn etcd_args(l: &Layout, ports: &Ports) -> Vec<String> {
    let pki = l.pki();
    let client = format!("https://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("https://127.0.0.1:{}", ports.etcd_peer);
    flags(&[
        ("name", NODE_NAME.into()),
        ("listen-client-urls", client.clone()),
        ("advertise-client-urls", client),
        ("listen-peer-urls", peer.clone()),
        ("initial-advertise-peer-urls", peer.clone()),
        ("initial-cluster", format!("{NODE_NAME}={peer}")),
        ("data-dir", p(&l.etcd_data())),
        ("cert-file", p(&pki.join("etcd/server.crt"))),
        ("key-file", p(&pki.join("etcd/server.key"))),
        ("trusted-ca-file", p(&pki.join("etcd/ca.crt"))),
        ("client-cert-auth", "true".into()),
        ("peer-cert-file", p(&pki.join("etcd/peer.crt"))),
        ("peer-key-file", p(&pki.join("etcd/peer.key"))),
        ("peer-trusted-ca-file", p(&pki.join("etcd/ca.crt"))),
        ("peer-client-cert-auth", "true".into()),
        ("snapshot-count", "10000".into()),
        ("listen-metrics-urls", format!("http://127.0.0.1:{}", ports.etcd_metrics)),
        ("feature-gates", "InitialCorruptCheck=true".into()),
        ("watch-progress-notify-interval", "5s".into()),
    ])
}

/// kubeadm's kube-apiserver, bound to 127.0.0.1 and advertising 10.0.2.2. The endpoint
/// reconciler (the default, `lease`) then publishes 10.0.2.2:PORT as the `kubernetes`
/// Service's endpoint, which is exactly how pods in a guest reach this API server.
pub fn apiserver_args(l: &Layout, ports: &Ports) -> Vec<String> {
    let pki = l.pki();
    flags(&[
        ("advertise-address", GUEST_HOST.into()),
        ("bind-address", "127.0.0.1".into()),
        ("secure-port", ports.api.to_string()),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("service-cluster-ip-range", "10.96.0.0/12".into()),
        ("service-account-key-file", p(&pki.join("sa.pub"))),
        ("service-account-signing-key-file", p(&pki.join("sa.key"))),
        ("service-account-issuer", "https://kubernetes.default.svc.cluster.local".into()),
        ("client-ca-file", p(&pki.join("ca.crt"))),
        ("tls-cert-file", p(&pki.join("apiserver.crt"))),
        ("tls-private-key-file", p(&pki.join("apiserver.key"))),
        ("kubelet-client-certificate", p(&pki.join("apiserver-kubelet-client.crt"))),
        ("kubelet-client-key", p(&pki.join("apiserver-kubelet-client.key"))),
        ("enable-bootstrap-token-auth", "true".into()),
        ("allow-privileged", "true".into()),
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
        ("requestheader-client-ca-file", p(&pki.join("front-proxy-ca.crt"))),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        ("proxy-client-cert-file", p(&pki.join("front-proxy-client.crt"))),
        ("proxy-client-key-file", p(&pki.join("front-proxy-client.key"))),
        ("etcd-servers", format!("https://127.0.0.1:{}", ports.etcd_client)),
        ("etcd-cafile", p(&pki.join("etcd/ca.crt"))),
        ("etcd-certfile", p(&pki.join("apiserver-etcd-client.crt"))),
        ("etcd-keyfile", p(&pki.join("apiserver-etcd-client.key"))),
        ("authorization-mode", "Node,RBAC".into()),
    ])
}

/// kubeadm's kube-controller-manager: every default controller plus the bootstrap signer
/// (signs `cluster-info`) and the token cleaner; csrapproving and csrsigning (with kubeadm's
/// CA) complete a kubelet's TLS bootstrap. `--flex-volume-plugin-dir` keeps it from creating
/// /usr/libexec/kubernetes on the host.
pub fn controller_manager_args(l: &Layout, ports: &Ports) -> Vec<String> {
    let pki = l.pki();
    let kubeconfig = p(&l.host_kubeconfig("controller-manager"));
    flags(&[
        ("bind-address", "127.0.0.1".into()),
        ("secure-port", ports.controller_manager.to_string()),
        ("leader-elect", "true".into()),
        ("kubeconfig", kubeconfig.clone()),
        ("authentication-kubeconfig", kubeconfig.clone()),
        ("authorization-kubeconfig", kubeconfig),
        ("client-ca-file", p(&pki.join("ca.crt"))),
        ("requestheader-client-ca-file", p(&pki.join("front-proxy-ca.crt"))),
        ("root-ca-file", p(&pki.join("ca.crt"))),
        ("service-account-private-key-file", p(&pki.join("sa.key"))),
        ("cluster-signing-cert-file", p(&pki.join("ca.crt"))),
        ("cluster-signing-key-file", p(&pki.join("ca.key"))),
        ("use-service-account-credentials", "true".into()),
        ("controllers", "*,bootstrapsigner,tokencleaner".into()),
        ("cluster-name", "kubernetes".into()),
        ("flex-volume-plugin-dir", p(&l.kcm_dir().join("volume-plugins"))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_is_on_loopback() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let l = Layout::create(&tmp.path().join("cp")).expect("layout");
        let ports = Ports::pick().expect("ports");
        let mut all = [ports.api, ports.etcd_client, ports.etcd_peer, ports.etcd_metrics, ports.controller_manager];
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[0] != w[1]), "distinct ports: {all:?}");
        let args = [etcd_args(&l, &ports), apiserver_args(&l, &ports), controller_manager_args(&l, &ports)].concat();
        let mut listeners = 0;
        for a in &args {
            let (k, v) = a.split_once('=').expect("--key=value");
            if k.contains("listen") || k == "--bind-address" {
                listeners += 1;
                for url in v.split(',') {
                    let host = url.split("://").last().unwrap_or(url);
                    assert!(host.starts_with("127.0.0.1"), "{a}");
                }
            }
            assert!(!v.contains("0.0.0.0") && !v.contains("/etc/kubernetes") && !v.contains("/var/lib"), "{a}");
        }
        assert_eq!(listeners, 5, "etcd client, peer, metrics; API server; controller-manager");
        let api = apiserver_args(&l, &ports);
        assert!(api.contains(&"--advertise-address=10.0.2.2".to_owned()));
        assert!(api.contains(&format!("--secure-port={}", ports.api)));
        let kcm = controller_manager_args(&l, &ports);
        assert!(kcm.contains(&"--controllers=*,bootstrapsigner,tokencleaner".to_owned()));
    }
}
