//! The per-component releases: containerd's own archive, the CNI plugins, crictl, and the
//! single-file downloads (runc, the Kubernetes binaries).
//!
//! The archives get the same treatment as the bundle ([`super::select_bundle`]): every entry
//! passes the [`EntryGuard`](super::EntryGuard) before anything is kept, the first bad entry refuses the whole
//! archive, and every installed file must be an ELF executable for the node's architecture.
//! Only the mapping from archive member to node path differs per component (runtime-facts
//! §1.5 lists the layouts).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::walk::walk;
use super::{Limits, SelectedFile, Selection, check_elf};
use crate::io::Interrupt;
use crate::overlay::OverlayPath;
use crate::profile::{Arch, Extra};

/// What to select from one component archive.
#[derive(Debug, Clone)]
pub struct ComponentRequest<'a> {
    /// The archive's file name, for messages.
    pub name: &'a str,
    pub arch: Arch,
    /// Optional members asked for (`containerd-stress`); other extras mean nothing here.
    pub extras: BTreeSet<Extra>,
}

/// Where one archive member goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// Installed at this overlay path, mode 0755, after the ELF check.
    Install(String),
    /// Left out, and listed in the build report's `skipped`.
    Skip,
}

/// The binaries of containerd's `bin/` a node runs. `containerd-shim` and
/// `containerd-shim-runc-v1` exist in 1.x archives only and are installed when present.
const CONTAINERD_BINARIES: &[&str] =
    &["containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2", "ctr"];
const CONTAINERD_REQUIRED: &[&str] = &["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"];

/// The plugins the rendered conflist and containerd's CRI plugin call: bridge with
/// host-local IPAM, portmap, and loopback for every sandbox.
const CNI_REQUIRED: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
/// Documentation the CNI release carries since v1.5.0; not installed.
const CNI_DOCS: &[&str] = &["README.md", "LICENSE"];

fn containerd_place(member: &str, extras: &BTreeSet<Extra>) -> Place {
    match member.strip_prefix("bin/") {
        Some(b) if CONTAINERD_BINARIES.contains(&b) => Place::Install(format!("usr/local/bin/{b}")),
        Some("containerd-stress") if extras.contains(&Extra::ContainerdStress) => {
            Place::Install("usr/local/bin/containerd-stress".into())
        }
        _ => Place::Skip,
    }
}

/// Every plugin at the archive's root is installed, as the bundle path installs every file of
/// its `opt/cni/bin/`: which plugins a cluster's network add-on calls (a meta plugin such as
/// `bandwidth`, `tuning`, `firewall`) is not known here, and a missing one fails pods late.
fn cni_place(member: &str) -> Place {
    if member.contains('/') || CNI_DOCS.contains(&member) {
        Place::Skip
    } else {
        Place::Install(format!("opt/cni/bin/{member}"))
    }
}

fn crictl_place(member: &str) -> Place {
    if member == "crictl" { Place::Install("usr/local/bin/crictl".into()) } else { Place::Skip }
}

/// containerd's release archive (`bin/` layout) → `/usr/local/bin`.
pub fn select_containerd(
    archive: &Path,
    req: &ComponentRequest<'_>,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<Selection> {
    let sel = select_archive(archive, req, staging, limits, interrupt, |m| containerd_place(m, &req.extras))?;
    require(
        &sel,
        CONTAINERD_REQUIRED,
        req.name,
        "containerd's release archive (containerd-<version>-linux-<arch>.tar.gz)",
    )?;
    Ok(sel)
}

/// The CNI plugins release (`./bridge`, `./host-local`, …) → `/opt/cni/bin`.
pub fn select_cni_plugins(
    archive: &Path,
    req: &ComponentRequest<'_>,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<Selection> {
    let sel = select_archive(archive, req, staging, limits, interrupt, cni_place)?;
    require(&sel, CNI_REQUIRED, req.name, "the CNI plugins release (cni-plugins-linux-<arch>-v<version>.tgz)")?;
    Ok(sel)
}

/// cri-tools' crictl archive (one `crictl` at the root) → `/usr/local/bin/crictl`.
pub fn select_crictl(
    archive: &Path,
    req: &ComponentRequest<'_>,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
) -> Result<Selection> {
    let sel = select_archive(archive, req, staging, limits, interrupt, crictl_place)?;
    require(&sel, &["crictl"], req.name, "crictl's release archive (crictl-v<version>-linux-<arch>.tar.gz)")?;
    Ok(sel)
}

/// A download that is itself the binary (runc, kubelet, kubeadm, kubectl): at most
/// `limits.max_file_bytes`, and an ELF executable for `arch`. `name` is the download's file
/// name, for messages.
pub fn check_binary(path: &Path, name: &str, arch: Arch, limits: Limits) -> Result<()> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if size > limits.max_file_bytes {
        bail!("{name} is {size} bytes, larger than the limit of {} bytes for a single binary", limits.max_file_bytes);
    }
    check_elf(path, arch, name)
}

fn require(sel: &Selection, required: &[&str], name: &str, expected: &str) -> Result<()> {
    let kept: BTreeSet<&str> = sel.files.iter().map(|f| f.member.as_str()).collect();
    let missing: Vec<&str> = required.iter().copied().filter(|m| !kept.contains(m)).collect();
    if !missing.is_empty() {
        bail!("{name} lacks {}: is it {expected}?", missing.join(", "));
    }
    Ok(())
}

/// Stream one verified component archive, checking every entry, and stage the members
/// `place` installs as files under `staging` (a directory the caller owns, one per archive).
fn select_archive(
    archive: &Path,
    req: &ComponentRequest<'_>,
    staging: &Path,
    limits: Limits,
    interrupt: &Interrupt,
    place: impl Fn(&str) -> Place,
) -> Result<Selection> {
    let name = req.name;
    let mut sel = Selection::default();
    let mut installed = BTreeSet::new();

    walk(archive, name, staging, limits, interrupt, |w, member, entry| {
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            return Ok(());
        }
        let dest = match place(&member) {
            Place::Skip => {
                sel.skipped.push(format!("{name}: {member}"));
                return Ok(());
            }
            Place::Install(dest) => dest,
        };
        // `./crictl` and `crictl` normalise alike and the guard refuses the second; two
        // members mapped to one node path would be a mapping bug, refused all the same.
        if !installed.insert(dest.clone()) {
            bail!("{name}: more than one member would be installed as /{dest}");
        }
        let staged = if kind.is_file() {
            w.stage(&member, entry).map_err(|e| e.context(format!("{name}: {member}")))?
        } else if kind.is_hard_link() {
            w.link(&member, entry)?
        } else {
            bail!("{name}: `{member}` is a symlink; nodeforge installs it only as a regular file");
        };
        check_elf(&staged.path, req.arch, &format!("{name}: {member}"))?;
        sel.files.push(SelectedFile {
            path: OverlayPath::new(&dest)?,
            // Set here, never taken from the archive: no setuid bit survives.
            mode: 0o755,
            content: staged.content(),
            member,
        });
        Ok(())
    })?;
    Ok(sel)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    #[test]
    fn containerd_members_map_to_usr_local_bin() {
        let none = BTreeSet::new();
        assert_eq!(containerd_place("bin/ctr", &none), Place::Install("usr/local/bin/ctr".into()));
        assert_eq!(
            containerd_place("bin/containerd-shim-runc-v1", &none),
            Place::Install("usr/local/bin/containerd-shim-runc-v1".into())
        );
        assert_eq!(containerd_place("bin/containerd-stress", &none), Place::Skip);
        assert_eq!(containerd_place("ctr", &none), Place::Skip);
        assert_eq!(containerd_place("bin/x/ctr", &none), Place::Skip);
        let stress: BTreeSet<_> = [Extra::ContainerdStress].into();
        assert_eq!(
            containerd_place("bin/containerd-stress", &stress),
            Place::Install("usr/local/bin/containerd-stress".into())
        );
    }

    #[test]
    fn cni_installs_root_plugins_but_not_docs() {
        assert_eq!(cni_place("bandwidth"), Place::Install("opt/cni/bin/bandwidth".into()));
        assert_eq!(cni_place("README.md"), Place::Skip);
        assert_eq!(cni_place("LICENSE"), Place::Skip);
        assert_eq!(cni_place("sub/bridge"), Place::Skip);
        assert_eq!(crictl_place("crictl"), Place::Install("usr/local/bin/crictl".into()));
        assert_eq!(crictl_place("critest"), Place::Skip);
    }
}
