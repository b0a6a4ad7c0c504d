//! Copying one repo: its latest revision, then every collection a page at a time, each page's
//! progress committed behind its records.

use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;

use super::http::Http;
use super::resolve::resolve_pds;
use super::{COLLECTIONS, RepoError};
use crate::firehose::{Commit, Event, Operation, Payload, Position};
use crate::ingest::Sink;
use crate::store::{self, Mark, Store};

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

/// What copying one repo did.
#[derive(Debug, Default)]
pub(super) struct RepoCopy {
    pub records: u64,
    pub pages: u64,
    /// Collections an earlier run finished.
    pub already_done: usize,
    pub malformed_records: u64,
}

impl RepoCopy {
    /// Whether an earlier run had finished every collection, so nothing was requested.
    pub fn was_finished(&self) -> bool {
        self.already_done == COLLECTIONS.len()
    }
}

/// Why copying a repo stopped.
pub(super) enum RepoFailure {
    /// This repo could not be read; the backfill goes on with the others.
    Repo(RepoError),
    /// The writer is gone: the whole backfill stops.
    PipelineStopped,
}

impl From<super::http::RequestError> for RepoFailure {
    fn from(error: super::http::RequestError) -> Self {
        RepoFailure::Repo(error.into())
    }
}

impl From<RepoError> for RepoFailure {
    fn from(error: RepoError) -> Self {
        RepoFailure::Repo(error)
    }
}

/// Copies `did`'s records, skipping collections an earlier run finished and resuming an
/// unfinished one at its last durable cursor. Records are stamped with the revision the repo
/// had before listing began, so any change the firehose delivers meanwhile (an edit, a delete's
/// tombstone) carries a newer revision and wins over the listed copy.
pub(super) async fn copy_repo(
    http: &Http,
    sink: &Sink,
    store: &Store,
    did: &str,
) -> Result<RepoCopy, RepoFailure> {
    let mut copy = RepoCopy::default();
    let mut todo = Vec::new();
    {
        let reader = store
            .reader()
            .map_err(|error| RepoError::Store(error.to_string()))?;
        for collection in COLLECTIONS {
            match store::read::backfill_progress(&reader, did, collection).unwrap_or(None) {
                Some((_, true)) => copy.already_done += 1,
                progress => todo.push((collection, progress.and_then(|(cursor, _)| cursor))),
            }
        }
    }
    if todo.is_empty() {
        return Ok(copy);
    }
    let pds = match &http.config().pds {
        Some(pds) => pds.clone(),
        None => resolve_pds(http, did).await?,
    };
    let mut latest = pds
        .join("xrpc/com.atproto.sync.getLatestCommit")
        .expect("valid path");
    latest.query_pairs_mut().append_pair("did", did);
    let rev = http.get_json::<LatestCommit>(&latest).await?.rev;
    for (collection, mut cursor) in todo {
        loop {
            let mut url = pds
                .join("xrpc/com.atproto.repo.listRecords")
                .expect("valid path");
            url.query_pairs_mut()
                .append_pair("repo", did)
                .append_pair("collection", collection)
                .append_pair("limit", &http.config().page_size.to_string());
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let page: RecordPage = http
                .get_json(&url)
                .instrument(tracing::info_span!("backfill.page", did, collection))
                .await?;
            copy.pages += 1;
            let count = page.records.len() as u64;
            for entry in page.records {
                let Some((rkey, record)) = listed_record(entry) else {
                    copy.malformed_records += 1;
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
            copy.records += count;
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
        tracing::debug!(did, collection, "collection backfilled");
    }
    Ok(copy)
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
