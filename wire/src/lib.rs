//! The contract between nodeforge's test-vm harness and its guest agent: the stages the
//! agent runs, the event lines it sends ([`protocol`]), and the expectations file the harness
//! writes for it ([`expect`]). One definition for both ends, plain serde types only.

pub mod expect;
pub mod protocol;

pub use expect::{CgroupDriver, CriApi, DEFAULT_TEST_IMAGE, Expect, StageTimeouts};
pub use protocol::{AGENT_PORT, Event, EventKind, Stage};
