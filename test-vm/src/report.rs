//! What a run reports: a human summary, `--json` and `--junit`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::accel::Accel;
use crate::serial::tail_lines;
use crate::stages::{Stage, Verdict};

/// Lines of serial console printed and put into JUnit on failure.
pub const TAIL_LINES: usize = 60;

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `pass` or `fail`.
    pub verdict: Verdict,
    /// `disk` or `netboot`.
    pub mode: &'static str,
    /// The accelerator of the attempt that ran the stages.
    pub accel: Option<Accel>,
    /// Every accelerator tried, in order, and why an abandoned one was given up.
    pub accel_attempts: Vec<AccelAttempt>,
    pub stages: Vec<Stage>,
    /// `{stage, message}` of the first failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The CRI `Version` answer, from the `cri` stage's detail (`runtime_name`,
    /// `runtime_version`, `runtime_api_version`, ...).
    pub cri_version: Option<serde_json::Value>,
    /// The pod sandbox's IP, from the `pod` stage's detail.
    pub pod_ip: Option<String>,
    pub total_ms: u64,
    pub qemu_command: String,
    pub serial_log: PathBuf,
    pub agent_log: PathBuf,
    /// Kept after the run (`--keep-workdir`, or a failed run's logs); `null` once removed.
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccelAttempt {
    pub accel: Accel,
    /// `used` or the reason it was abandoned.
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub stage: String,
    pub message: String,
}

/// Pull the CRI version and pod IP out of stage details. The agent's detail keys: the `cri`
/// stage carries `version: {runtime_name, runtime_version, runtime_api_version, version}` (or
/// those keys at top level), the `pod` stage `pod_ip`.
pub fn extract_results(stages: &[Stage]) -> (Option<serde_json::Value>, Option<String>) {
    let detail = |name: &str| stages.iter().find(|s| s.name == name).map(|s| &s.detail);
    let cri = detail("cri").and_then(|d| match d.get("version") {
        Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
        _ => {
            let keys = ["runtime_name", "runtime_version", "runtime_api_version", "version"];
            let m: serde_json::Map<_, _> =
                keys.iter().filter_map(|k| d.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect();
            (!m.is_empty()).then_some(serde_json::Value::Object(m))
        }
    });
    let ip = detail("pod").and_then(|d| d.get("pod_ip")).and_then(|v| v.as_str()).map(str::to_owned);
    (cri, ip)
}

/// One line per stage, then the verdict: for stdout.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    let accel = r.accel.map_or("-", Accel::as_str);
    let _ = writeln!(out, "test-vm: {} boot under {accel}", r.mode);
    for a in r.accel_attempts.iter().filter(|a| a.outcome != "used") {
        let _ = writeln!(out, "  ({} abandoned: {})", a.accel, a.outcome);
    }
    for s in &r.stages {
        let took = s.duration_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        let verdict = match s.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::NotRun => "not run",
        };
        let msg = if s.message.is_empty() { String::new() } else { format!("  {}", first_line(&s.message)) };
        let _ = writeln!(out, "  {:<15} {took:>8}  {verdict}{msg}", s.name);
    }
    // What `kubectl get node -o wide` would show, as the join stage last saw it.
    if let Some(row) = r.stages.iter().find_map(|s| s.detail.get("row").and_then(|v| v.as_str())) {
        out.push_str(row);
    }
    let total = r.total_ms as f64 / 1000.0;
    let _ = match &r.failure {
        Some(f) => writeln!(out, "verdict: FAIL at stage {} after {total:.1} s", f.stage),
        None => writeln!(out, "verdict: PASS in {total:.1} s"),
    };
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub fn write_json(r: &Report, path: &Path) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(r).context("serialising the report")?;
    bytes.push(b'\n');
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Print the summary to stdout, write `--json` and `--junit`, and on failure say on stderr
/// what failed, the QEMU command line and the serial console's tail. `label` prefixes the
/// stderr lines (a fleet's node name). Returns whether every report was written.
pub fn emit(r: &Report, json: Option<&Path>, junit_path: Option<&Path>, label: &str) -> bool {
    let tail = tail_lines(&r.serial_log, TAIL_LINES);
    print!("{}", summary(r));
    let mut ok = true;
    let mut written = |res: Result<()>| ok &= res.map_err(|e| eprintln!("test-vm: writing a report: {e:#}")).is_ok();
    if let Some(path) = json {
        written(write_json(r, path));
    }
    if let Some(path) = junit_path {
        let doc = junit(&[(suite_name(r, None), Some(r), tail.clone())]);
        written(std::fs::write(path, doc).with_context(|| format!("writing {}", path.display())));
    }
    if let Some(f) = &r.failure {
        eprintln!("test-vm:{label} stage `{}` failed: {}", f.stage, f.message);
        eprintln!("test-vm:{label} QEMU command line:\n  {}", r.qemu_command);
        if let Some(dir) = &r.workdir {
            eprintln!("test-vm:{label} logs kept in {}", dir.display());
        }
        eprintln!("test-vm:{label} serial console, last {TAIL_LINES} lines ({}):\n{tail}", r.serial_log.display());
    }
    ok
}

/// `test-vm.disk`, or `test-vm.disk.NODE` for a fleet's node.
pub fn suite_name(r: &Report, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("test-vm.{}.{n}", r.mode),
        None => format!("test-vm.{}", r.mode),
    }
}

/// A JUnit XML document: one `<testsuite>` per run (a single boot has one; a fleet one per
/// node), one `<testcase>` per stage; a failure carries its message and the serial tail, a
/// stage not reached is `<skipped>`. A run with no report (`None`: it could not be set up or
/// was never started) is a suite with one `setup` testcase carrying the reason as an error.
pub fn junit(suites: &[(String, Option<&Report>, String)]) -> String {
    let time = |ms: Option<u64>| format!("{:.3}", ms.unwrap_or(0) as f64 / 1000.0);
    let count = |r: Option<&Report>, v: Verdict| r.map_or(0, |r| r.stages.iter().filter(|s| s.verdict == v).count());
    let tests: usize = suites.iter().map(|(_, r, _)| r.map_or(1, |r| r.stages.len())).sum();
    let failures: usize = suites.iter().map(|(_, r, _)| count(*r, Verdict::Fail)).sum();
    let errors = suites.iter().filter(|(_, r, _)| r.is_none()).count();
    let total: u64 = suites.iter().filter_map(|(_, r, _)| r.map(|r| r.total_ms)).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"test-vm\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">",
        time(Some(total))
    );
    for (name, report, text) in suites {
        let suite = xml(name);
        let Some(r) = report else {
            let _ = writeln!(
                x,
                "  <testsuite name=\"{suite}\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\" time=\"0.000\">"
            );
            let _ = writeln!(x, "    <testcase classname=\"{suite}\" name=\"setup\" time=\"0.000\">");
            let _ = writeln!(x, "      <error message=\"{}\">{}</error>", xml(first_line(text)), xml(text));
            x.push_str("    </testcase>\n  </testsuite>\n");
            continue;
        };
        let _ = writeln!(
            x,
            "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
            r.stages.len(),
            count(Some(r), Verdict::Fail),
            count(Some(r), Verdict::NotRun),
            time(Some(r.total_ms))
        );
        let accel = r.accel.map_or("none", Accel::as_str);
        let _ = writeln!(x, "    <properties><property name=\"accel\" value=\"{accel}\"/></properties>");
        for s in &r.stages {
            let open = format!(
                "    <testcase classname=\"{suite}\" name=\"{}\" time=\"{}\"",
                xml(&s.name),
                time(s.duration_ms)
            );
            match s.verdict {
                Verdict::Pass => {
                    let _ = writeln!(x, "{open}/>");
                }
                Verdict::Fail => {
                    let _ = writeln!(x, "{open}>");
                    let body = format!("{}\n\nserial console (last lines):\n{text}", s.message);
                    let _ = writeln!(x, "      <failure message=\"{}\">{}</failure>", xml(&s.message), xml(&body));
                    let _ = writeln!(x, "    </testcase>");
                }
                Verdict::NotRun => {
                    let _ = writeln!(
                        x,
                        "{open}>\n      <skipped message=\"not run: an earlier stage failed\"/>\n    </testcase>"
                    );
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

pub use nodeforge::table::table;

/// Escape for XML text and attributes, dropping characters XML 1.0 cannot carry at all
/// (serial consoles are full of control characters).
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Tracker;
    use std::time::Duration;

    fn report() -> Report {
        let mut t = Tracker::new(["kernel", "cri", "pod"].map(|n| (n.to_owned(), Duration::from_secs(5))));
        t.start(Duration::ZERO);
        t.pass_current(Duration::from_millis(1500), "", serde_json::Value::Null, None);
        let v = serde_json::json!({"version": {"runtime_name": "containerd", "runtime_api_version": "v1"}});
        t.pass_current(Duration::from_secs(2), "", v, Some(10));
        t.fail_current(
            Duration::from_secs(3),
            "no IP <in> \"10.88.0.0/16\"\x1b",
            serde_json::json!({"pod_ip": "1.2.3.4"}),
            None,
        );
        let (cri_version, pod_ip) = extract_results(t.stages());
        Report {
            verdict: Verdict::Fail,
            mode: "disk",
            accel: Some(Accel::Tcg),
            accel_attempts: vec![
                AccelAttempt { accel: Accel::Kvm, outcome: "no serial output within 6 s".into() },
                AccelAttempt { accel: Accel::Tcg, outcome: "used".into() },
            ],
            stages: t.stages().to_vec(),
            failure: Some(Failure { stage: "pod".into(), message: "no IP".into() }),
            cri_version,
            pod_ip,
            total_ms: 3000,
            qemu_command: "qemu".into(),
            serial_log: "/w/serial.log".into(),
            agent_log: "/w/agent.jsonl".into(),
            workdir: None,
        }
    }

    #[test]
    fn json_carries_results_and_stages() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["verdict"], "fail");
        assert_eq!(v["accel"], "tcg");
        assert_eq!(v["cri_version"]["runtime_name"], "containerd");
        assert_eq!(v["pod_ip"], "1.2.3.4");
        assert_eq!(v["stages"][0]["duration_ms"], 1500);
        assert_eq!(v["stages"][2]["verdict"], "fail");
    }

    #[test]
    fn junit_is_escaped_and_counts() {
        let r = report();
        let x = junit(&[(suite_name(&r, None), Some(&r), "line <1>\x07\n".into())]);
        assert!(x.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"0\""), "{x}");
        assert!(x.contains("name=\"kernel\" time=\"1.500\"/>"), "{x}");
        assert!(x.contains("<failure message=\"no IP &lt;in&gt; &quot;10.88.0.0/16&quot;\">"), "{x}");
        assert!(x.contains("line &lt;1&gt;\n") && !x.contains('\x07') && !x.contains('\x1b'), "{x}");
    }

    #[test]
    fn a_combined_junit_has_a_suite_per_node() {
        let r = report();
        let x = junit(&[
            (suite_name(&r, Some("n1")), Some(&r), "tail".into()),
            ("test-vm.disk.n2".into(), None, "n2: the seed image /s does not exist".into()),
        ]);
        assert!(x.contains("<testsuites name=\"test-vm\" tests=\"4\" failures=\"1\" errors=\"1\""), "{x}");
        assert!(x.contains("<testsuite name=\"test-vm.disk.n1\" tests=\"3\""), "{x}");
        assert!(x.contains("<testcase classname=\"test-vm.disk.n1\" name=\"kernel\""), "{x}");
        assert!(x.contains("<error message=\"n2: the seed image /s does not exist\">"), "{x}");
        assert_eq!(x.matches("<testsuite ").count(), 2);
        assert_eq!(x.matches("</testsuite>").count(), 2);
    }

    #[test]
    fn summary_has_a_line_per_stage() {
        let s = summary(&report());
        assert!(s.contains("kvm abandoned: no serial output"), "{s}");
        assert!(s.lines().any(|l| l.starts_with("  kernel") && l.contains("1.5 s") && l.ends_with("pass")), "{s}");
        assert!(s.contains("verdict: FAIL at stage pod"), "{s}");
    }
}
