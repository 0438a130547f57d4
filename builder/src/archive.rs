//! Deterministic archives of the overlay: `overlay.tar.gz` for `tar -C / -xzf` on a running
//! host, and `overlay.cpio.gz` to append to an initramfs.
//!
//! Every header field is set from the overlay value and the caller's `mtime`, never from the
//! build host (no uid, user name, umask or clock leaks in), and gzip is written with a fixed
//! level and an empty header, so the same overlay gives the same bytes on any machine. Both
//! archives stream: file contents are copied from disk in chunks, hashed against the digest
//! the overlay recorded, and the interrupt flag is polled between chunks.
//!
//! Paths are relative (`etc/containerd/config.toml`), without `./`, exactly like the upstream
//! cri-containerd-cni bundle: `tar -C / -xzf` and the kernel's initramfs unpacker both resolve
//! them against the target root, and a listing compares line for line with the bundle's.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;
use crate::io::{HashingWriter, Interrupt};
use crate::output::AtomicFile;
use crate::overlay::{Content, EntryKind, Overlay, OverlayPath};

/// 1980-01-01T00:00:00Z: the archive timestamp when SOURCE_DATE_EPOCH is not set. Any
/// constant gives reproducible bytes; this one is also the earliest time FAT and zip-era
/// tools represent without complaint.
pub const DEFAULT_MTIME: u64 = 315_532_800;

pub const TAR_GZ_NAME: &str = "overlay.tar.gz";
pub const CPIO_GZ_NAME: &str = "overlay.cpio.gz";

/// zlib level 6: what `gzip` uses by default; higher levels cost far more time than they save
/// on already-compressed Go binaries. Part of the output format: changing it changes bytes.
const GZIP_LEVEL: u32 = 6;

/// The gzip header's OS byte. 3 (Unix) is what `gzip -n` writes on Linux; fixed here so the
/// header does not depend on flate2's default.
const GZIP_OS_UNIX: u8 = 3;

/// Owner names written into tar headers. GNU tar prefers names over ids when it extracts as
/// root, and `root` maps to uid/gid 0 on every Linux system, so the result is the same as the
/// numeric ids; the names make `tar -tv` read `root/root` like the upstream bundle.
const OWNER_NAME: &str = "root";

/// One written artifact, as recorded in the manifest and SHA256SUMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactInfo {
    /// The file name in the output directory.
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Hex,
}

/// Write `overlay.tar.gz` to `dest` atomically.
pub fn write_tar_gz(overlay: &Overlay, dest: &Path, mtime: u64, interrupt: &Interrupt) -> Result<ArtifactInfo> {
    write_gz(dest, |gz| write_tar(overlay, gz, mtime, interrupt).map(drop))
}

/// Write `overlay.cpio.gz` to `dest` atomically.
pub fn write_cpio_gz(overlay: &Overlay, dest: &Path, mtime: u64, interrupt: &Interrupt) -> Result<ArtifactInfo> {
    write_gz(dest, |gz| write_cpio(overlay, gz, mtime, interrupt).map(drop))
}

/// Write both archives into `out_dir`, each on its own thread: compression dominates and the
/// two streams share nothing but the (read-only) overlay. Returns `[tar, cpio]`.
///
/// If one fails the other still runs to completion and is committed; it is a complete,
/// correct archive, and the build as a whole still fails with the first error.
pub fn write_both(overlay: &Overlay, out_dir: &Path, mtime: u64, interrupt: &Interrupt) -> Result<[ArtifactInfo; 2]> {
    let tar_dest = out_dir.join(TAR_GZ_NAME);
    let cpio_dest = out_dir.join(CPIO_GZ_NAME);
    cpio_mtime(mtime)?;
    let (tar, cpio) = std::thread::scope(|s| {
        let tar = s.spawn(|| write_tar_gz(overlay, &tar_dest, mtime, interrupt));
        let cpio = write_cpio_gz(overlay, &cpio_dest, mtime, interrupt);
        // A panic in the writer is a bug, not an I/O condition: let it propagate as one.
        let tar = tar.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (tar, cpio)
    });
    Ok([tar?, cpio?])
}

/// Stream gzip into an atomic file, hashing the compressed bytes as they go out. Shared with
/// the image writers, whose archives must match these byte for byte in gzip framing.
pub(crate) fn write_gz(
    dest: &Path,
    body: impl FnOnce(&mut GzEncoder<HashingWriter<AtomicFile>>) -> Result<()>,
) -> Result<ArtifactInfo> {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a UTF-8 file name", dest.display()))?
        .to_owned();
    let file = AtomicFile::create(dest)?;
    // No file name and mtime 0 in the gzip header: nothing about this build host or moment.
    let mut gz =
        GzBuilder::new().operating_system(GZIP_OS_UNIX).write(HashingWriter::new(file), Compression::new(GZIP_LEVEL));
    body(&mut gz).with_context(|| format!("writing {}", dest.display()))?;
    let hashing = gz.finish().with_context(|| format!("writing {}", dest.display()))?;
    let (file, sha256, size) = hashing.finish();
    file.commit(0o644)?;
    Ok(ArtifactInfo { name, size, sha256 })
}

/// Write the overlay as an uncompressed GNU tar stream to `w`.
pub fn write_tar<W: Write>(overlay: &Overlay, w: W, mtime: u64, interrupt: &Interrupt) -> Result<W> {
    let mut tar = tar::Builder::new(w);
    for (path, entry) in overlay.iter() {
        interrupt.check()?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_username(OWNER_NAME)?;
        h.set_groupname(OWNER_NAME)?;
        h.set_mtime(mtime);
        h.set_mode(entry.mode);
        let added = match &entry.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                // A trailing slash, as GNU tar itself writes directory names.
                tar.append_data(&mut h, format!("{}/", path.as_str()), io::empty())
            }
            EntryKind::File(content) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(content.size());
                let reader = ContentReader::open(path, content, interrupt)?;
                tar.append_data(&mut h, path.as_str(), reader)
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, path.as_str(), target)
            }
        };
        added.with_context(|| format!("adding {path} to the tar archive"))?;
    }
    tar.into_inner().context("finishing the tar archive")
}

/// Write the overlay as an uncompressed newc cpio stream (with its trailer) to `w`.
///
/// Inode numbers are the entry's position (from 1), so they are stable and distinct within
/// the archive. Every entry has `nlink` 1 (2 for directories): the kernel and GNU cpio only
/// pair entries up by inode for regular files with more links, so the numbers cannot collide
/// with those of an initramfs this archive is appended to.
pub fn write_cpio<W: Write>(overlay: &Overlay, mut w: W, mtime: u64, interrupt: &Interrupt) -> Result<W> {
    use cpio::newc::{Builder, ModeFileType};
    let mtime = cpio_mtime(mtime)?;
    for (index, (path, entry)) in overlay.iter().enumerate() {
        interrupt.check()?;
        let ino = u32::try_from(index + 1).context("too many entries for a cpio archive")?;
        let header = Builder::new(path.as_str()).ino(ino).uid(0).gid(0).mtime(mtime).mode(entry.mode);
        let written = match &entry.kind {
            EntryKind::Dir => {
                let header = header.nlink(2).set_mode_file_type(ModeFileType::Directory);
                finish_cpio_entry(header.write(&mut w, 0), 0, 0)
            }
            EntryKind::File(content) => {
                let size = u32::try_from(content.size()).map_err(|_| {
                    anyhow::anyhow!("{path} is {} bytes, more than newc cpio can hold (4 GiB)", content.size())
                })?;
                let mut out = header.set_mode_file_type(ModeFileType::Regular).write(&mut w, size);
                let mut reader = ContentReader::open(path, content, interrupt)?;
                let copied = interrupt.copy(&mut reader, &mut out);
                copied.and_then(|n| finish_cpio_entry(out, n, size))
            }
            EntryKind::Symlink(target) => {
                // A symlink's data is its target, without a terminating NUL.
                let size = u32::try_from(target.len()).context("symlink target too long")?;
                let mut out = header.set_mode_file_type(ModeFileType::Symlink).write(&mut w, size);
                let copied = out.write_all(target.as_bytes()).map(|()| u64::from(size));
                copied.and_then(|n| finish_cpio_entry(out, n, size))
            }
        };
        written.with_context(|| format!("adding {path} to the cpio archive"))?;
    }
    cpio::newc::trailer(&mut w).context("writing the cpio trailer")?;
    Ok(w)
}

/// `cpio::newc::Writer::finish` quietly skips the padding when fewer bytes arrived than the
/// header declared, leaving a corrupt archive; refuse that here instead.
fn finish_cpio_entry<W: Write>(out: cpio::newc::Writer<W>, written: u64, declared: u32) -> io::Result<()> {
    if written != u64::from(declared) {
        return Err(io::Error::other(format!("wrote {written} bytes where the header declared {declared}")));
    }
    out.finish().map(drop)
}

/// Reads a file entry's content for an archive: polls the interrupt flag on every read,
/// fails if the content ends before the size the header already declared, and checks the
/// bytes against the digest the overlay recorded (which the manifest will publish).
struct ContentReader<'a> {
    inner: Box<dyn Read + 'a>,
    path: &'a OverlayPath,
    interrupt: &'a Interrupt,
    remaining: u64,
    size: u64,
    expected: Sha256Hex,
    hasher: Sha256,
    verified: bool,
}

impl<'a> ContentReader<'a> {
    fn open(path: &'a OverlayPath, content: &'a Content, interrupt: &'a Interrupt) -> Result<Self> {
        let inner = content.open().with_context(|| format!("opening the content of {path}"))?;
        Ok(Self {
            inner,
            path,
            interrupt,
            remaining: content.size(),
            size: content.size(),
            expected: content.sha256(),
            hasher: Sha256::new(),
            verified: false,
        })
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt.check()?;
        if self.remaining == 0 {
            if !self.verified {
                let actual = Sha256Hex(std::mem::take(&mut self.hasher).finalize().into());
                if actual != self.expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: content has sha256 {actual}, expected {}; it changed during the build",
                            self.path, self.expected
                        ),
                    ));
                }
                self.verified = true;
            }
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: content ended after {} of {} bytes", self.path, self.size - self.remaining, self.size),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The newc header holds a 32-bit mtime. Checked before either archive is started, so
/// `write_both` never commits a tarball for a build whose cpio cannot exist.
fn cpio_mtime(mtime: u64) -> Result<u32> {
    u32::try_from(mtime).map_err(|_| anyhow::anyhow!("mtime {mtime} is after 2106 and does not fit a cpio header"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Origin;

    fn rendered() -> Origin {
        Origin::Rendered { renderer: "test".into() }
    }

    fn sample() -> Overlay {
        let mut o = Overlay::new();
        o.add_file("etc/crictl.yaml", 0o644, Content::Inline(b"runtime-endpoint: x\n".to_vec()), rendered()).unwrap();
        o.add_file("usr/local/bin/ctr", 0o755, Content::Inline(vec![0x7f; 3000]), rendered()).unwrap();
        o.add_symlink("usr/local/bin/k", "/usr/bin/kubectl", rendered()).unwrap();
        o.add_dir("etc/secret", 0o700, rendered()).unwrap();
        let long = format!("opt/{}/file", "d".repeat(120));
        o.add_file(&long, 0o600, Content::Inline(Vec::new()), rendered()).unwrap();
        o
    }

    fn tar_bytes(o: &Overlay, mtime: u64) -> Vec<u8> {
        write_tar(o, Vec::new(), mtime, &Interrupt::default()).unwrap()
    }

    fn cpio_bytes(o: &Overlay, mtime: u64) -> Vec<u8> {
        write_cpio(o, Vec::new(), mtime, &Interrupt::default()).unwrap()
    }

    #[test]
    fn tar_headers_come_from_the_overlay_only() {
        let bytes = tar_bytes(&sample(), 1_700_000_000);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username().unwrap(), Some("root"));
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((e.path().unwrap().display().to_string(), h.mode().unwrap(), link));
        }
        let long = format!("opt/{}/file", "d".repeat(120));
        assert_eq!(seen[0], ("etc/".into(), 0o755, None));
        assert_eq!(seen[2], ("etc/secret/".into(), 0o700, None));
        assert!(seen.contains(&(long, 0o600, None)), "{seen:?}");
        assert_eq!(seen.last().unwrap(), &("usr/local/bin/k".into(), 0o777, Some("/usr/bin/kubectl".into())));
        assert_eq!(seen.len(), sample().len());
    }

    #[test]
    fn archives_are_reproducible_and_follow_mtime() {
        let o = sample();
        assert_eq!(tar_bytes(&o, 5), tar_bytes(&o, 5));
        assert_ne!(tar_bytes(&o, 5), tar_bytes(&o, 6));
        assert_eq!(cpio_bytes(&o, 5), cpio_bytes(&o, 5));
        assert_ne!(cpio_bytes(&o, 5), cpio_bytes(&o, 6));
        assert!(cpio_mtime(u64::from(u32::MAX) + 1).is_err());
    }

    #[test]
    fn cpio_entries_have_types_inodes_and_a_trailer() {
        let bytes = cpio_bytes(&sample(), 9);
        let mut rest = &bytes[..];
        let mut seen = Vec::new();
        loop {
            let r = cpio::newc::Reader::new(rest).unwrap();
            let e = r.entry();
            if e.is_trailer() {
                rest = r.finish().unwrap();
                break;
            }
            seen.push((e.name().to_owned(), e.ino(), e.mode(), e.mtime(), e.file_size()));
            rest = r.finish().unwrap();
        }
        assert!(rest.is_empty(), "bytes after the trailer");
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(seen[0], ("etc".into(), 1, 0o040755, 9, 0));
        assert_eq!(seen[1], ("etc/crictl.yaml".into(), 2, 0o100644, 9, 20));
        assert_eq!(seen.last().unwrap(), &("usr/local/bin/k".into(), sample().len() as u32, 0o120777, 9, 16));
    }

    #[test]
    fn content_that_changed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"original").unwrap();
        let sha256 = Sha256Hex(Sha256::digest(b"original").into());
        let mut o = Overlay::new();
        o.add_file("usr/bin/blob", 0o755, Content::OnDisk { path: path.clone(), size: 8, sha256 }, rendered()).unwrap();
        assert!(write_cpio(&o, Vec::new(), 0, &Interrupt::default()).is_ok());
        std::fs::write(&path, b"changed!").unwrap();
        for err in [
            write_tar(&o, Vec::new(), 0, &Interrupt::default()).unwrap_err(),
            write_cpio(&o, Vec::new(), 0, &Interrupt::default()).unwrap_err(),
        ] {
            assert!(format!("{err:#}").contains("changed during the build"), "{err:#}");
        }
    }

    #[test]
    fn an_interrupt_stops_the_writers() {
        let interrupt = Interrupt::default();
        interrupt.set();
        let err = write_tar(&sample(), Vec::new(), 0, &interrupt).unwrap_err();
        assert!(err.chain().any(|e| e.to_string().contains("interrupted")), "{err:#}");
        assert!(write_cpio(&sample(), Vec::new(), 0, &interrupt).is_err());
    }
}
