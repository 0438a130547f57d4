//! What nodeforge reads of a cluster, through its API server (kube-rs): a client from a
//! kubeconfig with bounded timeouts, a Node's facts (Ready, runtime, kubelet, boot), and its row
//! as `kubectl get node -o wide` prints it. Shared by `nodeforge replace` and test-vm's join
//! stage.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// One request's limit (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the kubeconfig's current context, and its server URL for messages.
pub async fn connect(kubeconfig: &Path) -> Result<(Client, String), String> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("reading the kubeconfig {}: {}", kubeconfig.display(), chain(&e)))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("the kubeconfig {}: {}", kubeconfig.display(), chain(&e)))?;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // kube-rs would retry 429s itself, without end: an eviction a PodDisruptionBudget refuses
    // answers 429, and the caller must see that (and every caller here polls on its own).
    config.default_retry = false;
    let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    let client = Client::try_from(config)
        .map_err(|e| format!("a client for {server} from {}: {}", kubeconfig.display(), chain(&e)))?;
    Ok((client, server))
}

/// An error with its causes, as `a: b: c`, without repeating a cause its parent quoted.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !out.contains(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
        cur = s.source();
    }
    out
}

pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// `Ready=True`.
pub fn is_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

/// `status.nodeInfo.containerRuntimeVersion`, e.g. `containerd://1.6.20` (empty if unknown).
pub fn runtime_version(node: &Node) -> &str {
    node.status.as_ref().and_then(|s| s.node_info.as_ref()).map_or("", |i| i.container_runtime_version.as_str())
}

/// `status.nodeInfo.bootID`: changes with every boot of the machine behind the Node.
pub fn boot_id(node: &Node) -> &str {
    node.status.as_ref().and_then(|s| s.node_info.as_ref()).map_or("", |i| i.boot_id.as_str())
}

/// The Node's runtime is the expected one. kubelet reports `containerd://` + CRI's
/// `runtime_version`, which upstream release builds give without a `v`; a build that keeps
/// the `v` (`containerd://v1.6.20`) is the same version and is accepted too.
pub fn runtime_matches(expected: &str, got: &str) -> bool {
    if got == expected {
        return true;
    }
    match expected.split_once("://") {
        Some((runtime, version)) if !version.starts_with('v') => got == format!("{runtime}://v{version}"),
        _ => false,
    }
}

/// kubectl's short age (`HumanDuration` in k8s.io/apimachinery): `45s`, `3m20s`, `15m`,
/// `5h3m`, `2d4h`, `30d`, `2y100d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return if s % 60 == 0 { format!("{minutes}m") } else { format!("{minutes}m{}s", s % 60) };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return if minutes % 60 == 0 { format!("{hours}h") } else { format!("{hours}h{}m", minutes % 60) };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return if hours % 24 == 0 { format!("{}d", hours / 24) } else { format!("{}d{}h", hours / 24, hours % 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{days}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

/// The header `kubectl get node -o wide` prints.
pub const WIDE_HEADER: [&str; 10] = [
    "NAME",
    "STATUS",
    "ROLES",
    "AGE",
    "VERSION",
    "INTERNAL-IP",
    "EXTERNAL-IP",
    "OS-IMAGE",
    "KERNEL-VERSION",
    "CONTAINER-RUNTIME",
];

/// A Node's cells in `kubectl get node -o wide`, at `now`.
pub fn wide_cells(node: &Node, now: SystemTime) -> Vec<String> {
    let none = || "<none>".to_owned();
    let unknown = |s: &str| if s.is_empty() { "<unknown>".to_owned() } else { s.to_owned() };
    let status = node.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    let mut state = match ready_condition(node) {
        Some(c) if c.status == "True" => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        state.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in node.metadata.labels.iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_owned());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.push(v.clone());
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() { none() } else { roles.join(",") };
    let age = match &node.metadata.creation_timestamp {
        Some(t) => {
            let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            human_duration(now - t.0.as_second())
        }
        None => "<unknown>".to_owned(),
    };
    let address = |kind: &str| {
        status.addresses.iter().flatten().find(|a| a.type_ == kind).map_or_else(none, |a| a.address.clone())
    };
    vec![
        node.metadata.name.clone().unwrap_or_default(),
        state,
        roles,
        age,
        info.kubelet_version.clone(),
        address("InternalIP"),
        address("ExternalIP"),
        unknown(&info.os_image),
        unknown(&info.kernel_version),
        unknown(&info.container_runtime_version),
    ]
}

/// `kubectl get node NAME -o wide`: the header and the Node's row.
pub fn row(node: &Node, now: SystemTime) -> String {
    crate::table::table(&[WIDE_HEADER.iter().map(|s| (*s).to_owned()).collect(), wide_cells(node, now)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 3 * 60, "5h3m"),
            (47 * 3600, "47h"),
            (2 * 86400 + 4 * 3600, "2d4h"),
            (3 * 86400, "3d"),
            (30 * 86400, "30d"),
            (2 * 365 * 86400 + 100 * 86400, "2y100d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs} s");
        }
    }

    #[test]
    fn runtime_versions() {
        assert!(runtime_matches("containerd://1.6.20", "containerd://1.6.20"));
        assert!(runtime_matches("containerd://1.6.20", "containerd://v1.6.20"));
        assert!(!runtime_matches("containerd://1.6.20", "containerd://1.7.27"));
        assert!(!runtime_matches("containerd://1.6.20", "docker://1.6.20"));
        assert!(!runtime_matches("containerd://1.6.20", "containerd://1.6.20~ds1"));
        assert!(!runtime_matches("containerd://1.6.20", ""));
    }

    #[test]
    fn the_row_is_kubectls() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "worker-1", "creationTimestamp": "2026-11-27T10:00:00Z",
                "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/infra": "",
                           "kubernetes.io/hostname": "worker-1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}],
                "addresses": [{"type": "Hostname", "address": "worker-1"}, {"type": "InternalIP", "address": "10.0.2.15"}],
                "nodeInfo": {"kubeletVersion": "v1.30.2", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0-27-amd64", "containerRuntimeVersion": "containerd://1.6.20",
                    "machineID": "", "systemUUID": "", "bootID": "b-1", "kubeProxyVersion": "",
                    "operatingSystem": "linux", "architecture": "amd64"}}
        }))
        .unwrap();
        assert_eq!(boot_id(&n), "b-1");
        assert!(is_ready(&n));
        let now = UNIX_EPOCH + Duration::from_secs(1_795_773_600 + 3 * 3600 + 25 * 60);
        let text = row(&n, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME       STATUS                     ROLES          AGE     VERSION   INTERNAL-IP   EXTERNAL-IP   OS-IMAGE                         KERNEL-VERSION   CONTAINER-RUNTIME"
        );
        assert_eq!(
            lines[1],
            "worker-1   Ready,SchedulingDisabled   infra,worker   3h25m   v1.30.2   10.0.2.15     <none>        Debian GNU/Linux 12 (bookworm)   6.1.0-27-amd64   containerd://1.6.20"
        );
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {}})).unwrap();
        let text = row(&bare, now);
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            ["n", "Unknown", "<none>", "<unknown>", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]
        );
    }
}
