//! The join stage's last step: once the Node is Ready, a Pod bound to it (`spec.nodeName`,
//! so no scheduler is involved) that runs one of the node's preloaded images
//! (`imagePullPolicy: Never`: no registry is reachable) and must reach `Succeeded` with exit
//! code 0 and the greeting as its termination message. That is the real kubelet running a
//! pod through the overlay's containerd, runc, CNI plugins and cgroup driver, end to end.
//!
//! The evidence is the termination message (the container writes the greeting to
//! `/dev/termination-log`, the kubelet reports it in the Pod's status), not the log: the API
//! server reads a log from the kubelet at the Node's InternalIP, which under QEMU user
//! networking is the guest's private 10.0.2.15, reachable from no host process (and a test
//! must not send the API server dialling addresses off loopback).
//!
//! The Pod tolerates every taint (a fresh node may still carry `not-ready`), mounts no
//! service-account token (nothing in it talks to the API server), and is deleted afterwards
//! whatever happened. Creating it is retried while the API server answers that the
//! namespace's `default` ServiceAccount does not exist yet (a new cluster's controller
//! manager makes it within seconds).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

/// What the probe container prints; its log must carry it.
pub const GREETING: &str = "hello-from-nodeforge-join";
/// The namespace the probe pod runs in.
pub const NAMESPACE: &str = "default";

/// The probe pod's outcome.
#[derive(Debug)]
pub struct PodResult {
    pub passed: bool,
    pub message: String,
    pub detail: serde_json::Value,
}

/// The Pod, as the API server is sent it.
pub fn manifest(name: &str, node: &str, image: &str) -> Pod {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "nodeforge-test-vm"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "hello",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", format!("echo {GREETING}; echo {GREETING} >/dev/termination-log")],
            }],
        },
    });
    // A literal of the Pod type's own shape: it deserialises.
    serde_json::from_value(doc).unwrap_or_default()
}

/// Run the probe pod on `node` and wait (until `deadline`) for it to succeed.
pub async fn run(
    pods: &Api<Pod>,
    node: &str,
    image: &str,
    deadline: Instant,
    stop: &mut dyn FnMut() -> Option<String>,
) -> PodResult {
    let name = format!("nodeforge-probe-{}", unique_suffix());
    let mut detail = json!({"name": name, "namespace": NAMESPACE, "image": image});
    let started = Instant::now();
    let result = create_and_wait(pods, &name, node, image, deadline, stop, &mut detail).await;
    detail["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    // Always clean up; a leftover pod is not the node's fault, so a failed delete is noted only.
    let gone = tokio::time::timeout(
        super::REQUEST_TIMEOUT,
        pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }),
    )
    .await;
    match gone {
        Ok(Ok(_)) => {}
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
        Ok(Err(e)) => detail["cleanup_error"] = json!(e.to_string()),
        Err(_) => detail["cleanup_error"] = json!("no answer to the delete"),
    }
    match result {
        Ok(message) => PodResult { passed: true, message, detail },
        Err(message) => PodResult { passed: false, message, detail },
    }
}

async fn create_and_wait(
    pods: &Api<Pod>,
    name: &str,
    node: &str,
    image: &str,
    deadline: Instant,
    stop: &mut dyn FnMut() -> Option<String>,
    detail: &mut serde_json::Value,
) -> Result<String, String> {
    let pod = manifest(name, node, image);
    loop {
        if let Some(reason) = stop() {
            return Err(reason);
        }
        match tokio::time::timeout(super::REQUEST_TIMEOUT, pods.create(&PostParams::default(), &pod)).await {
            Ok(Ok(_)) => break,
            // "error looking up service account default/default" / "... was not found".
            Ok(Err(kube::Error::Api(s))) if s.code == 403 && s.message.contains("service account") => {
                detail["create_retries"] = json!(detail["create_retries"].as_u64().unwrap_or(0) + 1);
            }
            Ok(Err(e)) => return Err(format!("creating pod {NAMESPACE}/{name} on `{node}`: {e}")),
            Err(_) => return Err(format!("creating pod {NAMESPACE}/{name}: no answer from the API server")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "pod {NAMESPACE}/{name} could not be created: the default ServiceAccount never appeared"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let created = Instant::now();
    let mut last = String::from("not seen yet");
    loop {
        if let Some(reason) = stop() {
            return Err(reason);
        }
        if let Ok(Ok(p)) = tokio::time::timeout(super::REQUEST_TIMEOUT, pods.get(name)).await {
            let (phase, state) = describe(&p);
            detail["phase"] = json!(phase);
            last = format!("{phase}{}", if state.is_empty() { String::new() } else { format!(" ({state})") });
            match phase.as_str() {
                "Succeeded" => {
                    detail["ran_ms"] = json!(created.elapsed().as_millis() as u64);
                    return check_termination(&p, name, detail);
                }
                "Failed" => return Err(format!("pod {NAMESPACE}/{name} on `{node}` failed: {last}")),
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("pod {NAMESPACE}/{name} on `{node}` did not succeed in time; last seen: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pod's phase and its container's state in a few words: `waiting: ErrImageNeverPull:
/// ...`, `terminated: exit 1 Error`, or the pod's own reason/message.
fn describe(p: &Pod) -> (String, String) {
    let status = p.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    let container = status.container_statuses.iter().flatten().find_map(|c| c.state.clone());
    let state = match container {
        Some(s) if s.waiting.is_some() => {
            let w = s.waiting.unwrap_or_default();
            format!("waiting: {} {}", w.reason.unwrap_or_default(), w.message.unwrap_or_default())
        }
        Some(s) if s.terminated.is_some() => {
            let t = s.terminated.unwrap_or_default();
            format!("terminated: exit {} {}", t.exit_code, t.reason.unwrap_or_default())
        }
        Some(s) if s.running.is_some() => "running".into(),
        _ => {
            let cond = status.conditions.iter().flatten().find(|c| c.status != "True").map(|c| {
                format!(
                    "{} {} {}",
                    c.type_,
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )
            });
            cond.or(status.message.clone()).unwrap_or_default()
        }
    };
    (phase, state.trim().to_owned())
}

/// The container exited 0 and the kubelet reported the greeting it wrote as its termination
/// message.
fn check_termination(p: &Pod, name: &str, detail: &mut serde_json::Value) -> Result<String, String> {
    let terminated = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .ok_or_else(|| format!("pod {NAMESPACE}/{name} Succeeded, but its container reports no terminated state"))?;
    let message = terminated.message.clone().unwrap_or_default();
    detail["exit_code"] = json!(terminated.exit_code);
    detail["termination_message"] = json!(message.trim_end());
    if terminated.exit_code != 0 {
        return Err(format!("pod {NAMESPACE}/{name}: its container exited {}", terminated.exit_code));
    }
    if message.trim() == GREETING {
        Ok(format!("pod {NAMESPACE}/{name} Succeeded; its container exited 0 and reported `{GREETING}`"))
    } else {
        Err(format!("pod {NAMESPACE}/{name} Succeeded, but its termination message is {message:?}, not `{GREETING}`"))
    }
}

/// A name suffix unique enough for one cluster's lifetime: time and process id.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()).rotate_left(40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_pod_is_bound_and_pulls_nothing() {
        let p = manifest("probe-1", "worker-1", "nodeforge.test/busybox:1");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["spec"]["nodeName"], "worker-1");
        assert_eq!(v["spec"]["containers"][0]["imagePullPolicy"], "Never");
        let cmd = v["spec"]["containers"][0]["command"][2].as_str().unwrap();
        assert!(cmd.contains(&format!("echo {GREETING} >/dev/termination-log")), "{cmd}");
        assert_eq!(v["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["automountServiceAccountToken"], false);
        assert_eq!(v["metadata"]["namespace"], NAMESPACE);
    }

    #[test]
    fn states_read_in_a_few_words() {
        let p: Pod = serde_json::from_value(json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": "hello", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}}}]}}))
        .unwrap();
        assert_eq!(describe(&p), ("Pending".into(), "waiting: ErrImageNeverPull not present".into()));
        let p: Pod = serde_json::from_value(json!({"status": {"phase": "Failed", "containerStatuses": [{
            "name": "hello", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}}))
        .unwrap();
        assert_eq!(describe(&p), ("Failed".into(), "terminated: exit 2 Error".into()));
    }
}
