//! Backfill: copy whole repos from their PDS with `com.atproto.repo.listRecords`, for records
//! written before we followed the firehose.
//!
//! Records flow through the same pipeline as live events (extraction, policy, the batching
//! writer), stamped with the repo's latest revision so anything newer from the firehose wins.
//! Progress per repo and collection is committed behind each page's records, so an interrupted
//! backfill resumes at the first page that was not durable.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;
use url::Url;

use crate::firehose::{Backoff, Commit, Event, Operation, Payload, Position};
use crate::ingest::{self, IngestConfig, Policy, Sink};
use crate::store::{self, Mark, Store, StoreError};

/// The collections a backfill copies.
pub const COLLECTIONS: [&str; 5] = [
    "pub.leaflet.publication",
    "site.standard.publication",
    "pub.leaflet.document",
    "site.standard.document",
    "com.whtwnd.blog.entry",
];

/// The public PLC directory, used to find a `did:plc` repo's PDS.
pub const DEFAULT_PLC_URL: &str = "https://plc.directory";

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
        }
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub repos: usize,
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
    #[error("GET {url} failed: {reason}")]
    Request { url: String, reason: String },
}

#[derive(Deserialize)]
struct DidDocument {
    #[serde(default)]
    service: Vec<DidService>,
}

#[derive(Deserialize)]
struct DidService {
    id: String,
    #[serde(rename = "serviceEndpoint")]
    endpoint: Value,
}

#[derive(Deserialize)]
struct LatestCommit {
    rev: String,
}

#[derive(Deserialize)]
struct RecordPage {
    /// Decoded one by one, so one bad entry costs that entry, not the page.
    #[serde(default)]
    records: Vec<Value>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct ListedRecord {
    uri: String,
    value: Value,
}

/// Backfills `dids` into `store`, resuming whatever an earlier run left unfinished. Banned
/// repos are skipped; `policy` replaces the stored ban list, `None` uses it.
pub async fn backfill(
    store: &Store,
    dids: &[String],
    config: &BackfillConfig,
    policy: Option<Policy>,
) -> Result<BackfillReport, BackfillError> {
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .user_agent(concat!(
            "pubsearch-native-worker/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(BackfillError::Client)?;
    let ingest_config = IngestConfig {
        cursor_source: "backfill".into(),
        write_through: config.write_through,
        ..IngestConfig::default()
    };
    let (sink, writer) = ingest::spawn_writer(store, &ingest_config, policy, None)?;
    let reader = store.reader()?;
    let mut report = BackfillReport::default();
    for did in dids {
        report.repos += 1;
        if sink.policy().is_banned(did) {
            tracing::info!(did, "skipping banned repo");
            report.banned_repos += 1;
            continue;
        }
        if let Err(error) = backfill_repo(&client, &sink, &reader, did, config, &mut report).await {
            match error {
                RepoFailure::Repo(error) => {
                    tracing::warn!(did, %error, "skipping repo");
                    report.failed_repos.push((did.clone(), error.to_string()));
                }
                RepoFailure::PipelineStopped => return Err(BackfillError::PipelineStopped),
            }
        }
    }
    drop(sink);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("the writer thread panicked")?;
    Ok(report)
}

enum RepoFailure {
    Repo(RepoError),
    PipelineStopped,
}

impl From<RepoError> for RepoFailure {
    fn from(error: RepoError) -> Self {
        RepoFailure::Repo(error)
    }
}

async fn backfill_repo(
    client: &reqwest::Client,
    sink: &Sink,
    reader: &rusqlite::Connection,
    did: &str,
    config: &BackfillConfig,
    report: &mut BackfillReport,
) -> Result<(), RepoFailure> {
    let pds = match &config.pds {
        Some(pds) => pds.clone(),
        None => resolve_pds(client, did, config).await?,
    };
    let mut latest = pds
        .join("xrpc/com.atproto.sync.getLatestCommit")
        .expect("valid path");
    latest.query_pairs_mut().append_pair("did", did);
    let rev = get_json::<LatestCommit>(client, &latest, config).await?.rev;
    for collection in COLLECTIONS {
        let progress = store::read::backfill_progress(reader, did, collection).unwrap_or(None);
        if let Some((_, true)) = progress {
            report.already_done += 1;
            continue;
        }
        let mut cursor = progress.and_then(|(cursor, _)| cursor);
        loop {
            let mut url = pds
                .join("xrpc/com.atproto.repo.listRecords")
                .expect("valid path");
            url.query_pairs_mut()
                .append_pair("repo", did)
                .append_pair("collection", collection)
                .append_pair("limit", &config.page_size.to_string());
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let page: RecordPage = get_json(client, &url, config)
                .instrument(tracing::info_span!("backfill.page", did, collection))
                .await?;
            report.pages += 1;
            let count = page.records.len() as u64;
            for entry in page.records {
                let Some((rkey, record)) = listed_record(entry) else {
                    report.malformed_records += 1;
                    tracing::debug!(did, collection, "skipping a malformed listed record");
                    continue;
                };
                let event = Event {
                    position: Position::Line(0),
                    time_us: None,
                    did: did.to_owned(),
                    payload: Payload::Commit(Commit {
                        operation: Operation::Create,
                        collection: collection.to_owned(),
                        rkey,
                        rev: rev.clone(),
                        record: Some(record),
                    }),
                };
                if !sink.send(event).await {
                    return Err(RepoFailure::PipelineStopped);
                }
            }
            report.records += count;
            let done = count == 0 || page.cursor.is_none();
            let progress = Mark::BackfillProgress {
                did: did.to_owned(),
                collection: collection.to_owned(),
                cursor: page.cursor.clone(),
                done,
                records: count,
            };
            if !sink.send_mark(progress).await {
                return Err(RepoFailure::PipelineStopped);
            }
            if done {
                break;
            }
            cursor = page.cursor;
        }
        tracing::info!(did, collection, "collection backfilled");
    }
    Ok(())
}

/// Parses a PDS or PLC directory address for the command line: http(s) only, and always ending
/// in `/`, so the XRPC paths joined onto it keep any path prefix (`https://host/prefix`).
pub fn service_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{text:?} is not an http(s) address, like https://pds.example.com"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A listed record's rkey (the last segment of its at-uri) and value, if it has both.
fn listed_record(entry: Value) -> Option<(String, Value)> {
    let record: ListedRecord = serde_json::from_value(entry).ok()?;
    let rkey = record
        .uri
        .rsplit('/')
        .next()
        .filter(|rkey| !rkey.is_empty())?;
    Some((rkey.to_owned(), record.value))
}

/// Finds a repo's PDS from its DID document (PLC directory for `did:plc`, the host for `did:web`).
async fn resolve_pds(
    client: &reqwest::Client,
    did: &str,
    config: &BackfillConfig,
) -> Result<Url, RepoError> {
    let fail = |reason: String| RepoError::Resolve {
        did: did.to_owned(),
        reason,
    };
    let document_url = if did.starts_with("did:plc:") {
        // "./" keeps `did:plc:…` from parsing as a URL with scheme `did`.
        config
            .plc_url
            .join(&format!("./{did}"))
            .map_err(|e| fail(e.to_string()))?
    } else if let Some(identifier) = did.strip_prefix("did:web:") {
        did_web_document_url(identifier).map_err(fail)?
    } else {
        return Err(fail("only did:plc and did:web are supported".into()));
    };
    let document: DidDocument = get_json(client, &document_url, config).await?;
    document
        .service
        .iter()
        .find(|service| service.id.ends_with("#atproto_pds"))
        .and_then(|service| service.endpoint.as_str())
        .and_then(|endpoint| Url::parse(&format!("{}/", endpoint.trim_end_matches('/'))).ok())
        .ok_or_else(|| fail("its DID document names no #atproto_pds service".into()))
}

/// Where a `did:web` DID's document lives. The method-specific identifier is a host with its
/// port's colon percent-encoded (`localhost%3A8080`); more `:`-separated segments would be a
/// path, which atproto does not allow for `did:web`.
fn did_web_document_url(identifier: &str) -> Result<Url, String> {
    if identifier.contains(':') {
        return Err("path-based did:web is not supported by atproto".into());
    }
    let host = identifier.replace("%3A", ":").replace("%3a", ":");
    let url = Url::parse(&format!("https://{host}/.well-known/did.json"))
        .map_err(|error| format!("{host:?} is not a host: {error}"))?;
    match url.path() {
        "/.well-known/did.json" => Ok(url),
        _ => Err(format!("{host:?} is not a host")),
    }
}

/// The default [`BackfillConfig::max_response_bytes`]: a `listRecords` page is 100 records,
/// well under a megabyte in practice; 100 records at the firehose's whole frame limit would be
/// 200 MB, so this bounds memory without refusing any page a PDS really serves.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Reads a response body, giving up past `limit` bytes (`Ok(None)`).
async fn body_within(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Longest `Retry-After` a rate-limited request waits before its next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// GETs JSON with a timeout, retrying retryable failures (connect errors, timeouts, a body cut
/// off, 5xx, 429) with jittered backoff, or after the server's `Retry-After` when it gives one.
async fn get_json<T: for<'de> Deserialize<'de>>(
    client: &reqwest::Client,
    url: &Url,
    config: &BackfillConfig,
) -> Result<T, RepoError> {
    let mut backoff = config.backoff.clone();
    let mut attempt = 0;
    let failed = |reason: String, attempt: u32| RepoError::Request {
        url: url.to_string(),
        reason: format!("{reason} (attempt {attempt})"),
    };
    loop {
        attempt += 1;
        let mut retry_after = None;
        let (retryable, reason) = match client.get(url.clone()).send().await {
            Ok(response) if response.status().is_success() => {
                match body_within(response, config.max_response_bytes).await {
                    Ok(Some(body)) => {
                        return serde_json::from_slice(&body).map_err(|error| {
                            failed(format!("unreadable response: {error}"), attempt)
                        });
                    }
                    Ok(None) => {
                        return Err(failed(
                            format!("response over the {} byte limit", config.max_response_bytes),
                            attempt,
                        ));
                    }
                    Err(error) => (true, format!("response cut off: {error}")),
                }
            }
            Ok(mut response) => {
                let status = response.status();
                let retryable = status.is_server_error() || status.as_u16() == 429;
                retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                // The start of an error body is enough to say why, and all that is read.
                let start = response.chunk().await.ok().flatten().unwrap_or_default();
                let body: String = String::from_utf8_lossy(&start).chars().take(200).collect();
                (retryable, format!("HTTP {status}: {body}"))
            }
            Err(error) => (
                error.is_timeout() || error.is_connect() || error.is_request(),
                error.to_string(),
            ),
        };
        if !retryable || attempt >= config.max_attempts {
            return Err(failed(reason, attempt));
        }
        let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
        tracing::debug!(%url, attempt, reason, ?delay, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{did_web_document_url, service_url};

    #[test]
    fn service_addresses_are_http_and_keep_their_path() {
        let joined = |text: &str| {
            service_url(text)
                .unwrap()
                .join("xrpc/com.atproto.repo.listRecords")
                .unwrap()
                .to_string()
        };
        assert_eq!(
            joined("https://pds.example.com"),
            "https://pds.example.com/xrpc/com.atproto.repo.listRecords"
        );
        assert_eq!(
            joined("http://127.0.0.1:3000/prefix"),
            "http://127.0.0.1:3000/prefix/xrpc/com.atproto.repo.listRecords"
        );
        for bad in [
            "localhost:3000",
            "pds.example.com",
            "ftp://host/",
            "https://",
        ] {
            assert!(service_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn did_web_names_a_host_and_maybe_a_port() {
        let url = |id: &str| did_web_document_url(id).map(|url| url.to_string());
        assert_eq!(
            url("example.com").unwrap(),
            "https://example.com/.well-known/did.json"
        );
        assert_eq!(
            url("localhost%3A8080").unwrap(),
            "https://localhost:8080/.well-known/did.json"
        );
        assert!(
            url("example.com:user:alice")
                .unwrap_err()
                .contains("path-based")
        );
        assert!(url("example.com%2Fevil").is_err());
        assert!(url("exa mple.com").is_err());
    }
}
