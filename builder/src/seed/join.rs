//! `kubeadm join` from the seed: a JoinConfiguration written by cloud-init (`write_files`,
//! 0600) and the inputs it is made of, each validated before anything is written.
//!
//! The API version follows the profile's Kubernetes version: `kubeadm.k8s.io/v1beta3` was
//! added in 1.22 (kubernetes#101129) and `v1beta4` enabled in 1.31 (kubernetes#125029, which
//! deprecates v1beta3 "until 1.34 or later"), so 1.22–1.30 get v1beta3 and 1.31 on v1beta4.
//! Older releases only read v1beta2 (1.15–1.26), which nodeforge does not write.
//!
//! The bootstrap token is a [`Secret`]: it is read from a file, never taken as an argument,
//! and its `Debug`/`Display` print a placeholder, so no log line, error or report can carry it.
//! Only serialising it (into the JoinConfiguration) yields the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::version::Version;

/// Where the JoinConfiguration lands on the node; removed after `kubeadm join` ran.
pub const JOIN_CONFIG_PATH: &str = "/etc/kubernetes/nodeforge/join.yaml";
/// Where a reprovisioned machine's bootcmd moves the old kubelet's kubeconfig.
pub const OLD_KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf.replaced";
/// How often a join refused because the old Node is still Ready is tried (10 s apart).
pub const READY_NODE_RETRIES: u32 = 18;
/// Where the join's runcmd line keeps kubeadm's output.
pub const JOIN_LOG_PATH: &str = "/var/log/nodeforge/kubeadm-join.log";
/// The CRI socket kubeadm is told about: the one every rendered file names.
pub use crate::render::CONTAINERD_SOCKET as CRI_SOCKET;
/// The directory kubeadm reads kubelet-configuration patches from; nodeforge renders them.
pub use crate::render::kubelet::PATCHES_DIR;

/// A value that must never be printed. Serialises to the value itself (that is its one
/// legitimate use); formats as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Read a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, as `kubeadm token create` prints it)
/// from `path`. Surrounding whitespace is ignored; errors never quote the file's content.
/// A token file holds one 23-character token; anything much larger is not one.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

pub fn read_token(path: &Path) -> Result<Secret> {
    let bytes = crate::io::read_small_file(path, MAX_TOKEN_FILE_BYTES)
        .with_context(|| format!("--token-file {}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes).unwrap_or_default();
    let token = text.trim();
    let ok = token.len() == 23
        && token.split_once('.').is_some_and(|(id, secret)| {
            id.len() == 6
                && secret.len() == 16
                && id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if !ok {
        bail!(
            "--token-file {}: the file does not hold one bootstrap token of the form [a-z0-9]{{6}}.[a-z0-9]{{16}} \
             (make one on a control-plane node with `kubeadm token create`)",
            path.display()
        );
    }
    Ok(Secret(token.to_owned()))
}

// The flag values a join is made of, parsed where the command line is.
pub use super::flags::{
    Effect, Label, Taint, parse_ca_cert_hash, parse_discovery_timeout, parse_endpoint, parse_label, parse_taint,
};
// One rule for `--node` and the profile's `name` and `seed.hostname`.
pub use crate::ident::{is_dns_name, parse_node_name};

/// The kubeadm configuration API a Kubernetes release reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeadmApi {
    V1beta3,
    V1beta4,
}

impl KubeadmApi {
    pub fn for_version(v: &Version) -> Result<Self> {
        if v.major != 1 || !v.at_least(1, 22, 0) {
            bail!(
                "Kubernetes {v}: nodeforge writes kubeadm's JoinConfiguration as kubeadm.k8s.io/v1beta3 \
                 (kubeadm 1.22–1.30) or v1beta4 (1.31 on); this release reads neither. Use a profile with \
                 Kubernetes 1.22 or later, or leave out --join-endpoint and join by hand"
            );
        }
        Ok(if v.at_least(1, 31, 0) { Self::V1beta4 } else { Self::V1beta3 })
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::V1beta3 => "kubeadm.k8s.io/v1beta3",
            Self::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

/// Everything a join needs.
#[derive(Debug, Clone)]
pub struct Join {
    pub node: String,
    pub endpoint: String,
    pub token: Secret,
    pub ca_cert_hashes: Vec<String>,
    pub labels: Vec<Label>,
    pub taints: Vec<Taint>,
    /// kubeadm's discovery timeout (a Go duration); `None` keeps kubeadm's 5m.
    pub discovery_timeout: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    node_registration: NodeRegistration<'a>,
    discovery: Discovery<'a>,
    patches: Patches,
    /// v1beta4 moved the discovery timeout here (`timeouts.discovery`).
    #[serde(skip_serializing_if = "Option::is_none")]
    timeouts: Option<Timeouts<'a>>,
}

#[derive(Serialize)]
struct Timeouts<'a> {
    discovery: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration<'a> {
    name: &'a str,
    cri_socket: &'static str,
    /// Always written: kubeadm reads a missing list as "default taints" (which only matter to
    /// control-plane nodes, but an explicit list says what is meant).
    taints: &'a [Taint],
    #[serde(skip_serializing_if = "KubeletExtraArgs::is_empty")]
    kubelet_extra_args: KubeletExtraArgs,
}

/// v1beta3 has a string map; v1beta4 a list of `{name, value}` (duplicates allowed).
#[derive(Serialize)]
#[serde(untagged)]
enum KubeletExtraArgs {
    Map(BTreeMap<&'static str, String>),
    List(Vec<Arg>),
}

impl KubeletExtraArgs {
    fn is_empty(&self) -> bool {
        match self {
            Self::Map(m) => m.is_empty(),
            Self::List(l) => l.is_empty(),
        }
    }
}

#[derive(Serialize)]
struct Arg {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery<'a> {
    bootstrap_token: BootstrapTokenDiscovery<'a>,
    /// v1beta3's place for the discovery timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapTokenDiscovery<'a> {
    api_server_endpoint: &'a str,
    token: &'a Secret,
    ca_cert_hashes: &'a [String],
}

#[derive(Serialize)]
struct Patches {
    directory: &'static str,
}

impl Join {
    /// The JoinConfiguration document. It holds the token: write it only into 0600 files.
    pub fn render(&self, api: KubeadmApi) -> Result<String> {
        let mut args = Vec::new();
        if !self.labels.is_empty() {
            let labels: Vec<String> = self.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect();
            args.push(("node-labels", labels.join(",")));
        }
        let kubelet_extra_args = match api {
            KubeadmApi::V1beta3 => KubeletExtraArgs::Map(args.into_iter().collect()),
            KubeadmApi::V1beta4 => {
                KubeletExtraArgs::List(args.into_iter().map(|(name, value)| Arg { name, value }).collect())
            }
        };
        let timeout = self.discovery_timeout.as_deref();
        let doc = JoinConfiguration {
            api_version: api.api_version(),
            kind: "JoinConfiguration",
            node_registration: NodeRegistration {
                name: &self.node,
                cri_socket: CRI_SOCKET,
                taints: &self.taints,
                kubelet_extra_args,
            },
            discovery: Discovery {
                bootstrap_token: BootstrapTokenDiscovery {
                    api_server_endpoint: &self.endpoint,
                    token: &self.token,
                    ca_cert_hashes: &self.ca_cert_hashes,
                },
                timeout: timeout.filter(|_| api == KubeadmApi::V1beta3),
            },
            patches: Patches { directory: PATCHES_DIR },
            timeouts: timeout.filter(|_| api == KubeadmApi::V1beta4).map(|discovery| Timeouts { discovery }),
        };
        // The error cannot quote the token: serde-saphyr reports only what failed to serialise.
        serde_saphyr::to_string(&doc).context("serialising the JoinConfiguration")
    }

    /// The runcmd line: join, then remove the configuration (and with it the token) whether
    /// or not the join worked; a bootstrap token is short-lived, and a retry needs a new seed
    /// (a new instance-id) anyway. Exits with kubeadm's status so cloud-init reports a failure.
    /// kubeadm's output (which never carries the token) also goes to [`JOIN_LOG_PATH`], where
    /// an operator, or a test harness, finds kubeadm's own words about a failed join.
    ///
    /// A machine reprovisioned on a disk that was a node before (a new instance-id on the same
    /// disk) still holds the old kubelet's state: kubeadm wants `kubeadm reset` before it joins
    /// again, so the line resets first when the old kubelet's config is there. And kubeadm
    /// refuses to join while a Node of the same name is still Ready (the old machine's status
    /// lingers for the controller manager's grace period, 40–50 s): that one refusal is
    /// retried, after a reset, every 10 s for up to [`READY_NODE_RETRIES`] tries.
    pub fn command() -> String {
        let log_dir = JOIN_LOG_PATH.rsplit_once('/').map_or("/var/log", |(d, _)| d);
        let reset = format!("kubeadm reset --force --cri-socket {CRI_SOCKET} >>{JOIN_LOG_PATH} 2>&1");
        format!(
            "mkdir -p {PATCHES_DIR} {log_dir}; : >{JOIN_LOG_PATH}; \
             if [ -e /var/lib/kubelet/config.yaml ] || [ -e {OLD_KUBELET_CONF} ]; then {reset}; fi; \
             n=0; while :; do rc=0; kubeadm join --config {JOIN_CONFIG_PATH} >>{JOIN_LOG_PATH} 2>&1 || rc=$?; \
             n=$((n+1)); if [ $rc -ne 0 ] && [ $n -lt {READY_NODE_RETRIES} ] && \
             tail -n 5 {JOIN_LOG_PATH} | grep -q 'already exists in the cluster'; then {reset}; sleep 10; \
             else break; fi; done; cat {JOIN_LOG_PATH}; rm -f {JOIN_CONFIG_PATH}; exit $rc"
        )
    }

    /// The bootcmd entry for a seed that joins: on a disk that was a node before, the old
    /// kubelet must not come up with its old identity and keep the old Node Ready (kubeadm
    /// would then refuse to join under that name). Once per instance, before the kubelet can
    /// start (cloud-init's network stage runs before network-online.target, which the kubelet
    /// waits for), its kubeconfig is moved aside; the join's `kubeadm reset` clears the rest.
    pub fn bootcmd() -> String {
        format!(
            "cloud-init-per instance nodeforge-old-kubelet-identity sh -c \
             '[ ! -e /etc/kubernetes/kubelet.conf ] || mv -f /etc/kubernetes/kubelet.conf {OLD_KUBELET_CONF}'"
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn api_version_follows_the_kubernetes_version() {
        assert!(KubeadmApi::for_version(&v("1.21.14")).unwrap_err().to_string().contains("1.22 or later"));
        assert_eq!(KubeadmApi::for_version(&v("1.22.0")).unwrap(), KubeadmApi::V1beta3);
        assert_eq!(KubeadmApi::for_version(&v("1.30.14")).unwrap(), KubeadmApi::V1beta3);
        assert_eq!(KubeadmApi::for_version(&v("1.31.0-rc.1")).unwrap(), KubeadmApi::V1beta3);
        assert_eq!(KubeadmApi::for_version(&v("1.31.0")).unwrap(), KubeadmApi::V1beta4);
        assert_eq!(KubeadmApi::for_version(&v("1.35.2")).unwrap(), KubeadmApi::V1beta4);
        assert!(KubeadmApi::for_version(&v("2.0.0")).is_err());
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "abcdef.0123456789abcdef\n").unwrap();
        let t = read_token(&f).unwrap();
        assert_eq!(t.expose(), "abcdef.0123456789abcdef");
        assert_eq!(format!("{t} {t:?}"), "<redacted> Secret(<redacted>)");
        for bad in [
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef0123456789abcdef",
            "",
            "abcdef.0123456789abcdeg x",
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = format!("{:#}", read_token(&f).unwrap_err());
            assert!(e.contains("--token-file") && e.contains("[a-z0-9]{6}.[a-z0-9]{16}"), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "the error quotes the token: {e}");
        }
        let e = format!("{:#}", read_token(&dir.path().join("missing")).unwrap_err());
        assert!(e.contains("--token-file") && e.contains("missing"), "{e}");
    }

    #[test]
    fn inputs_are_validated() {
        assert_eq!(
            parse_ca_cert_hash(&format!("sha256:{}", "AB".repeat(32))).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(parse_ca_cert_hash(&"ab".repeat(32)).is_err());
        assert!(parse_ca_cert_hash(&format!("sha256:{}", "ab".repeat(31))).is_err());
        assert!(parse_ca_cert_hash(&format!("sha1:{}", "ab".repeat(32))).is_err());

        for ok in ["10.0.0.10:6443", "cp.example.com:443", "[fd00::1]:6443", "localhost:1"] {
            assert_eq!(parse_endpoint(ok).unwrap(), ok);
        }
        for bad in [
            "10.0.0.10",
            "10.0.0.10:0",
            "10.0.0.10:70000",
            "fd00::1:6443",
            "[zz]:6443",
            "bad_host:6443",
            ":6443",
            "h:+1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }

        assert_eq!(
            parse_label("example.com/tier=web").unwrap(),
            Label { key: "example.com/tier".into(), value: "web".into() }
        );
        assert_eq!(parse_label("empty=").unwrap().value, "");
        assert!(parse_label("node.kubernetes.io/pool=a").is_ok());
        assert!(parse_label("topology.kubernetes.io/zone=z1").is_ok());
        let e = parse_label("node-role.kubernetes.io/worker=").unwrap_err();
        assert!(e.contains("kubectl label node"), "{e}");
        for bad in ["noequals", "=v", "a=-v", "Bad_Prefix/k=v", &format!("k={}", "v".repeat(64))] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }

        assert_eq!(
            parse_taint("dedicated=gpu:NoSchedule").unwrap(),
            Taint { key: "dedicated".into(), value: Some("gpu".into()), effect: Effect::NoSchedule }
        );
        assert_eq!(parse_taint("example.com/drain:NoExecute").unwrap().value, None);
        assert!(parse_taint("k=v:PreferNoSchedule").is_ok());
        let e = parse_taint("k=v:NoRun").unwrap_err();
        assert!(e.contains("NoSchedule, PreferNoSchedule, NoExecute"), "{e}");
        assert!(parse_taint("k=v").is_err());
        assert!(parse_taint("k=:NoSchedule").is_err());

        assert!(parse_node_name("worker-3.lab").is_ok());
        for bad in ["Worker", "-a", "a_b", "", &"a".repeat(64)] {
            assert!(parse_node_name(bad).is_err(), "{bad}");
        }
    }
}
