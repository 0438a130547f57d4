//! What each command does, given its parsed configuration. Output goes to stdout (results)
//! and stderr (progress, logs, warnings); `--json` turns results and errors into JSON.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build;
use crate::check::{self, Severity};
use crate::cli::{CheckConfig, Cli, Command, FetchConfig, LockArgs, LockConfig, NetConfig, RenderConfig};
use crate::fetch::{FetchOptions, Fetcher};
use crate::io::Interrupt;
use crate::profile::LoadedProfile;
use crate::render::{self, Rendered};
use sha2::{Digest, Sha256};

/// The failure classes behind the documented exit codes. Attached as anyhow context at the
/// stage boundary, so the exit code follows from where a build failed, not from parsing
/// message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Profile,
    Fetch,
    Archive,
    /// A flag's value or a file it names is unusable (exit 2, like clap's own usage errors).
    Usage,
    /// `replace`: a PodDisruptionBudget kept a pod from being evicted (exit 10).
    DrainBlocked,
    /// `replace`: pods would be lost (unmanaged, or with emptyDir data) without --force or
    /// --delete-emptydir-data (exit 11).
    PodsWouldBeLost,
    /// `replace`: the reprovision command failed (exit 12).
    Reprovision,
    /// `replace`: the node did not come back Ready from a new boot in time (exit 13).
    NodeNotBack,
    /// `replace`: the node came back on another container runtime (exit 14).
    WrongRuntime,
    /// `replace`: the API server cannot be reached (exit 15).
    Unreachable,
    /// `replace`: the kubeconfig's credentials are refused or lack a permission (exit 16).
    Forbidden,
}

impl Stage {
    /// The documented exit code of this failure class.
    pub fn exit_code(self) -> u8 {
        match self {
            Stage::Usage => 2,
            Stage::Profile => 3,
            Stage::Fetch => 4,
            Stage::Archive => 5,
            Stage::DrainBlocked => 10,
            Stage::PodsWouldBeLost => 11,
            Stage::Reprovision => 12,
            Stage::NodeNotBack => 13,
            Stage::WrongRuntime => 14,
            Stage::Unreachable => 15,
            Stage::Forbidden => 16,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Profile => "invalid profile",
            Stage::Fetch => "download failed",
            Stage::Archive => "unsafe or malformed upstream archive",
            Stage::Usage => "usage error",
            Stage::DrainBlocked => "drain blocked by a PodDisruptionBudget",
            Stage::PodsWouldBeLost => "drain would lose pods",
            Stage::Reprovision => "reprovision failed",
            Stage::NodeNotBack => "node did not come back",
            Stage::WrongRuntime => "node came back on another runtime",
            Stage::Unreachable => "cluster unreachable",
            Stage::Forbidden => "forbidden by the cluster",
        })
    }
}

/// Marks an error whose details were already printed as the command's JSON result.
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported above")
    }
}

static INTERRUPT: OnceLock<Interrupt> = OnceLock::new();

/// How long a run may take to unwind after SIGINT/SIGTERM/SIGHUP before it is ended anyway.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The process's interrupt flag, installed by [`run`].
pub fn interrupt() -> &'static Interrupt {
    INTERRUPT.get_or_init(Interrupt::default)
}

/// Route the termination signals to the flag, and make sure they end the run even where
/// nothing polls it. A run that cannot be interrupted is refused rather than started.
fn install_interrupt() -> Result<()> {
    let flag = Interrupt::install().context("cannot install the signal handlers")?;
    flag.exit_when_stuck(SIGNAL_GRACE).context("cannot start the signal watchdog")?;
    INTERRUPT.set(flag).map_err(|_| anyhow::anyhow!("the signal handlers are installed twice"))
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

pub fn run(cli: Cli) -> Result<()> {
    // Install signal handling before any work so an early Ctrl-C is seen too.
    install_interrupt()?;
    let json = cli.json;
    match cli.command {
        Command::Check(c) => run_check(&c, json),
        Command::Render(c) => run_render(&c, json),
        Command::Fetch(c) => run_fetch(&c, json),
        Command::Lock(c) => run_lock(&c, json),
        Command::Seed(c) => crate::seed::command::run(&c, json),
        #[cfg(feature = "cluster")]
        Command::Replace(c) => crate::replace::run(&c, json, interrupt()),
        Command::Build(c) => {
            let profile = load_profile(&c.profile.profile)?;
            enforce_lock(&profile, &c.lock)?;
            let fetcher = fetcher(&c.net)?;
            let report = build::build(&profile, &fetcher, &build::BuildOptions::from_config(&c), interrupt())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(())
        }
        Command::Image(c) => {
            let opts = crate::image::ImageOptions {
                base: c.base.clone(),
                disk_size: c.disk_size,
                first_boot: c.build.first_boot,
            };
            crate::image::preflight(&opts)?;
            let profile = load_profile(&c.build.profile.profile)?;
            enforce_lock(&profile, &c.build.lock)?;
            let fetcher = fetcher(&c.build.net)?;
            let build_opts = build::BuildOptions::from_config(&c.build);
            let report = build::build_with(&profile, &fetcher, &build_opts, interrupt(), |x| {
                crate::image::write_image(&opts, x)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(())
        }
    }
}

/// Load and check a profile; errors in the findings fail with the profile exit code.
pub fn load_profile(path: &std::path::Path) -> Result<LoadedProfile> {
    let loaded = LoadedProfile::load(path).context(Stage::Profile)?;
    let findings = check::check(&loaded);
    for f in findings.iter().filter(|f| f.severity == Severity::Warning) {
        tracing::warn!("{}: {}", path.display(), f.message);
    }
    if check::has_errors(&findings) {
        let text: Vec<String> =
            findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.to_string()).collect();
        return Err(anyhow::anyhow!("{}: {}", path.display(), text.join("\n")).context(Stage::Profile));
    }
    Ok(loaded)
}

fn run_check(c: &CheckConfig, json: bool) -> Result<()> {
    let loaded = LoadedProfile::load(&c.profile.profile).context(Stage::Profile)?;
    let findings = check::check(&loaded);
    let failed = check::has_errors(&findings) || (c.strict && !findings.is_empty());
    if json {
        let out = json!({
            "profile": loaded.path,
            "sha256": loaded.sha256,
            "ok": !failed,
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for f in &findings {
            println!("{f}");
        }
        println!("{}: {}", loaded.path.display(), if failed { "refused" } else { "ok" });
    }
    if failed {
        let n = findings.iter().filter(|f| f.severity == Severity::Error || c.strict).count();
        let e = anyhow::anyhow!("{} finding(s) refuse {}", n, loaded.path.display());
        // The JSON document above is the whole answer; a second one would break parsers.
        let e = if json { e.context(Reported) } else { e };
        return Err(e.context(Stage::Profile));
    }
    Ok(())
}

fn run_render(c: &RenderConfig, json: bool) -> Result<()> {
    let loaded = load_profile(&c.profile.profile)?;
    let rendered = render::render(&loaded).context(Stage::Profile)?;
    if let Some(dir) = &c.out {
        write_rendered(&rendered, dir)?;
    }
    let rows: Vec<_> = rendered
        .iter()
        .map(|r| match r {
            Rendered::File(f) => json!({
                "path": format!("/{}", f.path),
                "mode": format!("{:04o}", f.mode),
                "size": f.bytes.len(),
                "sha256": hex::encode(Sha256::digest(&f.bytes)),
                "renderer": f.renderer,
            }),
            Rendered::Link(l) => json!({ "path": format!("/{}", l.path), "target": l.target, "renderer": l.renderer }),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "profile": loaded.path, "files": rows }))?);
    } else {
        for r in &rendered {
            match r {
                Rendered::File(f) => println!("{:04o} /{:<64} {}", f.mode, f.path, f.renderer),
                Rendered::Link(l) => println!("link /{} -> {}", l.path, l.target),
            }
        }
    }
    Ok(())
}

/// Write rendered files under `dir` as they would sit under `/`, each atomically.
fn write_rendered(rendered: &[Rendered], dir: &std::path::Path) -> Result<()> {
    for r in rendered {
        let dest = dir.join(r.path());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        match r {
            Rendered::File(f) => {
                crate::output::write_atomic(&dest, &f.bytes, f.mode)?;
            }
            Rendered::Link(l) => {
                let _ = std::fs::remove_file(&dest);
                std::os::unix::fs::symlink(&l.target, &dest).with_context(|| format!("creating {}", dest.display()))?;
            }
        }
    }
    Ok(())
}

fn fetcher(net: &NetConfig) -> Result<Fetcher> {
    let cache_dir = match &net.cache_dir {
        Some(d) => d.clone(),
        None => crate::fetch::default_cache_dir().context(Stage::Fetch)?,
    };
    let mut opts = FetchOptions::new(cache_dir);
    opts.mirror = net.mirror.clone();
    opts.max_download_bytes = net.max_download_bytes;
    opts.stall_timeout = std::time::Duration::from_secs(net.stall_timeout);
    opts.min_download_rate = net.min_download_rate;
    opts.progress = std::io::stderr().is_terminal();
    opts.ca_cert = net.ca_cert.clone();
    opts.interrupt = interrupt().clone();
    Fetcher::new(opts).context(Stage::Fetch)
}

/// `--locked`: refuse, before anything is downloaded or created, a profile that differs from
/// its lock.
fn enforce_lock(loaded: &LoadedProfile, args: &LockArgs) -> Result<()> {
    if !args.locked {
        return Ok(());
    }
    let path = args.lock.clone().unwrap_or_else(|| crate::lock::default_path(&loaded.path));
    crate::lock::enforce(loaded, &path)
}

fn run_lock(c: &LockConfig, json: bool) -> Result<()> {
    let loaded = load_profile(&c.profile.profile)?;
    let out = c.out.clone().unwrap_or_else(|| crate::lock::default_path(&loaded.path));
    let fetcher = fetcher(&c.net)?;
    let lock = crate::lock::lock(&loaded, &fetcher)?;
    lock.write(&out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "lock": out, "content": lock }))?);
    } else {
        for s in &lock.sources {
            println!("{:<11} {}  sha256:{}  (agrees with {})", s.kind, s.url, s.sha256, s.checksum_url);
        }
        for i in &lock.images {
            println!("{:<11} {}  sha256:{}", "image", i.source, i.sha256);
        }
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn run_fetch(c: &FetchConfig, json: bool) -> Result<()> {
    let loaded = load_profile(&c.profile.profile)?;
    enforce_lock(&loaded, &c.lock)?;
    let fetcher = fetcher(&c.net)?;
    let fetched = build::fetch_sources(&loaded, &fetcher)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fetched)?);
    } else {
        for f in &fetched {
            println!("{}  {:<11} {}  {}", f.sha256, f.kind, f.name, f.path.display());
        }
    }
    Ok(())
}

/// Print an error (chain included) and choose the exit code.
pub fn report_error(e: &anyhow::Error, json: bool) -> ExitCode {
    let interrupted =
        INTERRUPT.get().is_some_and(Interrupt::is_set) || e.chain().any(|c| c.is::<crate::io::Interrupted>());
    let code: u8 = if interrupted { 130 } else { e.downcast_ref::<Stage>().map_or(1, |s| s.exit_code()) };
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    if e.downcast_ref::<Reported>().is_some() {
        return ExitCode::from(code);
    }
    if json {
        let stage = e.downcast_ref::<Stage>().map(|s| s.to_string());
        println!("{}", json!({ "error": chain.join(": "), "stage": stage, "exit_code": code }));
    } else {
        eprintln!("nodeforge: error: {}", chain.join("\n  caused by: "));
    }
    ExitCode::from(code)
}
