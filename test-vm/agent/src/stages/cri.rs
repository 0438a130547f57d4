//! Stage `cri`: the runtime answers CRI on the kubelet's endpoint as the kubelet needs.
//!
//! * `Version`: `runtime_name` `containerd`, `version` `0.1.0` (the kubelet refuses any
//!   other), `runtime_api_version` = `Expect.cri_api`, `runtime_version` matching
//!   `Expect.containerd_version` (`v1.7.13` and Debian's `1.6.20~ds1` both match their
//!   plain versions). If the expected API is unimplemented, the other one is tried so the
//!   failure says what the runtime does serve.
//! * `Status`: polled until `RuntimeReady` and `NetworkReady` are both true (NetworkReady
//!   turns true once containerd has loaded a CNI config).
//! * `crictl version`, when the node has crictl ([`CRICTL`]): run as an operator would, with
//!   no flags, so it reads the /etc/crictl.yaml nodeforge rendered; it must reach containerd
//!   (RuntimeName `containerd`) at the expected version. This holds for cri-tools' crictl and
//!   for the stand-in the offline fixtures ship alike: both print crictl's `Key:  value` lines.
//!
//! The socket is passed in; the pipeline resolves it from the kubelet drop-in.
//! Detail: `version` (the four fields), `conditions`, `status_polls`, `crictl` (`path` and
//! its `version` fields, or `absent`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Deadline, Outcome, POLL, connect_cri};
use crate::cri::{Cri, VersionInfo, status_text};
use crate::exec::Runner;
use crate::expect::Expect;

/// Where both the release bundle and the per-component crictl release put crictl.
pub const CRICTL: &str = "/usr/local/bin/crictl";

/// How long `crictl version` may take (its own connection timeout is 2 s by default, 10 s
/// with nodeforge's crictl.yaml).
const CRICTL_TIMEOUT: Duration = Duration::from_secs(30);

/// `crictl` is the node's crictl if it has one (the pipeline passes [`CRICTL`] when that
/// file exists), checked after the CRI checks pass.
pub async fn run(runner: &dyn Runner, socket: &Path, crictl: Option<&Path>, expect: &Expect, dl: Deadline) -> Outcome {
    let mut cri = match connect_cri(socket, expect.cri_api, dl).await {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("{e:#}"), json!({})),
    };
    let v = match cri.version().await {
        Ok(v) => v,
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            let other = expect.cri_api.other();
            let serves = match connect_cri(socket, other, dl).await {
                Ok(mut c) => match c.version().await {
                    Ok(v) => format!("it serves {} ({} {})", v.runtime_api_version, v.runtime_name, v.runtime_version),
                    Err(s) => format!("{} is not served either ({})", other.as_str(), status_text(&s)),
                },
                Err(e) => format!("{e:#}"),
            };
            let msg = format!("the runtime does not serve CRI {}: {serves}", expect.cri_api.as_str());
            return Outcome::fail(msg, json!({"error": status_text(&s)}));
        }
        Err(s) => return Outcome::fail(format!("CRI Version: {}", status_text(&s)), json!({})),
    };
    let version = version_json(&v);
    let problems = version_problems(&v, expect);
    if !problems.is_empty() {
        return Outcome::fail(problems.join("; "), json!({"version": version}));
    }

    let (ok, conditions, polls) = wait_ready(&mut cri, dl).await;
    let mut detail = json!({"version": version, "conditions": conditions, "status_polls": polls});
    if !ok {
        return Outcome::fail(format!("runtime not ready after {:?}: {}", dl.budget(), summary(&conditions)), detail);
    }
    let mut msg = format!(
        "{} {} serves CRI {}; RuntimeReady and NetworkReady",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    match crictl {
        None => detail["crictl"] = json!("absent"),
        Some(path) => {
            let timeout = CRICTL_TIMEOUT.min(dl.remaining()).max(Duration::from_secs(1));
            let (result, crictl_detail) = check_crictl(runner, path, expect, timeout);
            detail["crictl"] = crictl_detail;
            match result {
                Ok(()) => msg.push_str("; crictl reaches it through /etc/crictl.yaml"),
                Err(problem) => return Outcome::fail(problem, detail),
            }
        }
    }
    Outcome::pass(msg, detail)
}

/// Runs `crictl version` and checks that it reached containerd at the expected version.
/// Returns the verdict and the detail to report (the parsed fields, or the output).
pub fn check_crictl(
    runner: &dyn Runner,
    crictl: &Path,
    expect: &Expect,
    timeout: Duration,
) -> (Result<(), String>, Value) {
    let program = crictl.to_string_lossy();
    let out = match runner.run(&program, &["version"], timeout) {
        Ok(o) => o,
        Err(e) => return (Err(format!("cannot run `{program} version`: {e}")), json!({"path": program})),
    };
    let raw =
        json!({"path": program, "stdout": super::tail(&out.stdout, 400), "stderr": super::tail(&out.stderr, 400)});
    if out.timed_out {
        return (Err(format!("`{program} version` did not finish within {timeout:?}")), raw);
    }
    if out.code != Some(0) {
        let why = super::tail(&out.stderr, 300);
        return (Err(format!("`{program} version` exited with {:?}: {why}", out.code)), raw);
    }
    let v = match parse_crictl_version(&out.stdout) {
        Ok(v) => v,
        Err(e) => return (Err(format!("`{program} version`: {e}")), raw),
    };
    let detail = json!({"path": program, "version": version_json(&v)});
    let mut problems = Vec::new();
    if v.runtime_name != "containerd" {
        problems.push(format!("RuntimeName is `{}`, not containerd", v.runtime_name));
    }
    if !expect.containerd_version.is_empty() && !version_matches(&v.runtime_version, &expect.containerd_version) {
        problems.push(format!(
            "RuntimeVersion is `{}`, expected containerd {}",
            v.runtime_version, expect.containerd_version
        ));
    }
    if problems.is_empty() {
        (Ok(()), detail)
    } else {
        (Err(format!("`{program} version` (reading /etc/crictl.yaml): {}", problems.join("; "))), detail)
    }
}

/// crictl's `version` output: `Version:  0.1.0`, `RuntimeName:  containerd`,
/// `RuntimeVersion:  v1.6.20`, `RuntimeApiVersion:  v1`, one per line (Go's `Println` puts
/// the two spaces there). Other lines (warnings some versions print) are ignored.
pub fn parse_crictl_version(stdout: &str) -> Result<VersionInfo, String> {
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
            .ok_or_else(|| format!("no `{key}:` line in its output: {:?}", super::tail(stdout, 200)))
    };
    Ok(VersionInfo {
        version: field("Version")?,
        runtime_name: field("RuntimeName")?,
        runtime_version: field("RuntimeVersion")?,
        runtime_api_version: field("RuntimeApiVersion")?,
    })
}

fn version_json(v: &VersionInfo) -> Value {
    json!({
        "version": v.version, "runtime_name": v.runtime_name,
        "runtime_version": v.runtime_version, "runtime_api_version": v.runtime_api_version,
    })
}

pub fn version_problems(v: &VersionInfo, expect: &Expect) -> Vec<String> {
    let mut p = Vec::new();
    if v.runtime_name != "containerd" {
        p.push(format!("runtime_name is `{}`, not containerd", v.runtime_name));
    }
    if v.version != "0.1.0" {
        p.push(format!("version is `{}`; the kubelet requires 0.1.0", v.version));
    }
    if v.runtime_api_version != expect.cri_api.as_str() {
        p.push(format!("runtime_api_version is `{}`, expected {}", v.runtime_api_version, expect.cri_api.as_str()));
    }
    if !expect.containerd_version.is_empty() && !version_matches(&v.runtime_version, &expect.containerd_version) {
        p.push(format!(
            "runtime_version is `{}`, expected containerd {}",
            v.runtime_version, expect.containerd_version
        ));
    }
    p
}

/// `v1.7.13` and `1.6.20~ds1` match `1.7.13` and `1.6.20`; `1.6.201` does not match `1.6.20`.
pub fn version_matches(reported: &str, expected: &str) -> bool {
    let r = reported.strip_prefix('v').unwrap_or(reported);
    let e = expected.strip_prefix('v').unwrap_or(expected);
    match r.strip_prefix(e) {
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.'),
        None => false,
    }
}

/// Polls `Status` until RuntimeReady and NetworkReady; returns the last conditions seen.
async fn wait_ready(cri: &mut Cri, dl: Deadline) -> (bool, Vec<Value>, u32) {
    let mut polls = 0;
    loop {
        polls += 1;
        let (ready, conds) = match cri.status(false).await {
            Ok(st) => {
                let ready = ["RuntimeReady", "NetworkReady"].iter().all(|k| st.condition(k).is_some_and(|c| c.status));
                let conds = st
                    .conditions
                    .iter()
                    .map(|c| json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message}))
                    .collect();
                (ready, conds)
            }
            Err(s) => (false, vec![json!({"error": status_text(&s)})]),
        };
        if ready || dl.passed() {
            return (ready, conds, polls);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn summary(conds: &[Value]) -> String {
    conds
        .iter()
        .map(|c| match c.get("error") {
            Some(e) => format!("Status failed: {}", e.as_str().unwrap_or_default()),
            None => format!(
                "{}={} {}",
                c["type"].as_str().unwrap_or_default(),
                c["status"],
                c["message"].as_str().unwrap_or_default()
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{CgroupDriver, CriApi};

    fn expect() -> Expect {
        serde_json::from_value(json!({
            "cri_endpoint_default": "unix:///run/containerd/containerd.sock",
            "sandbox_image": "registry.k8s.io/pause:3.9", "images": [], "cni_subnet": "10.88.0.0/16",
            "cgroup_driver": "systemd", "cri_api": "v1", "containerd_version": "1.6.20"
        }))
        .unwrap()
    }

    #[test]
    fn versions() {
        assert!(version_matches("1.6.20~ds1", "1.6.20"));
        assert!(version_matches("v1.7.13", "1.7.13"));
        assert!(!version_matches("1.6.201", "1.6.20"));
        assert!(!version_matches("1.6.2", "1.6.20"));
        let mut e = expect();
        let v = VersionInfo {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        };
        assert!(version_problems(&v, &e).is_empty());
        e.cri_api = CriApi::V1alpha2;
        e.containerd_version = "1.7.0".into();
        assert_eq!(version_problems(&v, &e).len(), 2);
        assert_eq!(e.cgroup_driver, CgroupDriver::Systemd);
    }

    /// What cri-tools' crictl 1.24 prints for `crictl version` against containerd 1.6.20.
    const REAL_CRICTL: &str =
        "Version:  0.1.0\nRuntimeName:  containerd\nRuntimeVersion:  v1.6.20\nRuntimeApiVersion:  v1\n";

    #[test]
    fn crictl_version_output_is_parsed() {
        let v = parse_crictl_version(REAL_CRICTL).unwrap();
        assert_eq!(
            v,
            VersionInfo {
                version: "0.1.0".into(),
                runtime_name: "containerd".into(),
                runtime_version: "v1.6.20".into(),
                runtime_api_version: "v1".into(),
            }
        );
        // A warning line before the fields (old crictl without a config file) is skipped.
        let warned = format!("WARN[0000] image connect using default endpoints\n{REAL_CRICTL}");
        assert_eq!(parse_crictl_version(&warned).unwrap(), v);
        let e = parse_crictl_version("Version:  0.1.0\n").unwrap_err();
        assert!(e.contains("no `RuntimeName:` line"), "{e}");
    }

    #[test]
    fn crictl_is_run_and_judged() {
        use crate::exec::CmdOutput;
        use crate::exec::fake::FakeRunner;
        let path = Path::new(CRICTL);
        let t = Duration::from_secs(5);
        let cmd = "/usr/local/bin/crictl version";

        let r = FakeRunner::new().on(cmd, CmdOutput::ok(REAL_CRICTL));
        let (res, detail) = check_crictl(&r, path, &expect(), t);
        assert_eq!(res, Ok(()));
        assert_eq!(detail["version"]["runtime_version"], "v1.6.20");
        assert_eq!(*r.calls.borrow(), [cmd]);

        // Debian's containerd says `1.6.20~ds1`: still 1.6.20. Another version is not.
        let debian = REAL_CRICTL.replace("v1.6.20", "1.6.20~ds1");
        let r = FakeRunner::new().on(cmd, CmdOutput::ok(&debian));
        assert_eq!(check_crictl(&r, path, &expect(), t).0, Ok(()));
        let r = FakeRunner::new().on(cmd, CmdOutput::ok(&REAL_CRICTL.replace("v1.6.20", "v1.7.13")));
        let err = check_crictl(&r, path, &expect(), t).0.unwrap_err();
        assert!(err.contains("RuntimeVersion is `v1.7.13`, expected containerd 1.6.20"), "{err}");

        // crictl pointed elsewhere (no crictl.yaml, another runtime) fails with its words.
        let r = FakeRunner::new().on(cmd, CmdOutput::ok(&REAL_CRICTL.replace("containerd", "cri-o")));
        assert!(check_crictl(&r, path, &expect(), t).0.unwrap_err().contains("RuntimeName is `cri-o`"));
        let mut failed = CmdOutput::exit(1, "");
        failed.stderr = "FATA[0002] connect: connect endpoint 'unix:///run/containerd/containerd.sock', make sure you are running as root and the endpoint has been started: context deadline exceeded\n".into();
        let r = FakeRunner::new().on(cmd, failed);
        let (res, detail) = check_crictl(&r, path, &expect(), t);
        assert!(res.unwrap_err().contains("exited with Some(1): FATA[0002] connect"));
        assert!(detail["stderr"].as_str().unwrap().contains("context deadline exceeded"));
        let r = FakeRunner::new().missing(cmd);
        assert!(check_crictl(&r, path, &expect(), t).0.unwrap_err().starts_with("cannot run"));
    }
}
