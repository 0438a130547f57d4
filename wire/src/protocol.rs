//! The agent's wire protocol: one JSON object per line on the report port.
//!
//! ```text
//! {"stage":"boot","event":"start","elapsed_ms":0,"message":"","detail":{}}
//! {"stage":"boot","event":"pass","elapsed_ms":1234,"message":"system running","detail":{"state":"running",...}}
//! ...
//! {"stage":"done","event":"pass","elapsed_ms":56789,"message":"all 6 stages passed","detail":{"passed":[...]}}
//! ```
//!
//! * Stages run in the order of [`Stage::order`]: [`Stage::CHECKS`], or
//!   [`Stage::RUNTIME_FIRST`] when the expectations say `runtime_first`. The agent stops at
//!   the first failure, so a `fail` event is always followed directly by the `done` event.
//! * `elapsed_ms` counts from the stage's own start (0 on `start`); on `done` it counts from
//!   the agent's start.
//! * `message` is one human-readable line; `detail` is a JSON object whose keys depend on the
//!   stage (documented on each stage function). Both are always present.
//! * The harness must treat a missing `done` line as a failure (the agent died or hung).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The virtio-serial port name the agent writes its events to: it opens
/// `/dev/virtio-ports/<name>`, and the harness gives QEMU's port this name.
pub const AGENT_PORT: &str = "org.nodeforge.agent";

/// A stage name as it appears on the wire (`"cloud-init"`, `"kubelet-config"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Boot,
    CloudInit,
    Containerd,
    Cri,
    Pod,
    KubeletConfig,
    /// The final line: `pass` only if every check stage passed.
    Done,
}

impl Stage {
    /// The check stages, in the order the agent runs them on a node whose runtime arrives
    /// with cloud-init (a first-boot seed unpacks the overlay in cloud-init's final stage).
    pub const CHECKS: [Stage; 6] =
        [Stage::Boot, Stage::CloudInit, Stage::Containerd, Stage::Cri, Stage::Pod, Stage::KubeletConfig];

    /// The order on a node whose image carries the runtime: containerd, CRI and the pod are
    /// checked as soon as systemd starts containerd, and cloud-init (whose final stage runs
    /// the seed's `kubeadm join`) after them. `boot` then means systemd mounted the local
    /// filesystems (local-fs.target), after which nodeforge's containerd unit starts without
    /// waiting for cloud-init; the wait for the whole boot to finish is part of `cloud-init`.
    pub const RUNTIME_FIRST: [Stage; 6] =
        [Stage::Boot, Stage::Containerd, Stage::Cri, Stage::Pod, Stage::CloudInit, Stage::KubeletConfig];

    /// The check stages in the order the agent runs them.
    pub const fn order(runtime_first: bool) -> [Stage; 6] {
        if runtime_first { Stage::RUNTIME_FIRST } else { Stage::CHECKS }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Stage::Boot => "boot",
            Stage::CloudInit => "cloud-init",
            Stage::Containerd => "containerd",
            Stage::Cri => "cri",
            Stage::Pod => "pod",
            Stage::KubeletConfig => "kubelet-config",
            Stage::Done => "done",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Start,
    Pass,
    Fail,
}

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub stage: Stage,
    pub event: EventKind,
    pub elapsed_ms: u64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Map<String, Value>,
}

impl Event {
    /// The line as sent: compact JSON, no trailing newline.
    pub fn to_line(&self) -> String {
        // A struct of strings, numbers and a JSON map cannot fail to serialise.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"stage\":\"done\",\"event\":\"fail\",\"elapsed_ms\":0,\"message\":\"cannot serialise event: {e}\",\"detail\":{{}}}}"))
    }

    /// Parses one line read from the port; the harness uses this. Blank lines and console
    /// noise (anything not starting with `{`) give `None`.
    pub fn parse_line(line: &str) -> Option<Result<Event, serde_json::Error>> {
        let line = line.trim();
        line.starts_with('{').then(|| serde_json::from_str(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_names_and_round_trip() {
        let ev = Event {
            stage: Stage::KubeletConfig,
            event: EventKind::Fail,
            elapsed_ms: 12,
            message: "m".into(),
            detail: json!({"k": 1}).as_object().cloned().unwrap(),
        };
        let line = ev.to_line();
        assert_eq!(line, r#"{"stage":"kubelet-config","event":"fail","elapsed_ms":12,"message":"m","detail":{"k":1}}"#);
        assert_eq!(Event::parse_line(&line).unwrap().unwrap(), ev);
        assert_eq!(
            serde_json::to_value(Stage::CHECKS).unwrap(),
            json!(["boot", "cloud-init", "containerd", "cri", "pod", "kubelet-config"])
        );
        for s in Stage::CHECKS {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.name()));
        }
    }

    #[test]
    fn both_orders_run_every_check_once() {
        assert_eq!(Stage::order(false), Stage::CHECKS);
        let mut a = Stage::order(true).map(Stage::name);
        let mut b = Stage::CHECKS.map(Stage::name);
        assert_ne!(a, b);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert_eq!(Stage::RUNTIME_FIRST[0], Stage::Boot, "boot stays first: its time is the guest's start-up");
    }

    #[test]
    fn minimal_done_line_parses_and_noise_is_skipped() {
        let ev = Event::parse_line(r#"{"stage":"done","event":"pass","elapsed_ms":5}"#).unwrap().unwrap();
        assert_eq!((ev.stage, ev.event, ev.message.as_str()), (Stage::Done, EventKind::Pass, ""));
        assert!(Event::parse_line("[   12.3] systemd[1]: Started").is_none());
        assert!(Event::parse_line(r#"{"stage":"nope"}"#).unwrap().is_err());
    }
}
