//! A damaged store is found when the worker starts, with an error that says how to recover,
//! never served from.

mod support;

use std::io::{Seek, SeekFrom, Write};

use pubsearch_native_worker::run::{self, Source, store_path};
use pubsearch_native_worker::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Overwrites the middle of the page holding the documents table's root with garbage.
fn damage_documents(path: &std::path::Path) {
    let (root, page_size): (i64, i64) = {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        (
            conn.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'documents'",
                [],
                |row| row.get(0),
            )
            .unwrap(),
            conn.query_row("PRAGMA page_size", [], |row| row.get(0))
                .unwrap(),
        )
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(((root - 1) * page_size + 8) as u64))
        .unwrap();
    file.write_all(&vec![0xA5; (page_size / 2) as usize])
        .unwrap();
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_at_start_with_the_way_to_recover() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    support::replay(&data, &support::jetstream_events(400)).await;
    let store = Store::open(store_path(&data)).unwrap();
    store.check().expect("a healthy store passes");

    damage_documents(&store_path(&data));
    match store.check() {
        Err(StoreError::Damaged { problems, .. }) => assert!(!problems.is_empty()),
        other => panic!("the damage went unnoticed: {other:?}"),
    }

    let events = dir.path().join("more.ndjson");
    std::fs::write(&events, support::jetstream_events(10).join("\n")).unwrap();
    let refused = run::run(
        support::run_options(&data, Source::Replay(events)),
        CancellationToken::new(),
    )
    .await
    .expect_err("a worker started on a damaged store");
    let message = format!("{refused:#}");
    assert!(message.contains("is damaged"), "{message}");
    assert!(
        message.contains("Recovering a damaged store"),
        "points at the recovery steps: {message}"
    );
}
