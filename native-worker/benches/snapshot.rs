//! Snapshot benchmark: build and verify time, and bytes per document, for 10k and 100k
//! synthetic documents, each built without and with the embedding model (when installed), side
//! by side. Prints a table; asserts nothing.
//!
//! `cargo bench -p pubsearch-native-worker --bench snapshot` (SNAPSHOT_BENCH_SIZES=10000,100000).

use std::path::Path;
use std::time::Instant;

use pubsearch_native_worker::embed;
use pubsearch_native_worker::publish::{build, verify};
use pubsearch_native_worker::run::{self, RunOptions, Source, store_path};
use pubsearch_native_worker::store::Store;
use tokio_util::sync::CancellationToken;

fn ingest(records: usize, data_dir: &Path) -> Store {
    let corpus = data_dir.join("corpus.ndjson");
    pubsearch_native_worker::corpus::write_file(&corpus, records, 11).expect("writing the corpus");
    let options = RunOptions::new(data_dir, Source::Replay(corpus));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(run::run(options, CancellationToken::new()))
        .unwrap();
    Store::open(store_path(data_dir)).unwrap()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SNAPSHOT_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let dir = std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/models/all-minilm-l6-v2")
        },
        std::path::PathBuf::from,
    );
    let model = embed::stored::load_or_distill(&dir).ok();
    if model.is_none() {
        println!(
            "(no embedding model at {}: builds without vectors only)",
            dir.display()
        );
    }
    println!();
    println!(
        "| corpus events | documents | vectors | build s | verify s | total s | snapshot MB | bytes/doc |"
    );
    println!(
        "|---------------|-----------|---------|---------|----------|---------|-------------|-----------|"
    );
    for size in sizes {
        let dir = tempfile::tempdir().unwrap();
        let store = ingest(size, dir.path());
        // Side by side: the same store built without and with the model.
        for model in [None, model.as_ref()] {
            let out = dir.path().join("snapshot.db");
            let started = Instant::now();
            let built =
                build::build_with(&store, &out, "bench", "bench", model, |_, _| {}).unwrap();
            let build_time = started.elapsed();
            let started = Instant::now();
            verify::verify_build(&store, &built, None, false).unwrap();
            let verify_time = started.elapsed();
            let manifest = &built.manifest;
            println!(
                "| {size:>13} | {:>9} | {:>7} | {:>7.2} | {:>8.2} | {:>7.2} | {:>11.1} | {:>9.0} |",
                manifest.counts.documents,
                if model.is_some() { "yes" } else { "no" },
                build_time.as_secs_f64(),
                verify_time.as_secs_f64(),
                (build_time + verify_time).as_secs_f64(),
                manifest.byte_size as f64 / 1e6,
                manifest.byte_size as f64 / manifest.counts.documents.max(1) as f64,
            );
        }
    }
}
