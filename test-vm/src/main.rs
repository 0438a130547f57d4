//! The `test-vm` binary: parse, run, print, map the verdict to an exit code.
//!
//! Exit codes: 0 every stage (of every node) passed; 1 a stage failed; 2 usage error; 3 the
//! run could not be set up (missing file, QEMU not startable); 130 interrupted by a signal.
//! A fleet exits 1 when any node failed or could not be set up. `boot --keep-running` exits 0
//! when a signal stops the node it kept running after a pass. `control-plane`: see
//! [`control_plane`].

use std::process::ExitCode;

use clap::Parser;
use nodeforge::io::Interrupt;
use test_vm::cli::{Cli, Command};
use test_vm::stages::Verdict;
use test_vm::{fleet, report, run};

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::Fleet(cfg) = &command
        && let Err(msg) = fleet::check(cfg, fleet::host_cores())
    {
        eprintln!("test-vm: {msg}");
        return ExitCode::from(2);
    }
    // Before QEMU exists: a signal from here on is seen by the run loop, which stops QEMU.
    let interrupt = match Interrupt::install() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("test-vm: installing signal handlers: {e}");
            return ExitCode::from(3);
        }
    };
    match command {
        Command::Boot(cfg) => {
            let outcome = match run::boot(&cfg, &interrupt) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("test-vm: error: {e:#}");
                    return ExitCode::from(3);
                }
            };
            let r = &outcome.report;
            let written = report::emit(r, cfg.json.as_deref(), cfg.junit.as_deref(), "");
            if let Some(mut vm) = outcome.kept {
                // --keep-running: the report is out; the node runs until a signal says stop.
                eprintln!("test-vm: the node keeps running (QEMU pid {}); stop it with SIGTERM or Ctrl-C", vm.pid());
                while !interrupt.is_set() {
                    match vm.try_wait() {
                        Ok(None) => std::thread::sleep(std::time::Duration::from_millis(200)),
                        Ok(Some(status)) => {
                            eprintln!("test-vm: QEMU exited ({status}) while the node was to keep running");
                            return ExitCode::from(1);
                        }
                        Err(e) => {
                            eprintln!("test-vm: error: {e:#}");
                            return ExitCode::from(1);
                        }
                    }
                }
                vm.kill();
                return if written { ExitCode::SUCCESS } else { ExitCode::from(1) };
            }
            if outcome.interrupted {
                ExitCode::from(130)
            } else if r.verdict == Verdict::Pass && written {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        #[cfg(feature = "join")]
        Command::ControlPlane(args) => control_plane(&args, &interrupt),
        Command::Fleet(cfg) => match fleet::run(&cfg, &interrupt) {
            Ok(f) if f.interrupted => ExitCode::from(130),
            Ok(f) if f.passed => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("test-vm: error: {e:#}");
                ExitCode::from(3)
            }
        },
    }
}

/// `control-plane`: 0 stopped because stdin ended, 130 stopped by a signal (also during the
/// start), 1 a component exited on its own, 3 the start failed.
#[cfg(feature = "join")]
fn control_plane(args: &test_vm::cli::ControlPlaneArgs, interrupt: &Interrupt) -> ExitCode {
    use test_vm::cluster::{Ended, serve};
    match serve(&args.config(interrupt), &args.serve_options()) {
        Ok(Ended::StdinEof) => ExitCode::SUCCESS,
        Ok(Ended::Signal) => ExitCode::from(130),
        Ok(Ended::ComponentExited(msg)) => {
            eprintln!("test-vm: {msg}");
            ExitCode::from(1)
        }
        Err(e) if e.is::<nodeforge::io::Interrupted>() => {
            eprintln!("test-vm: interrupted while starting; everything started was stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("test-vm: error: {e:#}");
            ExitCode::from(3)
        }
    }
}
