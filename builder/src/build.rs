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
use crate::cli::BuildConfig;
use crate::commands::Stage;
use crate::fetch::{Artifact, Fetcher};
use crate::io::Interrupt;
use crate::manifest::{self, Manifest, SourceRecord};
use crate::output;
use crate::overlay::{Content, EntryKind, Origin, Overlay, OverlayPath};
use crate::profile::{
    Arch, LoadedProfile, Sha256Hex, SourceKind, Sources, UpstreamSource, redact_url_text, url_file_name,
};
use crate::release::{self, BundleRequest, ComponentRequest, Limits, SelectedFile, Selection};
use crate::{render, seed};

/// 1980-01-01T00:00:00Z: the archive timestamp when SOURCE_DATE_EPOCH is not set. Any
/// constant gives reproducible bytes; this one is also the earliest time FAT and zip-era
/// tools represent without complaint.
pub const DEFAULT_MTIME: u64 = 315_532_800;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub mtime: u64,
    pub limits: Limits,
    /// The seed carries the overlay and unpacks it on first boot (`--first-boot`).
    pub first_boot: bool,
}

impl BuildOptions {
    pub fn from_config(c: &BuildConfig) -> Self {
        Self {
            out: c.out.clone(),
            mtime: c.source_date_epoch.unwrap_or(DEFAULT_MTIME),
            limits: Limits { max_unpacked_bytes: c.max_unpacked_bytes, ..Limits::default() },
            first_boot: c.first_boot,
        }
    }
}

/// A verified input, as `fetch` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FetchedSource {
    /// What it is: a [`SourceKind`] (`bundle`, `containerd`, `runc`, `cni-plugins`,
    /// `crictl`, `kubelet`, `kubeadm`, `kubectl`) or `image`.
    pub kind: String,
    pub name: String,
    /// Upstream URL (credentials and query string redacted), or the profile-relative path of
    /// a local image archive.
    pub url: String,
    pub sha256: Sha256Hex,
    pub size: u64,
    /// The verified copy in the cache.
    pub path: PathBuf,
}

/// Fetch and verify every input the profile names: the upstream sources in
/// [`Profile::upstream_sources`](crate::profile::Profile::upstream_sources) order, then the
/// images.
pub fn fetch_sources(loaded: &LoadedProfile, fetcher: &Fetcher) -> Result<Vec<FetchedSource>> {
    let p = &loaded.profile;
    let mut out = Vec::new();
    for src in p.upstream_sources() {
        let name = src.file_name().to_owned();
        let artifact = Artifact { name: name.clone(), url: src.url.clone(), sha256: src.sha256 };
        let got =
            fetcher.fetch(&artifact).with_context(|| format!("{} {}", src.kind, src.version)).context(Stage::Fetch)?;
        out.push(FetchedSource {
            kind: src.kind.to_string(),
            name,
            url: redact_url_text(&src.url),
            sha256: got.sha256,
            size: got.size,
            path: got.path,
        });
    }
    for img in &p.images {
        let got = if img.is_remote() {
            let name = url_file_name(&img.source).to_owned();
            fetcher.fetch(&Artifact { name, url: img.source.clone(), sha256: img.sha256 })
        } else {
            fetcher.fetch_local(&loaded.resolve(&img.source), &img.sha256)
        }
        .with_context(|| format!("image {}", img.reference))
        .context(Stage::Fetch)?;
        out.push(FetchedSource {
            kind: "image".into(),
            name: img.reference.to_string(),
            url: img.shown_source(),
            sha256: got.sha256,
            size: got.size,
            path: got.path,
        });
    }
    Ok(out)
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

/// What a build hands to a step that derives more artifacts from the overlay (`nodeforge
/// image`): the finished overlay, the directory of pending artifacts (committed together with
/// the build's own, `SHA256SUMS` last), and private scratch space removed with the build.
#[derive(Debug)]
pub struct Extra<'a> {
    pub overlay: &'a Overlay,
    /// The build's own artifacts so far (overlay archives, seed), for deriving identities.
    pub artifacts: &'a [ArtifactInfo],
    pub pending: &'a Path,
    pub scratch: &'a Path,
    pub mtime: u64,
    pub interrupt: &'a Interrupt,
}

/// Run the whole build.
pub fn build(
    loaded: &LoadedProfile,
    fetcher: &Fetcher,
    opts: &BuildOptions,
    interrupt: &Interrupt,
) -> Result<BuildReport> {
    build_with(loaded, fetcher, opts, interrupt, |_| Ok(Vec::new()))
}

/// Run the whole build, with `extra` writing further artifacts into the pending directory
/// before the manifest and `SHA256SUMS` are written, so they list them too.
pub fn build_with(
    loaded: &LoadedProfile,
    fetcher: &Fetcher,
    opts: &BuildOptions,
    interrupt: &Interrupt,
    extra: impl FnOnce(&Extra) -> Result<Vec<ArtifactInfo>>,
) -> Result<BuildReport> {
    let p = &loaded.profile;
    // Fetch first: a download that fails must not even create the output directory.
    let sources = fetch_sources(loaded, fetcher)?;
    interrupt.check()?;
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let _out_lock = output::lock_dir(&opts.out, interrupt)?;
    output::sweep_stale(&opts.out)?;

    let work = output::WorkDir::new(&opts.out)?;
    let staging = work.path().join("staging");
    let pending = work.path().join("out");
    fs::create_dir(&staging)?;
    fs::create_dir(&pending)?;

    let mut overlay = Overlay::new();
    let upstream = p.upstream_sources();
    let assembled = assemble(loaded, &upstream, &sources[..upstream.len()], &staging, opts, interrupt, &mut overlay)?;

    let rendered = render::render(loaded).context(Stage::Profile)?;
    render::add_to_overlay(&rendered, &mut overlay)?;

    for (img, src) in p.images.iter().zip(&sources[sources.len() - p.images.len()..]) {
        let content = Content::OnDisk { path: src.path.clone(), size: src.size, sha256: src.sha256 };
        let origin = Origin::Image { reference: img.reference.to_string(), sha256: src.sha256 };
        overlay.add_file(&render::image_archive_path(&img.reference), 0o644, content, origin)?;
    }
    interrupt.check()?;

    let mut artifacts: Vec<ArtifactInfo> = archive::write_both(&overlay, &pending, opts.mtime, interrupt)?.into();
    let seed_files = if opts.first_boot { first_boot_seed(loaded, &pending)? } else { seed::seed_files(loaded)? };
    artifacts.push(seed::write_seed_image(&seed_files, &pending.join(seed::SEED_IMAGE_NAME))?);
    let scratch = work.path().join("scratch");
    fs::create_dir(&scratch)?;
    let more = extra(&Extra {
        overlay: &overlay,
        artifacts: &artifacts,
        pending: &pending,
        scratch: &scratch,
        mtime: opts.mtime,
        interrupt,
    })?;
    artifacts.extend(more);
    interrupt.check()?;
    let records: Vec<SourceRecord> =
        sources.iter().map(|s| SourceRecord { kind: s.kind.clone(), url: s.url.clone(), sha256: s.sha256 }).collect();
    let manifest = Manifest::new(loaded, records, &overlay, artifacts.clone(), opts.mtime);
    artifacts.push(manifest.write(&pending)?);
    manifest::write_sha256sums(&pending, &artifacts)?;
    interrupt.check()?;

    let names: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
    output::commit_set(&pending, &opts.out, &names, manifest::SHA256SUMS_NAME)?;

    let mut warnings = assembled.warnings;
    warnings.extend(
        crate::check::check(loaded)
            .into_iter()
            .filter(|f| f.severity == crate::check::Severity::Warning)
            .map(|f| f.message),
    );
    Ok(BuildReport {
        profile: p.name.clone(),
        profile_sha256: loaded.sha256,
        out_dir: opts.out.clone(),
        sources,
        overlay: summarise(&overlay),
        artifacts,
        skipped: assembled.skipped,
        warnings,
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
/// binaries. `fetched` holds the verified copies, in `upstream` order.
fn assemble(
    loaded: &LoadedProfile,
    upstream: &[UpstreamSource],
    fetched: &[FetchedSource],
    staging: &Path,
    opts: &BuildOptions,
    interrupt: &Interrupt,
    overlay: &mut Overlay,
) -> Result<Assembled> {
    let p = &loaded.profile;
    let mut out = Assembled::default();
    for (src, got) in upstream.iter().zip(fetched) {
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
        .context(Stage::Archive)?;
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
