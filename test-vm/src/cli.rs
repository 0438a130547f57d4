//! The command line: `boot` (one node) and `fleet` (several nodes from one image). The flags
//! both share are [`VmArgs`]; together with a subcommand's own they are its whole configuration.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

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
    /// Boot several nodes from one image, one seed each: sequentially or `--parallel N`.
    Fleet(FleetConfig),
    /// Run a Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver,
    /// kube-controller-manager as host processes, bootstrapped with kubeadm's phases) that
    /// QEMU guests join at 10.0.2.2:PORT, until a signal.
    #[cfg(feature = "join")]
    ControlPlane(ControlPlaneArgs),
}

/// `test-vm control-plane`.
#[cfg(feature = "join")]
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// The directory holding etcd, kube-apiserver, kube-controller-manager and kubeadm.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: PathBuf,
    /// The work directory (created; must be empty): PKI, kubeconfigs, etcd data, logs.
    #[arg(long, value_name = "WORKDIR")]
    pub dir: PathBuf,
    /// The cluster's Kubernetes version [default: what `kubeadm version` reports].
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
    /// Once ready, write what a user needs here as JSON (removed again at stop).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Print the ready file's JSON on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// Also stop (exit 0) when stdin reaches its end.
    #[arg(long)]
    pub stop_on_stdin_eof: bool,
    /// Limit for the start (`180`, `90s`, `5m`).
    #[arg(long, value_name = "DURATION", default_value = "180", value_parser = parse_duration)]
    pub start_timeout: Duration,
}

#[cfg(feature = "join")]
impl ControlPlaneArgs {
    pub fn config(&self, interrupt: &nodeforge::io::Interrupt) -> crate::cluster::ControlPlaneConfig {
        let mut c = crate::cluster::ControlPlaneConfig::new(&self.bin_dir, &self.dir);
        c.kubernetes_version = self.kubernetes_version.clone();
        c.start_timeout = self.start_timeout;
        c.interrupt = interrupt.clone();
        c
    }

    pub fn serve_options(&self) -> crate::cluster::ServeOptions {
        crate::cluster::ServeOptions {
            ready_file: self.ready_file.clone(),
            json: self.json,
            stop_on_stdin_eof: self.stop_on_stdin_eof,
        }
    }
}

/// What every node of a run shares: the image, the VM's size, the limits, the join target.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
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
    /// How long the guest's kernel may print nothing before it starts init (its silent
    /// initramfs unpack aside) before the boot counts as an emulator stall (seen, rarely,
    /// under TCG): QEMU is stopped and the guest booted once more; a second stall fails `boot`.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub kernel_stall: u64,
    /// The guest agent binary [default: nodeforge-agent beside test-vm].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// The build's manifest.json [default: beside --disk, else beside --initrd].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Keep the per-run work directory (overlay disk, initrd, logs).
    #[arg(long)]
    pub keep_workdir: bool,
    /// Use FILE as the disk's copy-on-write layer and keep it: created over --disk if missing,
    /// used as it is if it exists (the same disk again, as a reprovisioned machine has it).
    #[arg(long, value_name = "FILE", requires = "disk")]
    pub disk_layer: Option<PathBuf>,
    /// After every stage passed, keep the node running (the report is written first) until
    /// SIGTERM or SIGINT, then stop QEMU (a power cut for the guest) and exit 0.
    #[arg(long)]
    pub keep_running: bool,
    /// Extra kernel command-line arguments, appended.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// The QEMU binary.
    #[arg(long, env = "TEST_VM_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Add the `join` stage: through this kubeconfig's API server, wait for the Node to
    /// register and become Ready with the built containerd as its runtime.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// How long the node may take to register and become Ready (`300`, `90s`, `5m`).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// The node's expected `containerRuntimeVersion`
    /// [default: `containerd://VERSION`, VERSION from the build manifest].
    #[arg(long, value_name = "RUNTIME://VERSION")]
    pub expect_runtime_version: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BootConfig {
    #[command(flatten)]
    pub vm: VmArgs,
    /// The cloud-init NoCloud seed image, attached read-only.
    #[arg(long)]
    pub seed: PathBuf,
    /// The Node name the `join` stage waits for [default: `local-hostname` in the seed's
    /// meta-data].
    #[arg(long, requires = "kubeconfig")]
    pub node_name: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here (one testcase per stage).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Keep the serial console log here [default: in the work directory].
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct FleetConfig {
    #[command(flatten)]
    pub vm: VmArgs,
    /// One node: its name (the Node name `join` waits for, and its report directory) and its
    /// seed image. Repeatable; each node boots on its own copy-on-write layer of --disk.
    #[arg(long = "node", value_name = "NAME=SEED", required = true)]
    pub nodes: Vec<NodeSpec>,
    /// Where each node's `NAME/report.json`, `NAME/junit.xml`, `NAME/serial.log` and the
    /// combined `junit.xml` go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Boot up to N nodes at once. N × --cpus must not exceed the host's cores (under TCG
    /// every vCPU is a busy host thread; overcommitted guests miss their stage limits).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Allow N × --cpus above the host's cores.
    #[arg(long)]
    pub overcommit: bool,
}

/// `--node NAME=SEED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub seed: PathBuf,
}

impl FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, seed) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=SEED"))?;
        // A Node name (RFC 1123 subdomain) is also a safe directory name.
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!("`{name}` is not a valid node name (lowercase letters, digits, `-`, `.`)"));
        }
        if seed.is_empty() {
            return Err(format!("`{s}`: no seed image after `=`"));
        }
        Ok(Self { name: name.to_owned(), seed: PathBuf::from(seed) })
    }
}

/// `300` (seconds), `90s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 300, 90s, 5m)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (s, m or h)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
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

impl VmArgs {
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
            other => panic!("parsed as {other:?}"),
        })
    }

    fn fleet(args: &[&str]) -> Result<FleetConfig, clap::Error> {
        let argv = ["test-vm", "fleet", "--kernel", "k", "--initrd", "i", "--disk", "d"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Fleet(f) => f,
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn disk_or_netboot_exactly() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--disk", "d", "--netboot"]).is_err());
        assert!(parse(&["--disk", "d", "--overlay", "o"]).is_err());
        let b = parse(&["--disk", "out/disk.qcow2", "--stage-timeout", "pod=30"]).unwrap();
        assert_eq!(b.vm.stage_timeouts, [StageTimeout { stage: "pod".into(), seconds: 30 }]);
        assert_eq!(b.vm.cmdline(), "console=ttyS0 root=LABEL=root rw panic=-1");
        assert_eq!(b.vm.artifacts_dir(), Path::new("out"));
        let n = parse(&["--netboot", "--append", "quiet"]).unwrap();
        assert_eq!(n.vm.cmdline(), "nodeforge.netboot=1 console=ttyS0 panic=-1 quiet");
        assert!(parse(&["--netboot", "--stage-timeout", "pod"]).is_err());
    }

    #[test]
    fn join_flags() {
        let b = parse(&["--disk", "d"]).unwrap();
        assert_eq!((b.vm.kubeconfig, b.vm.join_timeout), (None, Duration::from_secs(300)));
        assert!(parse(&["--disk", "d", "--node-name", "n1"]).is_err(), "--node-name needs --kubeconfig");
        let b = parse(&["--disk", "d", "--kubeconfig", "kc", "--node-name", "n1", "--join-timeout", "2m"]).unwrap();
        assert_eq!(b.node_name.as_deref(), Some("n1"));
        assert_eq!(b.vm.join_timeout, Duration::from_secs(120));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 min").is_err() && parse_duration("m").is_err());
    }

    #[test]
    fn fleet_nodes() {
        let f = fleet(&["--out", "o", "--node", "n1=s1.img", "--node", "n-2.x=/a/s2.img", "--parallel", "2"]).unwrap();
        assert_eq!(f.nodes[1], NodeSpec { name: "n-2.x".into(), seed: "/a/s2.img".into() });
        assert_eq!(f.parallel, 2);
        assert!(fleet(&["--out", "o"]).is_err(), "at least one node");
        assert!(fleet(&["--out", "o", "--node", "n1=s", "--parallel", "0"]).is_err());
        for bad in ["n1", "N1=s", "-n=s", "../x=s", "n1="] {
            assert!(fleet(&["--out", "o", "--node", bad]).is_err(), "{bad}");
        }
        assert!(fleet(&["--node", "n1=s"]).is_err(), "--out is required");
    }
}
