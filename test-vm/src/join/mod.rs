//! The `join` stage, run by the harness itself once the agent has said `done`: through the
//! API server of a `--kubeconfig`, wait for the Node to register and become Ready, and check
//! that it runs the containerd that was built.
//!
//! It polls `GET /api/v1/nodes/NAME` every [`POLL`] (each request bounded by
//! `REQUEST_TIMEOUT`) rather than watching: a watch needs the list permission as well, and
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
#[cfg(feature = "join")]
pub const REQUEST_TIMEOUT: Duration = nodeforge::cluster::REQUEST_TIMEOUT;
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

#[cfg(feature = "join")]
pub use nodeforge::cluster::{human_duration, runtime_matches};

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
    use std::time::{Instant, SystemTime};

    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::{Api, Client};
    use nodeforge::cluster::{chain, ready_condition, row, runtime_version};

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

    /// The client for the kubeconfig's current context, with bounded timeouts.
    async fn connect(spec: &JoinSpec) -> Result<(Api<Node>, Client, String), String> {
        let (client, server) = nodeforge::cluster::connect(&spec.kubeconfig).await?;
        Ok((Api::all(client.clone()), client, server))
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
}
