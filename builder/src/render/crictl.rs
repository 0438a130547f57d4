//! `/etc/crictl.yaml`: point crictl at containerd, so it never probes the dockershim socket
//! first (which old crictl versions do, printing warnings on every call).

use super::{CONTAINERD_SOCKET, Rendered, file, header};
use crate::profile::Profile;

pub const PATH: &str = "etc/crictl.yaml";

/// Seconds; crictl's default of 2 is short for a first image pull status on a slow node.
const TIMEOUT_SECONDS: u32 = 10;

pub fn render(p: &Profile) -> Vec<Rendered> {
    let text = format!(
        "{}runtime-endpoint: {CONTAINERD_SOCKET}\nimage-endpoint: {CONTAINERD_SOCKET}\ntimeout: {TIMEOUT_SECONDS}\n",
        header("#", p)
    );
    vec![file(PATH, 0o644, text, "crictl")]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    #[test]
    fn both_endpoints_are_containerd() {
        let out = render(&profile("1.30.2", "1.6.20", ""));
        let t = text(&out, PATH);
        assert!(t.contains("runtime-endpoint: unix:///run/containerd/containerd.sock\n"));
        assert!(t.contains("image-endpoint: unix:///run/containerd/containerd.sock\n"));
    }
}
