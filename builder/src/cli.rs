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
                  5 unsafe or malformed upstream archive, 130 interrupted. With --locked, a source missing from or \
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
    /// Refuse any single download larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 30)]
    pub max_download_bytes: u64,
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
