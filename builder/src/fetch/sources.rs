//! Every input a profile names, fetched and verified, each kept beside what the profile says
//! of it: callers pair sources by value, not by position in one flat list.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Artifact, Fetcher};
use crate::digest::Sha256Hex;
use crate::exit::ExitClass;
use crate::profile::{LoadedProfile, PreloadImage, UpstreamSource, redact_url_text, url_file_name};

/// A verified input, as `fetch` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FetchedSource {
    /// What it is: a [`SourceKind`](crate::profile::SourceKind) (`bundle`, `containerd`,
    /// `runc`, `cni-plugins`, `crictl`, `kubelet`, `kubeadm`, `kubectl`) or `image`.
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

/// An upstream download and its verified copy.
#[derive(Debug, Clone)]
pub struct FetchedUpstream {
    pub source: UpstreamSource,
    pub got: FetchedSource,
}

/// A preloaded image archive and its verified copy.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    pub image: PreloadImage,
    pub got: FetchedSource,
}

/// What [`fetch_sources`] verified: the upstream sources in
/// [`Profile::upstream_sources`](crate::profile::Profile::upstream_sources) order, and the
/// images in profile order.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub upstream: Vec<FetchedUpstream>,
    pub images: Vec<FetchedImage>,
}

impl Fetched {
    /// Every verified input, upstream sources first, as `fetch` and `build` report them.
    pub fn all(&self) -> impl Iterator<Item = &FetchedSource> {
        self.upstream.iter().map(|u| &u.got).chain(self.images.iter().map(|i| &i.got))
    }
}

/// Fetch and verify every input the profile names. A failure carries [`ExitClass::Fetch`].
pub fn fetch_sources(loaded: &LoadedProfile, fetcher: &Fetcher) -> Result<Fetched> {
    let p = &loaded.profile;
    let mut out = Fetched::default();
    for source in p.upstream_sources() {
        let name = source.file_name().to_owned();
        let artifact = Artifact { name: name.clone(), url: source.url.clone(), sha256: source.sha256 };
        let got = fetcher
            .fetch(&artifact)
            .with_context(|| format!("{} {}", source.kind, source.version))
            .context(ExitClass::Fetch)?;
        let got = FetchedSource {
            kind: source.kind.to_string(),
            name,
            url: redact_url_text(&source.url),
            sha256: got.sha256,
            size: got.size,
            path: got.path,
        };
        out.upstream.push(FetchedUpstream { source, got });
    }
    for image in &p.images {
        let got = if image.is_remote() {
            let name = url_file_name(&image.source).to_owned();
            fetcher.fetch(&Artifact { name, url: image.source.clone(), sha256: image.sha256 })
        } else {
            fetcher.fetch_local(&loaded.resolve(&image.source), &image.sha256)
        }
        .with_context(|| format!("image {}", image.reference))
        .context(ExitClass::Fetch)?;
        let got = FetchedSource {
            kind: "image".into(),
            name: image.reference.to_string(),
            url: image.shown_source(),
            sha256: got.sha256,
            size: got.size,
            path: got.path,
        };
        out.images.push(FetchedImage { image: image.clone(), got });
    }
    Ok(out)
}
