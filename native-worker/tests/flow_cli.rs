//! `native-worker flow list|show|cancel|purge` against a database a running engine owns, and
//! `native-worker publish` handing its work to a running worker.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pubsearch_native_worker::flow::{
    Engine, EngineOptions, OrchestrationContext, Registry, Status,
};

fn flow_cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .arg("flow")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("running native-worker flow");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_cancels_and_purges_while_the_engine_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = flow_cli(dir.path(), &["list"]);
    assert!(!ok && stderr.contains("no flow database"), "{stderr}");

    let mut registry = Registry::new();
    registry
        .orchestration(
            "quick",
            1,
            |_ctx: OrchestrationContext, n: u32| async move { Ok(n + 1) },
        )
        .orchestration("waits", 1, |ctx: OrchestrationContext, ()| async move {
            ctx.set_custom_status("waiting for go");
            ctx.wait_event::<()>("go").await
        });
    let options = EngineOptions {
        inbox_poll: Duration::from_millis(50),
        ..EngineOptions::default()
    };
    let engine = Engine::start(dir.path().join("flow.db"), registry, options)
        .await
        .unwrap();
    let client = engine.client();
    for i in 0..3 {
        client
            .start("quick", &format!("quick-{i}"), &i)
            .await
            .unwrap();
        client
            .wait(&format!("quick-{i}"), Duration::from_secs(10))
            .await
            .unwrap();
    }
    client.start("waits", "waiting", &()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (ok, stdout, stderr) = flow_cli(dir.path(), &["list", "--limit", "2"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stderr.contains("more: --after quick-1"), "{stderr}");
    let (ok, stdout, _) = flow_cli(dir.path(), &["list", "--status", "running"]);
    assert!(ok);
    assert!(
        stdout.contains("waiting") && stdout.contains("waiting for go"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
    let (ok, _, stderr) = flow_cli(dir.path(), &["list", "--status", "sleeping"]);
    assert!(!ok && stderr.contains("unknown status"), "{stderr}");

    let (ok, stdout, _) = flow_cli(dir.path(), &["show", "quick-2"]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["instance"]["output"], "3");
    assert_eq!(shown["history"][0]["type"], "started");

    let (ok, stdout, stderr) = flow_cli(
        dir.path(),
        &["cancel", "waiting", "--reason", "no longer needed"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("queued"));
    let info = client
        .wait("waiting", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(info.status, Status::Cancelled);
    assert_eq!(info.error.as_deref(), Some("no longer needed"));
    let (ok, _, stderr) = flow_cli(dir.path(), &["cancel", "waiting"]);
    assert!(!ok && stderr.contains("already cancelled"), "{stderr}");

    let (ok, stdout, _) = flow_cli(dir.path(), &["purge"]);
    assert!(ok);
    assert!(
        stdout.contains("purged 0"),
        "recent instances are kept: {stdout}"
    );
    let (ok, stdout, _) = flow_cli(dir.path(), &["purge", "--older-than-hours", "0"]);
    assert!(ok);
    assert!(stdout.contains("purged 4"), "{stdout}");
    assert!(client.status("quick-0").unwrap().is_none());
    engine.shutdown().await;
}

/// With `run` owning the flow database, `publish` leaves its request in the engine's inbox and
/// waits for the running worker to carry it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_asks_the_running_worker_through_its_inbox() {
    use pubsearch_native_worker::run::{self, RunOptions, Source};
    use support::firehose::{Faults, JetstreamServer};

    let dir = tempfile::tempdir().unwrap();
    let (data, published) = (dir.path().join("data"), dir.path().join("published"));
    let firehose = JetstreamServer::start(support::jetstream_events(300), Faults::default()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let source = Source::Jetstream(firehose.url().parse().unwrap());
    let worker = tokio::spawn(run::run(RunOptions::new(&data, source), stop.clone()));
    let store = run::store_path(&data);
    assert!(
        support::wait_for(Duration::from_secs(30), || support::cursor(&store)
            == Some(support::last_time_us(300)))
        .await
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(["publish", "--data-dir"])
        .arg(&data)
        .arg("--snapshot-dir")
        .arg(&published)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("a running worker owns the workflows"),
        "{stderr}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        manifest["counts"]["documents"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    let pointer: serde_json::Value = serde_json::from_slice(
        &std::fs::read(published.join("channels/prod/latest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pointer["build_id"], manifest["build_id"]);

    let (ok, stdout, _) = flow_cli(&data, &["list", "--status", "completed"]);
    assert!(ok);
    assert!(stdout.contains("snapshot.publish"), "{stdout}");
    stop.cancel();
    worker.await.unwrap().unwrap();
}
