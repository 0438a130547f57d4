//! The test-node base root tree (fixtures/base/build-base.sh), built once per test run. The
//! script caches by package versions (a cold build is debootstrap, ~75-170 s; a warm one a
//! copy) and locks against concurrent runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::standin::repo_root;

#[derive(Debug)]
pub struct Base {
    /// `rootfs.tar`: the tree `nodeforge image --base` takes.
    pub rootfs: PathBuf,
    pub kernel_version: String,
}

pub fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("base");
        let script = repo_root().join("fixtures/base/build-base.sh");
        let run = Command::new("bash").arg(&script).arg(&out).output().expect("running build-base.sh");
        assert!(
            run.status.success(),
            "build-base.sh failed (it needs root, debootstrap and a Debian mirror; `make test` installs its tools):\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let env = std::fs::read_to_string(out.join("base.env")).expect("base.env");
        let kernel_version = env
            .lines()
            .find_map(|l| l.strip_prefix("BASE_KERNEL_VERSION="))
            .map(|v| v.trim_matches('\'').to_owned())
            .expect("BASE_KERNEL_VERSION in base.env");
        Base { rootfs: out.join("rootfs.tar"), kernel_version }
    })
}
