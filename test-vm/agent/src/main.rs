//! `nodeforge-agent EXPECT.json`: runs every stage against this node and reports to the
//! harness (see `protocol`). Exit status 0 when the node passed, 1 when it did not, 2 on a
//! usage error.

use std::path::Path;
use std::process::ExitCode;

use nodeforge_agent::exec::SystemRunner;
use nodeforge_agent::notify::Readiness;
use nodeforge_agent::report::{Reporter, default_sink};
use nodeforge_agent::{expect, stages};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, expect_path] = args.as_slice() else {
        eprintln!("usage: nodeforge-agent EXPECT.json");
        return ExitCode::from(2);
    };
    let mut reporter = Reporter::new(default_sink());
    let expect = match expect::load(Path::new(expect_path)) {
        Ok(e) => e,
        Err(e) => {
            reporter.done(false, &format!("{e:#}"), Default::default());
            return ExitCode::from(1);
        }
    };
    // One thread: the stages run strictly one after another.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            reporter.done(false, &format!("cannot start the async runtime: {e}"), Default::default());
            return ExitCode::from(1);
        }
    };
    let pod = stages::pod::PodOptions::default();
    let mut readiness = Readiness::from_env();
    let passed = rt.block_on(stages::run_all(&expect, &SystemRunner, &mut reporter, &pod, &mut readiness));
    if passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
