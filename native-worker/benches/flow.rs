//! Flow engine benchmark: duroxide's own workload — N orchestrations kept in flight, each
//! fanning out 5 activities and joining — on a durable (`synchronous=FULL`) WAL database.
//! Prints one table; asserts nothing.
//!
//! `cargo bench -p pubsearch-native-worker --bench flow` (FLOW_BENCH_SECS=30 per row).
//!
//! Latency is measured per orchestration from `start` to `wait` returning. At low load the
//! engine's own overhead is that latency minus the longest activity on the critical path, which
//! each activity measures itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pubsearch_native_worker::flow::{
    Engine, EngineOptions, OrchestrationContext, Registry, Status,
};

const FAN_OUT: usize = 5;

struct Row {
    label: &'static str,
    in_flight: usize,
    slots: usize,
    activity_ms: u64,
    sleep: Sleep,
}

/// How a 10 ms activity sleeps. Tokio's timer rounds deadlines up to its 1 ms tick, so a
/// `tokio::time::sleep(10 ms)` takes ~10.5–11 ms; a blocking-pool thread sleep takes ~10.05 ms.
/// Both are shown so the table separates the engine's cost from the timer's.
#[derive(Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum Sleep {
    Tokio,
    Thread,
}

struct Measured {
    completed: usize,
    failed: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    overheads_us: Vec<u64>,
    activity_us_total: u64,
    transactions: u64,
    submissions: u64,
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .activity("work", |_, (ms, sleep): (u64, Sleep)| async move {
            let started = Instant::now();
            let duration = Duration::from_millis(ms);
            match sleep {
                _ if ms == 0 => {}
                Sleep::Tokio => tokio::time::sleep(duration).await,
                Sleep::Thread => tokio::task::spawn_blocking(move || std::thread::sleep(duration))
                    .await
                    .map_err(|error| error.to_string())?,
            }
            Ok(started.elapsed().as_micros() as u64)
        })
        .orchestration(
            "fan_out",
            1,
            |ctx: OrchestrationContext, input: (u64, Sleep)| async move {
                let took =
                    join_all((0..FAN_OUT).map(|_| ctx.activity::<_, u64>("work", &input))).await;
                let (mut longest, mut total) = (0, 0);
                for took in took {
                    let took = took?;
                    longest = longest.max(took);
                    total += took;
                }
                Ok((longest, total))
            },
        );
    registry
}

async fn measure(row: &Row, duration: Duration) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        orchestration_slots: row.slots,
        activity_slots: row.slots,
        ..EngineOptions::default()
    };
    let engine = Engine::start(dir.path().join("flow.db"), registry(), options)
        .await
        .unwrap();
    let client = engine.client();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let drivers = (0..row.in_flight).map(|driver| {
        let client = client.clone();
        let stop = Arc::clone(&stop);
        let input = (row.activity_ms, row.sleep);
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("d{driver}-{n}");
                n += 1;
                let begun = Instant::now();
                client.start("fan_out", &id, &input).await.unwrap();
                let info = client.wait(&id, Duration::from_secs(60)).await.unwrap();
                let latency = begun.elapsed().as_micros() as u64;
                let (longest, total): (u64, u64) = info
                    .output
                    .as_deref()
                    .and_then(|output| serde_json::from_str(output).ok())
                    .unwrap_or((0, 0));
                results.push((info.status, latency, longest, total));
            }
            results
        })
    });
    let drivers: Vec<_> = drivers.collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut measured = Measured {
        completed: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        overheads_us: Vec::new(),
        activity_us_total: 0,
        transactions: 0,
        submissions: 0,
    };
    for driver in drivers {
        for (status, latency, longest, total) in driver.await.unwrap() {
            if status == Status::Completed {
                measured.completed += 1;
                measured.activity_us_total += total;
                measured.latencies_us.push(latency);
                measured.overheads_us.push(latency.saturating_sub(longest));
            } else {
                measured.failed += 1;
            }
        }
    }
    measured.elapsed = started.elapsed();
    let stats = engine.stats();
    measured.transactions = stats.transactions();
    measured.submissions = stats.submissions();
    engine.shutdown().await;
    measured
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    let seconds: u64 = std::env::var("FLOW_BENCH_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let duration = Duration::from_secs(seconds);
    let row = |label, in_flight, slots, activity_ms, sleep| Row {
        label,
        in_flight,
        slots,
        activity_ms,
        sleep,
    };
    let rows = [
        row("10 ms activities", 20, 1, 10, Sleep::Tokio),
        row("10 ms activities", 20, 2, 10, Sleep::Tokio),
        row("10 ms (thread)", 20, 1, 10, Sleep::Thread),
        row("10 ms (thread)", 20, 2, 10, Sleep::Thread),
        row("zero-length", 20, 1, 0, Sleep::Tokio),
        row("zero-length", 20, 2, 0, Sleep::Tokio),
        row("zero-length", 20, 8, 0, Sleep::Tokio),
        row("zero-length", 200, 8, 0, Sleep::Tokio),
        row("low load, 10 ms", 1, 8, 10, Sleep::Tokio),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!();
    println!(
        "flow engine, {seconds} s per row, synchronous=FULL, {FAN_OUT} activities per orchestration"
    );
    println!(
        "| workload         | in flight | slots | orch/s | cap/s | % of cap | activity ms | % of measured cap | p50 ms  | p95 ms  | p99 ms  | overhead p50/p99 ms | commits/s | submissions/commit | failed |"
    );
    println!(
        "|------------------|-----------|-------|--------|-------|----------|-------------|-------------------|---------|---------|---------|---------------------|-----------|--------------------|--------|"
    );
    for row in &rows {
        let mut measured = runtime.block_on(measure(row, duration));
        measured.latencies_us.sort_unstable();
        measured.overheads_us.sort_unstable();
        let secs = measured.elapsed.as_secs_f64();
        let orch_per_s = measured.completed as f64 / secs;
        let activity_ms = measured.activity_us_total as f64
            / 1000.0
            / (measured.completed * FAN_OUT).max(1) as f64;
        // Only a saturated row (more work in flight than slots) has a sleep-bound cap.
        let saturated = row.activity_ms > 0 && row.in_flight * FAN_OUT > row.slots;
        let (cap, percent, measured_percent) = if saturated {
            let cap = row.slots as f64 * 1000.0 / row.activity_ms as f64 / FAN_OUT as f64;
            let measured_cap = row.slots as f64 * 1000.0 / activity_ms / FAN_OUT as f64;
            (
                format!("{cap:.1}"),
                format!("{:.1}%", orch_per_s / cap * 100.0),
                format!("{:.1}%", orch_per_s / measured_cap * 100.0),
            )
        } else {
            ("—".to_string(), "—".to_string(), "—".to_string())
        };
        println!(
            "| {:<16} | {:>9} | {:>2}/{:<2} | {:>6.1} | {:>5} | {:>8} | {:>11.2} | {:>17} | {:>7.2} | {:>7.2} | {:>7.2} | {:>8.2} / {:<8.2} | {:>9.0} | {:>18.1} | {:>6} |",
            row.label,
            row.in_flight,
            row.slots,
            row.slots,
            orch_per_s,
            cap,
            percent,
            activity_ms,
            measured_percent,
            percentile(&measured.latencies_us, 0.50),
            percentile(&measured.latencies_us, 0.95),
            percentile(&measured.latencies_us, 0.99),
            percentile(&measured.overheads_us, 0.50),
            percentile(&measured.overheads_us, 0.99),
            measured.transactions as f64 / secs,
            measured.submissions as f64 / measured.transactions.max(1) as f64,
            measured.failed,
        );
    }
    println!();
    println!(
        "duroxide 0.1.26 on this machine kind (from the issue): 14.75 orch/s at 1/1, 20.15 at 2/2, \
         p50 1.35 s / 0.94 s, 35 orch/s zero-length, ~350 lock warnings per run."
    );
}
