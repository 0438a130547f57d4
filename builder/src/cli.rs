//! Command-line interface: one `*Config` struct per command, parsed by clap. `main.rs` only
//! parses and dispatches; the work happens in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use url::Url;

#[derive(Debug, Parser)]
#[command(
    name = "nodeforge",
    version,
    about = "Build verified containerd Kubernetes nodes: fetch the release, assemble the overlay, write the artifacts",
    after_help = "Exit codes: 0 success, 1 other failure, 2 usage error, 3 invalid profile, \
                  4 download or verification failure (also: a pinned digest its project does not publish, in `lock`), \
                  5 unsafe or malformed upstream archive or site overlay, 130 interrupted. With --locked, a source missing from or \
                  different from the lock file exits 3 before anything is downloaded."
)]
pub struct Cli {
    /// Machine-readable JSON on stdout (results and errors); human text otherwise.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download the profile's upstream artifacts into the cache and verify their digests.
    Fetch(FetchConfig),
    /// Fetch, then assemble the overlay and write every artifact to --out.
    Build(BuildConfig),
    /// Build, then lay the overlay onto a base root filesystem: a bootable test node (ext4
    /// disk, kernel, boot initramfs, netboot archive) in --out beside the build's artifacts.
    Image(ImageConfig),
    /// Fetch every source and its project's published checksum file, check that they agree
    /// with the profile's pinned digests, and write a lock file (deterministic TOML) for
    /// `--locked` builds.
    Lock(LockConfig),
    /// Write the generated configuration files only (no download).
    Render(RenderConfig),
    /// Validate a profile and refuse combinations that cannot work.
    Check(CheckConfig),
    /// Write a cloud-init NoCloud seed for one node: its name and instance-id, optionally a
    /// kubeadm join and the overlay to unpack on first boot.
    Seed(SeedConfig),
    /// Replace a node of a cluster with a built one: cordon and drain it (Eviction API), run the
    /// reprovision step, wait until it is back Ready from a new boot on the expected runtime,
    /// uncordon it, and report before and after.
    #[cfg(feature = "cluster")]
    Replace(ReplaceConfig),
}

#[derive(Debug, Args)]
#[command(after_help = "Exit codes: 10 drain blocked by a PodDisruptionBudget; 11 pods would be lost \
                  (unmanaged, or emptyDir data) without --force / --delete-emptydir-data; 12 the reprovision \
                  command failed; 13 the node did not come back Ready from a new boot in time; 14 it came back \
                  on another runtime; 15 the API server is unreachable; 16 credentials refused or a permission \
                  missing; 130 interrupted. On every failure the node is left cordoned.")]
pub struct ReplaceConfig {
    /// The cluster's kubeconfig (its current context is used).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// The Node to replace; the new machine must register under the same name.
    #[arg(long, value_name = "NAME", value_parser = crate::ident::parse_node_name)]
    pub node: String,
    /// The runtime the replacement must report (`status.nodeInfo.containerRuntimeVersion`),
    /// e.g. `containerd://2.2.9`.
    #[arg(long, value_name = "RUNTIME://VERSION", value_parser = parse_runtime)]
    pub expect_runtime: String,
    /// Run after the drain, by `sh -c`, with NODEFORGE_NODE set to the node's name: what
    /// reprovisions the machine (boots the new image with a seed carrying a new instance-id).
    /// Without it, nodeforge prints what to do and waits for the operator to do it.
    #[arg(long, value_name = "CMD")]
    pub reprovision_cmd: Option<String>,
    /// How long the node may take to come back Ready (Go duration).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_positive_duration)]
    pub timeout: std::time::Duration,
    /// How long evictions may be refused by PodDisruptionBudgets and evicted pods take to go.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_positive_duration)]
    pub drain_timeout: std::time::Duration,
    /// Also delete pods that no controller will recreate (as `kubectl drain --force`).
    #[arg(long)]
    pub force: bool,
    /// Also evict pods with emptyDir volumes, whose data is lost (as kubectl's flag).
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// How long the node may be Ready from a new boot on another runtime before that is final
    /// (a first boot may restart containerd under a running kubelet).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub runtime_grace: std::time::Duration,
}

/// `RUNTIME://VERSION`.
fn parse_runtime(s: &str) -> Result<String, String> {
    match s.split_once("://") {
        Some((r, v)) if !r.is_empty() && !v.is_empty() && !s.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => {
            Err("expected RUNTIME://VERSION, e.g. containerd://2.2.9 (kubectl get node -o wide's CONTAINER-RUNTIME)"
                .into())
        }
    }
}

/// A positive Go duration (`90s`, `5m`, `1h30m`).
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: crate::duration::GoDuration = s.parse().map_err(|e: crate::duration::DurationError| e.to_string())?;
    u64::try_from(d.nanos())
        .ok()
        .filter(|n| *n > 0)
        .map(std::time::Duration::from_nanos)
        .ok_or_else(|| format!("`{s}` must be a positive duration"))
}

#[derive(Debug, Args)]
pub struct ProfileArg {
    /// The profile (TOML) describing the node.
    #[arg(long, short = 'p', value_name = "FILE")]
    pub profile: PathBuf,
}

/// How upstream artifacts are downloaded.
#[derive(Debug, Args)]
pub struct NetConfig {
    /// Replace the scheme and host of every upstream URL (for mirrors that keep the release
    /// path layout). Digests stay pinned.
    #[arg(long, env = "NODEFORGE_MIRROR", value_name = "URL", hide_env_values = true)]
    pub mirror: Option<Url>,
    /// The download cache (default: $XDG_CACHE_HOME/nodeforge).
    #[arg(long, env = "NODEFORGE_CACHE_DIR", value_name = "DIR", hide_env_values = true)]
    pub cache_dir: Option<PathBuf>,
    /// An extra PEM root certificate to trust, for a mirror with an internal CA.
    #[arg(long, env = "NODEFORGE_CA_CERT", value_name = "FILE", hide_env_values = true)]
    pub ca_cert: Option<PathBuf>,
    /// Refuse any single download, or local image archive, larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 30)]
    pub max_download_bytes: u64,
    /// Fail a download when no data arrives for this many seconds (also the window of
    /// --min-download-rate).
    #[arg(long, env = "NODEFORGE_STALL_TIMEOUT", value_name = "SECONDS", default_value_t = 60,
          hide_env_values = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Fail a download that averages fewer than this many bytes per second over a
    /// --stall-timeout window (0: no minimum).
    #[arg(
        long,
        env = "NODEFORGE_MIN_DOWNLOAD_RATE",
        value_name = "BYTES_PER_SEC",
        default_value_t = 1024,
        hide_env_values = true
    )]
    pub min_download_rate: u64,
}

/// Building only what a lock file recorded.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Refuse (exit 3, before any download and before --out is created) every source whose
    /// URL or digest is missing from the lock file or differs from it.
    #[arg(long)]
    pub locked: bool,
    /// The lock file for --locked (default: the profile's path with `.lock` for `.toml`).
    #[arg(long, value_name = "FILE", requires = "locked")]
    pub lock: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FetchConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    #[command(flatten)]
    pub net: NetConfig,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct LockConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    /// Where to write the lock (default: the profile's path with `.lock` for `.toml`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetConfig,
}

#[derive(Debug, Args)]
pub struct BuildConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    /// Directory the artifacts are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub net: NetConfig,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Timestamp for every archive entry (seconds since the epoch); fixed by default so builds
    /// are reproducible.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS", hide_env_values = true)]
    pub source_date_epoch: Option<u64>,
    /// Refuse a release that expands to more than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 30)]
    pub max_unpacked_bytes: u64,
    /// Put overlay.tar.gz on the seed volume, with user-data that unpacks it on first boot,
    /// starts containerd and imports the images: a stock cloud image becomes the node. With
    /// `image`, the disk is the base without the overlay.
    #[arg(long)]
    pub first_boot: bool,
}

#[derive(Debug, Args)]
pub struct ImageConfig {
    #[command(flatten)]
    pub build: BuildConfig,
    /// The base root filesystem: a directory or a tar archive (fixtures/base/build-base.sh
    /// writes one). It needs a kernel (/boot/vmlinuz-<ver>, /lib/modules/<ver>) and
    /// /bin/busybox (static).
    #[arg(long, value_name = "ROOTFS")]
    pub base: PathBuf,
    /// Size of disk.raw (sparse): bytes or with a K/M/G/T suffix.
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    pub disk_size: crate::image::disk::DiskSize,
}

#[derive(Debug, Args)]
pub struct RenderConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    /// Write the files under this directory (as DIR/etc/...); without it, list them.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "The instance-id decides first boot: without --instance-id (or seed.instance_id in the \
                  profile) it is derived from the profile digest, the node name and the seed's content, so \
                  the same inputs give the same seed. A new --instance-id re-runs first boot on the same disk.")]
pub struct SeedConfig {
    #[command(flatten)]
    pub profile: ProfileArg,
    /// The node's name: its hostname, meta-data local-hostname and Node name.
    #[arg(long, value_name = "NAME", value_parser = crate::ident::parse_node_name)]
    pub node: String,
    /// The cloud-init instance-id; a new one re-runs first boot (how a node is reprovisioned).
    #[arg(long, value_name = "ID", value_parser = crate::ident::parse_instance_id)]
    pub instance_id: Option<String>,
    /// Join the cluster through this API server on first boot (needs --token-file and
    /// --ca-cert-hash).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["token_file", "ca_cert_hash"],
          value_parser = crate::seed::flags::parse_endpoint)]
    pub join_endpoint: Option<String>,
    /// File holding the bootstrap token (`kubeadm token create`); never given on the command
    /// line. It lands only in the seed's user-data (mode 0600 files).
    #[arg(long, value_name = "FILE", requires = "join_endpoint")]
    pub token_file: Option<PathBuf>,
    /// Public-key pin of the cluster CA (repeat during a CA rotation).
    #[arg(long, value_name = "sha256:HEX", requires = "join_endpoint",
          value_parser = crate::seed::flags::parse_ca_cert_hash)]
    pub ca_cert_hash: Vec<String>,
    /// A Node label the kubelet registers with (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", requires = "join_endpoint",
          value_parser = crate::seed::flags::parse_label)]
    pub labels: Vec<crate::seed::flags::Label>,
    /// A Node taint the kubelet registers with (repeatable); EFFECT is NoSchedule,
    /// PreferNoSchedule or NoExecute.
    #[arg(long = "taint", value_name = "KEY[=VALUE]:EFFECT", requires = "join_endpoint",
          value_parser = crate::seed::flags::parse_taint)]
    pub taints: Vec<crate::seed::flags::Taint>,
    /// How long `kubeadm join` keeps trying to reach the API server and find a `cluster-info`
    /// signed for the token before it fails (kubeadm's default: 5m). A Go duration, 1s to 1h.
    #[arg(long, value_name = "DURATION", requires = "join_endpoint",
          value_parser = crate::seed::flags::parse_discovery_timeout)]
    pub join_discovery_timeout: Option<String>,
    /// An SSH public key for the default user, added to the profile's (repeatable).
    #[arg(long = "ssh-authorized-key", value_name = "KEY", value_parser = crate::ident::parse_ssh_key)]
    pub ssh_authorized_keys: Vec<String>,
    /// An overlay.tar.gz from `nodeforge build` to carry on the seed and unpack on first boot.
    #[arg(long, value_name = "FILE")]
    pub overlay: Option<PathBuf>,
    /// The seed volume's filesystem: vfat (seed.img) or iso (seed.iso, needs xorriso).
    #[arg(long, value_enum, default_value_t = crate::seed::flags::SeedFormat::Vfat)]
    pub format: crate::seed::flags::SeedFormat,
    /// Timestamp inside the ISO (seconds since the epoch); fixed by default.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS", hide_env_values = true)]
    pub source_date_epoch: Option<u64>,
    /// Directory the seed is written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}
