//! The wire contract between the harness and the guest agent (`nodeforge-agent`).
//!
//! The event kinds, the stage names and the port come from the agent crate itself. The harness
//! reads events into its own lenient struct — unknown fields are ignored, `message` and
//! `detail` may be missing, an unknown stage is reported rather than refused by serde — and is
//! strict where a mistake would hide a failure (an unknown `event` value is a protocol error).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The virtio-serial port name the agent writes its events to (it opens
/// `/dev/virtio-ports/<name>`).
pub const AGENT_PORT: &str = "org.nodeforge.agent";

/// The stage name of the agent's final event.
pub const DONE: &str = "done";

/// The stages the agent runs, in order. The harness adds its own stage 0, `kernel`.
pub const AGENT_STAGES: [&str; 6] = ["boot", "cloud-init", "containerd", "cri", "pod", "kubelet-config"];

/// One line the agent writes: `{"stage": "...", "event": "start"|"pass"|"fail", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub stage: String,
    pub event: EventKind,
    /// Guest-side time since the agent started, in milliseconds.
    #[serde(default)]
    pub elapsed_ms: u64,
    #[serde(default)]
    pub message: String,
    /// Stage-specific results: CRI `Version` fields, the pod IP, what a check compared.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

pub use nodeforge_agent::EventKind;

impl AgentEvent {
    /// Parse one line; blank lines are `Ok(None)`. Anything else that is not an event is an
    /// error carrying the line, so a garbled channel is reported rather than waited out.
    pub fn parse_line(line: &str) -> Result<Option<Self>, String> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(line).map(Some).map_err(|e| format!("agent sent an unreadable line ({e}): {line}"))
    }
}

/// `expect.json`: what the agent checks the node against, derived from the build manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    pub cri_endpoint_default: String,
    pub sandbox_image: String,
    /// Every preloaded image reference, the sandbox image included.
    pub images: Vec<String>,
    pub cni_subnet: String,
    pub cgroup_driver: String,
    /// `v1` or `v1alpha2`.
    pub cri_api: String,
    pub containerd_version: String,
    /// The agent's own per-stage limits; the harness allows a little more (see `run`).
    pub stage_timeouts_s: BTreeMap<String, u64>,
    /// Where the seed's `kubeadm join` writes its output: a failed cloud-init quotes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_log: Option<String>,
    /// The harness runs the `join` stage after the agent's (the agent then leaves a failed
    /// `kubeadm join` to it).
    #[serde(default)]
    pub join_stage_follows: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_and_stages_are_the_agents() {
        assert_eq!(nodeforge_agent::report::VIRTIO_PORT, format!("/dev/virtio-ports/{AGENT_PORT}"));
        let names: Vec<&str> = nodeforge_agent::Stage::CHECKS.iter().map(|s| s.name()).collect();
        assert_eq!(names, AGENT_STAGES);
        assert_eq!(nodeforge_agent::Stage::Done.name(), DONE);
    }

    #[test]
    fn the_agent_accepts_the_expectations_the_harness_writes() {
        let e = Expectations {
            cri_endpoint_default: "unix:///run/containerd/containerd.sock".into(),
            sandbox_image: "registry.k8s.io/pause:3.9".into(),
            images: vec!["registry.k8s.io/pause:3.9".into()],
            cni_subnet: "10.244.7.0/24".into(),
            cgroup_driver: "cgroupfs".into(),
            cri_api: "v1alpha2".into(),
            containerd_version: "1.5.18".into(),
            stage_timeouts_s: crate::expect::default_stage_timeouts(),
            join_log: Some("/var/log/nodeforge/kubeadm-join.log".into()),
            join_stage_follows: true,
        };
        let parsed: nodeforge_agent::Expect = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(parsed.cgroup_driver, nodeforge_agent::CgroupDriver::Cgroupfs);
        assert_eq!(parsed.cri_api, nodeforge_agent::CriApi::V1alpha2);
        assert_eq!(parsed.stage_timeouts_s.pod, e.stage_timeouts_s["pod"]);
        assert_eq!(parsed.stage_timeouts_s.cloud_init, e.stage_timeouts_s["cloud-init"]);
        assert_eq!(parsed.join_log.as_deref(), Some(std::path::Path::new("/var/log/nodeforge/kubeadm-join.log")));
        assert!(parsed.join_stage_follows);
    }

    #[test]
    fn events_parse_leniently_but_not_blindly() {
        let e = AgentEvent::parse_line(r#"{"stage":"cri","event":"pass","elapsed_ms":5,"extra":1}"#).unwrap().unwrap();
        assert_eq!(e.stage, "cri");
        assert_eq!(e.event, EventKind::Pass);
        assert!(e.detail.is_null() && e.message.is_empty());
        assert_eq!(AgentEvent::parse_line("  \r").unwrap(), None);
        assert!(AgentEvent::parse_line(r#"{"stage":"cri","event":"maybe"}"#).is_err());
        assert!(AgentEvent::parse_line("[    1.0] garbage").unwrap_err().contains("garbage"));
    }
}
