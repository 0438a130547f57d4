//! `manifest.json`, the record of what went into a build, and `SHA256SUMS` over the
//! artifacts.
//!
//! Both are deterministic: the same inputs give the same bytes. Lists are sorted, the only
//! time recorded is the archive mtime the caller chose (SOURCE_DATE_EPOCH or a constant), and
//! nothing about the build host is included except the profile path as it was given.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::ArtifactInfo;
use crate::digest::Sha256Hex;
use crate::output::write_atomic;
use crate::overlay::{EntryKind, Origin, Overlay};
use crate::profile::{LoadedProfile, Profile};

pub const MANIFEST_NAME: &str = "manifest.json";
pub const SHA256SUMS_NAME: &str = "SHA256SUMS";

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub nodeforge_version: String,
    /// The modification time stamped on every archive entry, in seconds since the epoch.
    pub archive_mtime: u64,
    pub profile: ProfileRecord,
    /// Every external input, sorted by URL.
    pub sources: Vec<SourceRecord>,
    /// Every overlay entry, in overlay (path) order.
    pub entries: Vec<EntryRecord>,
    /// Every artifact written, sorted by name.
    pub artifacts: Vec<ArtifactInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileRecord {
    pub name: String,
    /// As given on the command line.
    pub path: String,
    /// Of the profile file's bytes.
    pub sha256: Sha256Hex,
    /// The profile with its defaults filled in: what the build actually used, with
    /// credentials and query strings in its URLs redacted.
    pub profile: Profile,
}

/// An external input: the release bundle, a preloaded image archive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SourceRecord {
    /// A URL (credentials and query string redacted), or a path as the profile writes it for
    /// local image archives and site overlays.
    pub url: String,
    /// For a site overlay directory, of its listing (see [`crate::site`]).
    pub sha256: Sha256Hex,
    /// What it is: `bundle`, `containerd`, `runc`, `cni-plugins`, `crictl`, `kubelet`,
    /// `kubeadm`, `kubectl`, `image` or `site-overlay`. Last, so records still sort by URL.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryRecord {
    /// Absolute, as the node sees it.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Octal, four digits (`"0755"`): JSON has no octal numbers and decimal modes mislead.
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    Dir,
    File,
    Symlink,
}

impl Manifest {
    pub fn new(
        profile: &LoadedProfile,
        mut sources: Vec<SourceRecord>,
        overlay: &Overlay,
        mut artifacts: Vec<ArtifactInfo>,
        archive_mtime: u64,
    ) -> Self {
        sources.sort();
        sources.dedup();
        artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        let entries = overlay
            .iter()
            .map(|(path, entry)| {
                let (kind, size, sha256, target) = match &entry.kind {
                    EntryKind::Dir => (EntryType::Dir, None, None, None),
                    EntryKind::File(c) => (EntryType::File, Some(c.size()), Some(c.sha256()), None),
                    EntryKind::Symlink(t) => (EntryType::Symlink, None, None, Some(t.clone())),
                };
                EntryRecord {
                    path: path.absolute(),
                    kind,
                    mode: format!("{:04o}", entry.mode),
                    size,
                    sha256,
                    target,
                    origin: entry.origin.clone(),
                }
            })
            .collect();
        Self {
            nodeforge_version: env!("CARGO_PKG_VERSION").to_owned(),
            archive_mtime,
            profile: ProfileRecord {
                name: profile.profile.name.clone(),
                path: profile.path.display().to_string(),
                sha256: profile.sha256,
                profile: profile.profile.redacted(),
            },
            sources,
            entries,
            artifacts,
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self).context("serialising the manifest")?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Write `manifest.json` into `dir` atomically; returns it as an artifact so it can be
    /// listed in SHA256SUMS.
    pub fn write(&self, dir: &Path) -> Result<ArtifactInfo> {
        let bytes = self.to_json()?;
        write_atomic(&dir.join(MANIFEST_NAME), &bytes, 0o644)?;
        Ok(ArtifactInfo {
            name: MANIFEST_NAME.to_owned(),
            size: bytes.len() as u64,
            sha256: Sha256Hex(Sha256::digest(&bytes).into()),
        })
    }
}

/// The `sha256sum` text for `artifacts`: `<hex>  <name>` per line (two spaces: text mode, as
/// `sha256sum` prints it), sorted by name.
pub fn sha256sums(artifacts: &[ArtifactInfo]) -> Result<String> {
    let mut sorted: Vec<&ArtifactInfo> = artifacts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for a in sorted {
        // sha256sum escapes such names with a leading backslash; nodeforge never makes them,
        // so refuse rather than write a line `sha256sum -c` would misread.
        if a.name.is_empty() || a.name.contains(['/', '\\', '\n', '\r']) {
            bail!("artifact name {:?} cannot be listed in {SHA256SUMS_NAME}", a.name);
        }
        out.push_str(&format!("{}  {}\n", a.sha256, a.name));
    }
    Ok(out)
}

/// Write `SHA256SUMS` into `dir` atomically.
pub fn write_sha256sums(dir: &Path, artifacts: &[ArtifactInfo]) -> Result<()> {
    write_atomic(&dir.join(SHA256SUMS_NAME), sha256sums(artifacts)?.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Content;
    use crate::profile::redact_url_text;

    fn loaded() -> LoadedProfile {
        let text = format!(
            "name = \"m\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n",
            "a".repeat(64)
        );
        let profile = Profile::parse(&text).expect("test profile parses");
        LoadedProfile { path: "profiles/m.toml".into(), profile, sha256: Sha256Hex([7; 32]) }
    }

    /// The sources a profile names, with the digests it pins. A caller that fetched from a
    /// mirror records the URL it actually used instead.
    fn sources_from_profile(profile: &Profile) -> Vec<SourceRecord> {
        let mut sources: Vec<SourceRecord> = profile
            .upstream_sources()
            .into_iter()
            .map(|u| SourceRecord { kind: u.kind.to_string(), url: redact_url_text(&u.url), sha256: u.sha256 })
            .collect();
        sources.extend(profile.images.iter().map(|i| SourceRecord {
            kind: "image".into(),
            url: i.shown_source(),
            sha256: i.sha256,
        }));
        sources
    }

    fn artifact(name: &str, byte: u8) -> ArtifactInfo {
        ArtifactInfo { name: name.into(), size: 3, sha256: Sha256Hex([byte; 32]) }
    }

    #[test]
    fn entries_and_lists_are_recorded_in_a_fixed_order() {
        let mut o = Overlay::new();
        let rendered = Origin::Rendered { renderer: "t".into() };
        o.add_file("etc/crictl.yaml", 0o644, Content::Inline(b"x\n".to_vec()), rendered.clone()).unwrap();
        o.add_symlink("usr/local/bin/k", "/usr/bin/k", rendered).unwrap();
        let p = loaded();
        let m = Manifest::new(
            &p,
            sources_from_profile(&p.profile),
            &o,
            vec![artifact("z.img", 1), artifact("a.tar.gz", 2)],
            1_700_000_000,
        );
        let v: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        assert_eq!(v["nodeforge_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["profile"]["path"], "profiles/m.toml");
        assert_eq!(v["profile"]["profile"]["containerd"]["version"], "1.7.27");
        assert_eq!(v["sources"][0]["sha256"], "a".repeat(64));
        let paths: Vec<_> = v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/etc", "/etc/crictl.yaml", "/usr", "/usr/local", "/usr/local/bin", "/usr/local/bin/k"]);
        let file = &v["entries"][1];
        assert_eq!(file["type"], "file");
        assert_eq!(file["mode"], "0644");
        assert_eq!(file["size"], 2);
        assert_eq!(file["origin"]["kind"], "rendered");
        assert!(file.get("target").is_none());
        assert_eq!(v["entries"][5]["target"], "/usr/bin/k");
        assert_eq!(v["entries"][0]["origin"]["kind"], "parent");
        assert_eq!(v["artifacts"][0]["name"], "a.tar.gz");
        assert_eq!(m.to_json().unwrap(), m.clone().to_json().unwrap());
    }

    #[test]
    fn sha256sums_is_sorted_and_refuses_odd_names() {
        let text = sha256sums(&[artifact("b", 0xbb), artifact("a", 0xaa)]).unwrap();
        assert_eq!(text, format!("{}  a\n{}  b\n", "aa".repeat(32), "bb".repeat(32)));
        assert!(sha256sums(&[artifact("x\ny", 0)]).is_err());
        assert!(sha256sums(&[artifact("../x", 0)]).is_err());
    }
}
