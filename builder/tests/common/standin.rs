//! The offline stand-in release (fixtures/standin/build-standin.sh), built once per test run.
//! The script caches its output and locks against concurrent runs, so every test binary can
//! ask for it. Besides the bundle it builds the per-component releases (containerd's own
//! archive, runc, the CNI plugins, the crictl stand-in) for amd64 and arm64; it builds the
//! crictl stand-in with cargo itself (a no-op when it is up to date).

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
    /// The per-component profile (amd64, cgroupfs, 10.244.7.0/24) pinned to what was built.
    pub components_profile: PathBuf,
    /// The arm64 per-component profile (no crictl, no images): build-only.
    pub arm64_profile: PathBuf,
    pub runc_version: String,
    pub cni_version: String,
    pub crictl_version: String,
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
        assert_eq!(get("STANDIN_ARCHES"), "amd64 arm64", "the stand-in must build both architectures");
        Standin {
            profile: mirror.join("standin.toml"),
            version: get("STANDIN_VERSION"),
            sha256: get("STANDIN_SHA256"),
            components_profile: mirror.join("standin-components.toml"),
            arm64_profile: mirror.join("standin-arm64.toml"),
            runc_version: get("STANDIN_RUNC_VERSION"),
            cni_version: get("STANDIN_CNI_VERSION"),
            crictl_version: get("STANDIN_CRICTL_VERSION"),
            mirror,
        }
    })
}
