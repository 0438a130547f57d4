//! The offline stand-in release (fixtures/standin/build-standin.sh), built once per test run.
//! The script caches its output and locks against concurrent runs, so every test binary can
//! ask for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct Standin {
    /// The mirror root: `containerd/containerd/releases/download/v<V>/…`.
    pub mirror: PathBuf,
    /// The stand-in profile with the digest of what the script built.
    pub profile: PathBuf,
    pub version: String,
    pub sha256: String,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("builder/ has a parent").to_owned()
}

pub fn standin() -> &'static Standin {
    static S: OnceLock<Standin> = OnceLock::new();
    S.get_or_init(|| {
        let mirror = Path::new(env!("CARGO_TARGET_TMPDIR")).join("standin-mirror");
        let script = repo_root().join("fixtures/standin/build-standin.sh");
        let out = Command::new("bash").arg(&script).arg(&mirror).output().expect("running build-standin.sh");
        assert!(
            out.status.success(),
            "build-standin.sh failed (it needs apt-get download; `make test` installs its tools):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(mirror.join("standin.env")).expect("standin.env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("{k} missing from standin.env"))
        };
        Standin {
            profile: mirror.join("standin.toml"),
            version: get("STANDIN_VERSION"),
            sha256: get("STANDIN_SHA256"),
            mirror,
        }
    })
}
