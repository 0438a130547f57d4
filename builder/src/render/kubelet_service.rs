//! The kubelet's own systemd units, for a node that gets the Kubernetes binaries from
//! `[kubernetes.binaries]` rather than from the distribution packages that normally ship them.
//!
//! * `kubelet.service`, when the kubelet is installed: the unit the kubelet package carries
//!   (runtime-facts §4.2): run `/usr/bin/kubelet`, and restart it forever, every 10 s — until
//!   `kubeadm init` or `join` has written its configuration the kubelet exits at once, and
//!   the unit must keep retrying rather than hit systemd's start limit. Enabled, because
//!   kubeadm's preflight warns about a kubelet service that is not.
//! * `kubelet.service.d/10-kubeadm.conf`, when kubeadm is installed: the drop-in the kubeadm
//!   package carries, which points the kubelet at the files kubeadm writes. The Debian
//!   variant reads the admin's overrides from `/etc/default/kubelet`.
//!
//! nodeforge's own drop-in (`20-nodeforge-containerd.conf`, render/kubelet.rs) sorts after
//! `10-kubeadm.conf`, so its settings apply on top of kubeadm's.
//!
//! Neither body depends on the profile or its versions: both live as files under
//! `overlays/etc/systemd/system/` and are embedded at compile time. The renderer only puts
//! the generated-by header (which names the profile) in front and decides, from
//! `[kubernetes.binaries]`, whether the node gets them at all.

use super::{Rendered, enable_link, file, header};
use crate::profile::Profile;

pub const UNIT_PATH: &str = "etc/systemd/system/kubelet.service";
pub const KUBEADM_DROPIN_PATH: &str = "etc/systemd/system/kubelet.service.d/10-kubeadm.conf";
/// Where `[kubernetes.binaries]` installs kubelet, kubeadm and kubectl: the path the
/// packages use and the units name.
pub const BIN_DIR: &str = "usr/bin";

/// The kubelet unit, as `overlays/etc/systemd/system/kubelet.service` holds it.
const UNIT: &str = include_str!("../../../overlays/etc/systemd/system/kubelet.service");
/// kubeadm's drop-in, as `overlays/etc/systemd/system/kubelet.service.d/10-kubeadm.conf`
/// holds it.
const KUBEADM_DROPIN: &str = include_str!("../../../overlays/etc/systemd/system/kubelet.service.d/10-kubeadm.conf");

const RENDERER: &str = "kubelet-service";

pub fn render(p: &Profile) -> Vec<Rendered> {
    let Some(bins) = &p.kubernetes.binaries else { return Vec::new() };
    let mut out = Vec::new();
    if bins.kubelet.is_some() {
        out.push(file(UNIT_PATH, 0o644, format!("{}{UNIT}", header("#", p)), RENDERER));
        out.push(enable_link("kubelet.service", RENDERER));
    }
    if bins.kubeadm.is_some() {
        out.push(file(KUBEADM_DROPIN_PATH, 0o644, format!("{}{KUBEADM_DROPIN}", header("#", p)), RENDERER));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    const D: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn nothing_without_binaries() {
        assert!(render(&profile("1.30.2", "1.7.27", "")).is_empty());
    }

    #[test]
    fn kubelet_unit_restarts_forever() {
        let p = profile("1.30.2", "1.7.27", &format!("[kubernetes.binaries]\nkubelet = \"{D}\"\n"));
        let out = render(&p);
        let t = text(&out, UNIT_PATH);
        for line in [
            "ExecStart=/usr/bin/kubelet\n",
            "Restart=always\n",
            "StartLimitInterval=0\n",
            "RestartSec=10\n",
            "Wants=network-online.target\n",
            "After=network-online.target\n",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        assert!(out.iter().any(|r| r.path() == "etc/systemd/system/multi-user.target.wants/kubelet.service"));
        assert!(!out.iter().any(|r| r.path() == KUBEADM_DROPIN_PATH), "no kubeadm, no kubeadm drop-in");
    }

    #[test]
    fn overlay_files_run_the_kubelet_from_bin_dir() {
        let exec = format!("ExecStart=/{BIN_DIR}/kubelet");
        assert!(UNIT.lines().any(|l| l == exec), "{UNIT}");
        assert!(KUBEADM_DROPIN.lines().any(|l| l.starts_with(&format!("{exec} "))), "{KUBEADM_DROPIN}");
    }

    #[test]
    fn kubeadm_dropin_uses_the_debian_defaults_file() {
        let p = profile("1.30.2", "1.7.27", &format!("[kubernetes.binaries]\nkubelet = \"{D}\"\nkubeadm = \"{D}\"\n"));
        let t = text(&render(&p), KUBEADM_DROPIN_PATH).to_owned();
        assert!(t.contains("EnvironmentFile=-/etc/default/kubelet\n"), "{t}");
        assert!(t.contains("EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"), "{t}");
        assert!(t.contains("ExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS"), "{t}");
    }
}
