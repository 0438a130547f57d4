//! `disk.raw` (ext4, label `root`) from the staged tree with `mkfs.ext4 -d`, and `disk.qcow2`
//! from it with `qemu-img convert`: no loop devices, no mounts, no root-only kernel features.
//!
//! e2fsprogs 1.47.0's `-d` takes a directory only (a tarball fails with "Not a directory";
//! tar input arrived in 1.47.1), hence the staging directory.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub const RAW_NAME: &str = "disk.raw";
pub const QCOW2_NAME: &str = "disk.qcow2";
/// The label `/init` and the base's fstab look for.
pub const ROOT_LABEL: &str = "root";

/// A disk size as `mkfs.ext4` and people write it: bytes, or a K/M/G/T suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSize(pub u64);

impl FromStr for DiskSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (digits, shift) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(format!("{s:?}: unknown size suffix {c:?} (use K, M, G or T)")),
                };
                (&s[..i], shift)
            }
            _ => (s, 0),
        };
        let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 2G or 1536M"))?;
        let bytes = n.checked_shl(shift).filter(|b| b >> shift == n).ok_or_else(|| format!("{s:?} is too large"))?;
        if bytes < 64 << 20 {
            return Err(format!("{s:?}: a root disk needs at least 64M"));
        }
        Ok(DiskSize(bytes))
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.0 >> 20)
    }
}

/// The filesystem UUID and directory hash seed, derived from the inputs (base and overlay
/// digests): mkfs would otherwise draw both at random, and they land in the superblock and
/// every directory's hash order.
pub fn identity(inputs: &[&[u8]]) -> (String, String) {
    let mut h = Sha256::new();
    h.update(b"nodeforge disk identity v1\0");
    for i in inputs {
        h.update((i.len() as u64).to_le_bytes());
        h.update(i);
    }
    let d: [u8; 32] = h.finalize().into();
    (uuid(&d[..16]), uuid(&d[16..]))
}

/// Format 16 bytes as an RFC 4122 version-4-shaped UUID string.
fn uuid(b: &[u8]) -> String {
    let mut b: [u8; 16] = b.try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what} (is it installed? scripts/install-deps.sh)"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `mkfs.ext4` the staged `root` into `dest`. `E2FSPROGS_FAKE_TIME` pins the superblock's
/// creation/mount/write times (and, where this e2fsprogs honours it, inode times it sets).
pub fn make_ext4(dest: &Path, root: &Path, size: DiskSize, uuid: &str, hash_seed: &str, mtime: u64) -> Result<()> {
    let kib = size.0 / 1024;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-U", uuid, "-E"])
            .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
            .arg("-d")
            .arg(root)
            .arg(dest)
            .arg(format!("{kib}k"))
            .env("E2FSPROGS_FAKE_TIME", mtime.to_string())
            .env("SOURCE_DATE_EPOCH", mtime.to_string())
            // A missing config file makes mke2fs use its compiled-in defaults, so the host's
            // /etc/mke2fs.conf does not change the disk (an empty file would lack `ext4`).
            .env("MKE2FS_CONFIG", "/nonexistent/nodeforge-builtin-mke2fs.conf"),
        "mkfs.ext4",
    )
    .with_context(|| format!("making {} ({size}) from {}", dest.display(), root.display()))
}

/// Set every inode's ctime and atime to `mtime`. mkfs.ext4 1.47.0 copies each staged file's
/// ctime, which no user space can set (it is the moment the staging wrote the file), and
/// atime, which reading the kernel, modules and symlinks during the build moves; without this
/// two builds of the same inputs differ in every inode. debugfs rewrites them in place (and the
/// inode checksums with them) in about a second for a 20 000-file tree. Returns how many paths
/// were left as they are because debugfs' command parser cannot quote them (`"`, newline).
pub fn pin_ctimes(raw: &Path, root: &Path, script: &Path, mtime: u64) -> Result<usize> {
    let mut cmds = format!("sif / ctime @{mtime}\nsif / atime @{mtime}\n");
    let mut skipped = 0;
    collect_sif(root, "", mtime, &mut cmds, &mut skipped)?;
    std::fs::write(script, cmds).with_context(|| format!("writing {}", script.display()))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(script)
        .arg(raw)
        // Or the superblock's last-write time becomes the moment debugfs closed the image.
        .env("E2FSPROGS_FAKE_TIME", mtime.to_string())
        .output()
        .context("running debugfs (e2fsprogs)")?;
    // debugfs exits 0 even when a command fails; its errors are the lines not echoing a command.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ")).collect();
    if !out.status.success() || !errors.is_empty() {
        bail!("debugfs could not pin inode ctimes in {}: {}", raw.display(), errors.join("; "));
    }
    Ok(skipped)
}

fn collect_sif(dir: &Path, prefix: &str, mtime: u64, cmds: &mut String, skipped: &mut usize) -> Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            *skipped += 1;
            continue;
        };
        let rel = format!("{prefix}/{name}");
        if rel.contains(['"', '\n']) {
            *skipped += 1;
        } else {
            cmds.push_str(&format!("sif \"{rel}\" ctime @{mtime}\nsif \"{rel}\" atime @{mtime}\n"));
        }
        if std::fs::symlink_metadata(&path)?.is_dir() {
            collect_sif(&path, &rel, mtime, cmds, skipped)?;
        }
    }
    Ok(())
}

pub fn convert_qcow2(raw: &Path, dest: &Path) -> Result<()> {
    run(
        Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(dest),
        "qemu-img convert",
    )
    .with_context(|| format!("converting {} to {}", raw.display(), dest.display()))
}

/// Fail before building when a tool the image needs is missing.
pub fn check_tools() -> Result<()> {
    for (tool, pkg) in [("mkfs.ext4", "e2fsprogs"), ("qemu-img", "qemu-utils")] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} not found on PATH: install {pkg} (scripts/install-deps.sh)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_mkfs() {
        assert_eq!("2G".parse::<DiskSize>().unwrap().0, 2 << 30);
        assert_eq!("1536m".parse::<DiskSize>().unwrap().0, 1536 << 20);
        assert!("2X".parse::<DiskSize>().is_err());
        assert!("1M".parse::<DiskSize>().is_err());
        assert!("99999999999T".parse::<DiskSize>().is_err());
    }

    #[test]
    fn identity_is_stable_and_input_dependent() {
        let a = identity(&[b"base", b"overlay"]);
        assert_eq!(a, identity(&[b"base", b"overlay"]));
        assert_ne!(a, identity(&[b"baseo", b"verlay"]));
        assert_eq!(a.0.len(), 36);
        assert_eq!(&a.0[14..15], "4");
    }
}
