//! Site overlays (`[[overlay]]`): the operator's own files — an internal CA, registry hosts in
//! `certs.d`, sysctl tuning, an extra unit — laid over the tree nodeforge generates.
//!
//! A site overlay is hostile input, like an upstream release. A tar archive goes through the
//! same walk and [`EntryGuard`] as a release: no `..` or absolute names, no device nodes or
//! FIFOs, symlinks only to targets inside the root and never written through, hard links only
//! to an earlier file, the entry and size caps. A directory is walked without following its
//! symlinks, and every member is admitted by the same guard (sockets are refused with the
//! devices and FIFOs). On top of what a release gets, setuid and setgid bits are refused
//! unless the entry's `setuid` lists the path.
//!
//! Every overlay is read, and its files staged, before the releases are unpacked; they are
//! merged after everything nodeforge generates, in profile order. Merging never replaces
//! anything silently: a file that would take the place of a generated one, or of an earlier
//! overlay's, must be listed in the overlay's `overrides`, and every `overrides` entry must
//! replace something. Directories merge, and a directory that already exists keeps its mode;
//! a file where the tree has a directory (or the reverse) is refused. Only a member's path,
//! type, permission bits, content and link target reach the artifacts: owners are root and
//! times are the build's, whatever the files on disk say.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;
use crate::exit::ExitClass;
use crate::io::{HashingReader, Interrupt, LimitReader};
use crate::overlay::{Content, Entry, EntryKind, Origin, Overlay, OverlayPath};
use crate::profile::{LoadedProfile, SiteOverlay};
use crate::release::walk::walk_tar;
use crate::release::{EntryGuard, Limits, MemberKind, check_gzip_magic, read_error, stage};

/// The `kind` of a site overlay in the manifest's `sources`.
pub const SOURCE_KIND: &str = "site-overlay";

/// What a site overlay's path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceForm {
    Dir,
    Tar,
    TarGz,
}

/// Judge a site overlay's path without reading its contents (all `check` does): a directory,
/// or a regular file named `.tar`, `.tar.gz` or `.tgz`. The error says what it is instead.
pub fn source_form(path: &Path) -> Result<SourceForm, String> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => format!("cannot be read ({e})"),
    })?;
    if meta.is_dir() {
        return Ok(SourceForm::Dir);
    }
    if !meta.is_file() {
        let what = special_kind(meta.file_type()).unwrap_or("special file");
        return Err(format!("is a {what}, not a directory or a tar archive"));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(SourceForm::TarGz)
    } else if name.ends_with(".tar") {
        Ok(SourceForm::Tar)
    } else {
        Err("is a file, but not a .tar, .tar.gz or .tgz archive".to_owned())
    }
}

fn special_kind(t: fs::FileType) -> Option<&'static str> {
    if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        None
    }
}

/// One member of a site overlay, admitted and (for a file) staged.
#[derive(Debug, Clone)]
struct Member {
    /// The normalised path inside the overlay.
    member: String,
    mode: u32,
    kind: EntryKind,
}

/// One site overlay, read and staged, ready to merge.
#[derive(Debug)]
pub struct SiteTree {
    /// `[[overlay]] #N <path>`, for messages.
    name: String,
    /// The path as the profile writes it; recorded in the manifest.
    pub shown: String,
    /// Of the tar archive's bytes, or of the directory's listing (each member's path, type,
    /// mode, and content digest or link target, in path order).
    pub sha256: Sha256Hex,
    members: BTreeMap<OverlayPath, Member>,
    overrides: BTreeSet<OverlayPath>,
}

/// What one overlay's entry allows, normalised.
struct Rules {
    name: String,
    setuid: BTreeSet<OverlayPath>,
}

impl Rules {
    /// Check a member's mode and keep it. Symlinks carry no mode of their own (0777).
    fn keep(
        &self,
        members: &mut BTreeMap<OverlayPath, Member>,
        member: String,
        mode: u32,
        kind: EntryKind,
    ) -> Result<()> {
        let name = &self.name;
        let path = OverlayPath::new(&member).with_context(|| format!("{name}: `{member}`"))?;
        let mode = match kind {
            EntryKind::Symlink(_) => 0o777,
            _ => mode & 0o7777,
        };
        if mode & 0o6000 != 0 && !self.setuid.contains(&path) {
            bail!(
                "{name}: `{member}` has mode {mode:04o}, with the setuid or setgid bit; list \"{member}\" in this \
                 [[overlay]]'s setuid if the node needs it, or clear the bit"
            );
        }
        members.insert(path, Member { member, mode, kind });
        Ok(())
    }
}

fn normalised(paths: &[String], name: &str, key: &str) -> Result<BTreeSet<OverlayPath>> {
    paths.iter().map(|p| OverlayPath::new(p).with_context(|| format!("{name} {key}"))).collect()
}

/// Read every `[[overlay]]` of the profile, in order, staging their files under `staging`
/// (a directory the caller owns and removes). A path that is missing or of the wrong kind
/// fails with [`ExitClass::Profile`], unsafe or malformed content with [`ExitClass::Archive`].
pub fn read_all(
    loaded: &LoadedProfile,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<Vec<SiteTree>> {
    let mut out = Vec::new();
    for (i, spec) in loaded.profile.overlays.iter().enumerate() {
        let name = format!("[[overlay]] #{} {}", i + 1, spec.path);
        let source = loaded.resolve(&spec.path);
        let form = source_form(&source)
            .map_err(|why| anyhow!("{name}: {} {why}", source.display()))
            .context(ExitClass::Profile)?;
        let dir = staging.join(format!("site-{}", i + 1));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tree = read_one(spec, name, &source, form, &dir, limits, interrupt).context(ExitClass::Archive)?;
        out.push(tree);
    }
    Ok(out)
}

fn read_one(
    spec: &SiteOverlay,
    name: String,
    source: &Path,
    form: SourceForm,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<SiteTree> {
    let rules = Rules { setuid: normalised(&spec.setuid, &name, "setuid")?, name };
    let overrides = normalised(&spec.overrides, &rules.name, "overrides")?;
    let mut members = BTreeMap::new();
    let sha256 = match form {
        SourceForm::Dir => {
            let mut walk = DirWalk {
                rules: &rules,
                guard: EntryGuard::new(&rules.name, limits.max_entries),
                staging,
                budget: limits.max_unpacked_bytes,
                limit: limits.max_unpacked_bytes,
                staged: 0,
                interrupt,
                members: &mut members,
            };
            walk.dir(source, "")?;
            listing_digest(&members)
        }
        SourceForm::Tar | SourceForm::TarGz => {
            read_tar(source, form == SourceForm::TarGz, &rules, staging, limits, interrupt, &mut members)?
        }
    };
    Ok(SiteTree { shown: spec.path.clone(), name: rules.name, sha256, members, overrides })
}

/// Walk a tar (gzip'd or not) with the release walker; returns the digest of the file's bytes.
fn read_tar(
    source: &Path,
    gz: bool,
    rules: &Rules,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
    members: &mut BTreeMap<OverlayPath, Member>,
) -> Result<Sha256Hex> {
    let name = rules.name.as_str();
    let file = crate::io::open_regular(source).with_context(|| format!("{name}: opening {}", source.display()))?;
    let mut raw = BufReader::with_capacity(256 * 1024, file);
    if gz {
        check_gzip_magic(&mut raw, name)?;
    }
    let mut hashing = HashingReader::new(raw);
    {
        let inner: Box<dyn Read + '_> =
            if gz { Box::new(MultiGzDecoder::new(&mut hashing)) } else { Box::new(&mut hashing) };
        let tar = tar::Archive::new(LimitReader::new(inner, limits.max_unpacked_bytes, format!("{name} unpacked")));
        walk_tar(tar, name, staging, limits, interrupt, |w, member, entry| {
            if std::str::from_utf8(&entry.path_bytes()).is_err() {
                bail!("{name}: member `{member}` has a name that is not UTF-8");
            }
            let mode = entry.header().mode().map_err(|e| read_error(name, e))?;
            let t = entry.header().entry_type();
            let kind = if t.is_dir() {
                EntryKind::Dir
            } else if t.is_symlink() {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                EntryKind::Symlink(
                    String::from_utf8(target)
                        .map_err(|_| anyhow!("{name}: symlink `{member}` has a target that is not UTF-8"))?,
                )
            } else if t.is_hard_link() {
                EntryKind::File(w.link(&member, entry)?.content())
            } else {
                EntryKind::File(w.stage(&member, entry).map_err(|e| e.context(format!("{name}: {member}")))?.content())
            };
            rules.keep(members, member, mode, kind)
        })?;
    }
    // Hash to the end of the file: tar stops reading at the end-of-archive blocks.
    io::copy(&mut hashing, &mut io::sink()).with_context(|| format!("reading {name}"))?;
    Ok(hashing.finish().0)
}

/// A directory source being walked: the guard sees every member, files are staged while the
/// budget (`--max-unpacked-bytes`, over all files together) lasts.
struct DirWalk<'a> {
    rules: &'a Rules,
    guard: EntryGuard<'a>,
    staging: &'a Path,
    budget: u64,
    limit: u64,
    staged: usize,
    interrupt: &'a Interrupt,
    members: &'a mut BTreeMap<OverlayPath, Member>,
}

impl DirWalk<'_> {
    /// Members of `dir` (`rel` inside the overlay), in name order, never following a symlink.
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let name = self.rules.name.clone();
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .with_context(|| format!("{name}: listing {}", dir.display()))?;
        names.sort();
        for n in names {
            self.interrupt.check()?;
            let host = dir.join(&n);
            let Some(n) = n.to_str() else {
                bail!("{name}: `{}` has a name that is not UTF-8", Path::new(rel).join(&n).display());
            };
            let member = if rel.is_empty() { n.to_owned() } else { format!("{rel}/{n}") };
            let meta = fs::symlink_metadata(&host).with_context(|| format!("{name}: reading {}", host.display()))?;
            let t = meta.file_type();
            let (kind, link) = if t.is_dir() {
                (MemberKind::Dir, Vec::new())
            } else if t.is_symlink() {
                let target = fs::read_link(&host).with_context(|| format!("{name}: reading {}", host.display()))?;
                (MemberKind::Symlink, target.into_os_string().into_vec())
            } else if t.is_file() {
                (MemberKind::File, Vec::new())
            } else {
                (MemberKind::Special(special_kind(t).unwrap_or("special file")), Vec::new())
            };
            let Some(member) = self.guard.admit_member(member.as_bytes(), kind, &link)? else { continue };
            let entry = match kind {
                MemberKind::Dir => EntryKind::Dir,
                MemberKind::Symlink => EntryKind::Symlink(
                    String::from_utf8(link)
                        .map_err(|_| anyhow!("{name}: symlink `{member}` has a target that is not UTF-8"))?,
                ),
                _ => EntryKind::File(self.stage_file(&host, &meta, &member)?),
            };
            self.rules.keep(self.members, member.clone(), meta.mode(), entry)?;
            if kind == MemberKind::Dir {
                self.dir(&host, &member)?;
            }
        }
        Ok(())
    }

    /// Copy one file to staging. It is opened without following a symlink and must still be
    /// the file that was listed (a swap between the two is refused), and no larger than it was.
    fn stage_file(&mut self, host: &Path, listed: &fs::Metadata, member: &str) -> Result<Content> {
        let name = &self.rules.name;
        let file: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(host)
            .with_context(|| format!("{name}: opening `{member}`"))?;
        let meta = file.metadata()?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (listed.dev(), listed.ino()) {
            bail!("{name}: `{member}` changed while the overlay was read");
        }
        let size = meta.len();
        if size > self.budget {
            bail!(
                "{name}: the files up to `{member}` add up to more than the limit of {} bytes (--max-unpacked-bytes)",
                self.limit
            );
        }
        let dest = self.staging.join(self.staged.to_string());
        self.staged += 1;
        let (n, sha256) = stage(&mut (&file).take(size), &dest, self.interrupt)
            .map_err(|e| e.context(format!("{name}: {member}")))?;
        if n != size {
            bail!("{name}: `{member}` changed while the overlay was read ({n} of {size} bytes)");
        }
        self.budget -= size;
        Ok(Content::OnDisk { path: dest, size, sha256 })
    }
}

/// The identity of a directory source: its members as the node gets them, nothing of the
/// build host (no owners, no times).
fn listing_digest(members: &BTreeMap<OverlayPath, Member>) -> Sha256Hex {
    let mut h = Sha256::new();
    for (path, m) in members {
        let what = match &m.kind {
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::File(c) => format!("file {}", c.sha256()),
            EntryKind::Symlink(t) => format!("symlink {t}"),
        };
        h.update(format!("{}\0{:04o}\0{what}\n", path.as_str(), m.mode));
    }
    Sha256Hex(h.finalize().into())
}

fn noun(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "directory",
        EntryKind::File(_) => "file",
        EntryKind::Symlink(_) => "symlink",
    }
}

/// Lay the site overlays over `overlay`, in profile order (see the module comment).
pub fn merge_all(trees: &[SiteTree], overlay: &mut Overlay) -> Result<()> {
    trees.iter().try_for_each(|t| merge(t, overlay))
}

fn merge(t: &SiteTree, overlay: &mut Overlay) -> Result<()> {
    let name = &t.name;
    let mut replaced = BTreeSet::new();
    // In path order, so a directory is merged before what it holds and any directory already
    // there came from an earlier source.
    for (path, m) in &t.members {
        let origin = Origin::Site { overlay: t.shown.clone(), member: m.member.clone(), sha256: t.sha256 };
        let entry = Entry { mode: m.mode, kind: m.kind.clone(), origin };
        let member = &m.member;
        let Some(existing) = overlay.get_path(path) else {
            overlay.insert(path.clone(), entry).with_context(|| format!("{name}: `{member}`"))?;
            continue;
        };
        match (&existing.kind, &entry.kind) {
            // Directories merge; the one already there keeps its mode and origin.
            (EntryKind::Dir, EntryKind::Dir) => {}
            (EntryKind::Dir, _) | (_, EntryKind::Dir) => bail!(
                "{name}: `{member}` is a {} where {} puts a {} at {path}; a site overlay cannot turn one into the other",
                noun(&entry.kind),
                existing.origin,
                noun(&existing.kind),
            ),
            _ if t.overrides.contains(path) => {
                overlay.replace(path, entry).with_context(|| format!("{name}: `{member}`"))?;
                replaced.insert(path.clone());
            }
            _ => bail!(
                "{name}: `{member}` would replace {path}, which comes from {}; add \"{}\" to this [[overlay]]'s \
                 overrides if the site's {} is meant to win",
                existing.origin,
                path.as_str(),
                noun(&entry.kind),
            ),
        }
    }
    if let Some(stale) = t.overrides.iter().find(|p| !replaced.contains(*p)) {
        bail!(
            "{name}: overrides lists \"{}\", but this overlay replaces nothing at {stale} (a stale override: \
             it has no file there, or nothing came before it); remove the entry",
            stale.as_str()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn spec(path: &str, overrides: &[&str], setuid: &[&str]) -> SiteOverlay {
        SiteOverlay {
            path: path.into(),
            overrides: overrides.iter().map(|s| (*s).to_owned()).collect(),
            setuid: setuid.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Every read stages into a directory of its own under one per-process temp directory,
    /// which outlives the trees that point into it.
    fn read(spec: &SiteOverlay, source: &Path, form: SourceForm) -> Result<SiteTree> {
        static STAGING: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = STAGING.get_or_init(|| tempfile::tempdir().unwrap());
        let dir = root.path().join(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string());
        fs::create_dir(&dir).unwrap();
        let name = format!("[[overlay]] #1 {}", spec.path);
        read_one(spec, name, source, form, &dir, Limits::default(), &Interrupt::default())
    }

    fn generated() -> Overlay {
        let mut o = Overlay::new();
        let rendered = Origin::Rendered { renderer: "crictl".into() };
        o.add_file("etc/crictl.yaml", 0o644, Content::Inline(b"generated\n".to_vec()), rendered).unwrap();
        o
    }

    fn site_dir(root: &Path) {
        fs::create_dir_all(root.join("etc/site")).unwrap();
        fs::set_permissions(root.join("etc/site"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("etc/site/token"), b"secret\n").unwrap();
        fs::set_permissions(root.join("etc/site/token"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(root.join("etc/crictl.yaml"), b"site\n").unwrap();
        symlink("site/token", root.join("etc/token-link")).unwrap();
    }

    #[test]
    fn a_directory_is_read_with_modes_and_links_and_merged() {
        let tmp = tempfile::tempdir().unwrap();
        site_dir(tmp.path());
        let s = spec("site", &["etc/crictl.yaml"], &[]);
        let tree = read(&s, tmp.path(), SourceForm::Dir).unwrap();
        let mut o = generated();
        merge_all(&[tree], &mut o).unwrap();
        assert_eq!(o.get("etc").unwrap().mode, 0o755, "an existing directory keeps its mode");
        assert_eq!(o.get("etc/site").unwrap().mode, 0o750);
        let token = o.get("etc/site/token").unwrap();
        assert_eq!(token.mode, 0o600);
        assert!(
            matches!(&token.origin, Origin::Site { overlay, member, .. } if overlay == "site" && member == "etc/site/token")
        );
        assert!(matches!(&o.get("etc/token-link").unwrap().kind, EntryKind::Symlink(t) if t == "site/token"));
        let EntryKind::File(c) = &o.get("etc/crictl.yaml").unwrap().kind else { panic!("not a file") };
        assert_eq!(c.sha256(), Sha256Hex(Sha256::digest(b"site\n").into()), "the override won");
    }

    #[test]
    fn replacing_needs_an_override_and_every_override_must_replace() {
        let tmp = tempfile::tempdir().unwrap();
        site_dir(tmp.path());
        let tree = read(&spec("site", &[], &[]), tmp.path(), SourceForm::Dir).unwrap();
        let err = format!("{:#}", merge_all(&[tree], &mut generated()).unwrap_err());
        assert!(err.contains("`etc/crictl.yaml` would replace /etc/crictl.yaml"), "{err}");
        assert!(err.contains("`crictl` renderer") && err.contains("overrides"), "{err}");

        let tree = read(&spec("site", &["etc/crictl.yaml", "etc/other"], &[]), tmp.path(), SourceForm::Dir).unwrap();
        let err = format!("{:#}", merge_all(&[tree], &mut generated()).unwrap_err());
        assert!(err.contains("overrides lists \"etc/other\"") && err.contains("stale"), "{err}");

        // A later overlay replacing an earlier one's file needs its own override.
        let second = tempfile::tempdir().unwrap();
        fs::create_dir_all(second.path().join("etc/site")).unwrap();
        fs::write(second.path().join("etc/site/token"), b"other\n").unwrap();
        let first = read(&spec("site", &["etc/crictl.yaml"], &[]), tmp.path(), SourceForm::Dir).unwrap();
        let later = read(&spec("later", &[], &[]), second.path(), SourceForm::Dir).unwrap();
        let err = format!("{:#}", merge_all(&[first, later], &mut generated()).unwrap_err());
        assert!(err.contains("[[overlay]] #1 later: `etc/site/token` would replace"), "{err}");
        assert!(err.contains("site overlay site (member etc/site/token)"), "{err}");
    }

    #[test]
    fn a_file_where_a_directory_is_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("etc"), b"x").unwrap();
        let tree = read(&spec("site", &["etc"], &[]), tmp.path(), SourceForm::Dir).unwrap();
        let err = format!("{:#}", merge_all(&[tree], &mut generated()).unwrap_err());
        assert!(err.contains("`etc` is a file where a parent directory nodeforge creates puts a directory"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("etc/crictl.yaml")).unwrap();
        let tree = read(&spec("site", &[], &[]), tmp.path(), SourceForm::Dir).unwrap();
        let err = format!("{:#}", merge_all(&[tree], &mut generated()).unwrap_err());
        assert!(err.contains("is a directory where nodeforge's `crictl` renderer puts a file"), "{err}");
    }

    #[test]
    fn directories_refuse_what_releases_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("etc")).unwrap();
        symlink("../../outside", tmp.path().join("etc/escape")).unwrap();
        let err = format!("{:#}", read(&spec("s", &[], &[]), tmp.path(), SourceForm::Dir).unwrap_err());
        assert!(err.contains("symlink `etc/escape` points outside"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("mkfifo").arg(tmp.path().join("pipe")).status().unwrap();
        assert!(made.success());
        let err = format!("{:#}", read(&spec("s", &[], &[]), tmp.path(), SourceForm::Dir).unwrap_err());
        assert!(err.contains("entry `pipe` is a FIFO"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("helper"), b"x").unwrap();
        fs::set_permissions(tmp.path().join("helper"), fs::Permissions::from_mode(0o4755)).unwrap();
        let err = format!("{:#}", read(&spec("s", &[], &[]), tmp.path(), SourceForm::Dir).unwrap_err());
        assert!(err.contains("`helper` has mode 4755") && err.contains("setuid"), "{err}");
        let tree = read(&spec("s", &[], &["/helper"]), tmp.path(), SourceForm::Dir).unwrap();
        assert_eq!(tree.members.values().next().unwrap().mode, 0o4755);

        let limits = Limits { max_unpacked_bytes: 0, ..Limits::default() };
        let staging = tempfile::tempdir().unwrap();
        let s = spec("s", &[], &["helper"]);
        let err = read_one(&s, "n".into(), tmp.path(), SourceForm::Dir, staging.path(), limits, &Interrupt::default())
            .unwrap_err();
        assert!(format!("{err:#}").contains("more than the limit of 0 bytes"), "{err:#}");
    }

    #[test]
    fn a_tar_keeps_modes_resolves_hard_links_and_is_known_by_its_digest() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, t: tar::EntryType, mode: u32, link: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(t);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(1000);
            if link.is_empty() {
                b.append_data(&mut h, path, data).unwrap();
            } else {
                b.append_link(&mut h, path, link).unwrap();
            }
        };
        add("./etc/", tar::EntryType::Directory, 0o700, "", b"");
        add("./etc/key", tar::EntryType::Regular, 0o100640, "", b"key\n");
        add("./etc/key-again", tar::EntryType::Link, 0o640, "./etc/key", b"");
        add("./etc/key-link", tar::EntryType::Symlink, 0o777, "key", b"");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("site.tar");
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        let tree = read(&spec("site.tar", &[], &[]), &path, SourceForm::Tar).unwrap();
        assert_eq!(tree.sha256, Sha256Hex(Sha256::digest(fs::read(&path).unwrap()).into()));
        let m: Vec<(&str, u32)> = tree.members.iter().map(|(p, m)| (p.as_str(), m.mode)).collect();
        assert_eq!(m, [("etc", 0o700), ("etc/key", 0o640), ("etc/key-again", 0o640), ("etc/key-link", 0o777)]);
        let digest = |p: &str| match &tree.members[&OverlayPath::new(p).unwrap()].kind {
            EntryKind::File(c) => c.sha256(),
            other => panic!("{p} is {other:?}"),
        };
        assert_eq!(digest("etc/key-again"), digest("etc/key"));
        // Read as gzip, the same bytes must be gzip.
        let err = format!("{:#}", read(&spec("s.tar.gz", &[], &[]), &path, SourceForm::TarGz).unwrap_err());
        assert!(err.contains("not gzip data"), "{err}");
    }

    #[test]
    fn the_digest_of_a_directory_ignores_owners_and_times() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        site_dir(a.path());
        site_dir(b.path());
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(b.path().join("etc/site/token"), old).unwrap();
        let s = spec("s", &[], &[]);
        let (ta, tb) = (read(&s, a.path(), SourceForm::Dir).unwrap(), read(&s, b.path(), SourceForm::Dir).unwrap());
        assert_eq!(ta.sha256, tb.sha256);
        fs::set_permissions(b.path().join("etc/site/token"), fs::Permissions::from_mode(0o640)).unwrap();
        assert_ne!(read(&s, b.path(), SourceForm::Dir).unwrap().sha256, ta.sha256, "a mode is part of it");
    }

    #[test]
    fn forms_are_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        for (file, form) in [("a.tar", SourceForm::Tar), ("a.tar.gz", SourceForm::TarGz), ("a.tgz", SourceForm::TarGz)]
        {
            fs::write(p.join(file), b"").unwrap();
            assert_eq!(source_form(&p.join(file)), Ok(form));
        }
        assert_eq!(source_form(p), Ok(SourceForm::Dir));
        fs::write(p.join("a.zip"), b"").unwrap();
        assert!(source_form(&p.join("a.zip")).unwrap_err().contains("not a .tar"));
        assert_eq!(source_form(&p.join("missing")), Err("does not exist".to_owned()));
    }
}
