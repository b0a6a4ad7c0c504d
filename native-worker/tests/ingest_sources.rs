//! Ingest from each source into a real WAL store, through the failure modes each source has.

mod support;

use std::time::Duration;

use pubsearch_native_worker::ingest::{IngestConfig, StatsSnapshot};
use pubsearch_native_worker::publish::PublishOptions;
use pubsearch_native_worker::publish::objects::ObjectTarget;
use pubsearch_native_worker::run::{self, RunOptions, Source, store_path};
use support::firehose::{Faults, JetstreamServer, TapServer};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 3_000;

fn options(data_dir: &std::path::Path, source: Source) -> RunOptions {
    RunOptions {
        ingest: IngestConfig {
            max_batch: 500,
            ..IngestConfig::default()
        },
        ..support::run_options(data_dir, source)
    }
}

/// A reference store built by replaying the same events from a file, uninterrupted.
async fn reference_dump(events: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, events.join("\n")).unwrap();
    let summary = run::run(
        options(dir.path(), Source::Replay(file)),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.events as usize, events.len());
    assert_eq!(
        summary.malformed as usize,
        events.len() / 50,
        "every 50th record is malformed"
    );
    support::dump(&store_path(dir.path()))
}

/// Runs a worker on `server` into `data_dir` until its cursor reaches `last`, then stops it.
async fn ingest_jetstream_through(
    server: &JetstreamServer,
    data_dir: &std::path::Path,
    last: i64,
) -> StatsSnapshot {
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run::run(
        options(data_dir, Source::Jetstream(server.url().parse().unwrap())),
        shutdown.clone(),
    ));
    let store = store_path(data_dir);
    assert!(
        support::wait_for(Duration::from_secs(60), || support::cursor(&store)
            == Some(last))
        .await,
        "ingest did not reach the last event; cursor {:?}, resumed from {:?}",
        support::cursor(&store),
        server.cursors()
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_survives_drops_garbage_and_oversized_frames() {
    let events = support::jetstream_events(EVENTS);
    let expected = reference_dump(&events).await;
    let faults = Faults {
        drop_after: Some(700),
        garbage_every: Some(97),
        oversized_frame: true,
    };
    let server = JetstreamServer::start(events.clone(), faults).await;
    let dir = tempfile::tempdir().unwrap();
    let summary =
        ingest_jetstream_through(&server, dir.path(), support::last_time_us(EVENTS)).await;
    let store = store_path(dir.path());

    assert_eq!(
        support::dump(&store),
        expected,
        "same store as an uninterrupted replay"
    );
    let cursors = server.cursors();
    assert!(
        cursors.len() >= 4,
        "the server dropped the connection every 700 events: {cursors:?}"
    );
    assert_eq!(cursors[0], None, "a fresh store starts from live");
    for window in cursors.windows(2).skip(1) {
        let (earlier, later) = (window[0].unwrap_or(0), window[1].unwrap());
        assert!(
            later >= earlier,
            "resume cursors never go backwards: {cursors:?}"
        );
    }
    assert!(summary.reconnects >= 4);
    assert!(
        summary.undecodable_frames > 0 && summary.oversized_frames > 0,
        "{summary:?}"
    );
    assert!(
        summary.stale > 0,
        "the rewind re-sent events the store already had"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stamped_far_in_the_future_never_becomes_the_cursor() {
    let mut events = support::jetstream_events(300);
    let day_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        + 86_400_000_000;
    let mut bogus: serde_json::Value = serde_json::from_str(&events[10]).unwrap();
    bogus["time_us"] = day_ahead.into();
    bogus["commit"]["rkey"] = "3kfromthefuture".into();
    events.insert(11, bogus.to_string());
    // Drops make the worker resume from its durable cursor.
    let faults = Faults {
        drop_after: Some(150),
        ..Faults::default()
    };
    let server = JetstreamServer::start(events, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let last = support::last_time_us(300);
    ingest_jetstream_through(&server, dir.path(), last).await;
    let store = store_path(dir.path());
    assert!(
        server
            .cursors()
            .iter()
            .flatten()
            .all(|cursor| *cursor <= last)
    );
    let stored: i64 = support::read_store(&store)
        .query_row(
            "SELECT count(*) FROM documents WHERE rkey = '3kfromthefuture'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_acks_only_durable_events_and_survives_redelivery() {
    let events = support::jetstream_events(EVENTS);
    let expected = reference_dump(&events).await;
    let frames = events
        .iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let commit = &event["commit"];
            serde_json::json!({"type": "record", "record": {
                "live": true, "rev": commit["rev"], "did": event["did"], "collection": commit["collection"],
                "rkey": commit["rkey"], "action": commit["operation"], "cid": commit["cid"], "record": commit["record"],
            }})
        })
        .collect();
    let faults = Faults {
        drop_after: Some(900),
        garbage_every: Some(211),
        oversized_frame: false,
    };
    // When tap receives an ack, the acknowledged event must already be durable in the store.
    let dir = tempfile::tempdir().unwrap();
    let store = store_path(dir.path());
    let violations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let on_ack = {
        let (store, events, violations) = (
            store.clone(),
            events.clone(),
            std::sync::Arc::clone(&violations),
        );
        std::sync::Arc::new(move |id: u64| {
            let event: serde_json::Value = serde_json::from_str(&events[id as usize - 1]).unwrap();
            let commit = &event["commit"];
            if commit["record"]["title"].is_null() && commit["operation"] != "delete" {
                return; // malformed: nothing to store
            }
            let uri = format!(
                "at://{}/{}/{}",
                event["did"].as_str().unwrap(),
                commit["collection"].as_str().unwrap(),
                commit["rkey"].as_str().unwrap()
            );
            let stored: Option<String> = support::read_store(&store)
                .query_row("SELECT rev FROM documents WHERE uri = ?1", [&uri], |row| {
                    row.get(0)
                })
                .ok();
            if stored.as_deref() < commit["rev"].as_str() {
                violations.lock().unwrap().push(format!(
                    "ack {id} before {uri}@{} was durable ({stored:?})",
                    commit["rev"]
                ));
            }
        })
    };
    let server =
        TapServer::start_observed(frames, Duration::from_millis(300), faults, on_ack).await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run::run(
        options(dir.path(), Source::Tap(server.url().parse().unwrap())),
        shutdown.clone(),
    ));
    assert!(
        support::wait_for(Duration::from_secs(60), || server.all_acked()).await,
        "only {} of {EVENTS} acked",
        server.acked()
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(violations.lock().unwrap().clone(), Vec::<String>::new());
    assert_eq!(support::dump(&store), expected);
    assert!(
        server.deliveries() > EVENTS as u64,
        "drops forced redelivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_acks_an_oversized_frame_instead_of_having_it_redelivered_forever() {
    let record = |rkey: &str, content: String| {
        serde_json::json!({"type": "record", "record": {
            "live": true, "rev": "3l1", "did": "did:plc:a", "collection": "com.whtwnd.blog.entry",
            "rkey": rkey, "action": "create", "cid": "bafy", "record": {
                "$type": "com.whtwnd.blog.entry", "title": rkey, "content": content,
                "visibility": "public"}}})
    };
    let frames = vec![
        record("small", "a few words".into()),
        record("huge", "x".repeat(3 * 1024 * 1024)),
    ];
    let server = TapServer::start(frames, Duration::from_millis(300), Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run::run(
        options(dir.path(), Source::Tap(server.url().parse().unwrap())),
        shutdown.clone(),
    ));
    assert!(
        support::wait_for(Duration::from_secs(10), || server.all_acked()).await,
        "only {} of 2 acked after {} deliveries",
        server.acked(),
        server.deliveries()
    );
    shutdown.cancel();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(summary.oversized_frames, 1, "{summary:?}");
    let titles: Vec<String> = support::read_store(&store_path(dir.path()))
        .prepare("SELECT title FROM documents")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(titles, ["small"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_authors_are_never_stored() {
    let events = support::jetstream_events(500);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, events.join("\n")).unwrap();
    let banned = dir.path().join("banned.txt");
    std::fs::write(&banned, "did:plc:author3 # spam\n").unwrap();
    let mut options = options(dir.path(), Source::Replay(file));
    options.banned_dids = Some(banned);
    let summary = run::run(options, CancellationToken::new()).await.unwrap();
    assert!(summary.banned > 0);
    let conn = support::read_store(&store_path(dir.path()));
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM documents WHERE did = 'did:plc:author3'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0);
    let listed: i64 = conn
        .query_row("SELECT count(*) FROM banned_dids", [], |r| r.get(0))
        .unwrap();
    assert_eq!(listed, 1, "the list is mirrored for the snapshot builder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_reports_health_and_progress() {
    let events = support::jetstream_events(400);
    let server = JetstreamServer::start(events, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = options(dir.path(), Source::Jetstream(server.url().parse().unwrap()));
    options.admin_addr = Some(addr);
    options.publish = Some(run::ScheduledPublish {
        every: Duration::from_millis(300),
        delta_every: None,
        delta_max_bytes: 0,
        target: ObjectTarget::local(&dir.path().join("snapshots")).unwrap(),
        options: PublishOptions {
            channel: "prod".into(),
            force: false,
            keep: 2,
        },
    });
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run::run(options, shutdown.clone()));
    let store = store_path(dir.path());
    assert!(
        support::wait_for(Duration::from_secs(30), || support::cursor(&store)
            == Some(support::last_time_us(400)))
        .await
    );

    let (status, body) = support::http_get(addr, "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["source"].as_str()),
        (Some("ok"), Some("jetstream"))
    );

    let (status, body) = support::http_get(addr, "/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["ingest"]["events"], 400);
    assert_eq!(
        stats["ingest"]["durable_event_time_us"],
        support::last_time_us(400)
    );
    assert!(stats["ingest"]["batches"].as_u64().unwrap() >= 1);
    assert_eq!(
        stats["ingest"]["commit_latency"]["count"],
        stats["ingest"]["batches"]
    );
    assert!(
        stats["ingest"]["commit_latency"]["p99_us"]
            .as_u64()
            .unwrap()
            <= stats["ingest"]["commit_latency"]["max_us"]
                .as_u64()
                .unwrap()
    );
    assert!(
        stats["admin_request_latency"]["count"].as_u64().unwrap() >= 1,
        "the /health call above was timed"
    );
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(support::http_get(addr, "/nope").await.0, 404);

    // Scheduled publishing puts the ingested documents in service and /stats says which build.
    let mut in_service = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = support::http_get(addr, "/stats").await;
        in_service =
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["snapshot_in_service"]
                .clone();
        // A publish may start before ingest ends; a later one has everything.
        if in_service["documents"]
            .as_u64()
            .is_some_and(|documents| documents > 300)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        in_service["documents"].as_u64().unwrap() > 300,
        "{in_service}"
    );
    assert!(
        dir.path()
            .join("snapshots/channels/prod/latest.json")
            .exists()
    );

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_data_directory_is_refused_naming_the_first() {
    let server = JetstreamServer::start(support::jetstream_events(200), Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let jetstream = || Source::Jetstream(server.url().parse().unwrap());
    let shutdown = CancellationToken::new();
    let first = tokio::spawn(run::run(options(dir.path(), jetstream()), shutdown.clone()));
    let store = store_path(dir.path());
    assert!(
        support::wait_for(Duration::from_secs(30), || support::cursor(&store)
            .is_some())
        .await,
        "the first worker never ingested"
    );

    let refused = run::run(options(dir.path(), jetstream()), CancellationToken::new())
        .await
        .expect_err("a second worker started on the same data directory");
    let message = format!("{refused:#}");
    assert!(
        message.contains("another worker owns the data directory"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {} (", std::process::id())),
        "names the holder: {message}"
    );

    shutdown.cancel();
    first.await.unwrap().unwrap();
    // Once the first has stopped, the directory is free again.
    let shutdown = CancellationToken::new();
    let again = tokio::spawn(run::run(options(dir.path(), jetstream()), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !again.is_finished(),
        "the directory stayed locked after its worker stopped"
    );
    shutdown.cancel();
    again.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_full_disk_pauses_and_resumes_when_space_returns_losing_nothing() {
    const EVENTS: usize = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(_mounted) = support::SmallDisk::mount(&data, "700k") else {
        return;
    };
    let events = support::jetstream_events(EVENTS);
    let server = JetstreamServer::start(events.clone(), Faults::default()).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = options(&data, Source::Jetstream(server.url().parse().unwrap()));
    options.admin_addr = Some(addr);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run::run(options, shutdown.clone()));

    // The disk fills: commits are refused and retried, the worker stays up and says so. (A
    // commit may still squeeze in after a checkpoint frees WAL space, so wait for the pause to
    // hold rather than for the first refusal.)
    let get = |path: &'static str| async move {
        let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<serde_json::Value>().await.ok()?))
    };
    let mut paused = None;
    for _ in 0..300 {
        if let Some((503, health)) = get("/health").await {
            paused = Some(health);
            break;
        }
        if worker.is_finished() {
            panic!(
                "the worker stopped on a full disk: {:?}",
                worker.await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = paused.expect("the disk never filled, or the pause was not reported");
    assert_eq!(health["status"], "degraded");
    let (_, stats) = get("/stats").await.unwrap();
    assert!(
        stats["ingest"]["store_full"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert_ne!(
        support::cursor(&store_path(&data)),
        Some(support::last_time_us(EVENTS))
    );

    // Space returns: ingest goes on by itself and nothing is missing.
    _mounted.resize("64m");
    assert!(
        support::wait_for(Duration::from_secs(60), || support::cursor(&store_path(
            &data
        )) == Some(
            support::last_time_us(EVENTS)
        ))
        .await,
        "ingest did not resume"
    );
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200, "healthy again once space returned");
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    pubsearch_native_worker::store::Store::open(store_path(&data))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(
        support::dump(&store_path(&data)),
        reference_dump(&events).await
    );
}
