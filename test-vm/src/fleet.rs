//! `test-vm fleet`: several nodes from one image (one kernel, initrd and disk; one seed per
//! node), each through the same [`run::boot`] as a single `test-vm boot`, so each gets its own
//! copy-on-write disk layer and work directory and its QEMU is reaped the same way (the
//! `Drop` guard, the shared signal flag, `PR_SET_PDEATHSIG`).
//!
//! Nodes run one after another, or up to `--parallel N` at once on worker threads. Each
//! worker thread spawns its node's QEMU and outlives it (the QEMU is reaped before `boot`
//! returns), which is what `PR_SET_PDEATHSIG`'s per-thread semantics need. Outputs go to
//! `--out DIR`: `NAME/report.json`, `NAME/junit.xml`, `NAME/serial.log` per node, and
//! `junit.xml` with one `<testsuite>` per node.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use nodeforge::io::Interrupt;

use crate::cli::{BootConfig, FleetConfig, NodeSpec};
use crate::report::{self, TAIL_LINES, table};
use crate::run::{self, Outcome};
use crate::seed;
use crate::serial::tail_lines;
use crate::stages::Verdict;

/// What happened to one node.
#[derive(Debug)]
pub enum NodeResult {
    /// It booted and reached a verdict; `written` is whether its reports were written.
    Ran { outcome: Box<Outcome>, written: bool },
    /// It could not be set up (a missing seed, QEMU not startable): the reason.
    SetupFailed(String),
    /// A signal came before its turn.
    NotStarted,
}

#[derive(Debug)]
pub struct NodeRun {
    pub name: String,
    pub dir: PathBuf,
    pub result: NodeResult,
}

impl NodeRun {
    pub fn passed(&self) -> bool {
        matches!(&self.result, NodeResult::Ran { outcome, written: true }
            if outcome.report.verdict == Verdict::Pass && !outcome.interrupted)
    }
}

#[derive(Debug)]
pub struct FleetOutcome {
    pub nodes: Vec<NodeRun>,
    /// Every node passed.
    pub passed: bool,
    pub interrupted: bool,
}

/// The host's cores, as the limit for `--parallel N` × `--cpus`.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Usage errors found before anything starts: a node named twice, or more vCPUs at once
/// than the host has cores without `--overcommit`. Under TCG each vCPU is a host thread that
/// is busy all the time, so overcommitted guests run slower than their stage limits assume;
/// refusing says so, where clamping `--parallel` silently would make the run slower than asked.
pub fn check(cfg: &FleetConfig, cores: usize) -> Result<(), String> {
    for (i, n) in cfg.nodes.iter().enumerate() {
        if cfg.nodes[..i].iter().any(|m| m.name == n.name) {
            return Err(format!("--node {}: the name is given twice", n.name));
        }
    }
    if cfg.vm.disk_layer.is_some() || cfg.vm.keep_running {
        return Err("--disk-layer and --keep-running are for one node: use `test-vm boot`".into());
    }
    let at_once = (cfg.parallel as usize).min(cfg.nodes.len());
    let vcpus = at_once * cfg.vm.cpus as usize;
    if vcpus > cores && !cfg.overcommit {
        return Err(format!(
            "{at_once} nodes at once × --cpus {} = {vcpus} vCPUs, but this host has {cores} cores; \
             lower --parallel or --cpus, or pass --overcommit",
            cfg.vm.cpus
        ));
    }
    Ok(())
}

/// Boot every node; print each node's summary as it finishes, then a table; write the
/// combined JUnit. An error is returned only when the output directory cannot be made.
pub fn run(cfg: &FleetConfig, interrupt: &Interrupt) -> Result<FleetOutcome> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<NodeResult>>> = Mutex::new(cfg.nodes.iter().map(|_| None).collect());
    let workers = (cfg.parallel as usize).min(cfg.nodes.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(node) = cfg.nodes.get(i) else { break };
                    let result =
                        if interrupt.is_set() { NodeResult::NotStarted } else { boot_node(cfg, node, interrupt) };
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(result);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    let nodes: Vec<NodeRun> = cfg
        .nodes
        .iter()
        .zip(results)
        .map(|(n, r)| NodeRun {
            name: n.name.clone(),
            dir: cfg.out.join(&n.name),
            result: r.unwrap_or(NodeResult::NotStarted),
        })
        .collect();

    let junit_path = cfg.out.join("junit.xml");
    std::fs::write(&junit_path, combined_junit(&nodes)).with_context(|| format!("writing {}", junit_path.display()))?;
    print!("{}", summary(&nodes));
    println!("combined JUnit: {}", junit_path.display());
    let passed = nodes.iter().all(NodeRun::passed);
    Ok(FleetOutcome { nodes, passed, interrupted: interrupt.is_set() })
}

fn boot_node(cfg: &FleetConfig, node: &NodeSpec, interrupt: &Interrupt) -> NodeResult {
    let dir = cfg.out.join(&node.name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return NodeResult::SetupFailed(format!("creating {}: {e}", dir.display()));
    }
    if cfg.vm.kubeconfig.is_some() {
        warn_if_seed_names_another_host(node);
    }
    let boot = BootConfig {
        vm: cfg.vm.clone(),
        seed: node.seed.clone(),
        // The fleet's NAME is the Node name its join stage waits for.
        node_name: Some(node.name.clone()),
        json: Some(dir.join("report.json")),
        junit: Some(dir.join("junit.xml")),
        serial_log: Some(dir.join("serial.log")),
    };
    match run::boot(&boot, interrupt) {
        Ok(outcome) => {
            // One node's summary stays in one piece while other nodes print.
            let _out = std::io::stdout().lock();
            println!("== node {} ==", node.name);
            let written =
                report::emit(&outcome.report, boot.json.as_deref(), boot.junit.as_deref(), &format!(" {}:", node.name));
            NodeResult::Ran { outcome: Box::new(outcome), written }
        }
        Err(e) => {
            eprintln!("test-vm: {}: error: {e:#}", node.name);
            NodeResult::SetupFailed(format!("{e:#}"))
        }
    }
}

/// The kubelet registers under the host name the seed gives; a fleet NAME that differs is
/// probably a mistake (unless the kubelet overrides its name), so say so up front.
fn warn_if_seed_names_another_host(node: &NodeSpec) {
    if let Ok(host) = seed::node_name(&node.seed)
        && host != node.name
    {
        eprintln!(
            "test-vm: {}: warning: the seed {} names the host `{host}`; the join stage waits for `{}`",
            node.name,
            node.seed.display(),
            node.name
        );
    }
}

fn combined_junit(nodes: &[NodeRun]) -> String {
    let suites: Vec<(String, Option<&report::Report>, String)> = nodes
        .iter()
        .map(|n| match &n.result {
            NodeResult::Ran { outcome, .. } => {
                let r = &outcome.report;
                (report::suite_name(r, Some(&n.name)), Some(r), tail_lines(&r.serial_log, TAIL_LINES))
            }
            NodeResult::SetupFailed(msg) => (format!("test-vm.{}", n.name), None, msg.clone()),
            NodeResult::NotStarted => {
                (format!("test-vm.{}", n.name), None, "not started: interrupted by a signal".to_owned())
            }
        })
        .collect();
    report::junit(&suites)
}

/// One line per node: NODE, VERDICT, the failed stage, the time, where its reports are.
pub fn summary(nodes: &[NodeRun]) -> String {
    let mut rows = vec![["NODE", "VERDICT", "FAILED-STAGE", "TIME", "REPORTS"].map(str::to_owned).to_vec()];
    for n in nodes {
        let (verdict, stage, time) = match &n.result {
            NodeResult::Ran { outcome, written } => {
                let r = &outcome.report;
                let verdict = match (r.verdict, outcome.interrupted, written) {
                    (_, true, _) => "interrupted",
                    (Verdict::Pass, false, true) => "pass",
                    (Verdict::Pass, false, false) => "FAIL (reports)",
                    _ => "FAIL",
                };
                let stage = r.failure.as_ref().map_or("-", |f| f.stage.as_str());
                (verdict.to_owned(), stage.to_owned(), format!("{:.1} s", r.total_ms as f64 / 1000.0))
            }
            NodeResult::SetupFailed(_) => ("ERROR".to_owned(), "setup".to_owned(), "-".to_owned()),
            NodeResult::NotStarted => ("not started".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        rows.push(vec![n.name.clone(), verdict, stage, time, display(&n.dir)]);
    }
    let passed = nodes.iter().filter(|n| n.passed()).count();
    let mut out = table(&rows);
    out.push_str(&format!("fleet: {passed} of {} nodes passed\n", nodes.len()));
    out
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn fleet(args: &[&str]) -> FleetConfig {
        let argv = ["test-vm", "fleet", "--kernel", "k", "--initrd", "i", "--disk", "d", "--out", "o"];
        match crate::cli::Cli::try_parse_from(argv.iter().chain(args)).unwrap().command {
            crate::cli::Command::Fleet(f) => f,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parallelism_is_bounded_by_the_cores() {
        let f = fleet(&["--node", "a=s", "--node", "b=s", "--parallel", "2", "--cpus", "1"]);
        assert_eq!(check(&f, 2), Ok(()));
        let f = fleet(&["--node", "a=s", "--node", "b=s", "--parallel", "2"]);
        let err = check(&f, 2).unwrap_err();
        assert!(err.contains("2 nodes at once × --cpus 2 = 4 vCPUs, but this host has 2 cores"), "{err}");
        let f = fleet(&["--node", "a=s", "--node", "b=s", "--parallel", "2", "--overcommit"]);
        assert_eq!(check(&f, 2), Ok(()));
        // More workers than nodes is no more load than one per node.
        let f = fleet(&["--node", "a=s", "--parallel", "8", "--cpus", "2"]);
        assert_eq!(check(&f, 2), Ok(()));
        let f = fleet(&["--node", "a=s", "--node", "a=t"]);
        assert!(check(&f, 64).unwrap_err().contains("given twice"));
    }

    #[test]
    fn the_summary_names_every_node() {
        let nodes = vec![
            NodeRun { name: "a".into(), dir: "o/a".into(), result: NodeResult::SetupFailed("no seed".into()) },
            NodeRun { name: "bb".into(), dir: "o/bb".into(), result: NodeResult::NotStarted },
        ];
        let s = summary(&nodes);
        assert!(s.starts_with("NODE   VERDICT       FAILED-STAGE   TIME   REPORTS\n"), "{s}");
        assert!(s.contains("a      ERROR         setup          -      o/a\n"), "{s}");
        assert!(s.contains("fleet: 0 of 2 nodes passed"), "{s}");
        let x = combined_junit(&nodes);
        assert!(x.contains("<error message=\"no seed\">") && x.contains("not started"), "{x}");
    }
}
