//! Reading upstream release archives safely and selecting what a node needs.
//!
//! An upstream archive is hostile input even after its digest matched: the digest proves it
//! is the file the profile pinned, not that the file is well formed. Every entry is checked
//! (path, type, size, links) before anything is kept, and the whole archive is refused on the
//! first bad entry — even entries nodeforge would have skipped — so a build never ships a
//! tree assembled from a half-trusted archive. Site overlays (the `site` module) are admitted by
//! the same walk and [`EntryGuard`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::read::MultiGzDecoder;

use crate::digest::Sha256Hex;
use crate::io::{HashingWriter, Interrupt, LimitReader};
use crate::overlay::{Content, OverlayPath};
use crate::profile::{Arch, Extra};
use crate::version::Version;

mod components;
pub(crate) mod walk;

pub use self::components::{ComponentRequest, check_binary, select_cni_plugins, select_containerd, select_crictl};
use self::walk::walk;

/// Caps on what one archive may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total decompressed bytes (tar headers included).
    pub max_unpacked_bytes: u64,
    /// Entries of any kind.
    pub max_entries: usize,
    /// A single-file download installed as it is (runc, the Kubernetes binaries).
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // The 1.7 bundle unpacks to ~250 MiB in ~60 entries; these leave ample room.
        // A single binary: kubelet is ~120 MiB, runc ~10 MiB.
        Self { max_unpacked_bytes: 4 << 30, max_entries: 20_000, max_file_bytes: 1 << 30 }
    }
}

/// Why an archive was refused. Callers (and tests) match on the kind; the message names the
/// archive and the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeArchive {
    #[error("{archive}: not gzip data (starts with {magic}); expected a .tar.gz")]
    NotGzip { archive: String, magic: String },
    #[error("{archive}: entry `{entry}` has an absolute path")]
    AbsolutePath { archive: String, entry: String },
    #[error("{archive}: entry `{entry}` has a `..` or empty component")]
    DotDot { archive: String, entry: String },
    #[error("{archive}: entry `{entry}` is a {kind}; nodeforge admits only files, directories and links")]
    SpecialFile { archive: String, entry: String, kind: &'static str },
    #[error("{archive}: symlink `{entry}` points outside the archive (to `{target}`)")]
    SymlinkEscapes { archive: String, entry: String, target: String },
    #[error("{archive}: entry `{entry}` would be written through symlink `{link}`")]
    ThroughSymlink { archive: String, entry: String, link: String },
    #[error("{archive}: hard link `{entry}` points to `{target}`, which is not an earlier file in the archive")]
    HardLinkOutside { archive: String, entry: String, target: String },
    #[error("{archive}: path `{entry}` appears twice")]
    Duplicate { archive: String, entry: String },
    #[error("{archive}: more than {limit} entries")]
    TooManyEntries { archive: String, limit: usize },
}

/// What a bundle member becomes on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// An executable for the node's architecture.
    Binary,
    /// Kept as it is (mode 0644, or 0755 if the archive marks it executable).
    Data,
}

/// A selection rule's verdict on one member.
fn classify(member: &str, extras: &BTreeSet<Extra>) -> Option<Keep> {
    const NODE_BINARIES: &[&str] = &[
        "usr/local/bin/containerd",
        "usr/local/bin/containerd-shim",
        "usr/local/bin/containerd-shim-runc-v1",
        "usr/local/bin/containerd-shim-runc-v2",
        "usr/local/bin/ctr",
        "usr/local/bin/crictl",
        "usr/local/sbin/runc",
    ];
    if NODE_BINARIES.contains(&member) || member.strip_prefix("opt/cni/bin/").is_some_and(|n| !n.contains('/')) {
        return Some(Keep::Binary);
    }
    match member {
        "usr/local/bin/critest" if extras.contains(&Extra::Critest) => Some(Keep::Binary),
        "usr/local/bin/containerd-stress" if extras.contains(&Extra::ContainerdStress) => Some(Keep::Binary),
        m if m.starts_with("opt/containerd/cluster/") && extras.contains(&Extra::Cluster) => Some(Keep::Data),
        _ => None,
    }
}

/// Members without which the node cannot run a pod.
const REQUIRED: &[&str] = &[
    "usr/local/bin/containerd",
    "usr/local/bin/containerd-shim-runc-v2",
    "usr/local/bin/ctr",
    "usr/local/sbin/runc",
    "opt/cni/bin/bridge",
    "opt/cni/bin/host-local",
    "opt/cni/bin/loopback",
    "opt/cni/bin/portmap",
];

/// One member kept for the overlay.
#[derive(Debug, Clone)]
pub struct SelectedFile {
    pub path: OverlayPath,
    pub mode: u32,
    pub content: Content,
    /// The member name inside the archive.
    pub member: String,
}

#[derive(Debug, Default)]
pub struct Selection {
    pub files: Vec<SelectedFile>,
    /// Members left out (nodeforge renders its own configs; optional tools stay out).
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

/// What to select from a cri-containerd-cni bundle.
#[derive(Debug, Clone)]
pub struct BundleRequest<'a> {
    /// The artifact's file name, for messages.
    pub name: &'a str,
    pub version: &'a Version,
    pub arch: Arch,
    pub extras: BTreeSet<Extra>,
}

/// A gzip'd tar release archive opened for streaming: refused unless it starts as gzip, and
/// capped at `limits.max_unpacked_bytes` of decompressed data.
pub(crate) type TarGz = tar::Archive<Unpacked>;

/// The decompressed stream of a release archive.
pub(crate) type Unpacked = LimitReader<MultiGzDecoder<BufReader<File>>>;

pub(crate) fn open_tar_gz(archive: &Path, name: &str, limits: Limits) -> Result<TarGz> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut raw = BufReader::with_capacity(256 * 1024, file);
    check_gzip_magic(&mut raw, name)?;
    let unpacked = LimitReader::new(MultiGzDecoder::new(raw), limits.max_unpacked_bytes, format!("{name} unpacked"));
    Ok(tar::Archive::new(unpacked))
}

/// Stream a verified cri-containerd-cni bundle once, validating every entry, and stage the
/// members a node needs as files under `staging` (a directory the caller owns and removes).
pub fn select_bundle(
    archive: &Path,
    req: &BundleRequest<'_>,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<Selection> {
    let name = req.name;
    let mut sel = Selection::default();
    let mut version_file = None;

    walk(archive, name, staging, limits, interrupt, |w, member, entry| {
        let kind = entry.header().entry_type();

        if member == "opt/containerd/cluster/version" && kind.is_file() && entry.size() < 4096 {
            let mut s = String::new();
            entry.take(4096).read_to_string(&mut s).map_err(|e| read_error(name, e))?;
            version_file = Some(s.clone());
            if classify(&member, &req.extras).is_some() {
                let staged = w.stage(&member, &mut s.as_bytes())?;
                sel.files.push(SelectedFile {
                    path: OverlayPath::new(&member)?,
                    mode: 0o644,
                    content: staged.content(),
                    member,
                });
            }
            return Ok(());
        }

        let keep = classify(&member, &req.extras);
        match (kind.is_file(), kind.is_hard_link(), keep) {
            (true, _, Some(keep)) => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let staged = w.stage(&member, entry).map_err(|e| e.context(format!("{name}: {member}")))?;
                let mode = finish_member(&member, keep, mode, &staged.path, req.arch, name)?;
                sel.files.push(SelectedFile {
                    path: OverlayPath::new(&member)?,
                    mode,
                    content: staged.content(),
                    member,
                });
            }
            (_, true, Some(keep)) => {
                let staged = w.link(&member, entry)?;
                let mode = finish_member(&member, keep, 0o755, &staged.path, req.arch, name)?;
                sel.files.push(SelectedFile {
                    path: OverlayPath::new(&member)?,
                    mode,
                    content: staged.content(),
                    member,
                });
            }
            (_, _, _) if kind.is_dir() => {}
            _ => sel.skipped.push(member),
        }
        Ok(())
    })?;

    if let Some(text) = version_file {
        check_version_file(&text, req.version, name)?;
    }
    let kept: BTreeSet<&str> = sel.files.iter().map(|f| f.member.as_str()).collect();
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|m| !kept.contains(m)).collect();
    if !missing.is_empty() {
        bail!(
            "{name} lacks {} — is it a cri-containerd-cni bundle (not the plain containerd-{} archive)?",
            missing.join(", "),
            req.version
        );
    }
    if !kept.contains("usr/local/bin/crictl") {
        sel.warnings.push(format!("{name} has no usr/local/bin/crictl; the node will have no crictl"));
    }
    Ok(sel)
}

pub(crate) fn read_error(archive: &str, e: io::Error) -> anyhow::Error {
    // LimitReader's and Interrupt's errors travel inside io::Error; surface them as they are.
    let wrapped = e
        .get_ref()
        .is_some_and(|inner| inner.is::<crate::io::SizeLimitExceeded>() || inner.is::<crate::io::Interrupted>());
    if wrapped {
        let inner = e.into_inner().expect("checked above");
        return anyhow::anyhow!(inner);
    }
    anyhow::anyhow!("{archive}: corrupt or truncated archive: {e}")
}

pub(crate) fn check_gzip_magic<R: io::BufRead>(r: &mut R, archive: &str) -> Result<()> {
    let head = r.fill_buf().with_context(|| format!("reading {archive}"))?;
    if head.len() < 2 || head[..2] != [0x1f, 0x8b] {
        let magic = head.iter().take(4).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        let magic = if magic.is_empty() { "nothing: the file is empty".to_owned() } else { format!("bytes {magic}") };
        return Err(UnsafeArchive::NotGzip { archive: archive.to_owned(), magic }.into());
    }
    Ok(())
}

/// Copy an entry's bytes to a staging file, hashing as they pass.
pub(crate) fn stage<R: Read>(r: &mut R, dest: &Path, interrupt: &Interrupt) -> Result<(u64, Sha256Hex)> {
    let f = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, f));
    interrupt.copy(r, &mut w).map_err(|e| match e.get_ref() {
        Some(inner) if inner.is::<crate::io::SizeLimitExceeded>() || inner.is::<crate::io::Interrupted>() => {
            anyhow::anyhow!(e.into_inner().expect("checked above"))
        }
        _ => anyhow::anyhow!("corrupt or truncated archive: {e}"),
    })?;
    let (mut inner, sha, n) = w.finish();
    inner.flush()?;
    Ok((n, sha))
}

/// Decide the installed mode; binaries must be ELF executables for the node's architecture,
/// so a release for the wrong arch fails the build instead of the node.
fn finish_member(member: &str, keep: Keep, archive_mode: u32, staged: &Path, arch: Arch, archive: &str) -> Result<u32> {
    match keep {
        Keep::Data => Ok(if archive_mode & 0o111 != 0 { 0o755 } else { 0o644 }),
        Keep::Binary => {
            check_elf(staged, arch, &format!("{archive}: {member}"))?;
            // Modes are set here, never taken from the archive: no setuid bit survives.
            Ok(0o755)
        }
    }
}

/// Refuse a file that is not an ELF executable for `arch`; `what` names it in the message
/// (`<archive>: <entry>`, or the download's file name).
pub(crate) fn check_elf(path: &Path, arch: Arch, what: &str) -> Result<()> {
    let mut head = [0u8; 20];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut head)?;
    if n < 20 || &head[..4] != b"\x7fELF" {
        let hint = match head {
            [0x1f, 0x8b, ..] => " (it is gzip data: an archive, not the binary)",
            [b'#', b'!', ..] => " (it is a script)",
            _ => "",
        };
        bail!("{what} is not an ELF executable{hint}");
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let want = match arch {
        Arch::Amd64 => ELF_X86_64,
        Arch::Arm64 => ELF_AARCH64,
    };
    if machine != want {
        let found = match machine {
            ELF_X86_64 => "amd64 (EM_X86_64)".to_owned(),
            ELF_AARCH64 => "arm64 (EM_AARCH64)".to_owned(),
            m => format!("ELF machine {m}"),
        };
        bail!("{what} is built for {found}, not {arch}");
    }
    Ok(())
}

/// `e_machine` values (the ELF specification's EM_X86_64 and EM_AARCH64).
const ELF_X86_64: u16 = 62;
const ELF_AARCH64: u16 = 183;

fn check_version_file(text: &str, want: &Version, archive: &str) -> Result<()> {
    // `CONTAINERD_VERSION: '1.7.13'` (the tag, sometimes with a leading v).
    let found = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CONTAINERD_VERSION:"))
        .map(|v| v.trim().trim_matches(['\'', '"']).trim_start_matches('v').to_owned());
    match found {
        Some(v) if v.parse::<Version>().is_ok_and(|v| v == *want) => Ok(()),
        Some(v) => bail!(
            "{archive} says it is containerd {v}, but the profile names {want}: check the profile's containerd.version and bundle URL"
        ),
        None => Ok(()),
    }
}

/// Per-archive entry checks: paths, types, duplicates, symlinks and hard links.
pub(crate) struct EntryGuard<'a> {
    archive: &'a str,
    max_entries: usize,
    count: usize,
    seen: BTreeSet<String>,
    symlinks: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl<'a> EntryGuard<'a> {
    pub(crate) fn new(archive: &'a str, max_entries: usize) -> Self {
        Self {
            archive,
            max_entries,
            count: 0,
            seen: BTreeSet::new(),
            symlinks: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn normalise(&self, raw: &[u8]) -> Result<Option<String>, UnsafeArchive> {
        let s = String::from_utf8_lossy(raw);
        if s.starts_with('/') {
            return Err(UnsafeArchive::AbsolutePath { archive: self.archive.into(), entry: s.into_owned() });
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => continue,
                ".." => return Err(UnsafeArchive::DotDot { archive: self.archive.into(), entry: s.into_owned() }),
                c if c.contains('\0') => {
                    return Err(UnsafeArchive::DotDot { archive: self.archive.into(), entry: s.into_owned() });
                }
                c => parts.push(c),
            }
        }
        // The archive's own root (`./`) carries nothing.
        Ok((!parts.is_empty()).then(|| parts.join("/")))
    }

    /// Check one tar entry; returns its normalised path (None for the root entry).
    pub(crate) fn admit<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<Option<String>> {
        let kind = MemberKind::of_tar(entry.header().entry_type());
        let link = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
        self.admit_member(&entry.path_bytes(), kind, &link)
    }

    /// Check one member, from a tar archive or a directory tree: its raw path, what it is, and
    /// (for links) the raw target. Returns its normalised path (None for the root itself).
    pub(crate) fn admit_member(&mut self, raw: &[u8], kind: MemberKind, link: &[u8]) -> Result<Option<String>> {
        self.count += 1;
        if self.count > self.max_entries {
            return Err(UnsafeArchive::TooManyEntries { archive: self.archive.into(), limit: self.max_entries }.into());
        }
        let Some(path) = self.normalise(raw)? else { return Ok(None) };
        if let MemberKind::Special(kind) = kind {
            return Err(UnsafeArchive::SpecialFile { archive: self.archive.into(), entry: path, kind }.into());
        }
        // Refuse writing through a symlink the archive itself planted.
        let mut prefix = String::new();
        for c in path.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, init)| init) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if self.symlinks.contains(&prefix) {
                return Err(
                    UnsafeArchive::ThroughSymlink { archive: self.archive.into(), entry: path, link: prefix }.into()
                );
            }
        }
        if !self.seen.insert(path.clone()) {
            return Err(UnsafeArchive::Duplicate { archive: self.archive.into(), entry: path }.into());
        }
        match kind {
            MemberKind::Symlink => {
                let target = String::from_utf8_lossy(link).into_owned();
                if escapes(&path, &target) {
                    return Err(
                        UnsafeArchive::SymlinkEscapes { archive: self.archive.into(), entry: path, target }.into()
                    );
                }
                self.symlinks.insert(path.clone());
            }
            MemberKind::HardLink => {
                self.hard_link_target(raw, link)?;
            }
            MemberKind::File => {
                self.files.insert(path.clone());
            }
            MemberKind::Dir | MemberKind::Special(_) => {}
        }
        Ok(Some(path))
    }

    /// A hard link's target, which must be a regular file seen earlier in this archive.
    pub(crate) fn link_target<R: Read>(&self, entry: &tar::Entry<'_, R>) -> Result<String> {
        let raw = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
        self.hard_link_target(&entry.path_bytes(), &raw)
    }

    fn hard_link_target(&self, entry: &[u8], raw: &[u8]) -> Result<String> {
        let outside = || UnsafeArchive::HardLinkOutside {
            archive: self.archive.into(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            target: String::from_utf8_lossy(raw).into_owned(),
        };
        let target = self.normalise(raw).map_err(|_| outside())?.ok_or_else(outside)?;
        if !self.files.contains(&target) {
            return Err(outside().into());
        }
        Ok(target)
    }
}

/// What one member is, as the [`EntryGuard`] judges it: the tar entry types, or the file
/// types of a directory tree, in one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberKind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// A device node, FIFO, socket or any other entry type: always refused, named.
    Special(&'static str),
}

impl MemberKind {
    fn of_tar(kind: tar::EntryType) -> Self {
        match kind {
            tar::EntryType::Char => MemberKind::Special("character device"),
            tar::EntryType::Block => MemberKind::Special("block device"),
            tar::EntryType::Fifo => MemberKind::Special("FIFO"),
            k if k.is_file() => MemberKind::File,
            k if k.is_dir() => MemberKind::Dir,
            k if k.is_symlink() => MemberKind::Symlink,
            k if k.is_hard_link() => MemberKind::HardLink,
            _ => MemberKind::Special("special entry"),
        }
    }
}

/// Whether a symlink at `path` with `target` resolves outside the archive root.
fn escapes(path: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return true;
    }
    let mut depth: i64 = path.split('/').count() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_escape_rules() {
        assert!(escapes("a/b", "/etc/passwd"));
        assert!(escapes("a/b", "../../x"));
        assert!(!escapes("a/b", "../c"));
        assert!(!escapes("a/b", "c/d"));
    }

    #[test]
    fn selection_keeps_node_binaries_only() {
        let none = BTreeSet::new();
        assert_eq!(classify("usr/local/bin/containerd", &none), Some(Keep::Binary));
        assert_eq!(classify("opt/cni/bin/bridge", &none), Some(Keep::Binary));
        assert_eq!(classify("usr/local/bin/critest", &none), None);
        assert_eq!(classify("usr/local/bin/containerd-stress", &none), None);
        assert_eq!(classify("opt/containerd/cluster/gce/env", &none), None);
        assert_eq!(classify("etc/crictl.yaml", &none), None);
        let all: BTreeSet<_> = [Extra::Critest, Extra::Cluster].into();
        assert_eq!(classify("usr/local/bin/critest", &all), Some(Keep::Binary));
        assert_eq!(classify("opt/containerd/cluster/gce/env", &all), Some(Keep::Data));
    }

    #[test]
    fn version_file_must_match() {
        let v: Version = "1.7.13".parse().unwrap();
        assert!(check_version_file("CONTAINERD_VERSION: 'v1.7.13'\n", &v, "x").is_ok());
        let err = check_version_file("CONTAINERD_VERSION: '1.6.20'\n", &v, "x").unwrap_err();
        assert!(err.to_string().contains("says it is containerd 1.6.20"), "{err}");
    }
}
