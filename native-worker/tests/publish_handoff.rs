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
