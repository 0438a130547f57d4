//! nodeforge's guest agent: checks a booted test node stage by stage, from the guest's real
//! state (systemd, cloud-init's own status, CRI over gRPC), and reports JSON lines to the
//! harness.
//!
//! The harness depends on this crate for [`protocol`] (the lines) and [`expect`] (the
//! expectations file it writes). Every stage in [`stages`] is callable on its own with an
//! explicit command runner, CRI socket and [`expect::Expect`].

pub mod cri;
pub mod exec;
pub mod expect;
pub mod kubelet;
pub mod notify;
pub mod protocol;
pub mod report;
pub mod stages;
pub mod systemd;

pub use expect::{CgroupDriver, CriApi, Expect, StageTimeouts};
pub use protocol::{Event, EventKind, Stage};
