//! Draining a node the way `kubectl drain --ignore-daemonsets` does, through the Eviction API.
//!
//! Every pod bound to the node is classified first, and nothing is evicted if any would be
//! lost: a pod no controller owns (it would not come back) needs `--force`, a pod with an
//! emptyDir volume (its data goes with it) `--delete-emptydir-data`. Pods that have finished
//! (Succeeded, Failed) are fine either way. DaemonSet pods and static (mirror) pods stay: the
//! DaemonSet controller would recreate the former on the node at once, and the latter belong
//! to the kubelet's manifests. Then each pod is evicted; an eviction a PodDisruptionBudget
//! refuses (429) is retried every few seconds until the drain's deadline, and the failure
//! names the budgets that select the pod. Last, the evicted pods must be gone (or replaced by
//! a pod of the same name with another uid).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{EvictParams, ListParams};
use kube::{Api, Client};
use serde::Serialize;

use super::{call, fail, progress};
use crate::exit::ExitClass;
use crate::io::Interrupt;

/// How often a refused eviction is retried, and evicted pods are looked for.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub force: bool,
    pub delete_emptydir_data: bool,
    pub timeout: Duration,
}

/// What happened to one pod of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodVerdict {
    Evicted,
    /// Left alone: a DaemonSet's.
    DaemonSet,
    /// Left alone: the kubelet's own (a mirror of a static pod).
    Static,
}

impl PodVerdict {
    pub fn word(self) -> &'static str {
        match self {
            PodVerdict::Evicted => "evicted",
            PodVerdict::DaemonSet => "daemonset",
            PodVerdict::Static => "static",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Drained {
    pub namespace: String,
    pub name: String,
    pub verdict: PodVerdict,
}

/// Why a pod may not be evicted without a flag, if it may not.
fn hazard(pod: &Pod, opts: &DrainOptions) -> Option<&'static str> {
    let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    if finished {
        return None;
    }
    let controlled = pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
    if !controlled && !opts.force {
        return Some("no controller would recreate it (--force deletes it anyway)");
    }
    let empty_dir =
        pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
    if empty_dir && !opts.delete_emptydir_data {
        return Some("it has emptyDir data that would be lost (--delete-emptydir-data evicts it anyway)");
    }
    None
}

/// Pods that stay on the node, and why.
fn stays(pod: &Pod) -> Option<PodVerdict> {
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return Some(PodVerdict::Static);
    }
    let daemon =
        pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    daemon.then_some(PodVerdict::DaemonSet)
}

fn key(pod: &Pod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

pub async fn drain(
    client: &Client,
    server: &str,
    node: &str,
    opts: &DrainOptions,
    interrupt: &Interrupt,
) -> Result<Vec<Drained>> {
    let deadline = Instant::now() + opts.timeout;
    let all: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods = call(&format!("listing the pods on `{node}`"), server, all.list(&on_node)).await?.items;

    let mut report = Vec::new();
    let mut to_evict = Vec::new();
    let mut refused = Vec::new();
    for pod in pods {
        let (namespace, name) = key(&pod);
        if let Some(verdict) = stays(&pod) {
            report.push(Drained { namespace, name, verdict });
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            to_evict.push((pod, true));
            continue;
        }
        match hazard(&pod, opts) {
            Some(why) => refused.push(format!("{namespace}/{name}: {why}")),
            None => to_evict.push((pod, false)),
        }
    }
    if !refused.is_empty() {
        return Err(fail(
            ExitClass::PodsWouldBeLost,
            format!("draining `{node}` would lose pods; nothing was evicted:\n  {}", refused.join("\n  ")),
        ));
    }

    // Evict, retrying what a disruption budget refuses.
    let mut waiting: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut pending: Vec<Pod> = Vec::new();
    for (pod, deleting) in to_evict {
        let (namespace, name) = key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        waiting.insert((namespace.clone(), name.clone()), uid);
        if !deleting {
            pending.push(pod);
        }
    }
    while !pending.is_empty() {
        let mut still = Vec::new();
        for pod in pending {
            if interrupt.is_set() {
                return Err(crate::io::Interrupted.into());
            }
            let (namespace, name) = key(&pod);
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let what = format!("evicting {namespace}/{name}");
            match tokio::time::timeout(super::REQUEST_TIMEOUT, api.evict(&name, &EvictParams::default())).await {
                Ok(Ok(_)) => progress(&format!("evicted {namespace}/{name}")),
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
                Ok(Err(kube::Error::Api(s))) if s.code == 429 => still.push((pod, s.message)),
                Ok(Err(e)) => return Err(super::api_error(&what, server, e)),
                Err(_) => return Err(fail(ExitClass::Unreachable, format!("{what}: no answer from {server}"))),
            }
        }
        if still.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let mut lines = Vec::new();
            for (pod, message) in &still {
                let budgets = budgets_for(client, server, pod).await.unwrap_or_default();
                let (namespace, name) = key(pod);
                let by = if budgets.is_empty() {
                    String::new()
                } else {
                    format!(" (PodDisruptionBudget {})", budgets.join(", "))
                };
                lines.push(format!("{namespace}/{name}{by}: {message}"));
            }
            return Err(fail(
                ExitClass::DrainBlocked,
                format!(
                    "draining `{node}`: evictions still refused after {} s:\n  {}",
                    opts.timeout.as_secs(),
                    lines.join("\n  ")
                ),
            ));
        }
        progress(&format!(
            "{} eviction(s) refused by disruption budgets; retrying in {} s",
            still.len(),
            RETRY.as_secs()
        ));
        tokio::time::sleep(RETRY).await;
        pending = still.into_iter().map(|(p, _)| p).collect();
    }

    // The evicted pods must be gone (or replaced: same name, another uid).
    loop {
        if interrupt.is_set() {
            return Err(crate::io::Interrupted.into());
        }
        let mut left = Vec::new();
        for ((namespace, name), uid) in &waiting {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let now = call(&format!("reading pod {namespace}/{name}"), server, api.get_opt(name)).await?;
            if now.is_some_and(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                left.push(format!("{namespace}/{name}"));
            }
        }
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(fail(
                ExitClass::DrainBlocked,
                format!(
                    "draining `{node}`: evicted pods still there after {} s: {}",
                    opts.timeout.as_secs(),
                    left.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (namespace, name) in waiting.into_keys() {
        report.push(Drained { namespace, name, verdict: PodVerdict::Evicted });
    }
    Ok(report)
}

/// The PodDisruptionBudgets of the pod's namespace whose selector matches the pod.
async fn budgets_for(client: &Client, server: &str, pod: &Pod) -> Result<Vec<String>> {
    let (namespace, _) = key(pod);
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    let list = call("listing PodDisruptionBudgets", server, api.list(&ListParams::default())).await?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    Ok(list
        .items
        .into_iter()
        .filter(|b| b.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| selects(s, &labels)))
        .filter_map(|b| b.metadata.name)
        .collect())
}

/// A label selector's verdict on a label set (matchLabels and matchExpressions, as the API
/// server evaluates them). An empty selector selects everything.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    exact && expressions
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn opts(force: bool, empty: bool) -> DrainOptions {
        DrainOptions { force, delete_emptydir_data: empty, timeout: Duration::from_secs(1) }
    }

    #[test]
    fn pods_are_classified_as_kubectl_drain_does() {
        let owned =
            |kind: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true}]);
        let bare = pod(json!({"metadata": {"name": "p", "namespace": "default"}}));
        assert!(hazard(&bare, &opts(false, false)).unwrap().contains("--force"));
        assert_eq!(hazard(&bare, &opts(true, false)), None);
        let done = pod(json!({"metadata": {"name": "p"}, "status": {"phase": "Succeeded"}}));
        assert_eq!(hazard(&done, &opts(false, false)), None);
        let rs = pod(json!({"metadata": {"name": "p", "ownerReferences": owned("ReplicaSet")}}));
        assert_eq!(hazard(&rs, &opts(false, false)), None);
        assert_eq!(stays(&rs), None);
        let scratch = pod(json!({"metadata": {"name": "p", "ownerReferences": owned("ReplicaSet")},
            "spec": {"containers": [], "volumes": [{"name": "s", "emptyDir": {}}]}}));
        assert!(hazard(&scratch, &opts(true, false)).unwrap().contains("--delete-emptydir-data"));
        assert_eq!(hazard(&scratch, &opts(false, true)), None);
        let ds = pod(json!({"metadata": {"name": "p", "ownerReferences": owned("DaemonSet")}}));
        assert_eq!(stays(&ds), Some(PodVerdict::DaemonSet));
        let mirror = pod(json!({"metadata": {"name": "p", "annotations": {"kubernetes.io/config.mirror": "abc"}}}));
        assert_eq!(stays(&mirror), Some(PodVerdict::Static));
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "a".to_owned())]);
        let s = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(selects(&s(json!({})), &labels));
        assert!(selects(&s(json!({"matchLabels": {"app": "web"}})), &labels));
        assert!(!selects(&s(json!({"matchLabels": {"app": "db"}})), &labels));
        assert!(selects(
            &s(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})),
            &labels
        ));
        assert!(!selects(
            &s(json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]})),
            &labels
        ));
        assert!(selects(&s(json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})), &labels));
        assert!(!selects(&s(json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})), &labels));
    }
}
