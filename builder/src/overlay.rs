//! The overlay: the tree nodeforge lays over a node's `/`, as a value.
//!
//! An ordered map from path to entry. Sources (the upstream release, renderers, static
//! files, preloaded images) add entries; writers (tar, cpio, manifest) only read it. The map
//! is sorted by path bytes, which puts every directory before what it contains, so writers
//! can stream it in order and produce the same bytes every time.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;

/// A normalised path relative to `/`: no leading `/`, no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct OverlayPath(String);

impl OverlayPath {
    /// Accepts `etc/foo`, `/etc/foo` and `./etc/foo`; refuses anything that could point
    /// outside the root or is ambiguous.
    pub fn new(path: &str) -> Result<Self> {
        let trimmed = path.trim_start_matches("./").trim_start_matches('/');
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            bail!("path `{path}` names the root itself");
        }
        for c in trimmed.split('/') {
            match c {
                "" | "." | ".." => bail!("path `{path}` has an empty, `.` or `..` component"),
                _ if c.contains('\0') => bail!("path `{path}` contains a NUL byte"),
                _ => {}
            }
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parent(&self) -> Option<OverlayPath> {
        self.0.rsplit_once('/').map(|(p, _)| OverlayPath(p.to_owned()))
    }

    pub fn join(&self, name: &str) -> Result<OverlayPath> {
        OverlayPath::new(&format!("{}/{name}", self.0))
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, n)| n)
    }

    /// Absolute form, as the node sees it.
    pub fn absolute(&self) -> String {
        format!("/{}", self.0)
    }
}

impl fmt::Display for OverlayPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// Where an entry came from; recorded per file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// A file selected from an upstream release artifact.
    Upstream { artifact: String, sha256: Sha256Hex, member: String },
    /// A file generated from the profile by the named renderer.
    Rendered { renderer: String },
    /// A file copied from the repository's `overlays/` tree.
    Static { source: String },
    /// An image archive named by the profile, for import at first boot.
    Image { reference: String, sha256: Sha256Hex },
    /// A file, link or directory from a site overlay (`[[overlay]]`): `overlay` is its path as
    /// the profile writes it, `member` the path inside it, `sha256` the digest of the tar
    /// archive, or of a directory's listing (the `site` module says how).
    Site { overlay: String, member: String, sha256: Sha256Hex },
    /// A directory created because something was placed inside it.
    Parent,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Upstream { artifact, member, .. } => write!(f, "upstream {artifact} (member {member})"),
            Origin::Rendered { renderer } => write!(f, "nodeforge's `{renderer}` renderer"),
            Origin::Static { source } => write!(f, "nodeforge's static file {source}"),
            Origin::Image { reference, .. } => write!(f, "the preloaded image {reference}"),
            Origin::Site { overlay, member, .. } => write!(f, "site overlay {overlay} (member {member})"),
            Origin::Parent => f.write_str("a parent directory nodeforge creates"),
        }
    }
}

/// The bytes of a file entry.
#[derive(Debug, Clone)]
pub enum Content {
    /// Small generated files.
    Inline(Vec<u8>),
    /// A file on disk (staged from a release, or an image archive in the cache), already
    /// hashed when it was written.
    OnDisk { path: PathBuf, size: u64, sha256: Sha256Hex },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Inline(b) => b.len() as u64,
            Content::OnDisk { size, .. } => *size,
        }
    }

    pub fn sha256(&self) -> Sha256Hex {
        match self {
            Content::Inline(b) => Sha256Hex(Sha256::digest(b).into()),
            Content::OnDisk { sha256, .. } => *sha256,
        }
    }

    /// A reader over the bytes. For on-disk content the size is checked against what was
    /// recorded, so a file changed underneath the build fails it rather than producing an
    /// archive whose headers lie.
    pub fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Content::Inline(b) => Ok(Box::new(&b[..])),
            Content::OnDisk { path, size, .. } => {
                let f = File::open(path)?;
                let actual = f.metadata()?.len();
                if actual != *size {
                    return Err(io::Error::other(format!(
                        "{} changed during the build: {actual} bytes, expected {size}",
                        path.display()
                    )));
                }
                Ok(Box::new(f.take(*size)))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum EntryKind {
    Dir,
    File(Content),
    Symlink(String),
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// Permission bits only (`0o755`); the type comes from `kind`. Owner is always root.
    pub mode: u32,
    pub kind: EntryKind,
    pub origin: Origin,
}

#[derive(Debug, Default, Clone)]
pub struct Overlay {
    entries: BTreeMap<OverlayPath, Entry>,
}

impl Overlay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry, creating missing parent directories (0755). A path added twice is an
    /// error naming both origins: two sources disagreeing about a file is a bug to surface,
    /// not something to resolve by order of arrival.
    pub fn insert(&mut self, path: OverlayPath, entry: Entry) -> Result<()> {
        if entry.mode & !0o7777 != 0 {
            bail!("{path}: mode {:o} has bits beyond permissions", entry.mode);
        }
        let mut parent = path.parent();
        while let Some(p) = parent {
            match self.entries.get(&p) {
                Some(Entry { kind: EntryKind::Dir, .. }) => {}
                Some(other) => bail!("{path}: parent {p} is not a directory (it comes from {})", other.origin),
                None => {
                    self.entries.insert(p.clone(), Entry { mode: 0o755, kind: EntryKind::Dir, origin: Origin::Parent });
                }
            }
            parent = p.parent();
        }
        if let Some(existing) = self.entries.get_mut(&path) {
            // An explicit directory may refine one created implicitly as a parent.
            if let (EntryKind::Dir, EntryKind::Dir, Origin::Parent) = (&existing.kind, &entry.kind, &existing.origin) {
                *existing = entry;
                return Ok(());
            }
            bail!("{path} is added twice: by {} and by {}", existing.origin, entry.origin);
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    pub fn add_file(&mut self, path: &str, mode: u32, content: Content, origin: Origin) -> Result<()> {
        self.insert(OverlayPath::new(path)?, Entry { mode, kind: EntryKind::File(content), origin })
    }

    pub fn add_symlink(&mut self, path: &str, target: &str, origin: Origin) -> Result<()> {
        self.insert(OverlayPath::new(path)?, Entry { mode: 0o777, kind: EntryKind::Symlink(target.to_owned()), origin })
    }

    pub fn add_dir(&mut self, path: &str, mode: u32, origin: Origin) -> Result<()> {
        self.insert(OverlayPath::new(path)?, Entry { mode, kind: EntryKind::Dir, origin })
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        OverlayPath::new(path).ok().and_then(|p| self.entries.get(&p))
    }

    pub fn get_path(&self, path: &OverlayPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Put `entry` in place of the file or symlink at `path`, returning the one it replaces.
    /// Only a non-directory replaces a non-directory: a directory's contents would be orphaned,
    /// and a file where a directory was would be a different tree.
    pub fn replace(&mut self, path: &OverlayPath, entry: Entry) -> Result<Entry> {
        if entry.mode & !0o7777 != 0 {
            bail!("{path}: mode {:o} has bits beyond permissions", entry.mode);
        }
        let Some(existing) = self.entries.get_mut(path) else { bail!("{path}: nothing to replace") };
        if matches!(existing.kind, EntryKind::Dir) || matches!(entry.kind, EntryKind::Dir) {
            bail!("{path}: a directory cannot replace or be replaced by a file (from {})", existing.origin);
        }
        Ok(std::mem::replace(existing, entry))
    }

    /// Entries in path order: every directory before its contents.
    pub fn iter(&self) -> impl Iterator<Item = (&OverlayPath, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> Origin {
        Origin::Rendered { renderer: "test".into() }
    }

    #[test]
    fn paths_are_normalised_and_checked() {
        assert_eq!(OverlayPath::new("/etc/x").unwrap().as_str(), "etc/x");
        assert_eq!(OverlayPath::new("./etc/x/").unwrap().as_str(), "etc/x");
        for bad in ["", "/", "etc/../x", "etc//x", "a/./b"] {
            assert!(OverlayPath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parents_come_first_and_duplicates_fail() {
        let mut o = Overlay::new();
        o.add_file("usr/local/bin/ctr", 0o755, Content::Inline(b"x".to_vec()), rendered()).unwrap();
        o.add_file("usr/local-x", 0o644, Content::Inline(vec![]), rendered()).unwrap();
        o.add_dir("usr/local", 0o755, rendered()).unwrap();
        let order: Vec<_> = o.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["usr", "usr/local", "usr/local-x", "usr/local/bin", "usr/local/bin/ctr"]);
        let err = o.add_file("usr/local/bin/ctr", 0o755, Content::Inline(vec![]), rendered()).unwrap_err();
        assert!(err.to_string().contains("added twice"), "{err}");
        assert!(o.add_file("usr/local-x/y", 0o644, Content::Inline(vec![]), rendered()).is_err());
    }

    #[test]
    fn replace_swaps_files_only() {
        let mut o = Overlay::new();
        o.add_file("etc/a", 0o644, Content::Inline(b"x".to_vec()), rendered()).unwrap();
        let site = Origin::Site { overlay: "s".into(), member: "etc/a".into(), sha256: Sha256Hex([1; 32]) };
        let file = |origin: Origin| Entry { mode: 0o600, kind: EntryKind::File(Content::Inline(vec![])), origin };
        let path = OverlayPath::new("etc/a").unwrap();
        let old = o.replace(&path, file(site.clone())).unwrap();
        assert_eq!(old.origin, rendered());
        assert_eq!((o.get("etc/a").unwrap().mode, &o.get("etc/a").unwrap().origin), (0o600, &site));
        let etc = OverlayPath::new("etc").unwrap();
        assert!(o.replace(&etc, file(site.clone())).is_err(), "a file replaced a directory");
        let dir = Entry { mode: 0o755, kind: EntryKind::Dir, origin: site.clone() };
        assert!(o.replace(&path, dir).is_err(), "a directory replaced a file");
        assert!(o.replace(&OverlayPath::new("etc/b").unwrap(), file(site)).is_err(), "replaced nothing");
        assert_eq!(site_text(), "site overlay overlays/x (member etc/y)");
    }

    fn site_text() -> String {
        Origin::Site { overlay: "overlays/x".into(), member: "etc/y".into(), sha256: Sha256Hex([0; 32]) }.to_string()
    }
}
