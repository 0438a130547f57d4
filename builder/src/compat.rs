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

/// Where containerd's own release matrix (RELEASES.md "Kubernetes Support", runtime-facts §4.1)
/// stops recommending a containerd line for a Kubernetes minor: 1.6 before 1.6.15 for 1.26+,
/// and 1.6 altogether for 1.35+. `None` when the pairing is within it or the table is silent.
pub fn outside_release_matrix(containerd: &Version, kubernetes: &Version) -> Option<&'static str> {
    if containerd.minor_line() != (1, 6) {
        None
    } else if kubernetes.at_least(1, 35, 0) {
        Some("containerd's release matrix drops the 1.6 line for Kubernetes 1.35")
    } else if kubernetes.at_least(1, 26, 0) && !containerd.at_least(1, 6, 15) {
        Some("containerd's release matrix recommends 1.6.15 or newer for Kubernetes 1.26+")
    } else {
        None
    }
}

/// containerd 1.6 and 1.7 serve `runtime.v1alpha2` beside v1; 2.0 removed it (containerd
/// RELEASES.md, note under the deprecated-versions table).
pub fn containerd_serves_v1alpha2(containerd: &Version) -> bool {
    containerd.major < 2
}

/// The containerd config schema nodeforge writes for a containerd line unless the profile
/// overrides it: v2 for 1.x (v1 would ignore fully qualified plugin IDs), v3 for 2.x, whose
/// CRI plugin IDs only exist in v3 (2.x migrates a v2 file in memory on every start)
/// (runtime-facts §3.1).
pub fn containerd_config_version(containerd: &Version) -> u8 {
    if containerd.major >= 2 { 3 } else { 2 }
}

/// What a containerd does with a `version = 3` config file (runtime-facts §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3Config {
    /// 2.x: its native schema.
    Native,
    /// 1.x before the version check (< 1.6.32, < 1.7.17, all 1.4/1.5): the file loads, the
    /// `io.containerd.cri.v1.*` sections match no plugin and CRI runs on built-in defaults.
    SilentlyIgnored,
    /// 1.6.32+ / 1.7.17+: the daemon exits with ``unsupported config version `3` ``.
    Refused,
}

pub fn containerd_v3_config(containerd: &Version) -> V3Config {
    match containerd.minor_line() {
        (m, _) if m >= 2 => V3Config::Native,
        (1, 6) if containerd.at_least(1, 6, 32) => V3Config::Refused,
        (1, 7) if containerd.at_least(1, 7, 17) => V3Config::Refused,
        (1, m) if m > 7 => V3Config::Refused,
        _ => V3Config::SilentlyIgnored,
    }
}

/// The plugin IDs that make up CRI, listed in `required_plugins` so that a CRI section that
/// fails to load stops containerd instead of leaving it running without CRI (runtime-facts
/// §3.4). They name plugins of the binary, so they follow the containerd line, not the schema.
pub fn containerd_cri_plugin_ids(containerd: &Version) -> &'static [&'static str] {
    if containerd.major >= 2 {
        &["io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]
    } else {
        &["io.containerd.grpc.v1.cri"]
    }
}

/// The CRI CNI key for the plugin directory in schema v3: `bin_dirs = [...]` from 2.1
/// (`bin_dir` is deprecated there, removal target 2.4), `bin_dir` in 2.0 and in schema v2
/// (runtime-facts §3.2).
pub fn cni_bin_dirs_list(containerd: &Version) -> bool {
    containerd.at_least(2, 1, 0)
}

/// The sandbox image compiled into containerd, used when the config names none (runtime-facts
/// §3.2). nodeforge always writes one; this is for the docs and for explaining mismatches.
pub fn containerd_default_pause(containerd: &Version) -> &'static str {
    match containerd.minor_line() {
        (1, 4) => "k8s.gcr.io/pause:3.2",
        (1, 5) if containerd.at_least(1, 5, 14) => "registry.k8s.io/pause:3.5",
        (1, 5) => "k8s.gcr.io/pause:3.5",
        (1, 6) if containerd.at_least(1, 6, 9) => "registry.k8s.io/pause:3.6",
        (1, 6) => "k8s.gcr.io/pause:3.6",
        (1, 7) => "registry.k8s.io/pause:3.8",
        (2, 0 | 1) => "registry.k8s.io/pause:3.10",
        (2, 2) => "registry.k8s.io/pause:3.10.1",
        (2, 3) => "registry.k8s.io/pause:3.10.2",
        _ => "unknown",
    }
}

/// The cri-containerd-cni bundle was published for 1.4–1.7 and not built for 2.0+
/// (runtime-facts §1.1, §1.4).
pub fn containerd_bundle_published(containerd: &Version) -> bool {
    containerd.at_least(1, 4, 0) && containerd.major < 2
}

/// Where the kubelet of a version takes its runtime settings (endpoint, cgroup driver,
/// request timeout) from nodeforge's files (runtime-facts §4.1, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletRuntimeConfig {
    /// < 1.27: command-line flags in the drop-in only.
    Flags,
    /// 1.27–1.29: a kubeadm `kubeletconfiguration` patch applied at join, plus the still
    /// accepted (deprecated) flags for kubelets not joined by kubeadm.
    PatchAndFlags,
    /// ≥ 1.30: a fragment in the `--config-dir` directory, plus the kubeadm patch.
    ConfigDirAndPatch,
}

impl KubeletRuntimeConfig {
    pub fn describe(self) -> &'static str {
        match self {
            KubeletRuntimeConfig::Flags => "flags",
            KubeletRuntimeConfig::PatchAndFlags => "kubeadm patch + flags",
            KubeletRuntimeConfig::ConfigDirAndPatch => "config-dir fragment + kubeadm patch",
        }
    }
}

pub fn kubelet_runtime_config(kubernetes: &Version) -> KubeletRuntimeConfig {
    let s = kubelet_support(kubernetes);
    if s.config_dir {
        KubeletRuntimeConfig::ConfigDirAndPatch
    } else if s.endpoint_in_config {
        KubeletRuntimeConfig::PatchAndFlags
    } else {
        KubeletRuntimeConfig::Flags
    }
}

/// Kubelet flags nodeforge would otherwise use that a Kubernetes version no longer accepts
/// (runtime-facts §4.1): passing one makes the kubelet exit.
pub fn kubelet_removed_flags(kubernetes: &Version) -> Vec<&'static str> {
    let s = kubelet_support(kubernetes);
    let mut out = Vec::new();
    if !s.container_runtime_flag {
        out.push("--container-runtime");
    }
    if !s.pod_infra_flag {
        out.push("--pod-infra-container-image");
    }
    out
}

/// What the kubelet of a version does on a cgroup v1 host (runtime-facts §4.1): from 1.35
/// `failCgroupV1` defaults to true and it refuses to start; cgroup v1 support has been in
/// maintenance mode since 1.31 (KEP-4569).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupV1 {
    Supported,
    Maintenance,
    Refused,
}

pub fn kubelet_cgroup_v1(kubernetes: &Version) -> CgroupV1 {
    if kubernetes.at_least(1, 35, 0) {
        CgroupV1::Refused
    } else if kubernetes.at_least(1, 31, 0) {
        CgroupV1::Maintenance
    } else {
        CgroupV1::Supported
    }
}

/// The kubelet uses CRI v1 from 1.23 (containerd RELEASES.md: "v1 (1.23+), v1alpha2 (until
/// 1.25)"); older kubelets speak only v1alpha2, which containerd 2.0 no longer serves.
pub fn kubelet_speaks_cri_v1(kubernetes: &Version) -> bool {
    kubernetes.at_least(1, 23, 0)
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

    #[test]
    fn containerd_lines() {
        assert_eq!(containerd_config_version(&v("1.7.27")), 2);
        assert_eq!(containerd_config_version(&v("2.0.0")), 3);
        assert_eq!(containerd_v3_config(&v("1.6.31")), V3Config::SilentlyIgnored);
        assert_eq!(containerd_v3_config(&v("1.6.32")), V3Config::Refused);
        assert_eq!(containerd_v3_config(&v("1.7.16")), V3Config::SilentlyIgnored);
        assert_eq!(containerd_v3_config(&v("1.7.17")), V3Config::Refused);
        assert_eq!(containerd_v3_config(&v("1.5.18")), V3Config::SilentlyIgnored);
        assert_eq!(containerd_v3_config(&v("2.1.0")), V3Config::Native);
        assert!(!cni_bin_dirs_list(&v("2.0.7")) && cni_bin_dirs_list(&v("2.1.0")));
        assert_eq!(containerd_cri_plugin_ids(&v("1.7.0")), ["io.containerd.grpc.v1.cri"]);
        assert_eq!(containerd_cri_plugin_ids(&v("2.2.1")).len(), 3);
        assert_eq!(containerd_default_pause(&v("1.6.8")), "k8s.gcr.io/pause:3.6");
        assert_eq!(containerd_default_pause(&v("2.2.1")), "registry.k8s.io/pause:3.10.1");
        assert!(containerd_bundle_published(&v("1.7.27")) && !containerd_bundle_published(&v("2.0.0")));
        assert!(containerd_serves_v1alpha2(&v("1.7.0")) && !containerd_serves_v1alpha2(&v("2.0.0")));
        assert!(!kubelet_speaks_cri_v1(&v("1.22.17")) && kubelet_speaks_cri_v1(&v("1.23.0")));
    }

    #[test]
    fn kubelet_lines() {
        assert_eq!(kubelet_runtime_config(&v("1.26.9")), KubeletRuntimeConfig::Flags);
        assert_eq!(kubelet_runtime_config(&v("1.27.0")), KubeletRuntimeConfig::PatchAndFlags);
        assert_eq!(kubelet_runtime_config(&v("1.29.9")), KubeletRuntimeConfig::PatchAndFlags);
        assert_eq!(kubelet_runtime_config(&v("1.30.0")), KubeletRuntimeConfig::ConfigDirAndPatch);
        assert!(kubelet_removed_flags(&v("1.26.0")).is_empty());
        assert_eq!(kubelet_removed_flags(&v("1.27.0")), ["--container-runtime"]);
        assert_eq!(kubelet_removed_flags(&v("1.35.0")), ["--container-runtime", "--pod-infra-container-image"]);
        assert_eq!(kubelet_cgroup_v1(&v("1.30.0")), CgroupV1::Supported);
        assert_eq!(kubelet_cgroup_v1(&v("1.31.0")), CgroupV1::Maintenance);
        assert_eq!(kubelet_cgroup_v1(&v("1.35.0")), CgroupV1::Refused);
    }
}
