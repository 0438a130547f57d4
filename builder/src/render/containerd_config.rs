//! `/etc/containerd/config.toml`, config schema v2 (containerd 1.x, runtime-facts §3).
//!
//! Only the keys nodeforge has an opinion on are written; everything else keeps containerd's
//! compiled-in default, which `containerd config dump` shows. Written as text rather than
//! through `toml::to_string` so that sections come in the order a reader expects and carry
//! comments, and so the file looks like the examples in containerd's own docs.

use anyhow::{Result, bail};

use super::{CERTS_D, Rendered, file, header, sandbox_image, toml_str};
use crate::compat;
use crate::profile::{CgroupDriver, Profile};

pub const PATH: &str = "etc/containerd/config.toml";
const CRI: &str = r#"plugins."io.containerd.grpc.v1.cri""#;

pub fn render(p: &Profile) -> Result<Vec<Rendered>> {
    let v = &p.containerd.version;
    let config_path = compat::registry_config_path(v);
    // containerd 1.4 has only the deprecated `registry.mirrors` table. nodeforge does not
    // render it: it cannot express `capabilities` or a `server` other than the registry, and
    // writing certs.d files that 1.4 silently ignores would be worse. A demanding user wants
    // the mismatch reported at build time, not discovered when pulls bypass the mirror.
    if !config_path && !p.registry.mirrors.is_empty() {
        bail!(
            "profile `{}`: registry mirrors are rendered as config_path + certs.d/<host>/hosts.toml, \
             which containerd {v} does not read (added in 1.5); remove [[registry.mirror]] or use \
             containerd 1.5 or newer",
            p.name
        );
    }
    let systemd = p.node.cgroup_driver == CgroupDriver::Systemd;

    let mut t = header("#", p);
    t.push_str(
        "\n# Schema v2: containerd 1.x reads fully qualified plugin IDs only with it (v1 would\n\
         # silently ignore every section below).\n\
         version = 2\n\n\
         # Without this a CRI section that fails to load leaves containerd running without CRI,\n\
         # and the kubelet sees only a missing socket; with it containerd refuses to start.\n\
         required_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n",
    );
    t.push_str(&format!("[{CRI}]\n  sandbox_image = {}\n\n", toml_str(&sandbox_image(p).to_string())));
    t.push_str(&format!("[{CRI}.containerd]\n  default_runtime_name = \"runc\"\n\n"));
    t.push_str(&format!("[{CRI}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n"));
    t.push_str(&format!(
        "[{CRI}.containerd.runtimes.runc.options]\n\
         \x20 # Must agree with the kubelet's cgroup driver (node.cgroup_driver = \"{}\").\n\
         \x20 SystemdCgroup = {systemd}\n\n",
        p.node.cgroup_driver
    ));
    t.push_str(&format!(
        "[{CRI}.cni]\n\
         \x20 bin_dir = \"/opt/cni/bin\"\n\
         \x20 conf_dir = \"/etc/cni/net.d\"\n\
         \x20 # Only the first conflist (by name) is used: 10-containerd-net.conflist.\n\
         \x20 max_conf_num = 1\n"
    ));
    if config_path {
        // Always set, even without mirrors, so hosts.toml files added later take effect
        // without touching this file (containerd re-reads them on every pull).
        t.push_str(&format!("\n[{CRI}.registry]\n  config_path = {}\n", toml_str(CERTS_D)));
    }
    Ok(vec![file(PATH, 0o644, t, "containerd-config")])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn parsed(p: &Profile) -> toml::Table {
        let out = render(p).unwrap();
        toml::from_str(text(&out, PATH)).unwrap()
    }

    fn cri(t: &toml::Table) -> &toml::Table {
        t["plugins"]["io.containerd.grpc.v1.cri"].as_table().unwrap()
    }

    #[test]
    fn v2_schema_with_required_cri() {
        let t = parsed(&profile("1.30.2", "1.6.20", ""));
        assert_eq!(t["version"].as_integer(), Some(2));
        assert_eq!(t["required_plugins"].as_array().unwrap()[0].as_str(), Some("io.containerd.grpc.v1.cri"));
        let c = cri(&t);
        assert_eq!(c["containerd"]["default_runtime_name"].as_str(), Some("runc"));
        assert_eq!(c["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(c["cni"]["max_conf_num"].as_integer(), Some(1));
        assert_eq!(c["registry"]["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        assert!(c["registry"].get("mirrors").is_none());
    }

    #[test]
    fn pause_image_defaults_to_kubeadms() {
        let t = parsed(&profile("1.30.2", "1.6.20", ""));
        assert_eq!(cri(&t)["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.9"));
        let t = parsed(&profile("1.30.2", "1.6.20", "[node]\nsandbox_image = \"pause:3.9\"\n"));
        assert_eq!(cri(&t)["sandbox_image"].as_str(), Some("docker.io/library/pause:3.9"));
    }

    #[test]
    fn systemd_cgroup_follows_the_profile() {
        for (driver, want) in [("systemd", true), ("cgroupfs", false)] {
            let t = parsed(&profile("1.30.2", "1.7.27", &format!("[node]\ncgroup_driver = \"{driver}\"\n")));
            let opts = &cri(&t)["containerd"]["runtimes"]["runc"]["options"];
            assert_eq!(opts["SystemdCgroup"].as_bool(), Some(want), "{driver}");
        }
    }

    #[test]
    fn containerd_1_4_gets_no_config_path_and_refuses_mirrors() {
        let t = parsed(&profile("1.14.10", "1.4.4", ""));
        assert!(cri(&t).get("registry").is_none());
        let m = "[[registry.mirror]]\nhost = \"docker.io\"\nendpoints = [\"https://m.example\"]\n";
        let err = render(&profile("1.14.10", "1.4.4", m)).unwrap_err().to_string();
        assert!(err.contains("1.5") && err.contains("[[registry.mirror]]"), "{err}");
        assert!(render(&profile("1.20.0", "1.5.0", m)).is_ok());
    }
}
