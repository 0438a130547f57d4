//! `nodeforge replace`: the seed's migration — drain, swap the runtime, restart, check
//! `kubectl get node -o wide`, uncordon — done by replacing the machine instead of editing it.
//!
//! 1. Read the Node (its row, runtime, kubelet, kernel, OS image and boot id are the "before"),
//!    cordon it, and drain it through the Eviction API ([`drain`]): DaemonSet pods and static
//!    pods stay, a PodDisruptionBudget is respected (retried until `--drain-timeout`), pods no
//!    controller would recreate or with emptyDir data are refused unless `--force` /
//!    `--delete-emptydir-data`, as `kubectl drain` does.
//! 2. Reprovision: `--reprovision-cmd` through `sh -c` with `NODEFORGE_NODE` set, or the
//!    operator, told what to do.
//! 3. Wait ([`wait`]) until the Node reports a new boot id, is Ready, and runs the expected
//!    runtime: the old `status.nodeInfo` replaced by the new machine's.
//! 4. Uncordon, and report before and after as `kubectl get node -o wide` rows.
//!
//! Every failure has its own exit class ([`ExitClass`]) and leaves the node cordoned: a node that
//! did not pass is never uncordoned. A Node object re-created under the same name (which
//! `kubectl delete node` before a re-join brings about) is cordoned again as soon as it is
//! seen, until it passes.

mod drain;
mod wait;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::cli::ReplaceConfig;
use crate::cluster::{self, REQUEST_TIMEOUT};
use crate::exit::ExitClass;
use crate::io::Interrupt;

pub use drain::{DrainOptions, Drained, PodVerdict};

/// What the node was, or became: its `kubectl get node -o wide` cells and the facts that
/// identify a machine and its runtime.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub row: Vec<String>,
    pub container_runtime_version: String,
    pub kubelet_version: String,
    pub kernel_version: String,
    pub os_image: String,
    pub boot_id: String,
    pub uid: String,
    pub unschedulable: bool,
}

impl Snapshot {
    pub fn of(node: &Node) -> Self {
        let info = node.status.as_ref().and_then(|s| s.node_info.clone()).unwrap_or_default();
        Self {
            row: cluster::wide_cells(node, SystemTime::now()),
            container_runtime_version: info.container_runtime_version,
            kubelet_version: info.kubelet_version,
            kernel_version: info.kernel_version,
            os_image: info.os_image,
            boot_id: info.boot_id,
            uid: node.metadata.uid.clone().unwrap_or_default(),
            unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        }
    }
}

/// The result of a replacement that passed.
#[derive(Debug, Serialize)]
pub struct ReplaceReport {
    pub node: String,
    pub server: String,
    pub expected_runtime: String,
    pub before: Snapshot,
    pub after: Snapshot,
    pub drained: Vec<Drained>,
    pub reprovision: Option<Reprovisioned>,
    /// The Node object was deleted and registered anew (and was cordoned again meanwhile).
    pub recreated: bool,
    pub drain_ms: u64,
    pub reprovision_ms: u64,
    pub wait_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Reprovisioned {
    pub command: String,
    pub exit_code: Option<i32>,
}

impl ReplaceReport {
    pub fn human(&self) -> String {
        let mut out = format!(
            "replaced node {} in {:.0} s (drain {:.0} s, reprovision {:.0} s, back Ready {:.0} s later)\n",
            self.node,
            self.total_ms as f64 / 1000.0,
            self.drain_ms as f64 / 1000.0,
            self.reprovision_ms as f64 / 1000.0,
            self.wait_ms as f64 / 1000.0
        );
        for d in &self.drained {
            out.push_str(&format!("  {:<9} {}/{}\n", d.verdict.word(), d.namespace, d.name));
        }
        let header: Vec<String> = std::iter::once("").chain(cluster::WIDE_HEADER).map(str::to_owned).collect();
        let with = |label: &str, row: &[String]| std::iter::once(label.to_owned()).chain(row.iter().cloned()).collect();
        out.push_str(&crate::table::table(&[header, with("before", &self.before.row), with("after", &self.after.row)]));
        out
    }
}

/// A failure of one class, with the message that explains it.
fn fail(stage: ExitClass, msg: impl Into<String>) -> anyhow::Error {
    anyhow!("{}", msg.into()).context(stage)
}

/// The API server's answer as a failure class: 401/403 are the credentials' fault, a
/// transport error the network's; anything else is a plain error.
fn api_error(what: &str, server: &str, e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 401 => fail(
            ExitClass::Forbidden,
            format!("{what}: the API server at {server} refused the kubeconfig's credentials (401): {}", s.message),
        ),
        kube::Error::Api(s) if s.code == 403 => {
            fail(ExitClass::Forbidden, format!("{what}: forbidden by {server} (403, RBAC): {}", s.message))
        }
        kube::Error::Api(s) => anyhow!("{what}: the API server answered {} {}: {}", s.code, s.reason, s.message),
        other => fail(
            ExitClass::Unreachable,
            format!("{what}: cannot reach the API server at {server}: {}", cluster::chain(&other)),
        ),
    }
}

/// One API call, bounded in time; an unanswered call is the network's fault.
async fn call<T>(
    what: &str,
    server: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| api_error(what, server, e)),
        Err(_) => Err(fail(
            ExitClass::Unreachable,
            format!("{what}: no answer from {server} within {} s", REQUEST_TIMEOUT.as_secs()),
        )),
    }
}

/// Set `spec.unschedulable`.
async fn set_unschedulable(nodes: &Api<Node>, server: &str, name: &str, value: bool) -> Result<Node> {
    let what = if value { format!("cordoning node `{name}`") } else { format!("uncordoning node `{name}`") };
    let patch = Patch::Merge(json!({"spec": {"unschedulable": value}}));
    call(&what, server, nodes.patch(name, &PatchParams::default(), &patch)).await
}

pub fn run(c: &ReplaceConfig, json: bool, interrupt: &Interrupt) -> Result<()> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let report = rt.block_on(replace(c, interrupt))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("nodeforge replace: {msg}");
}

pub async fn replace(c: &ReplaceConfig, interrupt: &Interrupt) -> Result<ReplaceReport> {
    let started = Instant::now();
    let (client, server) = cluster::connect(&c.kubeconfig).await.map_err(|e| fail(ExitClass::Usage, e))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let name = c.node.as_str();
    let found = call(&format!("reading node `{name}`"), &server, nodes.get_opt(name)).await?;
    let node = found.ok_or_else(|| fail(ExitClass::Usage, format!("--node: there is no node `{name}` at {server}")))?;
    let before = Snapshot::of(&node);
    progress(&format!(
        "node `{name}` runs {} (kubelet {}, boot {})",
        before.container_runtime_version, before.kubelet_version, before.boot_id
    ));
    if cluster::runtime_matches(&c.expect_runtime, &before.container_runtime_version) {
        progress(&format!("note: `{name}` already runs {}; it is replaced all the same", c.expect_runtime));
    }

    progress(&format!("cordoning `{name}`"));
    set_unschedulable(&nodes, &server, name, true).await?;
    let t = Instant::now();
    let opts = DrainOptions { force: c.force, delete_emptydir_data: c.delete_emptydir_data, timeout: c.drain_timeout };
    let drained = drain::drain(&client, &server, name, &opts, interrupt).await.map_err(|e| cordoned(e, name))?;
    let drain_ms = t.elapsed().as_millis() as u64;

    let t = Instant::now();
    let reprovision = match &c.reprovision_cmd {
        Some(cmd) => Some(reprovision(cmd, name, &c.expect_runtime, interrupt).map_err(|e| cordoned(e, name))?),
        None => {
            progress(&format!(
                "`{name}` is drained and cordoned. Reprovision it now: boot the new image on it with a seed \
                 that carries a new instance-id (`nodeforge seed --node {name} --instance-id ...`), or let your \
                 cloud replace the machine under the same name. Waiting up to {} s for it to come back Ready as {}.",
                c.timeout.as_secs(),
                c.expect_runtime
            ));
            None
        }
    };
    let reprovision_ms = t.elapsed().as_millis() as u64;

    let t = Instant::now();
    let want = wait::Awaited {
        name,
        before: &before,
        expect: &c.expect_runtime,
        timeout: c.timeout,
        runtime_grace: c.runtime_grace,
    };
    let back = wait::back(&nodes, &server, want, interrupt).await.map_err(|e| cordoned(e, name))?;
    let wait_ms = t.elapsed().as_millis() as u64;

    progress(&format!("`{name}` is back Ready on {}: uncordoning", c.expect_runtime));
    let node = set_unschedulable(&nodes, &server, name, false).await?;
    Ok(ReplaceReport {
        node: name.to_owned(),
        server,
        expected_runtime: c.expect_runtime.clone(),
        before,
        after: Snapshot::of(&node),
        drained,
        reprovision,
        recreated: back.recreated,
        drain_ms,
        reprovision_ms,
        wait_ms,
        total_ms: started.elapsed().as_millis() as u64,
    })
}

/// Every failure after the cordon says where the node was left.
fn cordoned(e: anyhow::Error, name: &str) -> anyhow::Error {
    e.context(format!("node `{name}` is left cordoned"))
}

/// `sh -c CMD`, its output on stderr (stdout carries the result), killed on a signal.
fn reprovision(cmd: &str, name: &str, expect: &str, interrupt: &Interrupt) -> Result<Reprovisioned> {
    progress(&format!("reprovisioning `{name}`: {cmd}"));
    let mut child = Command::new("sh")
        .args(["-c", cmd])
        .env("NODEFORGE_NODE", name)
        .env("NODEFORGE_EXPECT_RUNTIME", expect)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .spawn()
        .map_err(|e| fail(ExitClass::Reprovision, format!("--reprovision-cmd: cannot start sh: {e}")))?;
    let status = loop {
        if interrupt.is_set() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(crate::io::Interrupted.into());
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(fail(ExitClass::Reprovision, format!("--reprovision-cmd: waiting for it: {e}"))),
        }
    };
    if !status.success() {
        return Err(fail(ExitClass::Reprovision, format!("--reprovision-cmd `{cmd}` failed ({status})")));
    }
    Ok(Reprovisioned { command: cmd.to_owned(), exit_code: status.code() })
}
