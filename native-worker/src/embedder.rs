//! Keeps the store's document vectors current beside ingest (ARCHITECTURE.md, "Embeddings").
//!
//! One background thread follows documents in the order they are written (`store::vectors`:
//! by stamp, through the `indexed_at` index), a page at a time: it embeds the live ones whose
//! vector is missing or stale on at most [`EmbedderOptions::threads`] threads, drops the
//! vectors of deleted ones, and stores both with the position reached in one short
//! transaction on the store's vector connection. Ingest never waits for it, except for that
//! transaction's lock; a build finds most vectors computed and embeds only the rest.
//!
//! It stays out of ingest's way on shared cores: its threads run at nice 19, and it waits
//! while documents are written faster than [`EmbedderOptions::defer_above`] (a replay, or a
//! backfill in this process or beside it, at full speed), catching up once writes are back to
//! the firehose's pace.
//!
//! Failures are logged and retried (a full disk, a locked file): vectors are an optimisation
//! for builds, which embed whatever is missing, so the embedder never stops ingest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pubsearch_shared::embed::model::{EmbeddingModel, document_text};
use pubsearch_shared::embed::table;
use tokio_util::sync::CancellationToken;

use crate::store::vectors::{self, Need, Pending, Position, VectorUpdate};
use crate::store::{Store, StoreError};

/// How the embedder works.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Threads embedding a page at once (1 keeps a core for ingest and serving on 2 cores;
    /// one thread embeds thousands of documents a second).
    pub threads: usize,
    /// Documents read, embedded and stored together.
    pub page: usize,
    /// How long to wait before looking again once caught up.
    pub idle: Duration,
    /// How long to wait before trying again after a failure.
    pub retry: Duration,
    /// Documents written to the store a second, by anyone, above which the embedder waits (a
    /// replay or a backfill at full speed, where every cycle it takes is the writer's): builds
    /// embed whatever it has not reached. The live firehose writes a few a second. 0 never
    /// waits.
    pub defer_above: u64,
    /// How often to log what was done.
    pub report_every: Duration,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            threads: 1,
            page: 256,
            idle: Duration::from_millis(500),
            retry: Duration::from_secs(5),
            defer_above: 1_000,
            report_every: Duration::from_secs(10),
        }
    }
}

/// What the embedder has done since it started.
#[derive(Debug, Default)]
pub struct EmbedderStats {
    /// Vectors computed and stored.
    pub embedded: AtomicU64,
    /// Vectors removed with their documents.
    pub removed: AtomicU64,
    /// Documents passed over (vector already current, or none needed).
    pub skipped: AtomicU64,
    /// Passes that failed and were retried.
    pub failures: AtomicU64,
    /// Whether the last pass found nothing left to do.
    pub caught_up: std::sync::atomic::AtomicBool,
}

/// A running embedder.
pub struct Embedder {
    thread: std::thread::JoinHandle<()>,
    stats: Arc<EmbedderStats>,
}

impl Embedder {
    /// Its counters.
    pub fn stats(&self) -> &Arc<EmbedderStats> {
        &self.stats
    }

    /// Waits for it to stop (after its `stop` token is cancelled, or it found no model).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the embedder thread panicked");
        }
    }
}

/// Starts the embedder on `store`, with the model `load` gives (loaded on the embedder's own
/// thread: distilling it can take a minute); without one it logs why and stops.
pub fn spawn(
    store: &Store,
    load: impl FnOnce() -> Option<Arc<EmbeddingModel>> + Send + 'static,
    options: EmbedderOptions,
    stop: CancellationToken,
) -> Result<Embedder, StoreError> {
    let reader = store.reader()?;
    let writer = store.vector_writer()?;
    let stats = Arc::new(EmbedderStats::default());
    let shared = Arc::clone(&stats);
    let thread = std::thread::Builder::new()
        .name("embedder".into())
        .spawn(move || {
            yield_to_foreground();
            let Some(model) = load() else {
                tracing::info!("embedder off: no embedding model (builds carry no vectors)");
                return;
            };
            let mut run = Run {
                reader,
                writer,
                model,
                writes: WriteRate::new(options.defer_above),
                options,
                stats: shared,
            };
            run.follow(&stop);
        })
        .expect("spawning the embedder thread");
    Ok(Embedder { thread, stats })
}

/// Background work leaves the cores to ingest and serving: the embedder runs at the lowest CPU
/// priority, nice 19 (on Linux a thread's own, and inherited by the threads it starts, so the
/// embedding threads have it too). That alone still let a full-speed replay on two cores run
/// a quarter slower beside it (the ingest bench), hence also [`WriteRate`].
fn yield_to_foreground() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority with `who` 0 changes the calling thread's nice value and reads or
        // writes no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "embedder: cannot lower its CPU priority; it competes with ingest");
        }
    }
}

struct Run {
    reader: rusqlite::Connection,
    writer: vectors::VectorWriter,
    model: Arc<EmbeddingModel>,
    writes: WriteRate,
    options: EmbedderOptions,
    stats: Arc<EmbedderStats>,
}

/// Whether documents are being written faster than a threshold: measured in the store, so a
/// backfill in another process counts as much as this process's ingest.
struct WriteRate {
    threshold: u64,
    /// When it last looked and the newest document stamp then.
    last: Option<(Instant, i64)>,
    /// The last answer; `None` until a span has been measured (the embedder waits for it).
    busy: Option<bool>,
}

impl WriteRate {
    /// Shortest span a rate is measured over.
    const SPAN: Duration = Duration::from_millis(200);

    fn new(threshold: u64) -> Self {
        WriteRate {
            threshold,
            last: None,
            busy: None,
        }
    }

    /// Whether to wait; logs when waiting starts and ends.
    fn busy(&mut self, conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
        if self.threshold == 0 {
            return Ok(false);
        }
        let Some((since, stamp)) = self.last else {
            self.last = Some((Instant::now(), vectors::newest_stamp(conn)?));
            return Ok(true);
        };
        let elapsed = since.elapsed();
        if elapsed < Self::SPAN {
            return Ok(self.busy.unwrap_or(true));
        }
        let (written, newest) = vectors::written_since(conn, stamp)?;
        self.last = Some((Instant::now(), newest));
        let rate = written as f64 / elapsed.as_secs_f64();
        let busy = rate > self.threshold as f64;
        if self.busy.unwrap_or(false) != busy {
            tracing::info!(
                docs_written_per_sec = rate.round(),
                threshold = self.threshold,
                "embedder: {}",
                if busy {
                    "waiting while documents are written at full speed"
                } else {
                    "writes slowed; embedding again"
                }
            );
        }
        self.busy = Some(busy);
        Ok(busy)
    }
}

impl Run {
    fn follow(&mut self, stop: &CancellationToken) {
        let mut at = loop {
            match vectors::resume_position(&self.reader, &self.model.name) {
                Ok(at) => break at,
                Err(error) => {
                    tracing::warn!(%error, "embedder: cannot read where it stopped; retrying");
                    if !pause(stop, self.options.retry) {
                        return;
                    }
                }
            }
        };
        tracing::info!(
            model = self.model.name,
            threads = self.options.threads,
            from_stamp = at.stamp,
            "embedder started"
        );
        let mut report = Report::new(self.options.report_every);
        while !stop.is_cancelled() {
            let step = match self.writes.busy(&self.reader) {
                Ok(true) => Ok(Step::Waiting),
                Ok(false) => self.pass(at),
                Err(error) => Err(error),
            };
            match step {
                Ok(Step::Waiting) => {
                    if !pause(stop, WriteRate::SPAN) {
                        break;
                    }
                }
                Ok(Step::Reached(reached)) => {
                    self.stats.caught_up.store(false, Ordering::Relaxed);
                    at = reached;
                }
                Ok(Step::CaughtUp) => {
                    self.stats.caught_up.store(true, Ordering::Relaxed);
                    report.log(&self.stats, true);
                    if !pause(stop, self.options.idle) {
                        break;
                    }
                }
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, retry_secs = self.options.retry.as_secs_f64(), "embedder: a pass failed; retrying");
                    if !pause(stop, self.options.retry) {
                        break;
                    }
                }
            }
            report.log(&self.stats, false);
        }
        report.log(&self.stats, true);
        tracing::info!("embedder stopped");
    }

    /// Handles one page after `at`.
    fn pass(&mut self, at: Position) -> rusqlite::Result<Step> {
        let pending = vectors::pending(&self.reader, &self.model.name, at, self.options.page)?;
        let Some(last) = pending.last() else {
            return Ok(Step::CaughtUp);
        };
        let mut update = VectorUpdate {
            reached: last.at,
            ..VectorUpdate::default()
        };
        let mut skipped = 0;
        let mut texts = Vec::new();
        for Pending { at, need } in pending {
            match need {
                Need::Vector { title, content } => {
                    texts.push((at, document_text(&title, &content)))
                }
                Need::Removal => update.removed.push(at.id),
                Need::Nothing => skipped += 1,
            }
        }
        update.vectors = embed_all(&self.model, &texts, self.options.threads);
        self.writer.apply(&self.model.name, &update)?;
        let (embedded, removed) = (update.vectors.len() as u64, update.removed.len() as u64);
        self.stats.embedded.fetch_add(embedded, Ordering::Relaxed);
        self.stats.removed.fetch_add(removed, Ordering::Relaxed);
        // A text with no known piece has no vector: passed over like a current one.
        let unembeddable = texts.len() as u64 - embedded;
        self.stats
            .skipped
            .fetch_add(skipped + unembeddable, Ordering::Relaxed);
        Ok(Step::Reached(update.reached))
    }
}

/// What one turn of the embedder's loop came to.
enum Step {
    /// Documents are being written too fast to take cycles from the writer.
    Waiting,
    /// A page was handled, up to here.
    Reached(Position),
    /// Nothing was left after the position.
    CaughtUp,
}

/// `texts` embedded and packed, on up to `threads` threads, in order; texts with no vector
/// are left out.
fn embed_all(
    model: &EmbeddingModel,
    texts: &[(Position, String)],
    threads: usize,
) -> Vec<(i64, i64, Vec<u8>)> {
    let embed = |part: &[(Position, String)]| -> Vec<(i64, i64, Vec<u8>)> {
        part.iter()
            .filter_map(|(at, text)| {
                let vector = model.embed(text)?;
                Some((at.id, at.stamp, table::pack(&vector)))
            })
            .collect()
    };
    pubsearch_shared::embed::in_parallel(texts, threads, embed)
}

/// Sleeps `length` unless stopped first; whether to go on.
fn pause(stop: &CancellationToken, length: Duration) -> bool {
    let until = Instant::now() + length;
    while !stop.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    false
}

/// Logs what was done since the last line, at most every `every` (or now, if `now`).
struct Report {
    every: Duration,
    last: Instant,
    embedded: u64,
    removed: u64,
}

impl Report {
    fn new(every: Duration) -> Self {
        Report {
            every,
            last: Instant::now(),
            embedded: 0,
            removed: 0,
        }
    }

    fn log(&mut self, stats: &EmbedderStats, now: bool) {
        let elapsed = self.last.elapsed();
        if !now && elapsed < self.every {
            return;
        }
        let embedded = stats.embedded.load(Ordering::Relaxed);
        let removed = stats.removed.load(Ordering::Relaxed);
        if embedded != self.embedded || removed != self.removed {
            let new = embedded - self.embedded;
            tracing::info!(
                embedded = new,
                removed = removed - self.removed,
                per_second = format!("{:.0}", new as f64 / elapsed.as_secs_f64().max(1e-3)),
                total = embedded,
                passed_over = stats.skipped.load(Ordering::Relaxed),
                failed_passes = stats.failures.load(Ordering::Relaxed),
                caught_up = stats.caught_up.load(Ordering::Relaxed),
                "embedder: documents' vectors stored"
            );
        }
        self.last = Instant::now();
        self.embedded = embedded;
        self.removed = removed;
    }
}
