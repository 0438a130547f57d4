//! The one loop every release archive (and every tar a site overlay names) is read with: stream
//! it once, admit each entry through the [`EntryGuard`], stage the files the caller keeps, and
//! resolve a hard link to the file staged for its target. What to keep, and where it goes, is
//! the caller's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{EntryGuard, Limits, Unpacked, open_tar_gz, read_error, stage};
use crate::digest::Sha256Hex;
use crate::io::Interrupt;
use crate::overlay::Content;

/// An archive member copied to a staging file.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Hex,
}

impl Staged {
    pub(crate) fn content(&self) -> Content {
        Content::OnDisk { path: self.path.clone(), size: self.size, sha256: self.sha256 }
    }
}

/// One walk's state, handed to the visitor with every admitted entry.
pub(crate) struct Walker<'a> {
    name: &'a str,
    staging: &'a Path,
    interrupt: &'a Interrupt,
    guard: EntryGuard<'a>,
    /// Staged files by member name, so a hard link inside the archive can reuse one.
    staged: BTreeMap<String, Staged>,
}

impl Walker<'_> {
    /// Copy `member`'s bytes from `r` to the next numbered file under the staging directory
    /// (one per archive: the numbers start at 0), hashing them as they pass.
    pub(crate) fn stage(&mut self, member: &str, r: &mut impl Read) -> Result<Staged> {
        let path = self.staging.join(self.staged.len().to_string());
        let (size, sha256) = stage(r, &path, self.interrupt)?;
        let staged = Staged { path, size, sha256 };
        self.staged.insert(member.to_owned(), staged.clone());
        Ok(staged)
    }

    /// The staged file a hard-link entry points to; a link to anything not staged before it
    /// is refused.
    pub(crate) fn link<R: Read>(&self, member: &str, entry: &tar::Entry<'_, R>) -> Result<Staged> {
        let target = self.guard.link_target(entry)?;
        match self.staged.get(&target) {
            Some(s) => Ok(s.clone()),
            None => bail!("{}: hard link `{member}` points to `{target}`, which nodeforge did not keep", self.name),
        }
    }
}

/// Stream the gzip'd tar `archive` (`name` in messages) once, handing every entry the guard
/// admits to `visit` with its normalised member name. Checks for a signal between entries.
pub(crate) fn walk(
    archive: &Path,
    name: &str,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
    visit: impl FnMut(&mut Walker<'_>, String, &mut tar::Entry<'_, Unpacked>) -> Result<()>,
) -> Result<()> {
    walk_tar(open_tar_gz(archive, name, limits)?, name, staging, limits, interrupt, visit)
}

/// [`walk`] over a tar stream opened by the caller (already capped at
/// `limits.max_unpacked_bytes`), compressed or not.
pub(crate) fn walk_tar<R: Read>(
    mut tar: tar::Archive<R>,
    name: &str,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
    mut visit: impl FnMut(&mut Walker<'_>, String, &mut tar::Entry<'_, R>) -> Result<()>,
) -> Result<()> {
    let mut walker =
        Walker { name, staging, interrupt, guard: EntryGuard::new(name, limits.max_entries), staged: BTreeMap::new() };
    for entry in tar.entries().with_context(|| format!("reading {name}"))? {
        interrupt.check()?;
        let mut entry = entry.map_err(|e| read_error(name, e))?;
        let Some(member) = walker.guard.admit(&entry)? else { continue };
        visit(&mut walker, member, &mut entry)?;
    }
    Ok(())
}
