//! The command line: one subcommand, `boot`, whose flags are the run's whole configuration.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::accel::AccelChoice;

#[derive(Debug, Parser)]
#[command(name = "test-vm", version, about = "Boot nodeforge's artifacts in QEMU and check the node stage by stage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a node image (or netboot its root filesystem) and run the staged checks.
    Boot(BootConfig),
}

#[derive(Debug, Clone, Args)]
pub struct BootConfig {
    /// The kernel (`vmlinuz` from `nodeforge image`).
    #[arg(long)]
    pub kernel: PathBuf,
    /// The initrd: `initrd.img` for a disk boot, `rootfs.cpio.gz` with `--netboot`.
    #[arg(long)]
    pub initrd: PathBuf,
    /// The disk image (qcow2 or raw); attached copy-on-write, never modified.
    #[arg(long, required_unless_present = "netboot", conflicts_with = "netboot")]
    pub disk: Option<PathBuf>,
    /// Boot with the root filesystem in RAM: the initrd plus the overlay cpio.
    #[arg(long)]
    pub netboot: bool,
    /// The overlay cpio appended in netboot mode [default: overlay.cpio.gz beside --initrd].
    #[arg(long, conflicts_with = "disk")]
    pub overlay: Option<PathBuf>,
    /// The cloud-init NoCloud seed image, attached read-only.
    #[arg(long)]
    pub seed: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Limit for the whole run in seconds, on top of each stage's own limit.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Override one stage's limit: `NAME=SECONDS` (kernel, boot, cloud-init, containerd, cri,
    /// pod, kubelet-config). Repeatable.
    #[arg(long = "stage-timeout", value_name = "NAME=SECONDS")]
    pub stage_timeouts: Vec<StageTimeout>,
    /// Under `--accel auto`, how long a KVM guest may stay silent before TCG takes over.
    #[arg(long, default_value_t = 8)]
    pub kvm_grace: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here (one testcase per stage).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Keep the serial console log here [default: in the work directory].
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    /// The guest agent binary [default: nodeforge-agent beside test-vm].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// The build's manifest.json [default: beside --disk, else beside --initrd].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Keep the per-run work directory (overlay disk, initrd, logs).
    #[arg(long)]
    pub keep_workdir: bool,
    /// Extra kernel command-line arguments, appended.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The QEMU binary.
    #[arg(long, env = "TEST_VM_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTimeout {
    pub stage: String,
    pub seconds: u64,
}

impl FromStr for StageTimeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (stage, secs) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=SECONDS"))?;
        let seconds = secs.parse().map_err(|_| format!("`{secs}` is not a number of seconds"))?;
        Ok(Self { stage: stage.to_owned(), seconds })
    }
}

impl BootConfig {
    pub fn mode(&self) -> &'static str {
        if self.netboot { "netboot" } else { "disk" }
    }

    /// The artifacts directory nodeforge wrote: where the disk (or the initrd) is.
    fn artifacts_dir(&self) -> &Path {
        let anchor = self.disk.as_deref().unwrap_or(&self.initrd);
        anchor.parent().unwrap_or(Path::new("."))
    }

    pub fn manifest_path(&self) -> Result<PathBuf> {
        let p = self.manifest.clone().unwrap_or_else(|| self.artifacts_dir().join("manifest.json"));
        if !p.is_file() {
            bail!("no build manifest at {}: pass --manifest PATH (nodeforge's manifest.json)", p.display());
        }
        Ok(p)
    }

    pub fn overlay_path(&self) -> Result<Option<PathBuf>> {
        if !self.netboot {
            return Ok(None);
        }
        let p = self.overlay.clone().unwrap_or_else(|| self.artifacts_dir().join("overlay.cpio.gz"));
        if !p.is_file() {
            bail!("netboot needs the overlay cpio: {} does not exist (pass --overlay PATH)", p.display());
        }
        Ok(Some(p))
    }

    pub fn agent_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.agent {
            return Ok(p.clone());
        }
        let exe = std::env::current_exe().context("locating the test-vm binary")?;
        let p = exe.with_file_name("nodeforge-agent");
        if !p.is_file() {
            bail!("no guest agent at {} (build the nodeforge-agent package, or pass --agent PATH)", p.display());
        }
        Ok(p)
    }

    pub fn cmdline(&self) -> String {
        let base = if self.netboot {
            "nodeforge.netboot=1 console=ttyS0 panic=-1"
        } else {
            "console=ttyS0 root=LABEL=root rw panic=-1"
        };
        match &self.append {
            Some(extra) => format!("{base} {extra}"),
            None => base.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BootConfig, clap::Error> {
        let argv = ["test-vm", "boot", "--kernel", "k", "--initrd", "i", "--seed", "s"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Boot(b) => b,
        })
    }

    #[test]
    fn disk_or_netboot_exactly() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--disk", "d", "--netboot"]).is_err());
        assert!(parse(&["--disk", "d", "--overlay", "o"]).is_err());
        let b = parse(&["--disk", "out/disk.qcow2", "--stage-timeout", "pod=30"]).unwrap();
        assert_eq!(b.stage_timeouts, [StageTimeout { stage: "pod".into(), seconds: 30 }]);
        assert_eq!(b.cmdline(), "console=ttyS0 root=LABEL=root rw panic=-1");
        assert_eq!(b.artifacts_dir(), Path::new("out"));
        let n = parse(&["--netboot", "--append", "quiet"]).unwrap();
        assert_eq!(n.cmdline(), "nodeforge.netboot=1 console=ttyS0 panic=-1 quiet");
        assert!(parse(&["--netboot", "--stage-timeout", "pod"]).is_err());
    }
}
