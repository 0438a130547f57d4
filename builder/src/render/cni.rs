//! `/etc/cni/net.d/10-containerd-net.conflist`: the bridge network containerd's bundle
//! installs (runtime-facts §2.2), with the profile's pod subnet.
//!
//! IPv4 only: the profile has one IPv4 subnet, and an IPv6 range the node cannot route
//! would only give pods addresses that lead nowhere. Serialised from structs (not a
//! `json!` map) so the key order is fixed by the code, whatever serde_json features other
//! crates switch on.

use anyhow::{Result, bail};
use serde::Serialize;

use super::{Rendered, file};
use crate::compat;
use crate::profile::Profile;

pub const PATH: &str = "etc/cni/net.d/10-containerd-net.conflist";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList {
    cni_version: &'static str,
    name: &'static str,
    plugins: (Bridge, PortMap),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bridge {
    #[serde(rename = "type")]
    kind: &'static str,
    bridge: &'static str,
    is_gateway: bool,
    ip_masq: bool,
    promisc_mode: bool,
    ipam: Ipam,
}

#[derive(Serialize)]
struct Ipam {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: Vec<Vec<Range>>,
    routes: Vec<Route>,
}

#[derive(Serialize)]
struct Range {
    subnet: String,
}

#[derive(Serialize)]
struct Route {
    dst: &'static str,
}

#[derive(Serialize)]
struct PortMap {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: PortMapCaps,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PortMapCaps {
    port_mappings: bool,
}

pub fn render(p: &Profile) -> Result<Vec<Rendered>> {
    let net = p.node.cni_subnet;
    // host-local refuses a subnet with host bits set; say so now, with the fix.
    if net.addr() != net.network() {
        bail!("profile `{}`: node.cni_subnet {net} has host bits set; did you mean {}?", p.name, net.trunc());
    }
    // The gateway (cni0) takes one address; /31 and /32 leave none for pods.
    if net.prefix_len() > 30 {
        bail!("profile `{}`: node.cni_subnet {net} is too small for a gateway and pods; use /30 or larger", p.name);
    }
    let conf = ConfList {
        cni_version: compat::cni_conf_version(&p.containerd.version),
        name: "containerd-net",
        plugins: (
            Bridge {
                kind: "bridge",
                bridge: "cni0",
                // The bridge plugin turns on ip_forward itself when it is the gateway.
                is_gateway: true,
                ip_masq: true,
                // Lets a pod reach itself through a Service (hairpin) on the bridge.
                promisc_mode: true,
                ipam: Ipam {
                    kind: "host-local",
                    ranges: vec![vec![Range { subnet: net.to_string() }]],
                    routes: vec![Route { dst: "0.0.0.0/0" }],
                },
            },
            PortMap { kind: "portmap", capabilities: PortMapCaps { port_mappings: true } },
        ),
    };
    // JSON has no comments, so this file carries no generated-by header; the manifest
    // records its origin.
    let mut text = serde_json::to_string_pretty(&conf)?;
    text.push('\n');
    Ok(vec![file(PATH, 0o644, text, "cni")])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn conf(ctr: &str, extra: &str) -> serde_json::Value {
        let out = render(&profile("1.30.2", ctr, extra)).unwrap();
        serde_json::from_str(text(&out, PATH)).unwrap()
    }

    #[test]
    fn subnet_and_version_come_from_the_profile() {
        let c = conf("1.6.20", "[node]\ncni_subnet = \"10.244.0.0/24\"\n");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["plugins"][0]["bridge"], "cni0");
        assert_eq!(c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.0.0/24");
        assert_eq!(c["plugins"][0]["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(conf("1.4.4", "")["cniVersion"], "0.4.0");
        assert_eq!(conf("1.4.4", "")["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
    }

    #[test]
    fn bad_subnets_are_explained() {
        let err =
            render(&profile("1.30.2", "1.6.20", "[node]\ncni_subnet = \"10.88.1.0/16\"\n")).unwrap_err().to_string();
        assert!(err.contains("10.88.0.0/16"), "{err}");
        assert!(render(&profile("1.30.2", "1.6.20", "[node]\ncni_subnet = \"10.88.0.0/31\"\n")).is_err());
    }
}
