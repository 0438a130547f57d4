//! The kubelet's CRI endpoint and cgroup driver, as the node would hand them to a kubelet.
//!
//! No kubelet runs in the test guest; the harness injects a stand-in `kubelet.service` so
//! that systemd loads the drop-ins nodeforge installed. We ask systemd, not the files, for
//! what it resolved (`DropInPaths`, `Environment`, `EnvironmentFiles`): a drop-in in the
//! wrong directory, with a wrong name, or overridden by a later one is caught that way.
//! From the resulting kubelet arguments we follow `--config` and `--config-dir` to the
//! KubeletConfiguration files, applied the way the kubelet does: the `--config` file, then
//! `*.conf` files in `--config-dir` in lexical order (later wins), then command-line flags.
//!
//! The `--config` file is written by `kubeadm join`, which first applies the
//! `kubeletconfiguration*` patches of its patches directory (nodeforge renders one into
//! [`PATCHES_DIR`]; the JoinConfiguration names that directory). No kubeadm runs in the test
//! guest, so those patches are applied here, in kubeadm's order (file name), on top of the
//! `--config` file as it is now: what config.yaml will hold after the join. They count only
//! when a `--config` flag exists, since only a kubeadm-managed kubelet reads that file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::exec::Runner;
use crate::systemd;

pub const UNIT: &str = "kubelet.service";
/// kubeadm's patches directory as nodeforge renders it (`nodeforge::render::kubelet::PATCHES_DIR`).
pub const PATCHES_DIR: &str = "/etc/kubernetes/patches";

/// What the kubelet would use, and where each value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletView {
    /// As written, e.g. `unix:///run/containerd/containerd.sock`.
    pub endpoint: String,
    pub endpoint_source: String,
    /// `None`: set nowhere, so the kubelet's built-in default (`cgroupfs`) applies.
    pub cgroup_driver: Option<String>,
    pub cgroup_driver_source: String,
    pub drop_in_paths: Vec<String>,
    /// KubeletConfiguration files read, in the order they apply.
    pub config_files: Vec<String>,
    /// True when no drop-in exists and `endpoint` is Expect's default.
    pub fallback: bool,
}

impl KubeletView {
    /// The driver the kubelet would run with.
    pub fn effective_cgroup_driver(&self) -> &str {
        self.cgroup_driver.as_deref().unwrap_or("cgroupfs")
    }
}

/// The socket path of a `unix://` endpoint (or a bare path). Other schemes are an error:
/// containerd serves CRI on a unix socket only, unless TCP is configured explicitly.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    if let Some(p) = endpoint.strip_prefix("unix://") {
        return Ok(PathBuf::from(p));
    }
    if endpoint.starts_with('/') {
        return Ok(PathBuf::from(endpoint));
    }
    anyhow::bail!("CRI endpoint `{endpoint}` is not a unix socket (expected unix:///path)")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFragment {
    container_runtime_endpoint: Option<String>,
    cgroup_driver: Option<String>,
}

/// Resolves the kubelet's view through systemd. `default_endpoint` is used only when
/// kubelet.service has no drop-in at all (said so in the sources).
pub fn resolve(runner: &dyn Runner, default_endpoint: &str) -> Result<KubeletView> {
    resolve_with_patches(runner, default_endpoint, Path::new(PATCHES_DIR))
}

/// [`resolve`] with kubeadm's patches directory given (tests use a temporary one).
pub fn resolve_with_patches(runner: &dyn Runner, default_endpoint: &str, patches_dir: &Path) -> Result<KubeletView> {
    let props = systemd::show(runner, UNIT, &["LoadState", "DropInPaths", "Environment", "EnvironmentFiles"])?;
    let get = |k: &str| props.get(k).map(String::as_str).unwrap_or("");
    let drop_in_paths = systemd::split_words(get("DropInPaths"));
    if drop_in_paths.is_empty() {
        let why = if get("LoadState") == "loaded" {
            "kubelet.service has no drop-in"
        } else {
            "kubelet.service is not installed"
        };
        return Ok(KubeletView {
            endpoint: default_endpoint.to_owned(),
            endpoint_source: format!("Expect.cri_endpoint_default ({why})"),
            cgroup_driver: None,
            cgroup_driver_source: format!("kubelet default ({why})"),
            drop_in_paths,
            config_files: vec![],
            fallback: true,
        });
    }

    // The kubelet's arguments: every Environment= value (word-split, as `$VAR` in ExecStart
    // is), then the EnvironmentFile= values, which systemd applies after Environment=.
    let mut args: Vec<(String, String)> = Vec::new(); // (arg, where it came from)
    for word in systemd::split_words(get("Environment")) {
        for a in env_value_args(&word) {
            args.push((a, format!("Environment= of {UNIT}")));
        }
    }
    for file in systemd::split_words(get("EnvironmentFiles")).into_iter().filter(|w| w.starts_with('/')) {
        // A missing file is normal (`EnvironmentFile=-...` before kubeadm ran).
        let Ok(text) = fs::read_to_string(&file) else { continue };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            for word in systemd::split_words(line) {
                for a in env_value_args(&word) {
                    args.push((a, format!("EnvironmentFile {file}")));
                }
            }
        }
    }
    let flag = |name: &str| -> Option<(String, String)> {
        let mut found = None;
        let mut it = args.iter();
        while let Some((a, src)) = it.next() {
            if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                found = Some((v.to_owned(), src.clone()));
            } else if a == name {
                found = it.next().map(|(v, _)| (v.clone(), src.clone()));
            }
        }
        found // the kubelet's flag parser keeps the last occurrence
    };

    let mut config_files = Vec::new();
    if let Some((path, _)) = flag("--config") {
        if Path::new(&path).is_file() {
            config_files.push(path);
        }
        config_files.extend(kubeadm_patches(patches_dir)?);
    }
    if let Some((dir, _)) = flag("--config-dir") {
        config_files.extend(config_dir_files(Path::new(&dir))?);
    }

    let (mut endpoint, mut driver) = (None, None);
    for f in &config_files {
        let frag = read_fragment(Path::new(f))?;
        if let Some(e) = frag.container_runtime_endpoint {
            endpoint = Some((e, format!("containerRuntimeEndpoint in {f}")));
        }
        if let Some(d) = frag.cgroup_driver {
            driver = Some((d, format!("cgroupDriver in {f}")));
        }
    }
    if let Some((e, src)) = flag("--container-runtime-endpoint") {
        endpoint = Some((e, format!("--container-runtime-endpoint in {src}")));
    }
    if let Some((d, src)) = flag("--cgroup-driver") {
        driver = Some((d, format!("--cgroup-driver in {src}")));
    }

    let (endpoint, endpoint_source) = endpoint.unwrap_or_else(|| {
        (
            default_endpoint.to_owned(),
            "Expect.cri_endpoint_default (the kubelet drop-ins name no endpoint; kubelet ≥1.27 defaults to containerd's socket)"
                .to_owned(),
        )
    });
    let (cgroup_driver, cgroup_driver_source) = match driver {
        Some((d, s)) => (Some(d), s),
        None => (None, "kubelet default cgroupfs (set nowhere)".to_owned()),
    };
    Ok(KubeletView {
        endpoint,
        endpoint_source,
        cgroup_driver,
        cgroup_driver_source,
        drop_in_paths,
        config_files,
        fallback: false,
    })
}

/// The kubelet arguments an environment assignment contributes: `NAME=value` gives
/// value's words (ExecStart expands `$NAME` word-split); a word that is already a flag (the
/// unquoted form older systemctl prints) is one argument.
fn env_value_args(word: &str) -> Vec<String> {
    if word.starts_with('-') {
        return vec![word.to_owned()];
    }
    match word.split_once('=') {
        Some((name, value)) if is_env_name(name) => systemd::split_words(value),
        _ => vec![word.to_owned()],
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `*.conf` files in the kubelet's `--config-dir`, in the lexical order it applies them.
fn config_dir_files(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading kubelet --config-dir {}", dir.display())),
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    Ok(files)
}

/// kubeadm's `kubeletconfiguration[suffix][+patchtype].(yaml|json)` patches, in the order
/// kubeadm applies them. Only merge and strategic patches are read (a JSON patch is a list of
/// operations, not a KubeletConfiguration); for the two top-level scalar fields read here both
/// mean "replace the value".
fn kubeadm_patches(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading kubeadm patches directory {}", dir.display())),
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(stem) = name.strip_suffix(".yaml").or_else(|| name.strip_suffix(".json")) else { return false };
            let Some(rest) = stem.strip_prefix("kubeletconfiguration") else { return false };
            let kind = rest.split_once('+').map_or("strategic", |(_, k)| k);
            matches!(kind, "strategic" | "merge") && p.is_file()
        })
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    Ok(files)
}

fn read_fragment(path: &Path) -> Result<ConfigFragment> {
    let text = fs::read_to_string(path).with_context(|| format!("reading KubeletConfiguration {}", path.display()))?;
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(ConfigFragment::default());
    }
    serde_saphyr::from_str(&text).with_context(|| format!("parsing KubeletConfiguration {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::CmdOutput;
    use crate::exec::fake::FakeRunner;

    const SHOW: &str =
        "systemctl show kubelet.service --no-pager -p LoadState -p DropInPaths -p Environment -p EnvironmentFiles";
    const GOLDEN_FRAGMENT: &str = include_str!(
        "../../../builder/tests/golden/standin/etc/kubernetes/kubelet.conf.d/20-nodeforge-containerd.conf"
    );

    fn show(text: &str) -> FakeRunner {
        FakeRunner::new().on(SHOW, CmdOutput::ok(text))
    }

    #[test]
    fn follows_config_dir_from_the_drop_in() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("kubelet.conf.d");
        fs::create_dir(&conf_d).unwrap();
        fs::write(conf_d.join("20-nodeforge-containerd.conf"), GOLDEN_FRAGMENT).unwrap();
        fs::write(conf_d.join("10-early.conf"), "cgroupDriver: cgroupfs\n").unwrap();
        fs::write(conf_d.join("99-ignored.yaml"), "cgroupDriver: cgroupfs\n").unwrap();
        let text = format!(
            "LoadState=loaded\nDropInPaths=/etc/systemd/system/kubelet.service.d/20-nodeforge-containerd.conf\n\
             Environment=\"KUBELET_CONFIG_ARGS=--config=/nonexistent/config.yaml --config-dir={}\"\nEnvironmentFiles=\n",
            conf_d.display()
        );
        let v = resolve_with_patches(&show(&text), "unix:///default.sock", Path::new(NO_PATCHES_DIR)).unwrap();
        assert_eq!(v.endpoint, "unix:///run/containerd/containerd.sock");
        assert!(v.endpoint_source.ends_with("20-nodeforge-containerd.conf"), "{}", v.endpoint_source);
        assert_eq!(v.cgroup_driver.as_deref(), Some("systemd")); // 20- sorts after 10-
        assert_eq!(v.config_files.len(), 2);
        assert!(!v.fallback);
    }

    #[test]
    fn flags_in_environment_files_win_over_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        fs::write(
            &cfg,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n",
        )
        .unwrap();
        let env = dir.path().join("kubeadm-flags.env");
        fs::write(&env, "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --cgroup-driver=cgroupfs\"\n").unwrap();
        let text = format!(
            "LoadState=loaded\nDropInPaths=/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf\n\
             Environment=KUBELET_CONFIG_ARGS=--config={} B=1\nEnvironmentFiles={} (ignore_errors=yes) /etc/default/kubelet (ignore_errors=yes)\n",
            cfg.display(),
            env.display()
        );
        let v = resolve_with_patches(&show(&text), "unix:///default.sock", Path::new(NO_PATCHES_DIR)).unwrap();
        assert_eq!(v.endpoint, "unix:///var/run/containerd/containerd.sock");
        assert_eq!(v.cgroup_driver.as_deref(), Some("cgroupfs"));
        assert!(v.cgroup_driver_source.contains("kubeadm-flags.env"), "{}", v.cgroup_driver_source);
    }

    const NO_PATCHES_DIR: &str = "/nonexistent/kubeadm-patches";
    const GOLDEN_PATCH: &str = include_str!(
        "../../../builder/tests/golden/test-k8s-1.28-flags/etc/kubernetes/patches/kubeletconfiguration50+merge.yaml"
    );

    #[test]
    fn applies_kubeadm_patches_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        fs::write(
            &cfg,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n",
        )
        .unwrap();
        let patches = dir.path().join("patches");
        fs::create_dir(&patches).unwrap();
        fs::write(patches.join("kubeletconfiguration50+merge.yaml"), GOLDEN_PATCH).unwrap();
        // Ignored: another target, and a JSON patch (a list of operations).
        fs::write(patches.join("etcd.yaml"), "cgroupDriver: systemd\n").unwrap();
        fs::write(patches.join("kubeletconfiguration99+json.yaml"), "- op: remove\n  path: /cgroupDriver\n").unwrap();
        let text = format!(
            "LoadState=loaded\nDropInPaths=/etc/systemd/system/kubelet.service.d/20-nodeforge-containerd.conf\n\
             Environment=\"KUBELET_CONFIG_ARGS=--config={}\"\nEnvironmentFiles=\n",
            cfg.display()
        );
        let v = resolve_with_patches(&show(&text), "unix:///default.sock", &patches).unwrap();
        // The golden 1.28 profile uses cgroupfs; its patch overrides kubeadm's systemd default.
        assert_eq!(v.cgroup_driver.as_deref(), Some("cgroupfs"));
        assert!(v.cgroup_driver_source.contains("kubeletconfiguration50+merge.yaml"), "{}", v.cgroup_driver_source);
        assert_eq!(v.endpoint, "unix:///run/containerd/containerd.sock");
        assert_eq!(v.config_files.len(), 2);

        // Without a --config flag the kubelet is not kubeadm's, and the patches do not apply.
        let text =
            "LoadState=loaded\nDropInPaths=/etc/x.conf\nEnvironment=A=--cgroup-driver=systemd\nEnvironmentFiles=\n";
        let v = resolve_with_patches(&show(text), "unix:///default.sock", &patches).unwrap();
        assert!(v.config_files.is_empty());
        assert_eq!(v.cgroup_driver.as_deref(), Some("systemd"));
    }

    #[test]
    fn falls_back_only_without_a_drop_in() {
        let v =
            resolve(&show("LoadState=not-found\nDropInPaths=\nEnvironment=\nEnvironmentFiles=\n"), "unix:///d.sock")
                .unwrap();
        assert!(v.fallback);
        assert_eq!(v.endpoint, "unix:///d.sock");
        assert!(v.endpoint_source.contains("not installed"));
        assert_eq!(v.effective_cgroup_driver(), "cgroupfs");
    }

    #[test]
    fn socket_paths() {
        assert_eq!(socket_path("unix:///run/c.sock").unwrap(), PathBuf::from("/run/c.sock"));
        assert_eq!(socket_path("/run/c.sock").unwrap(), PathBuf::from("/run/c.sock"));
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
    }
}
