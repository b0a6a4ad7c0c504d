//! The ingest pipeline: firehose events → extraction and policy → batched store commits.
//!
//! Consumers call [`Sink::send`] with decoded events; extraction happens right there, on the
//! consumer's task, so the CPU work overlaps with the writer's commits. A bounded queue carries
//! the resulting changes to one writer thread, which commits whatever has queued up (up to
//! [`IngestConfig::max_batch`]) in a single transaction together with the source cursor: batches
//! grow under load and stay small, with low latency, when the stream is quiet.

mod classify;
mod policy;
mod stats;
mod writer;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::firehose::{Event, EventSink, Position, Refused};
use crate::store::{Change, Mark};
pub use classify::{MAX_AHEAD_OF_CLOCK_US, Skip, classify, is_from_the_future};
pub use policy::{Policy, PolicyError};
pub use stats::{IngestStats, StatsSnapshot};
pub use writer::{WriterHandle, spawn_writer};

/// Tuning for the pipeline.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Most changes per transaction.
    pub max_batch: usize,
    /// Changes queued between consumers and the writer before consumers wait (backpressure).
    pub queue_capacity: usize,
    /// The cursor name Jetstream positions are stored under.
    pub cursor_source: String,
    /// Queue each batch's changed rows for Turso in the batch's transaction (`TURSO_URL` set).
    pub write_through: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 2_000,
            queue_capacity: 16_384,
            cursor_source: "jetstream".into(),
            write_through: false,
        }
    }
}

/// One queued unit of work: a change or a mark (or neither, for skipped events) and its stream
/// position.
#[derive(Debug)]
pub(crate) struct Item {
    pub change: Option<Change>,
    pub mark: Option<Mark>,
    pub position: Position,
    pub time_us: Option<i64>,
}

/// Where consumers put events. Cloneable; the writer stops once every clone is dropped.
#[derive(Clone)]
pub struct Sink {
    queue: mpsc::Sender<Item>,
    policy: Arc<Policy>,
    stats: Arc<IngestStats>,
}

impl Sink {
    /// Extracts, applies policy and queues one event; waits while the queue is full. An event
    /// from the future is dropped whole, position included, so it never becomes the cursor.
    /// Returns `false` once the writer has stopped (shutdown or a fatal store error).
    pub async fn send(&self, event: Event) -> bool {
        if is_from_the_future(&event, crate::clock::now_us()) {
            tracing::warn!(did = %event.did, time_us = ?event.time_us,
                           "skipping an event stamped over 10 minutes ahead of our clock");
            self.stats.record_event(None);
            self.stats.record_skip(&Skip::FromTheFuture);
            return true;
        }
        self.stats.record_event(event.time_us);
        let extract = tracing::debug_span!("ingest.extract", did = %event.did);
        let change = match extract.in_scope(|| classify(&event, &self.policy)) {
            Ok(change) => Some(change),
            Err(skip) => {
                self.stats.record_skip(&skip);
                if let Skip::Malformed(error) = &skip {
                    tracing::debug!(did = %event.did, %error, "skipping malformed record");
                }
                None
            }
        };
        let item = Item {
            change,
            mark: None,
            position: event.position,
            time_us: event.time_us,
        };
        self.queue.send(item).await.is_ok()
    }

    /// Queues a change that did not come from an event (a row synced down from Turso), in order
    /// with the rest.
    pub async fn send_change(&self, change: Change) -> bool {
        let item = Item {
            change: Some(change),
            mark: None,
            position: Position::Untracked,
            time_us: None,
        };
        self.queue.send(item).await.is_ok()
    }

    /// Queues bookkeeping (a sync watermark, backfill progress, a drained upstream queue) after
    /// everything queued so far, so it commits with or after the rows it covers.
    pub async fn send_mark(&self, mark: Mark) -> bool {
        let item = Item {
            change: None,
            mark: Some(mark),
            position: Position::Untracked,
            time_us: None,
        };
        self.queue.send(item).await.is_ok()
    }

    /// Queues a position with no change, for frames that decoded to nothing but must still be
    /// acknowledged (tap) once everything before them is durable.
    pub async fn skip_position(&self, position: Position) -> bool {
        let item = Item {
            change: None,
            mark: None,
            position,
            time_us: None,
        };
        self.queue.send(item).await.is_ok()
    }

    /// The policy events are checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Live counters, shared with the admin endpoint.
    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// A handle that reports queue depth without keeping the writer alive.
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe {
            queue: self.queue.downgrade(),
        }
    }
}

/// The source interface: every firehose consumer delivers through it.
impl EventSink for Sink {
    async fn deliver(&self, event: Event) -> bool {
        self.send(event).await
    }

    async fn pass(&self, position: Position) -> bool {
        self.skip_position(position).await
    }

    fn refused(&self, frame: Refused) {
        match frame {
            Refused::Undecodable => self.stats.record_undecodable_frame(),
            Refused::Oversized => self.stats.record_oversized_frame(),
        }
    }

    fn reconnected(&self) {
        self.stats.record_reconnect();
    }

    fn durable_time_us(&self) -> Option<i64> {
        self.stats.durable_event_time_us()
    }
}

/// Reports how many changes wait for the writer; does not hold the pipeline open.
#[derive(Clone)]
pub struct QueueProbe {
    queue: mpsc::WeakSender<Item>,
}

impl QueueProbe {
    /// Changes queued for the writer (0 once the pipeline has stopped).
    pub fn depth(&self) -> usize {
        self.queue
            .upgrade()
            .map(|queue| queue.max_capacity() - queue.capacity())
            .unwrap_or(0)
    }
}
