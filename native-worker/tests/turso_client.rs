//! The Turso client against the in-process Hrana server, and the server checked against the
//! official `libsql` client so the stand-in stays faithful.

mod support;

use std::time::Duration;

use pubsearch_native_worker::turso::hrana::{Batch, Stmt, StreamRequest, StreamResult, Value};
use pubsearch_native_worker::turso::{Retry, TursoClient, TursoConfig, TursoError};
use support::hrana_server::{HranaServer, connect};

const TOKEN: &str = "secret-token";

async fn server() -> (tempfile::TempDir, HranaServer, TursoClient) {
    let dir = tempfile::tempdir().unwrap();
    let server = HranaServer::start(&dir.path().join("turso.db"), Some(TOKEN)).await;
    let client = client(&server, Some(TOKEN));
    (dir, server, client)
}

fn client(server: &HranaServer, token: Option<&str>) -> TursoClient {
    let mut config = TursoConfig::new(&server.url(), token.map(str::to_string)).unwrap();
    config.backoff = Duration::from_millis(10);
    TursoClient::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_type_round_trips_with_positional_and_named_arguments() {
    let (_dir, _server, client) = server().await;
    client
        .execute(
            Stmt::new(
                "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n TEXT)",
                [],
            ),
            Retry::Unsent,
        )
        .await
        .unwrap();
    let values = vec![
        Value::from(i64::MIN),
        Value::from(-0.25),
        Value::from("snow ☃ and \"quotes\""),
        Value::from(vec![0u8, 159, 146, 150, 255]),
        Value::Null,
    ];
    let inserted = client
        .execute(
            Stmt::new("INSERT INTO t VALUES (?, ?, ?, ?, ?)", values.clone()),
            Retry::Unsent,
        )
        .await
        .unwrap();
    assert_eq!(inserted.affected_row_count, 1);
    assert_eq!(inserted.last_insert_rowid, Some(1));
    let named = Stmt::new("INSERT INTO t (i, s) VALUES (:i, @s)", [])
        .named("i", Value::from(i64::MAX))
        .named("@s", Value::from("named"));
    client.execute(named, Retry::Unsent).await.unwrap();

    let rows = client
        .execute(
            Stmt::new("SELECT i, f, s, b, n FROM t ORDER BY rowid", []),
            Retry::Idempotent,
        )
        .await
        .unwrap();
    assert_eq!(
        rows.cols
            .iter()
            .map(|col| col.name.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["i", "f", "s", "b", "n"]
    );
    assert_eq!(rows.rows[0], values);
    assert_eq!(rows.rows[1][0], Value::from(i64::MAX));
    assert_eq!(rows.rows[1][2], Value::from("named"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_does_not_stop_the_rest_of_the_pipeline() {
    let (_dir, _server, client) = server().await;
    let results = client
        .run(
            vec![
                StreamRequest::Execute {
                    stmt: Stmt::new("CREATE TABLE t (x INTEGER PRIMARY KEY)", []),
                },
                StreamRequest::Execute {
                    stmt: Stmt::new("INSERT INTO nowhere VALUES (1)", []),
                },
                StreamRequest::Execute {
                    stmt: Stmt::new("INSERT INTO t VALUES (1)", []),
                },
            ],
            Retry::Unsent,
        )
        .await
        .unwrap();
    assert!(matches!(results[0], StreamResult::Ok { .. }));
    match &results[1] {
        StreamResult::Error { error } => {
            assert!(
                error.message.contains("no such table: nowhere"),
                "{error:?}"
            );
            assert_eq!(error.code.as_deref(), Some("SQLITE_ERROR"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(results[2], StreamResult::Ok { .. }));
    let error = client
        .execute(Stmt::new("INSERT INTO t VALUES (1)", []), Retry::Unsent)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TursoError::Sql { code: Some(code), message } if code == "SQLITE_CONSTRAINT" && message.contains("UNIQUE")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_batch_is_all_or_nothing() {
    let (dir, _server, client) = server().await;
    client
        .execute(
            Stmt::new("CREATE TABLE t (x INTEGER PRIMARY KEY)", []),
            Retry::Unsent,
        )
        .await
        .unwrap();
    let failing = Batch::transaction([
        Stmt::new("INSERT INTO t VALUES (1)", []),
        Stmt::new("INSERT INTO t VALUES (1)", []),
        Stmt::new("INSERT INTO t VALUES (2)", []),
    ]);
    let result = client.batch(failing, Retry::Unsent).await.unwrap();
    assert!(result.step_errors[2].is_some(), "the duplicate fails");
    assert!(
        result.step_results[3].is_none() && result.step_errors[3].is_none(),
        "later steps skipped"
    );
    assert!(result.step_results[4].is_none(), "no commit");
    assert!(result.step_results[5].is_some(), "rolled back");
    let count: i64 = connect(&dir.path().join("turso.db"))
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 0);

    let passing = Batch::transaction([
        Stmt::new("INSERT INTO t VALUES (1)", []),
        Stmt::new("INSERT INTO t VALUES (2)", []),
    ]);
    let result = client.batch(passing, Retry::Idempotent).await.unwrap();
    assert!(result.step_results[3].is_some(), "committed");
    assert!(result.step_results[4].is_none(), "no rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_transactions_across_round_trips_until_their_baton_expires() {
    let (dir, server, client) = server().await;
    client
        .execute(Stmt::new("CREATE TABLE t (x INTEGER)", []), Retry::Unsent)
        .await
        .unwrap();
    let mut stream = client.stream();
    stream.execute(Stmt::new("BEGIN", [])).await.unwrap();
    stream
        .execute(Stmt::new("INSERT INTO t VALUES (1)", []))
        .await
        .unwrap();
    assert!(!stream.is_autocommit().await.unwrap());
    stream.execute(Stmt::new("COMMIT", [])).await.unwrap();
    assert!(stream.is_autocommit().await.unwrap());
    stream.close().await.unwrap();
    assert_eq!(server.open_streams(), 0);

    server.set_stream_timeout(Duration::from_millis(100));
    let mut stream = client.stream();
    stream.execute(Stmt::new("BEGIN", [])).await.unwrap();
    stream
        .execute(Stmt::new("INSERT INTO t VALUES (2)", []))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let error = stream.execute(Stmt::new("COMMIT", [])).await.unwrap_err();
    assert!(
        matches!(&error, TursoError::Http { status: 400, code: Some(code), .. } if code == "STREAM_EXPIRED"),
        "{error}"
    );
    assert!(
        stream.execute(Stmt::new("SELECT 1", [])).await.is_err(),
        "the stream is dead"
    );
    let values: Vec<i64> = connect(&dir.path().join("turso.db"))
        .prepare("SELECT x FROM t")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        values,
        vec![1],
        "the expired stream's transaction was rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_typed_and_never_retried() {
    let (_dir, server, _) = server().await;
    let wrong = client(&server, Some("wrong"));
    let error = wrong
        .execute(Stmt::new("SELECT 1", []), Retry::Idempotent)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TursoError::Auth { status: 401, message } if message.contains("Unauthorized")),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.pipelines(), 1);
    let anonymous = client(&server, None);
    assert!(matches!(
        anonymous
            .execute(Stmt::new("SELECT 1", []), Retry::Idempotent)
            .await,
        Err(TursoError::Auth { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_failures_are_retried_only_for_idempotent_work_and_requests_time_out() {
    let (_dir, server, client) = server().await;
    server.fail_next(2);
    let result = client
        .execute(Stmt::new("SELECT 42", []), Retry::Idempotent)
        .await
        .unwrap();
    assert_eq!(result.rows[0][0], Value::from(42));
    assert_eq!(server.pipelines(), 3, "two 503s, then success");

    server.fail_next(1);
    let error = client
        .execute(Stmt::new("SELECT 42", []), Retry::Unsent)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TursoError::Http { status: 503, message, .. } if message == "injected failure"),
        "{error}"
    );
    assert!(error.is_retryable());

    server.set_down(true);
    let started = std::time::Instant::now();
    let error = client
        .execute(Stmt::new("SELECT 1", []), Retry::Idempotent)
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded retries"
    );
    server.set_down(false);

    let mut config = TursoConfig::new(&server.url(), Some(TOKEN.into())).unwrap();
    config.timeout = Duration::from_millis(200);
    config.attempts = 1;
    let impatient = TursoClient::new(config).unwrap();
    server.set_latency(Duration::from_secs(2));
    let error = impatient
        .execute(Stmt::new("SELECT 1", []), Retry::Idempotent)
        .await
        .unwrap_err();
    assert!(matches!(error, TursoError::Timeout(_)), "{error}");
}

#[test]
fn urls_are_checked_and_libsql_means_https() {
    let config = TursoConfig::new("libsql://db-org.turso.io", None).unwrap();
    assert_eq!(config.url.as_str(), "https://db-org.turso.io/");
    assert!(matches!(
        TursoConfig::new("ftp://example.com", None),
        Err(TursoError::Url { .. })
    ));
    assert!(TursoConfig::new("not a url", None).is_err());
}

/// The official client drives the stand-in: statements with parameters, queries (which libsql
/// reads through `/v3/cursor`), transactions and batches all behave as on Turso.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_libsql_client_works_against_the_stand_in() {
    let (dir, server, _) = server().await;
    let db = libsql::Builder::new_remote(server.url(), TOKEN.to_string())
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    conn.execute(
        "CREATE TABLE docs (uri TEXT PRIMARY KEY, rev TEXT, words INTEGER, score REAL, raw BLOB)",
        (),
    )
    .await
    .unwrap();
    let changed = conn
        .execute(
            "INSERT INTO docs VALUES (?1, ?2, ?3, ?4, ?5)",
            libsql::params!["at://a/1", "3l1", 120, 0.5, vec![1u8, 2, 3]],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    conn.execute(
        "INSERT INTO docs (uri, rev, words) VALUES (:uri, :rev, :words)",
        libsql::named_params! { ":uri": "at://a/2", ":rev": "3l2", ":words": 7 },
    )
    .await
    .unwrap();

    let mut rows = conn
        .query("SELECT uri, words, score, raw FROM docs ORDER BY uri", ())
        .await
        .unwrap();
    let first = rows.next().await.unwrap().unwrap();
    assert_eq!(first.get::<String>(0).unwrap(), "at://a/1");
    assert_eq!(first.get::<i64>(1).unwrap(), 120);
    assert_eq!(first.get::<f64>(2).unwrap(), 0.5);
    assert_eq!(first.get::<Vec<u8>>(3).unwrap(), vec![1, 2, 3]);
    let second = rows.next().await.unwrap().unwrap();
    assert_eq!(second.get::<i64>(1).unwrap(), 7);
    assert!(rows.next().await.unwrap().is_none());

    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO docs (uri, rev) VALUES ('at://a/3', 'x')", ())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO docs (uri, rev) VALUES ('at://a/4', 'x')", ())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        conn.execute("INSERT INTO docs (uri, rev) VALUES ('at://a/1', 'dup')", ())
            .await
            .is_err(),
        "constraint errors reach the official client"
    );
    conn.execute_batch(
        "INSERT INTO docs (uri, rev) VALUES ('at://a/5', 'x'); UPDATE docs SET words = 1 WHERE words IS NULL;",
    )
    .await
    .unwrap();

    let uris: Vec<String> = connect(&dir.path().join("turso.db"))
        .prepare("SELECT uri FROM docs WHERE words IS NOT NULL ORDER BY uri")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(uris, ["at://a/1", "at://a/2", "at://a/4", "at://a/5"]);

    let wrong = libsql::Builder::new_remote(server.url(), "nope".into())
        .build()
        .await
        .unwrap();
    assert!(
        wrong
            .connect()
            .unwrap()
            .execute("SELECT 1", ())
            .await
            .is_err(),
        "bad tokens are refused"
    );
}
