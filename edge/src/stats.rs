//! Per-endpoint request timings and paged reads kept in the isolate, for `/stats`.
//!
//! Workers freeze the clock during pure computation, so these timings measure what includes
//! I/O (snapshot loads, chunk fetches) precisely and CPU-only requests coarsely; they are still
//! the right shape for spotting a slow endpoint.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::paged::IoCounts;

/// Samples kept per endpoint (a ring): enough for stable percentiles, bounded memory.
const SAMPLES: usize = 1024;

/// The last [`SAMPLES`] values, for percentiles in bounded memory.
#[derive(Default)]
struct Ring {
    samples: Vec<f64>,
    next: usize,
}

impl Ring {
    fn push(&mut self, value: f64) {
        if self.samples.len() < SAMPLES {
            self.samples.push(value);
        } else {
            self.samples[self.next] = value;
        }
        self.next = (self.next + 1) % SAMPLES;
    }

    /// The p50, p95, p99 and max of the samples (zeros when there are none).
    fn percentiles(&self) -> [f64; 4] {
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |p: f64| {
            sorted
                .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        [
            at(0.50),
            at(0.95),
            at(0.99),
            sorted.last().copied().unwrap_or(0.0),
        ]
    }
}

#[derive(Default)]
struct Endpoint {
    millis: Ring,
    requests: u64,
    errors: u64,
    /// Paged reads: totals, and the dependent round trips of each query that read.
    io: IoCounts,
    round_trips: Ring,
}

/// What one endpoint's queries read from a paged build.
#[derive(Debug, Serialize)]
pub struct PagedReads {
    pub queries: u64,
    #[serde(flatten)]
    pub counts: IoCounts,
    /// Chunk reads answered from the isolate's cache, of all chunk reads.
    pub hit_ratio: Option<f64>,
    pub round_trips_p50: f64,
    pub round_trips_p95: f64,
    pub round_trips_max: f64,
}

impl PagedReads {
    fn of(io: &IoCounts, round_trips: &Ring) -> Self {
        let reads = io.memory_hits + io.memory_misses;
        let [p50, p95, _, max] = round_trips.percentiles();
        Self {
            queries: round_trips.samples.len() as u64,
            counts: *io,
            hit_ratio: (reads > 0).then(|| io.memory_hits as f64 / reads as f64),
            round_trips_p50: p50,
            round_trips_p95: p95,
            round_trips_max: max,
        }
    }
}

/// Timing summary of one endpoint.
#[derive(Debug, Serialize)]
pub struct Timings {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Present once the endpoint has read from a paged build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paged: Option<PagedReads>,
}

thread_local! {
    static ENDPOINTS: RefCell<BTreeMap<&'static str, Endpoint>> = const { RefCell::new(BTreeMap::new()) };
}

/// Records one request.
pub fn record(endpoint: &'static str, millis: f64, failed: bool) {
    ENDPOINTS.with(|endpoints| {
        let mut endpoints = endpoints.borrow_mut();
        let entry = endpoints.entry(endpoint).or_default();
        entry.requests += 1;
        entry.errors += u64::from(failed);
        entry.millis.push(millis);
    });
}

/// Records what one query read from a paged build.
pub fn record_io(endpoint: &'static str, io: IoCounts) {
    ENDPOINTS.with(|endpoints| {
        let mut endpoints = endpoints.borrow_mut();
        let entry = endpoints.entry(endpoint).or_default();
        entry.io = entry.io.plus(&io);
        entry.round_trips.push(io.round_trips as f64);
    });
}

/// Timings of every endpoint seen so far.
pub fn summary() -> BTreeMap<&'static str, Timings> {
    ENDPOINTS.with(|endpoints| {
        endpoints
            .borrow()
            .iter()
            .map(|(name, endpoint)| {
                let [p50, p95, p99, max] = endpoint.millis.percentiles();
                (
                    *name,
                    Timings {
                        requests: endpoint.requests,
                        errors: endpoint.errors,
                        p50_ms: p50,
                        p95_ms: p95,
                        p99_ms: p99,
                        max_ms: max,
                        paged: (!endpoint.round_trips.samples.is_empty())
                            .then(|| PagedReads::of(&endpoint.io, &endpoint.round_trips)),
                    },
                )
            })
            .collect()
    })
}

/// Paged reads of every endpoint together, since the isolate started.
pub fn paged_overall() -> Option<PagedReads> {
    ENDPOINTS.with(|endpoints| {
        let mut all = Endpoint::default();
        for endpoint in endpoints.borrow().values() {
            for &trips in &endpoint.round_trips.samples {
                all.round_trips.push(trips);
            }
        }
        (!all.round_trips.samples.is_empty())
            .then(|| PagedReads::of(&crate::paged::counts(), &all.round_trips))
    })
}
