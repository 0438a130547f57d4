//! Downloads upstream artifacts into a content-addressed cache and verifies them.
//!
//! Every file nodeforge uses from outside is pinned by SHA-256 in the profile. A download is
//! hashed while it streams into a temporary file, and only a file whose digest matches is
//! renamed to `<cache>/sha256/<hex>`; a cached file is hashed again before every use, so a
//! damaged or tampered entry is replaced rather than trusted.
//!
//! Cache layout, all under one directory so renames never cross a filesystem:
//!
//! ```text
//! <cache>/sha256/<hex>      verified files, read-only, named by their digest
//! <cache>/tmp/              downloads in progress (unique names; deleted on error or drop;
//!                           each locked by its process, so the next run removes those left
//!                           by a killed one and never a live one's)
//! <cache>/locks/<hex>.lock  one lock per digest, held while that digest is checked or fetched
//! <cache>/locks/sweep.lock  taken shared to create a temp file, exclusively to sweep `tmp/`
//! ```
//!
//! A download fails when the server goes silent for [`FetchOptions::stall_timeout`] or sends
//! less than [`FetchOptions::min_download_rate`] over such a window; errors say which.
//!
//! Proxies come from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, upper or lower case), read once when a [`Fetcher`] is made.
//! The tests cover `HTTP_PROXY` and `NO_PROXY`; https through a CONNECT proxy is reqwest's
//! code and is not exercised here.

mod cache;
mod checksum;
mod http;
mod sources;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use url::Url;

pub use self::checksum::{PublishedChecksum, parse_checksum_file, published_checksum};
pub use self::http::{mirror_url, redact_url};
pub use self::sources::{Fetched, FetchedImage, FetchedSource, FetchedUpstream, fetch_sources};
use crate::digest::Sha256Hex;
use crate::io::{HashingReader, Interrupt, Interrupted, LimitReader, SizeLimitExceeded, open_regular};

/// Environment variable that replaces the default cache directory.
pub const CACHE_DIR_ENV: &str = "NODEFORGE_CACHE_DIR";

/// One upstream file and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file name, e.g. `cri-containerd-cni-1.7.27-linux-amd64.tar.gz`; used in messages.
    pub name: String,
    /// Where upstream publishes it; a mirror, if set, replaces the scheme and host.
    pub url: String,
    pub sha256: Sha256Hex,
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Replaces the scheme, host and port of every upstream URL and keeps its path (after the
    /// mirror's own path, if any), for air-gapped mirrors that copy the release layout. The
    /// pinned digests still decide what is accepted.
    pub mirror: Option<Url>,
    pub cache_dir: PathBuf,
    /// Largest download accepted; stops a misconfigured mirror from filling the disk.
    pub max_download_bytes: u64,
    /// Draw a progress bar on stderr. Set it only when stderr is a terminal.
    pub progress: bool,
    /// An extra PEM root certificate (or bundle), for a mirror behind an internal CA. It is
    /// added to the system's roots, not used instead of them.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// A download fails when no byte arrives for this long (and a request when its response
    /// does not begin within it). reqwest's blocking timeout applies to each read, so this
    /// detects a silent server without capping how long a large download may take.
    pub stall_timeout: Duration,
    /// A download fails when, over any `stall_timeout` window, fewer than this many bytes per
    /// second arrive: a server that trickles a byte now and then never goes silent long
    /// enough for the stall timeout, yet would take days. 0 turns the check off.
    pub min_download_rate: u64,
    /// Polled between chunks so a signal stops a download and removes its temporary file.
    pub interrupt: Interrupt,
}

impl FetchOptions {
    pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 2 << 30;
    pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 60;
    /// 1 KiB/s: a 60 MB release at that rate takes 17 hours; nothing real is that slow.
    pub const DEFAULT_MIN_DOWNLOAD_RATE: u64 = 1024;

    /// Defaults for everything but the cache directory (see [`default_cache_dir`]).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            mirror: None,
            cache_dir: cache_dir.into(),
            max_download_bytes: Self::DEFAULT_MAX_DOWNLOAD_BYTES,
            progress: false,
            ca_cert: None,
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(Self::DEFAULT_STALL_TIMEOUT_SECS),
            min_download_rate: Self::DEFAULT_MIN_DOWNLOAD_RATE,
            interrupt: Interrupt::default(),
        }
    }
}

/// `$NODEFORGE_CACHE_DIR` if set, else `nodeforge` in the user's cache directory
/// (`$XDG_CACHE_HOME`, usually `~/.cache`).
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = directories::BaseDirs::new()
        .context("cannot find a cache directory (no home directory); set NODEFORGE_CACHE_DIR")?;
    Ok(base.cache_dir().join("nodeforge"))
}

/// A verified file in the cache. Nothing but nodeforge writes there, and entries are
/// read-only, so the bytes at `path` are the ones that were hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub path: PathBuf,
    pub sha256: Sha256Hex,
    pub size: u64,
}

/// Failures a caller may want to tell apart. Each names the URL or path it is about; URLs
/// have credentials and query strings redacted (see [`redact_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(
        "checksum mismatch for {location}: expected sha256 {expected}, got {actual}; the file \
         was discarded. Check the mirror or source; if upstream really republished it, verify \
         the new file and update the pinned digest"
    )]
    ChecksumMismatch { location: String, expected: Sha256Hex, actual: Sha256Hex },
    #[error("{url} answered HTTP {status}{}", status_hint(*.status))]
    HttpStatus { url: String, status: u16 },
    #[error("{url} ended after {received} of {expected} bytes: the connection closed early")]
    Truncated { url: String, expected: u64, received: u64 },
    #[error(
        "{url}: no data for {} s after {received}{} bytes: the server stalled (raise --stall-timeout \
         if a link really pauses that long)",
        secs(.timeout), of(.expected)
    )]
    Stalled { url: String, timeout: Duration, received: u64, expected: Option<u64> },
    #[error(
        "{url}: download slower than {} over {} s ({window_bytes} bytes in that time, {received}{} in \
         all): the server trickles; lower --min-download-rate (0 turns the check off) if the link really is that slow",
        rate(.min_rate), secs(.window), of(.expected)
    )]
    TooSlow { url: String, min_rate: u64, window: Duration, window_bytes: u64, received: u64, expected: Option<u64> },
    #[error(
        "{url} is larger than the download limit of {limit} bytes; raise the limit if this \
         artifact really is that large"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("refusing the redirect from {from} to {to}: it downgrades https to plain http")]
    InsecureRedirect { from: String, to: String },
    #[error("{url} redirected more than {limit} times")]
    TooManyRedirects { url: String, limit: usize },
}

/// Seconds as people write them: `60`, `0.3`.
fn secs(d: &Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}

fn rate(bytes_per_sec: &u64) -> String {
    match *bytes_per_sec {
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB/s", n / 1024),
        n if n >= 1024 => format!("{:.1} KiB/s", n as f64 / 1024.0),
        n => format!("{n} B/s"),
    }
}

/// ` of N` when the length is known.
fn of(expected: &Option<u64>) -> String {
    expected.map(|n| format!(" of {n}")).unwrap_or_default()
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 => ": check the version and architecture in the profile, or that the mirror has the file",
        401 | 403 => ": the server refused access; check the mirror's credentials",
        _ => "",
    }
}

/// Downloads and verifies artifacts into one cache directory. Safe to share between threads,
/// and between processes that use the same cache.
#[derive(Debug)]
pub struct Fetcher {
    options: FetchOptions,
    client: reqwest::blocking::Client,
    cache: cache::Cache,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Self> {
        let client = http::client(&options)?;
        let cache = cache::Cache::open(&options.cache_dir)?;
        Ok(Self { options, client, cache })
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The path of a verified copy of `artifact`, downloading it if the cache has no good one.
    pub fn fetch(&self, artifact: &Artifact) -> Result<CachedFile> {
        let url = match &self.options.mirror {
            Some(mirror) => mirror_url(&artifact.url, mirror),
            None => http::parse_url(&artifact.url),
        }
        .with_context(|| format!("the URL of {}", artifact.name))?;
        let shown = redact_url(&url);
        let entry = self.cache.lock(&artifact.sha256, &self.options.interrupt)?;
        if let Some(hit) = entry.lookup(&self.options.interrupt)? {
            tracing::debug!(name = %artifact.name, path = %hit.path.display(), "using the cached copy");
            return Ok(hit);
        }
        tracing::info!(name = %artifact.name, url = %shown, "downloading");
        let mut temp = entry.temp_file()?;
        let (actual, size) = http::download(&self.client, &self.options, &url, &artifact.name, temp.as_file_mut())?;
        if actual != artifact.sha256 {
            // `temp` is dropped on return, which deletes it: nothing enters the cache.
            return Err(FetchError::ChecksumMismatch { location: shown, expected: artifact.sha256, actual }.into());
        }
        entry.commit(temp, size)
    }

    /// A small file whose digest nobody pinned (a published checksum file), read into memory
    /// through the mirror like any download, never cached: it is what a digest is checked
    /// against, not something installed. At most `limit` bytes.
    pub fn fetch_unpinned(&self, url: &str, name: &str, limit: u64) -> Result<Vec<u8>> {
        let url = match &self.options.mirror {
            Some(mirror) => mirror_url(url, mirror),
            None => http::parse_url(url),
        }
        .with_context(|| format!("the URL of {name}"))?;
        let mut options = self.options.clone();
        options.max_download_bytes = limit;
        options.progress = false;
        let mut temp = tempfile::tempfile().context("creating a temporary file")?;
        http::download(&self.client, &options, &url, name, &mut temp)?;
        let mut bytes = Vec::new();
        io::Seek::rewind(&mut temp)?;
        temp.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Verify a local file (an image archive next to the profile) and return a cached copy.
    ///
    /// The file is copied into the cache while it is hashed (one read, like a download), so
    /// what later steps read is the verified copy: the user's file may change or vanish
    /// after the check without the build packaging bytes nobody checked. When the cache
    /// already holds a good copy of the digest the source is not read at all. The download
    /// cap applies as to a download: a regular file larger than it is refused before a byte
    /// is copied, and one that grows while it is read is stopped at the cap.
    pub fn fetch_local(&self, path: &Path, sha256: &Sha256Hex) -> Result<CachedFile> {
        let entry = self.cache.lock(sha256, &self.options.interrupt)?;
        if let Some(hit) = entry.lookup(&self.options.interrupt)? {
            tracing::debug!(source = %path.display(), "using the cached copy");
            return Ok(hit);
        }
        let source = open_regular(path).with_context(|| format!("cannot open {}", path.display()))?;
        let limit = self.options.max_download_bytes;
        let shown = path.display().to_string();
        let size = source.metadata().with_context(|| format!("cannot read the size of {shown}"))?.len();
        if size > limit {
            return Err(FetchError::TooLarge { url: shown, limit }.into());
        }
        let mut temp = entry.temp_file()?;
        let mut reader = HashingReader::new(LimitReader::new(source, limit, &shown));
        copy_interruptibly(&self.options.interrupt, &mut reader, temp.as_file_mut()).map_err(|e| {
            let too_large = e.downcast_ref::<io::Error>().and_then(io_cause::<SizeLimitExceeded>).is_some();
            if too_large {
                FetchError::TooLarge { url: shown.clone(), limit }.into()
            } else {
                e.context(format!("copying {shown} into the cache"))
            }
        })?;
        let (actual, size) = reader.finish();
        if actual != *sha256 {
            return Err(FetchError::ChecksumMismatch {
                location: path.display().to_string(),
                expected: *sha256,
                actual,
            }
            .into());
        }
        entry.commit(temp, size)
    }
}

/// [`Interrupt::copy`], but an interrupt comes back as the [`Interrupted`] error itself so a
/// caller can tell it from an I/O failure with `downcast_ref`.
fn copy_interruptibly<R: Read, W: io::Write>(interrupt: &Interrupt, r: &mut R, w: &mut W) -> Result<u64> {
    interrupt.copy(r, w).map_err(|e| {
        if io_cause::<Interrupted>(&e).is_some() { anyhow::Error::new(Interrupted) } else { anyhow::Error::new(e) }
    })
}

/// The typed error an adapter (limit, interrupt) wrapped in an `io::Error`, if it is a `T`.
fn io_cause<T: std::error::Error + 'static>(e: &io::Error) -> Option<&T> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<T>())
}

#[cfg(test)]
// A failed unwrap in a test is a test failure with a location: what we want.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_have_safe_defaults() {
        let o = FetchOptions::new("/tmp/c");
        assert_eq!(o.max_download_bytes, 2 * 1024 * 1024 * 1024);
        assert!(!o.progress);
        assert!(o.mirror.is_none());
        assert_eq!(o.connect_timeout, Duration::from_secs(30));
    }

    #[test]
    fn mismatch_message_names_everything() {
        let e = FetchError::ChecksumMismatch {
            location: "https://example.test/a.tgz".into(),
            expected: Sha256Hex([0xaa; 32]),
            actual: Sha256Hex([0xbb; 32]),
        };
        let s = e.to_string();
        assert!(s.contains("https://example.test/a.tgz"), "{s}");
        assert!(s.contains(&"aa".repeat(32)), "{s}");
        assert!(s.contains(&"bb".repeat(32)), "{s}");
    }
}
