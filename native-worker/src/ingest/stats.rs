//! Ingest counters: lock-free, updated on the hot path, read by the progress log and `/stats`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::latency::{LatencyHistogram, LatencySummary};

use super::Skip;

/// Live counters for one ingest run.
#[derive(Debug, Default)]
pub struct IngestStats {
    events: AtomicU64,
    /// Events that carried a source time (Jetstream's do; tap's do not).
    timed_events: AtomicU64,
    banned: AtomicU64,
    unwanted: AtomicU64,
    malformed: AtomicU64,
    undecodable_frames: AtomicU64,
    oversized_frames: AtomicU64,
    reconnects: AtomicU64,
    store_full: AtomicU64,
    /// When the current run of refused commits began (Unix µs; 0 while commits succeed).
    store_full_since_us: AtomicI64,
    batches: AtomicU64,
    applied: AtomicU64,
    stale: AtomicU64,
    last_batch_size: AtomicU64,
    last_commit_micros: AtomicU64,
    max_commit_micros: AtomicU64,
    newest_event_time_us: AtomicI64,
    durable_event_time_us: AtomicI64,
    /// Wall-clock time of the last commit (Unix µs; 0 before the first).
    last_commit_at_us: AtomicI64,
    commit_latency: LatencyHistogram,
}

/// A point-in-time copy of [`IngestStats`], as `/stats` serves it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub events: u64,
    pub banned: u64,
    pub unwanted: u64,
    pub malformed: u64,
    pub undecodable_frames: u64,
    pub oversized_frames: u64,
    pub reconnects: u64,
    /// Commits refused because the store's disk was full, and retried (ingest pauses).
    pub store_full: u64,
    pub batches: u64,
    pub applied: u64,
    pub stale: u64,
    pub last_batch_size: u64,
    pub last_commit_micros: u64,
    pub max_commit_micros: u64,
    /// Source time of the newest event received (Unix µs; 0 before the first).
    pub newest_event_time_us: i64,
    /// Source time of the newest event that is durable in the store.
    pub durable_event_time_us: i64,
    /// How far the durable store is behind the source, in ms: wall-clock time minus the source
    /// time of the newest durable event. `null` when the source's events carry no time (tap),
    /// or before anything with a time is durable.
    pub lag_ms: Option<i64>,
    /// Wall-clock ms since the last commit made anything durable (`null` before the first):
    /// what can be known under any source, tap included.
    pub since_last_commit_ms: Option<i64>,
    /// Time per batch commit (one transaction, FTS maintenance and fsync included).
    pub commit_latency: LatencySummary,
}

impl IngestStats {
    pub(super) fn record_event(&self, time_us: Option<i64>) {
        self.events.fetch_add(1, Relaxed);
        if let Some(time_us) = time_us {
            self.timed_events.fetch_add(1, Relaxed);
            self.newest_event_time_us.fetch_max(time_us, Relaxed);
        }
    }

    pub(super) fn record_skip(&self, skip: &Skip) {
        let counter = match skip {
            Skip::Banned => &self.banned,
            Skip::Unwanted => &self.unwanted,
            Skip::Malformed(_) | Skip::FromTheFuture => &self.malformed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a frame that was not an event at all.
    pub fn record_undecodable_frame(&self) {
        self.undecodable_frames.fetch_add(1, Relaxed);
    }

    /// Counts a frame skipped for its size.
    pub fn record_oversized_frame(&self) {
        self.oversized_frames.fetch_add(1, Relaxed);
    }

    /// Counts a commit refused for a full disk.
    pub fn record_store_full(&self) {
        self.store_full.fetch_add(1, Relaxed);
        let _ =
            self.store_full_since_us
                .compare_exchange(0, crate::clock::now_us(), Relaxed, Relaxed);
    }

    /// Since when ingest has been paused on a full disk, if it is now.
    pub fn store_full_since_us(&self) -> Option<i64> {
        Some(self.store_full_since_us.load(Relaxed)).filter(|since| *since > 0)
    }

    /// Counts a reconnect to the source.
    pub fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub(super) fn record_commit(
        &self,
        size: usize,
        applied: usize,
        stale: usize,
        micros: u64,
        durable_time_us: Option<i64>,
    ) {
        self.batches.fetch_add(1, Relaxed);
        self.store_full_since_us.store(0, Relaxed);
        self.applied.fetch_add(applied as u64, Relaxed);
        self.stale.fetch_add(stale as u64, Relaxed);
        self.last_batch_size.store(size as u64, Relaxed);
        self.last_commit_micros.store(micros, Relaxed);
        self.max_commit_micros.fetch_max(micros, Relaxed);
        self.commit_latency.record(micros);
        self.last_commit_at_us
            .store(crate::clock::now_us(), Relaxed);
        if let Some(time_us) = durable_time_us {
            self.durable_event_time_us.fetch_max(time_us, Relaxed);
        }
    }

    /// The newest source time that is durable; consumers rewind from here on reconnect.
    pub fn durable_event_time_us(&self) -> Option<i64> {
        Some(self.durable_event_time_us.load(Relaxed)).filter(|t| *t > 0)
    }

    /// Seeds the durable position from the store's cursor at startup.
    pub fn set_durable_event_time_us(&self, time_us: i64) {
        self.durable_event_time_us.fetch_max(time_us, Relaxed);
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let durable = self.durable_event_time_us.load(Relaxed);
        let now_us = crate::clock::now_us();
        let events = self.events.load(Relaxed);
        // Events arrived and none carried a time: the source is untimed (tap), and a durable
        // time seeded from an earlier source's cursor says nothing about it.
        let untimed = events > 0 && self.timed_events.load(Relaxed) == 0;
        let last_commit = self.last_commit_at_us.load(Relaxed);
        StatsSnapshot {
            events,
            banned: self.banned.load(Relaxed),
            unwanted: self.unwanted.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            undecodable_frames: self.undecodable_frames.load(Relaxed),
            oversized_frames: self.oversized_frames.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            store_full: self.store_full.load(Relaxed),
            batches: self.batches.load(Relaxed),
            applied: self.applied.load(Relaxed),
            stale: self.stale.load(Relaxed),
            last_batch_size: self.last_batch_size.load(Relaxed),
            last_commit_micros: self.last_commit_micros.load(Relaxed),
            max_commit_micros: self.max_commit_micros.load(Relaxed),
            newest_event_time_us: self.newest_event_time_us.load(Relaxed),
            durable_event_time_us: durable,
            lag_ms: (durable > 0 && !untimed).then(|| (now_us - durable).max(0) / 1000),
            since_last_commit_ms: (last_commit > 0).then(|| (now_us - last_commit).max(0) / 1000),
            commit_latency: self.commit_latency.summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_reported_only_for_sources_whose_events_carry_a_time() {
        let hour_ago = crate::clock::now_us() - 3_600_000_000;
        // Jetstream: lag is how far the durable event time is behind the clock.
        let timed = IngestStats::default();
        assert_eq!(timed.snapshot().lag_ms, None, "nothing durable yet");
        timed.record_event(Some(hour_ago));
        timed.record_commit(1, 1, 0, 10, Some(hour_ago));
        let lag = timed.snapshot().lag_ms.unwrap();
        assert!((3_600_000..3_700_000).contains(&lag), "{lag}");

        // Tap: no event time, even with a durable time seeded from an earlier Jetstream cursor.
        let untimed = IngestStats::default();
        untimed.set_durable_event_time_us(hour_ago);
        untimed.record_event(None);
        untimed.record_commit(1, 1, 0, 10, None);
        let snapshot = untimed.snapshot();
        assert_eq!(snapshot.lag_ms, None);
        assert!(snapshot.since_last_commit_ms.unwrap() < 60_000);
    }
}
