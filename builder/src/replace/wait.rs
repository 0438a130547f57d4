//! Waiting for the replacement: the Node (under the same name) must report a boot id other
//! than the old machine's — its `status.nodeInfo` replaced — be Ready, and run the expected
//! runtime.
//!
//! The old kubelet keeps the Node Ready for up to the controller manager's grace period after
//! the machine went down, and a machine that comes back on the same disk may first run its
//! old runtime: neither counts, since neither is a new boot on the new runtime. A new boot
//! that is Ready on another runtime is given `--runtime-grace` (60 s) to change (the kubelet
//! reports the runtime it finds, and a first boot may restart containerd under it), then fails
//! with both runtimes named. A Node object that was deleted and registered anew is cordoned
//! again at once: nothing unverified takes pods.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::{Snapshot, call, fail, progress, set_unschedulable};
use crate::cluster::{self, boot_id, is_ready, ready_condition, runtime_version};
use crate::exit::ExitClass;
use crate::io::Interrupt;

/// Between two looks at the Node.
const POLL: Duration = Duration::from_secs(2);
/// How long the API server may stay unreachable during the wait (machines are rebooting; the
/// control plane is not, but a flaky network should not end a replacement at once).
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct Back {
    pub recreated: bool,
}

/// What the wait waits for.
#[derive(Debug, Clone, Copy)]
pub struct Awaited<'a> {
    pub name: &'a str,
    pub before: &'a Snapshot,
    pub expect: &'a str,
    pub timeout: Duration,
    pub runtime_grace: Duration,
}

pub async fn back(nodes: &Api<Node>, server: &str, want: Awaited<'_>, interrupt: &Interrupt) -> Result<Back> {
    let Awaited { name, before, expect, timeout, runtime_grace } = want;
    let start = Instant::now();
    let mut recreated = false;
    let mut last;
    let mut wrong_since: Option<Instant> = None;
    let mut unreachable_since: Option<Instant> = None;
    let mut reported = String::new();
    loop {
        if interrupt.is_set() {
            return Err(crate::io::Interrupted.into());
        }
        match call(&format!("reading node `{name}`"), server, nodes.get_opt(name)).await {
            Ok(None) => {
                unreachable_since = None;
                last = "the Node object is gone (deleted; waiting for the new machine to register)".into();
            }
            Ok(Some(node)) => {
                unreachable_since = None;
                let uid = node.metadata.uid.clone().unwrap_or_default();
                if uid != before.uid && node.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) {
                    progress(&format!("`{name}` registered anew: cordoning it until it passes"));
                    set_unschedulable(nodes, server, name, true).await?;
                    recreated = true;
                }
                let runtime = runtime_version(&node);
                let boot = boot_id(&node);
                let new_boot = !boot.is_empty() && boot != before.boot_id;
                let ready = is_ready(&node);
                last = describe(&node, new_boot);
                if new_boot && ready && cluster::runtime_matches(expect, runtime) {
                    return Ok(Back { recreated });
                }
                if new_boot && ready && !runtime.is_empty() {
                    let since = *wrong_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= runtime_grace {
                        return Err(fail(
                            ExitClass::WrongRuntime,
                            format!(
                                "`{name}` came back (boot {boot}) Ready on {runtime}, expected {expect}, for {} s",
                                since.elapsed().as_secs()
                            ),
                        ));
                    }
                } else {
                    wrong_since = None;
                }
            }
            Err(e) if e.downcast_ref::<ExitClass>() == Some(&ExitClass::Unreachable) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_LIMIT {
                    return Err(e.context(format!(
                        "unreachable for {} s while waiting for `{name}`",
                        since.elapsed().as_secs()
                    )));
                }
                last = format!("{e:#}");
            }
            Err(e) => return Err(e),
        }
        if last != reported {
            progress(&format!("`{name}`: {last}"));
            reported = last.clone();
        }
        if start.elapsed() >= timeout {
            return Err(fail(
                ExitClass::NodeNotBack,
                format!(
                    "`{name}` was not back Ready on {expect} from a new boot within {} s; last seen: {last}",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The Node's state in a few words, as the wait reports it.
fn describe(node: &Node, new_boot: bool) -> String {
    let ready = match ready_condition(node) {
        Some(c) if c.status == "True" => "Ready".to_owned(),
        Some(c) => format!(
            "{} {}: {}",
            if c.status == "False" { "NotReady" } else { "Ready=Unknown" },
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        ),
        None => "no Ready condition".to_owned(),
    };
    let boot = if new_boot { "a new boot" } else { "still the old boot" };
    format!(
        "{boot}, {ready}, runtime {}",
        if runtime_version(node).is_empty() { "unknown" } else { runtime_version(node) }
    )
}
