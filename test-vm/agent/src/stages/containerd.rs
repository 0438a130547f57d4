//! Stage `containerd`: the service runs, the image preload finished, and CRI sees every
//! expected image with the sandbox image pinned.
//!
//! * `systemctl is-active containerd.service` must reach `active` (`failed` fails at once).
//! * `nodeforge-preload-images.service`, if installed: `Result=success` and either active
//!   (it is `RemainAfterExit=yes`) or skipped by its condition (its stamp says an earlier
//!   boot imported these archives). Still activating, or not started yet: wait.
//! * CRI `ListImages`: every `Expect.images` entry and the sandbox image, compared as
//!   normalised references (`busybox` = `docker.io/library/busybox:latest`).
//! * The sandbox image is pinned: CRI v1 `Image.pinned` where the runtime fills it;
//!   containerd before 1.6.22/1.7.3 never does, and v1alpha2 servers (containerd 1.4/1.5)
//!   have no such notion, so then the `io.cri-containerd.pinned=pinned` label is read with
//!   `ctr -n k8s.io images ls` (`/usr/local/bin/ctr`, else `ctr` on PATH), on the same socket.
//!
//! Detail: `containerd`, `preload`, `images` (all tags CRI lists), `missing`,
//! `sandbox_pinned`, `pinned_via` (`cri` | `ctr-label`), `pinned_note`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::boot::needed_failed;
use super::{Deadline, Detail, Outcome, POLL, connect_cri, obj};
use crate::cri::{Cri, status_text};
use crate::exec::Runner;
use crate::expect::{CriApi, Expect};
use crate::systemd;

pub const CONTAINERD_UNIT: &str = "containerd.service";
pub const PRELOAD_UNIT: &str = "nodeforge-preload-images.service";
pub const PIN_LABEL: &str = "io.cri-containerd.pinned=pinned";

pub async fn run(
    runner: &dyn Runner,
    socket: &Path,
    expect: &Expect,
    failed_units: &[String],
    dl: Deadline,
) -> Outcome {
    let failed = needed_failed(failed_units, &[CONTAINERD_UNIT, PRELOAD_UNIT]);
    if !failed.is_empty() {
        return Outcome::fail(format!("failed at boot: {}", failed.join(", ")), json!({"failed_units": failed}));
    }

    let mut state;
    let mut load_checked = false;
    loop {
        state = match systemd::is_active(runner, CONTAINERD_UNIT) {
            Ok(s) => s,
            Err(e) => return Outcome::fail(format!("{e:#}"), json!({})),
        };
        if state == "active" || state == "failed" || dl.passed() {
            break;
        }
        // `inactive` is also what systemd says of a unit it has never heard of: in the
        // runtime-first order that is an image without the runtime, not one still booting.
        if state == "inactive" && !load_checked {
            load_checked = true;
            let load = systemd::show(runner, CONTAINERD_UNIT, &["LoadState"])
                .map(|p| p.get("LoadState").cloned().unwrap_or_default())
                .unwrap_or_default();
            if load == "not-found" {
                let msg = format!("{CONTAINERD_UNIT} is not installed on this node");
                return Outcome::fail(msg, json!({"containerd": "not-found"}));
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if state != "active" {
        return Outcome::fail(format!("{CONTAINERD_UNIT} is `{state}`"), json!({"containerd": state}));
    }

    let preload = match preload_state(runner, dl).await {
        Ok(p) => p,
        Err(o) => return o,
    };

    let mut cri = match connect_cri(socket, expect.cri_api, dl).await {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("{e:#}"), json!({"containerd": state, "preload": preload})),
    };
    let mut o = check_images(&mut cri, runner, socket, expect).await;
    o.detail.insert("containerd".into(), json!(state));
    o.detail.insert("preload".into(), preload);
    o
}

async fn preload_state(runner: &dyn Runner, dl: Deadline) -> Result<Value, Outcome> {
    let props = ["LoadState", "ActiveState", "SubState", "Result", "ConditionResult", "ConditionTimestamp"];
    loop {
        let p = systemd::show(runner, PRELOAD_UNIT, &props).map_err(|e| Outcome::fail(format!("{e:#}"), json!({})))?;
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        let detail = json!(p);
        if get("LoadState") == "not-found" {
            return Ok(json!({"unit": "not installed"}));
        }
        match (get("ActiveState"), get("Result")) {
            ("active", "success") => return Ok(detail),
            ("inactive", "success") if get("ConditionResult") == "no" && !get("ConditionTimestamp").is_empty() => {
                // Skipped by ConditionPathExists=!stamp: an earlier boot imported these images.
                return Ok(detail);
            }
            ("activating" | "reloading", _) if !dl.passed() => tokio::time::sleep(POLL).await,
            // Queued behind containerd, not started yet (the runtime-first order gets here
            // while the boot is still going).
            ("inactive", "success") if get("ConditionTimestamp").is_empty() && !dl.passed() => {
                tokio::time::sleep(POLL).await
            }
            (active, result) => {
                let msg = format!("{PRELOAD_UNIT} did not import the images: ActiveState={active} Result={result}");
                return Err(Outcome::fail(msg, json!({"preload": detail})));
            }
        }
    }
}

/// The CRI half of the stage, on its own so it can run against any containerd.
pub async fn check_images(cri: &mut Cri, runner: &dyn Runner, socket: &Path, expect: &Expect) -> Outcome {
    let images = match cri.list_images().await {
        Ok(i) => i,
        Err(s) => return Outcome::fail(format!("CRI ListImages: {}", status_text(&s)), json!({})),
    };
    let present: BTreeMap<String, &str> =
        images.iter().flat_map(|i| i.repo_tags.iter().map(move |t| (normalize_ref(t), i.id.as_str()))).collect();
    let mut wanted: Vec<&str> = expect.images.iter().map(String::as_str).collect();
    if !wanted.contains(&expect.sandbox_image.as_str()) {
        wanted.push(&expect.sandbox_image);
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|r| !present.contains_key(&normalize_ref(r))).collect();
    let mut detail: Detail = obj(json!({"images": present.keys().collect::<Vec<_>>(), "missing": missing}));
    if !missing.is_empty() {
        return Outcome { ok: false, message: format!("images missing in CRI: {}", missing.join(", ")), detail };
    }

    let status = match cri.image_status(&expect.sandbox_image).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            let msg = format!("CRI ImageStatus does not know the sandbox image {}", expect.sandbox_image);
            return Outcome { ok: false, message: msg, detail };
        }
        Err(s) => return Outcome { ok: false, message: format!("CRI ImageStatus: {}", status_text(&s)), detail },
    };
    let (pinned, via, note) = if cri.api() == CriApi::V1 && status.pinned {
        (true, "cri", "CRI v1 Image.pinned is true".to_owned())
    } else {
        let why = match cri.api() {
            CriApi::V1 => "CRI v1 Image.pinned is false (containerd before 1.6.22/1.7.3 never sets it)",
            CriApi::V1alpha2 => "CRI v1alpha2 runtimes (containerd 1.4/1.5) do not report pinning",
        };
        match ctr_pinned(runner, socket, &expect.sandbox_image) {
            Ok(p) => (p, "ctr-label", format!("{why}; read the {PIN_LABEL} label with ctr")),
            Err(e) => (false, "ctr-label", format!("{why}; ctr: {e}")),
        }
    };
    detail.insert("sandbox_pinned".into(), json!(pinned));
    detail.insert("pinned_via".into(), json!(via));
    detail.insert("pinned_note".into(), json!(note));
    if !pinned {
        let msg = format!("sandbox image {} is not pinned ({note})", expect.sandbox_image);
        return Outcome { ok: false, message: msg, detail };
    }
    let msg = format!("{} images present; sandbox image pinned (via {via})", wanted.len());
    Outcome { ok: true, message: msg, detail }
}

fn ctr_binary() -> &'static str {
    if Path::new("/usr/local/bin/ctr").is_file() { "/usr/local/bin/ctr" } else { "ctr" }
}

/// Whether `ctr images ls` shows the pin label on `image`.
pub fn ctr_pinned(runner: &dyn Runner, socket: &Path, image: &str) -> Result<bool, String> {
    let address = socket.display().to_string();
    let filter = format!("name=={image}");
    let args = ["--address", address.as_str(), "--namespace", "k8s.io", "images", "ls", filter.as_str()];
    let out = runner.run(ctr_binary(), &args, Duration::from_secs(30)).map_err(|e| format!("running ctr: {e}"))?;
    if out.code != Some(0) {
        return Err(format!("ctr images ls failed ({:?}): {}", out.code, out.stderr.trim()));
    }
    labels_in_ls(&out.stdout, image)
        .map(|l| l.split(',').any(|kv| kv == PIN_LABEL))
        .ok_or_else(|| format!("ctr does not list {image}"))
}

/// The LABELS column (the last one; SIZE holds a space, so columns are found from the end)
/// of the `ctr images ls` row for `image`.
fn labels_in_ls<'a>(text: &'a str, image: &str) -> Option<&'a str> {
    text.lines().skip(1).find(|l| l.split_whitespace().next() == Some(image)).and_then(|l| l.split_whitespace().last())
}

/// A reference as containerd stores it: domain, `library/` for Docker Hub's official
/// images, `:latest` when neither tag nor digest is given.
pub fn normalize_ref(r: &str) -> String {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_domain = first.contains('.') || first.contains(':') || first == "localhost";
    let (domain, path) = if has_domain { (first, rest) } else { ("docker.io", name) };
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
    let last = path.rsplit('/').next().unwrap_or("");
    match digest {
        Some(d) => format!("{domain}/{path}@{d}"),
        None if last.contains(':') => format!("{domain}/{path}"),
        None => format!("{domain}/{path}:latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_containerd() {
        assert_eq!(normalize_ref("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_ref("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_ref("registry.k8s.io/pause:3.9"), "registry.k8s.io/pause:3.9");
        assert_eq!(normalize_ref("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize_ref("nodeforge.test/busybox:1"), "nodeforge.test/busybox:1");
        assert_eq!(normalize_ref("a/b@sha256:00"), "docker.io/a/b@sha256:00");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    const PRELOAD_SHOW: &str = "systemctl show nodeforge-preload-images.service --no-pager -p LoadState \
        -p ActiveState -p SubState -p Result -p ConditionResult -p ConditionTimestamp";

    #[test]
    fn preload_queued_behind_containerd_is_waited_for() {
        use crate::exec::CmdOutput;
        use crate::exec::fake::FakeRunner;
        let queued = "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\nConditionResult=no\nConditionTimestamp=\n";
        let running = "LoadState=loaded\nActiveState=activating\nSubState=start\nResult=success\nConditionResult=yes\nConditionTimestamp=Thu 2026-12-03 18:50:03 UTC\n";
        let done = "LoadState=loaded\nActiveState=active\nSubState=exited\nResult=success\nConditionResult=yes\nConditionTimestamp=Thu 2026-12-03 18:50:03 UTC\n";
        let r = FakeRunner::new()
            .on(PRELOAD_SHOW, CmdOutput::ok(queued))
            .on(PRELOAD_SHOW, CmdOutput::ok(running))
            .on(PRELOAD_SHOW, CmdOutput::ok(done));
        let p = block_on(preload_state(&r, Deadline::after(Duration::from_secs(10)))).unwrap();
        assert_eq!(p["ActiveState"], "active");
        assert_eq!(r.calls.borrow().len(), 3);

        // Queued, and the deadline passed: fails saying so.
        let r = FakeRunner::new().on(PRELOAD_SHOW, CmdOutput::ok(queued));
        let o = block_on(preload_state(&r, Deadline::after(Duration::ZERO))).unwrap_err();
        assert!(o.message.contains("ActiveState=inactive"), "{o:?}");
    }

    #[test]
    fn a_node_without_containerd_fails_at_once() {
        use crate::exec::CmdOutput;
        use crate::exec::fake::FakeRunner;
        let r = FakeRunner::new()
            .on("systemctl is-active containerd.service", CmdOutput::exit(4, "inactive\n"))
            .on("systemctl show containerd.service --no-pager -p LoadState", CmdOutput::ok("LoadState=not-found\n"));
        let expect: Expect = serde_json::from_value(json!({
            "cri_endpoint_default": "unix:///run/containerd/containerd.sock", "sandbox_image": "p:1", "images": [],
            "cni_subnet": "10.88.0.0/16", "cgroup_driver": "systemd", "cri_api": "v1", "containerd_version": ""
        }))
        .unwrap();
        let socket = Path::new("/nonexistent.sock");
        let o = block_on(run(&r, socket, &expect, &[], Deadline::after(Duration::from_secs(60))));
        assert!(!o.ok && o.message.contains("not installed"), "{o:?}");
    }

    #[test]
    fn ctr_ls_labels_column() {
        let text = "REF                       TYPE                                    DIGEST          SIZE     PLATFORMS   LABELS\n\
                    registry.k8s.io/pause:3.9 application/vnd.oci.image.manifest.v1+json sha256:abc 1.2 MiB linux/amd64 io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned\n\
                    nodeforge.test/busybox:1 application/vnd.oci.image.manifest.v1+json sha256:def 1.0 MiB linux/amd64 -\n";
        assert_eq!(labels_in_ls(text, "registry.k8s.io/pause:3.9").map(|l| l.contains(PIN_LABEL)), Some(true));
        assert_eq!(labels_in_ls(text, "nodeforge.test/busybox:1"), Some("-"));
        assert_eq!(labels_in_ls(text, "other"), None);
    }
}
