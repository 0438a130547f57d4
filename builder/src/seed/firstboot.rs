//! First boot from the seed: what turns a stock Debian/Ubuntu cloud image into a node without
//! rebuilding the image. The seed volume carries `overlay.tar.gz`; `runcmd` finds the volume
//! by its label, unpacks the overlay at `/`, lets systemd see the new units, modules and
//! sysctls, starts containerd and waits for the image import, and only then joins.
//!
//! Every line runs under `set -eu` (the first runcmd entry), so a failing step stops the rest
//! and cloud-init reports the run as failed instead of joining a half-made node.

use crate::archive::TAR_GZ_NAME;
use crate::profile::Profile;
use crate::render::preload;

use super::Command;

/// Where the seed volume is mounted while the overlay is unpacked.
const MOUNT: &str = "/run/nodeforge-seed";

/// The runcmd lines. `unpack` adds the overlay steps (`--first-boot`); `join` the kubeadm
/// join (see [`super::join::Join::command`]). Without either there is nothing to run.
pub fn runcmd(profile: &Profile, unpack: bool, join: Option<String>) -> Vec<Command> {
    if !unpack && join.is_none() {
        return Vec::new();
    }
    let mut lines = vec!["set -eu".to_owned()];
    if unpack {
        lines.extend([
            // NoCloud accepts the label in either case (runtime-facts §6.1); blkid -t matches
            // exactly, hence two probes.
            "dev=$(blkid -l -o device -t LABEL=cidata || blkid -l -o device -t LABEL=CIDATA)".to_owned(),
            format!("mkdir -p {MOUNT}"),
            format!("mount -o ro \"$dev\" {MOUNT}"),
            // --no-overwrite-dir keeps the image's directory modes and owners, and
            // --keep-directory-symlink its merged-/usr links (/lib -> usr/lib).
            format!("tar --no-overwrite-dir --keep-directory-symlink -xzf {MOUNT}/{TAR_GZ_NAME} -C /"),
            format!("umount {MOUNT}"),
            "systemctl daemon-reload".to_owned(),
            // The overlay's modules-load.d and sysctl.d take effect now, not at the next boot.
            "systemctl restart systemd-modules-load.service systemd-sysctl.service".to_owned(),
        ]);
    }
    // containerd must be up and the preloaded images in before kubeadm (or the kubelet) looks
    // for them. `systemctl start` of the oneshot import unit returns when it has finished
    // (or at once if its stamp says the images are in), and fails if the import failed.
    // After an unpack, a containerd already running (a disk that was a node before) is the
    // old binary on the old config: restart it.
    if unpack {
        lines.push("systemctl enable containerd.service".to_owned());
        lines.push("systemctl restart containerd.service".to_owned());
    } else {
        lines.push("systemctl enable --now containerd.service".to_owned());
    }
    if !profile.images.is_empty() {
        lines.push(format!("systemctl start {}", preload::UNIT));
    }
    lines.extend(join);
    lines.into_iter().map(Command::Shell).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    fn profile(images: bool) -> Profile {
        let img = if images {
            format!(
                "[[image]]\nref = \"registry.k8s.io/pause:3.9\"\nsource = \"p.tar\"\nsha256 = \"{}\"\n",
                "b".repeat(64)
            )
        } else {
            String::new()
        };
        Profile::parse(&format!(
            "name = \"n\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n{img}",
            "a".repeat(64)
        ))
        .unwrap()
    }

    fn lines(c: &[Command]) -> Vec<&str> {
        c.iter()
            .map(|c| match c {
                Command::Shell(s) => s.as_str(),
                Command::Argv(_) => panic!("argv"),
            })
            .collect()
    }

    #[test]
    fn order_is_unpack_runtime_images_join() {
        assert!(runcmd(&profile(true), false, None).is_empty());
        let all = runcmd(&profile(true), true, Some("JOIN".into()));
        let l = lines(&all);
        assert_eq!(l[0], "set -eu");
        let pos = |needle: &str| l.iter().position(|x| x.contains(needle)).unwrap();
        assert!(pos("tar --no-overwrite-dir") < pos("daemon-reload"));
        assert!(pos("daemon-reload") < pos("systemd-sysctl"));
        assert!(pos("systemd-sysctl") < pos("containerd.service"));
        assert!(l.contains(&"systemctl restart containerd.service"), "{l:?}");
        assert!(pos("containerd.service") < pos(preload::UNIT));
        assert_eq!(l.last(), Some(&"JOIN"));

        let no_images = runcmd(&profile(false), false, Some("JOIN".into()));
        assert_eq!(lines(&no_images), ["set -eu", "systemctl enable --now containerd.service", "JOIN"]);
    }
}
