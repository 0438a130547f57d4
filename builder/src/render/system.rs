//! Kernel modules and sysctls a bridge-CNI Kubernetes node needs (runtime-facts §5).
//!
//! `overlay` is also loaded by containerd.service's ExecStartPre; listing it here as well
//! means it is present even if containerd is started another way. Nothing else loads
//! `br_netfilter`, and `net.bridge.*` exists only once it is loaded, so systemd-modules-load
//! (which runs before systemd-sysctl) must load it for the sysctls below to apply at boot.
//!
//! Both lists are the same for every profile and live as files under `overlays/etc/`; the
//! renderer only puts the generated-by header (which names the profile) in front.

use super::{Rendered, file, header};
use crate::profile::Profile;

pub const MODULES_PATH: &str = "etc/modules-load.d/nodeforge-k8s.conf";
/// `99-` so it is applied after distribution defaults that might turn forwarding off.
pub const SYSCTL_PATH: &str = "etc/sysctl.d/99-nodeforge-k8s.conf";

/// The modules, as `overlays/etc/modules-load.d/nodeforge-k8s.conf` holds them.
const MODULES: &str = include_str!("../../../overlays/etc/modules-load.d/nodeforge-k8s.conf");
/// The sysctls, as `overlays/etc/sysctl.d/99-nodeforge-k8s.conf` holds them.
const SYSCTLS: &str = include_str!("../../../overlays/etc/sysctl.d/99-nodeforge-k8s.conf");

pub fn render(p: &Profile) -> Vec<Rendered> {
    let modules = format!("{}{MODULES}", header("#", p));
    let sysctl = format!("{}{SYSCTLS}", header("#", p));
    vec![file(MODULES_PATH, 0o644, modules, "modules-load"), file(SYSCTL_PATH, 0o644, sysctl, "sysctl")]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    #[test]
    fn modules_and_sysctls() {
        let out = render(&profile("1.30.2", "1.6.20", ""));
        let m: Vec<_> = text(&out, MODULES_PATH).lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(m, ["overlay", "br_netfilter"]);
        let s = text(&out, SYSCTL_PATH);
        for key in ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"]
        {
            assert!(s.contains(&format!("\n{key} = 1\n")), "{key}");
        }
    }
}
