//! Backfill: copy whole repos from their PDS with `com.atproto.repo.listRecords`, for records
//! written before we followed the firehose — the repos named on the command line, or every
//! repo the relay lists for the collections we index (`backfill --all`, a durable workflow).
//!
//! Records flow through the same pipeline as live events (extraction, policy, the batching
//! writer, Turso write-through), stamped with the repo's revision from before its listing, so
//! anything newer from the firehose — an edit, a delete's tombstone — wins (ARCHITECTURE.md,
//! "Backfill"). Progress per repo and collection is committed behind each page's records, so an
//! interrupted backfill resumes at the first page that was not durable and never refetches a
//! finished repo.
//!
//! Module map: [`http`] (GETs, retries, the per-host cap), [`resolve`] (DID → PDS), [`repo`]
//! (one repo), [`copy`] (many at once), [`discover`] (the relay's listing), [`workflow`]
//! (`backfill --all` on the flow engine).

mod copy;
mod discover;
mod http;
mod repo;
mod resolve;
pub mod workflow;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::firehose::Backoff;
use crate::ingest::Policy;
use crate::store::{Store, StoreError};

pub use http::{MAX_RESPONSE_BYTES, service_url};

/// The collections a backfill copies and discovers repos by: every record type
/// [`crate::extract`] reads.
pub const COLLECTIONS: [&str; 5] = crate::extract::COLLECTIONS;

/// The public PLC directory, used to find a `did:plc` repo's PDS.
pub const DEFAULT_PLC_URL: &str = "https://plc.directory";

/// The public relay, which answers `com.atproto.sync.listReposByCollection`.
pub const DEFAULT_RELAY_URL: &str = "https://relay1.us-east.bsky.network";

/// How to reach repos.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// Use this PDS for every repo instead of resolving each DID.
    pub pds: Option<Url>,
    pub plc_url: Url,
    /// Records per `listRecords` page (the PDS caps it at 100).
    pub page_size: u32,
    pub request_timeout: Duration,
    /// Attempts per request for retryable failures (connect errors, timeouts, 5xx, 429).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Largest response body read from a PDS or the PLC directory; a larger one fails its repo
    /// (not retried) instead of being held in memory.
    pub max_response_bytes: usize,
    /// Queue every backfilled row for Turso, as live ingest does on a Turso-backed worker
    /// (`upstream_queue`, sent by the worker's write-through), so a backfill reaches Turso
    /// without waiting for anything else.
    pub write_through: bool,
    /// Repos copied at once.
    pub concurrency: usize,
    /// Requests in flight to one host (a PDS, the PLC directory) at once.
    pub per_host: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            pds: None,
            plc_url: Url::parse(DEFAULT_PLC_URL).expect("valid URL"),
            page_size: 100,
            request_timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            write_through: false,
            max_response_bytes: MAX_RESPONSE_BYTES,
            concurrency: 16,
            per_host: 4,
        }
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    /// Repos considered (a repo listed under several collections counts each time).
    pub repos: usize,
    /// Repos an earlier run had finished: skipped without a request.
    #[serde(default)]
    pub finished_repos: usize,
    pub records: u64,
    pub pages: u64,
    /// Collections skipped because an earlier run finished them.
    pub already_done: usize,
    /// Repos skipped because their DID is banned.
    pub banned_repos: usize,
    /// Repos that could not be read (not found, deactivated), with the reason.
    pub failed_repos: Vec<(String, String)>,
    /// Listed records without a usable `uri` and `value`: counted and skipped, the rest of
    /// their page kept.
    pub malformed_records: u64,
}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ingest pipeline stopped during the backfill")]
    PipelineStopped,
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Why one repo could not be read.
#[derive(Debug, thiserror::Error)]
enum RepoError {
    #[error("cannot resolve {did}: {reason}")]
    Resolve { did: String, reason: String },
    #[error(transparent)]
    Request(#[from] http::RequestError),
    #[error("cannot read its backfill progress: {0}")]
    Store(String),
}

/// Backfills `dids` into `store`, resuming whatever an earlier run left unfinished. Banned
/// repos are skipped; `policy` replaces the stored ban list, `None` uses it.
pub async fn backfill(
    store: &Store,
    dids: &[String],
    config: &BackfillConfig,
    policy: Option<Policy>,
) -> Result<BackfillReport, BackfillError> {
    copy::copy_repos(store, dids, config, policy, |_| {}).await
}
