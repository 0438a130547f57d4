//! What each command does, given its parsed configuration. Output goes to stdout (results)
//! and stderr (progress, logs, warnings); `--json` turns results and errors into JSON.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::json;

use crate::build;
use crate::check::{self, CheckedProfile, Severity};
use crate::cli::{BuildConfig, CheckConfig, Cli, Command, FetchConfig, LockArgs, LockConfig, NetConfig, RenderConfig};
use crate::exit::ExitClass;
use crate::fetch::{FetchOptions, Fetcher};
use crate::io::Interrupt;
use crate::profile::LoadedProfile;
use crate::release::Limits;
use crate::render::{self, Rendered};
use sha2::{Digest, Sha256};

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
        Command::Seed(c) => crate::seed::command::run(&c, json, interrupt()),
        #[cfg(feature = "cluster")]
        Command::Replace(c) => crate::replace::run(&c, json, interrupt()),
        Command::Build(c) => {
            // The check's warnings go into the build's report, not the log.
            let profile = CheckedProfile::load(&c.profile.profile)?;
            enforce_lock(&profile.loaded, &c.lock)?;
            let fetcher = fetcher(&c.net)?;
            let report = build::build(&profile, &fetcher, &build_options(&c), interrupt())?;
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
            let profile = CheckedProfile::load(&c.build.profile.profile)?;
            enforce_lock(&profile.loaded, &c.build.lock)?;
            let fetcher = fetcher(&c.build.net)?;
            let build_opts = build_options(&c.build);
            let mut pending = build::stage(&profile, &fetcher, &build_opts, interrupt())?;
            crate::image::add_image(&opts, &mut pending, interrupt())?;
            let report = pending.commit(interrupt())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(())
        }
    }
}

fn build_options(c: &BuildConfig) -> build::BuildOptions {
    build::BuildOptions {
        out: c.out.clone(),
        mtime: c.source_date_epoch.unwrap_or(crate::archive::DEFAULT_MTIME),
        limits: Limits { max_unpacked_bytes: c.max_unpacked_bytes, ..Limits::default() },
        first_boot: c.first_boot,
    }
}

/// Load and check a profile, logging its warnings: for the commands whose result has no
/// place for them.
fn load_profile(path: &std::path::Path) -> Result<LoadedProfile> {
    Ok(CheckedProfile::load(path)?.logged())
}

fn run_check(c: &CheckConfig, json: bool) -> Result<()> {
    let loaded = LoadedProfile::load(&c.profile.profile).context(ExitClass::Profile)?;
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
        return Err(e.context(ExitClass::Profile));
    }
    Ok(())
}

fn run_render(c: &RenderConfig, json: bool) -> Result<()> {
    let loaded = load_profile(&c.profile.profile)?;
    let rendered = render::render(&loaded).context(ExitClass::Profile)?;
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
        None => crate::fetch::default_cache_dir().context(ExitClass::Fetch)?,
    };
    let mut opts = FetchOptions::new(cache_dir);
    opts.mirror = net.mirror.clone();
    opts.max_download_bytes = net.max_download_bytes;
    opts.stall_timeout = std::time::Duration::from_secs(net.stall_timeout);
    opts.min_download_rate = net.min_download_rate;
    opts.progress = std::io::stderr().is_terminal();
    opts.ca_cert = net.ca_cert.clone();
    opts.interrupt = interrupt().clone();
    Fetcher::new(opts).context(ExitClass::Fetch)
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
    let fetched = crate::fetch::fetch_sources(&loaded, &fetcher)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fetched.all().collect::<Vec<_>>())?);
    } else {
        for f in fetched.all() {
            println!("{}  {:<11} {}  {}", f.sha256, f.kind, f.name, f.path.display());
        }
    }
    Ok(())
}

/// Print an error (chain included) and choose the exit code.
pub fn report_error(e: &anyhow::Error, json: bool) -> ExitCode {
    let interrupted =
        INTERRUPT.get().is_some_and(Interrupt::is_set) || e.chain().any(|c| c.is::<crate::io::Interrupted>());
    let code: u8 = if interrupted { 130 } else { e.downcast_ref::<ExitClass>().map_or(1, |s| s.exit_code()) };
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    if e.downcast_ref::<Reported>().is_some() {
        return ExitCode::from(code);
    }
    if json {
        let stage = e.downcast_ref::<ExitClass>().map(|s| s.to_string());
        println!("{}", json!({ "error": chain.join(": "), "stage": stage, "exit_code": code }));
    } else {
        eprintln!("nodeforge: error: {}", chain.join("\n  caused by: "));
    }
    ExitCode::from(code)
}
