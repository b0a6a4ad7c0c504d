//! Command-line interface: one subcommand per job, all with embedded defaults.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::{Timestamp, schema};
use rusqlite::{Connection, OpenFlags};

/// pubsearch native worker: ingest, sync, workflows and snapshot publishing.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Search a snapshot file exactly as the edge would, printing the JSON response.
    Search {
        /// The snapshot SQLite file.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// Search parameters as the edge takes them, e.g. `platform=leaflet` or `limit=5`.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// The query text.
        query: String,
    },
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Search {
                snapshot,
                params,
                query,
            } => search_snapshot(&snapshot, query, params),
        }
    }
}

fn search_snapshot(path: &PathBuf, query: String, mut params: Vec<(String, String)>) -> Result<()> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening snapshot {}", path.display()))?;
    schema::check_compatible(&conn)
        .with_context(|| format!("checking snapshot {}", path.display()))?;
    params.push(("q".into(), query));
    let request = SearchRequest::from_params(params)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let now = Timestamp::from_unix_millis(now.as_millis() as i64)
        .context("system clock is past year 9999")?;
    let page = search::search(&conn, &request, now)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&page.to_json(request.format()))?
    );
    Ok(())
}
