//! The node's root tree on disk: the base (a directory or a tar archive) copied into a
//! private staging directory, with the overlay applied on top, ready for `mkfs.ext4 -d`.
//!
//! The staging tree belongs to the node, not to this host. Its symlinks (`/lib -> usr/lib`,
//! `/sbin/init -> /lib/systemd/systemd`) are resolved against the staging root by hand and
//! never followed by the host's kernel, or an absolute link would write into the host's
//! `/usr`. Overlay files replace what is there by unlinking it first, so a base file with
//! several hard links is never written through.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use filetime::FileTime;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;
use crate::io::{HashingReader, Interrupt};
use crate::overlay::{EntryKind, Overlay};

/// How deep a chain of symlinks may go while resolving a path, as the kernel's own limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// What staging the base produced.
#[derive(Debug)]
pub struct StagedBase {
    /// A digest of the base's content (the archive's bytes, or a listing of the directory),
    /// for deriving the filesystem's identity.
    pub digest: Sha256Hex,
    /// Device nodes, FIFOs and sockets in a directory base, left out (std cannot create
    /// them; `/dev` is a devtmpfs on the node anyway).
    pub skipped_special: Vec<String>,
}

/// Copy or unpack `base` into the empty directory `root`, keeping owners, modes and mtimes.
pub fn stage_base(base: &Path, root: &Path, interrupt: &Interrupt) -> Result<StagedBase> {
    let meta = fs::metadata(base).with_context(|| format!("reading the base {}", base.display()))?;
    if meta.is_dir() {
        let mut hasher = Sha256::new();
        let mut skipped = Vec::new();
        copy_tree(base, root, Path::new(""), &mut hasher, &mut skipped, interrupt)
            .with_context(|| format!("copying the base {} into {}", base.display(), root.display()))?;
        Ok(StagedBase { digest: Sha256Hex(hasher.finalize().into()), skipped_special: skipped })
    } else {
        let digest = unpack_tar(base, root, interrupt)
            .with_context(|| format!("unpacking the base {} into {}", base.display(), root.display()))?;
        Ok(StagedBase { digest, skipped_special: Vec::new() })
    }
}

/// Unpack a tar (optionally gzip'd) with the tar crate, which refuses members that would land
/// outside `root`; hash the file's bytes on the way through.
fn unpack_tar(path: &Path, root: &Path, interrupt: &Interrupt) -> Result<Sha256Hex> {
    let mut file = BufReader::with_capacity(1 << 20, crate::io::open_regular(path)?);
    let gzip = {
        let head = io::BufRead::fill_buf(&mut file)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let mut hashing = HashingReader::new(file);
    {
        let reader: Box<dyn Read + '_> =
            if gzip { Box::new(flate2::read::GzDecoder::new(&mut hashing)) } else { Box::new(&mut hashing) };
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        // A directory's mtime moves whenever something is unpacked into it, and the tar crate
        // sets none on symlinks: both are pinned from their headers once everything is in.
        let mut times = Vec::new();
        for entry in archive.entries()? {
            interrupt.check()?;
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                continue; // see StagedBase::skipped_special
            }
            let name = entry.path()?.into_owned();
            entry.unpack_in(root).with_context(|| format!("unpacking {}", name.display()))?;
            if kind.is_dir() || kind.is_symlink() {
                let mtime = i64::try_from(entry.header().mtime()?).unwrap_or(0);
                times.push((root.join(&name), FileTime::from_unix_time(mtime, 0)));
            }
        }
        for (path, t) in times {
            filetime::set_symlink_file_times(&path, t, t).with_context(|| format!("touch {}", path.display()))?;
        }
    }
    // Hash to the end of the file: tar stops reading at the end-of-archive blocks.
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish().0)
}

/// Recursive copy of a directory base, in name order (so the digest is stable).
fn copy_tree(
    src: &Path,
    dst: &Path,
    rel: &Path,
    hasher: &mut Sha256,
    skipped: &mut Vec<String>,
    interrupt: &Interrupt,
) -> Result<()> {
    let mut links: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    copy_dir(src, dst, rel, hasher, skipped, &mut links, interrupt)
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    rel: &Path,
    hasher: &mut Sha256,
    skipped: &mut Vec<String>,
    links: &mut BTreeMap<(u64, u64), PathBuf>,
    interrupt: &Interrupt,
) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        interrupt.check()?;
        let (from, to, r) = (src.join(&name), dst.join(&name), rel.join(&name));
        let m = fs::symlink_metadata(&from).with_context(|| format!("reading {}", from.display()))?;
        let ft = m.file_type();
        hasher.update(format!(
            "{}\0{:o}\0{}\0{}\0{}\0{}\0",
            r.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime()
        ));
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_dir(&from, &to, &r, hasher, skipped, links, interrupt)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from)?;
            hasher.update(target.as_os_str().as_encoded_bytes());
            symlink(&target, &to)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    fs::hard_link(first, &to)?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), to.clone());
            }
            fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        } else {
            skipped.push(format!("/{}", r.display()));
            continue;
        }
        set_meta(&to, m.uid(), m.gid(), m.mode() & 0o7777, FileTime::from_last_modification_time(&m), ft.is_symlink())?;
    }
    Ok(())
}

/// Owner first: chown clears set-id bits, so the mode is set after it.
fn set_meta(path: &Path, uid: u32, gid: u32, mode: u32, mtime: FileTime, is_symlink: bool) -> Result<()> {
    lchown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    filetime::set_symlink_file_times(path, mtime, mtime).with_context(|| format!("touch {}", path.display()))?;
    Ok(())
}

/// Resolve `rel` (relative to the node's `/`) to a host path inside `root`, following the
/// node's symlinks as the node would see them. With `follow_last` false the final component
/// is not followed (to replace a symlink rather than its target). Missing components are
/// allowed only in the last position.
pub fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf> {
    let mut pending: Vec<String> = rel.split('/').filter(|c| !c.is_empty()).rev().map(str::to_owned).collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                current.pop(); // `..` at the node's root stays there, as on the node
                continue;
            }
            _ => {}
        }
        let host = current.iter().fold(root.to_owned(), |p, c| p.join(c)).join(&c);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !is_last) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    bail!("too many levels of symbolic links resolving /{rel}");
                }
                let target = fs::read_link(&host)?;
                if target.is_absolute() {
                    current.clear();
                }
                // Push the target's components in front of what is still to resolve.
                let comps: Vec<String> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                pending.extend(comps.into_iter().rev());
            }
            Ok(_) => current.push(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound && is_last => current.push(c),
            Err(e) => return Err(e).with_context(|| format!("resolving /{rel} in {}", root.display())),
        }
    }
    Ok(current.iter().fold(root.to_owned(), |p, c| p.join(c)))
}

/// Apply the overlay on top of the staged base, the way `tar --no-overwrite-dir -C / -xf
/// overlay.tar.gz` would on the node (the README's recipe): directories that exist keep their
/// metadata (a directory symlink such as `/lib` stays a symlink), files and symlinks replace
/// whatever is at their path. Overlay entries are owned by root with mtime `mtime`.
pub fn apply_overlay(root: &Path, overlay: &Overlay, mtime: u64, interrupt: &Interrupt) -> Result<()> {
    let time = FileTime::from_unix_time(i64::try_from(mtime).context("mtime out of range")?, 0);
    let mut touched_dirs = Vec::new();
    for (path, entry) in overlay.iter() {
        interrupt.check()?;
        let parent = match path.parent() {
            Some(p) => resolve_in_root(root, p.as_str(), true)?,
            None => root.to_owned(),
        };
        if !parent.is_dir() {
            bail!("cannot place {path}: its parent is not a directory in the base");
        }
        let dest = parent.join(path.file_name());
        let existing = fs::symlink_metadata(&dest).ok();
        match &entry.kind {
            EntryKind::Dir => {
                let resolved = resolve_in_root(root, path.as_str(), true)?;
                if resolved.is_dir() {
                    continue; // --no-overwrite-dir
                }
                if existing.is_some() {
                    fs::remove_file(&dest).with_context(|| format!("replacing {path}"))?;
                }
                fs::create_dir(&dest).with_context(|| format!("creating {path}"))?;
                set_meta(&dest, 0, 0, entry.mode, time, false)?;
                touched_dirs.push(dest);
                touched_dirs.push(parent);
            }
            EntryKind::File(content) => {
                remove_non_dir(&dest, existing.as_ref(), path.as_str())?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .with_context(|| format!("creating {path}"))?;
                let mut reader = HashingReader::new(content.open().with_context(|| format!("opening {path}"))?);
                interrupt.copy(&mut reader, &mut out).with_context(|| format!("writing {path}"))?;
                out.flush()?;
                let (sha256, size) = reader.finish();
                if sha256 != content.sha256() || size != content.size() {
                    bail!("{path}: content changed during the build");
                }
                set_meta(&dest, 0, 0, entry.mode, time, false)?;
                touched_dirs.push(parent);
            }
            EntryKind::Symlink(target) => {
                remove_non_dir(&dest, existing.as_ref(), path.as_str())?;
                symlink(target, &dest).with_context(|| format!("creating {path}"))?;
                set_meta(&dest, 0, 0, 0o777, time, true)?;
                touched_dirs.push(parent);
            }
        }
    }
    // Adding entries bumped the parents' mtimes to now; pin them for reproducible disks.
    for d in touched_dirs {
        filetime::set_symlink_file_times(&d, time, time).with_context(|| format!("touch {}", d.display()))?;
    }
    Ok(())
}

fn remove_non_dir(dest: &Path, existing: Option<&fs::Metadata>, path: &str) -> Result<()> {
    match existing {
        Some(m) if m.is_dir() => bail!("/{path}: the base has a directory where the overlay has a file"),
        Some(_) => fs::remove_file(dest).with_context(|| format!("replacing /{path}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{Content, Origin};

    fn origin() -> Origin {
        Origin::Rendered { renderer: "t".into() }
    }

    #[test]
    fn node_symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        fs::create_dir(root.join("sbin")).unwrap();
        symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        symlink("/etc", root.join("usr/escape")).unwrap();
        assert_eq!(resolve_in_root(root, "lib/systemd", true).unwrap(), root.join("usr/lib/systemd"));
        assert_eq!(resolve_in_root(root, "sbin/init", true).unwrap(), root.join("usr/lib/systemd/systemd"));
        assert_eq!(resolve_in_root(root, "sbin/init", false).unwrap(), root.join("sbin/init"));
        // An absolute link means the node's /etc, never the host's.
        assert_eq!(resolve_in_root(root, "usr/escape/x", true).unwrap(), root.join("etc/x"));
        assert_eq!(resolve_in_root(root, "../../x", true).unwrap(), root.join("x"));
    }

    #[test]
    fn overlay_replaces_without_writing_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        fs::write(root.join("usr/bin/shared"), b"base").unwrap();
        fs::hard_link(root.join("usr/bin/shared"), root.join("etc/other-name")).unwrap();
        symlink("/etc/host-file", root.join("etc/link")).unwrap();

        let mut o = Overlay::new();
        o.add_file("bin/shared", 0o755, Content::Inline(b"overlay".to_vec()), origin()).unwrap();
        o.add_file("etc/link", 0o644, Content::Inline(b"file".to_vec()), origin()).unwrap();
        o.add_dir("etc/new", 0o700, origin()).unwrap();
        apply_overlay(&root, &o, 7, &Interrupt::default()).unwrap();

        assert!(fs::symlink_metadata(root.join("bin")).unwrap().file_type().is_symlink(), "/bin stays a link");
        assert_eq!(fs::read(root.join("usr/bin/shared")).unwrap(), b"overlay");
        assert_eq!(fs::read(root.join("etc/other-name")).unwrap(), b"base", "wrote through a hard link");
        assert_eq!(fs::read(root.join("etc/link")).unwrap(), b"file");
        let m = fs::metadata(root.join("etc/new")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o700, 7));
        assert_eq!(fs::metadata(root.join("usr/bin/shared")).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn a_directory_base_is_copied_with_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (base, root) = (dir.path().join("base"), dir.path().join("root"));
        fs::create_dir_all(base.join("a")).unwrap();
        fs::write(base.join("a/f"), b"x").unwrap();
        fs::set_permissions(base.join("a/f"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(base.join("a/f"), base.join("a/g")).unwrap();
        symlink("f", base.join("a/l")).unwrap();
        fs::create_dir(&root).unwrap();
        let staged = stage_base(&base, &root, &Interrupt::default()).unwrap();
        assert_eq!(fs::metadata(root.join("a/f")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(fs::metadata(root.join("a/f")).unwrap().ino(), fs::metadata(root.join("a/g")).unwrap().ino());
        assert_eq!(fs::read_link(root.join("a/l")).unwrap(), Path::new("f"));
        let again = dir.path().join("again");
        fs::create_dir(&again).unwrap();
        assert_eq!(stage_base(&base, &again, &Interrupt::default()).unwrap().digest, staged.digest);
    }
}
