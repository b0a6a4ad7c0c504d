//! Write-through: drains the store's `upstream_queue` into Turso, in order, one pipeline per
//! round trip carrying up to [`UpstreamConfig::max_rows`] rows as a single transaction.
//!
//! Ingest never waits for this: batches are queued durably in their own local transaction, and
//! the firehose cursor advances with the local commit. When Turso is slow the queue grows and
//! pipelines get fuller; when it is down the drainer backs off and retries, and on recovery
//! catches up in order. A queue entry is deleted (through the store's single writer) only after
//! Turso committed it; a resend after a crash is harmless because upserts keep the newest
//! revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rusqlite::params;
use tokio_util::sync::CancellationToken;

use super::client::{Retry, TursoClient, TursoError};
use super::hrana::{Batch, Stmt, StreamRequest, StreamResult};
use crate::firehose::Position;
use crate::ingest::Sink;
use crate::store::replica::{RowImage, Stamp, Table};
use crate::store::{Change, Store};

/// Tuning for the drainer.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Most rows per pipeline (one Turso transaction).
    pub max_rows: usize,
    /// How often to look for new queue entries while idle.
    pub idle_poll: Duration,
    /// Longest wait between attempts while Turso is failing.
    pub max_backoff: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            max_rows: 1_000,
            idle_poll: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Progress counters, for `/stats`, logs and tests.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Pipelines Turso committed.
    pub pipelines: AtomicU64,
    /// Rows Turso committed.
    pub rows: AtomicU64,
    /// Failed attempts (unreachable, refused, or a rolled-back transaction).
    pub failures: AtomicU64,
}

/// Creates the replicated tables in Turso if they are missing.
pub async fn ensure_schema(client: &TursoClient) -> Result<(), TursoError> {
    let sql = Table::ALL
        .iter()
        .map(|table| table.remote_ddl())
        .collect::<Vec<_>>()
        .join(";\n");
    let results = client
        .run(
            vec![StreamRequest::Sequence {
                sql: Some(sql),
                sql_id: None,
            }],
            Retry::Idempotent,
        )
        .await?;
    match results.into_iter().next() {
        Some(StreamResult::Error { error }) => Err(TursoError::Sql {
            message: error.message,
            code: error.code,
        }),
        _ => Ok(()),
    }
}

/// Queue entries after `after`, up to about `max_rows` rows: `(last id, images)`.
fn next_entries(
    store: &Store,
    after: i64,
    max_rows: usize,
) -> anyhow::Result<Option<(i64, Vec<RowImage>)>> {
    let conn = store.reader()?;
    let mut statement = conn.prepare_cached(
        "SELECT id, rows, row_count FROM upstream_queue WHERE id > ?1 ORDER BY id LIMIT 256",
    )?;
    let mut rows = statement.query(params![after])?;
    let mut last = None;
    let mut images = Vec::new();
    while let Some(row) = rows.next()? {
        let count: i64 = row.get(2)?;
        if !images.is_empty() && images.len() + count as usize > max_rows {
            break;
        }
        last = Some(row.get::<_, i64>(0)?);
        images.extend(serde_json::from_str::<Vec<RowImage>>(
            &row.get::<_, String>(1)?,
        )?);
    }
    Ok(last.map(|last| (last, images)))
}

/// Sends one transaction of rows; `Ok(())` once Turso committed it.
pub async fn send(client: &TursoClient, images: &[RowImage]) -> Result<(), TursoError> {
    let statements = images.iter().map(|image| {
        let (sql, args) = image.upsert(Stamp::ServerClock);
        Stmt::new(sql, args).without_rows()
    });
    let batch = Batch::transaction(statements);
    let commit = batch.steps.len() - 2;
    let result = client.batch(batch, Retry::Idempotent).await?;
    if result.step_results.get(commit).is_some_and(Option::is_some) {
        return Ok(());
    }
    let error = result
        .step_errors
        .into_iter()
        .flatten()
        .next()
        .map(|error| (error.message, error.code))
        .unwrap_or_else(|| ("the transaction did not commit".to_string(), None));
    Err(TursoError::Sql {
        message: error.0,
        code: error.1,
    })
}

/// Drains the queue until `stop`; then makes one last attempt to flush what is queued.
pub async fn drain(
    store: Store,
    client: TursoClient,
    sink: Sink,
    config: UpstreamConfig,
    stats: Arc<UpstreamStats>,
    stop: CancellationToken,
) {
    let mut sent_through = 0i64;
    let mut backoff = Duration::from_millis(250);
    let mut schema_ready = false;
    loop {
        let stopping = stop.is_cancelled();
        if !schema_ready {
            match ensure_schema(&client).await {
                Ok(()) => schema_ready = true,
                Err(error) => {
                    stats.failures.fetch_add(1, Relaxed);
                    tracing::warn!(%error, "cannot prepare Turso's tables; will retry");
                }
            }
        }
        let next = match next_entries(&store, sent_through, config.max_rows) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "reading the upstream queue failed"
                );
                None
            }
        };
        let wait = match next {
            Some((last, images)) if schema_ready => match send(&client, &images).await {
                Ok(()) => {
                    sent_through = last;
                    stats.pipelines.fetch_add(1, Relaxed);
                    stats.rows.fetch_add(images.len() as u64, Relaxed);
                    backoff = Duration::from_millis(250);
                    let drained = Change::UpstreamDrained { through_id: last };
                    if !sink.send_change(drained, Position::Untracked).await {
                        return;
                    }
                    Duration::ZERO
                }
                Err(error) => {
                    stats.failures.fetch_add(1, Relaxed);
                    tracing::warn!(%error, retry_in = ?backoff, "Turso write-through failed; batches stay queued");
                    let wait = backoff;
                    backoff = (backoff * 2).min(config.max_backoff);
                    wait
                }
            },
            Some(_) => backoff,
            None if stopping => return,
            None => config.idle_poll,
        };
        if stopping {
            // One last pass was made; what is left stays queued for the next start.
            return;
        }
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
        }
    }
}
