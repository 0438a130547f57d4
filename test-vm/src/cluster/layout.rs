//! Where everything of one control plane lives: one work directory, nothing outside it.
//!
//! ```text
//! DIR/kubeadm.yaml      kubeadm's InitConfiguration + ClusterConfiguration (0600: it holds the token)
//! DIR/token             the bootstrap token, and nothing else (0600)
//! DIR/pki/              kubeadm's certificatesDir
//! DIR/kubeconfig/       kubeadm's kubeconfigs, naming the guest endpoint https://10.0.2.2:PORT
//! DIR/host/             the same with https://127.0.0.1:PORT, for everything on the host
//! DIR/etcd/             etcd's data
//! DIR/kube-controller-manager/   its flex-volume directory (it creates one if missing)
//! DIR/logs/NAME.log     stdout+stderr of etcd, kube-apiserver, kube-controller-manager, kubeadm
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Create `dir` (mode 0700) and its subdirectories. It must be new or empty: a previous
    /// run's etcd data, certificates and tokens would silently mix with this one's.
    pub fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                bail!("the work directory {} is not empty: remove it or pass another --dir", dir.display());
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        if dir.to_str().is_none() {
            bail!("the work directory {} is not valid UTF-8 (it is written into YAML and flags)", dir.display());
        }
        let layout = Self { dir };
        for d in [layout.pki(), layout.guest_kubeconfigs(), layout.host_kubeconfigs(), layout.logs(), layout.kcm_dir()]
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(layout)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeadm_config(&self) -> PathBuf {
        self.dir.join("kubeadm.yaml")
    }

    /// The same configuration with the paths a kubeadm node has (what `upload-config` and
    /// `bootstrap-token` publish to joining nodes).
    pub fn kubeadm_cluster_config(&self) -> PathBuf {
        self.dir.join("kubeadm-cluster.yaml")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }

    pub fn guest_kubeconfigs(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn host_kubeconfigs(&self) -> PathBuf {
        self.dir.join("host")
    }

    pub fn host_kubeconfig(&self, name: &str) -> PathBuf {
        self.host_kubeconfigs().join(format!("{name}.conf"))
    }

    pub fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kcm_dir(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
}

/// Write a file only its owner can read: created with mode 0600, never briefly wider.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_fresh_or_empty_directory_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let l = Layout::create(&tmp.path().join("cp")).expect("new dir");
        assert!(l.logs().is_dir() && l.pki().is_dir() && l.host_kubeconfigs().is_dir());
        let err = Layout::create(&tmp.path().join("cp")).expect_err("not empty");
        assert!(err.to_string().contains("is not empty"), "{err}");
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        Layout::create(&empty).expect("empty dir");
        write_private(&l.token_file(), b"x").expect("write");
        let mode = fs::metadata(l.token_file()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
