//! The `nodeforge` binary: parse arguments, dispatch, map failures to exit codes.

use std::process::ExitCode;

use clap::Parser;
use nodeforge::cli::Cli;
use nodeforge::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::init_logging(cli.verbose);
    let json = cli.json;
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => commands::report_error(&e, json),
    }
}
