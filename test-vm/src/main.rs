//! The `test-vm` binary: parse, run, print, map the verdict to an exit code.
//!
//! Exit codes: 0 every stage passed; 1 a stage failed; 2 usage error; 3 the run could not be
//! set up (missing file, QEMU not startable); 130 interrupted by a signal.

use std::process::ExitCode;

use clap::Parser;
use nodeforge::io::Interrupt;
use test_vm::cli::{Cli, Command};
use test_vm::report;
use test_vm::run::{self, TAIL_LINES};
use test_vm::serial::tail_lines;
use test_vm::stages::Verdict;

fn main() -> ExitCode {
    let Command::Boot(cfg) = Cli::parse().command;
    // Before QEMU exists: a signal from here on is seen by the run loop, which stops QEMU.
    let interrupt = match Interrupt::install() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("test-vm: installing signal handlers: {e}");
            return ExitCode::from(3);
        }
    };
    let outcome = match run::boot(&cfg, &interrupt) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("test-vm: error: {e:#}");
            return ExitCode::from(3);
        }
    };
    let r = &outcome.report;
    print!("{}", report::summary(r));
    let tail = tail_lines(&r.serial_log, TAIL_LINES);
    let mut ok = true;
    if let Some(path) = &cfg.json {
        ok &= report_err(report::write_json(r, path));
    }
    if let Some(path) = &cfg.junit {
        ok &= report_err(
            std::fs::write(path, report::junit(r, &tail)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        );
    }
    if let Some(f) = &r.failure {
        eprintln!("test-vm: stage `{}` failed: {}", f.stage, f.message);
        eprintln!("test-vm: QEMU command line:\n  {}", r.qemu_command);
        if let Some(dir) = &r.workdir {
            eprintln!("test-vm: logs kept in {}", dir.display());
        }
        eprintln!("test-vm: serial console, last {TAIL_LINES} lines ({}):\n{tail}", r.serial_log.display());
    }
    if outcome.interrupted {
        ExitCode::from(130)
    } else if r.verdict == Verdict::Pass && ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn report_err(r: anyhow::Result<()>) -> bool {
    r.map_err(|e| eprintln!("test-vm: writing a report: {e:#}")).is_ok()
}
