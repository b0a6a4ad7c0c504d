//! Backfill against a loopback PDS and PLC directory stand-in: paging, DID resolution,
//! retries, resumption after an outage, and revision ordering against the firehose.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pubsearch_native_worker::backfill::{self, BackfillConfig};
use pubsearch_native_worker::firehose::Backoff;
use pubsearch_native_worker::store::Store;
use serde_json::{Value, json};

const REPO_REV: &str = "3lbackfill000";

/// One listRecords request: (did, collection, cursor).
type ListRequest = (String, String, Option<String>);

/// A PDS serving listRecords pages of 100 and a PLC directory pointing every DID at it.
#[derive(Clone, Default)]
struct Pds {
    records: Arc<HashMap<(String, String), Vec<Value>>>,
    /// Every listRecords request: (did, collection, cursor).
    requests: Arc<Mutex<Vec<ListRequest>>>,
    /// Answer 503 to this many requests before serving (retry path).
    transient_failures: Arc<AtomicUsize>,
    /// After this many served listRecords pages, answer 500 to everything (an outage).
    outage_after: Option<usize>,
    served: Arc<AtomicUsize>,
    base: Arc<Mutex<String>>,
    /// Answer the first listRecords with 429 and `Retry-After: 1`, and 429 again to any
    /// request before that second is up.
    rate_limit: bool,
    rate_limited_until: Arc<Mutex<Option<std::time::Instant>>>,
}

fn entries(did: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({"uri": format!("at://{did}/com.whtwnd.blog.entry/3k{i:08}"), "cid": "bafy",
                   "value": {"$type": "com.whtwnd.blog.entry", "title": format!("Backfilled {i}"),
                             "content": format!("old words number {i}"), "visibility": "public"}})
        })
        .collect()
}

fn publication(did: &str) -> Vec<Value> {
    vec![
        json!({"uri": format!("at://{did}/pub.leaflet.publication/3kpub"), "cid": "bafy",
                "value": {"name": "Old blog", "base_path": "old.leaflet.pub"}}),
    ]
}

async fn did_document(State(pds): State<Pds>, Path(did): Path<String>) -> Json<Value> {
    let base = pds.base.lock().unwrap().clone();
    Json(
        json!({"id": did, "alsoKnownAs": [format!("at://{}.example.com", &did["did:plc:".len()..])],
               "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": base}]}),
    )
}

async fn latest_commit() -> Json<Value> {
    Json(json!({"cid": "bafyroot", "rev": REPO_REV}))
}

async fn list_records(
    State(pds): State<Pds>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if pds.rate_limit {
        let mut until = pds.rate_limited_until.lock().unwrap();
        let now = std::time::Instant::now();
        match *until {
            None => {
                *until = Some(now + Duration::from_secs(1));
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "slow down",
                )
                    .into_response();
            }
            Some(at) if now < at => return StatusCode::TOO_MANY_REQUESTS.into_response(),
            Some(_) => {}
        }
    }
    if pds.transient_failures.load(Ordering::SeqCst) > 0 {
        pds.transient_failures.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    if pds
        .outage_after
        .is_some_and(|limit| pds.served.load(Ordering::SeqCst) >= limit)
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let (did, collection) = (query["repo"].clone(), query["collection"].clone());
    let cursor = query.get("cursor").cloned();
    pds.requests
        .lock()
        .unwrap()
        .push((did.clone(), collection.clone(), cursor.clone()));
    pds.served.fetch_add(1, Ordering::SeqCst);
    let all = pds
        .records
        .get(&(did, collection))
        .cloned()
        .unwrap_or_default();
    let start: usize = cursor.as_deref().map(|c| c.parse().unwrap()).unwrap_or(0);
    let limit: usize = query["limit"].parse().unwrap();
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let next = (start + limit < all.len()).then(|| (start + limit).to_string());
    Json(json!({"records": page, "cursor": next})).into_response()
}

async fn start(pds: Pds) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *pds.base.lock().unwrap() = base.clone();
    let app = Router::new()
        .route("/plc/{did}", get(did_document))
        .route("/xrpc/com.atproto.sync.getLatestCommit", get(latest_commit))
        .route("/xrpc/com.atproto.repo.listRecords", get(list_records))
        .with_state(pds);
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, server)
}

fn config(base: &str) -> BackfillConfig {
    BackfillConfig {
        plc_url: format!("{base}/plc/").parse().unwrap(),
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
        ..BackfillConfig::default()
    }
}

fn pds_with(repos: &[(&str, usize)]) -> Pds {
    let mut records = HashMap::new();
    for (did, count) in repos {
        records.insert(
            (did.to_string(), "com.whtwnd.blog.entry".to_string()),
            entries(did, *count),
        );
        records.insert(
            (did.to_string(), "pub.leaflet.publication".to_string()),
            publication(did),
        );
    }
    Pds {
        records: Arc::new(records),
        ..Pds::default()
    }
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .reader()
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_pages_and_retries() {
    let pds = pds_with(&[("did:plc:alice", 250), ("did:plc:bob", 7)]);
    pds.transient_failures.store(2, Ordering::SeqCst);
    let (base, _server) = start(pds.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let dids = vec![
        "did:plc:alice".to_owned(),
        "did:plc:bob".to_owned(),
        "did:key:zunsupported".to_owned(),
    ];
    let report = backfill::backfill(&store, &dids, &config(&base), None)
        .await
        .unwrap();

    assert_eq!(report.records, 250 + 7 + 2);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM documents WHERE did = 'did:plc:alice'"
        ),
        250
    );
    assert_eq!(count(&store, "SELECT count(*) FROM publications"), 2);
    assert_eq!(
        count(&store, "SELECT count(DISTINCT rev) FROM documents"),
        1,
        "stamped with the repo rev"
    );
    assert_eq!(report.failed_repos.len(), 1, "{:?}", report.failed_repos);
    assert!(report.failed_repos[0].1.contains("did:plc and did:web"));
    let alice_pages = pds
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == "did:plc:alice" && r.1 == "com.whtwnd.blog.entry")
        .count();
    assert_eq!(alice_pages, 3, "250 records in pages of 100");
    // A DID document's handle is only a claim (anyone may write any): it names no one.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM accounts WHERE handle IS NOT NULL"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_listed_records_are_counted_and_skipped_not_the_page() {
    let did = "did:plc:dave";
    let mut listed = entries(did, 5);
    listed.insert(
        1,
        json!({"uri": format!("at://{did}/com.whtwnd.blog.entry/3kbad"), "cid": "x"}),
    );
    listed.insert(3, json!({"uri": 7, "value": {}}));
    listed.insert(
        4,
        json!({"uri": format!("at://{did}/com.whtwnd.blog.entry/"), "value": {}}),
    );
    listed.push(json!("not even an object"));
    let mut records = HashMap::new();
    records.insert((did.to_owned(), "com.whtwnd.blog.entry".to_owned()), listed);
    let pds = Pds {
        records: Arc::new(records),
        ..Pds::default()
    };
    let (base, _server) = start(pds).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let report = backfill::backfill(&store, &[did.to_owned()], &config(&base), None)
        .await
        .unwrap();
    assert_eq!(report.malformed_records, 4);
    assert!(report.failed_repos.is_empty(), "{:?}", report.failed_repos);
    assert_eq!(count(&store, "SELECT count(*) FROM documents"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_pds_is_retried_after_its_retry_after() {
    let pds = Pds {
        rate_limit: true,
        ..pds_with(&[("did:plc:erin", 3)])
    };
    let (base, _server) = start(pds).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    // Two attempts 10–50 ms apart would both land inside the limited second.
    let config = BackfillConfig {
        max_attempts: 2,
        ..config(&base)
    };
    let report = backfill::backfill(&store, &["did:plc:erin".to_owned()], &config, None)
        .await
        .unwrap();
    assert!(report.failed_repos.is_empty(), "{:?}", report.failed_repos);
    assert_eq!(count(&store, "SELECT count(*) FROM documents"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_without_refetching() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let dids = vec!["did:plc:carol".to_owned()];

    // The PDS goes down after five pages: one for each of the four collections before whitewind
    // (publications, then empty document collections) and the first page of entries.
    let mut failing = pds_with(&[("did:plc:carol", 450)]);
    failing.outage_after = Some(5);
    let (base, server) = start(failing.clone()).await;
    let report = backfill::backfill(&store, &dids, &config(&base), None)
        .await
        .unwrap();
    server.abort();
    assert_eq!(report.failed_repos.len(), 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM documents"),
        100,
        "the first page is durable"
    );

    let healthy = pds_with(&[("did:plc:carol", 450)]);
    let (base, _server) = start(healthy.clone()).await;
    let report = backfill::backfill(&store, &dids, &config(&base), None)
        .await
        .unwrap();
    assert!(report.failed_repos.is_empty(), "{:?}", report.failed_repos);
    assert_eq!(count(&store, "SELECT count(*) FROM documents"), 450);
    assert_eq!(
        report.already_done, 4,
        "collections finished before the outage are skipped"
    );
    let entry_cursors: Vec<Option<String>> = healthy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.1 == "com.whtwnd.blog.entry")
        .map(|r| r.2.clone())
        .collect();
    assert_eq!(
        entry_cursors.first(),
        Some(&Some("100".to_owned())),
        "resumed after the durable page: {entry_cursors:?}"
    );
    assert_eq!(entry_cursors.len(), 4, "pages at 100, 200, 300, 400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_firehose_revisions_beat_backfilled_ones() {
    use pubsearch_native_worker::extract::{self, Extracted};
    use pubsearch_native_worker::store::{Batch, Change};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let body = json!({"title": "Edited live", "content": "new words", "visibility": "public"});
    let Extracted::Document(document) =
        extract::extract("did:plc:dan", "com.whtwnd.blog.entry", "3k00000001", &body).unwrap()
    else {
        panic!()
    };
    let newer = format!("{REPO_REV}z");
    store
        .writer()
        .unwrap()
        .apply(&Batch {
            changes: vec![Change::Document {
                document,
                rev: newer,
            }],
            marks: Vec::new(),
        })
        .unwrap();

    let (base, _server) = start(pds_with(&[("did:plc:dan", 3)])).await;
    backfill::backfill(&store, &["did:plc:dan".to_owned()], &config(&base), None)
        .await
        .unwrap();
    let title: String = store
        .reader()
        .unwrap()
        .query_row(
            "SELECT title FROM documents WHERE rkey = '3k00000001'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(title, "Edited live");
    assert_eq!(count(&store, "SELECT count(*) FROM documents"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_without_a_ban_list_keeps_and_honours_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    store
        .writer()
        .unwrap()
        .replace_banned_dids(&["did:plc:spam".to_owned()])
        .unwrap();
    let pds = pds_with(&[("did:plc:alice", 3), ("did:plc:spam", 4)]);
    let (base, _server) = start(pds.clone()).await;
    let dids = ["did:plc:alice".to_owned(), "did:plc:spam".to_owned()];
    let report = backfill::backfill(&store, &dids, &config(&base), None)
        .await
        .unwrap();

    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM banned_dids WHERE did = 'did:plc:spam'"
        ),
        1,
        "the stored ban list survives"
    );
    assert_eq!(count(&store, "SELECT count(*) FROM documents"), 3);
    assert_eq!(count(&store, "SELECT count(*) FROM publications"), 1);
    assert_eq!(report.banned_repos, 1);
    let fetched_spam = pds
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.0 == "did:plc:spam");
    assert!(!fetched_spam, "a banned repo is not even fetched");
}

#[test]
fn the_command_fails_when_a_repo_was_not_backfilled_and_refuses_a_bad_pds() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
            .args(["backfill", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = run(&["--did", "did:key:zunsupported"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("not backfilled: did:key:zunsupported"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 1 repos"), "{stderr}");

    let output = run(&["--did", "did:plc:a", "--pds", "localhost:3000"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not an http(s) address"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_on_a_turso_backed_worker_reaches_turso_through_the_upstream_queue() {
    use pubsearch_native_worker::run::{self, RunOptions, Source};
    use pubsearch_native_worker::turso::{Replication, TursoConfig};
    use support::hrana_server::{HranaServer, connect};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(run::store_path(&data)).unwrap();
    let (base, _server) = start(pds_with(&[("did:plc:ann", 30), ("did:plc:bob", 12)])).await;
    let config = BackfillConfig {
        write_through: true,
        ..config(&base)
    };
    let report = backfill::backfill(
        &store,
        &["did:plc:ann".to_owned(), "did:plc:bob".to_owned()],
        &config,
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.records, 44);
    let local = count(&store, "SELECT count(*) FROM documents");
    assert_eq!(local, 42);
    assert!(count(&store, "SELECT count(*) FROM upstream_queue") > 0);

    // The worker's write-through sends the queue like live ingest's (a replay of nothing:
    // the run ends after one last flush).
    let remote = dir.path().join("turso.db");
    let turso = HranaServer::start(&remote, None).await;
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let mut options = RunOptions::new(&data, Source::Replay(empty));
    options.turso = Some(Replication::new(
        TursoConfig::new(&turso.url(), None).unwrap(),
    ));
    run::run(options, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let sent: i64 = connect(&remote)
        .query_row("SELECT count(*) FROM documents", [], |row| row.get(0))
        .unwrap();
    assert_eq!(sent, local, "every backfilled document reached Turso");
    assert_eq!(count(&store, "SELECT count(*) FROM upstream_queue"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_response_limit_fails_its_repo_and_the_rest_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut pds = pds_with(&[("did:plc:small", 5)]);
    let long = "a very long post ".repeat(200);
    let huge: Vec<Value> = (0..60)
        .map(|i| {
            json!({"uri": format!("at://did:plc:huge/com.whtwnd.blog.entry/3k{i:08}"), "cid": "bafy",
                   "value": {"$type": "com.whtwnd.blog.entry", "title": format!("Huge {i}"),
                             "content": long, "visibility": "public"}})
        })
        .collect();
    let mut records = (*pds.records).clone();
    records.insert(
        ("did:plc:huge".into(), "com.whtwnd.blog.entry".into()),
        huge,
    );
    pds.records = Arc::new(records);
    let (base, _server) = start(pds).await;
    let config = BackfillConfig {
        max_response_bytes: 64 * 1024,
        ..config(&base)
    };
    let report = backfill::backfill(
        &store,
        &["did:plc:huge".to_owned(), "did:plc:small".to_owned()],
        &config,
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.failed_repos.len(), 1, "{:?}", report.failed_repos);
    let (did, reason) = &report.failed_repos[0];
    assert_eq!(did, "did:plc:huge");
    assert!(reason.contains("over the 65536 byte limit"), "{reason}");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM documents WHERE did = 'did:plc:small'"
        ),
        5
    );
}
