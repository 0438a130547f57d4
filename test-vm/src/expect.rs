//! What the node is expected to be, read from the `manifest.json` nodeforge wrote beside the
//! artifacts, through the nodeforge library so the harness and the builder cannot disagree
//! about defaults (the sandbox image, the CRI API of a containerd line).

use std::path::Path;

use anyhow::{Context, Result};
use nodeforge::profile::{self, Profile};
use nodeforge::{compat, render};

use nodeforge_wire::{CgroupDriver, CriApi, DEFAULT_TEST_IMAGE, Expect, StageTimeouts};

/// The agent's per-stage limits in seconds, sized for TCG on two cores (vm-facts: cloud-init
/// finishes ~40 s after boot, a first pod takes 3–7 s, containerd starts in under a second).
/// The generous ones are where the boot is waited for: `boot` (its host-side deadline also
/// counts the guest's time before the agent starts: 113–120 s measured under TCG on a quiet
/// machine when it also waited for cloud-final, more with another guest beside it), and
/// `cloud-init`, which in the runtime-first order waits for cloud-final and with it the
/// seed's `kubeadm join`.
pub fn default_stage_timeouts() -> StageTimeouts {
    StageTimeouts { boot: 360, cloud_init: 300, containerd: 90, cri: 60, pod: 120, kubelet_config: 30 }
}

/// Read the profile back out of a build's manifest (`profile.profile` holds it with its
/// defaults filled in).
pub fn profile_from_manifest(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let profile = value
        .pointer_mut("/profile/profile")
        .map(serde_json::Value::take)
        .with_context(|| format!("{} has no profile.profile: is it a nodeforge manifest.json?", path.display()))?;
    serde_json::from_value(profile).with_context(|| format!("reading the profile recorded in {}", path.display()))
}

pub fn expectations(profile: &Profile) -> Expect {
    let containerd = &profile.containerd.version;
    Expect {
        // The endpoint nodeforge renders into containerd, crictl and the kubelet drop-in.
        cri_endpoint_default: render::CONTAINERD_SOCKET.to_owned(),
        sandbox_image: render::sandbox_image(profile).to_string(),
        images: profile.images.iter().map(|i| i.reference.to_string()).collect(),
        cni_subnet: profile.node.cni_subnet.into(),
        cgroup_driver: match profile.node.cgroup_driver {
            profile::CgroupDriver::Systemd => CgroupDriver::Systemd,
            profile::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        },
        cri_api: match compat::containerd_cri_api(containerd) {
            compat::CriApi::V1 => CriApi::V1,
            compat::CriApi::V1alpha2 => CriApi::V1alpha2,
        },
        containerd_version: containerd.to_string(),
        stage_timeouts_s: default_stage_timeouts(),
        test_image: DEFAULT_TEST_IMAGE.to_owned(),
        join_log: Some(nodeforge::seed::join::JOIN_LOG_PATH.into()),
        join_stage_follows: false,
        runtime_first: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(node: &str) -> tempfile::NamedTempFile {
        let profile = format!(
            "name = \"t\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.6.20\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n{node}",
            "a".repeat(64)
        );
        let p = Profile::parse(&profile).unwrap();
        let doc = serde_json::json!({"nodeforge_version": "0.1.0", "profile": {"name": "t", "profile": p}});
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), serde_json::to_vec(&doc).unwrap()).unwrap();
        f
    }

    #[test]
    fn defaults_come_from_the_nodeforge_tables() {
        let f = manifest("");
        let e = expectations(&profile_from_manifest(f.path()).unwrap());
        assert_eq!(e.sandbox_image, "registry.k8s.io/pause:3.9");
        assert_eq!(e.cri_api, CriApi::V1);
        assert_eq!(e.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(e.cni_subnet.to_string(), "10.88.0.0/16");
        assert_eq!(e.containerd_version, "1.6.20");
        assert_eq!(e.stage_timeouts_s.pod, 120);
    }

    #[test]
    fn profile_values_win() {
        let f = manifest(
            "[node]\ncgroup_driver = \"cgroupfs\"\ncni_subnet = \"10.99.0.0/16\"\nsandbox_image = \"example.com/p:1\"\n",
        );
        let e = expectations(&profile_from_manifest(f.path()).unwrap());
        assert_eq!((e.cgroup_driver, e.cni_subnet.to_string().as_str()), (CgroupDriver::Cgroupfs, "10.99.0.0/16"));
        assert_eq!(e.sandbox_image, "example.com/p:1");
    }

    #[test]
    fn a_file_that_is_not_a_manifest_says_so() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "{}").unwrap();
        let err = profile_from_manifest(f.path()).unwrap_err();
        assert!(format!("{err:#}").contains("no profile.profile"), "{err:#}");
    }
}
