//! The run's initrd: the built initrd (in netboot mode: the root filesystem cpio plus the
//! overlay cpio), then one more gzip'd newc cpio that carries the agent.
//!
//! The extra archive uses the initramfs AGENT HOOK of nodeforge's `/init`: whatever is under
//! `/nodeforge/` (except `units/`) is copied to `/run/nodeforge/` of the booted root, and
//! `/nodeforge/units/` to `/run/systemd/system/`. `/run` is a tmpfs, so the disk, the seed and
//! the user-data stay exactly as built; the agent exists only for this boot.
//!
//! Layout appended:
//! ```text
//! /nodeforge/agent                                                  0755  the agent binary
//! /nodeforge/expect.json                                            0644  Expect (nodeforge-wire)
//! /nodeforge/units/nodeforge-agent.service                          0644
//! /nodeforge/units/kubelet.service                                  0644  stand-in, never starts;
//!                                                                         only for a node without
//!                                                                         its own kubelet unit
//! /nodeforge/units/multi-user.target.wants/nodeforge-agent.service  -> ../nodeforge-agent.service
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use nodeforge::archive::write_cpio;
use nodeforge::io::{HashingReader, Interrupt};
use nodeforge::overlay::{Content, Origin, Overlay};

use crate::protocol::Expect;

/// The guest agent's unit: it starts the agent once the filesystems are mounted and the
/// harness's port is there, without waiting for basic.target (cloud-init's first stages).
pub const AGENT_UNIT: &str = include_str!("../../overlays/test-vm/nodeforge-agent.service");
/// Where [`AGENT_UNIT`] lives in the repository, as the archive's manifest names it.
pub const AGENT_UNIT_SOURCE: &str = "overlays/test-vm/nodeforge-agent.service";

/// Shaped like the base unit of the kubeadm/kubelet packages, so systemd merges nodeforge's
/// kubelet drop-in onto it and the agent can read the result with `systemctl cat`/`show`.
/// No kubelet is installable here: the condition keeps the unit from ever starting (a
/// skipped condition is not a failure), and it is not enabled.
pub const KUBELET_STUB_UNIT: &str = include_str!("../../overlays/test-vm/kubelet.service");
/// Where [`KUBELET_STUB_UNIT`] lives in the repository.
pub const KUBELET_STUB_UNIT_SOURCE: &str = "overlays/test-vm/kubelet.service";

/// Whether the node brings its own kubelet: a profile with a kubelet binary renders
/// kubelet.service, which a unit in /run/systemd/system would shadow.
pub fn node_has_kubelet(profile: &nodeforge::profile::Profile) -> bool {
    profile.kubernetes.binaries.as_ref().is_some_and(|b| b.kubelet.is_some())
}

/// The archive's entries as a nodeforge overlay, so it is written by the same deterministic
/// cpio writer as the node overlay itself. `stub_kubelet` adds the stand-in kubelet unit, for
/// nodes that have no kubelet of their own.
pub fn agent_overlay(agent: &Path, expect: &Expect, stub_kubelet: bool) -> Result<Overlay> {
    let file =
        File::open(agent).with_context(|| format!("the agent binary {} (pass --agent PATH)", agent.display()))?;
    let mut hashing = HashingReader::new(file);
    io::copy(&mut hashing, &mut io::sink()).with_context(|| format!("reading {}", agent.display()))?;
    let (sha256, size) = hashing.finish();
    let origin = |what: &str| Origin::Static { source: format!("test-vm:{what}") };
    let mut o = Overlay::new();
    let on_disk = Content::OnDisk { path: agent.to_owned(), size, sha256 };
    o.add_file("nodeforge/agent", 0o755, on_disk, origin("agent"))?;
    let mut json = serde_json::to_vec_pretty(expect).context("serialising expect.json")?;
    json.push(b'\n');
    o.add_file("nodeforge/expect.json", 0o644, Content::Inline(json), origin("expect"))?;
    let unit = |text: &str| Content::Inline(text.as_bytes().to_vec());
    let file_origin = |source: &str| Origin::Static { source: source.to_owned() };
    o.add_file("nodeforge/units/nodeforge-agent.service", 0o644, unit(AGENT_UNIT), file_origin(AGENT_UNIT_SOURCE))?;
    if stub_kubelet {
        let stub = unit(KUBELET_STUB_UNIT);
        o.add_file("nodeforge/units/kubelet.service", 0o644, stub, file_origin(KUBELET_STUB_UNIT_SOURCE))?;
    }
    o.add_symlink(
        "nodeforge/units/multi-user.target.wants/nodeforge-agent.service",
        "../nodeforge-agent.service",
        origin("unit"),
    )?;
    Ok(o)
}

/// Write `overlay` as a gzip'd newc cpio to `dest`.
pub fn write_cpio_gz(overlay: &Overlay, dest: &Path) -> Result<()> {
    let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let gz = GzEncoder::new(BufWriter::new(file), Compression::fast());
    // Fixed mtime: this archive lives for one boot, and nothing reads its times.
    let gz = write_cpio(overlay, gz, 0, &Interrupt::default())?;
    let mut out = gz.finish().with_context(|| format!("writing {}", dest.display()))?;
    out.flush().with_context(|| format!("writing {}", dest.display()))
}

/// Concatenate `parts` into `dest`, each starting on a 4-byte boundary: the kernel unpacks
/// concatenated (compressed) cpio archives in order, later files winning, and skips the
/// zero padding between them.
pub fn concatenate(parts: &[PathBuf], dest: &Path) -> Result<u64> {
    let mut out = BufWriter::new(File::create(dest).with_context(|| format!("creating {}", dest.display()))?);
    let mut total = 0u64;
    for part in parts {
        let mut f = File::open(part).with_context(|| format!("opening {}", part.display()))?;
        total += io::copy(&mut f, &mut out).with_context(|| format!("copying {}", part.display()))?;
        let pad = (4 - total % 4) % 4;
        out.write_all(&[0u8; 3][..pad as usize])?;
        total += pad;
    }
    out.flush().with_context(|| format!("writing {}", dest.display()))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{default_stage_timeouts, expectations};
    use crate::protocol::AGENT_PORT;

    #[test]
    fn agent_archive_has_the_hook_layout() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let e = Expect {
            stage_timeouts_s: default_stage_timeouts(),
            ..expectations(&nodeforge::profile::Profile::parse(PROFILE).unwrap())
        };
        let without = agent_overlay(&agent, &e, false).unwrap();
        assert!(without.iter().all(|(p, _)| !p.absolute().ends_with("kubelet.service")));
        let o = agent_overlay(&agent, &e, true).unwrap();
        let paths: Vec<String> = o.iter().map(|(p, _)| p.absolute()).collect();
        assert_eq!(
            paths,
            [
                "/nodeforge",
                "/nodeforge/agent",
                "/nodeforge/expect.json",
                "/nodeforge/units",
                "/nodeforge/units/kubelet.service",
                "/nodeforge/units/multi-user.target.wants",
                "/nodeforge/units/multi-user.target.wants/nodeforge-agent.service",
                "/nodeforge/units/nodeforge-agent.service",
            ]
        );
        let cpio = dir.path().join("a.cpio.gz");
        write_cpio_gz(&o, &cpio).unwrap();
        let odd = dir.path().join("odd");
        std::fs::write(&odd, b"12345").unwrap();
        let n = concatenate(&[odd, cpio.clone()], &dir.path().join("all")).unwrap();
        assert_eq!(n % 4, 0);
        let bytes = std::fs::read(dir.path().join("all")).unwrap();
        assert_eq!(&bytes[5..8], &[0, 0, 0], "padding before the next archive");
        assert_eq!(&bytes[8..10], &[0x1f, 0x8b], "gzip member starts aligned");
    }

    #[test]
    fn the_agent_unit_waits_for_the_port_the_harness_gives() {
        // systemd's name for /dev/virtio-ports/<AGENT_PORT> (`systemd-escape --path`).
        let device = format!("dev-virtio\\x2dports-{}.device", AGENT_PORT.replace('-', "\\x2d"));
        let line = |key: &str| AGENT_UNIT.lines().find(|l| l.starts_with(key)).unwrap_or_default();
        assert!(line("Wants=").split(' ').any(|u| u.trim_start_matches("Wants=") == device), "{device}");
        assert!(line("After=").split(' ').any(|u| u == device), "{device}");
        // Without the default dependencies, multi-user.target (and cloud-final, the join,
        // after it) waits for the agent's READY only if the unit says so.
        assert!(line("DefaultDependencies=") == "DefaultDependencies=no");
        assert!(line("Before=").split(' ').any(|u| u.trim_start_matches("Before=") == "multi-user.target"));
    }

    const PROFILE: &str = "name = \"t\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.6.20\"\n\
        [containerd.bundle]\nsha256 = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n";
}
