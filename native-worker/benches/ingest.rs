//! Ingest benchmark: prints a table, asserts nothing (performance targets live here, not in tests).
//!
//! 1. End to end: replay a synthetic Jetstream corpus (`native-worker gen-corpus`) through
//!    decode → extract → queue → batched WAL commits.
//! 2. Ceiling: the same rows, pre-extracted, inserted by a bare rusqlite loop into the same schema.
//! 3. Search latency on a snapshot built from the first corpus (what serving reads: the store
//!    keeps no full-text index), idle and while a second corpus is being ingested on the same
//!    cores.
//! 4. The embedder beside ingest: ingest rate and commit latency with it off and on, its rate
//!    catching up alone, and a snapshot build with the store's vectors and without.
//!
//! `cargo bench -p pubsearch-native-worker --bench ingest` (INGEST_BENCH_RECORDS, default 100000).

use std::path::Path;
use std::time::{Duration, Instant};

use pubsearch_native_worker::embedder::{self, EmbedderOptions};
use pubsearch_native_worker::extract::{self, Extracted};
use pubsearch_native_worker::firehose::{Payload, decode_jetstream};
use pubsearch_native_worker::ingest::StatsSnapshot;
use pubsearch_native_worker::publish::build;
use pubsearch_native_worker::run::{self, RunOptions, Source, store_path};
use pubsearch_native_worker::store::{BACKSTOP_PAGES, Checkpointer, Store, vectors};
use pubsearch_native_worker::telemetry;
use pubsearch_shared::search;
use tokio_util::sync::CancellationToken;

fn generate(records: usize, seed: u64, out: &Path) {
    pubsearch_native_worker::corpus::write_file(out, records, seed).expect("writing the corpus");
}

fn replay(data_dir: &Path, file: &Path) -> (Duration, u64) {
    let (time, summary) = replay_with(data_dir, file, None);
    (time, summary.applied)
}

/// A replay with the embedder beside ingest (`embed`) or not.
fn replay_with(
    data_dir: &Path,
    file: &Path,
    embed: Option<EmbedderOptions>,
) -> (Duration, StatsSnapshot) {
    let options = RunOptions {
        embed,
        ..RunOptions::new(data_dir, Source::Replay(file.to_path_buf()))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let summary = runtime
        .block_on(run::run(options, CancellationToken::new()))
        .unwrap();
    (started.elapsed(), summary)
}

/// Ingest without and with the embedder beside it (commit latency is the commit path's cost),
/// then the embedder catching up alone, then a build with the vectors stored and without.
fn embedder_beside_ingest(dir: &Path, corpus: &Path, records: usize) {
    let Ok(model) = pubsearch_native_worker::embed::stored::load_or_distill(&model_dir()) else {
        println!("(embedder rows skipped: the model is not installed)");
        return;
    };
    let model = std::sync::Arc::new(model);
    let (off_time, off) = replay_with(&dir.join("embed-off"), corpus, None);
    // `run` embeds with the model builds use (`embed::stored::for_builds`), found through
    // PUBSEARCH_MODEL_DIR, which `main` sets.
    let (on_time, on) = replay_with(
        &dir.join("embed-on"),
        corpus,
        Some(EmbedderOptions::default()),
    );
    let store = Store::open(store_path(&dir.join("embed-on"))).unwrap();
    let coverage = || vectors::coverage(&store.reader().unwrap(), &model.name).unwrap();
    let (during, live) = coverage();
    let stop = CancellationToken::new();
    let catching_up = Instant::now();
    let given = std::sync::Arc::clone(&model);
    let embedder = embedder::spawn(
        &store,
        move || Some(given),
        EmbedderOptions::default(),
        stop.clone(),
    )
    .unwrap();
    while coverage().0 < live {
        std::thread::sleep(Duration::from_millis(20));
    }
    let catch_up = catching_up.elapsed();
    stop.cancel();
    embedder.join();

    let snapshot = dir.join("embed-build.db");
    let timed = |store: &Store| {
        let started = Instant::now();
        build::build_with(store, &snapshot, "bench", "bench", Some(&model), |_, _| {}).unwrap();
        started.elapsed()
    };
    let with_stored = timed(&store);
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute("DELETE FROM document_vectors", [])
        .unwrap();
    let without = timed(&store);

    let rate =
        |summary: &StatsSnapshot, time: Duration| summary.applied as f64 / time.as_secs_f64();
    println!();
    println!(
        "embedder beside ingest: {records} records replayed, {live} live documents, \
         model {}, 1 embedding thread, 2 cores",
        model.name
    );
    println!("| measurement                                | embedder off | embedder on |");
    println!("|--------------------------------------------|--------------|-------------|");
    println!(
        "| ingest, docs/s                             | {:>12.0} | {:>11.0} |",
        rate(&off, off_time),
        rate(&on, on_time)
    );
    let (off_latency, on_latency) = (&off.commit_latency, &on.commit_latency);
    for (name, off_us, on_us) in [
        ("p50", off_latency.p50_us, on_latency.p50_us),
        ("p99", off_latency.p99_us, on_latency.p99_us),
        ("max", off_latency.max_us, on_latency.max_us),
    ] {
        println!("| commit latency {name}, µs                     | {off_us:>12} | {on_us:>11} |");
    }
    println!(
        "| vectors stored by the end of the replay    | {:>12} | {:>11} |",
        0, during
    );
    println!(
        "| the rest embedded afterwards, docs/s       | {:>12} | {:>11.0} |",
        "",
        (live - during) as f64 / catch_up.as_secs_f64()
    );
    println!(
        "| snapshot build after, s (embeds / takes)   | {:>12.2} | {:>11.2} |",
        without.as_secs_f64(),
        with_stored.as_secs_f64()
    );
}

fn model_dir() -> std::path::PathBuf {
    std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        std::path::PathBuf::from,
    )
}

/// The ceiling: pre-extracted documents, bare prepared INSERTs, one transaction per 2,000 rows,
/// and WAL checkpoints on a thread of their own, as the store's writer has them.
fn raw_ceiling(data_dir: &Path, file: &Path) -> (Duration, u64) {
    let documents: Vec<extract::Document> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|line| decode_jetstream(line).ok())
        .filter_map(|event| match event.payload {
            Payload::Commit(commit) => {
                let body = commit.record?;
                match extract::extract(&event.did, &commit.collection, &commit.rkey, &body).ok()? {
                    Extracted::Document(document) => Some(document),
                    Extracted::Publication(_) => None,
                }
            }
            _ => None,
        })
        .collect();
    let store = Store::open(store_path(data_dir)).unwrap();
    let mut conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    // Checkpoints as the store's writer does them: off the committing thread.
    conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)
        .unwrap();
    let checkpointer = Checkpointer::spawn(store.path()).unwrap();
    let started = Instant::now();
    let mut inserted = 0u64;
    for chunk in documents.chunks(2_000) {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT OR REPLACE INTO documents (uri, did, rkey, collection, rev, title, content, tags,
                                                      searchable, content_hash, indexed_at)
                     VALUES (?1, ?2, ?3, ?4, 'r', ?5, ?6, '[]', 1, ?7, 1)",
                )
                .unwrap();
            for d in chunk {
                insert
                    .execute((
                        &d.uri,
                        &d.did,
                        &d.rkey,
                        &d.collection,
                        &d.title,
                        &d.content,
                        &d.content_hash,
                    ))
                    .unwrap();
                inserted += 1;
            }
        }
        tx.commit().unwrap();
        checkpointer.nudge();
    }
    (started.elapsed(), inserted)
}

/// A minimal OTLP/HTTP sink: reads each request and answers 200 with an empty body.
fn discard_otlp(listener: std::net::TcpListener) {
    use std::io::{BufRead, BufReader, Read, Write};
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if reader.get_mut().write_all(response).is_err() {
                    return;
                }
            }
        });
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs searches on the snapshot at `snapshot` until `stop`, returning per-search latencies.
fn query_loop(snapshot: &Path, stop: &std::sync::atomic::AtomicBool, max: usize) -> Vec<Duration> {
    let conn = rusqlite::Connection::open(snapshot).unwrap();
    search::prepare(&conn).unwrap();
    // Words of the generator's vocabulary (`native-worker gen-corpus`), as the edge bench asks.
    let words = [
        "ka",
        "mi lo",
        "ra ten su",
        "\"ka lo\"",
        "vo",
        "ne shi",
        "da pe lu",
        "gor an",
    ];
    let now = pubsearch_shared::Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let mut latencies = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && latencies.len() < max {
        let request = search::SearchRequest::new(words[latencies.len() % words.len()]).unwrap();
        let started = Instant::now();
        let page = search::search(&conn, &request, now).unwrap();
        std::hint::black_box(page);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn main() {
    if std::env::var_os("PUBSEARCH_MODEL_DIR").is_none() {
        // SAFETY: set before any other thread starts.
        unsafe { std::env::set_var("PUBSEARCH_MODEL_DIR", model_dir()) };
    }
    let records: usize = std::env::var("INGEST_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.ndjson");
    let second = dir.path().join("second.ndjson");
    let started = Instant::now();
    generate(records, 1, &corpus);
    generate(records / 2, 2, &second);
    let generated_in = started.elapsed();
    let corpus_bytes = std::fs::metadata(&corpus).unwrap().len();

    let end_to_end_dir = dir.path().join("e2e");
    let (e2e_time, applied) = replay(&end_to_end_dir, &corpus);
    let ceiling_dir = dir.path().join("raw");
    let (raw_time, inserted) = raw_ceiling(&ceiling_dir, &corpus);

    let store = Store::open(store_path(&end_to_end_dir)).unwrap();
    let snapshot = dir.path().join("snapshot.db");
    build::build(&store, &snapshot, "bench", "bench", |_, _| {}).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let idle = query_loop(&snapshot, &stop, 2_000);
    let (busy, ingest_time) = std::thread::scope(|scope| {
        let queries = scope.spawn(|| query_loop(&snapshot, &stop, usize::MAX));
        let (time, _) = replay(&end_to_end_dir, &second);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (queries.join().unwrap(), time)
    });

    // The same replay with OTLP trace export on (production filter), to a loopback receiver.
    let (traced_time, traced_applied) = {
        let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", receiver.local_addr().unwrap());
        std::thread::spawn(move || discard_otlp(receiver));
        let exporter = {
            use opentelemetry_otlp::WithExportConfig;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .unwrap()
        };
        let provider =
            telemetry::batch_provider(exporter, &telemetry::TraceConfig::default(), "ingest-bench");
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(
            telemetry::otel_layer(&provider)
                .with_filter(tracing_subscriber::EnvFilter::new("info")),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        let result = replay(&dir.path().join("traced"), &corpus);
        telemetry::shutdown_provider(&provider, Duration::from_secs(5));
        result
    };
    let traced_rate = traced_applied as f64 / traced_time.as_secs_f64();

    let e2e_rate = applied as f64 / e2e_time.as_secs_f64();
    let raw_rate = inserted as f64 / raw_time.as_secs_f64();
    println!();
    println!(
        "ingest benchmark: {records} records ({:.1} MB NDJSON, generated in {:.1}s), 2 cores",
        corpus_bytes as f64 / 1e6,
        generated_in.as_secs_f64()
    );
    println!("| measurement                               | value          |");
    println!("|-------------------------------------------|----------------|");
    println!("| end to end (replay → store), docs/s       | {e2e_rate:>14.0} |");
    println!(
        "|   rows applied / wall time                | {applied:>6} / {:>5.2}s |",
        e2e_time.as_secs_f64()
    );
    println!("| end to end with OTLP export on, docs/s    | {traced_rate:>14.0} |");
    println!(
        "|   tracing overhead                        | {:>13.1}% |",
        100.0 * (e2e_rate - traced_rate) / e2e_rate
    );
    println!("| raw rusqlite insert ceiling, docs/s       | {raw_rate:>14.0} |");
    println!(
        "| end to end as % of ceiling                | {:>13.0}% |",
        100.0 * e2e_rate / raw_rate
    );
    println!(
        "| search p50 idle (snapshot)                | {:>12.0}µs |",
        percentile(&idle, 0.50).as_micros()
    );
    println!(
        "| search p99 idle (snapshot)                | {:>12.0}µs |",
        percentile(&idle, 0.99).as_micros()
    );
    println!(
        "| search p50 during ingest                  | {:>12.0}µs |",
        percentile(&busy, 0.50).as_micros()
    );
    println!(
        "| search p99 during ingest                  | {:>12.0}µs |",
        percentile(&busy, 0.99).as_micros()
    );
    println!(
        "|   searches during {:>5.2}s of ingest        | {:>14} |",
        ingest_time.as_secs_f64(),
        busy.len()
    );
    embedder_beside_ingest(dir.path(), &corpus, records);
}
