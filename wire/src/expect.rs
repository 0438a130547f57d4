//! What the harness expects of the node: the JSON file (`expect.json`) the harness writes
//! and whose path is the agent's argv[1].
//!
//! ```json
//! {
//!   "cri_endpoint_default": "unix:///run/containerd/containerd.sock",
//!   "sandbox_image": "registry.k8s.io/pause:3.9",
//!   "images": ["registry.k8s.io/pause:3.9", "nodeforge.test/busybox:1"],
//!   "cni_subnet": "10.88.0.0/16",
//!   "cgroup_driver": "systemd",
//!   "cri_api": "v1",
//!   "containerd_version": "1.6.20",
//!   "stage_timeouts_s": {"boot": 300, "cloud-init": 600, "containerd": 300, "cri": 120, "pod": 300, "kubelet-config": 60}
//! }
//! ```
//!
//! Unknown keys are rejected, so a typo in the harness fails loudly instead of silently
//! checking less. `stage_timeouts_s` and each of its keys may be left out (defaults below);
//! `test_image` is optional too.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::protocol::Stage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The CRI endpoint to use only when kubelet.service has no drop-in that names one
    /// (`unix:///path` or a bare path).
    pub cri_endpoint_default: String,
    /// The sandbox ("pause") image containerd is configured with; must be present and pinned.
    pub sandbox_image: String,
    /// Every image that must be in containerd's `k8s.io` namespace (CRI `ListImages`).
    pub images: Vec<String>,
    /// The pod network: the probe pod's IP must fall inside it.
    pub cni_subnet: IpNet,
    /// The cgroup driver the kubelet and containerd must both use.
    pub cgroup_driver: CgroupDriver,
    /// The CRI API version the runtime must serve.
    pub cri_api: CriApi,
    /// containerd's version as built into the node, e.g. `1.6.20`; CRI reports it as
    /// `runtime_version` (`v1.7.13`, or Debian's `1.6.20~ds1`). Empty: not checked.
    pub containerd_version: String,
    #[serde(default)]
    pub stage_timeouts_s: StageTimeouts,
    /// The image the probe container runs; it needs `/bin/sh`.
    #[serde(default = "default_test_image")]
    pub test_image: String,
    /// Where the seed's `kubeadm join` writes its output (absent without a join): when
    /// cloud-init fails, the stage quotes kubeadm's own error from it.
    #[serde(default)]
    pub join_log: Option<std::path::PathBuf>,
    /// The harness checks the join itself after the agent's stages (`--kubeconfig`).
    #[serde(default)]
    pub join_stage_follows: bool,
    /// The node's image carries containerd (the seed does not unpack the overlay): run the
    /// stages in [`Stage::RUNTIME_FIRST`] order, and hold cloud-init's final stage (the
    /// seed's join) until the pod stage is over (see the agent's `notify`).
    #[serde(default)]
    pub runtime_first: bool,
}

/// The probe container's image when the expectations name none.
pub const DEFAULT_TEST_IMAGE: &str = "nodeforge.test/busybox:1";

fn default_test_image() -> String {
    DEFAULT_TEST_IMAGE.to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

impl CgroupDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "systemd" => Some(CgroupDriver::Systemd),
            "cgroupfs" => Some(CgroupDriver::Cgroupfs),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CriApi {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v1alpha2")]
    V1alpha2,
}

impl CriApi {
    /// As CRI's `runtime_api_version` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CriApi::V1 => "v1",
            CriApi::V1alpha2 => "v1alpha2",
        }
    }

    pub fn other(self) -> Self {
        match self {
            CriApi::V1 => CriApi::V1alpha2,
            CriApi::V1alpha2 => CriApi::V1,
        }
    }
}

/// Per-stage time limits in seconds. The defaults fit a TCG guest with cloud-init
/// (vm-facts: cloud-init done at ~39 s guest uptime, the first pod ~7 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageTimeouts {
    pub boot: u64,
    #[serde(rename = "cloud-init")]
    pub cloud_init: u64,
    pub containerd: u64,
    pub cri: u64,
    pub pod: u64,
    #[serde(rename = "kubelet-config")]
    pub kubelet_config: u64,
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts { boot: 300, cloud_init: 600, containerd: 300, cri: 120, pod: 300, kubelet_config: 60 }
    }
}

impl StageTimeouts {
    pub fn get(&self, stage: Stage) -> Duration {
        Duration::from_secs(self.seconds(stage))
    }

    /// The limit of `stage` in whole seconds (0 for `done`, which has none).
    pub fn seconds(&self, stage: Stage) -> u64 {
        match stage {
            Stage::Boot => self.boot,
            Stage::CloudInit => self.cloud_init,
            Stage::Containerd => self.containerd,
            Stage::Cri => self.cri,
            Stage::Pod => self.pod,
            Stage::KubeletConfig => self.kubelet_config,
            Stage::Done => 0,
        }
    }

    /// Set the limit of `stage`; `done` has none and is left alone.
    pub fn set(&mut self, stage: Stage, seconds: u64) {
        let slot = match stage {
            Stage::Boot => &mut self.boot,
            Stage::CloudInit => &mut self.cloud_init,
            Stage::Containerd => &mut self.containerd,
            Stage::Cri => &mut self.cri,
            Stage::Pod => &mut self.pod,
            Stage::KubeletConfig => &mut self.kubelet_config,
            Stage::Done => return,
        };
        *slot = seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "cri_endpoint_default": "unix:///run/containerd/containerd.sock",
      "sandbox_image": "registry.k8s.io/pause:3.9",
      "images": ["registry.k8s.io/pause:3.9", "nodeforge.test/busybox:1"],
      "cni_subnet": "10.88.0.0/16",
      "cgroup_driver": "systemd",
      "cri_api": "v1",
      "containerd_version": "1.6.20",
      "stage_timeouts_s": {"boot": 30, "cloud-init": 60}
    }"#;

    #[test]
    fn parses_with_defaults_and_round_trips() {
        let e: Expect = serde_json::from_str(FULL).unwrap();
        assert_eq!(e.cri_api, CriApi::V1);
        assert_eq!(e.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(e.stage_timeouts_s.get(Stage::Boot), Duration::from_secs(30));
        assert_eq!(e.stage_timeouts_s.get(Stage::Pod), Duration::from_secs(300));
        assert_eq!(e.test_image, "nodeforge.test/busybox:1");
        let back: Expect = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let typo = FULL.replace("\"cni_subnet\"", "\"cni_subet\"");
        assert!(serde_json::from_str::<Expect>(&typo).unwrap_err().to_string().contains("cni_subet"));
        let api = FULL.replace("\"v1\"", "\"v2\"");
        assert!(serde_json::from_str::<Expect>(&api).is_err());
        let stage = FULL.replace("\"boot\": 30", "\"bot\": 30");
        assert!(serde_json::from_str::<Expect>(&stage).is_err());
    }
}
