//! `test-vm control-plane`: start, print what a user needs, write the ready file, run until
//! a signal (or stdin's end, if asked), stop everything.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{ControlPlane, ControlPlaneConfig};

#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Written (atomically, JSON: [`super::ControlPlaneInfo`]) once ready; removed at stop.
    pub ready_file: Option<PathBuf>,
    /// Print the JSON instead of the text summary.
    pub json: bool,
    /// Also stop when stdin reaches its end (a script holding a pipe open).
    pub stop_on_stdin_eof: bool,
}

/// Why a running control plane was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// stdin reached its end (`--stop-on-stdin-eof`).
    StdinEof,
    /// A component exited on its own: the message names it and quotes its log.
    ComponentExited(String),
}

/// Start (an interrupted start is an error: [`nodeforge::io::Interrupted`]), report, wait,
/// stop. Progress goes to stderr, results to stdout.
pub fn serve(cfg: &ControlPlaneConfig, opts: &ServeOptions) -> Result<Ended> {
    eprintln!(
        "test-vm control-plane: starting etcd, kube-apiserver and kube-controller-manager in {} (logs in {})",
        cfg.dir.display(),
        cfg.dir.join("logs").display()
    );
    let mut cp = ControlPlane::start(cfg)?;
    let info = cp.info().clone();
    let mut out = std::io::stdout().lock();
    let printed = if opts.json {
        serde_json::to_string_pretty(&info).map(|j| format!("{j}\n")).context("serialising the summary")?
    } else {
        info.summary()
    };
    out.write_all(printed.as_bytes()).and_then(|()| out.flush()).context("writing to stdout")?;
    drop(out);
    if let Some(f) = &opts.ready_file {
        info.write_ready_file(f)?;
    }
    let eof = if opts.stop_on_stdin_eof { Some(watch_stdin()?) } else { None };
    eprintln!(
        "test-vm control-plane: running; stop with Ctrl-C or SIGTERM{}",
        if eof.is_some() { " or by closing stdin" } else { "" }
    );
    let ended = loop {
        if cfg.interrupt.is_set() {
            break Ended::Signal;
        }
        if eof.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            break Ended::StdinEof;
        }
        if let Err(e) = cp.check() {
            break Ended::ComponentExited(e.to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(f) = &opts.ready_file {
        let _ = std::fs::remove_file(f);
    }
    eprintln!("test-vm control-plane: stopping");
    cp.stop();
    eprintln!("test-vm control-plane: stopped");
    Ok(ended)
}

/// A flag raised when stdin reaches its end (or cannot be read). The reading thread is left
/// blocked if that never happens; it ends with the process.
fn watch_stdin() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let raised = Arc::clone(&flag);
    std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            raised.store(true, Ordering::Relaxed);
        })
        .context("starting the thread that watches stdin")?;
    Ok(flag)
}
