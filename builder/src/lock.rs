//! Lock files: every source a profile pins, checked against what its project publishes, in
//! one reviewable file.
//!
//! `nodeforge lock` downloads each upstream source and the checksum file its project
//! publishes beside it ([`published_checksum`]), and refuses a pinned digest the project
//! does not publish. The lock it writes is deterministic TOML (sorted as the profile lists
//! the sources, no timestamps, upstream URLs only, never a mirror's), so regenerating it for
//! an unchanged profile changes no byte and a changed source shows up as a diff.
//!
//! `--locked` (build, image, fetch) then refuses, before any download, a profile whose
//! sources differ from the lock in any URL or digest: CI builds what was reviewed.
//!
//! A lock is committed beside the profile, so it holds no secret: URLs are recorded with
//! their user name, password and query string replaced by `REDACTED` (as everywhere
//! nodeforge shows a URL), and compared that way. A rotated password or a re-signed download
//! link is therefore not a change to the lock; the pinned digest still decides what is
//! accepted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;
use crate::exit::ExitClass;
use crate::fetch::{FetchedImage, FetchedUpstream, Fetcher, fetch_sources, parse_checksum_file, published_checksum};
use crate::output::write_atomic;
use crate::profile::{LoadedProfile, Profile, SourceKind, redact_url_text};
use crate::version::Version;

/// The lock file format this nodeforge writes and reads.
pub const FORMAT: u32 = 1;

/// A lock lists a handful of sources; anything this large is not a lock file.
const MAX_LOCK_FILE_BYTES: u64 = 1 << 20;

/// Published checksum files are a few lines; anything larger is not one.
const MAX_CHECKSUM_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    /// The profile's `name`.
    pub profile: String,
    #[serde(default, rename = "source", skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<LockedSource>,
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<LockedImage>,
}

/// One upstream download, as its project publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    pub kind: SourceKind,
    pub version: Version,
    /// The upstream URL, credentials and query string redacted (a mirror used while locking
    /// is not recorded).
    pub url: String,
    pub sha256: Sha256Hex,
    pub size: u64,
    /// Where the project publishes the digest; it agreed with `sha256` when the lock was made.
    pub checksum_url: String,
}

/// One preloaded image archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    #[serde(rename = "ref")]
    pub reference: String,
    /// A URL, or a path relative to the profile, as the profile gives it.
    pub source: String,
    pub sha256: Sha256Hex,
    pub size: u64,
}

/// Where the lock of `profile` lives by default: beside it, `.lock` for `.toml`.
pub fn default_path(profile: &Path) -> PathBuf {
    profile.with_extension("lock")
}

/// Fetch every source and its published checksum file, check that the project publishes the
/// digest the profile pins, and return the lock. A disagreement fails with both digests and
/// both URLs ([`ExitClass::Fetch`]).
pub fn lock(loaded: &LoadedProfile, fetcher: &Fetcher) -> Result<Lock> {
    let p = &loaded.profile;
    let upstream = p.upstream_sources();
    let mut checksum_urls = Vec::new();
    // The checksum files first: they are small, and a disagreement needs no large download.
    for src in &upstream {
        let published = published_checksum(src);
        let what = format!("the checksum file of {} {}", src.kind, src.version);
        let bytes = fetcher
            .fetch_unpinned(&published.url, &published.name, MAX_CHECKSUM_FILE_BYTES)
            .with_context(|| what.clone())
            .context(ExitClass::Fetch)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not text", redact_url_text(&published.url)))
            .with_context(|| what.clone())
            .context(ExitClass::Fetch)?;
        let digest = parse_checksum_file(&text, &published.name)
            .with_context(|| format!("{} ({})", what, redact_url_text(&published.url)))
            .context(ExitClass::Fetch)?;
        if digest != src.sha256 {
            return Err(anyhow::anyhow!(
                "{} {}: the profile pins sha256 {} for {}, but {} publishes {}; check which one is right \
                 (a mistyped pin, the wrong version or arch, or a republished release) and fix the profile",
                src.kind,
                src.version,
                src.sha256,
                redact_url_text(&src.url),
                redact_url_text(&published.url),
                digest
            )
            .context(ExitClass::Fetch));
        }
        checksum_urls.push(redact_url_text(&published.url));
    }
    let fetched = fetch_sources(loaded, fetcher)?;
    let sources = fetched
        .upstream
        .into_iter()
        .zip(checksum_urls)
        .map(|(FetchedUpstream { source: src, got }, checksum_url)| LockedSource {
            kind: src.kind,
            version: src.version,
            url: redact_url_text(&src.url),
            sha256: got.sha256,
            size: got.size,
            checksum_url,
        })
        .collect();
    let images = fetched
        .images
        .into_iter()
        .map(|FetchedImage { image: img, got }| LockedImage {
            reference: img.reference.to_string(),
            source: img.shown_source(),
            sha256: got.sha256,
            size: got.size,
        })
        .collect();
    Ok(Lock { format: FORMAT, profile: p.name.clone(), sources, images })
}

impl Lock {
    /// The file's text: a comment saying what it is, then the TOML.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(self).context("serialising the lock")?;
        Ok(format!(
            "# Generated by `nodeforge lock`: the sources of profile \"{}\" as their projects publish them.\n\
             # Commit it; `nodeforge build --locked` refuses sources that differ from it.\n\n{body}",
            self.profile
        ))
    }

    /// Write the lock atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_toml()?.as_bytes(), 0o644)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_small_file(path, MAX_LOCK_FILE_BYTES).with_context(|| {
            format!("cannot read the lock file {} (write it with `nodeforge lock`)", path.display())
        })?;
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("lock file {} is not UTF-8 text", path.display()))?;
        let lock: Lock = toml::from_str(&text).map_err(|e| anyhow::anyhow!("lock file {}: {e}", path.display()))?;
        if lock.format != FORMAT {
            bail!("lock file {} has format {}; this nodeforge reads format {FORMAT}", path.display(), lock.format);
        }
        Ok(lock)
    }

    /// Every source and image of `profile` whose URL or digest is missing from the lock or
    /// differs from it, one line each. Empty means the profile builds what was locked.
    pub fn mismatches(&self, profile: &Profile) -> Vec<String> {
        let mut out = Vec::new();
        for src in profile.upstream_sources() {
            let url = redact_url_text(&src.url);
            match self.sources.iter().find(|l| l.kind == src.kind) {
                None => out.push(format!("{} {url}: not in the lock", src.kind)),
                Some(l) if l.url != url => {
                    out.push(format!("{}: the profile's URL is {url}, the lock's is {}", src.kind, l.url));
                }
                Some(l) if l.sha256 != src.sha256 => out.push(format!(
                    "{} {url}: the profile pins sha256 {}, the lock has {}",
                    src.kind, src.sha256, l.sha256
                )),
                Some(_) => {}
            }
        }
        for img in &profile.images {
            let reference = img.reference.to_string();
            match self.images.iter().find(|l| l.reference == reference) {
                None => out.push(format!("image {reference}: not in the lock")),
                Some(l) if l.source != img.shown_source() || l.sha256 != img.sha256 => out.push(format!(
                    "image {reference}: the profile has {} sha256 {}, the lock has {} sha256 {}",
                    img.shown_source(),
                    img.sha256,
                    l.source,
                    l.sha256
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// `--locked`: refuse a profile that differs from its lock ([`ExitClass::Profile`]).
pub fn enforce(loaded: &LoadedProfile, lock_path: &Path) -> Result<()> {
    let lock = Lock::load(lock_path).context(ExitClass::Profile)?;
    let mismatches = lock.mismatches(&loaded.profile);
    if !mismatches.is_empty() {
        return Err(anyhow::anyhow!(
            "{} does not match its lock {}:\n  {}\nreview the change, then run `nodeforge lock --profile {}` and commit the lock",
            loaded.path.display(),
            lock_path.display(),
            mismatches.join("\n  "),
            loaded.path.display()
        )
        .context(ExitClass::Profile));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    const PROFILE: &str = r#"
name = "t"
[kubernetes]
version = "1.30.2"
[kubernetes.binaries]
kubelet = "2222222222222222222222222222222222222222222222222222222222222222"
[containerd]
version = "1.7.27"
[containerd.release]
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
[runc]
version = "1.2.5"
sha256 = "3333333333333333333333333333333333333333333333333333333333333333"
[cni_plugins]
version = "1.6.2"
sha256 = "4444444444444444444444444444444444444444444444444444444444444444"
"#;

    fn lock_of(p: &Profile) -> Lock {
        let sources = p
            .upstream_sources()
            .into_iter()
            .map(|s| LockedSource {
                checksum_url: published_checksum(&s).url,
                kind: s.kind,
                version: s.version,
                url: s.url,
                sha256: s.sha256,
                size: 1,
            })
            .collect();
        Lock { format: FORMAT, profile: p.name.clone(), sources, images: vec![] }
    }

    #[test]
    fn round_trips_and_is_stable() {
        let p = Profile::parse(PROFILE).unwrap();
        let lock = lock_of(&p);
        let text = lock.to_toml().unwrap();
        assert_eq!(toml::from_str::<Lock>(&text).unwrap(), lock);
        assert_eq!(text, lock_of(&p).to_toml().unwrap());
        assert!(text.contains("kind = \"cni-plugins\""), "{text}");
        assert!(lock.mismatches(&p).is_empty());
    }

    #[test]
    fn changed_and_extra_sources_are_listed() {
        let p = Profile::parse(PROFILE).unwrap();
        let lock = lock_of(&p);
        let changed = PROFILE.replace(&"3".repeat(64), &"5".repeat(64))
            + "[crictl]\nversion = \"1.32.0\"\nsha256 = \"6666666666666666666666666666666666666666666666666666666666666666\"\n";
        let m = lock.mismatches(&Profile::parse(&changed).unwrap());
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("runc ") && m[0].contains(&"5".repeat(64)) && m[0].contains(&"3".repeat(64)), "{m:?}");
        assert!(m[1].starts_with("crictl ") && m[1].contains("not in the lock"), "{m:?}");
    }

    #[test]
    fn default_path_replaces_the_extension() {
        assert_eq!(default_path(Path::new("profiles/a.toml")), PathBuf::from("profiles/a.lock"));
    }
}
