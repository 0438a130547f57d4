//! Stage `kubelet-config`: the kubelet, as systemd resolves its drop-ins, and containerd, as
//! it is actually configured, agree on the CRI socket and the cgroup driver.
//!
//! containerd's side is its effective CRI config, not its config file: `Status` with
//! `verbose=true` returns an `info` map whose `config` entry is the CRI plugin's config as
//! JSON (containerd 1.4–1.7). There:
//! * `containerdEndpoint` is the socket containerd serves (its `[grpc] address`);
//! * `containerd.defaultRuntimeName` names the runtime, and
//!   `containerd.runtimes.<name>.options.SystemdCgroup` (absent = false) is the driver:
//!   true = systemd, false = cgroupfs.
//!
//! The kubelet's side is [`KubeletView`] (see `kubelet.rs`). Both must also equal
//! `Expect.cgroup_driver`.
//!
//! Detail: `kubelet` (the view), `containerd` (`endpoint`, `default_runtime`,
//! `runtime_type`, `systemd_cgroup`, `cgroup_driver`), `expected_cgroup_driver`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Deadline, Outcome, connect_cri};
use crate::cri::status_text;
use crate::expect::Expect;
use crate::kubelet::{KubeletView, socket_path};

/// containerd's view, read from its effective CRI config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdView {
    pub endpoint: Option<String>,
    pub default_runtime: String,
    pub runtime_type: String,
    pub systemd_cgroup: bool,
}

impl ContainerdView {
    pub fn cgroup_driver(&self) -> &'static str {
        if self.systemd_cgroup { "systemd" } else { "cgroupfs" }
    }

    /// From the JSON of `Status(verbose).info["config"]`.
    pub fn from_config_json(config: &Value) -> Result<ContainerdView, String> {
        let c = config.get("containerd").ok_or("no `containerd` section in the CRI config")?;
        let default_runtime = c.get("defaultRuntimeName").and_then(Value::as_str).unwrap_or("runc").to_owned();
        let runtime = c
            .get("runtimes")
            .and_then(|r| r.get(&default_runtime))
            .ok_or_else(|| format!("default runtime `{default_runtime}` is not among containerd.runtimes"))?;
        let systemd_cgroup =
            runtime.get("options").and_then(|o| o.get("SystemdCgroup")).and_then(Value::as_bool).unwrap_or(false);
        Ok(ContainerdView {
            endpoint: config.get("containerdEndpoint").and_then(Value::as_str).map(str::to_owned),
            default_runtime,
            runtime_type: runtime.get("runtimeType").and_then(Value::as_str).unwrap_or_default().to_owned(),
            systemd_cgroup,
        })
    }
}

pub async fn run(socket: &Path, expect: &Expect, kubelet: &KubeletView, dl: Deadline) -> Outcome {
    let kubelet_json = json!(kubelet);
    let mut cri = match connect_cri(socket, expect.cri_api, dl).await {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("{e:#}"), json!({"kubelet": kubelet_json})),
    };
    let status = match cri.status(true).await {
        Ok(s) => s,
        Err(s) => {
            return Outcome::fail(
                format!("CRI Status(verbose): {}", status_text(&s)),
                json!({"kubelet": kubelet_json}),
            );
        }
    };
    let Some(config_text) = status.info.get("config") else {
        let keys: Vec<&String> = status.info.keys().collect();
        return Outcome::fail(
            "verbose CRI Status has no `config` entry",
            json!({"kubelet": kubelet_json, "info_keys": keys}),
        );
    };
    let ctrd = serde_json::from_str::<Value>(config_text)
        .map_err(|e| format!("CRI config is not JSON: {e}"))
        .and_then(|v| ContainerdView::from_config_json(&v));
    let ctrd = match ctrd {
        Ok(c) => c,
        Err(e) => return Outcome::fail(e, json!({"kubelet": kubelet_json})),
    };
    let detail = json!({
        "kubelet": kubelet_json,
        "containerd": {
            "endpoint": ctrd.endpoint, "default_runtime": ctrd.default_runtime, "runtime_type": ctrd.runtime_type,
            "systemd_cgroup": ctrd.systemd_cgroup, "cgroup_driver": ctrd.cgroup_driver(),
        },
        "expected_cgroup_driver": expect.cgroup_driver.as_str(),
    });

    let mut problems = Vec::new();
    let kubelet_socket = socket_path(&kubelet.endpoint).map(|p| canonical(&p));
    match (&kubelet_socket, &ctrd.endpoint) {
        (Err(e), _) => problems.push(format!("{e:#}")),
        (Ok(k), Some(c)) if *k != canonical(Path::new(c)) => problems.push(format!(
            "the kubelet uses {} ({}), containerd serves {c}",
            kubelet.endpoint, kubelet.endpoint_source
        )),
        _ => {} // Without containerdEndpoint, reaching containerd on the kubelet's socket is the proof.
    }
    let kd = kubelet.effective_cgroup_driver();
    if kd != ctrd.cgroup_driver() {
        problems.push(format!(
            "cgroup drivers differ: kubelet {kd} ({}), containerd {} (runtimes.{}.options.SystemdCgroup={})",
            kubelet.cgroup_driver_source,
            ctrd.cgroup_driver(),
            ctrd.default_runtime,
            ctrd.systemd_cgroup
        ));
    }
    if ctrd.cgroup_driver() != expect.cgroup_driver.as_str() {
        problems.push(format!("containerd uses {}, expected {}", ctrd.cgroup_driver(), expect.cgroup_driver.as_str()));
    }
    if !problems.is_empty() {
        return Outcome::fail(problems.join("; "), detail);
    }
    let msg = format!("kubelet and containerd agree: {} with the {kd} cgroup driver", kubelet.endpoint);
    Outcome::pass(msg, detail)
}

/// Resolves symlinks (`/var/run` -> `/run`) when the path exists, so equal sockets compare equal.
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_runtimes_systemd_cgroup() {
        let cfg = json!({
            "containerdEndpoint": "/run/containerd/containerd.sock",
            "containerd": {
                "defaultRuntimeName": "runc",
                "runtimes": {"runc": {"runtimeType": "io.containerd.runc.v2", "options": {"SystemdCgroup": true}}}
            }
        });
        let v = ContainerdView::from_config_json(&cfg).unwrap();
        assert_eq!(v.cgroup_driver(), "systemd");
        assert_eq!(v.endpoint.as_deref(), Some("/run/containerd/containerd.sock"));
        let no_opts = json!({"containerd": {"defaultRuntimeName": "runc", "runtimes": {"runc": {}}}});
        assert_eq!(ContainerdView::from_config_json(&no_opts).unwrap().cgroup_driver(), "cgroupfs");
        assert!(
            ContainerdView::from_config_json(&json!({"containerd": {"defaultRuntimeName": "x", "runtimes": {}}}))
                .is_err()
        );
    }
}
