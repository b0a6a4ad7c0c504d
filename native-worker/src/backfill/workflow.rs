//! `backfill --all` as a durable workflow on [`crate::flow`]: list a page of repos from the
//! relay, copy them, continue as new with the next cursor — until every collection's listing
//! is exhausted.
//!
//! Each turn's state (collection, cursor, totals) is the workflow's input, so history stays one
//! page long however large the network, and `flow --backfill list` shows where it is. Both steps
//! are safe to repeat: a listing is a read, and a copy skips every repo and collection an
//! earlier attempt finished (the store's backfill progress), resuming an unfinished one at its
//! last durable cursor. A kill -9 anywhere therefore costs at most the pages in flight.
//!
//! The workflows live in their own flow database ([`flow_path`]), not the worker's: one engine
//! owns a database, and a backfill of the whole network takes hours, so it must not stop `run`
//! from starting (or wait for it). Both write the same store, which WAL and the writers' busy
//! timeout allow (ARCHITECTURE.md, "Backfill").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::discover::{RepoPage, list_repos};
use super::http::Http;
use super::{BackfillConfig, BackfillReport, COLLECTIONS, DEFAULT_PLC_URL, DEFAULT_RELAY_URL};
use crate::flow::{
    Engine, EngineOptions, FlowError, OrchestrationContext, Registry, RetryPolicy, Status,
};
use crate::ingest::Policy;
use crate::store::{Store, StoreError};

/// The orchestration's registered name.
pub const ORCHESTRATION: &str = "backfill.all";

/// How instance ids start (`backfill:all:<unix ms>`).
const INSTANCES: &str = "backfill:all:";

/// Failed repos listed by DID in the report; past this many they are only counted.
const MAX_LISTED_FAILURES: usize = 1_000;

/// Where a data directory keeps the backfill's workflows.
pub fn flow_path(data_dir: &Path) -> PathBuf {
    data_dir.join("backfill-flow.db")
}

/// What `backfill --all` was asked to do; recorded with the workflow, so a resumed backfill
/// keeps its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllRequest {
    /// The relay whose `listReposByCollection` is paged.
    pub relay: Url,
    /// The collections to discover repos by.
    pub collections: Vec<String>,
    /// Repos per listing page (and so per copy step).
    pub listing_limit: u32,
    pub plc_url: Url,
    /// Use this PDS for every repo instead of resolving DIDs.
    pub pds: Option<Url>,
    pub concurrency: usize,
    pub per_host: usize,
    pub write_through: bool,
    /// Per-request limits (see [`BackfillConfig`]).
    pub request_timeout_ms: u64,
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for AllRequest {
    fn default() -> Self {
        let config = BackfillConfig::default();
        AllRequest {
            relay: Url::parse(&format!("{DEFAULT_RELAY_URL}/")).expect("valid URL"),
            collections: COLLECTIONS.iter().map(|c| c.to_string()).collect(),
            listing_limit: 500,
            plc_url: Url::parse(&format!("{DEFAULT_PLC_URL}/")).expect("valid URL"),
            pds: None,
            concurrency: config.concurrency,
            per_host: config.per_host,
            write_through: false,
            request_timeout_ms: config.request_timeout.as_millis() as u64,
            max_attempts: config.max_attempts,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
        }
    }
}

impl AllRequest {
    fn config(&self) -> BackfillConfig {
        BackfillConfig {
            pds: self.pds.clone(),
            plc_url: self.plc_url.clone(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_attempts: self.max_attempts,
            backoff: crate::firehose::Backoff::new(
                Duration::from_millis(self.retry_initial_ms),
                Duration::from_millis(self.retry_max_ms),
            ),
            write_through: self.write_through,
            concurrency: self.concurrency,
            per_host: self.per_host,
            ..BackfillConfig::default()
        }
    }
}

/// The workflow's state between pages, and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllProgress {
    pub request: AllRequest,
    /// Index into `request.collections` of the listing being paged.
    pub collection: usize,
    /// Where that listing continues.
    pub cursor: Option<String>,
    /// Listing pages copied so far.
    pub listing_pages: u64,
    /// Repo entries the relay listed so far (a repo holding several collections is listed
    /// under each).
    pub repos_listed: u64,
    /// Everything copied so far; `failed_repos` lists up to [`MAX_LISTED_FAILURES`].
    pub copied: BackfillReport,
    /// Failed repos in all, listed or not.
    pub failed: u64,
    pub started_ms: i64,
    /// Set once every listing is exhausted.
    pub finished_ms: Option<i64>,
}

impl AllProgress {
    fn new(request: AllRequest, started_ms: i64) -> Self {
        AllProgress {
            request,
            collection: 0,
            cursor: None,
            listing_pages: 0,
            repos_listed: 0,
            copied: BackfillReport::default(),
            failed: 0,
            started_ms,
            finished_ms: None,
        }
    }

    /// The collection being listed, or `None` once all are done.
    pub fn current_collection(&self) -> Option<&str> {
        self.request
            .collections
            .get(self.collection)
            .map(String::as_str)
    }

    /// Adds one page's copy, and moves on to the next page (or collection).
    fn advance(&mut self, page: &RepoPage, copied: BackfillReport) {
        self.listing_pages += 1;
        self.repos_listed += page.dids.len() as u64;
        let total = &mut self.copied;
        total.repos += copied.repos;
        total.finished_repos += copied.finished_repos;
        total.records += copied.records;
        total.pages += copied.pages;
        total.already_done += copied.already_done;
        total.banned_repos += copied.banned_repos;
        total.malformed_records += copied.malformed_records;
        self.failed += copied.failed_repos.len() as u64;
        let room = MAX_LISTED_FAILURES.saturating_sub(total.failed_repos.len());
        total
            .failed_repos
            .extend(copied.failed_repos.into_iter().take(room));
        match &page.cursor {
            Some(cursor) => self.cursor = Some(cursor.clone()),
            None => {
                self.collection += 1;
                self.cursor = None;
            }
        }
    }

    /// One line for `flow list` and the progress display.
    pub fn summary(&self) -> String {
        let place = match self.current_collection() {
            Some(collection) => format!(
                "listing {collection} ({}/{})",
                self.collection + 1,
                self.request.collections.len()
            ),
            None => "done".to_string(),
        };
        format!(
            "{place}: {} pages, {} repos listed, {} records copied, {} failed",
            self.listing_pages, self.repos_listed, self.copied.records, self.failed
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ListStep {
    request: AllRequest,
    collection: String,
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CopyStep {
    request: AllRequest,
    dids: Vec<String>,
    /// Repos that already failed in this backfill: left for the next run, not retried under
    /// another collection's listing.
    skip: Vec<String>,
    /// Which listing page this is (live progress is reported against it).
    page: u64,
}

async fn backfill_all(
    ctx: OrchestrationContext,
    mut progress: AllProgress,
) -> Result<AllProgress, String> {
    let Some(collection) = progress.current_collection().map(str::to_owned) else {
        progress.finished_ms = Some(ctx.now_ms());
        ctx.set_custom_status(progress.summary());
        return Ok(progress);
    };
    ctx.set_custom_status(progress.summary());
    let listing = ListStep {
        request: progress.request.clone(),
        collection,
        cursor: progress.cursor.clone(),
    };
    let page: RepoPage = ctx
        .activity_with_retry("backfill.list", &listing, listing_policy())
        .await
        .map_err(|error| format!("listing {} failed: {error}", listing.collection))?;
    let skip = progress
        .copied
        .failed_repos
        .iter()
        .map(|(did, _)| did.clone())
        .collect();
    let copying = CopyStep {
        request: progress.request.clone(),
        dids: page.dids.clone(),
        skip,
        page: progress.listing_pages,
    };
    let copied: BackfillReport = ctx
        .activity_with_retry("backfill.copy", &copying, copy_policy())
        .await
        .map_err(|error| format!("copying listed repos failed: {error}"))?;
    progress.advance(&page, copied);
    ctx.set_custom_status(progress.summary());
    ctx.continue_as_new(&progress).await
}

/// A listing is retried for a while (the HTTP layer already retried each request): a relay
/// outage of a few minutes should not end a backfill of hours.
fn listing_policy() -> RetryPolicy {
    RetryPolicy::exponential(8, Duration::from_secs(1), Duration::from_secs(60))
}

/// A copy step fails only when the store or the writer does; each repo's own failures are in
/// its report.
fn copy_policy() -> RetryPolicy {
    RetryPolicy::exponential(3, Duration::from_secs(1), Duration::from_secs(10))
}

/// Progress of the copy step running in this process, for a live display between pages.
#[derive(Debug, Default)]
pub struct LiveProgress {
    page: AtomicU64,
    repos: AtomicU64,
    records: AtomicU64,
    failed: AtomicU64,
}

impl LiveProgress {
    /// `(repos, records, failed)` copied so far by the step copying listing page `page`, or
    /// zeros if that is not the page in flight.
    pub fn of_page(&self, page: u64) -> (u64, u64, u64) {
        if self.page.load(Ordering::Acquire) != page + 1 {
            return (0, 0, 0);
        }
        (
            self.repos.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn begin(&self, page: u64) {
        self.page.store(0, Ordering::Release);
        for counter in [&self.repos, &self.records, &self.failed] {
            counter.store(0, Ordering::Relaxed);
        }
        self.page.store(page + 1, Ordering::Release);
    }

    fn update(&self, report: &BackfillReport) {
        self.repos.store(report.repos as u64, Ordering::Relaxed);
        self.records.store(report.records, Ordering::Relaxed);
        self.failed
            .store(report.failed_repos.len() as u64, Ordering::Relaxed);
    }
}

/// Registers the workflow and its activities, which copy into `store`.
pub fn register(registry: &mut Registry, store: Store, live: Arc<LiveProgress>) {
    registry
        .orchestration(ORCHESTRATION, 1, backfill_all)
        .repeatable_activity("backfill.list", |_, step: ListStep| async move {
            let http = Http::new(&step.request.config()).map_err(|error| error.to_string())?;
            list_repos(
                &http,
                &step.request.relay,
                &step.collection,
                step.cursor.as_deref(),
                step.request.listing_limit,
            )
            .await
            .map_err(|error| error.to_string())
        })
        .repeatable_activity("backfill.copy", move |_, step: CopyStep| {
            let (store, live) = (store.clone(), Arc::clone(&live));
            async move {
                let dids = to_copy(step.dids, &step.skip);
                live.begin(step.page);
                let config = step.request.config();
                let on_repo = |report: &BackfillReport| live.update(report);
                super::copy::copy_repos(&store, &dids, &config, None, on_repo)
                    .await
                    .map_err(|error| error.to_string())
            }
        });
}

/// A page's DIDs, each once, without those to skip.
fn to_copy(listed: Vec<String>, skip: &[String]) -> Vec<String> {
    let mut seen: std::collections::HashSet<String> = skip.iter().cloned().collect();
    listed
        .into_iter()
        .filter(|did| seen.insert(did.clone()))
        .collect()
}

/// Why `backfill --all` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AllError {
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot replace the stored ban list: {0}")]
    Policy(rusqlite::Error),
}

/// Where a running backfill is, as the CLI shows it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub instance: String,
    pub progress: AllProgress,
    /// Repos, records and failures of the page being copied, not yet in `progress`.
    pub in_flight: (u64, u64, u64),
}

/// Runs `backfill --all` on its own engine over `data_dir`'s backfill flow database, resuming
/// an interrupted one (whose recorded options then apply) instead of starting another, and
/// returns its final state. `policy` replaces the stored ban list first; `on_progress` is
/// called about once a second.
pub async fn run_all(
    store: &Store,
    data_dir: &Path,
    request: AllRequest,
    policy: Option<Policy>,
    mut on_progress: impl FnMut(&Snapshot),
) -> Result<AllProgress, AllError> {
    if let Some(policy) = policy {
        store
            .writer()?
            .replace_banned_dids(&policy.banned_dids())
            .map_err(AllError::Policy)?;
    }
    let live = Arc::new(LiveProgress::default());
    let mut registry = Registry::new();
    register(&mut registry, store.clone(), Arc::clone(&live));
    let engine = Engine::start(flow_path(data_dir), registry, EngineOptions::default()).await?;
    let client = engine.client();
    let result = async {
        let running = client.list(Some(Status::Running), Some(INSTANCES), 100)?;
        let instance = match running
            .instances
            .iter()
            .find(|info| info.name == ORCHESTRATION && info.id.starts_with(INSTANCES))
        {
            Some(info) => {
                tracing::info!(
                    instance = info.id,
                    "resuming the interrupted backfill (its recorded options apply)"
                );
                info.id.clone()
            }
            None => {
                let instance = format!("{INSTANCES}{}", crate::flow::now_ms());
                let progress = AllProgress::new(request, crate::flow::now_ms());
                client.start(ORCHESTRATION, &instance, &progress).await?;
                tracing::info!(instance, "backfill started");
                instance
            }
        };
        loop {
            match client.wait(&instance, Duration::from_secs(1)).await {
                Ok(info) => return Ok(info.output()?),
                Err(FlowError::Timeout { .. }) => {
                    if let Some(info) = client.status(&instance)?
                        && let Ok(progress) = serde_json::from_str::<AllProgress>(&info.input)
                    {
                        let in_flight = live.of_page(progress.listing_pages);
                        on_progress(&Snapshot {
                            instance: instance.clone(),
                            progress,
                            in_flight,
                        });
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    .await;
    engine.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_copied_once_per_repo_without_the_repos_that_failed() {
        let listed = ["did:plc:a", "did:plc:b", "did:plc:a", "did:plc:c"].map(String::from);
        let skip = ["did:plc:b".to_string()];
        assert_eq!(to_copy(listed.to_vec(), &skip), ["did:plc:a", "did:plc:c"]);
    }

    #[test]
    fn progress_moves_through_pages_and_collections_and_caps_listed_failures() {
        let request = AllRequest {
            collections: vec!["one".into(), "two".into()],
            ..AllRequest::default()
        };
        let mut progress = AllProgress::new(request, 0);
        let failures = |n: usize| BackfillReport {
            repos: n,
            records: 10,
            failed_repos: (0..n)
                .map(|i| (format!("did:plc:{i}"), "down".into()))
                .collect(),
            ..BackfillReport::default()
        };
        let page = |cursor: Option<&str>| RepoPage {
            dids: vec!["did:plc:x".into(); 3],
            cursor: cursor.map(String::from),
        };
        progress.advance(&page(Some("c1")), failures(MAX_LISTED_FAILURES - 1));
        assert_eq!(progress.current_collection(), Some("one"));
        assert_eq!(progress.cursor.as_deref(), Some("c1"));
        progress.advance(&page(None), failures(5));
        assert_eq!(progress.current_collection(), Some("two"));
        assert_eq!(progress.cursor, None);
        progress.advance(&page(None), failures(0));
        assert_eq!(progress.current_collection(), None);
        assert_eq!(progress.failed, MAX_LISTED_FAILURES as u64 + 4);
        assert_eq!(progress.copied.failed_repos.len(), MAX_LISTED_FAILURES);
        assert_eq!((progress.listing_pages, progress.repos_listed), (3, 9));
        assert_eq!(progress.copied.records, 30);
        assert!(
            progress
                .summary()
                .starts_with("done: 3 pages, 9 repos listed")
        );
    }
}
