//! `nodeforge check`: combinations that parse but cannot work, refused with the reason and
//! the fix, and risky ones flagged. Every rule cites the fact it rests on (runtime-facts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::compat::{self, CgroupV1, CriApi, V3Config};
use crate::exit::ExitClass;
use crate::imageref::ImageRef;
use crate::overlay::OverlayPath;
use crate::profile::{Arch, CgroupDriver, CgroupVersion, ConfigVersion, LoadedProfile, Sources};
use crate::render::{containerd_config, sandbox_image};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier, for scripts and for suppressing nothing by accident.
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}[{}]: {}\n  fix: {}", self.code, self.message, self.fix)
    }
}

/// Registries whose names are often mistyped; a reference to a near miss is almost always a
/// typo that would surface only as an image pull failure on the node.
const KNOWN_REGISTRIES: &[&str] = &[
    "registry.k8s.io",
    "k8s.gcr.io",
    "gcr.io",
    "docker.io",
    "registry-1.docker.io",
    "quay.io",
    "ghcr.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
];

/// What to write instead of a bundle (runtime-facts §1.5).
const COMPONENTS_FIX: &str = "write [containerd.release] (containerd-<version>-linux-<arch>.tar.gz, sha256 from its .sha256sum) \
     with [runc], [cni_plugins] and [crictl], each with version and sha256";

/// Run every rule against a loaded profile.
pub fn check(loaded: &LoadedProfile) -> Vec<Finding> {
    let p = &loaded.profile;
    let mut out = Vec::new();
    let mut err =
        |code, message: String, fix: String| out.push(Finding { severity: Severity::Error, code, message, fix });
    let k8s = &p.kubernetes.version;
    let ctr = &p.containerd.version;

    // runtime-facts §4.1: kubelet ≥ 1.26 speaks only CRI v1; containerd < 1.6 serves only v1alpha2.
    if compat::kubelet_requires_cri_v1(k8s) && compat::containerd_cri_api(ctr) == CriApi::V1alpha2 {
        err(
            "cri-api-mismatch",
            format!("containerd {ctr} serves only CRI v1alpha2, but the kubelet of Kubernetes {k8s} speaks only CRI v1"),
            "use containerd 1.6 or newer (1.7 is the last line with a cri-containerd-cni bundle), or a Kubernetes older than 1.26".into(),
        );
    }
    // containerd RELEASES.md: kubelets before 1.23 speak only CRI v1alpha2, which 2.0 removed.
    if !compat::kubelet_speaks_cri_v1(k8s) && !compat::containerd_serves_v1alpha2(ctr) {
        err(
            "cri-v1alpha2-removed",
            format!(
                "the kubelet of Kubernetes {k8s} speaks only CRI v1alpha2, which containerd {ctr} no longer serves (removed in 2.0)"
            ),
            "use containerd 1.7 (serves v1alpha2 and v1), or Kubernetes 1.23 or newer".into(),
        );
    }
    let bundle = matches!(p.runtime_sources(), Sources::Bundle(_));
    // runtime-facts §1.4: no bundles exist for 2.0+.
    if bundle && !compat::containerd_bundle_published(ctr) {
        err(
            "no-bundle-for-2x",
            format!("containerd {ctr} publishes no cri-containerd-cni bundle (removed in 2.0)"),
            format!("{COMPONENTS_FIX}, or use containerd 1.7 with the bundle"),
        );
    }
    // runtime-facts §3.1: a v3 file on containerd 1.x.
    if p.containerd.effective_config_version() == ConfigVersion::V3 {
        match compat::containerd_v3_config(ctr) {
            V3Config::Native => {}
            V3Config::SilentlyIgnored => err(
                "v3-config-ignored",
                format!(
                    "containerd {ctr} does not know config version 3 but loads the file anyway: the \
                     io.containerd.cri.v1.* sections match no plugin, so CRI runs on built-in defaults \
                     (cgroupfs, containerd's own pause image, no config_path) while the kubelet is told otherwise"
                ),
                "remove config_version = 3 (containerd 1.x reads schema 2), or use containerd 2.0 or newer".into(),
            ),
            V3Config::Refused => err(
                "v3-config-refused",
                format!(
                    "containerd {ctr} refuses to start with a version 3 config: it fails with \
                     \"unsupported config version `3`\" (1.6.32+ and 1.7.17+ check the version)"
                ),
                "remove config_version = 3 (containerd 1.x reads schema 2), or use containerd 2.0 or newer".into(),
            ),
        }
    }
    // runtime-facts §3.3: CRI's own validation refuses the deprecated mirrors next to config_path.
    if let Some(conflict) = containerd_config::registry_conflict(p) {
        err(
            "mirrors-with-config-path",
            format!("{conflict}; nodeforge renders config_path, so containerd's CRI plugin would fail to load"),
            "remove the mirrors table from [containerd.config] and add a [[registry.mirror]] per registry \
             (rendered as certs.d/<host>/hosts.toml)"
                .into(),
        );
    } else if p.containerd.config.is_some()
        && let Err(e) = containerd_config::render(p)
    {
        err(
            "containerd-config-override",
            format!("{e:#}"),
            "set that value through its profile key, or drop it from [containerd.config]".into(),
        );
    }
    // runtime-facts §4.1: failCgroupV1 defaults to true from 1.35.
    if p.node.cgroup_version == CgroupVersion::V1 && compat::kubelet_cgroup_v1(k8s) == CgroupV1::Refused {
        err(
            "cgroup-v1-refused",
            format!(
                "the kubelet of Kubernetes {k8s} refuses to start on a cgroup v1 host (failCgroupV1 defaults to true from 1.35)"
            ),
            "boot the node with the unified hierarchy (systemd.unified_cgroup_hierarchy=1, the default of current \
             distributions) and set node.cgroup_version = 2, or use a Kubernetes older than 1.35"
                .into(),
        );
    }
    // runtime-facts §1.1: 1.4 and 1.5 bundles were built for amd64 only.
    if bundle && p.arch == Arch::Arm64 && !ctr.at_least(1, 6, 0) {
        err(
            "no-arm64-bundle",
            format!("containerd {ctr} published its cri-containerd-cni bundle for amd64 only"),
            format!("use containerd 1.6 or newer for arm64, or per-component sources: {COMPONENTS_FIX}"),
        );
    }
    // runtime-facts §3.3: config_path (certs.d) arrived in 1.5; the older `mirrors` table is
    // deprecated and nodeforge does not render it.
    if !p.registry.mirrors.is_empty() && !ctr.at_least(1, 5, 0) {
        err(
            "mirrors-need-1.5",
            format!(
                "registry mirrors are rendered as config_path + certs.d, which containerd {ctr} does not read (added in 1.5)"
            ),
            "remove [[registry.mirror]] or use containerd 1.5 or newer".into(),
        );
    }
    let mut hosts = BTreeSet::new();
    for m in &p.registry.mirrors {
        if !hosts.insert(m.host.as_str()) {
            err(
                "duplicate-mirror",
                format!("[[registry.mirror]] host `{}` appears twice", m.host),
                "merge the endpoints into one entry".into(),
            );
        }
        if m.endpoints.is_empty() {
            err(
                "mirror-without-endpoints",
                format!("[[registry.mirror]] `{}` lists no endpoints", m.host),
                "add at least one endpoint URL".into(),
            );
        }
    }
    let mut refs = BTreeSet::new();
    for img in &p.images {
        if !refs.insert(img.reference.to_string()) {
            err(
                "duplicate-image",
                format!("image `{}` is preloaded twice", img.reference),
                "keep one [[image]] entry per reference".into(),
            );
        }
        let is_url = img.source.starts_with("http://") || img.source.starts_with("https://");
        if !is_url && !loaded.resolve(&img.source).is_file() {
            err(
                "image-source-missing",
                format!("image `{}`: source {} does not exist", img.reference, loaded.resolve(&img.source).display()),
                "give a path relative to the profile file, or an http(s) URL".into(),
            );
        }
    }
    // A site overlay is read only by a build; what can be judged without reading it is that
    // its path is there and is a directory or a tar archive.
    for (i, o) in p.overlays.iter().enumerate() {
        let source = loaded.resolve(&o.path);
        if let Err(why) = crate::site::source_form(&source) {
            err(
                "overlay-source",
                format!("[[overlay]] #{} path {}: {} {why}", i + 1, o.path, source.display()),
                "give a directory, .tar, .tar.gz or .tgz, relative to the profile file or absolute".into(),
            );
        }
    }
    let mut all_refs: Vec<(&str, &ImageRef)> = p.images.iter().map(|i| ("[[image]] ref", &i.reference)).collect();
    let sandbox = sandbox_image(p);
    all_refs.push(("node.sandbox_image", &sandbox));
    for (field, r) in &all_refs {
        registry_findings(field, r.registry(), &mut out);
    }
    for m in &p.registry.mirrors {
        registry_findings("[[registry.mirror]] host", &m.host, &mut out);
    }
    // Whatever else a renderer refuses (a registry host or endpoint that is not one, a pod
    // subnet with host bits set): `check` refuses it too, rather than pass a profile that
    // `render` and `build` then fail on.
    if !out.iter().any(|f| f.severity == Severity::Error)
        && let Err(e) = crate::render::render_profile(p)
    {
        out.push(Finding {
            severity: Severity::Error,
            code: "render-refused",
            message: format!("{e:#}"),
            fix: "correct the value the message names".into(),
        });
    }

    // Which renderer writes each path, to name it in a site-override warning.
    let rendered: BTreeMap<String, &'static str> = if p.overlays.iter().any(|o| !o.overrides.is_empty()) {
        let all = crate::render::render_profile(p).unwrap_or_default();
        all.iter().map(|r| (r.path().to_owned(), r.renderer())).collect()
    } else {
        BTreeMap::new()
    };
    let mut warn =
        |code, message: String, fix: String| out.push(Finding { severity: Severity::Warning, code, message, fix });
    // A site file that wins over a generated one is the operator's to keep in step from then on.
    for (i, o) in p.overlays.iter().enumerate() {
        for path in o.overrides.iter().filter_map(|p| OverlayPath::new(p).ok()) {
            let what = rendered.get(path.as_str()).map_or(String::new(), |r| format!(" (`{r}` renders it)"));
            warn(
                "site-override",
                format!(
                    "[[overlay]] #{} {} replaces {path}{what} with its own file: nodeforge no longer manages that path",
                    i + 1,
                    o.path
                ),
                "compare the site's file with what nodeforge writes (`nodeforge render`) on every upgrade, or drop \
                 the path from overrides to get nodeforge's file back"
                    .into(),
            );
        }
    }
    if p.node.cgroup_version == CgroupVersion::V1 && compat::kubelet_cgroup_v1(k8s) != CgroupV1::Refused {
        warn(
            "cgroup-v1-maintenance",
            format!(
                "cgroup v1: Kubernetes has kept cgroup v1 support in maintenance mode since 1.31, and from 1.35 \
                 the kubelet refuses it by default (Kubernetes {k8s})"
            ),
            "move the node to cgroup v2 (node.cgroup_version = 2) before upgrading past 1.34".into(),
        );
    }
    if let Some(why) = compat::outside_release_matrix(ctr, k8s) {
        warn(
            "outside-release-matrix",
            format!("containerd {ctr} with Kubernetes {k8s}: {why}"),
            "use containerd 1.7 or 2.x for this Kubernetes (or the newest 1.6 patch release if the line must stay)"
                .into(),
        );
    }
    // runtime-facts §1.4: deprecated since 1.6.
    if bundle && ctr.at_least(1, 6, 0) && ctr.major < 2 {
        warn(
            "bundle-deprecated",
            format!(
                "the cri-containerd-cni bundle is deprecated since containerd 1.6 and was not built for 2.0 (containerd {ctr})"
            ),
            format!("replace [containerd.bundle] with per-component sources: {COMPONENTS_FIX}"),
        );
    }
    // crictl is optional beside the per-component release; the node still gets crictl.yaml.
    if let Sources::Components { crictl: None, .. } = p.runtime_sources() {
        warn(
            "no-crictl",
            "no [crictl]: the node will have no crictl to inspect containerd's CRI side (/etc/crictl.yaml is still written)".into(),
            "add [crictl] with version and sha256 (the digest in crictl-v<version>-linux-<arch>.tar.gz.sha256)".into(),
        );
    }
    // runtime-facts §4.3: kubeadm checks the runtime's sandbox image against its own.
    let expected = compat::default_sandbox_image(k8s);
    if sandbox.path == "pause" && sandbox.tag != expected.tag {
        warn(
            "sandbox-version",
            format!(
                "sandbox image {sandbox} differs from the pause image kubeadm {}.{} expects ({expected})",
                k8s.major, k8s.minor
            ),
            format!("set node.sandbox_image = \"{expected}\" (or leave it unset)"),
        );
    }
    // runtime-facts §4.1: kubeadm ≥ 1.22 configures the kubelet with the systemd driver
    // unless told otherwise; a cgroupfs node then disagrees with its own kubelet.
    if p.node.cgroup_driver == CgroupDriver::Cgroupfs && k8s.at_least(1, 22, 0) {
        warn(
            "cgroupfs-with-kubeadm",
            format!("cgroup driver cgroupfs: kubeadm {}.{} defaults the kubelet to systemd", k8s.major, k8s.minor),
            "prefer cgroup_driver = \"systemd\"; if you keep cgroupfs, set cgroupDriver: cgroupfs in the cluster's KubeletConfiguration".into(),
        );
    }
    let preloaded: BTreeSet<String> = p.images.iter().map(|i| i.reference.to_string()).collect();
    if !p.images.is_empty() && !preloaded.contains(&sandbox.to_string()) {
        warn(
            "sandbox-not-preloaded",
            format!("images are preloaded, but not the sandbox image {sandbox}: the first pod will pull it"),
            "add an [[image]] for the sandbox image so the node starts pods offline".into(),
        );
    }
    let subnet = p.node.cni_subnet;
    if subnet.prefix_len() > 28 {
        warn(
            "cni-subnet-small",
            format!("node.cni_subnet {subnet} leaves fewer than 14 pod addresses"),
            "use a /24 or larger".into(),
        );
    }
    let services: ipnet::Ipv4Net = "10.96.0.0/12".parse().expect("constant");
    if services.contains(&subnet.network()) || subnet.contains(&services.network()) {
        warn(
            "cni-subnet-overlaps-services",
            format!("node.cni_subnet {subnet} overlaps kubeadm's default service range 10.96.0.0/12"),
            "pick a pod range outside the service range, e.g. 10.88.0.0/16".into(),
        );
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.code.cmp(b.code)));
    out
}

fn registry_findings(field: &str, host: &str, out: &mut Vec<Finding>) {
    if host == "k8s.gcr.io" {
        out.push(Finding {
            severity: Severity::Warning,
            code: "frozen-registry",
            message: format!("{field} uses k8s.gcr.io, frozen since 2023-04-03: no new images are published there"),
            fix: "use registry.k8s.io".into(),
        });
        return;
    }
    if KNOWN_REGISTRIES.contains(&host) || host == "_default" {
        return;
    }
    if let Some(near) = KNOWN_REGISTRIES.iter().find(|k| edit_distance(host, k) <= 2) {
        let suggestion = if *near == "k8s.gcr.io" { "registry.k8s.io" } else { near };
        out.push(Finding {
            severity: Severity::Error,
            code: "registry-typo",
            message: format!("{field} names registry `{host}`, which looks like a typo of `{near}`"),
            fix: format!("use `{suggestion}`"),
        });
    }
}

/// Levenshtein distance; registry names are short.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// True when any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// A profile that was loaded and checked once, with the warnings the check found. Errors
/// refuse it; the warnings travel with it to whoever reports them, so they are shown once.
#[derive(Debug)]
pub struct CheckedProfile {
    pub loaded: LoadedProfile,
    pub warnings: Vec<String>,
}

impl CheckedProfile {
    /// Load and check a profile; errors among the findings fail with [`ExitClass::Profile`].
    pub fn load(path: &Path) -> Result<Self> {
        let loaded = LoadedProfile::load(path).context(ExitClass::Profile)?;
        let findings = check(&loaded);
        if has_errors(&findings) {
            let text: Vec<String> =
                findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.to_string()).collect();
            return Err(anyhow::anyhow!("{}: {}", path.display(), text.join("\n")).context(ExitClass::Profile));
        }
        let warnings = findings.into_iter().filter(|f| f.severity == Severity::Warning).map(|f| f.message).collect();
        Ok(Self { loaded, warnings })
    }

    /// Log the warnings, for a command whose result has no place for them, and keep the
    /// profile.
    pub fn logged(self) -> LoadedProfile {
        for w in &self.warnings {
            tracing::warn!("{}: {w}", self.loaded.path.display());
        }
        self.loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Hex;
    use crate::profile::Profile;

    fn load(extra: &str, k8s: &str, ctr: &str) -> LoadedProfile {
        let text = format!(
            "name = \"t\"\n[kubernetes]\nversion = \"{k8s}\"\n[containerd]\nversion = \"{ctr}\"\n[containerd.bundle]\nsha256 = \"{}\"\n{extra}",
            "0".repeat(64)
        );
        LoadedProfile { path: "t.toml".into(), profile: Profile::parse(&text).unwrap(), sha256: Sha256Hex([0; 32]) }
    }

    fn codes(f: &[Finding]) -> Vec<&'static str> {
        f.iter().map(|f| f.code).collect()
    }

    #[test]
    fn v1alpha2_containerd_with_new_kubelet_is_refused() {
        let f = check(&load("", "1.26.0", "1.5.18"));
        assert!(has_errors(&f));
        assert!(codes(&f).contains(&"cri-api-mismatch"), "{f:?}");
        assert!(!has_errors(&check(&load("", "1.25.9", "1.5.18"))));
    }

    #[test]
    fn the_seeds_typo_is_refused_with_a_fix() {
        let f = check(&load("[node]\nsandbox_image = \"k8s.gc.io/pause:3.1\"\n", "1.14.10", "1.4.4"));
        let typo = f.iter().find(|f| f.code == "registry-typo").expect("typo found");
        assert!(typo.message.contains("k8s.gc.io"), "{typo}");
        assert!(typo.fix.contains("registry.k8s.io"), "{typo}");
    }

    #[test]
    fn frozen_registry_and_mirror_rules() {
        let f = check(&load("[node]\nsandbox_image = \"k8s.gcr.io/pause:3.1\"\n", "1.14.10", "1.4.4"));
        assert_eq!(codes(&f), ["frozen-registry"]);
        let m = "[[registry.mirror]]\nhost = \"docker.io\"\nendpoints = [\"https://m.example\"]\n";
        assert!(codes(&check(&load(m, "1.14.10", "1.4.4"))).contains(&"mirrors-need-1.5"));
        assert!(!has_errors(&check(&load(m, "1.30.0", "1.7.27"))));
    }

    #[test]
    fn kubeadm_expectations_are_warned() {
        let f = check(&load(
            "[node]\ncgroup_driver = \"cgroupfs\"\nsandbox_image = \"registry.k8s.io/pause:3.6\"\n",
            "1.30.0",
            "1.7.27",
        ));
        let c = codes(&f);
        assert!(
            c.contains(&"cgroupfs-with-kubeadm") && c.contains(&"sandbox-version") && c.contains(&"bundle-deprecated"),
            "{c:?}"
        );
        assert!(!has_errors(&f));
    }

    fn load_components(extra: &str, k8s: &str, ctr: &str) -> LoadedProfile {
        let text = format!(
            "name = \"t\"\n[kubernetes]\nversion = \"{k8s}\"\n[containerd]\nversion = \"{ctr}\"\n[containerd.release]\nsha256 = \"{z}\"\n\
             [runc]\nversion = \"1.3.4\"\nsha256 = \"{z}\"\n[cni_plugins]\nversion = \"1.8.0\"\nsha256 = \"{z}\"\n\
             [crictl]\nversion = \"1.35.0\"\nsha256 = \"{z}\"\n{extra}",
            z = "0".repeat(64)
        );
        LoadedProfile { path: "t.toml".into(), profile: Profile::parse(&text).unwrap(), sha256: Sha256Hex([0; 32]) }
    }

    fn with_config_version(mut l: LoadedProfile, v: ConfigVersion) -> LoadedProfile {
        l.profile.containerd.config_version = Some(v);
        l
    }

    #[test]
    fn bundle_rules_follow_the_source() {
        assert!(codes(&check(&load("", "1.35.1", "2.2.1"))).contains(&"no-bundle-for-2x"));
        let f = check(&load_components("", "1.35.1", "2.2.1"));
        assert!(f.is_empty(), "{f:?}");
        // The per-component release of a 1.7 is not the deprecated bundle.
        assert!(!codes(&check(&load_components("", "1.33.8", "1.7.27"))).contains(&"bundle-deprecated"));
        assert!(codes(&check(&load("", "1.33.8", "1.7.27"))).contains(&"bundle-deprecated"));
    }

    #[test]
    fn containerd_release_matrix_is_warned() {
        assert!(codes(&check(&load_components("", "1.35.1", "1.6.39"))).contains(&"outside-release-matrix"));
        assert!(codes(&check(&load_components("", "1.30.2", "1.6.14"))).contains(&"outside-release-matrix"));
        assert!(!codes(&check(&load_components("", "1.34.0", "1.6.39"))).contains(&"outside-release-matrix"));
        assert!(!codes(&check(&load_components("", "1.35.1", "1.7.27"))).contains(&"outside-release-matrix"));
    }

    #[test]
    fn v3_config_on_1x_is_refused_with_the_right_reason() {
        let f = check(&with_config_version(load("", "1.30.0", "1.6.31"), ConfigVersion::V3));
        assert!(codes(&f).contains(&"v3-config-ignored"), "{f:?}");
        assert!(f.iter().any(|f| f.message.contains("defaults")));
        let f = check(&with_config_version(load("", "1.30.0", "1.7.17"), ConfigVersion::V3));
        assert!(codes(&f).contains(&"v3-config-refused"), "{f:?}");
        assert!(f.iter().any(|f| f.message.contains("unsupported config version")));
        let f = check(&with_config_version(load("", "1.30.0", "1.7.16"), ConfigVersion::V3));
        assert!(codes(&f).contains(&"v3-config-ignored"), "{f:?}");
        assert!(!has_errors(&check(&with_config_version(load_components("", "1.35.1", "2.1.6"), ConfigVersion::V3))));
        // v2 on 2.x is read (and migrated) by 2.x: fine.
        assert!(!has_errors(&check(&with_config_version(load_components("", "1.35.1", "2.1.6"), ConfigVersion::V2))));
    }

    #[test]
    fn old_kubelets_need_v1alpha2() {
        assert_eq!(codes(&check(&load_components("", "1.22.17", "2.0.7"))), ["cri-v1alpha2-removed"]);
        assert!(check(&load_components("", "1.23.0", "2.0.7")).is_empty());
        assert!(!has_errors(&check(&load_components("", "1.22.17", "1.7.27"))));
    }

    #[test]
    fn cgroup_v1_rules() {
        let v1 = "[node]\ncgroup_version = 1\n";
        let f = check(&load_components(v1, "1.35.0", "2.2.1"));
        assert_eq!(codes(&f), ["cgroup-v1-refused"]);
        assert!(f[0].fix.contains("cgroup_version = 2"));
        let f = check(&load_components(v1, "1.34.3", "2.2.1"));
        assert_eq!(codes(&f), ["cgroup-v1-maintenance"]);
        assert!(!has_errors(&f));
        assert!(check(&load_components("", "1.35.0", "2.2.1")).is_empty());
    }

    #[test]
    fn raw_containerd_config_rules() {
        let m = "[containerd.config.plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n";
        let f = check(&load(m, "1.30.0", "1.7.27"));
        let found = f.iter().find(|f| f.code == "mirrors-with-config-path").expect("mirrors refused");
        assert!(found.message.contains("`mirrors` cannot be set when `config_path` is provided"), "{found}");
        let over = "[containerd.config.plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]\nSystemdCgroup = false\n";
        let f = check(&load_components(over, "1.35.1", "2.2.1"));
        let found = f.iter().find(|f| f.code == "containerd-config-override").expect("override refused");
        assert!(found.message.contains("SystemdCgroup"), "{found}");
        let fine = "[containerd.config.plugins.\"io.containerd.cri.v1.runtime\"]\nenable_cdi = true\n";
        assert!(check(&load_components(fine, "1.35.1", "2.2.1")).is_empty());
    }

    #[test]
    fn site_overlays_are_checked_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("site")).unwrap();
        std::fs::write(dir.path().join("site.tar.gz"), b"").unwrap();
        std::fs::write(dir.path().join("site.zip"), b"").unwrap();
        let at = |extra: &str| {
            let mut l = load_components(extra, "1.35.1", "2.2.1");
            l.path = dir.path().join("p.toml");
            check(&l)
        };
        let good = "[[overlay]]\npath = \"site\"\n[[overlay]]\npath = \"site.tar.gz\"\n";
        assert!(at(good).is_empty(), "{:?}", at(good));
        for (path, why) in [("missing", "does not exist"), ("site.zip", "not a .tar")] {
            let f = at(&format!("[[overlay]]\npath = \"site\"\n[[overlay]]\npath = \"{path}\"\n"));
            assert_eq!(codes(&f), ["overlay-source"]);
            assert!(f[0].message.starts_with(&format!("[[overlay]] #2 path {path}:")), "{}", f[0]);
            assert!(f[0].message.contains(why), "{}", f[0]);
        }
        let f = at("[[overlay]]\npath = \"site\"\noverrides = [\"/etc/crictl.yaml\", \"usr/local/bin/crictl\"]\n");
        assert_eq!(codes(&f), ["site-override", "site-override"]);
        assert!(!has_errors(&f));
        assert!(f[0].message.contains("replaces /etc/crictl.yaml (`crictl` renders it)"), "{}", f[0]);
        assert!(f[1].message.contains("replaces /usr/local/bin/crictl with its own file: nodeforge no longer manages"));
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("k8s.gc.io", "k8s.gcr.io"), 1);
        assert_eq!(edit_distance("quay.io", "quay.io"), 0);
    }
}
