//! Replication with Turso through the in-process Hrana server: write-through that never slows
//! ingest to round-trip speed, an outage with nothing lost or duplicated, and sync down of rows
//! another writer put in Turso.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pubsearch_native_worker::run::{self, RunOptions, Source, store_path};
use pubsearch_native_worker::store::replica::Table;
use pubsearch_native_worker::turso::upstream::{self, UpstreamStats};
use pubsearch_native_worker::turso::{Replication, TursoClient, TursoConfig};
use rusqlite::Connection;
use support::firehose::{Faults, JetstreamServer};
use support::hrana_server::{HranaServer, connect};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "replication-token";

fn replication(server: &HranaServer) -> Replication {
    let mut replication =
        Replication::new(TursoConfig::new(&server.url(), Some(TOKEN.into())).unwrap());
    replication.upstream.idle_poll = Duration::from_millis(50);
    replication.upstream.max_backoff = Duration::from_millis(400);
    replication.sync.every = Duration::from_secs(3600);
    replication
}

/// `(uri, rev, deleted, title)` of every document, in uri order.
fn documents(conn: &Connection) -> Vec<(String, String, i64, String)> {
    conn.prepare("SELECT uri, rev, deleted, title FROM documents ORDER BY uri")
        .unwrap()
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn remote_documents(path: &Path) -> Vec<(String, String, i64, String)> {
    let conn = connect(path);
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'documents'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    if exists == 0 {
        return Vec::new();
    }
    documents(&conn)
}

fn queued(store: &Path) -> i64 {
    support::read_store(store)
        .query_row("SELECT count(*) FROM upstream_queue", [], |row| row.get(0))
        .unwrap()
}

struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<pubsearch_native_worker::ingest::StatsSnapshot>>,
}

impl Worker {
    fn start(
        data: &Path,
        source: Source,
        replication: Replication,
        admin: std::net::SocketAddr,
    ) -> Worker {
        let mut options = RunOptions::new(data, source);
        options.turso = Some(replication);
        options.admin_addr = Some(admin);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run::run(options, stop.clone()));
        Worker { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A Hrana server over `turso.db` and a worker ingesting a firehose of `events` with
/// replication; `prepare` runs before the worker starts.
struct Setup {
    _dir: tempfile::TempDir,
    _firehose: JetstreamServer,
    remote: std::path::PathBuf,
    server: HranaServer,
    store: std::path::PathBuf,
    stats: std::sync::Arc<UpstreamStats>,
    admin: std::net::SocketAddr,
    worker: Worker,
}

impl Setup {
    async fn start(
        events: usize,
        prepare: impl FnOnce(&HranaServer, &Path, &mut Replication),
    ) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("turso.db");
        let server = HranaServer::start(&remote, Some(TOKEN)).await;
        let mut replication = replication(&server);
        prepare(&server, &remote, &mut replication);
        let firehose =
            JetstreamServer::start(support::jetstream_events(events), Faults::default()).await;
        let data = dir.path().join("data");
        let stats = std::sync::Arc::clone(&replication.stats);
        let source = Source::Jetstream(firehose.url().parse().unwrap());
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let worker = Worker::start(&data, source, replication, admin);
        Setup {
            admin,
            store: store_path(&data),
            _dir: dir,
            _firehose: firehose,
            remote,
            server,
            stats,
            worker,
        }
    }

    /// Waits until the worker has committed all `events` locally.
    async fn ingested(&self, events: usize) {
        assert!(
            support::wait_for(Duration::from_secs(60), || support::cursor(&self.store)
                == Some(support::last_time_us(events)))
            .await,
            "local ingest did not finish"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_under_latency_does_not_hold_ingest_to_round_trip_speed() {
    let latency = Duration::from_millis(500);
    let started = Instant::now();
    let setup = Setup::start(2_000, |server, _, _| server.set_latency(latency)).await;
    let (remote, store, stats) = (&setup.remote, &setup.store, &setup.stats);
    setup.ingested(2_000).await;
    let local_done = started.elapsed();
    let local = documents(&support::read_store(store));
    // One document per round trip would take local.len() × 500 ms ≈ 15 minutes.
    assert!(
        local_done < Duration::from_secs(20),
        "ingest waited on Turso: {local_done:?} for {} documents",
        local.len()
    );

    assert!(
        support::wait_for(Duration::from_secs(60), || remote_documents(remote)
            == local)
        .await,
        "Turso never caught up"
    );
    let pipelines = stats.pipelines.load(Ordering::Relaxed);
    let rows = stats.rows.load(Ordering::Relaxed);
    eprintln!(
        "local ingest {local_done:?}; {rows} rows reached Turso in {pipelines} pipelines at {latency:?} RTT"
    );
    assert!(
        pipelines * 50 <= rows,
        "rows were not batched: {rows} rows in {pipelines} pipelines"
    );
    assert!(
        support::wait_for(Duration::from_secs(10), || queued(store) == 0).await,
        "drained batches are removed from the queue"
    );
    let (status, body) = support::http_get(setup.admin, "/stats").await;
    assert_eq!(status, 200);
    let reported: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        reported["turso_write_through"]["rows"],
        stats.rows.load(Ordering::Relaxed),
        "{body}"
    );
    setup.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turso_outage_during_ingest_loses_and_duplicates_nothing() {
    let setup = Setup::start(1_500, |server, _, _| server.set_down(true)).await;
    let (remote, store, stats, server) = (&setup.remote, &setup.store, &setup.stats, &setup.server);
    // Ingest completes and the cursor advances while Turso is down.
    setup.ingested(1_500).await;
    assert!(queued(store) > 0, "batches wait in the durable queue");
    assert!(
        support::wait_for(Duration::from_secs(10), || stats
            .failures
            .load(Ordering::Relaxed)
            >= 2)
        .await
    );
    assert!(remote_documents(remote).is_empty());

    // Turso comes back, fails a few more requests, then stays up.
    server.set_down(false);
    server.fail_next(3);
    let local = documents(&support::read_store(store));
    assert!(
        support::wait_for(Duration::from_secs(60), || remote_documents(remote)
            == local)
        .await,
        "Turso never caught up after the outage"
    );
    assert!(support::wait_for(Duration::from_secs(10), || queued(store) == 0).await);
    let distinct: i64 = connect(remote)
        .query_row(
            "SELECT count(DISTINCT uri) - count(*) FROM documents",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(distinct, 0, "no duplicate rows");
    setup.worker.stop().await;
}

fn insert_foreign(conn: &Connection, index: usize, indexed_at: i64) {
    conn.execute(
        "INSERT INTO documents (uri, did, rkey, collection, rev, deleted, title, content, description,
                                tags, created_at, updated_at, publication_uri, site_url, path,
                                cover_image, platform, searchable, content_hash, indexed_at)
         VALUES (?1, 'did:plc:elsewhere', ?2, 'com.whtwnd.blog.entry', '3zz0000000001', 0, ?3,
                 'written by another worker about marmalade', NULL, '[]', '2025-06-01T00:00:00Z',
                 NULL, NULL, NULL, NULL, NULL, 'whitewind', 1, ?4, ?5)",
        rusqlite::params![
            format!("at://did:plc:elsewhere/com.whtwnd.blog.entry/{index:05}"),
            format!("{index:05}"),
            format!("Foreign post {index}"),
            format!("hash-{index}"),
            indexed_at,
        ],
    )
    .unwrap();
}

/// Documents from the other writer in the local store (0 until the store exists).
fn foreign_count(store: &Path) -> i64 {
    if !store.exists() {
        return 0;
    }
    support::read_store(store)
        .query_row(
            "SELECT count(*) FROM documents WHERE did = 'did:plc:elsewhere'",
            [],
            |row| row.get(0),
        )
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_another_writer_puts_in_turso_reach_the_local_store_page_by_page() {
    let setup = Setup::start(200, |_, remote, replication| {
        let conn = connect(remote);
        for table in Table::ALL {
            conn.execute_batch(&table.remote_ddl()).unwrap();
        }
        for index in 0..230 {
            insert_foreign(&conn, index, 1_000 + index as i64);
        }
        replication.sync.every = Duration::from_millis(200);
        replication.sync.page = 50;
    })
    .await;
    let (remote, store) = (&setup.remote, &setup.store);

    // The first sync is a full copy, five pages of 50.
    assert!(
        support::wait_for(Duration::from_secs(30), || foreign_count(store) == 230).await,
        "the full copy did not arrive: {}",
        foreign_count(store)
    );
    let watermark = || {
        support::read_store(store)
            .query_row(
                "SELECT position FROM cursors WHERE source = 'turso:documents'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_or(0)
    };
    // The watermark commits with or after the rows it covers.
    assert!(
        support::wait_for(Duration::from_secs(10), || watermark() >= 1_229).await,
        "the watermark never covered the copy"
    );

    // A later write by the other worker arrives incrementally, stamped by Turso's clock.
    connect(remote)
        .execute_batch(
            "UPDATE documents SET rev = '3zz0000000002', title = 'Foreign post, edited',
                    indexed_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER)
             WHERE rkey = '00007'",
        )
        .unwrap();
    insert_foreign(&connect(remote), 999, i64::MAX / 2);
    assert!(
        support::wait_for(Duration::from_secs(30), || foreign_count(store) == 231).await,
        "the incremental sync did not arrive"
    );
    let local = support::read_store(store);
    let edited: String = local
        .query_row(
            "SELECT title FROM documents WHERE uri LIKE '%/00007'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(edited, "Foreign post, edited");
    // Synced rows are live and searchable locally (and so reach the next snapshot) …
    let matches: i64 = local
        .query_row(
            "SELECT count(*) FROM documents
             WHERE deleted = 0 AND searchable = 1 AND content LIKE '%marmalade%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(matches, 231);
    // … and are never queued back up to Turso.
    let echoed: i64 = local
        .query_row(
            "SELECT count(*) FROM upstream_queue WHERE rows LIKE '%did:plc:elsewhere%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(echoed, 0);
    // Our own firehose documents went up meanwhile, and the stale echo of them changed nothing.
    assert!(
        support::wait_for(Duration::from_secs(30), || remote_documents(remote).len()
            as i64
            == documents(&local).len() as i64)
        .await
    );
    setup.worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turso_keeps_the_newest_account_copy_whatever_the_push_order() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("turso.db");
    let server = HranaServer::start(&remote, Some(TOKEN)).await;
    // A database an earlier build created: accounts without a version column.
    connect(&remote)
        .execute_batch(
            "CREATE TABLE accounts (did TEXT PRIMARY KEY, handle, active, status, updated_at INTEGER NOT NULL);
             INSERT INTO accounts VALUES ('did:plc:old', 'old.test', 1, NULL, 5);",
        )
        .unwrap();
    let client = TursoClient::new(replication(&server).config).unwrap();
    upstream::ensure_schema(&client).await.unwrap();
    upstream::ensure_schema(&client).await.unwrap();

    // Another worker's takedown lands first; an older active copy is drained late.
    let did = "did:plc:a";
    upstream::send(&client, &[support::account_image(did, false, 200)])
        .await
        .unwrap();
    upstream::send(&client, &[support::account_image(did, true, 100)])
        .await
        .unwrap();
    let account = |did: &str| -> (i64, i64) {
        connect(&remote)
            .query_row(
                "SELECT active, version FROM accounts WHERE did = ?1",
                [did],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(account(did), (0, 200));
    assert_eq!(account("did:plc:old"), (1, 0), "old rows stay readable");
    // A deactivation queued before the upgrade (version 0, like the row) still lands, as the
    // last applied copy did before versions.
    upstream::send(&client, &[support::account_image("did:plc:old", false, 0)])
        .await
        .unwrap();
    assert_eq!(account("did:plc:old"), (0, 0));
    upstream::send(&client, &[support::account_image(did, true, 300)])
        .await
        .unwrap();
    assert_eq!(account(did), (1, 300));
}
