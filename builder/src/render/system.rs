//! Kernel modules and sysctls a bridge-CNI Kubernetes node needs (runtime-facts §5).
//!
//! `overlay` is also loaded by containerd.service's ExecStartPre; listing it here as well
//! means it is present even if containerd is started another way. Nothing else loads
//! `br_netfilter`, and `net.bridge.*` exists only once it is loaded, so systemd-modules-load
//! (which runs before systemd-sysctl) must load it for the sysctls below to apply at boot.

use super::{Rendered, file, header};
use crate::profile::Profile;

pub const MODULES_PATH: &str = "etc/modules-load.d/nodeforge-k8s.conf";
/// `99-` so it is applied after distribution defaults that might turn forwarding off.
pub const SYSCTL_PATH: &str = "etc/sysctl.d/99-nodeforge-k8s.conf";

pub fn render(p: &Profile) -> Vec<Rendered> {
    let modules = format!("{}overlay\nbr_netfilter\n", header("#", p));
    let sysctl = format!(
        "{}\
# Pods reach beyond the node only if the node routes for them (also a kubeadm preflight check).
net.ipv4.ip_forward = 1
# Bridged pod traffic must pass iptables, or kube-proxy's Service rules never see it.
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
",
        header("#", p)
    );
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
