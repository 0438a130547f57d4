//! The two initramfs archives `nodeforge image` writes, both newc cpio, gzip'd:
//!
//! * `initrd.img`: busybox, `/init` and the modules that mount the root disk — small, for
//!   booting `disk.qcow2` with `-kernel vmlinuz -initrd initrd.img`;
//! * `rootfs.cpio.gz`: the whole staged root tree plus the same `/init` and modules, for
//!   netboot (`cat rootfs.cpio.gz overlay.cpio.gz > initrd`; the kernel unpacks concatenated
//!   archives in order, later entries replacing earlier ones).
//!
//! Entries carry no host state but what the tree itself holds (owners, modes, mtimes of the
//! staged files, which come from the base and the overlay). Inode numbers count from a base
//! far above the overlay archive's (which counts from 1), and every entry has nlink 1, so
//! the kernel never pairs entries across concatenated archives as hard links; a base file
//! with several links is stored once per name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cpio::newc::{Builder, ModeFileType};

use super::modules::BootModule;
use crate::archive::{ArtifactInfo, write_gz};
use crate::io::Interrupt;

pub const INITRD_NAME: &str = "initrd.img";
pub const ROOTFS_CPIO_NAME: &str = "rootfs.cpio.gz";

/// The `/init` both archives run; see the contract at its top.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Where the modules sit in the archives, named `NN-<module>.ko` so the shell glob in `/init`
/// loads them in dependency order. Under `/usr/lib` rather than `/lib/modules`: in the base,
/// `/lib` is a symlink the kernel's unpacker would not merge a directory into.
pub const MODULES_DIR: &str = "usr/lib/nodeforge-initramfs/modules";

/// First inode number; see the module comment.
const FIRST_INO: u32 = 1 << 24;

/// Sequential newc writer over any `Write`.
struct Cpio<W: Write> {
    w: W,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> Cpio<W> {
    fn header(&mut self, name: &str, mode: u32, uid: u32, gid: u32, mtime: u32) -> Builder {
        self.next_ino += 1;
        Builder::new(name).ino(self.next_ino).uid(uid).gid(gid).mtime(mtime).mode(mode).nlink(1)
    }

    fn dir(&mut self, name: &str, mode: u32, uid: u32, gid: u32, mtime: u32) -> io::Result<()> {
        let h = self.header(name, mode, uid, gid, mtime).nlink(2).set_mode_file_type(ModeFileType::Directory);
        h.write(&mut self.w, 0).finish().map(drop)
    }

    fn bytes(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name} too large for cpio")))?;
        let mtime = self.mtime;
        let mut out =
            self.header(name, mode, 0, 0, mtime).set_mode_file_type(ModeFileType::Regular).write(&mut self.w, size);
        out.write_all(data)?;
        out.finish().map(drop)
    }

    fn file(&mut self, name: &str, meta: &fs::Metadata, mut src: impl Read, interrupt: &Interrupt) -> io::Result<()> {
        let size = u32::try_from(meta.len()).map_err(|_| io::Error::other(format!("{name} too large for cpio")))?;
        let h = self.header(name, meta.mode() & 0o7777, meta.uid(), meta.gid(), clamp(meta.mtime()));
        let mut out = h.set_mode_file_type(ModeFileType::Regular).write(&mut self.w, size);
        let n = interrupt.copy(&mut (&mut src).take(u64::from(size)), &mut out)?;
        if n != u64::from(size) {
            return Err(io::Error::other(format!("{name} shrank while being archived")));
        }
        out.finish().map(drop)
    }

    fn symlink(&mut self, name: &str, target: &[u8], uid: u32, gid: u32, mtime: u32) -> io::Result<()> {
        let size = u32::try_from(target.len()).map_err(|_| io::Error::other("symlink target too long"))?;
        let h = self.header(name, 0o777, uid, gid, mtime).set_mode_file_type(ModeFileType::Symlink);
        let mut out = h.write(&mut self.w, size);
        out.write_all(target)?;
        out.finish().map(drop)
    }

    /// `/dev/console`: the kernel opens it for `/init`'s stdio before anything can mount
    /// devtmpfs; without it `/init` starts with no console at all.
    fn console(&mut self) -> io::Result<()> {
        let mtime = self.mtime;
        let h = self.header("dev/console", 0o600, 0, 0, mtime).rdev_major(5).rdev_minor(1);
        h.set_mode_file_type(ModeFileType::Char).write(&mut self.w, 0).finish().map(drop)
    }

    /// `/init`, the module directory and the modules in load order, and `/newroot`.
    fn boot_parts(&mut self, modules: &[BootModule], have_usr_lib: bool) -> io::Result<()> {
        let m = self.mtime;
        if !have_usr_lib {
            self.dir("usr", 0o755, 0, 0, m)?;
            self.dir("usr/lib", 0o755, 0, 0, m)?;
        }
        self.dir("usr/lib/nodeforge-initramfs", 0o755, 0, 0, m)?;
        self.dir(MODULES_DIR, 0o755, 0, 0, m)?;
        for (i, module) in modules.iter().enumerate() {
            self.bytes(&format!("{MODULES_DIR}/{:02}-{}.ko", i + 1, module.name), 0o644, &module.bytes)?;
        }
        self.dir("newroot", 0o755, 0, 0, m)?;
        self.bytes("init", 0o755, INIT_SCRIPT.as_bytes())
    }
}

fn clamp(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

fn mtime32(mtime: u64) -> Result<u32> {
    u32::try_from(mtime).map_err(|_| anyhow::anyhow!("mtime {mtime} does not fit a cpio header"))
}

/// Write `initrd.img`: busybox from the base, `/init`, the boot modules.
pub fn write_initrd(dest: &Path, busybox: &Path, modules: &[BootModule], mtime: u64) -> Result<ArtifactInfo> {
    let bb = fs::read(busybox).with_context(|| format!("reading busybox from the base at {}", busybox.display()))?;
    if !bb.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF binary (the base needs busybox-static)", busybox.display());
    }
    let mtime = mtime32(mtime)?;
    write_gz(dest, |gz| {
        let mut c = Cpio { w: gz, next_ino: FIRST_INO, mtime };
        for d in ["bin", "dev", "proc", "sys"] {
            c.dir(d, 0o755, 0, 0, mtime)?;
        }
        c.console()?;
        c.bytes("bin/busybox", 0o755, &bb)?;
        c.boot_parts(modules, false)?;
        cpio::newc::trailer(&mut c.w)?;
        Ok(())
    })
}

/// Write `rootfs.cpio.gz`: the staged tree (in name order), then `/dev/console`, the modules
/// and `/init`.
pub fn write_rootfs_cpio(
    dest: &Path,
    root: &Path,
    modules: &[BootModule],
    mtime: u64,
    interrupt: &Interrupt,
) -> Result<ArtifactInfo> {
    let mtime = mtime32(mtime)?;
    write_gz(dest, |gz| {
        let mut c = Cpio { w: gz, next_ino: FIRST_INO, mtime };
        walk(&mut c, root, "", interrupt)?;
        if !root.join("dev").is_dir() {
            c.dir("dev", 0o755, 0, 0, mtime)?;
        }
        c.console()?;
        c.boot_parts(modules, root.join("usr/lib").is_dir())?;
        cpio::newc::trailer(&mut c.w)?;
        Ok(())
    })
}

fn walk<W: Write>(c: &mut Cpio<W>, dir: &Path, prefix: &str, interrupt: &Interrupt) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        interrupt.check()?;
        let Some(name_str) = name.to_str() else {
            bail!("{}/{:?}: not UTF-8, which the cpio writer cannot name", dir.display(), name);
        };
        let rel = if prefix.is_empty() { name_str.to_owned() } else { format!("{prefix}/{name_str}") };
        let path = dir.join(&name);
        let m = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let ft = m.file_type();
        let added = if ft.is_dir() {
            c.dir(&rel, m.mode() & 0o7777, m.uid(), m.gid(), clamp(m.mtime()))
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            c.symlink(&rel, target.as_os_str().as_encoded_bytes(), m.uid(), m.gid(), clamp(m.mtime()))
        } else if ft.is_file() {
            let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            c.file(&rel, &m, f, interrupt)
        } else {
            continue; // no device nodes are staged (see stage.rs)
        };
        added.with_context(|| format!("adding /{rel} to the cpio archive"))?;
        if ft.is_dir() {
            walk(c, &path, &rel, interrupt)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(bytes: &[u8]) -> Vec<(String, u32)> {
        let mut rest = bytes;
        let mut out = Vec::new();
        loop {
            let r = cpio::newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            out.push((r.entry().name().to_owned(), r.entry().mode()));
            rest = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn initrd_holds_console_busybox_modules_in_order_and_init() {
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("busybox");
        fs::write(&bb, b"\x7fELF static busybox").unwrap();
        let modules: Vec<BootModule> = ["virtio_ring", "virtio", "ext4"]
            .iter()
            .map(|n| BootModule { name: (*n).into(), rel_path: format!("k/{n}.ko"), bytes: b"\x7fELF".to_vec() })
            .collect();
        let dest = dir.path().join(INITRD_NAME);
        write_initrd(&dest, &bb, &modules, 5).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(File::open(&dest).unwrap()).read_to_end(&mut raw).unwrap();
        let entries = names(&raw);
        let get = |n: &str| entries.iter().find(|(name, _)| name == n).map(|(_, m)| *m);
        assert_eq!(get("dev/console"), Some(0o020600));
        assert_eq!(get("init"), Some(0o100755));
        assert_eq!(get("bin/busybox"), Some(0o100755));
        let mods: Vec<&str> = entries.iter().filter_map(|(n, _)| n.strip_prefix(&format!("{MODULES_DIR}/"))).collect();
        assert_eq!(mods, ["01-virtio_ring.ko", "02-virtio.ko", "03-ext4.ko"]);
        assert!(INIT_SCRIPT.contains("nodeforge-initramfs: FATAL:"));
    }
}
