//! Lock-free latency histograms for `/stats`: recording is two relaxed atomic adds, so the hot
//! path never waits on whoever reads the numbers.
//!
//! Buckets are log-scale with four steps per power of two (at most ~19% relative error), from
//! 1 µs to over an hour.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

const STEPS_PER_OCTAVE: u32 = 4;
const BUCKETS: usize = 64 * STEPS_PER_OCTAVE as usize;

/// A histogram of durations in microseconds.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_us: AtomicU64,
}

/// Percentiles of a histogram, in microseconds (bucket upper bounds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.summary().fmt(f)
    }
}

fn bucket_of(us: u64) -> usize {
    if us < u64::from(STEPS_PER_OCTAVE) {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let step = (us >> (octave - 2)) & u64::from(STEPS_PER_OCTAVE - 1);
    ((octave * STEPS_PER_OCTAVE) as u64 + step) as usize
}

fn upper_bound(bucket: usize) -> u64 {
    // Values below 4 have a bucket each; buckets 4..8 (octave 1) are never used.
    if bucket < 2 * STEPS_PER_OCTAVE as usize {
        return bucket.min(STEPS_PER_OCTAVE as usize - 1) as u64;
    }
    let octave = bucket as u32 / STEPS_PER_OCTAVE;
    let step = bucket as u64 % u64::from(STEPS_PER_OCTAVE);
    ((u64::from(STEPS_PER_OCTAVE) + step + 1) << (octave - 2)).saturating_sub(1)
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us).min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// Current percentiles.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Relaxed);
        let at = |fraction: f64| {
            let target = ((total as f64 * fraction).ceil() as u64).max(1);
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= target {
                    return upper_bound(bucket).min(max_us);
                }
            }
            max_us
        };
        LatencySummary {
            count: total,
            p50_us: if total == 0 { 0 } else { at(0.50) },
            p95_us: if total == 0 { 0 } else { at(0.95) },
            p99_us: if total == 0 { 0 } else { at(0.99) },
            max_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for us in [0, 1, 3, 4, 5, 7, 8, 100, 1_000, 123_456, 10_000_000_000] {
            let bucket = bucket_of(us);
            assert!(
                upper_bound(bucket) >= us,
                "{us} in bucket {bucket} bounded by {}",
                upper_bound(bucket)
            );
            if bucket > 0 {
                assert!(
                    upper_bound(bucket - 1) < us,
                    "{us} belongs in a lower bucket"
                );
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket() {
        let histogram = LatencyHistogram::default();
        for us in 1..=1_000 {
            histogram.record(us);
        }
        let summary = histogram.summary();
        assert_eq!((summary.count, summary.max_us), (1_000, 1_000));
        for (value, expected) in [
            (summary.p50_us, 500.0),
            (summary.p95_us, 950.0),
            (summary.p99_us, 990.0),
        ] {
            assert!(
                (value as f64) >= expected && (value as f64) <= expected * 1.2,
                "{value} vs {expected}"
            );
        }
        assert_eq!(
            LatencyHistogram::default().summary(),
            LatencySummary::default()
        );
    }
}
