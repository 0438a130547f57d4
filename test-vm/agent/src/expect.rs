//! What the harness expects of the node: the JSON file whose path is the agent's argv[1]. The
//! types are the harness's too, and live in `nodeforge-wire`; this module reads the file.

use std::path::Path;

use anyhow::{Context, Result};

pub use nodeforge_wire::expect::{CgroupDriver, CriApi, DEFAULT_TEST_IMAGE, Expect, StageTimeouts};

/// Read and parse the expectations file; unknown keys are refused.
pub fn load(path: &Path) -> Result<Expect> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading expectations {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing expectations {}", path.display()))
}
