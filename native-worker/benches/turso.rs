//! Turso write-through benchmark: documents/s written through Hrana to the in-process server
//! (a real SQLite file behind loopback HTTP) with injected round-trip latency, batched as the
//! upstream drainer sends them vs one pipeline per document. Prints a table; asserts nothing.
//!
//! `cargo bench -p pubsearch-native-worker --bench turso` (TURSO_BENCH_RECORDS=20000,
//! TURSO_BENCH_RTT_MS=50).

#[path = "../tests/support/hrana_server.rs"]
#[allow(dead_code)]
mod hrana_server;

use std::time::{Duration, Instant};

use pubsearch_native_worker::run::{self, RunOptions, Source, store_path};
use pubsearch_native_worker::store::Store;
use pubsearch_native_worker::store::replica::{RowImage, Table};
use pubsearch_native_worker::turso::{TursoClient, TursoConfig, upstream};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Real document rows: a generated corpus ingested into a local store, read back as images.
async fn document_images(dir: &std::path::Path, records: usize) -> Vec<RowImage> {
    std::fs::create_dir_all(dir).unwrap();
    let corpus = dir.join("corpus.ndjson");
    pubsearch_native_worker::corpus::write_file(&corpus, records, 3).unwrap();
    run::run(
        RunOptions::new(dir, Source::Replay(corpus)),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let conn = Store::open(store_path(dir)).unwrap().reader().unwrap();
    let uris: Vec<String> = conn
        .prepare("SELECT uri FROM documents WHERE deleted = 0 ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    uris.iter()
        .map(|uri| {
            RowImage::read(&conn, Table::Documents, uri)
                .unwrap()
                .unwrap()
        })
        .collect()
}

struct Measured {
    documents: usize,
    pipelines: usize,
    elapsed: Duration,
}

async fn write(client: &TursoClient, images: &[RowImage], per_pipeline: usize) -> Measured {
    let started = Instant::now();
    let mut pipelines = 0;
    for chunk in images.chunks(per_pipeline) {
        upstream::send(client, chunk).await.unwrap();
        pipelines += 1;
    }
    Measured {
        documents: images.len(),
        pipelines,
        elapsed: started.elapsed(),
    }
}

fn main() {
    let records = env("TURSO_BENCH_RECORDS", 20_000) as usize;
    let rtt = Duration::from_millis(env("TURSO_BENCH_RTT_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let images = document_images(&dir.path().join("local"), records).await;
        let bytes: usize = images
            .iter()
            .map(|image| serde_json::to_string(image).unwrap().len())
            .sum();
        let server = hrana_server::HranaServer::start(&dir.path().join("turso.db"), None).await;
        let client = TursoClient::new(TursoConfig::new(&server.url(), None).unwrap()).unwrap();
        upstream::ensure_schema(&client).await.unwrap();
        server.set_latency(rtt);

        println!();
        println!(
            "Turso write-through, {} documents (avg {} B as JSON), {rtt:?} injected round trip",
            images.len(),
            bytes / images.len().max(1)
        );
        println!("| mode                       | documents | pipelines | seconds | docs/s   |");
        println!("|----------------------------|-----------|-----------|---------|----------|");
        let single = images.len().min(100);
        let rows = [
            ("one pipeline per document", &images[..single], 1),
            ("batched, 100 per pipeline", &images[..], 100),
            ("batched, 1000 per pipeline", &images[..], 1_000),
        ];
        for (label, images, per_pipeline) in rows {
            let measured = write(&client, images, per_pipeline).await;
            println!(
                "| {label:<26} | {:>9} | {:>9} | {:>7.2} | {:>8.0} |",
                measured.documents,
                measured.pipelines,
                measured.elapsed.as_secs_f64(),
                measured.documents as f64 / measured.elapsed.as_secs_f64()
            );
        }
        println!();
        println!(
            "The upstream drainer sends up to {} rows per pipeline.",
            upstream::UpstreamConfig::default().max_rows
        );
    });
}
