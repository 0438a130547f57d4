//! The agent's wire protocol: one JSON object per line on the report port. The types are the
//! harness's too, and live in `nodeforge-wire`.

pub use nodeforge_wire::protocol::{AGENT_PORT, Event, EventKind, Stage};
