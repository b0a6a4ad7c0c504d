//! A worker killed with SIGKILL mid-ingest and restarted ends with exactly the store an
//! uninterrupted run produces: no lost events, no duplicates, a consistent FTS index.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pubsearch_native_worker::run::store_path;
use rand::{Rng, SeedableRng};
use support::firehose::{Faults, JetstreamServer};

const EVENTS: usize = 20_000;

fn spawn_worker(url: &str, data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args([
            "run",
            "--source",
            "jetstream",
            "--jetstream-url",
            url,
            "--admin-addr",
            "off",
            "--serve-addr",
            "off",
            "--max-batch",
            "200",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting native-worker")
}

fn assert_consistent(store: &std::path::Path) {
    let conn = support::read_store(store);
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let duplicates: i64 = conn
        .query_row(
            "SELECT count(*) - count(DISTINCT uri) FROM documents",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_ingest_then_restart_matches_an_uninterrupted_run() {
    let events = support::jetstream_events(EVENTS);

    let reference = tempfile::tempdir().unwrap();
    support::replay(reference.path(), &events).await;
    let expected = support::dump(&store_path(reference.path()));

    let server = JetstreamServer::start(events, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_path(dir.path());
    let last = support::last_time_us(EVENTS);
    let seed: u64 = rand::rng().random();
    println!("kill schedule seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut cursors_after_kills = Vec::new();
    for _ in 0..4 {
        let mut child = spawn_worker(&server.url(), dir.path());
        // Kill once the worker has made some progress this round, at a random point after it.
        let before = support::cursor(&store);
        support::wait_for(Duration::from_secs(20), || support::cursor(&store) > before).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_consistent(&store);
        cursors_after_kills.push(support::cursor(&store));
        if support::cursor(&store) == Some(last) {
            break;
        }
    }
    assert!(
        cursors_after_kills
            .iter()
            .any(|cursor| cursor.is_some_and(|c| c < last)),
        "at least one kill must land mid-ingest: {cursors_after_kills:?}"
    );

    let mut child = spawn_worker(&server.url(), dir.path());
    let finished = support::wait_for(Duration::from_secs(60), || {
        support::cursor(&store) == Some(last)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        finished,
        "the restarted worker did not catch up: {:?}",
        support::cursor(&store)
    );
    assert_consistent(&store);
    assert_eq!(support::dump(&store), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_stops_early_and_running_it_again_completes_it() {
    use pubsearch_native_worker::run::{self, Source};
    use tokio_util::sync::CancellationToken;
    let events = support::jetstream_events(EVENTS);
    let reference = tempfile::tempdir().unwrap();
    support::replay(reference.path(), &events).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, events.join("\n")).unwrap();
    let options = || support::run_options(dir.path(), Source::Replay(file.clone()));
    let interrupt = CancellationToken::new();
    let running = tokio::spawn(run::run(options(), interrupt.clone()));
    let store = store_path(dir.path());
    support::wait_for(Duration::from_secs(20), || {
        store.exists()
            && support::read_store(&store)
                .query_row("SELECT count(*) FROM documents", [], |row| {
                    row.get::<_, i64>(0)
                })
                .unwrap_or(0)
                > 0
    })
    .await;
    interrupt.cancel(); // what Ctrl-C does
    let stopped = running.await.unwrap().unwrap();
    assert!(
        stopped.events < EVENTS as u64,
        "the replay ran to its end: {stopped:?}"
    );
    assert_consistent(&store);

    run::run(options(), CancellationToken::new()).await.unwrap();
    assert_eq!(
        support::dump(&store),
        support::dump(&store_path(reference.path()))
    );
}
