//! `native-worker`: pubsearch's one native binary. See the library crate for the module map.

use std::process::ExitCode;

use clap::Parser;
use pubsearch_native_worker::cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
