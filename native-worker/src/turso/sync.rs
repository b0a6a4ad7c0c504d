//! Sync down: rows other writers put in Turso reach the local store, and from there the next
//! snapshot.
//!
//! Each replicated table is paged in watermark order (`(indexed_at, key)` keyset pagination,
//! a bounded page at a time, paced), every page applied through the store's single writer as
//! [`Change::Replica`] rows followed by the new watermark as a cursor — so the watermark never
//! runs ahead of the rows it covers. The first run starts from zero: a full copy. Later runs
//! start a little before the stored watermark, because a transaction on Turso can commit a
//! moment after a later-stamped one; re-reading that window is harmless (newest revision wins).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Retry, TursoClient, TursoError};
use rusqlite::types::Value as SqlValue;

use super::hrana::{Stmt, Value};
use crate::ingest::Sink;
use crate::store::replica::{RowImage, Table};
use crate::store::{Change, Mark, Store, StoreError};

/// Tuning for sync down.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Time between incremental passes.
    pub every: Duration,
    /// Rows per page (bounds memory whatever the table sizes).
    pub page: usize,
    /// Pause between pages, so a full copy does not monopolise Turso or the local writer.
    pub pace: Duration,
    /// How far before the stored watermark each pass starts.
    pub overlap: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            every: Duration::from_secs(30),
            page: 500,
            pace: Duration::from_millis(20),
            overlap: Duration::from_secs(5),
        }
    }
}

/// Where a table's sync watermark is kept (the store's `cursors` table).
pub fn cursor_source(table: Table) -> String {
    format!("turso:{}", table.name())
}

fn stored_watermark(store: &Store, table: Table) -> Result<i64, StoreError> {
    let conn = store.reader()?;
    Ok(crate::store::read::cursor(&conn, &cursor_source(table))?.unwrap_or(0))
}

/// Pages one table from `watermark` onwards into the sink. Returns rows read, or `None` if the
/// store writer has stopped.
async fn sync_table(
    client: &TursoClient,
    sink: &Sink,
    table: Table,
    from: i64,
    config: &SyncConfig,
    stop: &CancellationToken,
) -> Result<Option<u64>, TursoError> {
    let mut after = (from, String::new());
    let mut read = 0u64;
    loop {
        let stmt = Stmt::new(
            table.page_sql(),
            [
                Value::from(after.0),
                Value::from(after.1.clone()),
                Value::from(config.page as i64),
            ],
        );
        let page = client.execute(stmt, Retry::Idempotent).await?;
        let count = page.rows.len();
        for values in page.rows {
            let values = values.into_iter().map(SqlValue::from).collect();
            let image = RowImage { table, values };
            let (Some(key), Some(watermark)) = (image.key(), image.watermark()) else {
                return Err(TursoError::Protocol(format!(
                    "{} row without a key or watermark",
                    table.name()
                )));
            };
            after = (watermark, key.to_string());
            if !sink.send_change(Change::Replica(image)).await {
                return Ok(None);
            }
        }
        read += count as u64;
        if count > 0 {
            let cursor = Mark::Cursor {
                source: cursor_source(table),
                position: after.0,
            };
            if !sink.send_mark(cursor).await {
                return Ok(None);
            }
        }
        if count < config.page || stop.is_cancelled() {
            return Ok(Some(read));
        }
        tokio::time::sleep(config.pace).await;
    }
}

/// Runs sync passes every `config.every` until `stop`.
pub async fn run(
    store: Store,
    client: TursoClient,
    sink: Sink,
    config: SyncConfig,
    stop: CancellationToken,
) {
    let overlap = config.overlap.as_micros() as i64;
    let mut schema_ready = false;
    loop {
        if !schema_ready {
            // A fresh Turso database has no tables until someone creates them.
            match super::upstream::ensure_schema(&client).await {
                Ok(()) => schema_ready = true,
                Err(error) => tracing::warn!(%error, "cannot prepare Turso's tables; will retry"),
            }
        }
        let tables = if schema_ready { &Table::ALL[..] } else { &[] };
        for &table in tables {
            let from = match stored_watermark(&store, table) {
                Ok(0) => {
                    tracing::info!(table = table.name(), "copying from Turso (first sync)");
                    0
                }
                Ok(watermark) => (watermark - overlap).max(0),
                Err(error) => {
                    tracing::error!(%error, "reading the sync watermark failed");
                    break;
                }
            };
            match sync_table(&client, &sink, table, from, &config, &stop).await {
                Ok(Some(rows)) if rows > 0 => {
                    tracing::debug!(table = table.name(), rows, "synced from Turso");
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(table = table.name(), %error, "sync from Turso failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.every) => {}
            () = stop.cancelled() => return,
        }
    }
}
