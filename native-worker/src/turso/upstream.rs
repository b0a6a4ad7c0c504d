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

use tokio_util::sync::CancellationToken;

use super::client::{Retry, TursoClient, TursoError};
use super::hrana::{Batch, Stmt, StreamRequest, StreamResult, Value};
use crate::ingest::Sink;
use crate::store::replica::{RowImage, Stamp, Table};
use crate::store::{Mark, Store};

/// Tuning for the drainer.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Most rows per pipeline (one Turso transaction).
    pub max_rows: usize,
    /// Most bytes of row data per pipeline, keeping request bodies well under server limits.
    pub max_bytes: usize,
    /// How often to look for new queue entries while idle.
    pub idle_poll: Duration,
    /// Longest wait between attempts while Turso is failing.
    pub max_backoff: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            max_rows: 1_000,
            max_bytes: 4 << 20,
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

/// Creates the replicated tables in Turso if they are missing, and adds the columns later
/// builds introduced to tables an earlier build created.
pub async fn ensure_schema(client: &TursoClient) -> Result<(), TursoError> {
    create_tables(client).await?;
    for table in Table::ALL {
        add_missing_columns(client, table).await?;
    }
    Ok(())
}

async fn create_tables(client: &TursoClient) -> Result<(), TursoError> {
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

/// Adds [`Table::added_columns`] that `table` lacks in Turso. Another worker may add one at
/// the same moment, so "duplicate column" counts as done.
async fn add_missing_columns(client: &TursoClient, table: Table) -> Result<(), TursoError> {
    let added = table.added_columns();
    if added.is_empty() {
        return Ok(());
    }
    let present = client
        .execute(
            Stmt::new(
                "SELECT name FROM pragma_table_info(?1)",
                [Value::from(table.name())],
            ),
            Retry::Idempotent,
        )
        .await?;
    let present: Vec<&str> = present
        .rows
        .iter()
        .filter_map(|row| row.first().and_then(Value::as_str))
        .collect();
    for (column, definition) in added {
        if present.contains(column) {
            continue;
        }
        let alter = format!("ALTER TABLE {} ADD COLUMN {definition}", table.name());
        match client
            .execute(Stmt::new(alter, []), Retry::Idempotent)
            .await
        {
            Ok(_) => tracing::info!(table = table.name(), column, "added a column in Turso"),
            Err(TursoError::Sql { message, .. }) if message.contains("duplicate column") => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Queued entries read ahead of the drain, and how far into the first one the drain is.
///
/// A pipeline takes rows from the front, up to the row and byte limits, splitting an entry
/// that is larger than one pipeline; an entry is reported drained only once its last row is
/// in a committed pipeline.
#[derive(Default)]
struct Backlog {
    entries: std::collections::VecDeque<(i64, Vec<RowImage>)>,
    /// Rows of the front entry already committed upstream.
    offset: usize,
    loaded_through: i64,
}

/// What a pipeline took from the backlog.
struct Chunk {
    images: Vec<RowImage>,
    /// Entries completed by this chunk, and rows taken from the one after them.
    entries_done: usize,
    offset: usize,
}

impl Backlog {
    fn rows(&self) -> usize {
        self.entries
            .iter()
            .map(|(_, images)| images.len())
            .sum::<usize>()
            - self.offset
    }

    /// Reads more entries until about `target` rows are buffered.
    fn refill(&mut self, conn: &rusqlite::Connection, target: usize) -> anyhow::Result<()> {
        while self.rows() < target {
            let entries = crate::store::read::upstream_entries(conn, self.loaded_through, 64)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            self.loaded_through = *last;
            self.entries.extend(entries);
        }
        Ok(())
    }

    /// The next pipeline's rows: at most `max_rows`, and at most about `max_bytes` unless a
    /// single row is larger.
    fn chunk(&self, max_rows: usize, max_bytes: usize) -> Option<Chunk> {
        let mut images = Vec::new();
        let mut bytes = 0;
        let (mut entries_done, mut offset) = (0, self.offset);
        for (_, entry) in &self.entries {
            for image in &entry[offset..] {
                let size = image.approx_bytes();
                if !images.is_empty() && (images.len() == max_rows || bytes + size > max_bytes) {
                    return Some(Chunk {
                        images,
                        entries_done,
                        offset,
                    });
                }
                bytes += size;
                images.push(image.clone());
                offset += 1;
            }
            entries_done += 1;
            offset = 0;
        }
        (!images.is_empty()).then_some(Chunk {
            images,
            entries_done,
            offset,
        })
    }

    /// Drops what a committed chunk covered; returns the last entry id now fully drained.
    fn advance(&mut self, chunk: &Chunk) -> Option<i64> {
        let mut drained = None;
        for _ in 0..chunk.entries_done {
            drained = self.entries.pop_front().map(|(id, _)| id);
        }
        self.offset = chunk.offset;
        drained
    }
}

/// Sends one transaction of rows; `Ok(())` once Turso committed it.
pub async fn send(client: &TursoClient, images: &[RowImage]) -> Result<(), TursoError> {
    let statements = images.iter().map(|image| {
        let (sql, args) = image.upsert(Stamp::ServerClock);
        Stmt::new(sql, args.into_iter().map(Value::from)).without_rows()
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
    let mut backlog = Backlog::default();
    let mut reader = None;
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
        // One read connection for the drainer's life, reopened only after an error.
        if reader.is_none() {
            reader = store
                .reader()
                .inspect_err(|error| tracing::error!(%error, "cannot read the upstream queue"))
                .ok();
        }
        if let Some(conn) = &reader
            && let Err(error) = backlog.refill(conn, config.max_rows * 2)
        {
            reader = None;
            tracing::error!(
                error = format!("{error:#}"),
                "reading the upstream queue failed"
            );
        }
        let chunk = backlog.chunk(config.max_rows, config.max_bytes);
        let wait = match chunk {
            Some(chunk) if schema_ready => match send(&client, &chunk.images).await {
                Ok(()) => {
                    stats.pipelines.fetch_add(1, Relaxed);
                    stats.rows.fetch_add(chunk.images.len() as u64, Relaxed);
                    backoff = Duration::from_millis(250);
                    if let Some(through_id) = backlog.advance(&chunk) {
                        let drained = Mark::UpstreamDrained { through_id };
                        if !sink.send_mark(drained).await {
                            return;
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value as SqlValue;

    fn image(key: &str, bytes: usize) -> RowImage {
        RowImage {
            table: Table::Accounts,
            values: vec![
                SqlValue::Text(key.into()),
                SqlValue::Text("x".repeat(bytes)),
            ],
        }
    }

    fn backlog(entries: &[(i64, usize, usize)]) -> Backlog {
        Backlog {
            entries: entries
                .iter()
                .map(|&(id, rows, bytes)| {
                    (
                        id,
                        (0..rows)
                            .map(|n| image(&format!("{id}/{n}"), bytes))
                            .collect(),
                    )
                })
                .collect(),
            offset: 0,
            loaded_through: entries.last().map_or(0, |entry| entry.0),
        }
    }

    fn keys(chunk: &Chunk) -> Vec<String> {
        chunk
            .images
            .iter()
            .map(|image| image.key().unwrap().to_string())
            .collect()
    }

    #[test]
    fn small_entries_share_a_pipeline_and_are_drained_together() {
        let mut backlog = backlog(&[(1, 2, 10), (2, 3, 10), (3, 1, 10)]);
        let chunk = backlog.chunk(100, 1 << 20).unwrap();
        assert_eq!(chunk.images.len(), 6);
        assert_eq!(backlog.advance(&chunk), Some(3));
        assert!(backlog.chunk(100, 1 << 20).is_none());
    }

    #[test]
    fn a_large_entry_is_split_and_drained_only_after_its_last_row() {
        let mut backlog = backlog(&[(7, 5, 10), (8, 1, 10)]);
        let first = backlog.chunk(2, 1 << 20).unwrap();
        assert_eq!(keys(&first), ["7/0", "7/1"]);
        assert_eq!(backlog.advance(&first), None, "entry 7 is not done yet");
        let second = backlog.chunk(2, 1 << 20).unwrap();
        assert_eq!(keys(&second), ["7/2", "7/3"]);
        assert_eq!(backlog.advance(&second), None);
        let third = backlog.chunk(2, 1 << 20).unwrap();
        assert_eq!(keys(&third), ["7/4", "8/0"]);
        assert_eq!(backlog.advance(&third), Some(8));
    }

    #[test]
    fn the_byte_limit_bounds_a_pipeline_but_never_strands_a_big_row() {
        let backlog = backlog(&[(1, 4, 1_000)]);
        let chunk = backlog.chunk(100, 2_500).unwrap();
        assert_eq!(chunk.images.len(), 2);
        let backlog_big = self::backlog(&[(1, 1, 10_000)]);
        assert_eq!(backlog_big.chunk(100, 2_500).unwrap().images.len(), 1);
    }

    #[test]
    fn a_failed_pipeline_leaves_the_backlog_as_it_was() {
        let backlog = backlog(&[(1, 3, 10)]);
        let first = backlog.chunk(2, 1 << 20).unwrap();
        // Not advanced (the send failed): the same rows come again.
        let again = backlog.chunk(2, 1 << 20).unwrap();
        assert_eq!(keys(&first), keys(&again));
    }
}
