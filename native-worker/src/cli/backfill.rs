//! `native-worker backfill`: copy named repos, or (`--all`) every repo the relay lists for the
//! collections we index, with progress on the terminal and a summary at the end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use url::Url;

use crate::backfill::workflow::{self, AllProgress, AllRequest, Snapshot};
use crate::backfill::{self, BackfillConfig, BackfillReport, COLLECTIONS};
use crate::run;

use super::progress::Progress;

#[derive(Debug, clap::Args)]
pub(super) struct BackfillArgs {
    /// Repos to copy (repeatable).
    #[arg(long = "did", value_name = "DID")]
    dids: Vec<String>,
    /// File of DIDs to copy, one per line.
    #[arg(long, value_name = "FILE")]
    dids_file: Option<PathBuf>,
    /// Discover every repo holding a collection we index through the relay's
    /// listReposByCollection and copy them all, as a durable workflow: rerunning after a kill
    /// resumes it (`flow --backfill list` shows it).
    #[arg(long, conflicts_with_all = ["dids", "dids_file"])]
    all: bool,
    /// Relay to list repos from (with --all).
    #[arg(long, env = "RELAY_URL", default_value = backfill::DEFAULT_RELAY_URL,
          value_parser = backfill::service_url)]
    relay: Url,
    /// Collections to discover repos by (with --all; repeatable; default every one we index).
    #[arg(long = "collection", value_name = "NSID", value_parser = indexed_collection)]
    collections: Vec<String>,
    /// Repos per relay listing page (with --all): each page is one durable step.
    #[arg(long, default_value_t = AllRequest::default().listing_limit,
          value_parser = clap::value_parser!(u32).range(1..=2000))]
    repos_per_page: u32,
    /// Repos copied at once.
    #[arg(long, default_value_t = BackfillConfig::default().concurrency as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Requests in flight to one host (a PDS, the PLC directory) at once.
    #[arg(long, default_value_t = BackfillConfig::default().per_host as u16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    per_host: u16,
    /// Use this PDS for every repo instead of resolving DIDs.
    #[arg(long, value_name = "URL", value_parser = backfill::service_url)]
    pds: Option<Url>,
    /// PLC directory for resolving did:plc repos.
    #[arg(long, env = "PLC_URL", default_value = backfill::DEFAULT_PLC_URL,
          value_parser = backfill::service_url)]
    plc_url: Url,
    /// Directory holding the store.
    #[arg(long, env = "PUBSEARCH_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// File of banned DIDs: their repos are not copied. Replaces the stored list; without
    /// it the stored list applies.
    #[arg(long, env = "PUBSEARCH_BANNED_DIDS", value_name = "FILE")]
    banned_dids: Option<PathBuf>,
    /// The worker's Turso database: with it, backfilled rows are queued for Turso like live
    /// ingest's, and `run` (with the same TURSO_URL) sends them.
    #[arg(long, env = "TURSO_URL", value_name = "URL")]
    turso_url: Option<String>,
}

fn indexed_collection(text: &str) -> Result<String, String> {
    if COLLECTIONS.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "not a collection we index; one of: {}",
            COLLECTIONS.join(", ")
        ))
    }
}

pub(super) fn run(args: BackfillArgs) -> Result<()> {
    let policy = args
        .banned_dids
        .as_deref()
        .map(crate::ingest::Policy::load)
        .transpose()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = crate::store::Store::open(run::store_path(&args.data_dir))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let write_through = args.turso_url.is_some();
    if args.all {
        let request = AllRequest {
            relay: args.relay,
            collections: if args.collections.is_empty() {
                COLLECTIONS.iter().map(|c| c.to_string()).collect()
            } else {
                args.collections
            },
            listing_limit: args.repos_per_page,
            plc_url: args.plc_url,
            pds: args.pds,
            concurrency: args.concurrency.into(),
            per_host: args.per_host.into(),
            write_through,
            ..AllRequest::default()
        };
        let mut display = Display::new();
        let result = runtime.block_on(workflow::run_all(
            &store,
            &args.data_dir,
            request,
            policy,
            |snapshot| display.show(snapshot),
        ));
        display.finish();
        let progress = result.context("backfill --all")?;
        return summarise_all(&progress, write_through);
    }
    let dids = named_dids(args.dids, args.dids_file.as_deref())?;
    let config = BackfillConfig {
        pds: args.pds,
        plc_url: args.plc_url,
        write_through,
        concurrency: args.concurrency.into(),
        per_host: args.per_host.into(),
        ..BackfillConfig::default()
    };
    let report = runtime.block_on(backfill::backfill(&store, &dids, &config, policy))?;
    tracing::info!(
        repos = report.repos,
        records = report.records,
        pages = report.pages,
        already_done = report.already_done,
        malformed_records = report.malformed_records,
        failed = report.failed_repos.len(),
        "backfill finished"
    );
    failures(&report, report.failed_repos.len() as u64, write_through)
}

fn named_dids(mut dids: Vec<String>, file: Option<&Path>) -> Result<Vec<String>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        dids.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned),
        );
    }
    anyhow::ensure!(
        !dids.is_empty(),
        "name at least one repo with --did or --dids-file, or copy every repo with --all"
    );
    Ok(dids)
}

fn summarise_all(progress: &AllProgress, write_through: bool) -> Result<()> {
    let copied = &progress.copied;
    let seconds = progress
        .finished_ms
        .map(|end| (end - progress.started_ms).max(0) as f64 / 1_000.0)
        .unwrap_or_default();
    eprintln!(
        "backfill --all finished in {seconds:.1}s: {} listing pages, {} repos listed \
         ({} copied or resumed, {} already finished, {} banned), {} records in {} pages, \
         {} malformed records skipped, {} repos failed",
        progress.listing_pages,
        progress.repos_listed,
        copied
            .repos
            .saturating_sub(copied.finished_repos + copied.banned_repos),
        copied.finished_repos,
        copied.banned_repos,
        copied.records,
        copied.pages,
        copied.malformed_records,
        progress.failed,
    );
    failures(copied, progress.failed, write_through)
}

/// Lists failed repos; an error (for scripts) when there are any, since a rerun resumes them.
fn failures(report: &BackfillReport, failed: u64, write_through: bool) -> Result<()> {
    if write_through {
        tracing::info!(
            "backfilled rows are queued for Turso; `run` with the same TURSO_URL sends them"
        );
    }
    for (did, reason) in &report.failed_repos {
        eprintln!("not backfilled: {did}: {reason}");
    }
    if failed > report.failed_repos.len() as u64 {
        eprintln!(
            "… and {} more (see the log)",
            failed - report.failed_repos.len() as u64
        );
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} repos were not backfilled; run it again to resume them",
        report.repos
    );
    Ok(())
}

/// `backfill --all`'s progress: records copied, with where the listing is.
struct Display(Progress);

impl Display {
    fn new() -> Self {
        Display(Progress::new("backfill --all", "records", None))
    }

    fn show(&mut self, snapshot: &Snapshot) {
        let progress = &snapshot.progress;
        let (repos, records, failed) = snapshot.in_flight;
        let line = format!(
            "{} · this page: {repos} repos, {records} records, {failed} failed",
            progress.summary()
        );
        self.0.show(progress.copied.records + records, &line);
    }

    fn finish(&self) {
        self.0.finish();
    }
}
