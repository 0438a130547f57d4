//! Version tables: what each containerd and Kubernetes line accepts and expects.
//!
//! Every rule that depends on a version lives here, with its source in runtime-facts, so the
//! renderers and `check` agree and the supported-matrix docs can be generated from one place.

use crate::imageref::ImageRef;
use crate::version::Version;

/// The CRI API a containerd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriApi {
    /// `runtime.v1alpha2` only: containerd 1.4 and 1.5.
    V1alpha2,
    /// `runtime.v1` (and v1alpha2 alongside until 2.0): containerd 1.6+.
    V1,
}

impl CriApi {
    pub fn as_str(self) -> &'static str {
        match self {
            CriApi::V1alpha2 => "v1alpha2",
            CriApi::V1 => "v1",
        }
    }
}

/// runtime-facts §4.1: CRI v1 arrived in containerd 1.6.0.
pub fn containerd_cri_api(containerd: &Version) -> CriApi {
    if containerd.at_least(1, 6, 0) { CriApi::V1 } else { CriApi::V1alpha2 }
}

/// runtime-facts §4.1: the kubelet speaks only CRI v1 from 1.26.
pub fn kubelet_requires_cri_v1(kubernetes: &Version) -> bool {
    kubernetes.at_least(1, 26, 0)
}

/// The pause version kubeadm of a Kubernetes minor pulls (runtime-facts §4.3).
pub fn kubeadm_pause_version(kubernetes: &Version) -> &'static str {
    match kubernetes.minor_line() {
        (1, 0..=17) => "3.1",
        (1, 18..=20) => "3.2",
        (1, 21) => "3.4.1",
        (1, 22) => "3.5",
        (1, 23) => "3.6",
        (1, 24) => "3.7",
        (1, 25) => "3.8",
        (1, 26..=30) => "3.9",
        (1, 31..=33) => "3.10",
        (1, 34..=35) => "3.10.1",
        _ => "3.10.2",
    }
}

/// The sandbox image a node should pin when the profile does not name one. Always on
/// `registry.k8s.io`: `k8s.gcr.io` is frozen (runtime-facts §4.3) and the new registry
/// serves every old pause tag.
pub fn default_sandbox_image(kubernetes: &Version) -> ImageRef {
    format!("registry.k8s.io/pause:{}", kubeadm_pause_version(kubernetes))
        .parse()
        .expect("the pause table holds valid references")
}

/// `cniVersion` of the bundle's bridge conflist for a containerd line (runtime-facts §2.2);
/// the CNI plugins that ship with that line understand it.
pub fn cni_conf_version(containerd: &Version) -> &'static str {
    if containerd.at_least(1, 6, 0) {
        "1.0.0"
    } else if containerd.at_least(1, 4, 1) {
        "0.4.0"
    } else {
        "0.3.1"
    }
}

/// containerd reads `[registry] config_path` (per-host `certs.d/<host>/hosts.toml`) from 1.5;
/// 1.4 knows only the deprecated `mirrors`/`configs` tables (runtime-facts §3.3).
pub fn registry_config_path(containerd: &Version) -> bool {
    containerd.at_least(1, 5, 0)
}

/// How the kubelet of a version is told about its runtime (runtime-facts §4.1, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletSupport {
    /// `--container-runtime=remote` is needed (< 1.24 defaults to docker) and accepted (< 1.27).
    pub container_runtime_flag: bool,
    /// `--pod-infra-container-image` is accepted (removed in 1.35).
    pub pod_infra_flag: bool,
    /// `containerRuntimeEndpoint` is read from KubeletConfiguration (1.27+; 1.26 ignores it).
    pub endpoint_in_config: bool,
    /// `--config-dir` drop-in directory of KubeletConfiguration fragments: beta and on by
    /// default from 1.30.
    pub config_dir: bool,
}

pub fn kubelet_support(kubernetes: &Version) -> KubeletSupport {
    KubeletSupport {
        container_runtime_flag: !kubernetes.at_least(1, 27, 0),
        pod_infra_flag: !kubernetes.at_least(1, 35, 0),
        endpoint_in_config: kubernetes.at_least(1, 27, 0),
        config_dir: kubernetes.at_least(1, 30, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn tables_follow_runtime_facts() {
        assert_eq!(containerd_cri_api(&v("1.5.18")), CriApi::V1alpha2);
        assert_eq!(containerd_cri_api(&v("1.6.0")), CriApi::V1);
        assert_eq!(default_sandbox_image(&v("1.14.10")).to_string(), "registry.k8s.io/pause:3.1");
        assert_eq!(default_sandbox_image(&v("1.30.2")).to_string(), "registry.k8s.io/pause:3.9");
        assert_eq!(default_sandbox_image(&v("1.36.0")).to_string(), "registry.k8s.io/pause:3.10.2");
        assert_eq!(cni_conf_version(&v("1.4.0")), "0.3.1");
        assert_eq!(cni_conf_version(&v("1.4.4")), "0.4.0");
        let k = kubelet_support(&v("1.27.0"));
        assert!(!k.container_runtime_flag && k.endpoint_in_config && k.pod_infra_flag);
        assert!(!kubelet_support(&v("1.35.0")).pod_infra_flag);
    }
}
