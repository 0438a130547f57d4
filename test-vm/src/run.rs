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

use crate::accel::{self, Accel, AccelChoice, Probe};
use crate::cli::BootConfig;
use crate::expect::{expectations, profile_from_manifest};
use crate::initrd;
use crate::join::{self, JOIN_STAGE, JoinSpec};
use crate::protocol::{AgentEvent, Stage};
use crate::qemu::{self, Guest, Qemu};
use crate::report::{AccelAttempt, Failure, Report, extract_results};
use crate::seed;
use crate::serial::{self, KernelPhase, Signal, Tail};
use crate::stages::{Tracker, Verdict};
use nodeforge::profile::Profile;

/// How often the output files are polled when nothing new arrived.
pub const POLL: Duration = Duration::from_millis(25);
/// After a [`Signal::Doomed`] line, how long the agent has to give its own (more telling)
/// verdict before the run fails with that line.
const DOOMED_GRACE: Duration = Duration::from_secs(90);
/// The harness's own stage 0.
pub const KERNEL_STAGE: &str = "kernel";
/// From QEMU start to the kernel banner: ~1–2 s under TCG here; generous for slow CI.
const KERNEL_TIMEOUT_S: u64 = 60;
/// The harness waits this much longer than the agent's own limit for a stage, so the agent's
/// detailed failure arrives before the harness's bare timeout.
const AGENT_GRACE_S: u64 = 5;
pub use crate::report::TAIL_LINES;

/// The outcome of a run that got as far as booting.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// A signal ended the run.
    pub interrupted: bool,
    /// The node, still running (`--keep-running` after a pass): stopped when dropped.
    pub kept: Option<Qemu>,
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
        keep: cfg.vm.keep_workdir,
    };
    let work = workdir.path().to_owned();

    let manifest = cfg.vm.manifest_path()?;
    let profile = profile_from_manifest(&manifest)?;
    let mut expect = expectations(&profile);
    let mut kernel_timeout = KERNEL_TIMEOUT_S;
    for o in &cfg.vm.stage_timeouts {
        if o.stage == KERNEL_STAGE {
            kernel_timeout = o.seconds;
        } else if let Some(stage) = Stage::CHECKS.into_iter().find(|s| s.name() == o.stage) {
            expect.stage_timeouts_s.set(stage, o.seconds);
        } else {
            let names: Vec<&str> = Stage::CHECKS.iter().map(|s| s.name()).collect();
            anyhow::bail!("--stage-timeout: unknown stage `{}` (kernel, {})", o.stage, names.join(", "));
        }
    }
    let join = join_spec(cfg, &expect.containerd_version, &profile)?;
    expect.join_stage_follows = join.is_some();
    // The runtime is checked as soon as containerd is up, unless the seed brings it (a
    // first-boot seed unpacks the overlay in cloud-init's final stage). A seed that cannot be
    // read here keeps the order that cannot wait on itself.
    expect.runtime_first = matches!(seed::carries_overlay(&cfg.seed), Ok(false));
    let mut stage_list = vec![(KERNEL_STAGE.to_owned(), Duration::from_secs(kernel_timeout))];
    for s in Stage::order(expect.runtime_first) {
        let agent_limit = expect.stage_timeouts_s.seconds(s);
        stage_list.push((s.name().to_owned(), Duration::from_secs(agent_limit + AGENT_GRACE_S)));
    }
    if let Some(j) = &join {
        stage_list.push((JOIN_STAGE.to_owned(), j.timeout + Duration::from_secs(AGENT_GRACE_S)));
    }
    let mut tracker = Tracker::new(stage_list).with_host_stages(usize::from(join.is_some()));

    // The run's initrd: what was built, then the agent archive.
    let agent_cpio = work.join("agent.cpio.gz");
    initrd::write_cpio_gz(
        &initrd::agent_overlay(&cfg.vm.agent_path()?, &expect, !initrd::node_has_kubelet(&profile))?,
        &agent_cpio,
    )?;
    let mut parts = vec![cfg.vm.initrd.clone()];
    parts.extend(cfg.vm.overlay_path()?);
    parts.push(agent_cpio);
    let run_initrd = work.join("initrd.img");
    initrd::concatenate(&parts, &run_initrd)?;

    let serial_log = cfg.serial_log.clone().unwrap_or_else(|| work.join("serial.log"));
    let agent_log = work.join("agent.jsonl");
    let guest = Guest {
        kernel: cfg.vm.kernel.clone(),
        initrd: run_initrd,
        cmdline: cfg.vm.cmdline(),
        disk: cfg.vm.disk.as_ref().map(|_| cfg.vm.disk_layer.clone().unwrap_or_else(|| work.join("run.qcow2"))),
        seed: Some(cfg.seed.clone()),
        memory_mib: cfg.vm.memory,
        cpus: cfg.vm.cpus,
        serial_log: serial_log.clone(),
        agent_log: agent_log.clone(),
    };
    for input in [&cfg.vm.kernel, &cfg.seed] {
        anyhow::ensure!(input.is_file(), "{} does not exist", input.display());
    }

    let mut attempts = Vec::new();
    let mut plan = accel::plan(cfg.vm.accel, accel::kvm_usable());
    if cfg.vm.accel == AccelChoice::Auto && plan.len() > 1 {
        // A KVM that opens but cannot run guests is found in ~1.5 s, not after --kvm-grace.
        if let Err(reason) = qemu::probe_kvm(cfg.vm.qemu.as_os_str(), &work) {
            attempts.push(AccelAttempt { accel: Accel::Kvm, outcome: format!("probe: {reason}") });
            plan.retain(|&a| a != Accel::Kvm);
        }
    }
    let deadline = run_start + Duration::from_secs(cfg.vm.timeout);
    let mut used = None;
    let mut qemu_command = String::new();
    let mut interrupted = false;
    // A --disk-layer that exists is the machine's disk as it was left: used as it is. (An
    // abandoned KVM attempt never ran the guest, so it wrote nothing to it.)
    let reused_layer = cfg.vm.disk_layer.as_ref().is_some_and(|l| l.exists());
    let mut kept = None;
    // A guest whose kernel stalls under emulation is booted once more.
    let mut retry_stall = true;
    let mut at = 0;
    while let Some(&accel) = plan.get(at) {
        let probing = at + 1 < plan.len();
        if let (Some(base), Some(overlay), false) = (&cfg.vm.disk, &guest.disk, reused_layer) {
            // A fresh overlay per attempt: an abandoned attempt may have written to its own.
            let _ = std::fs::remove_file(overlay);
            qemu::create_overlay(base, overlay)?;
        }
        for log in [&serial_log, &agent_log] {
            let _ = std::fs::remove_file(log);
        }
        let args = guest.args(accel);
        qemu_command = qemu::shell_line(cfg.vm.qemu.as_os_str(), &args);
        let this = Attempt {
            cfg,
            args: &args,
            work: &work,
            accel,
            probing,
            run_start,
            deadline,
            join: join.as_ref(),
            interrupt,
            retry_stall,
        };
        let end = attempt(this, &mut tracker)?;
        match end {
            AttemptEnd::Abandoned(reason) => {
                attempts.push(AccelAttempt { accel, outcome: reason });
                at += 1;
            }
            AttemptEnd::Stalled(reason) => {
                attempts.push(AccelAttempt { accel, outcome: format!("{reason}; booted again") });
                retry_stall = false;
            }
            AttemptEnd::Decided { interrupted: i, vm } => {
                interrupted = i;
                kept = vm;
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
        mode: cfg.vm.mode(),
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
    Ok(Outcome { report, interrupted, kept })
}

/// The `join` stage's target, when `--kubeconfig` asks for it: the node's name (`--node-name`,
/// else the seed's `local-hostname`) and its runtime (`--expect-runtime-version`, else
/// `containerd://` + the manifest's containerd version). Checked before QEMU starts.
fn join_spec(cfg: &BootConfig, containerd_version: &str, profile: &Profile) -> Result<Option<JoinSpec>> {
    let Some(kubeconfig) = &cfg.vm.kubeconfig else { return Ok(None) };
    anyhow::ensure!(
        join::AVAILABLE,
        "--kubeconfig: this test-vm was built without the `join` feature (build it with default features)"
    );
    anyhow::ensure!(kubeconfig.is_file(), "the kubeconfig {} does not exist", kubeconfig.display());
    let node_name = match &cfg.node_name {
        Some(n) => n.clone(),
        None => seed::node_name(&cfg.seed).context("naming the node the join stage waits for")?,
    };
    let expected_runtime =
        cfg.vm.expect_runtime_version.clone().unwrap_or_else(|| format!("containerd://{containerd_version}"));
    Ok(Some(JoinSpec {
        kubeconfig: kubeconfig.clone(),
        node_name,
        expected_runtime,
        timeout: cfg.vm.join_timeout,
        poll: join::POLL,
        pod_image: probe_image(profile),
    }))
}

/// The image the join stage's probe pod runs: the first preloaded image that is not the
/// sandbox image (which may have no shell).
fn probe_image(profile: &Profile) -> Option<String> {
    let sandbox = nodeforge::render::sandbox_image(profile).to_string();
    profile.images.iter().map(|i| i.reference.to_string()).find(|r| *r != sandbox)
}

/// kubeadm's own error, when the agent's `cloud-init` stage found the seed's join failed.
fn guest_join_error(tracker: &Tracker) -> Option<String> {
    let stage = tracker.stages().iter().find(|s| s.name == "cloud-init")?;
    stage.detail.get("kubeadm_join_error")?.as_str().map(str::to_owned)
}

/// QEMU handed back to the caller when the node passed and is to keep running.
fn keep(vm: Qemu, cfg: &BootConfig, tracker: &Tracker) -> Option<Qemu> {
    (cfg.vm.keep_running && tracker.passed()).then_some(vm)
}

enum AttemptEnd {
    /// Given up on this accelerator (only while probing); try the next.
    Abandoned(String),
    /// The guest's kernel went silent before starting init ([`Attempt::retry_stall`]): boot
    /// it again under the same accelerator.
    Stalled(String),
    /// The stages reached a verdict (or a signal ended the run) under this accelerator.
    Decided {
        interrupted: bool,
        /// QEMU, still running: every stage passed and `--keep-running` asked to keep it.
        vm: Option<Qemu>,
    },
}

/// One try at booting the node under one accelerator, and what it needs from the run.
struct Attempt<'a> {
    cfg: &'a BootConfig,
    /// QEMU's arguments for this accelerator.
    args: &'a [OsString],
    work: &'a Path,
    accel: Accel,
    /// Another accelerator follows: give this one up if the guest does not start.
    probing: bool,
    run_start: Instant,
    deadline: Instant,
    join: Option<&'a JoinSpec>,
    interrupt: &'a Interrupt,
    /// A kernel stall ends the attempt for another try (else it fails `boot`).
    retry_stall: bool,
}

fn attempt(a: Attempt<'_>, tracker: &mut Tracker) -> Result<AttemptEnd> {
    let Attempt { cfg, args, work, accel, probing, run_start, deadline, join, interrupt, retry_stall } = a;
    let stderr_log = work.join(format!("qemu-{accel}.log"));
    let mut vm = Qemu::spawn(cfg.vm.qemu.as_os_str(), args, &stderr_log)?;
    let started = Instant::now();
    let now = || run_start.elapsed();
    tracker.start(now());
    let mut serial = Tail::new(&cfg.serial_log.clone().unwrap_or_else(|| work.join("serial.log")));
    let mut agent = Tail::new(&work.join("agent.jsonl"));
    let mut probing = probing;
    let mut doomed: Option<(String, Instant)> = None;
    // The kernel's own boot, its last console line and when the console last grew.
    let mut phase = KernelPhase::default();
    let mut last_line = String::new();
    let mut last_output = Instant::now();
    let stall = Duration::from_secs(cfg.vm.kernel_stall);
    loop {
        if interrupt.is_set() {
            tracker.fail_current(now(), "interrupted by a signal", serde_json::Value::Null, None);
            return Ok(AttemptEnd::Decided { interrupted: true, vm: None });
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
            phase = phase.after(&line);
            last_output = Instant::now();
            match serial::classify(&line) {
                Some(Signal::KernelBanner) if tracker.current_name() == Some(KERNEL_STAGE) => {
                    tracker.pass_current(now(), "", serde_json::Value::Null, None);
                }
                Some(Signal::Fatal(msg)) => tracker.fail_current(now(), &msg, serde_json::Value::Null, None),
                Some(Signal::Doomed(msg)) if doomed.is_none() => doomed = Some((msg, Instant::now())),
                _ => {}
            }
            last_line = line;
        }
        let mut lines = agent.poll().context("reading the agent channel")?;
        if exited.is_some() {
            lines.extend(agent.flush_partial());
        }
        for line in lines {
            progressed = true;
            // The agent runs in the guest's user space: the kernel's own boot is over.
            phase = KernelPhase::Init;
            match AgentEvent::parse_line(&line) {
                Ok(Some(ev)) => tracker.on_agent_event(ev, now()),
                Ok(None) => {}
                Err(msg) => tracker.fail_current(now(), &msg, serde_json::Value::Null, None),
            }
        }
        if join.is_some()
            && tracker.host_stage_due()
            && let Some(error) = guest_join_error(tracker)
        {
            // The guest's kubeadm gave up already: no Node will come, say why at once.
            let msg = format!("kubeadm join failed on the node: {error}");
            tracker.fail_current(now(), &msg, serde_json::json!({"kubeadm_join_error": error}), None);
            return Ok(AttemptEnd::Decided { interrupted: false, vm: keep(vm, cfg, tracker) });
        }
        if let Some(spec) = join.filter(|_| tracker.host_stage_due()) {
            // The guest is up and the agent is done: QEMU keeps running while the harness
            // asks the API server about the node.
            let spec = JoinSpec {
                timeout: spec.timeout.min(deadline.saturating_duration_since(Instant::now())),
                ..spec.clone()
            };
            let mut stop = || {
                if interrupt.is_set() {
                    return Some("interrupted by a signal".to_owned());
                }
                match vm.try_wait() {
                    Ok(None) => None,
                    Ok(Some(status)) => Some(format!("QEMU exited ({status}) while waiting for the node to join")),
                    Err(e) => Some(format!("{e:#}")),
                }
            };
            let r = join::wait_for_node(&spec, &mut stop);
            if r.passed {
                tracker.pass_current(now(), &r.message, r.detail, None);
            } else {
                tracker.fail_current(now(), &r.message, r.detail, None);
            }
            return Ok(AttemptEnd::Decided { interrupted: interrupt.is_set(), vm: keep(vm, cfg, tracker) });
        }
        if tracker.finished() {
            return Ok(AttemptEnd::Decided { interrupted: false, vm: keep(vm, cfg, tracker) });
        }
        if probing {
            match accel::probe(
                started.elapsed(),
                serial.bytes(),
                exited.is_some(),
                Duration::from_secs(cfg.vm.kvm_grace),
            ) {
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
            return Ok(AttemptEnd::Decided { interrupted: false, vm: keep(vm, cfg, tracker) });
        }
        // Past the banner, before init, and silent: the guest's CPUs are stuck in the kernel.
        if !probing
            && phase == KernelPhase::Booting
            && tracker.current_name() != Some(KERNEL_STAGE)
            && !tracker.finished()
            && last_output.elapsed() >= stall
        {
            let reason = format!(
                "the guest's kernel stalled before starting init: no console output for {} s after `{}` \
                 (an emulator stall, not the node)",
                stall.as_secs(),
                last_line.trim()
            );
            if retry_stall {
                return Ok(AttemptEnd::Stalled(reason));
            }
            tracker.fail_current(now(), &reason, serde_json::Value::Null, None);
        }
        if let Some((msg, since)) = &doomed
            && since.elapsed() >= DOOMED_GRACE
        {
            let msg = format!("{msg} (and the agent gave no verdict within {} s)", DOOMED_GRACE.as_secs());
            tracker.fail_current(now(), &msg, serde_json::Value::Null, None);
        }
        tracker.check_deadline(now());
        if Instant::now() >= deadline {
            let msg = format!("the run's --timeout of {} s expired", cfg.vm.timeout);
            tracker.fail_current(now(), &msg, serde_json::Value::Null, None);
        }
        if tracker.finished() {
            return Ok(AttemptEnd::Decided { interrupted: false, vm: keep(vm, cfg, tracker) });
        }
        if !progressed {
            std::thread::sleep(POLL);
        }
    }
}
