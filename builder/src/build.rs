//! `nodeforge build`: profile → verified sources → overlay tree → artifacts.
//!
//! The build holds an exclusive lock on `--out` (a second build into it waits). Everything is
//! produced inside a private work directory under `--out` and moved into place only when the
//! whole build has succeeded: the old `SHA256SUMS` is removed first and the new one renamed
//! in last ([`output::commit_set`]), so a set that verifies is always one build's. An error
//! or a signal before the commit leaves the output directory as it was (the work directory is
//! removed on unwind; one left by `kill -9` is swept by the next build, which knows it from a
//! live one by its lock).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::archive::{self, ArtifactInfo};
use crate::check::CheckedProfile;
use crate::digest::Sha256Hex;
use crate::exit::ExitClass;
use crate::fetch::{Fetched, FetchedSource, FetchedUpstream, Fetcher, fetch_sources};
use crate::io::Interrupt;
use crate::manifest::{self, Manifest, SourceRecord};
use crate::output::{self, DirLock, WorkDir};
use crate::overlay::{Content, EntryKind, Origin, Overlay, OverlayPath};
use crate::profile::{Arch, LoadedProfile, SourceKind, Sources};
use crate::release::{self, BundleRequest, ComponentRequest, Limits, SelectedFile, Selection};
use crate::{render, seed, site};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub mtime: u64,
    pub limits: Limits,
    /// The seed carries the overlay and unpacks it on first boot (`--first-boot`).
    pub first_boot: bool,
}

#[derive(Debug, Serialize)]
pub struct OverlaySummary {
    pub files: usize,
    pub directories: usize,
    pub symlinks: usize,
    pub file_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub profile: String,
    pub profile_sha256: Sha256Hex,
    pub out_dir: PathBuf,
    pub sources: Vec<FetchedSource>,
    pub overlay: OverlaySummary,
    pub artifacts: Vec<ArtifactInfo>,
    /// Release members deliberately left out.
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

impl BuildReport {
    pub fn human(&self) -> String {
        let mut s = String::new();
        let o = &self.overlay;
        let _ = writeln!(s, "built {} into {}", self.profile, self.out_dir.display());
        for src in &self.sources {
            let _ = writeln!(s, "  source   {:<11} {}  sha256:{}", src.kind, src.url, src.sha256);
        }
        let _ = writeln!(
            s,
            "  overlay  {} files, {} directories, {} symlinks, {:.1} MiB",
            o.files,
            o.directories,
            o.symlinks,
            o.file_bytes as f64 / (1 << 20) as f64
        );
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "  skipped  {}", self.skipped.join(", "));
        }
        for a in &self.artifacts {
            let _ = writeln!(s, "  {:<16} {:>10} bytes  sha256:{}", a.name, a.size, a.sha256);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
}

/// A build whose artifacts are written but not yet in `--out`: they sit in a private work
/// directory while the build holds the lock on `--out`. A step that derives more artifacts
/// from the overlay (`nodeforge image`) writes them into [`Pending::dir`] and adds them;
/// [`Pending::commit`] then writes the manifest and `SHA256SUMS` over all of them and moves
/// the set into place. Dropped uncommitted, it leaves `--out` as it was.
#[derive(Debug)]
pub struct Pending<'a> {
    loaded: &'a LoadedProfile,
    opts: &'a BuildOptions,
    sources: Fetched,
    /// The site overlays, recorded as sources beside the fetched ones.
    site_sources: Vec<SourceRecord>,
    overlay: Overlay,
    artifacts: Vec<ArtifactInfo>,
    skipped: Vec<String>,
    warnings: Vec<String>,
    dir: PathBuf,
    scratch: PathBuf,
    // Field order is drop order: the work directory goes before the lock is released.
    _work: WorkDir,
    _out_lock: DirLock,
}

impl Pending<'_> {
    /// The finished overlay.
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The artifacts so far (overlay archives first, then the seed), for deriving identities.
    pub fn artifacts(&self) -> &[ArtifactInfo] {
        &self.artifacts
    }

    /// Where further artifacts are written, to be committed with the build's own.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Private scratch space, removed with the build.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The archive timestamp of this build.
    pub fn mtime(&self) -> u64 {
        self.opts.mtime
    }

    /// Artifacts written into [`Pending::dir`], to be listed and committed with the rest.
    pub fn add_artifacts(&mut self, more: Vec<ArtifactInfo>) {
        self.artifacts.extend(more);
    }

    /// Write the manifest and `SHA256SUMS` over every artifact and move the set into `--out`,
    /// `SHA256SUMS` last.
    pub fn commit(self, interrupt: &Interrupt) -> Result<BuildReport> {
        interrupt.check()?;
        let mut artifacts = self.artifacts;
        let mut records: Vec<SourceRecord> = self
            .sources
            .all()
            .map(|s| SourceRecord { kind: s.kind.clone(), url: s.url.clone(), sha256: s.sha256 })
            .collect();
        records.extend(self.site_sources.iter().cloned());
        let manifest = Manifest::new(self.loaded, records, &self.overlay, artifacts.clone(), self.opts.mtime);
        artifacts.push(manifest.write(&self.dir)?);
        manifest::write_sha256sums(&self.dir, &artifacts)?;
        interrupt.check()?;

        let names: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
        output::commit_set(&self.dir, &self.opts.out, &names, manifest::SHA256SUMS_NAME)?;

        Ok(BuildReport {
            profile: self.loaded.profile.name.clone(),
            profile_sha256: self.loaded.sha256,
            out_dir: self.opts.out.clone(),
            sources: self.sources.all().cloned().collect(),
            overlay: summarise(&self.overlay),
            artifacts,
            skipped: self.skipped,
            warnings: self.warnings,
        })
    }
}

/// Run the whole build.
pub fn build(
    checked: &CheckedProfile,
    fetcher: &Fetcher,
    opts: &BuildOptions,
    interrupt: &Interrupt,
) -> Result<BuildReport> {
    stage(checked, fetcher, opts, interrupt)?.commit(interrupt)
}

/// Fetch, assemble the overlay, write the overlay archives and the seed, and hold them
/// pending. The profile's check warnings are carried into the report.
pub fn stage<'a>(
    checked: &'a CheckedProfile,
    fetcher: &Fetcher,
    opts: &'a BuildOptions,
    interrupt: &Interrupt,
) -> Result<Pending<'a>> {
    let loaded = &checked.loaded;
    // Fetch first: a download that fails must not even create the output directory.
    let sources = fetch_sources(loaded, fetcher)?;
    interrupt.check()?;
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let out_lock = output::lock_dir(&opts.out, interrupt)?;
    output::sweep_stale(&opts.out)?;

    let work = WorkDir::new(&opts.out)?;
    let staging = work.path().join("staging");
    let dir = work.path().join("out");
    fs::create_dir(&staging)?;
    fs::create_dir(&dir)?;

    // The site overlays are read first: hostile content fails the build before the releases
    // are unpacked. They are merged last, over everything nodeforge generates.
    let site = site::read_all(loaded, &staging, opts.limits, interrupt)?;
    let mut overlay = Overlay::new();
    let assembled = assemble(loaded, &sources.upstream, &staging, opts, interrupt, &mut overlay)?;

    let rendered = render::render(loaded).context(ExitClass::Profile)?;
    render::add_to_overlay(&rendered, &mut overlay)?;

    for img in &sources.images {
        let got = &img.got;
        let content = Content::OnDisk { path: got.path.clone(), size: got.size, sha256: got.sha256 };
        let origin = Origin::Image { reference: img.image.reference.to_string(), sha256: got.sha256 };
        overlay.add_file(&render::image_archive_path(&img.image.reference), 0o644, content, origin)?;
    }
    site::merge_all(&site, &mut overlay).context(ExitClass::Profile)?;
    let site_sources = site
        .iter()
        .map(|t| SourceRecord { url: t.shown.clone(), sha256: t.sha256, kind: site::SOURCE_KIND.to_owned() })
        .collect();
    interrupt.check()?;

    let mut artifacts: Vec<ArtifactInfo> = archive::write_both(&overlay, &dir, opts.mtime, interrupt)?.into();
    let seed_files = if opts.first_boot { first_boot_seed(loaded, &dir)? } else { seed::seed_files(loaded)? };
    artifacts.push(seed::write_seed_image(&seed_files, &dir.join(seed::SEED_IMAGE_NAME))?);
    let scratch = work.path().join("scratch");
    fs::create_dir(&scratch)?;

    let mut warnings = assembled.warnings;
    warnings.extend(checked.warnings.iter().cloned());
    Ok(Pending {
        loaded,
        opts,
        sources,
        site_sources,
        overlay,
        artifacts,
        skipped: assembled.skipped,
        warnings,
        dir,
        scratch,
        _work: work,
        _out_lock: out_lock,
    })
}

/// What assembling the upstream sources left out or noticed.
#[derive(Debug, Default)]
struct Assembled {
    skipped: Vec<String>,
    warnings: Vec<String>,
}

/// Read every upstream source as hostile input and add what the node needs to the overlay:
/// the bundle's members, or the per-component archives and binaries, then the Kubernetes
/// binaries.
fn assemble(
    loaded: &LoadedProfile,
    upstream: &[FetchedUpstream],
    staging: &Path,
    opts: &BuildOptions,
    interrupt: &Interrupt,
    overlay: &mut Overlay,
) -> Result<Assembled> {
    let p = &loaded.profile;
    let mut out = Assembled::default();
    for FetchedUpstream { source: src, got } in upstream {
        // One staging directory per archive: the selectors number their files from 0.
        let dir = staging.join(src.kind.as_str());
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let extras = match p.runtime_sources() {
            Sources::Bundle(b) => &b.extras,
            Sources::Components { containerd, .. } => &containerd.extras,
        };
        let req = ComponentRequest { name: &got.name, arch: p.arch, extras: extras.iter().copied().collect() };
        let (sel, limits) = (&req, opts.limits);
        let selection = match src.kind {
            SourceKind::Bundle => {
                let bundle = BundleRequest {
                    name: &got.name,
                    version: &p.containerd.version,
                    arch: p.arch,
                    extras: req.extras.clone(),
                };
                release::select_bundle(&got.path, &bundle, &dir, limits, interrupt)
            }
            SourceKind::Containerd => release::select_containerd(&got.path, sel, &dir, limits, interrupt),
            SourceKind::CniPlugins => release::select_cni_plugins(&got.path, sel, &dir, limits, interrupt),
            SourceKind::Crictl => release::select_crictl(&got.path, sel, &dir, limits, interrupt),
            SourceKind::Runc => single_binary(got, "usr/local/sbin/runc", p.arch, limits),
            SourceKind::Kubelet | SourceKind::Kubeadm | SourceKind::Kubectl => {
                let dest = format!("{}/{}", render::kubelet_service::BIN_DIR, src.kind);
                single_binary(got, &dest, p.arch, limits)
            }
        }
        .with_context(|| format!("{} {}", src.kind, src.version))
        .context(ExitClass::Archive)?;
        for f in selection.files {
            let origin = Origin::Upstream { artifact: got.name.clone(), sha256: got.sha256, member: f.member };
            overlay.insert(f.path, crate::overlay::Entry { mode: f.mode, kind: EntryKind::File(f.content), origin })?;
        }
        out.skipped.extend(selection.skipped);
        out.warnings.extend(selection.warnings);
    }
    Ok(out)
}

/// A download that is the binary itself, installed from its verified copy in the cache.
fn single_binary(got: &FetchedSource, dest: &str, arch: Arch, limits: Limits) -> Result<Selection> {
    release::check_binary(&got.path, &got.name, arch, limits)?;
    Ok(Selection {
        files: vec![SelectedFile {
            path: OverlayPath::new(dest)?,
            mode: 0o755,
            content: Content::OnDisk { path: got.path.clone(), size: got.size, sha256: got.sha256 },
            member: got.name.clone(),
        }],
        ..Selection::default()
    })
}

/// The build's seed with the overlay archive on it and user-data that unpacks it, starts
/// containerd and imports the images on first boot (no join: `nodeforge seed` adds that).
fn first_boot_seed(loaded: &LoadedProfile, pending: &Path) -> Result<seed::SeedFiles> {
    let overlay = seed::Attachment::from_file(archive::TAR_GZ_NAME, &pending.join(archive::TAR_GZ_NAME))?;
    let mut ud = seed::UserData::for_profile(&loaded.profile);
    ud.runcmd = seed::firstboot::runcmd(&loaded.profile, true, None);
    seed::SeedFiles::with(loaded, &ud, &seed::SeedIdentity::default(), vec![overlay])
}

fn summarise(overlay: &Overlay) -> OverlaySummary {
    let mut s = OverlaySummary { files: 0, directories: 0, symlinks: 0, file_bytes: 0 };
    for (_, e) in overlay.iter() {
        match &e.kind {
            EntryKind::Dir => s.directories += 1,
            EntryKind::Symlink(_) => s.symlinks += 1,
            EntryKind::File(c) => {
                s.files += 1;
                s.file_bytes += c.size();
            }
        }
    }
    s
}
