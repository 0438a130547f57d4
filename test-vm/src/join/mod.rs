//! The `join` stage, run by the harness itself once the agent has said `done`: through the
//! API server of a `--kubeconfig`, wait for the Node to register and become Ready, and check
//! that it runs the containerd that was built.
//!
//! It polls `GET /api/v1/nodes/NAME` every [`POLL`] (each request bounded by
//! [`REQUEST_TIMEOUT`]) rather than watching: a watch needs the list permission as well, and
//! one GET per poll is what a recorded-response test server can replay exactly. Between polls
//! it asks its caller whether to stop (a signal, QEMU gone) every 50 ms.
//!
//! Once the Node is Ready with the expected runtime, and when the node has a preloaded image
//! to run (`JoinSpec::pod_image`), a Pod bound to the node must run to `Succeeded` ([`pod`]).
//!
//! The Kubernetes client (kube-rs) is behind the `join` cargo feature; without it the stage
//! is refused at set-up, before QEMU starts.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

#[cfg(feature = "join")]
pub mod pod;

/// Whether this build can run the stage.
pub const AVAILABLE: bool = cfg!(feature = "join");
/// The stage's name in reports.
pub const JOIN_STAGE: &str = "join";
/// Time between two GETs of the Node.
pub const POLL: Duration = Duration::from_secs(2);
/// One request's limit (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API server may stay unreachable (connection refused, no route, TLS failure)
/// before the stage gives up, even if its own limit is longer: a wrong server address should
/// not cost the whole join timeout, while an API server restarting still gets some grace.
pub const UNREACHABLE_LIMIT: Duration = Duration::from_secs(30);

/// What the stage waits for.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    /// `containerd://1.6.20`: the Node's `status.nodeInfo.containerRuntimeVersion`.
    pub expected_runtime: String,
    pub timeout: Duration,
    pub poll: Duration,
    /// A preloaded image the probe pod runs once the Node is Ready (`None`: no pod).
    pub pod_image: Option<String>,
}

/// The stage's verdict, in the tracker's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub passed: bool,
    pub message: String,
    /// `node`, `server`, `ready {status, reason, message}`, `container_runtime_version`,
    /// `expected_runtime_version`, `kubelet_version`, `row` (what `kubectl get node -o wide`
    /// prints), as far as they were seen.
    pub detail: serde_json::Value,
}

impl JoinResult {
    fn fail(message: impl Into<String>, detail: serde_json::Value) -> Self {
        Self { passed: false, message: message.into(), detail }
    }
}

/// The Node's runtime is the built one. kubelet reports `containerd://` + CRI's
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

/// Wait for the Node: see the module documentation. `stop` is asked between requests and
/// returns why to give up (a signal, QEMU exited).
#[cfg(feature = "join")]
pub fn wait_for_node(spec: &JoinSpec, stop: &mut dyn FnMut() -> Option<String>) -> JoinResult {
    let base = json!({"node": spec.node_name, "expected_runtime_version": spec.expected_runtime});
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return JoinResult::fail(format!("cannot start the async runtime: {e}"), base),
    };
    rt.block_on(api::wait(spec, stop, base))
}

#[cfg(not(feature = "join"))]
pub fn wait_for_node(_spec: &JoinSpec, _stop: &mut dyn FnMut() -> Option<String>) -> JoinResult {
    let msg = "this test-vm was built without the `join` feature (kube-rs); rebuild with default features";
    JoinResult::fail(msg, json!(null))
}

#[cfg(feature = "join")]
mod api {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::{Api, Client, Config};

    use super::*;

    /// The last thing seen, for the message when time runs out.
    enum Seen {
        Nothing,
        NotFound,
        NotReady { status: String, reason: String, message: String },
        Unreachable { since: Instant, error: String },
        Failed(String),
    }

    pub(super) async fn wait(
        spec: &JoinSpec,
        stop: &mut dyn FnMut() -> Option<String>,
        mut detail: serde_json::Value,
    ) -> JoinResult {
        let (api, client, server) = match connect(spec).await {
            Ok(c) => c,
            Err(e) => return JoinResult::fail(e, detail),
        };
        detail["server"] = json!(server);
        let name = spec.node_name.as_str();
        let start = Instant::now();
        let mut seen = Seen::Nothing;
        let mut polls = 0u64;
        loop {
            if let Some(reason) = stop() {
                return JoinResult::fail(reason, detail);
            }
            polls += 1;
            detail["polls"] = json!(polls);
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(name)).await;
            match answer {
                Ok(Ok(None)) => seen = Seen::NotFound,
                Ok(Ok(Some(node))) => {
                    record(&node, &mut detail);
                    let got = runtime_version(&node);
                    // The runtime is known from registration on and never changes: a wrong one
                    // fails at once, Ready or not.
                    if !got.is_empty() && !runtime_matches(&spec.expected_runtime, got) {
                        let msg = format!(
                            "node `{name}` runs {got}, expected {} (status.nodeInfo.containerRuntimeVersion)",
                            spec.expected_runtime
                        );
                        return JoinResult::fail(msg, detail);
                    }
                    let ready = ready_condition(&node);
                    match ready {
                        Some(c) if c.status == "True" => {
                            if got.is_empty() {
                                let msg = format!(
                                    "node `{name}` is Ready but reports no containerRuntimeVersion, expected {}",
                                    spec.expected_runtime
                                );
                                return JoinResult::fail(msg, detail);
                            }
                            let row = row(&node, SystemTime::now());
                            detail["row"] = json!(row);
                            let msg = format!("node `{name}` Ready on {got}");
                            let Some(image) = &spec.pod_image else {
                                return JoinResult { passed: true, message: msg, detail };
                            };
                            let pods: Api<Pod> = Api::namespaced(client, pod::NAMESPACE);
                            let deadline = start + spec.timeout;
                            let p = pod::run(&pods, name, image, deadline, stop).await;
                            detail["pod"] = p.detail;
                            let message = format!("{msg}; {}", p.message);
                            return JoinResult { passed: p.passed, message, detail };
                        }
                        Some(c) => {
                            seen = Seen::NotReady {
                                status: c.status.clone(),
                                reason: c.reason.clone().unwrap_or_default(),
                                message: c.message.clone().unwrap_or_default(),
                            }
                        }
                        None => {
                            seen = Seen::NotReady {
                                status: "Unknown".into(),
                                reason: String::new(),
                                message: "no Ready condition yet".into(),
                            }
                        }
                    }
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 401 || s.code == 403 => {
                    let what = if s.code == 401 {
                        "refused the kubeconfig's credentials"
                    } else {
                        "does not allow the kubeconfig's user to get nodes"
                    };
                    let msg = format!(
                        "the API server at {server} {what} ({} {}): {}",
                        s.code,
                        if s.reason.is_empty() { "-" } else { s.reason.as_str() },
                        s.message
                    );
                    return JoinResult::fail(msg, detail);
                }
                Ok(Err(kube::Error::Api(s))) => {
                    seen = Seen::Failed(format!("the API server answered {} {}: {}", s.code, s.reason, s.message));
                }
                Ok(Err(e)) => {
                    let error = chain(&e);
                    let since = match seen {
                        Seen::Unreachable { since, .. } => since,
                        _ => Instant::now(),
                    };
                    if since.elapsed() >= UNREACHABLE_LIMIT.min(spec.timeout) {
                        let msg = format!(
                            "cannot reach the API server at {server} (for {} s): {error}",
                            since.elapsed().as_secs()
                        );
                        return JoinResult::fail(msg, detail);
                    }
                    seen = Seen::Unreachable { since, error };
                }
                Err(_) => {
                    seen = Seen::Failed(format!("no answer from {server} within {} s", REQUEST_TIMEOUT.as_secs()))
                }
            }
            if start.elapsed() >= spec.timeout {
                return JoinResult::fail(timeout_message(spec, &seen, &server), detail);
            }
            // Sleep in slices, so a signal or QEMU's exit is noticed within 50 ms.
            let wake = Instant::now() + spec.poll;
            while Instant::now() < wake && start.elapsed() < spec.timeout {
                if let Some(reason) = stop() {
                    return JoinResult::fail(reason, detail);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn timeout_message(spec: &JoinSpec, seen: &Seen, server: &str) -> String {
        let name = &spec.node_name;
        let secs = spec.timeout.as_secs();
        match seen {
            Seen::Nothing | Seen::NotFound => {
                format!("node `{name}` did not register with {server} within {secs} s (GET nodes/{name}: 404 NotFound)")
            }
            Seen::NotReady { status, reason, message } => {
                let reason = if reason.is_empty() { String::new() } else { format!(" {reason}") };
                format!("node `{name}` registered but was not Ready within {secs} s: Ready={status}{reason}: {message}")
            }
            Seen::Unreachable { error, .. } => {
                format!("node `{name}` not seen within {secs} s: cannot reach the API server at {server}: {error}")
            }
            Seen::Failed(e) => format!("node `{name}` not seen within {secs} s: {e}"),
        }
    }

    /// The client for the kubeconfig's current context: its server (http:// or https://,
    /// with the kubeconfig's CA, client certificate or token), with bounded timeouts.
    async fn connect(spec: &JoinSpec) -> Result<(Api<Node>, Client, String), String> {
        let path = &spec.kubeconfig;
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| format!("reading the kubeconfig {}: {}", path.display(), chain(&e)))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("the kubeconfig {}: {}", path.display(), chain(&e)))?;
        config.connect_timeout = Some(REQUEST_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
        let client = Client::try_from(config)
            .map_err(|e| format!("a client for {server} from {}: {}", path.display(), chain(&e)))?;
        Ok((Api::all(client.clone()), client, server))
    }

    /// An error with its causes, as `a: b: c`, without repeating a cause its parent quoted.
    fn chain(e: &dyn std::error::Error) -> String {
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

    fn ready_condition(node: &Node) -> Option<&NodeCondition> {
        node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
    }

    fn runtime_version(node: &Node) -> &str {
        node.status.as_ref().and_then(|s| s.node_info.as_ref()).map_or("", |i| i.container_runtime_version.as_str())
    }

    fn record(node: &Node, detail: &mut serde_json::Value) {
        if let Some(c) = ready_condition(node) {
            detail["ready"] = json!({"status": c.status, "reason": c.reason, "message": c.message});
        }
        if let Some(info) = node.status.as_ref().and_then(|s| s.node_info.as_ref()) {
            detail["container_runtime_version"] = json!(info.container_runtime_version);
            detail["kubelet_version"] = json!(info.kubelet_version);
        }
    }

    /// `kubectl get node NAME -o wide`: the header and the node's row.
    pub(crate) fn row(node: &Node, now: SystemTime) -> String {
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
        let header = "NAME STATUS ROLES AGE VERSION INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME";
        let values = vec![
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
        ];
        crate::report::table(&[header.split(' ').map(str::to_owned).collect(), values])
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn node(json: serde_json::Value) -> Node {
            serde_json::from_value(json).unwrap()
        }

        #[test]
        fn the_row_is_kubectls() {
            let n = node(json!({
                "metadata": {"name": "worker-1", "creationTimestamp": "2026-11-27T10:00:00Z",
                    "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/infra": "",
                               "kubernetes.io/hostname": "worker-1"}},
                "spec": {"unschedulable": true},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}],
                    "addresses": [{"type": "Hostname", "address": "worker-1"}, {"type": "InternalIP", "address": "10.0.2.15"}],
                    "nodeInfo": {"kubeletVersion": "v1.30.2", "osImage": "Debian GNU/Linux 12 (bookworm)",
                        "kernelVersion": "6.1.0-27-amd64", "containerRuntimeVersion": "containerd://1.6.20",
                        "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "",
                        "operatingSystem": "linux", "architecture": "amd64"}}
            }));
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
            let bare = node(json!({"metadata": {"name": "n"}, "status": {}}));
            let text = row(&bare, now);
            let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
            assert_eq!(
                cells,
                ["n", "Unknown", "<none>", "<unknown>", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
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
}
