//! `nodeforge image`: the build's overlay laid onto a base root tree, as a bootable test
//! node — `disk.raw`/`disk.qcow2` (ext4, label `root`), the base's kernel as `vmlinuz`, a
//! small `initrd.img` that mounts the disk, and `rootfs.cpio.gz` for netboot.
//!
//! It adds its artifacts to a [`Pending`] build, so they are committed together with the
//! overlay archives, listed in the manifest and `SHA256SUMS`, and nothing partial is ever
//! visible in `--out`.

pub mod disk;
pub mod initramfs;
pub mod modules;
pub mod stage;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::archive::ArtifactInfo;
use crate::build::Pending;
use crate::io::{HashingReader, Interrupt};
use disk::DiskSize;

#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The base root filesystem: a directory or a tar archive (optionally gzip'd).
    pub base: PathBuf,
    pub disk_size: DiskSize,
    /// Leave the overlay off the disk: the seed carries it and first boot unpacks it, so the
    /// disk stands in for a stock cloud image.
    pub first_boot: bool,
}

/// Check what can be checked before a build starts: the base exists, the tools are there.
pub fn preflight(opts: &ImageOptions) -> Result<()> {
    fs::metadata(&opts.base).with_context(|| {
        format!("the base {} is not readable (build one with fixtures/base/build-base.sh)", opts.base.display())
    })?;
    disk::check_tools()
}

/// The kernel version of the single `/boot/vmlinuz-<ver>` in the tree that also has
/// `/lib/modules/<ver>/`.
fn kernel_version(root: &Path) -> Result<String> {
    let boot = stage::resolve_in_root(root, "boot", true)?;
    let mut found = Vec::new();
    for e in fs::read_dir(&boot).with_context(|| format!("listing /boot of the base ({})", boot.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-")
            && stage::resolve_in_root(root, &format!("lib/modules/{ver}/modules.dep"), true)?.is_file()
        {
            found.push(ver.to_owned());
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the base has no /boot/vmlinuz-<ver> with /lib/modules/<ver>/modules.dep"),
        many => bail!("the base has several kernels ({}); keep one", many.join(", ")),
    }
}

/// Copy `src` to `dest` (in the pending directory), hashing it.
fn copy_artifact(src: &Path, dest: &Path) -> Result<ArtifactInfo> {
    let mut out = crate::output::AtomicFile::create(dest)?;
    let file = crate::io::open_regular(src).with_context(|| format!("opening {}", src.display()))?;
    let mut r = HashingReader::new(file);
    std::io::copy(&mut r, &mut out).with_context(|| format!("copying {}", src.display()))?;
    out.commit(0o644)?;
    let (sha256, size) = r.finish();
    Ok(ArtifactInfo { name: file_name(dest)?, size, sha256 })
}

fn hash_artifact(path: &Path) -> Result<ArtifactInfo> {
    let mut r = HashingReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    std::io::copy(&mut r, &mut std::io::sink()).with_context(|| format!("reading {}", path.display()))?;
    let (sha256, size) = r.finish();
    Ok(ArtifactInfo { name: file_name(path)?, size, sha256 })
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name().and_then(|n| n.to_str()).map(str::to_owned).with_context(|| format!("{} has no name", p.display()))
}

/// The image step: write the image artifacts beside a pending build's own and add them to it.
pub fn add_image(opts: &ImageOptions, pending: &mut Pending, interrupt: &Interrupt) -> Result<()> {
    let more = write_image(opts, pending, interrupt)?;
    pending.add_artifacts(more);
    Ok(())
}

fn write_image(opts: &ImageOptions, x: &Pending, interrupt: &Interrupt) -> Result<Vec<ArtifactInfo>> {
    let (pending_dir, scratch, mtime) = (x.dir(), x.scratch(), x.mtime());
    let root = scratch.join("rootfs");
    fs::create_dir(&root)?;
    tracing::info!("staging the base {}", opts.base.display());
    let staged = stage::stage_base(&opts.base, &root, interrupt)?;
    for s in &staged.skipped_special {
        tracing::warn!("base: left out special file {s} (/dev is a devtmpfs on the node)");
    }
    if opts.first_boot {
        tracing::info!("--first-boot: the disk is the base alone; the seed carries the overlay");
    } else {
        stage::apply_overlay(&root, x.overlay(), mtime, interrupt).context("applying the overlay to the base")?;
    }

    let kver = kernel_version(&root)?;
    let modules_dir = stage::resolve_in_root(&root, &format!("lib/modules/{kver}"), true)?;
    let boot_modules = modules::boot_modules(&modules_dir)?;
    let busybox = stage::resolve_in_root(&root, "bin/busybox", true)?;

    let mut out = Vec::new();
    let vmlinuz = stage::resolve_in_root(&root, &format!("boot/vmlinuz-{kver}"), true)?;
    out.push(copy_artifact(&vmlinuz, &pending_dir.join("vmlinuz"))?);
    out.push(initramfs::write_initrd(&pending_dir.join(initramfs::INITRD_NAME), &busybox, &boot_modules, mtime)?);
    interrupt.check()?;

    // The overlay's identity is its tar archive's digest (the build's first artifact).
    let overlay_digest = x.artifacts().first().map(|a| a.sha256.0).unwrap_or_default();
    let (uuid, hash_seed) =
        disk::identity(&[&staged.digest.0, &overlay_digest, opts.disk_size.0.to_le_bytes().as_slice()]);
    let raw = pending_dir.join(disk::RAW_NAME);
    tracing::info!("mkfs.ext4 {} ({})", raw.display(), opts.disk_size);
    disk::make_ext4(&raw, &root, opts.disk_size, &uuid, &hash_seed, mtime)?;
    let unpinned = disk::pin_ctimes(&raw, &root, &scratch.join("debugfs-ctimes"), mtime)?;
    if unpinned > 0 {
        tracing::warn!("{unpinned} paths with quotes or newlines keep build-time ctimes on the disk");
    }
    interrupt.check()?;
    let qcow2 = pending_dir.join(disk::QCOW2_NAME);
    disk::convert_qcow2(&raw, &qcow2)?;
    out.push(hash_artifact(&raw)?);
    out.push(hash_artifact(&qcow2)?);
    interrupt.check()?;

    tracing::info!("writing {}", initramfs::ROOTFS_CPIO_NAME);
    out.push(initramfs::write_rootfs_cpio(
        &pending_dir.join(initramfs::ROOTFS_CPIO_NAME),
        &root,
        &boot_modules,
        mtime,
        interrupt,
    )?);
    Ok(out)
}
