//! First-boot image import: `nodeforge-preload-images.service` (runtime-facts §8).
//!
//! containerd has no directory it imports from at start, so a oneshot unit runs
//! `ctr -n k8s.io images import` (the namespace CRI sees) on each archive the build placed
//! at [`image_archive_path`], then pins the sandbox image the way a CRI pull would.
//!
//! Plain `ExecStart=` lines, not a script: each step is visible in the unit and in
//! `systemctl status`, a failing step stops the rest, and there is no shell quoting to get
//! wrong (every argument is a validated reference or a sanitised path).
//!
//! Idempotence: the last step writes a stamp named by a digest of the image list, and
//! `ConditionPathExists=!stamp` skips the unit once these exact archives are in. A failed
//! import leaves no stamp, so the next boot tries again; a rebuilt overlay with different
//! images has a different stamp and imports again.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

use super::{Rendered, enable_link, file, header, image_archive_path, sandbox_image};
use crate::profile::Profile;

pub const UNIT: &str = "nodeforge-preload-images.service";
pub const PATH: &str = "etc/systemd/system/nodeforge-preload-images.service";
const RENDERER: &str = "preload";
const CTR: &str = "/usr/local/bin/ctr";

pub fn render(p: &Profile) -> Result<Vec<Rendered>> {
    if p.images.is_empty() {
        return Ok(vec![]);
    }
    let mut refs = BTreeSet::new();
    for img in &p.images {
        if !refs.insert(img.reference.to_string()) {
            bail!(
                "profile `{}`: image `{}` is preloaded twice; keep one [[image]] per reference",
                p.name,
                img.reference
            );
        }
    }
    let stamp = format!("/var/lib/nodeforge/preload-{}.done", stamp_id(p));
    let mut exec = String::new();
    for img in &p.images {
        exec.push_str(&format!(
            "ExecStart={CTR} --namespace k8s.io images import /{}\n",
            image_archive_path(&img.reference)
        ));
    }
    // An imported image lacks the pin label CRI adds when it pulls the sandbox image
    // itself; without it kubelet ≥ 1.29 may garbage-collect pause under disk pressure.
    let sandbox = sandbox_image(p);
    if p.images.iter().any(|i| i.reference == sandbox) {
        exec.push_str(&format!(
            "ExecStart={CTR} --namespace k8s.io images label {sandbox} io.cri-containerd.pinned=pinned\n"
        ));
    }
    exec.push_str(&format!("ExecStart=/usr/bin/touch {stamp}\n"));

    let text = format!(
        "{header}
[Unit]
Description=Import the container images nodeforge preloaded into containerd
# containerd is Type=notify: once it is started its socket accepts connections. Like
# containerd, the import does not wait for basic.target (cloud-init's first stages).
DefaultDependencies=no
Requires=containerd.service
After=containerd.service local-fs.target
# The kubelet must find the images (above all the pause image) already in place, and the
# join (cloud-final, after multi-user.target) too.
Before=kubelet.service multi-user.target shutdown.target
Conflicts=shutdown.target
# Not After=cloud-final.service: Debian orders cloud-final after multi-user.target, and with
# WantedBy=multi-user.target below that would be an ordering cycle systemd breaks at random.
ConditionPathExists=!{stamp}

[Service]
Type=oneshot
RemainAfterExit=yes
# Importing and unpacking large images on a slow disk can take minutes; a hung import must
# still end eventually and let the boot continue.
TimeoutStartSec=30min
{exec}
[Install]
WantedBy=multi-user.target
",
        header = header("#", p)
    );
    Ok(vec![file(PATH, 0o644, text, RENDERER), enable_link(UNIT, RENDERER)])
}

/// 16 hex digits of a digest over the sorted (reference, archive digest) pairs: the same
/// images give the same stamp whatever their order in the profile.
fn stamp_id(p: &Profile) -> String {
    let lines: BTreeSet<String> = p.images.iter().map(|i| format!("{} {}\n", i.reference, i.sha256)).collect();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn image(r: &str, digest: char) -> String {
        format!("[[image]]\nref = \"{r}\"\nsource = \"x.tar\"\nsha256 = \"{}\"\n", digest.to_string().repeat(64))
    }

    #[test]
    fn nothing_without_images() {
        assert!(render(&profile("1.30.2", "1.6.20", "")).unwrap().is_empty());
    }

    #[test]
    fn imports_pins_and_stamps() {
        let extra =
            format!("{}{}", image("registry.k8s.io/pause:3.9", 'a'), image("docker.io/library/busybox:1.36", 'b'));
        let out = render(&profile("1.30.2", "1.6.20", &extra)).unwrap();
        let u = text(&out, PATH);
        let pause = image_archive_path(&"registry.k8s.io/pause:3.9".parse().unwrap());
        assert!(
            u.contains(&format!("ExecStart=/usr/local/bin/ctr --namespace k8s.io images import /{pause}\n")),
            "{u}"
        );
        assert!(u.contains("images label registry.k8s.io/pause:3.9 io.cri-containerd.pinned=pinned\n"));
        assert!(u.contains("Before=kubelet.service multi-user.target shutdown.target\n"), "{u}");
        assert!(u.contains("Requires=containerd.service\n") && u.contains("DefaultDependencies=no\n"), "{u}");
        let directives: Vec<_> = u.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!directives.iter().any(|l| l.contains("cloud-final")), "{u}");
        let stamp = u.lines().find_map(|l| l.strip_prefix("ConditionPathExists=!")).unwrap();
        assert!(u.trim_end().contains(&format!("ExecStart=/usr/bin/touch {stamp}")));
        assert!(
            out.iter()
                .any(|r| r.path() == "etc/systemd/system/multi-user.target.wants/nodeforge-preload-images.service")
        );

        // The stamp follows the image set, not its order.
        let swapped =
            format!("{}{}", image("docker.io/library/busybox:1.36", 'b'), image("registry.k8s.io/pause:3.9", 'a'));
        let p2 = profile("1.30.2", "1.6.20", &swapped);
        assert_eq!(stamp_id(&p2), stamp_id(&profile("1.30.2", "1.6.20", &extra)));
        let changed =
            format!("{}{}", image("docker.io/library/busybox:1.36", 'c'), image("registry.k8s.io/pause:3.9", 'a'));
        assert_ne!(stamp_id(&profile("1.30.2", "1.6.20", &changed)), stamp_id(&p2));
    }

    #[test]
    fn no_pin_when_pause_is_not_preloaded_and_duplicates_fail() {
        let out = render(&profile("1.30.2", "1.6.20", &image("docker.io/library/busybox:1.36", 'b'))).unwrap();
        assert!(!text(&out, PATH).contains("images label"));
        let twice = format!("{}{}", image("busybox:1.36", 'b'), image("docker.io/library/busybox:1.36", 'c'));
        assert!(render(&profile("1.30.2", "1.6.20", &twice)).unwrap_err().to_string().contains("twice"));
    }
}
