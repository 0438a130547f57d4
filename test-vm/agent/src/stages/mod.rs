//! The checks, one module per stage, and the pipeline that runs them in order.
//!
//! Every stage is a plain function that takes what it checks explicitly (a command runner,
//! a CRI socket path, the expectations, a deadline) and returns an [`Outcome`], so tests and
//! the harness can call any of them on their own.

pub mod boot;
pub mod cloud_init;
pub mod containerd;
pub mod cri;
pub mod kubelet_config;
pub mod pod;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Map, Value, json};

use crate::cri::{Cri, connect};
use crate::exec::Runner;
use crate::expect::{CriApi, Expect};
use crate::kubelet::{self, KubeletView};
use crate::notify::Readiness;
use crate::protocol::Stage;
use crate::report::Reporter;
use crate::systemd;

pub type Detail = Map<String, Value>;

/// A stage's verdict, as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    pub detail: Detail,
}

impl Outcome {
    pub fn pass(message: impl Into<String>, detail: Value) -> Self {
        Outcome { ok: true, message: message.into(), detail: obj(detail) }
    }
    pub fn fail(message: impl Into<String>, detail: Value) -> Self {
        Outcome { ok: false, message: message.into(), detail: obj(detail) }
    }
}

/// A JSON object as a detail map (anything else becomes `{"value": ...}`).
pub fn obj(v: Value) -> Detail {
    match v {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_owned(), other)]),
    }
}

/// When a stage must give up. Polling loops check it themselves so that a failure carries
/// the last state they saw, not just "timed out".
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline { at: Instant::now() + budget, budget }
    }
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

/// How often polling loops look again.
pub const POLL: Duration = Duration::from_millis(500);

/// Connects to the CRI socket, retrying until the deadline (the socket may not exist yet).
pub async fn connect_cri(socket: &Path, api: CriApi, deadline: Deadline) -> Result<Cri> {
    loop {
        match connect(socket).await {
            Ok(ch) => return Ok(Cri::new(ch, api)),
            Err(e) if deadline.passed() => return Err(e),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// A stage that overruns its deadline by this much is abandoned: the stage's own loops
/// honour the deadline, so this only catches a hung call, and leaves the pod stage time
/// to clean up after its own deadline.
const BACKSTOP_GRACE: Duration = Duration::from_secs(90);

/// What later stages learn from earlier ones.
#[derive(Debug, Default)]
struct Context {
    failed_units: Vec<String>,
    kubelet: Option<KubeletView>,
    /// The stages run in [`Stage::RUNTIME_FIRST`] order.
    runtime_first: bool,
}

/// Units whose start and arrival the `cloud-init` stage reports (`detail.timeline`): the
/// guest's critical path from the first cloud-init stage to the join.
pub const TIMELINE_UNITS: [&str; 12] = [
    "systemd-journald.service",
    "cloud-init-local.service",
    "systemd-networkd-wait-online.service",
    "cloud-init.service",
    "basic.target",
    "containerd.service",
    "nodeforge-preload-images.service",
    "nodeforge-agent.service",
    "multi-user.target",
    "cloud-final.service",
    "kubelet.service",
    "cloud-init.target",
];

/// Runs every stage in order ([`Stage::order`]), reporting each, and stops at the first
/// failure. Returns whether the node passed. `pod` says where the probe pod's logs go (the
/// guest uses [`pod::PodOptions::default`]); `readiness` is told just before the wait for the
/// whole boot ([`full_boot`]), and in any case before the agent finishes.
pub async fn run_all(
    expect: &Expect,
    runner: &dyn Runner,
    reporter: &mut Reporter,
    pod: &pod::PodOptions,
    readiness: &mut Readiness,
) -> bool {
    let mut ctx = Context { runtime_first: expect.runtime_first, ..Context::default() };
    let mut passed = Vec::new();
    for stage in Stage::order(expect.runtime_first) {
        reporter.start(stage);
        let started = Instant::now();
        let budget = expect.stage_timeouts_s.get(stage);
        let run = run_stage(stage, expect, runner, &mut ctx, pod, readiness, Deadline::after(budget));
        let outcome = match tokio::time::timeout(budget + BACKSTOP_GRACE, run).await {
            Ok(o) => o,
            Err(_) => Outcome::fail(format!("{stage} hung past its {budget:?} limit"), json!({})),
        };
        let mut outcome = outcome;
        if !outcome.ok {
            outcome.detail.insert("journal".into(), json!(journal_tails(runner)));
        }
        reporter.finish(stage, started.elapsed(), outcome.ok, &outcome.message, outcome.detail);
        if !outcome.ok {
            // A failure before the ready point: systemd must still let the boot finish.
            let _ = readiness.ready();
            let msg = format!("stage {stage} failed");
            reporter.done(false, &msg, obj(json!({"passed": passed, "failed": stage.name()})));
            return false;
        }
        passed.push(stage.name());
    }
    let msg = format!("all {} stages passed", passed.len());
    reporter.done(true, &msg, obj(json!({"passed": passed})));
    true
}

async fn run_stage(
    stage: Stage,
    expect: &Expect,
    runner: &dyn Runner,
    ctx: &mut Context,
    pod_opts: &pod::PodOptions,
    readiness: &mut Readiness,
    dl: Deadline,
) -> Outcome {
    match stage {
        Stage::Boot if ctx.runtime_first => {
            let (outcome, failed) = boot::run_early(runner, dl);
            ctx.failed_units = failed;
            outcome
        }
        Stage::Boot => full_boot(runner, ctx, readiness, dl),
        Stage::CloudInit => {
            let mut booted = None;
            if ctx.runtime_first {
                // The boot finishes only now: cloud-final (the join) waited for the pod stage.
                let mut outcome = full_boot(runner, ctx, readiness, dl);
                if !outcome.ok {
                    outcome.message = format!("the boot did not finish: {}", outcome.message);
                    return outcome;
                }
                booted = Some(outcome);
            }
            let join = expect
                .join_log
                .as_deref()
                .map(|path| cloud_init::JoinLog { path, join_stage_follows: expect.join_stage_follows });
            let mut o = cloud_init::run(runner, &ctx.failed_units, join, dl);
            if let Some(b) = booted {
                o.message = format!("{}; {}", b.message, o.message);
                o.detail.insert("boot".into(), Value::Object(b.detail));
            }
            match systemd::timeline(runner, &TIMELINE_UNITS) {
                Ok(t) => o.detail.insert("timeline".into(), json!(t)),
                Err(e) => o.detail.insert("timeline".into(), json!(format!("{e:#}"))),
            };
            o
        }
        Stage::Containerd => {
            let (socket, view) = match kubelet_socket(runner, expect, ctx) {
                Ok(s) => s,
                Err(o) => return o,
            };
            let mut o = containerd::run(runner, &socket, expect, &ctx.failed_units, dl).await;
            o.detail.insert("endpoint".into(), json!(view.endpoint));
            o.detail.insert("endpoint_source".into(), json!(view.endpoint_source));
            o
        }
        Stage::Cri => {
            let (socket, view) = match kubelet_socket(runner, expect, ctx) {
                Ok(s) => s,
                Err(o) => return o,
            };
            let crictl = Path::new(cri::CRICTL);
            let mut o = cri::run(runner, &socket, crictl.is_file().then_some(crictl), expect, dl).await;
            o.detail.insert("endpoint".into(), json!(view.endpoint));
            o.detail.insert("endpoint_source".into(), json!(view.endpoint_source));
            if view.fallback {
                o.message = format!("{} (endpoint from Expect.cri_endpoint_default: no kubelet drop-in)", o.message);
            }
            o
        }
        Stage::Pod => match kubelet_socket(runner, expect, ctx) {
            Ok((socket, _)) => {
                // A running kubelet (a seed that joined) kills sandboxes it did not create
                // within seconds (housekeeping reaps "orphaned" runtime pods): the probe pod
                // runs with the kubelet stopped, and the kubelet is started again after it.
                let paused = match pause_kubelet(runner) {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                let mut o = pod::run(&socket, expect, pod_opts, dl).await;
                if let Some(was) = paused {
                    o.detail.insert("kubelet_paused".into(), json!({"was": was}));
                    if let Err(e) = systemd::systemctl(runner, &["start", kubelet::UNIT]).and_then(|out| {
                        anyhow::ensure!(out.code == Some(0), "{}", out.stderr.trim());
                        Ok(())
                    }) {
                        o.ok = false;
                        o.message = format!("{}; then starting {} again failed: {e:#}", o.message, kubelet::UNIT);
                    }
                }
                o
            }
            Err(o) => o,
        },
        Stage::KubeletConfig => match kubelet_socket(runner, expect, ctx) {
            Ok((socket, view)) => kubelet_config::run(&socket, expect, &view, dl).await,
            Err(o) => o,
        },
        Stage::Done => Outcome::pass("", json!({})),
    }
}

/// The wait for the whole boot (systemd `running`). multi-user.target, and cloud-final after
/// it, wait for the agent's READY (see [`crate::notify`]), so it is sent first; a boot that
/// never finished because it could not be sent says so.
fn full_boot(runner: &dyn Runner, ctx: &mut Context, readiness: &mut Readiness, dl: Deadline) -> Outcome {
    let not_ready = readiness.ready().err();
    let (mut outcome, failed) = boot::run(runner, dl);
    ctx.failed_units = failed;
    if let (false, Some(e)) = (outcome.ok, not_ready) {
        outcome.message = format!("{}; cannot tell systemd the agent is ready: {e}", outcome.message);
    }
    outcome
}

/// The units whose journals explain most failed stages.
const DIAGNOSED_UNITS: [&str; 3] = ["kubelet.service", "containerd.service", "cloud-final.service"];

/// For a failed stage: the last lines each of [`DIAGNOSED_UNITS`] logged, so a report says
/// why the kubelet crash-loops or containerd exited without anyone logging into the guest.
fn journal_tails(runner: &dyn Runner) -> Map<String, Value> {
    let mut out = Map::new();
    for unit in DIAGNOSED_UNITS {
        let args = ["-u", unit, "-n", "25", "--no-pager", "-o", "cat"];
        if let Ok(o) = runner.run("journalctl", &args, Duration::from_secs(15))
            && !o.stdout.trim().is_empty()
            && !o.stdout.contains("-- No entries --")
        {
            out.insert(unit.to_owned(), json!(tail(&o.stdout, 4000)));
        }
    }
    out
}

/// Stops kubelet.service if it runs (or is restarting); returns the state it was in.
fn pause_kubelet(runner: &dyn Runner) -> Result<Option<String>, Outcome> {
    let state = systemd::is_active(runner, kubelet::UNIT)
        .map_err(|e| Outcome::fail(format!("cannot ask systemd about {}: {e:#}", kubelet::UNIT), json!({})))?;
    if !matches!(state.as_str(), "active" | "activating" | "reloading") {
        return Ok(None);
    }
    let out = systemd::systemctl(runner, &["stop", kubelet::UNIT])
        .map_err(|e| Outcome::fail(format!("cannot stop {} for the probe pod: {e:#}", kubelet::UNIT), json!({})))?;
    if out.code != Some(0) {
        let msg = format!("cannot stop {} for the probe pod: {}", kubelet::UNIT, out.stderr.trim());
        return Err(Outcome::fail(msg, json!({"kubelet_state": state})));
    }
    Ok(Some(state))
}

/// The kubelet's view, resolved once through systemd and reused by later stages.
fn kubelet_socket(runner: &dyn Runner, expect: &Expect, ctx: &mut Context) -> Result<(PathBuf, KubeletView), Outcome> {
    if ctx.kubelet.is_none() {
        let view = kubelet::resolve(runner, &expect.cri_endpoint_default).map_err(|e| {
            Outcome::fail(format!("cannot resolve the kubelet's CRI endpoint through systemd: {e:#}"), json!({}))
        })?;
        ctx.kubelet = Some(view);
    }
    // Just set above when it was missing.
    let Some(view) = ctx.kubelet.clone() else {
        return Err(Outcome::fail("kubelet view missing", json!({})));
    };
    let socket = kubelet::socket_path(&view.endpoint)
        .map_err(|e| Outcome::fail(format!("{e:#}"), json!({"endpoint_source": view.endpoint_source})))?;
    Ok((socket, view))
}

/// The last `max` characters of a tool's output, for a report.
pub fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    match t.char_indices().rev().nth(max.saturating_sub(1)) {
        Some((i, _)) if i > 0 => format!("…{}", &t[i..]),
        _ => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("  abc  ", 10), "abc");
        assert_eq!(tail("abcdef", 3), "…def");
    }
}
