//! Stage `pod`: a real pod through CRI, the way the kubelet would start one.
//!
//! 1. `RunPodSandbox` from the configured sandbox image (containerd picks it), with the
//!    kubelet's usual Linux namespaces, a log directory `/var/log/pods/<ns>_<name>_<uid>`,
//!    and a cgroup parent matching `Expect.cgroup_driver`:
//!    * `systemd`: `kubepods-besteffort-pod<uid>.slice`. containerd 1.6 (SystemdCgroup=true)
//!      turns a parent whose last element ends in `.slice` into runc's
//!      `slice:cri-containerd:<id>` form; an empty or path-style parent would give runc a
//!      cgroupfs path, which its systemd driver rejects.
//!    * `cgroupfs`: `/kubepods/besteffort/pod<uid>`.
//! 2. Wait for `SANDBOX_READY`; the pod IP must lie inside `Expect.cni_subnet`.
//! 3. `CreateContainer` from `Expect.test_image` running
//!    `/bin/sh -c 'echo hello-from-nodeforge'`, `StartContainer`, wait for `EXITED` with
//!    exit code 0, and read the CRI log file back: a line `<time> stdout F hello-from-nodeforge`.
//! 4. Always, also after a failure or timeout: `StopContainer`, `RemoveContainer`,
//!    `StopPodSandbox`, `RemovePodSandbox`, then the log directory (and, for cgroupfs, the
//!    empty pod cgroup) is removed. A failed clean-up fails the stage: a leftover pod keeps
//!    the node from powering off cleanly.
//!
//! Detail: `pod_id`, `container_id`, `pod_ip`, `cgroup_parent`, `log_path`, `log_line`,
//! `exit_code`, and durations `run_pod_sandbox_ms`, `create_container_ms`,
//! `start_container_ms`, `exited_ms`, `cleanup_ms`; `cleanup_errors` if any.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{Deadline, Detail, Outcome, connect_cri};
use crate::cri::{ContainerSpec, ContainerState, Cri, PodSpec, status_text};
use crate::expect::{CgroupDriver, Expect};
use crate::report::ms;

pub const GREETING: &str = "hello-from-nodeforge";
const POD_NAME: &str = "nodeforge-probe";
const POD_NAMESPACE: &str = "nodeforge-test";
const CONTAINER_NAME: &str = "hello";
/// Clean-up gets its own budget after the stage's deadline: a pod left behind is worse
/// than a late report.
const CLEANUP_BUDGET: Duration = Duration::from_secs(60);
/// Polling a container that runs `echo` can be quick.
const FAST_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct PodOptions {
    /// Where pod log directories go; the kubelet uses /var/log/pods.
    pub log_root: PathBuf,
    /// Overrides the cgroup parent derived from the cgroup driver.
    pub cgroup_parent: Option<String>,
}

impl Default for PodOptions {
    fn default() -> Self {
        PodOptions { log_root: PathBuf::from("/var/log/pods"), cgroup_parent: None }
    }
}

/// The cgroup parent the kubelet would give a best-effort pod with this (dash-free) uid.
pub fn cgroup_parent(driver: CgroupDriver, uid: &str) -> String {
    match driver {
        CgroupDriver::Systemd => format!("kubepods-besteffort-pod{uid}.slice"),
        CgroupDriver::Cgroupfs => format!("/kubepods/besteffort/pod{uid}"),
    }
}

#[derive(Debug, Default)]
struct Created {
    pod: Option<String>,
    container: Option<String>,
}

pub async fn run(socket: &Path, expect: &Expect, opts: &PodOptions, dl: Deadline) -> Outcome {
    let mut cri = match connect_cri(socket, expect.cri_api, dl).await {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("{e:#}"), json!({})),
    };
    let uid = unique_uid();
    let parent = opts.cgroup_parent.clone().unwrap_or_else(|| cgroup_parent(expect.cgroup_driver, &uid));
    let log_dir = opts.log_root.join(format!("{POD_NAMESPACE}_{POD_NAME}_{uid}"));
    let pod = PodSpec {
        name: POD_NAME.into(),
        namespace: POD_NAMESPACE.into(),
        uid: uid.clone(),
        hostname: POD_NAME.into(),
        log_directory: log_dir.display().to_string(),
        cgroup_parent: parent.clone(),
        labels: [
            ("io.kubernetes.pod.name", POD_NAME),
            ("io.kubernetes.pod.namespace", POD_NAMESPACE),
            ("io.kubernetes.pod.uid", uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    };
    let mut detail: Detail =
        super::obj(json!({"cgroup_parent": parent, "log_directory": log_dir.display().to_string()}));
    let mut created = Created::default();

    let main =
        tokio::time::timeout(dl.remaining(), probe(&mut cri, expect, &pod, &log_dir, &mut created, &mut detail)).await;
    let result = match main {
        Ok(r) => r,
        Err(_) => Err(format!("pod did not finish within {:?}", dl.budget())),
    };

    let started = Instant::now();
    let cleanup = tokio::time::timeout(CLEANUP_BUDGET, cleanup(&mut cri, &created))
        .await
        .unwrap_or_else(|_| vec![format!("clean-up did not finish within {CLEANUP_BUDGET:?}")]);
    detail.insert("cleanup_ms".into(), json!(ms(started.elapsed())));
    // Ours to remove: the runtime leaves log directories to the kubelet.
    let _ = std::fs::remove_dir_all(&log_dir);
    if expect.cgroup_driver == CgroupDriver::Cgroupfs && opts.cgroup_parent.is_none() {
        remove_empty_cgroupfs_dirs(&parent);
    }
    if !cleanup.is_empty() {
        detail.insert("cleanup_errors".into(), json!(cleanup));
    }

    match result {
        Err(msg) => Outcome { ok: false, message: msg, detail },
        Ok(_) if !cleanup.is_empty() => {
            Outcome { ok: false, message: format!("clean-up failed: {}", cleanup.join("; ")), detail }
        }
        Ok(msg) => Outcome { ok: true, message: msg, detail },
    }
}

async fn probe(
    cri: &mut Cri,
    expect: &Expect,
    pod: &PodSpec,
    log_dir: &Path,
    created: &mut Created,
    detail: &mut Detail,
) -> Result<String, String> {
    let t = Instant::now();
    let pod_id = cri.run_pod_sandbox(pod).await.map_err(|s| format!("RunPodSandbox: {}", status_text(&s)))?;
    created.pod = Some(pod_id.clone());
    detail.insert("pod_id".into(), json!(pod_id));
    detail.insert("run_pod_sandbox_ms".into(), json!(ms(t.elapsed())));

    let sandbox = loop {
        let s = cri.pod_sandbox_status(&pod_id).await.map_err(|s| format!("PodSandboxStatus: {}", status_text(&s)))?;
        if s.ready {
            break s;
        }
        tokio::time::sleep(FAST_POLL).await;
    };
    detail.insert("pod_ip".into(), json!(sandbox.ip));
    let ip: IpAddr = sandbox.ip.parse().map_err(|_| format!("pod has no usable IP: `{}`", sandbox.ip))?;
    if !expect.cni_subnet.contains(&ip) {
        return Err(format!("pod IP {ip} is outside the CNI subnet {}", expect.cni_subnet));
    }

    let spec = ContainerSpec {
        name: CONTAINER_NAME.into(),
        image: expect.test_image.clone(),
        command: vec!["/bin/sh".into(), "-c".into(), format!("echo {GREETING}")],
        log_path: format!("{CONTAINER_NAME}/0.log"),
    };
    let t = Instant::now();
    let cid =
        cri.create_container(&pod_id, pod, &spec).await.map_err(|s| format!("CreateContainer: {}", status_text(&s)))?;
    created.container = Some(cid.clone());
    detail.insert("container_id".into(), json!(cid));
    detail.insert("create_container_ms".into(), json!(ms(t.elapsed())));

    let t = Instant::now();
    cri.start_container(&cid).await.map_err(|s| format!("StartContainer: {}", status_text(&s)))?;
    detail.insert("start_container_ms".into(), json!(ms(t.elapsed())));

    let t = Instant::now();
    let status = loop {
        let s = cri.container_status(&cid).await.map_err(|s| format!("ContainerStatus: {}", status_text(&s)))?;
        if s.state == ContainerState::Exited {
            break s;
        }
        tokio::time::sleep(FAST_POLL).await;
    };
    detail.insert("exited_ms".into(), json!(ms(t.elapsed())));
    detail.insert("exit_code".into(), json!(status.exit_code));
    let log_path =
        if status.log_path.is_empty() { log_dir.join(&spec.log_path) } else { PathBuf::from(&status.log_path) };
    detail.insert("log_path".into(), json!(log_path.display().to_string()));
    if status.exit_code != 0 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!(
            "container exited {} ({} {}); log: {}",
            status.exit_code,
            status.reason,
            status.message,
            super::tail(&log, 500)
        ));
    }

    // containerd closes the log before it reports the exit, but give a slow disk a moment.
    let until = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| is_greeting(l)) {
            break l.to_owned();
        }
        if Instant::now() >= until {
            return Err(format!(
                "no `stdout F {GREETING}` line in {}; it holds: {:?}",
                log_path.display(),
                super::tail(&text, 300)
            ));
        }
        tokio::time::sleep(FAST_POLL).await;
    };
    detail.insert("log_line".into(), json!(line));
    Ok(format!("pod {ip} ran {} and logged `{GREETING}`", expect.test_image))
}

/// Whether a CRI log line (`<RFC3339Nano time> <stream> <P|F> <content>`) is our greeting,
/// written whole (`F`) to stdout.
pub fn is_greeting(line: &str) -> bool {
    let mut parts = line.splitn(4, ' ');
    let (_time, stream, tag, content) = (parts.next(), parts.next(), parts.next(), parts.next());
    stream == Some("stdout") && tag == Some("F") && content == Some(GREETING)
}

/// Tears down what was created, in the kubelet's order. Returns the errors.
async fn cleanup(cri: &mut Cri, created: &Created) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(c) = &created.container {
        // Grace 0: the container has exited already, or the stage failed and waiting helps no one.
        if let Err(s) = cri.stop_container(c, 0).await {
            errors.push(format!("StopContainer: {}", status_text(&s)));
        }
        if let Err(s) = cri.remove_container(c).await {
            errors.push(format!("RemoveContainer: {}", status_text(&s)));
        }
    }
    if let Some(p) = &created.pod {
        if let Err(s) = cri.stop_pod_sandbox(p).await {
            errors.push(format!("StopPodSandbox: {}", status_text(&s)));
        }
        if let Err(s) = cri.remove_pod_sandbox(p).await {
            errors.push(format!("RemovePodSandbox: {}", status_text(&s)));
        }
    }
    errors
}

/// runc removes the container's cgroup but not the pod-level parents, which the kubelet
/// owns; without a kubelet they are ours. Only empty directories go (rmdir).
fn remove_empty_cgroupfs_dirs(parent: &str) {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let mut bases: Vec<PathBuf> = roots.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    bases.push(PathBuf::from("/sys/fs/cgroup")); // cgroup v2: one unified tree
    for base in bases {
        let mut dir = Path::new(parent.trim_start_matches('/'));
        while !dir.as_os_str().is_empty() {
            if std::fs::remove_dir(base.join(dir)).is_err() {
                break;
            }
            dir = dir.parent().unwrap_or(Path::new(""));
        }
    }
}

/// A pod UID unique to this run; hex without dashes (a dash means nesting in a systemd
/// slice name).
fn unique_uid() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{:x}{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_lines() {
        assert!(is_greeting("2026-01-01T00:00:00.123456789Z stdout F hello-from-nodeforge"));
        assert!(!is_greeting("2026-01-01T00:00:00.1Z stderr F hello-from-nodeforge"));
        assert!(!is_greeting("2026-01-01T00:00:00.1Z stdout P hello-from-nodeforge"));
        assert!(!is_greeting("2026-01-01T00:00:00.1Z stdout F hello-from-nodeforge!"));
    }

    #[test]
    fn parents_per_driver() {
        assert_eq!(cgroup_parent(CgroupDriver::Systemd, "ab12"), "kubepods-besteffort-podab12.slice");
        assert_eq!(cgroup_parent(CgroupDriver::Cgroupfs, "ab12"), "/kubepods/besteffort/podab12");
        assert!(!unique_uid().contains('-'));
    }
}
