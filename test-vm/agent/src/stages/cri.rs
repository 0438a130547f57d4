//! Stage `cri`: the runtime answers CRI on the kubelet's endpoint as the kubelet needs.
//!
//! * `Version`: `runtime_name` `containerd`, `version` `0.1.0` (the kubelet refuses any
//!   other), `runtime_api_version` = `Expect.cri_api`, `runtime_version` matching
//!   `Expect.containerd_version` (`v1.7.13` and Debian's `1.6.20~ds1` both match their
//!   plain versions). If the expected API is unimplemented, the other one is tried so the
//!   failure says what the runtime does serve.
//! * `Status`: polled until `RuntimeReady` and `NetworkReady` are both true (NetworkReady
//!   turns true once containerd has loaded a CNI config).
//!
//! The socket is passed in; the pipeline resolves it from the kubelet drop-in.
//! Detail: `version` (the four fields), `conditions`, `status_polls`.

use std::path::Path;

use serde_json::{Value, json};

use super::{Deadline, Outcome, POLL, connect_cri};
use crate::cri::{Cri, VersionInfo, status_text};
use crate::expect::Expect;

pub async fn run(socket: &Path, expect: &Expect, dl: Deadline) -> Outcome {
    let mut cri = match connect_cri(socket, expect.cri_api, dl).await {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("{e:#}"), json!({})),
    };
    let v = match cri.version().await {
        Ok(v) => v,
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let other = expect.cri_api.other();
            let serves = match connect_cri(socket, other, dl).await {
                Ok(mut c) => match c.version().await {
                    Ok(v) => format!("it serves {} ({} {})", v.runtime_api_version, v.runtime_name, v.runtime_version),
                    Err(s) => format!("{} is not served either ({})", other.as_str(), status_text(&s)),
                },
                Err(e) => format!("{e:#}"),
            };
            let msg = format!("the runtime does not serve CRI {}: {serves}", expect.cri_api.as_str());
            return Outcome::fail(msg, json!({"error": status_text(&s)}));
        }
        Err(s) => return Outcome::fail(format!("CRI Version: {}", status_text(&s)), json!({})),
    };
    let version = version_json(&v);
    let problems = version_problems(&v, expect);
    if !problems.is_empty() {
        return Outcome::fail(problems.join("; "), json!({"version": version}));
    }

    let (ok, conditions, polls) = wait_ready(&mut cri, dl).await;
    let detail = json!({"version": version, "conditions": conditions, "status_polls": polls});
    if !ok {
        return Outcome::fail(format!("runtime not ready after {:?}: {}", dl.budget(), summary(&conditions)), detail);
    }
    let msg = format!(
        "{} {} serves CRI {}; RuntimeReady and NetworkReady",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    Outcome::pass(msg, detail)
}

fn version_json(v: &VersionInfo) -> Value {
    json!({
        "version": v.version, "runtime_name": v.runtime_name,
        "runtime_version": v.runtime_version, "runtime_api_version": v.runtime_api_version,
    })
}

pub fn version_problems(v: &VersionInfo, expect: &Expect) -> Vec<String> {
    let mut p = Vec::new();
    if v.runtime_name != "containerd" {
        p.push(format!("runtime_name is `{}`, not containerd", v.runtime_name));
    }
    if v.version != "0.1.0" {
        p.push(format!("version is `{}`; the kubelet requires 0.1.0", v.version));
    }
    if v.runtime_api_version != expect.cri_api.as_str() {
        p.push(format!("runtime_api_version is `{}`, expected {}", v.runtime_api_version, expect.cri_api.as_str()));
    }
    if !expect.containerd_version.is_empty() && !version_matches(&v.runtime_version, &expect.containerd_version) {
        p.push(format!(
            "runtime_version is `{}`, expected containerd {}",
            v.runtime_version, expect.containerd_version
        ));
    }
    p
}

/// `v1.7.13` and `1.6.20~ds1` match `1.7.13` and `1.6.20`; `1.6.201` does not match `1.6.20`.
pub fn version_matches(reported: &str, expected: &str) -> bool {
    let r = reported.strip_prefix('v').unwrap_or(reported);
    let e = expected.strip_prefix('v').unwrap_or(expected);
    match r.strip_prefix(e) {
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.'),
        None => false,
    }
}

/// Polls `Status` until RuntimeReady and NetworkReady; returns the last conditions seen.
async fn wait_ready(cri: &mut Cri, dl: Deadline) -> (bool, Vec<Value>, u32) {
    let mut polls = 0;
    loop {
        polls += 1;
        let (ready, conds) = match cri.status(false).await {
            Ok(st) => {
                let ready = ["RuntimeReady", "NetworkReady"].iter().all(|k| st.condition(k).is_some_and(|c| c.status));
                let conds = st
                    .conditions
                    .iter()
                    .map(|c| json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message}))
                    .collect();
                (ready, conds)
            }
            Err(s) => (false, vec![json!({"error": status_text(&s)})]),
        };
        if ready || dl.passed() {
            return (ready, conds, polls);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn summary(conds: &[Value]) -> String {
    conds
        .iter()
        .map(|c| match c.get("error") {
            Some(e) => format!("Status failed: {}", e.as_str().unwrap_or_default()),
            None => format!(
                "{}={} {}",
                c["type"].as_str().unwrap_or_default(),
                c["status"],
                c["message"].as_str().unwrap_or_default()
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{CgroupDriver, CriApi};

    fn expect() -> Expect {
        serde_json::from_value(json!({
            "cri_endpoint_default": "unix:///run/containerd/containerd.sock",
            "sandbox_image": "registry.k8s.io/pause:3.9", "images": [], "cni_subnet": "10.88.0.0/16",
            "cgroup_driver": "systemd", "cri_api": "v1", "containerd_version": "1.6.20"
        }))
        .unwrap()
    }

    #[test]
    fn versions() {
        assert!(version_matches("1.6.20~ds1", "1.6.20"));
        assert!(version_matches("v1.7.13", "1.7.13"));
        assert!(!version_matches("1.6.201", "1.6.20"));
        assert!(!version_matches("1.6.2", "1.6.20"));
        let mut e = expect();
        let v = VersionInfo {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        };
        assert!(version_problems(&v, &e).is_empty());
        e.cri_api = CriApi::V1alpha2;
        e.containerd_version = "1.7.0".into();
        assert_eq!(version_problems(&v, &e).len(), 2);
        assert_eq!(e.cgroup_driver, CgroupDriver::Systemd);
    }
}
