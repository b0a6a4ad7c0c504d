//! Which workflow instance carries a publish out: a publish joins a running one only when it
//! asked for the same thing, and one handed to an engine that stops before finishing it is
//! finished by the process waiting on it.

mod support;

use std::path::Path;
use std::time::Duration;

use pubsearch_native_worker::flow::{self, Engine, EngineOptions, Registry, Status};
use pubsearch_native_worker::publish::objects::ObjectTarget;
use pubsearch_native_worker::publish::{self, PublishOptions, workflow};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::store::Store;

fn options(force: bool) -> PublishOptions {
    PublishOptions {
        channel: "prod".into(),
        force,
        keep: 5,
    }
}

/// An engine on `data`'s flow database whose builds never finish: a publish it takes stays
/// `Running` at its build step, as after a kill or a short-lived engine's exit.
async fn engine_that_never_builds(data: &Path, store: &Store) -> Engine {
    let mut registry = Registry::new();
    workflow::register(&mut registry, store.clone(), publish::work_dir(data));
    registry.activity("snapshot.build", |_, _: serde_json::Value| async move {
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    });
    let options = EngineOptions {
        inbox_poll: Duration::from_millis(50),
        // It stands for a process that was killed: its build never ends, so nothing to wait for.
        shutdown_grace: Duration::ZERO,
        ..EngineOptions::default()
    };
    Engine::start(flow::flow_path(data), registry, options)
        .await
        .unwrap()
}

/// The publish instances in `data`'s flow database that have reached their build step.
fn building(data: &Path) -> Vec<String> {
    flow::OutsideClient::new(&flow::flow_path(data))
        .list(Some(Status::Running), None, 100)
        .map(|page| page.instances)
        .unwrap_or_default()
        .into_iter()
        .filter(|info| {
            info.custom_status
                .as_deref()
                .is_some_and(|status| status.starts_with("building"))
        })
        .map(|info| info.id)
        .collect()
}

/// Leaves a publish of `request` running (interrupted at its build step) in `data`'s flow db.
async fn leave_running(data: &Path, store: &Store, request: &workflow::PublishRequest) {
    let engine = engine_that_never_builds(data, store).await;
    engine
        .client()
        .start(
            workflow::ORCHESTRATION,
            "publish:prod:left-running",
            request,
        )
        .await
        .unwrap();
    assert!(support::wait_for(Duration::from_secs(30), || !building(data).is_empty()).await);
    engine.shutdown().await;
}

async fn ingested(data: &Path) -> Store {
    std::fs::create_dir_all(data).unwrap();
    support::replay(data, &support::jetstream_events(300)).await;
    Store::open(store_path(data)).unwrap()
}

fn publish_instances(data: &Path) -> usize {
    flow::OutsideClient::new(&flow::flow_path(data))
        .list(None, None, 100)
        .unwrap()
        .instances
        .iter()
        .filter(|info| info.name == workflow::ORCHESTRATION)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_another_target_does_not_join_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ingested(&data).await;
    let local = ObjectTarget::local(&data.join("snapshots")).unwrap();
    let bucket = ObjectTarget::local(&dir.path().join("bucket")).unwrap();
    let running = workflow::PublishRequest::new(local.spec().clone(), &options(false));
    leave_running(&data, &store, &running).await;

    let manifest = publish::publish_once(&store, &data, &bucket, &options(false))
        .await
        .unwrap();
    assert_eq!(
        bucket.current("prod").await.unwrap(),
        Some(manifest.pointer()),
        "the publish went to the target it was asked for"
    );
    assert_eq!(publish_instances(&data), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_publish_does_not_join_an_unforced_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ingested(&data).await;
    let target = ObjectTarget::local(&data.join("snapshots")).unwrap();
    let running = workflow::PublishRequest::new(target.spec().clone(), &options(false));
    leave_running(&data, &store, &running).await;

    publish::publish_once(&store, &data, &target, &options(true))
        .await
        .unwrap();
    assert_eq!(
        publish_instances(&data),
        2,
        "--force started its own publish instead of joining one without it"
    );
}

/// Another short-lived engine (a second `native-worker publish`) holds the flow database, takes
/// this publish from the inbox and stops before finishing it: the waiter finishes it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_left_unfinished_by_the_engine_it_was_handed_to_is_finished_by_its_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ingested(&data).await;
    let target = ObjectTarget::local(&data.join("snapshots")).unwrap();
    let holder = engine_that_never_builds(&data, &store).await;

    let waiter = tokio::spawn({
        let (store, data, target) = (store.clone(), data.clone(), target.clone());
        async move { publish::publish_once(&store, &data, &target, &options(false)).await }
    });
    assert!(
        support::wait_for(Duration::from_secs(30), || !building(&data).is_empty()).await,
        "the holder never took the publish from its inbox"
    );
    holder.shutdown().await;

    let manifest = tokio::time::timeout(Duration::from_secs(120), waiter)
        .await
        .expect("the waiter was still waiting on an abandoned publish")
        .unwrap()
        .unwrap();
    assert_eq!(
        target.current("prod").await.unwrap(),
        Some(manifest.pointer())
    );
    assert_eq!(
        publish_instances(&data),
        1,
        "the handed-over publish was finished, not redone"
    );
}

/// Two `publish` commands asking a worker for the same publish within its inbox poll: the
/// second finds the first's start still waiting in the inbox and joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_asked_of_a_worker_within_one_inbox_poll_are_one_publish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ingested(&data).await;
    let target = ObjectTarget::local(&data.join("snapshots")).unwrap();
    let mut registry = Registry::new();
    workflow::register(&mut registry, store.clone(), publish::work_dir(&data));
    let slow_inbox = EngineOptions {
        inbox_poll: Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    let worker = Engine::start(flow::flow_path(&data), registry, slow_inbox)
        .await
        .unwrap();
    // Past the engine's first inbox poll (at start); the next is an hour away, so what is
    // asked now waits in the inbox, as within any one poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let flow_db = flow::flow_path(&data);
    let request = workflow::PublishRequest::new(target.spec().clone(), &options(false));
    let (first, second) = tokio::join!(
        workflow::hand_over(&flow_db, &request),
        workflow::hand_over(&flow_db, &request)
    );
    assert_eq!(
        first.unwrap(),
        second.unwrap(),
        "two publishes of one channel were started"
    );
    assert_eq!(worker.client().pending_starts().unwrap().len(), 1);
    // A forced publish is another request: it does not join.
    let forced = workflow::PublishRequest::new(target.spec().clone(), &options(true));
    let third = workflow::hand_over(&flow_db, &forced).await.unwrap();
    let pending: Vec<String> = worker
        .client()
        .pending_starts()
        .unwrap()
        .into_iter()
        .map(|start| start.instance)
        .collect();
    assert_eq!(pending.len(), 2, "{pending:?} {third}");
    assert_eq!(pending[1], third);
    worker.shutdown().await;
}

/// A build that hangs fails its attempts at the step's time limit, so the publish ends (and a
/// later one starts afresh) instead of holding the channel for every later publish to join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_build_times_out_instead_of_holding_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ingested(&data).await;
    let target = ObjectTarget::local(&data.join("snapshots")).unwrap();
    let engine = engine_that_never_builds(&data, &store).await;
    let mut request = workflow::PublishRequest::new(target.spec().clone(), &options(false));
    request.timeouts.build_ms = 200;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        workflow::publish_and_wait(&engine.client(), &request, Duration::from_secs(60)),
    )
    .await
    .expect("the publish waited on its hung build");
    let error = outcome.expect_err("a publish whose build hangs cannot succeed");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(
        building(&data).is_empty(),
        "nothing is left holding the channel"
    );
    engine.shutdown().await;

    // The next publish starts its own and succeeds.
    let manifest = publish::publish_once(&store, &data, &target, &options(false))
        .await
        .unwrap();
    assert_eq!(
        target.current("prod").await.unwrap(),
        Some(manifest.pointer())
    );
    assert_eq!(publish_instances(&data), 2);
}
