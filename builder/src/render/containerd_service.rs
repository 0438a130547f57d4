//! `/etc/systemd/system/containerd.service` and its enablement link.
//!
//! The unit follows the one containerd ships for the profile's release line (runtime-facts
//! §2.1), so a node built by nodeforge behaves like one installed from the bundle or, for 2.x,
//! from containerd's own release archive. Both install the daemon as /usr/local/bin/containerd
//! (the archive is unpacked into /usr/local), which is what `ExecStart` names. The unit is
//! placed in /etc rather than /usr/local/lib so it wins over any packaged unit of the same name.
//!
//! One deliberate difference: the ordering. Upstream's unit keeps systemd's default
//! dependencies and orders itself after network.target, so containerd starts after
//! basic.target. On a cloud-init node both wait for cloud-init's first two stages, which order
//! themselves before sysinit.target and network-pre.target (~40 s of Python under TCG, seconds
//! on hardware). containerd needs nothing from them: its configuration is in the image, and a
//! seed that brings the overlay restarts it after unpacking (`seed::firstboot`). So the unit
//! drops the default dependencies and orders itself after what it does need: the filesystems,
//! and the kernel modules and sysctls the overlay asks for (`render::system`). The image
//! preload follows it, and both are still done before multi-user.target, hence before
//! cloud-final and the join. What the default dependencies did at shutdown is kept.

use super::{Rendered, enable_link, file, header};
use crate::profile::Profile;
use crate::version::Version;

pub const PATH: &str = "etc/systemd/system/containerd.service";
const RENDERER: &str = "containerd-service";

pub fn render(p: &Profile) -> Vec<Rendered> {
    let v = &p.containerd.version;
    let mut after = String::from(EARLY_AFTER);
    if orders_after_dbus(v) {
        // Upstream's reason holds here too: D-Bus must outlive containerd at shutdown. At
        // boot it does not hold containerd back: nothing starts D-Bus before sysinit.target.
        after.push_str(" dbus.service");
    }
    let nofile = match limit_nofile(v) {
        Some(n) => format!("LimitNOFILE={n}\n"),
        None => String::new(),
    };
    let text = format!(
        "{header}
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
# Not systemd's default dependencies (basic.target, which on a cloud-init node comes after
# cloud-init's first two stages): containerd starts as soon as what it needs is in place.
DefaultDependencies=no
After={after}
Before=multi-user.target shutdown.target
Conflicts=shutdown.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd

# containerd signals readiness with sd_notify once its socket accepts connections, so units
# ordered After= this one (the image preload, the kubelet) can use it at once.
Type=notify
Delegate=yes
# Only containerd itself is stopped on restart; the shims keep the containers running.
KillMode=process
Restart=always
RestartSec=5
# Non-zero Limit* values cost kernel accounting overhead; containers are limited by cgroups.
LimitNPROC=infinity
LimitCORE=infinity
{nofile}TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
",
        header = header("#", p),
    );
    vec![file(PATH, 0o644, text, RENDERER), enable_link("containerd.service", RENDERER)]
}

/// What containerd waits for at boot: mounted filesystems (/var/lib/containerd, /run),
/// `overlay` and `br_netfilter` loaded and the bridge and forwarding sysctls set (the probe
/// pod and the kubelet need them), and systemd's runtime directories made.
const EARLY_AFTER: &str =
    "local-fs.target systemd-modules-load.service systemd-sysctl.service systemd-tmpfiles-setup.service";

/// 1.4 shipped a finite limit; 1.5–1.7 `infinity`; 2.0 removed the line so systemd's default
/// (a soft limit of 1024, hard 524288 on systemd ≥ 240) applies: containers get sane limits
/// and containerd raises its own soft limit itself (runtime-facts §2.1, containerd-2.0.md).
fn limit_nofile(v: &Version) -> Option<&'static str> {
    if v.major >= 2 {
        None
    } else if v.at_least(1, 5, 0) {
        Some("infinity")
    } else {
        Some("1048576")
    }
}

/// `dbus.service` joined `After=` in 1.6.37 and 1.7.24 (runtime-facts §2.1): with the systemd
/// cgroup driver containerd talks to systemd over D-Bus, and at shutdown D-Bus must outlive it.
fn orders_after_dbus(v: &Version) -> bool {
    match v.minor_line() {
        (1, 6) => v.at_least(1, 6, 37),
        (1, 7) => v.at_least(1, 7, 24),
        (1, m) => m > 7,
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn unit(ctr: &str) -> String {
        text(&render(&profile("1.30.2", ctr, "")), PATH).to_owned()
    }

    #[test]
    fn follows_the_upstream_unit_of_each_line() {
        let u = unit("1.4.4");
        assert!(u.contains("LimitNOFILE=1048576\n"));
        assert!(u.contains(&format!("After={EARLY_AFTER}\n")));
        assert!(unit("1.5.0").contains("LimitNOFILE=infinity\n"));
        assert!(!unit("1.6.36").contains("dbus.service"));
        assert!(unit("1.6.37").contains(&format!("After={EARLY_AFTER} dbus.service\n")));
        assert!(!unit("1.7.23").contains("dbus.service"));
        assert!(unit("1.7.24").contains("dbus.service"));
        let u2 = unit("2.0.7");
        assert!(!u2.contains("LimitNOFILE"), "{u2}");
        assert!(u2.contains("ExecStart=/usr/local/bin/containerd\n"));
        assert!(unit("2.2.1").contains(&format!("After={EARLY_AFTER} dbus.service\n")));
        for line in ["Type=notify", "Delegate=yes", "KillMode=process", "ExecStartPre=-/sbin/modprobe overlay"] {
            assert!(u.contains(&format!("{line}\n")), "{line}");
        }
    }

    #[test]
    fn starts_before_cloud_init_is_done_and_still_stops_at_shutdown() {
        for v in ["1.4.4", "1.7.27", "2.2.1"] {
            let u = unit(v);
            // Neither basic.target (the default dependencies) nor network.target: on a
            // cloud-init node both wait for cloud-init's first two stages.
            assert!(u.contains("DefaultDependencies=no\n"), "{v}: {u}");
            assert!(!u.contains("network.target"), "{v}: {u}");
            // Still before the join (cloud-final is after multi-user.target), and stopped at
            // shutdown as the default dependencies would.
            assert!(u.contains("Before=multi-user.target shutdown.target\n"), "{v}: {u}");
            assert!(u.contains("Conflicts=shutdown.target\n"), "{v}: {u}");
            for need in ["local-fs.target", "systemd-modules-load.service", "systemd-sysctl.service"] {
                assert!(u.lines().any(|l| l.starts_with("After=") && l.contains(need)), "{v}: {need}");
            }
        }
    }

    #[test]
    fn is_enabled() {
        let out = render(&profile("1.30.2", "1.6.20", ""));
        assert!(out.iter().any(|r| matches!(r, Rendered::Link(l)
            if l.path == "etc/systemd/system/multi-user.target.wants/containerd.service"
            && l.target == "/etc/systemd/system/containerd.service")));
    }
}
