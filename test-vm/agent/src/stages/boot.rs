//! Stage `boot`: systemd reached its default target.
//!
//! Polls `systemctl is-system-running` until it answers `running` or `degraded` (boot
//! finished, possibly with failed units), then confirms `default.target` is active.
//! Failed units do not fail this stage; they are reported in `detail.failed_units`, and
//! a later stage that needs one of them fails.
//!
//! In the runtime-first order ([`run_early`]) the stage only waits for local-fs.target, after
//! which systemd starts containerd (nodeforge's unit does not wait for basic.target, nor for
//! cloud-init's first stages before it); the wait for the whole boot ([`run`]) is then the
//! first half of the `cloud-init` stage.
//!
//! Detail: `state`, `default_target`, `failed_units`, `polls` (`local_fs_target` instead of
//! `state` and `default_target` in the runtime-first order).

use serde_json::json;

use super::{Deadline, Outcome, POLL};
use crate::exec::Runner;
use crate::systemd;

/// Returns the outcome and the failed units (empty if they could not be listed).
pub fn run(runner: &dyn Runner, deadline: Deadline) -> (Outcome, Vec<String>) {
    let mut polls = 0u32;
    let mut state;
    loop {
        polls += 1;
        match systemd::systemctl(runner, &["is-system-running"]) {
            Ok(out) => state = out.answer().to_owned(),
            Err(e) => return (Outcome::fail(format!("{e:#}"), json!({"polls": polls})), vec![]),
        }
        match state.as_str() {
            "running" | "degraded" => break,
            // Still booting; "unknown" can be seen while the manager is busy.
            "initializing" | "starting" | "unknown" | "" => {}
            // offline: not booted by systemd at all; maintenance: emergency/rescue shell;
            // stopping: shutting down. None of them recovers by waiting.
            _ => {
                let failed = systemd::failed_units(runner).unwrap_or_default();
                let msg = format!("systemd is `{state}`, not booting to its default target");
                return (Outcome::fail(msg, json!({"state": state, "failed_units": failed, "polls": polls})), failed);
            }
        }
        if deadline.passed() {
            let failed = systemd::failed_units(runner).unwrap_or_default();
            let msg = format!("systemd still `{state}` after {:?}", deadline.budget());
            return (Outcome::fail(msg, json!({"state": state, "failed_units": failed, "polls": polls})), failed);
        }
        std::thread::sleep(POLL.min(deadline.remaining()));
    }

    let failed = match systemd::failed_units(runner) {
        Ok(f) => f,
        Err(e) => return (Outcome::fail(format!("{e:#}"), json!({"state": state})), vec![]),
    };
    let default_target = match systemd::is_active(runner, "default.target") {
        Ok(s) => s,
        Err(e) => return (Outcome::fail(format!("{e:#}"), json!({"state": state})), failed),
    };
    let detail = json!({"state": state, "default_target": default_target, "failed_units": failed, "polls": polls});
    if default_target != "active" {
        return (Outcome::fail(format!("default.target is `{default_target}`, not active"), detail), failed);
    }
    let msg = if failed.is_empty() {
        format!("system {state}, default.target active")
    } else {
        format!("system {state}, default.target active; failed units: {}", failed.join(", "))
    };
    (Outcome::pass(msg, detail), failed)
}

/// The target the runtime-first `boot` waits for.
pub const EARLY_TARGET: &str = "local-fs.target";

/// The runtime-first `boot`: [`EARLY_TARGET`] is active (the agent itself starts after it,
/// so this is normally true on the first poll), and which units failed on the way there.
pub fn run_early(runner: &dyn Runner, deadline: Deadline) -> (Outcome, Vec<String>) {
    let mut polls = 0u32;
    let state = loop {
        polls += 1;
        let state = match systemd::is_active(runner, EARLY_TARGET) {
            Ok(s) => s,
            Err(e) => return (Outcome::fail(format!("{e:#}"), json!({"polls": polls})), vec![]),
        };
        if state == "active" || deadline.passed() {
            break state;
        }
        std::thread::sleep(POLL.min(deadline.remaining()));
    };
    let failed = systemd::failed_units(runner).unwrap_or_default();
    let detail = json!({"local_fs_target": state, "failed_units": failed, "polls": polls});
    if state != "active" {
        let msg = format!("{EARLY_TARGET} still `{state}` after {:?}", deadline.budget());
        return (Outcome::fail(msg, detail), failed);
    }
    let msg = if failed.is_empty() {
        format!("{EARLY_TARGET} active: systemd is starting containerd")
    } else {
        format!("{EARLY_TARGET} active; failed units: {}", failed.join(", "))
    };
    (Outcome::pass(msg, detail), failed)
}

/// The failed units among `needed`, for stages that depend on them.
pub fn needed_failed<'a>(failed: &'a [String], needed: &[&str]) -> Vec<&'a str> {
    failed.iter().map(String::as_str).filter(|u| needed.contains(u)).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exec::CmdOutput;
    use crate::exec::fake::FakeRunner;

    const FAILED: &str = "systemctl --failed --plain --no-legend --no-pager";

    #[test]
    fn waits_for_running_and_reports_degraded_units() {
        let r = FakeRunner::new()
            .on("systemctl is-system-running", CmdOutput::exit(1, "starting\n"))
            .on("systemctl is-system-running", CmdOutput::exit(1, "degraded\n"))
            .on(FAILED, CmdOutput::ok("cloud-config.service loaded failed failed Apply the settings\n"))
            .on("systemctl is-active default.target", CmdOutput::ok("active\n"));
        let (o, failed) = run(&r, Deadline::after(Duration::from_secs(10)));
        assert!(o.ok, "{o:?}");
        assert_eq!(failed, ["cloud-config.service"]);
        assert_eq!(o.detail["polls"], 2);
        assert_eq!(o.detail["state"], "degraded");
        assert_eq!(needed_failed(&failed, &["cloud-config.service", "cloud-final.service"]), ["cloud-config.service"]);
    }

    #[test]
    fn maintenance_fails_at_once_and_a_timeout_says_the_last_state() {
        let r = FakeRunner::new()
            .on("systemctl is-system-running", CmdOutput::exit(1, "maintenance\n"))
            .on(FAILED, CmdOutput::ok(""));
        let (o, _) = run(&r, Deadline::after(Duration::from_secs(10)));
        assert!(!o.ok && o.message.contains("maintenance"), "{o:?}");

        let r = FakeRunner::new()
            .on("systemctl is-system-running", CmdOutput::exit(1, "starting\n"))
            .on(FAILED, CmdOutput::ok(""));
        let (o, _) = run(&r, Deadline::after(Duration::from_millis(0)));
        assert!(!o.ok && o.message.contains("still `starting`"), "{o:?}");
    }

    #[test]
    fn the_early_target_waits_and_reports_failed_units() {
        let r = FakeRunner::new()
            .on("systemctl is-active local-fs.target", CmdOutput::exit(3, "activating\n"))
            .on("systemctl is-active local-fs.target", CmdOutput::ok("active\n"))
            .on(FAILED, CmdOutput::ok("e2scrub_reap.service loaded failed failed x\n"));
        let (o, failed) = run_early(&r, Deadline::after(Duration::from_secs(10)));
        assert!(o.ok && o.message.contains("e2scrub_reap"), "{o:?}");
        assert_eq!((failed.len(), o.detail["polls"].as_u64()), (1, Some(2)));

        let r = FakeRunner::new()
            .on("systemctl is-active local-fs.target", CmdOutput::exit(3, "activating\n"))
            .on(FAILED, CmdOutput::ok(""));
        let (o, _) = run_early(&r, Deadline::after(Duration::from_millis(0)));
        assert!(!o.ok && o.message.contains("still `activating`"), "{o:?}");
    }

    #[test]
    fn inactive_default_target_fails() {
        let r = FakeRunner::new()
            .on("systemctl is-system-running", CmdOutput::ok("running\n"))
            .on(FAILED, CmdOutput::ok(""))
            .on("systemctl is-active default.target", CmdOutput::exit(3, "inactive\n"));
        let (o, _) = run(&r, Deadline::after(Duration::from_secs(10)));
        assert!(!o.ok && o.message.contains("inactive"), "{o:?}");
    }
}
