//! `native-worker`: pubsearch's one native binary. See the library crate for the module map.

use std::process::ExitCode;

use clap::Parser;
use pubsearch_native_worker::cli::Cli;
use pubsearch_native_worker::telemetry;

fn main() -> ExitCode {
    let telemetry = match telemetry::init(&telemetry::TraceConfig::default()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
