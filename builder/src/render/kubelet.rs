//! The kubelet's view of containerd: a systemd drop-in for kubeadm's kubelet unit and, where
//! the kubelet reads it, a KubeletConfiguration fragment (runtime-facts §4.1, §4.2).
//!
//! # Why the drop-in sets `KUBELET_CONFIG_ARGS`, not `KUBELET_EXTRA_ARGS`
//! kubeadm's `10-kubeadm.conf` runs
//! `kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS`
//! and reads `EnvironmentFile=-/etc/default/kubelet` (deb; `/etc/sysconfig/kubelet` on rpm).
//! The kubelet package installs that file holding `KUBELET_EXTRA_ARGS=`, and systemd lets
//! `EnvironmentFile=` override `Environment=` whatever the drop-in order (systemd.exec(5)). An
//! `Environment="KUBELET_EXTRA_ARGS=..."` would therefore be silently emptied on every node
//! with the package, however late its drop-in sorts.
//!
//! `KUBELET_CONFIG_ARGS` is set only by an `Environment=` line in 10-kubeadm.conf, never by
//! an environment file, so a later drop-in's `Environment=` does replace it: ours is named
//! `20-nodeforge-containerd.conf` to sort after `10-kubeadm.conf` (drop-ins from /etc and
//! /usr/lib are merged in file-name order). It keeps kubeadm's `--config=` and appends ours.
//! `ExecStart` is left alone. Precedence stays sensible: kubeadm's generated flags
//! (`KUBELET_KUBEADM_ARGS`) and the admin's `KUBELET_EXTRA_ARGS` come later on the command
//! line and still win over these defaults.
//!
//! # What goes where, by kubelet version
//! * < 1.27: flags only; `--container-runtime=remote` is needed before 1.24 and accepted
//!   until 1.27; `--pod-infra-container-image` still guards the pause image from GC.
//! * 1.27–1.29: `--container-runtime` is gone and `containerRuntimeEndpoint` exists in
//!   KubeletConfiguration, but there is no fragment directory yet and kubeadm owns
//!   config.yaml. A kubeadm patch for the `kubeletconfiguration` target (in
//!   [`PATCHES_DIR`], which the JoinConfiguration names as `patches.directory`) puts endpoint,
//!   driver and timeout into /var/lib/kubelet/config.yaml when kubeadm writes it at join.
//!   The still-accepted (deprecated, not removed) flags stay as well: they are the only thing
//!   a kubelet started without kubeadm, or joined without the patches directory, would see,
//!   and without them such a kubelet silently uses the cgroupfs driver while containerd uses
//!   systemd. They carry the same values as the patch, so the two cannot disagree; the cost is
//!   one deprecation line per flag in the kubelet log.
//! * ≥ 1.30: `--config-dir` is on by default; a fragment carries endpoint, cgroup driver and
//!   timeout, and overrides kubeadm's config.yaml field by field. The kubeadm patch is
//!   rendered too, so config.yaml itself (what `kubectl get --raw .../configz` and kubeadm
//!   upgrades see) agrees with the fragment.
//!
//! A later harness reads the endpoint and the cgroup driver back from these files, so both
//! are written literally (never via a variable or an include).

use super::{CONTAINERD_SOCKET, Rendered, file, header, sandbox_image};
use crate::compat::{self, KubeletSupport};
use crate::profile::Profile;

pub const DROPIN_PATH: &str = "etc/systemd/system/kubelet.service.d/20-nodeforge-containerd.conf";
pub const FRAGMENT_DIR: &str = "/etc/kubernetes/kubelet.conf.d";
pub const FRAGMENT_PATH: &str = "etc/kubernetes/kubelet.conf.d/20-nodeforge-containerd.conf";
/// kubeadm's patches directory on the node: the JoinConfiguration must set
/// `patches.directory` to this path for kubeadm to apply [`PATCH_PATH`] at join.
pub const PATCHES_DIR: &str = "/etc/kubernetes/patches";
/// kubeadm names patches `target[suffix][+patchtype].extension` and applies them in name
/// order; `50` leaves room on both sides, `merge` is a JSON merge patch (RFC 7386), the
/// simplest correct type for a flat object without strategic-merge metadata.
pub const PATCH_PATH: &str = "etc/kubernetes/patches/kubeletconfiguration50+merge.yaml";
/// What `10-kubeadm.conf` sets `KUBELET_CONFIG_ARGS` to (unchanged since kubeadm 1.11).
const KUBEADM_CONFIG_ARGS: &str = "--config=/var/lib/kubelet/config.yaml";
const RENDERER: &str = "kubelet";

/// The kubelet command-line arguments nodeforge adds, in order.
fn args(p: &Profile, support: &KubeletSupport) -> Vec<String> {
    let mut a = vec![KUBEADM_CONFIG_ARGS.to_owned()];
    if support.config_dir {
        a.push(format!("--config-dir={FRAGMENT_DIR}"));
        return a;
    }
    if support.container_runtime_flag {
        a.push("--container-runtime=remote".into());
    }
    a.push(format!("--container-runtime-endpoint={CONTAINERD_SOCKET}"));
    a.push(format!("--cgroup-driver={}", p.node.cgroup_driver));
    if let Some(t) = &p.node.runtime_request_timeout {
        a.push(format!("--runtime-request-timeout={}", t.as_str()));
    }
    // From 1.29 the flag no longer protects the image from GC (the runtime pins it), and
    // 1.35 refuses it; before 1.29 it is what keeps the pause image from being collected.
    if support.pod_infra_flag && !p.kubernetes.version.at_least(1, 29, 0) {
        a.push(format!("--pod-infra-container-image={}", sandbox_image(p)));
    }
    a
}

pub fn render(p: &Profile) -> Vec<Rendered> {
    let support = compat::kubelet_support(&p.kubernetes.version);
    let args = args(p, &support).join(" ");
    // Every value here comes from validated types (image refs, durations, enum names, fixed
    // paths), none of which can hold `"`, `%`, `$` or `\` that systemd would interpret.
    debug_assert!(!args.contains(['"', '%', '$', '\\']), "{args}");
    let dropin = format!(
        "{header}
# Sorts after kubeadm's 10-kubeadm.conf and replaces its KUBELET_CONFIG_ARGS (keeping
# its --config). Not KUBELET_EXTRA_ARGS: the kubelet package's /etc/default/kubelet sets
# that through EnvironmentFile=, which overrides any Environment= line.
[Unit]
Wants=containerd.service
After=containerd.service

[Service]
Environment=\"KUBELET_CONFIG_ARGS={args}\"
",
        header = header("#", p)
    );
    let mut out = vec![file(DROPIN_PATH, 0o644, dropin, RENDERER)];
    if support.config_dir {
        let fragment = kubelet_configuration(
            p,
            "Read through --config-dir (see the kubelet drop-in); overrides kubeadm's config.yaml.",
        );
        out.push(file(FRAGMENT_PATH, 0o644, fragment, RENDERER));
    }
    if support.endpoint_in_config {
        let patch = kubelet_configuration(
            p,
            &format!(
                "A kubeadm patch (JSON merge) for the `kubeletconfiguration` target: applied to\n\
                 # /var/lib/kubelet/config.yaml when kubeadm join writes it, if the JoinConfiguration\n\
                 # sets patches.directory: {PATCHES_DIR}"
            ),
        );
        out.push(file(PATCH_PATH, 0o644, patch, RENDERER));
    }
    out
}

/// The runtime part of a KubeletConfiguration (1.27+ reads `containerRuntimeEndpoint`).
fn kubelet_configuration(p: &Profile, why: &str) -> String {
    let mut text = format!(
        "{header}
# {why}
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: {CONTAINERD_SOCKET}
cgroupDriver: {driver}
",
        header = header("#", p),
        driver = p.node.cgroup_driver,
    );
    if let Some(t) = &p.node.runtime_request_timeout {
        // Quoted: YAML 1.1 readers could take some duration spellings for numbers.
        text.push_str(&format!("runtimeRequestTimeout: \"{}\"\n", t.as_str()));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn dropin(k8s: &str, extra: &str) -> String {
        text(&render(&profile(k8s, "1.7.27", extra)), DROPIN_PATH).to_owned()
    }

    #[test]
    fn old_kubelets_get_flags() {
        let d = dropin("1.14.10", "[node]\ncgroup_driver = \"cgroupfs\"\nruntime_request_timeout = \"15m\"\n");
        let want = "Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --container-runtime=remote \
            --container-runtime-endpoint=unix:///run/containerd/containerd.sock --cgroup-driver=cgroupfs \
            --runtime-request-timeout=15m --pod-infra-container-image=registry.k8s.io/pause:3.1\"\n";
        assert!(d.contains(want), "{d}");
        assert!(!d.contains("KUBELET_EXTRA_ARGS="));
    }

    #[test]
    fn no_container_runtime_flag_from_1_27() {
        for v in ["1.27.0", "1.28.5", "1.29.3", "1.30.2", "1.35.0"] {
            let d = dropin(v, "");
            assert!(!d.contains("--container-runtime="), "{v}: {d}");
        }
        let d = dropin("1.27.0", "");
        assert!(d.contains("--container-runtime-endpoint=unix:///run/containerd/containerd.sock"));
        assert!(d.contains("--cgroup-driver=systemd"));
        assert!(d.contains("--pod-infra-container-image="));
        assert!(!dropin("1.29.0", "").contains("--pod-infra-container-image"));
    }

    #[test]
    fn no_pod_infra_flag_from_1_35_and_fragment_from_1_30() {
        let out = render(&profile("1.35.0", "1.7.27", "[node]\nruntime_request_timeout = \"2m\"\n"));
        let d = text(&out, DROPIN_PATH);
        assert!(!d.contains("--pod-infra-container-image"), "{d}");
        assert!(d.contains("--config-dir=/etc/kubernetes/kubelet.conf.d"), "{d}");
        let f: serde_json::Value = serde_saphyr::from_str(text(&out, FRAGMENT_PATH)).unwrap();
        assert_eq!(f["kind"], "KubeletConfiguration");
        assert_eq!(f["apiVersion"], "kubelet.config.k8s.io/v1beta1");
        assert_eq!(f["containerRuntimeEndpoint"], "unix:///run/containerd/containerd.sock");
        assert_eq!(f["cgroupDriver"], "systemd");
        assert_eq!(f["runtimeRequestTimeout"], "2m");
        let paths: Vec<String> = render(&profile("1.29.3", "1.7.27", "")).iter().map(|r| r.path().to_owned()).collect();
        assert_eq!(paths, [DROPIN_PATH, PATCH_PATH]);
        assert_eq!(render(&profile("1.26.3", "1.7.27", "")).len(), 1);
    }

    #[test]
    fn kubeadm_patch_from_1_27() {
        for k8s in ["1.27.0", "1.29.3", "1.30.2", "1.35.1"] {
            let out = render(&profile(
                k8s,
                "2.2.1",
                "[node]\ncgroup_driver = \"cgroupfs\"\nruntime_request_timeout = \"4m\"\n",
            ));
            let patch = text(&out, PATCH_PATH);
            assert!(patch.contains(&format!("patches.directory: {PATCHES_DIR}")), "{patch}");
            let f: serde_json::Value = serde_saphyr::from_str(patch).unwrap();
            assert_eq!(f["kind"], "KubeletConfiguration", "{k8s}");
            assert_eq!(f["containerRuntimeEndpoint"], "unix:///run/containerd/containerd.sock", "{k8s}");
            assert_eq!(f["cgroupDriver"], "cgroupfs", "{k8s}");
            assert_eq!(f["runtimeRequestTimeout"], "4m", "{k8s}");
        }
        assert!(PATCH_PATH.starts_with(PATCHES_DIR.trim_start_matches('/')));
        // The belt for kubelets without kubeadm on 1.27–1.29: the deprecated flags stay.
        let d = dropin("1.28.9", "");
        assert!(d.contains("--container-runtime-endpoint=") && d.contains("--cgroup-driver=systemd"), "{d}");
    }

    #[test]
    fn cgroup_driver_agrees_with_containerd() {
        for (driver, systemd) in [("systemd", true), ("cgroupfs", false)] {
            for k8s in ["1.14.10", "1.28.0", "1.32.4"] {
                let p = profile(k8s, "1.7.27", &format!("[node]\ncgroup_driver = \"{driver}\"\n"));
                let all = super::super::render_profile(&p).unwrap();
                let kubelet_side = if k8s == "1.32.4" {
                    text(&all, FRAGMENT_PATH).contains(&format!("cgroupDriver: {driver}\n"))
                } else {
                    text(&all, DROPIN_PATH).contains(&format!("--cgroup-driver={driver}"))
                };
                let containerd_side =
                    text(&all, super::super::containerd_config::PATH).contains(&format!("SystemdCgroup = {systemd}\n"));
                assert!(kubelet_side && containerd_side, "{driver} on {k8s}");
            }
        }
    }
}
