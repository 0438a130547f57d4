//! Profiles: what a node runs, read from TOML.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo such as `cgroup_drvier` fails
//! loudly with its line and column instead of silently building a node with the default.
//! Structural rules live here; rules about combinations that cannot work live in `check`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;
pub use crate::duration::GoDuration;
use crate::imageref::ImageRef;
use crate::version::Version;

mod redact;
mod validate;

pub use redact::{redact_url_text, url_file_name};

/// The GitHub release URL of the cri-containerd-cni bundle. `{version}` and `{arch}` are
/// substituted; `--mirror` later swaps the scheme and host.
pub const DEFAULT_BUNDLE_URL: &str = "https://github.com/containerd/containerd/releases/download/v{version}/cri-containerd-cni-{version}-linux-{arch}.tar.gz";
/// containerd's own release archive (`bin/` layout), published for every line incl. 2.x.
pub const DEFAULT_CONTAINERD_URL: &str =
    "https://github.com/containerd/containerd/releases/download/v{version}/containerd-{version}-linux-{arch}.tar.gz";
/// runc's static binary; its digests are listed together in `runc.sha256sum`.
pub const DEFAULT_RUNC_URL: &str = "https://github.com/opencontainers/runc/releases/download/v{version}/runc.{arch}";
/// The CNI reference plugins.
pub const DEFAULT_CNI_PLUGINS_URL: &str = "https://github.com/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz";
/// crictl from cri-tools.
pub const DEFAULT_CRICTL_URL: &str =
    "https://github.com/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz";
/// The official Kubernetes node binaries; `{name}` is kubelet, kubeadm or kubectl.
pub const DEFAULT_KUBERNETES_URL: &str = "https://dl.k8s.io/release/v{version}/bin/linux/{arch}/{name}";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, used in messages and as the default hostname.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub arch: Arch,
    pub kubernetes: Kubernetes,
    pub containerd: Containerd,
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub registry: Registry,
    /// OCI image archives imported into containerd's `k8s.io` namespace at first boot.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<PreloadImage>,
    /// runc, when containerd comes from its per-component release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runc: Option<Component>,
    /// The CNI reference plugins, when containerd comes from its per-component release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_plugins: Option<Component>,
    /// crictl, optional beside the per-component release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crictl: Option<Component>,
    /// Site overlays: the operator's own files laid over the generated tree, in order.
    #[serde(default, rename = "overlay", skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<SiteOverlay>,
    #[serde(default)]
    pub seed: Seed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The kubelet version the node is prepared for; decides which kubelet flags exist.
    pub version: Version,
    /// kubelet, kubeadm and kubectl from the official download location. Without it the node
    /// gets the runtime only, and the kubelet comes from elsewhere (a package, a later step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binaries: Option<KubernetesBinaries>,
}

/// Pinned digests of the Kubernetes node binaries (published as `<binary>.sha256` beside each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesBinaries {
    /// URL template; `{version}`, `{arch}` and `{name}` are substituted.
    #[serde(default = "default_kubernetes_url")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Sha256Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm: Option<Sha256Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubectl: Option<Sha256Hex>,
}

fn default_kubernetes_url() -> String {
    DEFAULT_KUBERNETES_URL.to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Containerd {
    pub version: Version,
    /// The cri-containerd-cni release bundle (containerd ≤ 1.7). Exactly one of `bundle` and
    /// `release` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Bundle>,
    /// containerd's own release archive (`containerd-<v>-linux-<arch>.tar.gz`), used with
    /// `[runc]`, `[cni_plugins]` and optionally `[crictl]`: the only source for 2.x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ContainerdRelease>,
    /// The config.toml schema to write: 2 or 3. Default: 2 for containerd 1.x, 3 for 2.x.
    /// `nodeforge check` refuses 3 on 1.x (ignored or refused there, depending on the patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<ConfigVersion>,
    /// Extra containerd settings, deep-merged into the rendered config.toml. Keys are written
    /// as in config.toml for the schema in use (`[containerd.config.plugins."io.containerd…"]`);
    /// a key nodeforge itself renders is refused with its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<toml::Table>,
}

/// A containerd config schema version nodeforge can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum ConfigVersion {
    /// `version = 2`: containerd 1.3+, read (and migrated) by 2.x too.
    V2,
    /// `version = 3`: containerd 2.0+.
    V3,
}

impl ConfigVersion {
    pub fn number(self) -> u8 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

impl TryFrom<i64> for ConfigVersion {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            2 => Ok(ConfigVersion::V2),
            3 => Ok(ConfigVersion::V3),
            _ => Err(format!(
                "config_version {n} is not one nodeforge writes: use 2 (containerd 1.x) or 3 (containerd 2.x)"
            )),
        }
    }
}

impl From<ConfigVersion> for i64 {
    fn from(v: ConfigVersion) -> i64 {
        i64::from(v.number())
    }
}

impl Containerd {
    /// The schema the rendered config.toml uses: the profile's choice or the line's default.
    pub fn effective_config_version(&self) -> ConfigVersion {
        self.config_version.unwrap_or(if crate::compat::containerd_config_version(&self.version) == 3 {
            ConfigVersion::V3
        } else {
            ConfigVersion::V2
        })
    }
}

/// The node's cgroup hierarchy, which the kubelet ≥ 1.35 requires to be v2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum CgroupVersion {
    V1,
    #[default]
    V2,
}

impl TryFrom<i64> for CgroupVersion {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            1 => Ok(CgroupVersion::V1),
            2 => Ok(CgroupVersion::V2),
            _ => Err(format!("cgroup_version {n} does not exist: use 1 or 2")),
        }
    }
}

impl From<CgroupVersion> for i64 {
    fn from(v: CgroupVersion) -> i64 {
        match v {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerdRelease {
    /// URL template; `{version}` and `{arch}` are substituted.
    #[serde(default = "default_containerd_url")]
    pub url: String,
    /// The digest published beside the archive (`<file>.sha256sum`), pinned here.
    pub sha256: Sha256Hex,
    /// Parts of the release a node does not need, installed only on request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<Extra>,
}

fn default_containerd_url() -> String {
    DEFAULT_CONTAINERD_URL.to_owned()
}

/// One separately released component: runc, the CNI plugins, crictl. The URL template's
/// default depends on the component (see the `DEFAULT_*_URL` constants).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub version: Version,
    /// URL template; `{version}` and `{arch}` are substituted. Defaults to the upstream
    /// release location of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The digest published by the component's release (each project has its own checksum
    /// file convention), pinned here.
    pub sha256: Sha256Hex,
}

/// Where the node's runtime comes from.
#[derive(Debug, Clone, Copy)]
pub enum Sources<'a> {
    /// The cri-containerd-cni bundle: containerd, runc, CNI plugins and crictl in one archive.
    Bundle(&'a Bundle),
    /// containerd's release plus runc, the CNI plugins and (optionally) crictl.
    Components {
        containerd: &'a ContainerdRelease,
        runc: &'a Component,
        cni_plugins: &'a Component,
        crictl: Option<&'a Component>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// URL template; `{version}` and `{arch}` are substituted.
    #[serde(default = "default_bundle_url")]
    pub url: String,
    /// The digest published beside the release (`<file>.sha256sum`), pinned here.
    pub sha256: Sha256Hex,
    /// Parts of the bundle a node does not need, installed only on request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<Extra>,
}

fn default_bundle_url() -> String {
    DEFAULT_BUNDLE_URL.to_owned()
}

/// Optional parts of the bundle, dropped by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Extra {
    /// `critest`, the CRI validation suite.
    Critest,
    /// `containerd-stress`, a load generator.
    ContainerdStress,
    /// `opt/containerd/cluster`, GCE bring-up scripts.
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// The kubeadm default since 1.22 and the only sane choice on a systemd host.
    #[default]
    Systemd,
    Cgroupfs,
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Rendered into containerd (`SystemdCgroup`) and the kubelet (`--cgroup-driver`)
    /// from this one value, so the two cannot disagree.
    #[serde(default)]
    pub cgroup_driver: CgroupDriver,
    /// The cgroup hierarchy the node boots with (1 = legacy/hybrid, 2 = unified). Only
    /// checked: kubelet ≥ 1.35 refuses v1 by default.
    #[serde(default)]
    pub cgroup_version: CgroupVersion,
    /// The pod sandbox ("pause") image. Defaults to the one kubeadm of the profile's
    /// Kubernetes version expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<ImageRef>,
    /// Pod addresses handed out by the bridge CNI config's host-local IPAM.
    #[serde(default = "default_cni_subnet")]
    pub cni_subnet: Ipv4Net,
    /// The kubelet's `runtimeRequestTimeout`, a Go duration such as `2m` or `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_request_timeout: Option<GoDuration>,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            cgroup_driver: CgroupDriver::default(),
            cgroup_version: CgroupVersion::default(),
            sandbox_image: None,
            cni_subnet: default_cni_subnet(),
            runtime_request_timeout: None,
        }
    }
}

fn default_cni_subnet() -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(10, 88, 0, 0), 16).expect("constant prefix length")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Per-registry host configuration, rendered as `certs.d/<host>/hosts.toml`.
    #[serde(default, rename = "mirror", skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<RegistryMirror>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryMirror {
    /// The registry being mirrored, as it appears in image references (`docker.io`,
    /// `registry.k8s.io`, `host:5000`), or `_default` for every registry.
    pub host: String,
    /// Mirror endpoints tried in order before the upstream.
    pub endpoints: Vec<String>,
    /// What the mirror may do: `pull`, `resolve`, `push`.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    /// The upstream to fall back to; omitted means the registry itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Disable TLS verification for the mirror endpoints (test setups only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_verify: bool,
}

fn default_capabilities() -> Vec<String> {
    vec!["pull".into(), "resolve".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadImage {
    /// The name the image is imported under; must match the archive's index annotation.
    #[serde(rename = "ref")]
    pub reference: ImageRef,
    /// An OCI image archive: a path (relative to the profile file) or an http(s) URL.
    pub source: String,
    pub sha256: Sha256Hex,
}

impl PreloadImage {
    /// Whether `source` is a URL (else a path relative to the profile).
    pub fn is_remote(&self) -> bool {
        validate::is_url(&self.source)
    }

    /// `source` as it may be shown or recorded: a URL with credentials and query redacted.
    pub fn shown_source(&self) -> String {
        if self.is_remote() { redact_url_text(&self.source) } else { self.source.clone() }
    }
}

/// One `[[overlay]]`: a directory or a tar archive of files the site adds to every node (an
/// internal CA, registry hosts, sysctl tuning, a unit). Read as hostile input, like a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOverlay {
    /// A directory, `.tar`, `.tar.gz` or `.tgz`; relative to the profile file, or absolute.
    pub path: String,
    /// Paths (relative to `/`) where this overlay's file may replace one nodeforge generates
    /// or an earlier overlay adds. Each must replace something.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// Paths whose setuid/setgid bits this overlay may keep; anywhere else they are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setuid: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// `local-hostname` in meta-data; defaults to the profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `instance-id` in meta-data; defaults to one derived from the profile digest, so the
    /// same profile gives the same seed and a changed profile re-runs first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// SSH public keys for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// The largest profile read: the shipped ones are 2 KiB.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// A profile as loaded: the parsed value plus where it came from and the digest of its
/// bytes (recorded in the manifest).
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub path: PathBuf,
    pub profile: Profile,
    pub sha256: Sha256Hex,
}

impl LoadedProfile {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_small_file(path, MAX_PROFILE_BYTES)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        let text =
            std::str::from_utf8(&bytes).with_context(|| format!("profile {} is not UTF-8 text", path.display()))?;
        let profile = Profile::parse(text).map_err(|e| anyhow::anyhow!("profile {}: {e}", path.display()))?;
        Ok(Self { path: path.to_owned(), profile, sha256: Sha256Hex(Sha256::digest(&bytes).into()) })
    }

    /// Resolve a path written in the profile relative to the profile's directory.
    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(relative)
    }
}

impl Profile {
    /// Parse profile text. A syntax or type error carries line, column and a snippet from
    /// `toml`; a structural error names the tables involved.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(ProfileError::Toml)?;
        profile.sources().map_err(ProfileError::Structure)?;
        validate::validate(&profile).map_err(ProfileError::Structure)?;
        Ok(profile)
    }

    /// Where the runtime comes from: exactly one of the bundle and the per-component release,
    /// and the component tables only with the latter.
    pub fn sources(&self) -> Result<Sources<'_>, String> {
        let c = &self.containerd;
        match (&c.bundle, &c.release) {
            (Some(_), Some(_)) => Err("[containerd.bundle] and [containerd.release] are both given: pick one \
                 (the bundle for containerd ≤ 1.7, the release with [runc] and [cni_plugins] for any line)"
                .into()),
            (None, None) => Err("[containerd] names no source: add [containerd.release] with [runc] and \
                 [cni_plugins] (any line), or [containerd.bundle] (containerd ≤ 1.7)"
                .into()),
            (Some(bundle), None) => {
                let extra: Vec<&str> = [
                    ("[runc]", self.runc.is_some()),
                    ("[cni_plugins]", self.cni_plugins.is_some()),
                    ("[crictl]", self.crictl.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, given)| given.then_some(name))
                .collect();
                if extra.is_empty() {
                    Ok(Sources::Bundle(bundle))
                } else {
                    Err(format!(
                        "{} given with [containerd.bundle]: the bundle pins its own runc, CNI plugins and crictl; \
                         use [containerd.release] to choose them",
                        extra.join(" and ")
                    ))
                }
            }
            (None, Some(containerd)) => match (&self.runc, &self.cni_plugins) {
                _ if containerd.extras.iter().any(|e| *e != Extra::ContainerdStress) => {
                    Err("[containerd.release] extras: containerd's own archive has only \"containerd-stress\"; \
                     critest and the GCE cluster scripts (\"critest\", \"cluster\") come with the bundle only"
                        .into())
                }
                (Some(runc), Some(cni_plugins)) => {
                    Ok(Sources::Components { containerd, runc, cni_plugins, crictl: self.crictl.as_ref() })
                }
                (runc, _) => Err(format!(
                    "[containerd.release] needs {}: containerd's own archive carries neither runc nor the CNI plugins",
                    if runc.is_none() { "[runc] (and [cni_plugins])" } else { "[cni_plugins]" }
                )),
            },
        }
    }

    /// Every upstream download the profile pins, in build order: the runtime sources, then
    /// the Kubernetes binaries. (Image archives are listed separately.)
    pub fn upstream_sources(&self) -> Vec<UpstreamSource> {
        let (v, arch) = (&self.containerd.version, self.arch);
        let mut out = Vec::new();
        match self.runtime_sources() {
            Sources::Bundle(b) => out.push(UpstreamSource::new(SourceKind::Bundle, &b.url, v, arch, b.sha256)),
            Sources::Components { containerd, runc, cni_plugins, crictl } => {
                out.push(UpstreamSource::new(SourceKind::Containerd, &containerd.url, v, arch, containerd.sha256));
                for (kind, c) in [
                    (SourceKind::Runc, Some(runc)),
                    (SourceKind::CniPlugins, Some(cni_plugins)),
                    (SourceKind::Crictl, crictl),
                ] {
                    if let Some(c) = c {
                        let url = c.url.as_deref().unwrap_or(kind.default_url());
                        out.push(UpstreamSource::new(kind, url, &c.version, arch, c.sha256));
                    }
                }
            }
        }
        if let Some(bins) = &self.kubernetes.binaries {
            let k8s = &self.kubernetes.version;
            for (kind, digest) in [
                (SourceKind::Kubelet, bins.kubelet),
                (SourceKind::Kubeadm, bins.kubeadm),
                (SourceKind::Kubectl, bins.kubectl),
            ] {
                if let Some(sha256) = digest {
                    let template = bins.url.replace("{name}", kind.as_str());
                    out.push(UpstreamSource::new(kind, &template, k8s, arch, sha256));
                }
            }
        }
        out
    }

    /// The runtime sources; `parse` has already checked their structure.
    pub fn runtime_sources(&self) -> Sources<'_> {
        self.sources().expect("profile structure is checked when it is parsed")
    }

    pub fn hostname(&self) -> &str {
        self.seed.hostname.as_deref().unwrap_or(&self.name)
    }
}

/// What an upstream download is; decides how it is unpacked and which checksum file its
/// project publishes beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Bundle,
    Containerd,
    Runc,
    CniPlugins,
    Crictl,
    Kubelet,
    Kubeadm,
    Kubectl,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Bundle => "bundle",
            SourceKind::Containerd => "containerd",
            SourceKind::Runc => "runc",
            SourceKind::CniPlugins => "cni-plugins",
            SourceKind::Crictl => "crictl",
            SourceKind::Kubelet => "kubelet",
            SourceKind::Kubeadm => "kubeadm",
            SourceKind::Kubectl => "kubectl",
        }
    }

    /// The upstream URL template of the component.
    pub fn default_url(self) -> &'static str {
        match self {
            SourceKind::Bundle => DEFAULT_BUNDLE_URL,
            SourceKind::Containerd => DEFAULT_CONTAINERD_URL,
            SourceKind::Runc => DEFAULT_RUNC_URL,
            SourceKind::CniPlugins => DEFAULT_CNI_PLUGINS_URL,
            SourceKind::Crictl => DEFAULT_CRICTL_URL,
            SourceKind::Kubelet | SourceKind::Kubeadm | SourceKind::Kubectl => DEFAULT_KUBERNETES_URL,
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pinned upstream download, its URL template expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSource {
    pub kind: SourceKind,
    pub version: Version,
    pub url: String,
    pub sha256: Sha256Hex,
}

impl UpstreamSource {
    fn new(kind: SourceKind, template: &str, version: &Version, arch: Arch, sha256: Sha256Hex) -> Self {
        Self { kind, version: version.clone(), url: expand_template(template, version, arch), sha256 }
    }

    /// The file name at the end of the URL's path (never its query string).
    pub fn file_name(&self) -> &str {
        url_file_name(&self.url)
    }
}

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    Toml(toml::de::Error),
    #[error("{0}")]
    Structure(String),
}

/// Substitute `{version}` and `{arch}` in a URL template.
pub fn expand_template(template: &str, version: &Version, arch: Arch) -> String {
    let vars: BTreeMap<&str, String> = [("version", version.to_string()), ("arch", arch.to_string())].into();
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), &v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[kubernetes]
version = "1.30.2"
[containerd]
version = "1.7.13"
[containerd.bundle]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn minimal_profile_gets_defaults() {
        let p = Profile::parse(MINIMAL).unwrap();
        assert_eq!(p.node.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(p.node.cni_subnet.to_string(), "10.88.0.0/16");
        assert_eq!(
            p.upstream_sources()[0].url,
            "https://github.com/containerd/containerd/releases/download/v1.7.13/cri-containerd-cni-1.7.13-linux-amd64.tar.gz"
        );
    }

    #[test]
    fn release_extras_are_the_release_archive_s_own() {
        let components = format!(
            "name = \"t\"\n[kubernetes]\nversion = \"1.35.1\"\n[containerd]\nversion = \"2.2.1\"\n\
             [containerd.release]\nsha256 = \"{z}\"\nextras = [EXTRAS]\n[runc]\nversion = \"1.3.4\"\nsha256 = \"{z}\"\n\
             [cni_plugins]\nversion = \"1.8.0\"\nsha256 = \"{z}\"\n",
            z = "0".repeat(64)
        );
        assert!(Profile::parse(&components.replace("EXTRAS", "\"containerd-stress\"")).is_ok());
        let err = Profile::parse(&components.replace("EXTRAS", "\"critest\"")).unwrap_err().to_string();
        assert!(err.contains("bundle only"), "{err}");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = MINIMAL.replace("[containerd.bundle]", "[node]\ncgroup_drvier = \"systemd\"\n[containerd.bundle]");
        let err = Profile::parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 8, column 1"), "{err}");
        assert!(err.contains("cgroup_drvier"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let text = MINIMAL.replace("0000000000000000000000000000000000000000000000000000000000000000", "abc");
        assert!(Profile::parse(&text).unwrap_err().to_string().contains("SHA-256"));
        let text = format!("{MINIMAL}\n[node]\nruntime_request_timeout = \"15 minutes\"\n");
        assert!(Profile::parse(&text).unwrap_err().to_string().contains("duration"));
        let text = format!("{MINIMAL}\n[node]\ncgroup_driver = \"cgroupsfs\"\n");
        assert!(Profile::parse(&text).unwrap_err().to_string().contains("cgroupfs"));
        let text = MINIMAL.replace("[containerd.bundle]", "config_version = 4\n[containerd.bundle]");
        assert!(Profile::parse(&text).unwrap_err().to_string().contains("use 2"), "{text}");
        let text = format!("{MINIMAL}\n[node]\ncgroup_version = 3\n");
        assert!(Profile::parse(&text).unwrap_err().to_string().contains("use 1 or 2"));
    }

    #[test]
    fn site_overlays_are_checked_entry_by_entry() {
        let ok = format!(
            "{MINIMAL}[[overlay]]\npath = \"site\"\n[[overlay]]\npath = \"/srv/b.tar.gz\"\n\
             overrides = [\"/etc/crictl.yaml\"]\nsetuid = [\"usr/local/bin/h\"]\n"
        );
        let p = Profile::parse(&ok).unwrap();
        assert_eq!(p.overlays.len(), 2);
        assert_eq!(p.overlays[1].overrides, ["/etc/crictl.yaml"]);
        let err = |extra: &str| Profile::parse(&format!("{ok}[[overlay]]\n{extra}\n")).unwrap_err().to_string();
        let e = err("path = \"\"");
        assert!(e.contains("[[overlay]] #3 path"), "{e}");
        let e = err("path = \"a\\nb\"");
        assert!(e.contains("[[overlay]] #3 path"), "{e}");
        let e = err("path = \"https://example.test/site.tar.gz\"");
        assert!(e.contains("[[overlay]] #3 path") && e.contains("local"), "{e}");
        let e = err("path = \"s\"\noverrides = [\"etc/../x\"]");
        assert!(e.contains("[[overlay]] #3 overrides[0]"), "{e}");
        let e = err("path = \"s\"\nsetuid = [\"a\", \"/a\"]");
        assert!(e.contains("[[overlay]] #3 setuid[1]") && e.contains("twice"), "{e}");
        let e = err("path = \"s\"\nmode = 1");
        assert!(e.contains("unknown field `mode`"), "{e}");
    }

    #[test]
    fn config_version_defaults_by_line() {
        let p = Profile::parse(MINIMAL).unwrap();
        assert_eq!(p.containerd.effective_config_version(), ConfigVersion::V2);
        assert_eq!(p.node.cgroup_version, CgroupVersion::V2);
        let text = MINIMAL.replace("[containerd.bundle]", "config_version = 3\n[containerd.bundle]");
        assert_eq!(Profile::parse(&text).unwrap().containerd.effective_config_version(), ConfigVersion::V3);
        let text = MINIMAL.replace(
            "[containerd.bundle]",
            "[containerd.config]\noom_score = -999\n[containerd.config.plugins.\"io.containerd.grpc.v1.cri\"]\nenable_cdi = true\n[containerd.bundle]",
        );
        let p = Profile::parse(&text).unwrap();
        assert_eq!(p.containerd.config.unwrap()["oom_score"].as_integer(), Some(-999));
    }
}
