//! The offline release mirror (fixtures/standin/build-standin.sh), built once per test run.
//! The script caches its output and locks against concurrent runs, so every test binary can
//! ask for it. Besides the Debian-built bundle it holds the real upstream programs built from
//! their Go modules (fixtures/upstream/build-upstream.sh): the per-component releases
//! (containerd 2.x's own archive, runc, the CNI plugins, crictl) for amd64 and arm64, and
//! Kubernetes' binaries as on dl.k8s.io, plus host copies in `bin/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct Standin {
    /// The mirror root: `containerd/containerd/releases/download/v<V>/…`.
    pub mirror: PathBuf,
    /// The bundle profile with the digest of what the script built.
    pub profile: PathBuf,
    /// The bundle's containerd version (Debian's).
    pub version: String,
    pub sha256: String,
    /// The per-component profile (amd64, cgroupfs, 10.244.7.0/24) pinned to what was built.
    pub components_profile: PathBuf,
    /// The arm64 per-component profile (no images): build-only.
    pub arm64_profile: PathBuf,
    /// The per-component releases' versions.
    pub containerd_version: String,
    pub runc_version: String,
    pub cni_version: String,
    pub crictl_version: String,
    pub kubernetes_version: String,
    /// The host's copies of the upstream programs (containerd, crictl, kubeadm, ...).
    pub bin: PathBuf,
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
        let env = std::fs::read_to_string(mirror.join("standin.env")).expect("standin.env")
            + &std::fs::read_to_string(mirror.join("upstream.env")).expect("upstream.env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("{k} missing from standin.env"))
        };
        assert_eq!(get("UPSTREAM_ARCHES"), "amd64 arm64", "the mirror must hold both architectures");
        Standin {
            profile: mirror.join("standin.toml"),
            version: get("STANDIN_VERSION"),
            sha256: get("STANDIN_SHA256"),
            components_profile: mirror.join("standin-components.toml"),
            arm64_profile: mirror.join("standin-arm64.toml"),
            containerd_version: get("UPSTREAM_CONTAINERD_VERSION"),
            runc_version: get("UPSTREAM_RUNC_VERSION"),
            cni_version: get("UPSTREAM_CNI_PLUGINS_VERSION"),
            crictl_version: get("UPSTREAM_CRICTL_VERSION"),
            kubernetes_version: get("UPSTREAM_KUBERNETES_VERSION"),
            bin: PathBuf::from(get("UPSTREAM_BIN_DIR")),
            mirror,
        }
    })
}
