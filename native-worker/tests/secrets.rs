//! No secret the worker is given (Turso token, AWS keys, admin token) appears in anything it
//! emits: its logs (at `debug`), its exported spans, `/stats`, or error bodies, while it uses
//! every one of them (replicating to Turso, publishing to an S3 endpoint that is down, serving
//! the admin endpoint to right and wrong tokens).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use support::firehose::{Faults, JetstreamServer};
use support::hrana_server::{HranaServer, connect};

const TURSO_TOKEN: &str = "turso-secret-5f1c2a9e";
const ADMIN_TOKEN: &str = "admin-secret-8d3b7c41";
const AWS_KEY_ID: &str = "AKIASECRET7Q2W3E4R5T";
const AWS_SECRET: &str = "aws-secret-0b9a8c7d6e5f4a3b";

async fn keep(State(bodies): State<Arc<Mutex<Vec<u8>>>>, body: Bytes) -> &'static str {
    bodies.lock().unwrap().extend_from_slice(&body);
    ""
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn remote_documents(path: &std::path::Path) -> i64 {
    connect(path)
        .query_row("SELECT count(*) FROM documents", [], |row| row.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_spans_stats_or_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("turso.db");
    let turso = HranaServer::start(&remote, Some(TURSO_TOKEN)).await;
    let firehose = JetstreamServer::start(support::jetstream_events(300), Faults::default()).await;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_url = format!("http://{}", otlp.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", post(keep))
        .with_state(Arc::clone(&spans));
    tokio::spawn(async move { axum::serve(otlp, app).await.unwrap() });
    let admin = format!("127.0.0.1:{}", free_port());
    let dead_s3 = format!("http://127.0.0.1:{}", free_port());

    let worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .arg("run")
        .env("PUBSEARCH_DATA_DIR", dir.path().join("data"))
        .env("JETSTREAM_URL", firehose.url())
        .env("TURSO_URL", turso.url())
        .env("TURSO_AUTH_TOKEN", TURSO_TOKEN)
        .env("PUBSEARCH_ADMIN_ADDR", &admin)
        // Serving reads the (dead) bucket's pointer every second: its failures are logged too.
        .env("PUBSEARCH_SERVE_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("PUBSEARCH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PUBSEARCH_S3_BUCKET", "pubsearch-test")
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_ENDPOINT_URL", &dead_s3)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_url)
        .env("PUBSEARCH_TRACE_FILTER", "debug")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Every secret in use: rows reach Turso, a publish tries the S3 endpoint, the admin endpoint
    // answers the right token and refuses a wrong one.
    assert!(
        support::wait_for(Duration::from_secs(60), || remote_documents(&remote) > 0).await,
        "nothing reached Turso"
    );
    let http = reqwest::Client::new();
    let stats = format!("http://{admin}/stats");
    let mut answers = String::new();
    for token in [ADMIN_TOKEN, "wrong-token"] {
        let response = http.get(&stats).bearer_auth(token).send().await.unwrap();
        answers.push_str(&format!(
            "{} {}\n",
            response.status(),
            response.text().await.unwrap()
        ));
    }
    assert!(answers.starts_with("200 "), "{answers}");
    assert!(answers.contains("401 "), "{answers}");
    // Give the scheduled publish time to fail against the dead S3 endpoint and log it.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let pid = worker.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), worker.wait_with_output())
        .await
        .expect("the worker stops on SIGTERM")
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let s3_address = dead_s3.trim_start_matches("http://");
    assert!(
        logs.contains(s3_address),
        "the publish never tried the S3 endpoint:\n{logs}"
    );
    let spans = spans.lock().unwrap().clone();
    assert!(!spans.is_empty(), "no spans were exported");

    for secret in [TURSO_TOKEN, ADMIN_TOKEN, AWS_KEY_ID, AWS_SECRET] {
        assert!(!logs.contains(secret), "{secret} is in the logs");
        assert!(!answers.contains(secret), "{secret} is in an admin answer");
        assert!(
            !spans
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "{secret} is in an exported span"
        );
    }
}
