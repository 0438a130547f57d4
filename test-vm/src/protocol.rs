//! The wire contract between the harness and the guest agent (`nodeforge-agent`).
//!
//! The port, the stages, the event kinds and the expectations file are `nodeforge-wire`'s,
//! shared with the agent. The harness reads events into its own lenient struct — unknown fields are ignored, `message` and
//! `detail` may be missing, an unknown stage is reported rather than refused by serde — and is
//! strict where a mistake would hide a failure (an unknown `event` value is a protocol error).

use serde::{Deserialize, Serialize};

pub use nodeforge_wire::{AGENT_PORT, EventKind, Expect, Stage};

/// The stage name of the agent's final event.
pub const DONE: &str = Stage::Done.name();

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lenient_reading_takes_what_the_agent_writes() {
        let sent = nodeforge_wire::Event {
            stage: Stage::KubeletConfig,
            event: EventKind::Fail,
            elapsed_ms: 12,
            message: "m".into(),
            detail: serde_json::json!({"k": 1}).as_object().cloned().unwrap(),
        };
        let e = AgentEvent::parse_line(&sent.to_line()).unwrap().unwrap();
        assert_eq!((e.stage.as_str(), e.event, e.elapsed_ms), ("kubelet-config", EventKind::Fail, 12));
        assert_eq!(e.detail["k"], 1);
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
