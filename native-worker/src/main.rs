//! `native-worker`: pubsearch's one native binary.
//!
//! It will consume the firehose, sync with Turso, run durable workflows and publish snapshots;
//! each lands as its own module and subcommand. Today it can query a snapshot exactly as the edge
//! does, which is how operators inspect a build by hand.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
