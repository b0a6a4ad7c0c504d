//! Per-endpoint request timings kept in the isolate, for `/stats`.
//!
//! Workers freeze the clock during pure computation, so these timings measure what includes
//! I/O (snapshot loads) precisely and CPU-only requests coarsely; they are still the right
//! shape for spotting a slow endpoint.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;

/// Samples kept per endpoint (a ring): enough for stable percentiles, bounded memory.
const SAMPLES: usize = 1024;

#[derive(Default)]
struct Endpoint {
    samples: Vec<f64>,
    next: usize,
    requests: u64,
    errors: u64,
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
        if entry.samples.len() < SAMPLES {
            entry.samples.push(millis);
        } else {
            entry.samples[entry.next] = millis;
        }
        entry.next = (entry.next + 1) % SAMPLES;
    });
}

/// Timings of every endpoint seen so far.
pub fn summary() -> BTreeMap<&'static str, Timings> {
    ENDPOINTS.with(|endpoints| {
        endpoints
            .borrow()
            .iter()
            .map(|(name, endpoint)| {
                let mut sorted = endpoint.samples.clone();
                sorted.sort_by(f64::total_cmp);
                let at = |p: f64| {
                    sorted
                        .get(
                            ((sorted.len() as f64 * p) as usize)
                                .min(sorted.len().saturating_sub(1)),
                        )
                        .copied()
                        .unwrap_or(0.0)
                };
                (
                    *name,
                    Timings {
                        requests: endpoint.requests,
                        errors: endpoint.errors,
                        p50_ms: at(0.50),
                        p95_ms: at(0.95),
                        p99_ms: at(0.99),
                        max_ms: sorted.last().copied().unwrap_or(0.0),
                    },
                )
            })
            .collect()
    })
}
