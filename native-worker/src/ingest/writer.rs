//! The writer thread: drains the queue into batches and commits each in one transaction.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{IngestConfig, IngestStats, Item, Policy, Sink};
use crate::firehose::Position;
use crate::store::{Batch, BatchOutcome, Mark, Store, StoreError, StoreWriter};

/// The running writer. Dropping every [`Sink`] lets it drain, commit and stop; [`WriterHandle::join`]
/// waits for that and reports a fatal store error if there was one.
pub struct WriterHandle {
    thread: JoinHandle<Result<(), StoreError>>,
}

impl WriterHandle {
    /// Waits for the writer to commit everything queued and stop.
    pub fn join(self) -> Result<(), StoreError> {
        self.thread
            .join()
            .expect("the ingest writer thread panicked")
    }
}

/// Starts the writer on its own thread. `policy`, when given, replaces the banned-DID list the
/// store keeps; when not, the stored list is enforced, so a run or backfill without a list
/// never unbans anyone. `acks` receives, after each commit, the tap ids that commit made
/// durable.
pub fn spawn_writer(
    store: &Store,
    config: &IngestConfig,
    policy: Option<Policy>,
    acks: Option<mpsc::UnboundedSender<Vec<u64>>>,
) -> Result<(Sink, WriterHandle), StoreError> {
    let mut writer = store.writer()?;
    let policy = match policy {
        Some(policy) => {
            writer.replace_banned_dids(&policy.banned_dids())?;
            policy
        }
        None => Policy::from_dids(crate::store::read::banned_dids(&store.reader()?)?),
    };
    if config.write_through {
        writer.enable_write_through();
    }
    let stats = Arc::new(IngestStats::default());
    if let Some(position) = crate::store::read::cursor(&store.reader()?, &config.cursor_source)? {
        stats.set_durable_event_time_us(position);
    }
    let (queue, mut receiver) = mpsc::channel::<Item>(config.queue_capacity);
    let sink = Sink {
        queue,
        policy: Arc::new(policy),
        stats: Arc::clone(&stats),
    };
    let max_batch = config.max_batch.max(1);
    let cursor_source = config.cursor_source.clone();
    let thread = std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || -> Result<(), StoreError> {
            let mut items = Vec::with_capacity(max_batch);
            while let Some(first) = receiver.blocking_recv() {
                items.push(first);
                while items.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let mut batch = Batch::default();
                let mut tap_ids = Vec::new();
                let mut cursor = None::<i64>;
                let mut newest_time = None::<i64>;
                for item in items.drain(..) {
                    match item.position {
                        Position::TimeUs(time_us) => cursor = cursor.max(Some(time_us)),
                        Position::TapId(id) => tap_ids.push(id),
                        Position::Line(_) | Position::Untracked => {}
                    }
                    newest_time = newest_time.max(item.time_us);
                    batch.changes.extend(item.change);
                    batch.marks.extend(item.mark);
                }
                if let Some(position) = cursor {
                    batch.marks.push(Mark::Cursor {
                        source: cursor_source.clone(),
                        position,
                    });
                }
                let started = Instant::now();
                let span = tracing::info_span!("ingest.commit", changes = batch.changes.len());
                let outcome = span
                    .in_scope(|| commit(&mut writer, &batch, &stats, &receiver))
                    .inspect_err(|error| {
                        tracing::error!(%error, "ingest commit failed; stopping the writer");
                    })?;
                stats.record_commit(
                    batch.changes.len(),
                    outcome.applied,
                    outcome.stale,
                    started.elapsed().as_micros() as u64,
                    newest_time,
                );
                if let Some(acks) = &acks
                    && !tap_ids.is_empty()
                {
                    // The consumer may be reconnecting; tap redelivers whatever stays unacked.
                    let _ = acks.send(tap_ids);
                }
            }
            Ok(())
        })
        .expect("spawning the ingest writer thread");
    Ok((sink, WriterHandle { thread }))
}

/// Commits `batch`. While the disk is full (SQLite's `SQLITE_FULL`, or the store's size limit),
/// waits and tries the same batch again: it is not lost, its cursor stays behind it, and the
/// full queue holds the sources back meanwhile. Ingest resumes by itself once space returns.
/// Any other failure, or shutdown while still full, ends the writer (the cursor is behind the
/// uncommitted batch, so the next start fetches it again).
fn commit(
    writer: &mut StoreWriter,
    batch: &Batch,
    stats: &IngestStats,
    queue: &mpsc::Receiver<super::Item>,
) -> Result<BatchOutcome, StoreError> {
    let mut wait = Duration::from_millis(100);
    loop {
        match writer.apply(batch) {
            Err(error)
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    && !queue.is_closed() =>
            {
                stats.record_store_full();
                tracing::error!(%error, retry_in = ?wait, changes = batch.changes.len(),
                                "the store's disk is full; ingest is paused until space returns");
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_FULL_WAIT);
            }
            result => return Ok(result?),
        }
    }
}

/// The longest pause between attempts to commit on a full disk.
const MAX_FULL_WAIT: Duration = Duration::from_secs(5);
