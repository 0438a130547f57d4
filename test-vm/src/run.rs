//! One `test-vm boot`: prepare the work directory, boot QEMU (falling back from KVM to TCG
//! under `auto`), drive the stages from the serial console and the agent's channel, report.
//!
//! The loop polls the two output files every [`POLL`] and sleeps only when nothing arrived,
//! so a verdict lands within milliseconds of the line that decides it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nodeforge::io::Interrupt;

use crate::accel::{self, Accel, Probe};
use crate::cli::BootConfig;
use crate::expect::{expectations, profile_from_manifest};
use crate::initrd;
use crate::protocol::{AGENT_STAGES, AgentEvent};
use crate::qemu::{self, Guest, Qemu};
use crate::report::{AccelAttempt, Failure, Report, extract_results};
use crate::serial::{self, Signal, Tail};
use crate::stages::{Tracker, Verdict};

/// How often the output files are polled when nothing new arrived.
pub const POLL: Duration = Duration::from_millis(25);
/// The harness's own stage 0.
pub const KERNEL_STAGE: &str = "kernel";
/// From QEMU start to the kernel banner: ~1–2 s under TCG here; generous for slow CI.
const KERNEL_TIMEOUT_S: u64 = 60;
/// The harness waits this much longer than the agent's own limit for a stage, so the agent's
/// detailed failure arrives before the harness's bare timeout.
const AGENT_GRACE_S: u64 = 5;
/// Lines of serial console printed and put into JUnit on failure.
pub const TAIL_LINES: usize = 60;

/// The outcome of a run that got as far as booting.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// A signal ended the run.
    pub interrupted: bool,
}

/// Files of one run. Removed afterwards unless kept; a failed run keeps its logs (but not
/// the large overlay disk and initrd) so they can be read.
#[derive(Debug)]
struct WorkDir {
    dir: tempfile::TempDir,
    keep: bool,
}

impl WorkDir {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn finish(self, failed: bool) -> Option<PathBuf> {
        if self.keep {
            return Some(self.dir.keep());
        }
        if failed {
            for big in ["run.qcow2", "initrd.img", "agent.cpio.gz"] {
                let _ = std::fs::remove_file(self.path().join(big));
            }
            return Some(self.dir.keep());
        }
        None
    }
}

pub fn boot(cfg: &BootConfig, interrupt: &Interrupt) -> Result<Outcome> {
    let run_start = Instant::now();
    let workdir = WorkDir {
        dir: tempfile::Builder::new().prefix("test-vm-").tempdir().context("creating the work directory")?,
        keep: cfg.keep_workdir,
    };
    let work = workdir.path().to_owned();

    let manifest = cfg.manifest_path()?;
    let mut expect = expectations(&profile_from_manifest(&manifest)?);
    let mut kernel_timeout = KERNEL_TIMEOUT_S;
    for o in &cfg.stage_timeouts {
        if o.stage == KERNEL_STAGE {
            kernel_timeout = o.seconds;
        } else if AGENT_STAGES.contains(&o.stage.as_str()) {
            expect.stage_timeouts_s.insert(o.stage.clone(), o.seconds);
        } else {
            anyhow::bail!("--stage-timeout: unknown stage `{}` (kernel, {})", o.stage, AGENT_STAGES.join(", "));
        }
    }
    let mut stage_list = vec![(KERNEL_STAGE.to_owned(), Duration::from_secs(kernel_timeout))];
    for s in AGENT_STAGES {
        let agent_limit = expect.stage_timeouts_s.get(s).copied().unwrap_or(120);
        stage_list.push((s.to_owned(), Duration::from_secs(agent_limit + AGENT_GRACE_S)));
    }
    let mut tracker = Tracker::new(stage_list);

    // The run's initrd: what was built, then the agent archive.
    let agent_cpio = work.join("agent.cpio.gz");
    initrd::write_cpio_gz(&initrd::agent_overlay(&cfg.agent_path()?, &expect)?, &agent_cpio)?;
    let mut parts = vec![cfg.initrd.clone()];
    parts.extend(cfg.overlay_path()?);
    parts.push(agent_cpio);
    let run_initrd = work.join("initrd.img");
    initrd::concatenate(&parts, &run_initrd)?;

    let serial_log = cfg.serial_log.clone().unwrap_or_else(|| work.join("serial.log"));
    let agent_log = work.join("agent.jsonl");
    let guest = Guest {
        kernel: cfg.kernel.clone(),
        initrd: run_initrd,
        cmdline: cfg.cmdline(),
        disk: cfg.disk.as_ref().map(|_| work.join("run.qcow2")),
        seed: Some(cfg.seed.clone()),
        memory_mib: cfg.memory,
        cpus: cfg.cpus,
        serial_log: serial_log.clone(),
        agent_log: agent_log.clone(),
    };
    for input in [&cfg.kernel, &cfg.seed] {
        anyhow::ensure!(input.is_file(), "{} does not exist", input.display());
    }

    let plan = accel::plan(cfg.accel, accel::kvm_usable());
    let deadline = run_start + Duration::from_secs(cfg.timeout);
    let mut attempts = Vec::new();
    let mut used = None;
    let mut qemu_command = String::new();
    let mut interrupted = false;
    for (i, &accel) in plan.iter().enumerate() {
        let probing = i + 1 < plan.len();
        if let (Some(base), Some(overlay)) = (&cfg.disk, &guest.disk) {
            // A fresh overlay per attempt: an abandoned attempt may have written to its own.
            let _ = std::fs::remove_file(overlay);
            qemu::create_overlay(base, overlay)?;
        }
        for log in [&serial_log, &agent_log] {
            let _ = std::fs::remove_file(log);
        }
        let args = guest.args(accel);
        qemu_command = qemu::shell_line(cfg.qemu.as_os_str(), &args);
        let end = attempt(cfg, &args, &work, accel, probing, &mut tracker, run_start, deadline, interrupt)?;
        match end {
            AttemptEnd::Abandoned(reason) => attempts.push(AccelAttempt { accel, outcome: reason }),
            AttemptEnd::Decided { interrupted: i } => {
                interrupted = i;
                attempts.push(AccelAttempt { accel, outcome: "used".into() });
                used = Some(accel);
                break;
            }
        }
    }

    let failed = !tracker.passed();
    let failure = tracker.failed().map(|s| Failure { stage: s.name.clone(), message: s.message.clone() });
    let (cri_version, pod_ip) = extract_results(tracker.stages());
    let mut report = Report {
        verdict: if failed { Verdict::Fail } else { Verdict::Pass },
        mode: cfg.mode(),
        accel: used,
        accel_attempts: attempts,
        stages: tracker.stages().to_vec(),
        failure,
        cri_version,
        pod_ip,
        total_ms: run_start.elapsed().as_millis() as u64,
        qemu_command,
        serial_log,
        agent_log,
        workdir: None,
    };
    report.workdir = workdir.finish(failed);
    if report.workdir.is_none() {
        // The logs went with the work directory; say so rather than point at nothing.
        report.agent_log = PathBuf::new();
        if cfg.serial_log.is_none() {
            report.serial_log = PathBuf::new();
        }
    }
    Ok(Outcome { report, interrupted })
}

enum AttemptEnd {
    /// Given up on this accelerator (only while probing); try the next.
    Abandoned(String),
    /// The stages reached a verdict (or a signal ended the run) under this accelerator.
    Decided { interrupted: bool },
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    cfg: &BootConfig,
    args: &[OsString],
    work: &Path,
    accel: Accel,
    probing: bool,
    tracker: &mut Tracker,
    run_start: Instant,
    deadline: Instant,
    interrupt: &Interrupt,
) -> Result<AttemptEnd> {
    let stderr_log = work.join(format!("qemu-{accel}.log"));
    let mut vm = Qemu::spawn(cfg.qemu.as_os_str(), args, &stderr_log)?;
    let started = Instant::now();
    let now = || run_start.elapsed();
    tracker.start(now());
    let mut serial = Tail::new(&cfg.serial_log.clone().unwrap_or_else(|| work.join("serial.log")));
    let mut agent = Tail::new(&work.join("agent.jsonl"));
    let mut probing = probing;
    loop {
        if interrupt.is_set() {
            tracker.fail_current(now(), "interrupted by a signal", serde_json::Value::Null, None);
            return Ok(AttemptEnd::Decided { interrupted: true });
        }
        // Read the exit status first: once QEMU is gone its output is complete, so the lines
        // read below are all there will be.
        let exited = vm.try_wait()?;
        let mut progressed = false;
        let mut lines = serial.poll().context("reading the serial log")?;
        if exited.is_some() {
            lines.extend(serial.flush_partial());
        }
        for line in lines {
            progressed = true;
            match serial::classify(&line) {
                Some(Signal::KernelBanner) if tracker.current_name() == Some(KERNEL_STAGE) => {
                    tracker.pass_current(now(), "", serde_json::Value::Null, None);
                }
                Some(Signal::Fatal(msg)) => tracker.fail_current(now(), &msg, serde_json::Value::Null, None),
                _ => {}
            }
        }
        let mut lines = agent.poll().context("reading the agent channel")?;
        if exited.is_some() {
            lines.extend(agent.flush_partial());
        }
        for line in lines {
            progressed = true;
            match AgentEvent::parse_line(&line) {
                Ok(Some(ev)) => tracker.on_agent_event(ev, now()),
                Ok(None) => {}
                Err(msg) => tracker.fail_current(now(), &msg, serde_json::Value::Null, None),
            }
        }
        if tracker.finished() {
            return Ok(AttemptEnd::Decided { interrupted: false });
        }
        if probing {
            match accel::probe(started.elapsed(), serial.bytes(), exited.is_some(), Duration::from_secs(cfg.kvm_grace))
            {
                Probe::Wait => {}
                Probe::Started => probing = false,
                Probe::GiveUp(reason) => {
                    let qemu_said = serial::tail_lines(&stderr_log, 3);
                    let reason = if qemu_said.is_empty() { reason } else { format!("{reason}; QEMU: {qemu_said}") };
                    return Ok(AttemptEnd::Abandoned(reason));
                }
            }
        }
        if let Some(status) = exited {
            let qemu_said = serial::tail_lines(&stderr_log, 5);
            let mut msg = format!("QEMU exited ({status}) before the stage finished");
            if !qemu_said.is_empty() {
                msg.push_str(&format!("; QEMU said: {qemu_said}"));
            }
            tracker.fail_current(now(), &msg, serde_json::Value::Null, None);
            return Ok(AttemptEnd::Decided { interrupted: false });
        }
        tracker.check_deadline(now());
        if Instant::now() >= deadline {
            let msg = format!("the run's --timeout of {} s expired", cfg.timeout);
            tracker.fail_current(now(), &msg, serde_json::Value::Null, None);
        }
        if tracker.finished() {
            return Ok(AttemptEnd::Decided { interrupted: false });
        }
        if !progressed {
            std::thread::sleep(POLL);
        }
    }
}
