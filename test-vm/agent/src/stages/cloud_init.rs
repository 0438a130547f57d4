//! Stage `cloud-init`: cloud-init's own verdict, `cloud-init status --wait --long`.
//!
//! Exit codes: 0 done, 1 error; cloud-init 23.4+ adds 2 for "degraded" (finished with
//! recoverable errors such as deprecated keys). 0 and 2 pass (2 says so in the message and
//! `detail.degraded`); 1 fails with the errors cloud-init printed. A failed cloud-init
//! systemd unit (from the boot stage) fails this stage too.
//!
//! A seed that joins a cluster runs `kubeadm join` from cloud-init, writing kubeadm's output
//! to `Expect.join_log`. When cloud-init fails (or does not finish) and that log exists, the
//! stage quotes kubeadm's own error from it: a wrong token or CA pin then reads as what it
//! is, not as "scripts_user failed".
//!
//! Detail: `exit_code`, `status`, `degraded`, `errors`, `failed_units`, `output` (tail),
//! `kubeadm_join` (the join log's tail, when it exists).

use std::path::Path;

use serde_json::json;

use super::boot::needed_failed;
use super::{Deadline, Outcome, tail};
use crate::exec::Runner;

/// cloud-init's units across versions (24.3+ runs everything in cloud-init-main.service,
/// and renamed cloud-init.service to cloud-init-network.service).
pub const UNITS: [&str; 6] = [
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-init-network.service",
    "cloud-init-main.service",
    "cloud-config.service",
    "cloud-final.service",
];

/// Where the seed's `kubeadm join` writes, and who reports a failed join.
#[derive(Debug, Clone, Copy)]
pub struct JoinLog<'a> {
    pub path: &'a Path,
    /// The harness runs a `join` stage after the agent's: a join that failed with kubeadm's
    /// own error, and nothing else of cloud-init failing, is that stage's failure, and the
    /// runtime stages still run. Otherwise it fails this stage.
    pub join_stage_follows: bool,
}

pub fn run(runner: &dyn Runner, failed_units: &[String], join: Option<JoinLog<'_>>, deadline: Deadline) -> Outcome {
    let mut outcome = status(runner, failed_units, deadline);
    let Some(join) = join else { return outcome };
    if outcome.ok {
        return outcome;
    }
    let Ok(log) = std::fs::read_to_string(join.path) else { return outcome };
    outcome.detail.insert("kubeadm_join".into(), json!(tail(&log, 2000)));
    match kubeadm_error(&log) {
        Some(e) if join.join_stage_follows && only_the_join_failed(&outcome, failed_units) => {
            // runcmd runs under `set -eu` with the join last: kubeadm ran, so every step
            // before it succeeded.
            outcome.ok = true;
            outcome.message =
                "cloud-init ran every step but its last: kubeadm join failed (the join stage reports it)".into();
            outcome.detail.insert("kubeadm_join_error".into(), json!(e));
        }
        Some(e) => outcome.message = format!("{}; kubeadm join: {e}", outcome.message),
        None => {
            outcome.message =
                format!("{}; kubeadm join said nothing conclusive (see detail.kubeadm_join)", outcome.message)
        }
    }
    outcome
}

/// cloud-init finished, and what failed is the user scripts (runcmd) and cloud-final only.
fn only_the_join_failed(outcome: &Outcome, failed_units: &[String]) -> bool {
    let errors: Vec<&str> =
        outcome.detail["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
    outcome.detail["exit_code"] == json!(1)
        && !errors.is_empty()
        && errors.iter().all(|e| e.contains("scripts-user") || e.contains("scripts_user"))
        && needed_failed(failed_units, &UNITS).iter().all(|u| *u == "cloud-final.service")
}

/// kubeadm's own account of a failed join: its `error execution phase ...` line (or any
/// line starting with `error`), and its preflight `[ERROR ...]` lines.
pub fn kubeadm_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.starts_with("error") || l.contains("[ERROR")
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

fn status(runner: &dyn Runner, failed_units: &[String], deadline: Deadline) -> Outcome {
    let out = match runner.run("cloud-init", &["status", "--wait", "--long"], deadline.remaining()) {
        Ok(o) => o,
        Err(e) => return Outcome::fail(format!("cannot run cloud-init: {e}"), json!({})),
    };
    let text = format!("{}{}", out.stdout, out.stderr);
    let status = field(&text, "status").unwrap_or_default();
    let errors = errors(&text);
    let failed = needed_failed(failed_units, &UNITS);
    let detail = |degraded: bool| {
        json!({
            "exit_code": out.code, "status": status, "degraded": degraded, "errors": errors,
            "failed_units": failed, "output": tail(&text, 2000),
        })
    };
    if out.timed_out {
        return Outcome::fail(format!("cloud-init not finished after {:?}", deadline.budget()), detail(false));
    }
    let degraded = out.code == Some(2);
    match out.code {
        Some(0) | Some(2) if failed.is_empty() => {
            let msg = if degraded {
                format!("cloud-init {status} with recoverable errors (degraded)")
            } else {
                format!("cloud-init {status}")
            };
            Outcome::pass(msg, detail(degraded))
        }
        Some(0) | Some(2) => {
            Outcome::fail(format!("cloud-init says {status}, but {} failed", failed.join(", ")), detail(degraded))
        }
        code => {
            let what = if errors.is_empty() { tail(&text, 300) } else { errors.join("; ") };
            Outcome::fail(format!("cloud-init {status} (exit {code:?}): {what}"), detail(false))
        }
    }
}

/// A top-level `key: value` line of `status --long`.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_owned())
}

/// The error lines: newer cloud-init lists them under `errors:` (as `\t- ...` items);
/// 22.4 prints a `detail:` block with the failing module. Recoverable errors are not errors.
fn errors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        // `key: value` with a plain key; 22.4's detail items (`('scripts-user',
        // RuntimeError('Runparts: 1 failures ...'))`) have colons too, but not a key.
        let top_level = !line.starts_with(char::is_whitespace)
            && line
                .split_once(':')
                .is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        if top_level {
            in_block = false;
            let (key, rest) = line.split_once(':').unwrap_or((line, ""));
            match key {
                "errors" | "detail" => {
                    in_block = true;
                    let rest = rest.trim();
                    if !rest.is_empty() && rest != "[]" {
                        out.push(rest.to_owned());
                    }
                }
                _ => {}
            }
            continue;
        }
        if in_block {
            let item = line.trim().trim_start_matches("- ").trim();
            if !item.is_empty() {
                out.push(item.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exec::CmdOutput;
    use crate::exec::fake::FakeRunner;

    const CMD: &str = "cloud-init status --wait --long";

    fn run_with(out: CmdOutput, failed: &[&str]) -> Outcome {
        let r = FakeRunner::new().on(CMD, out);
        let failed: Vec<String> = failed.iter().map(|s| s.to_string()).collect();
        run(&r, &failed, None, Deadline::after(Duration::from_secs(10)))
    }

    /// kubeadm 1.34's output for a join whose CA pin is wrong, and for a wrong token secret.
    const WRONG_PIN: &str = "[preflight] Running pre-flight checks\n\
        error: error execution phase preflight: couldn't validate the identity of the API Server: cluster CA \
        found in cluster-info ConfigMap is invalid: none of the public keys \"sha256:ab12\" are pinned\n\
        To see the stack trace of this error execute with --v=5 or higher\n";

    #[test]
    fn a_failed_join_is_told_in_kubeadms_words() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kubeadm-join.log");
        std::fs::write(&log, WRONG_PIN).unwrap();
        let text = "status: error\ndetail:\n('scripts_user', RuntimeError('Runparts: 1 failures'))\n";
        let r = FakeRunner::new().on(CMD, CmdOutput::exit(1, text));
        let joined = |p| Some(JoinLog { path: p, join_stage_follows: false });
        let o = run(&r, &[], joined(&log), Deadline::after(Duration::from_secs(10)));
        assert!(!o.ok);
        assert!(o.message.contains("kubeadm join: error: error execution phase preflight"), "{}", o.message);
        assert!(o.message.contains("none of the public keys"), "{}", o.message);
        assert!(o.detail["kubeadm_join"].as_str().unwrap().contains("pre-flight"), "{o:?}");
        // A passing cloud-init never reads the log; a missing log changes nothing.
        let r = FakeRunner::new().on(CMD, CmdOutput::ok("status: done\n"));
        assert!(run(&r, &[], joined(&log), Deadline::after(Duration::from_secs(10))).ok);
        let r = FakeRunner::new().on(CMD, CmdOutput::exit(1, text));
        let absent = dir.path().join("absent");
        let o = run(&r, &[], joined(&absent), Deadline::after(Duration::from_secs(10)));
        assert!(!o.message.contains("kubeadm"), "{}", o.message);

        // With a join stage after the agent's, the join's failure is that stage's: this one
        // passes and hands kubeadm's error on, unless something else of cloud-init failed too.
        let r = FakeRunner::new().on(CMD, CmdOutput::exit(1, text));
        let staged = Some(JoinLog { path: &log, join_stage_follows: true });
        let failed = ["cloud-final.service".to_owned()];
        let o = run(&r, &failed, staged, Deadline::after(Duration::from_secs(10)));
        assert!(o.ok, "{o:?}");
        assert!(o.detail["kubeadm_join_error"].as_str().unwrap().contains("none of the public keys"), "{o:?}");
        let locale = "status: error\ndetail:\n('locale', ProcessExecutionError('boom'))\n";
        let r = FakeRunner::new().on(CMD, CmdOutput::exit(1, locale));
        let o = run(&r, &failed, staged, Deadline::after(Duration::from_secs(10)));
        assert!(!o.ok && o.message.contains("kubeadm join: error"), "{o:?}");
        let r = FakeRunner::new().on(CMD, CmdOutput::exit(1, text));
        let more = ["cloud-final.service".to_owned(), "cloud-config.service".to_owned()];
        assert!(!run(&r, &more, staged, Deadline::after(Duration::from_secs(10))).ok);
        assert_eq!(
            kubeadm_error("[preflight] Running pre-flight checks\n\t[ERROR Swap]: swap is on\n").unwrap(),
            "[ERROR Swap]: swap is on"
        );
        assert_eq!(kubeadm_error("[preflight] ok\n"), None);
    }

    #[test]
    fn done_passes() {
        let o = run_with(
            CmdOutput::ok(
                "\nstatus: done\ntime: Thu, 01 Jan 2026\ndetail:\nDataSourceNoCloud [seed=/dev/vdb][dsmode=net]\n",
            ),
            &[],
        );
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail["status"], "done");
    }

    #[test]
    fn error_22_4_fails_with_its_detail() {
        let text = "status: error\ntime: Thu, 01 Jan 2026\ndetail:\n('locale', ProcessExecutionError(\"Unexpected error while running command.\"))\n";
        let o = run_with(CmdOutput::exit(1, text), &["cloud-config.service"]);
        assert!(!o.ok);
        assert!(o.message.contains("locale"), "{}", o.message);
        assert_eq!(o.detail["failed_units"], json!(["cloud-config.service"]));
    }

    #[test]
    fn newer_error_list_and_degraded() {
        let text = "status: error\nextended_status: error - running\nerrors:\n\t- ('scripts_user', RuntimeError('Runparts: 1 failures'))\nrecoverable_errors: {}\n";
        let o = run_with(CmdOutput::exit(1, text), &[]);
        assert_eq!(o.detail["errors"], json!(["('scripts_user', RuntimeError('Runparts: 1 failures'))"]));
        let o = run_with(CmdOutput::exit(2, "status: done\nextended_status: degraded done\nerrors: []\n"), &[]);
        assert!(o.ok && o.message.contains("degraded"), "{o:?}");
    }

    #[test]
    fn done_but_a_cloud_init_unit_failed_fails() {
        let o = run_with(CmdOutput::ok("status: done\n"), &["cloud-final.service", "other.service"]);
        assert!(!o.ok && o.message.contains("cloud-final.service") && !o.message.contains("other"), "{o:?}");
    }

    #[test]
    fn missing_or_hanging_cloud_init_fails() {
        let r = FakeRunner::new().missing(CMD);
        assert!(!run(&r, &[], None, Deadline::after(Duration::from_secs(1))).ok);
        let o = run_with(CmdOutput { timed_out: true, stdout: "....".into(), ..Default::default() }, &[]);
        assert!(!o.ok && o.message.contains("not finished"), "{o:?}");
    }
}
