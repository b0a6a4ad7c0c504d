//! `native-worker publish` killed with SIGKILL mid-workflow, then run again: it resumes the
//! interrupted publish instead of starting over — the recorded build is reused, an upload that
//! had finished is not redone — and no reader ever sees the pointer before the upload is whole.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pubsearch_native_worker::flow::{
    self, Engine, EngineOptions, Event, OutsideClient, Registry, Status,
};
use pubsearch_native_worker::publish::build::BuiltSnapshot;
use pubsearch_native_worker::publish::objects::ObjectTarget;
use pubsearch_native_worker::publish::{self, PublishOptions, verify, workflow};
use pubsearch_native_worker::run::{self, Source};
use pubsearch_native_worker::store::Store;
use pubsearch_shared::manifest::{self, Manifest};
use tokio_util::sync::CancellationToken;

fn publish_command(data: &Path, published: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_native-worker"));
    command
        .args(["publish", "--data-dir"])
        .arg(data)
        .arg("--snapshot-dir")
        .arg(published)
        .env("RUST_LOG", "info");
    command
}

/// Ingests a generated corpus large enough that each publish step takes a visible moment.
async fn ingest(data: &Path, records: usize) {
    std::fs::create_dir_all(data).unwrap();
    let corpus = data.join("corpus.ndjson");
    pubsearch_native_worker::corpus::write_file(&corpus, records, 5).unwrap();
    run::run(
        run::RunOptions::new(data, Source::Replay(corpus)),
        CancellationToken::new(),
    )
    .await
    .unwrap();
}

/// Polls the flow database until the running publish reports a status starting with `step`,
/// then kills the process. Returns the instance id and its status text at the kill.
fn kill_at_step(child: &mut Child, data: &Path, step: &str, linger: Duration) -> (String, String) {
    let flow = OutsideClient::new(&data.join("flow.db"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "the publish never reached `{step}`"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("publish finished ({status}) before it could be interrupted at `{step}`");
        }
        if let Ok(page) = flow.list(Some(Status::Running), None, 10)
            && let Some(info) = page.instances.first()
            && let Some(custom) = info.custom_status.as_deref()
            && custom.starts_with(step)
        {
            std::thread::sleep(linger);
            child.kill().unwrap();
            child.wait().unwrap();
            return (info.id.clone(), custom.to_string());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn recorded_build(data: &Path, instance: &str) -> BuiltSnapshot {
    let (_, history) = OutsideClient::new(&data.join("flow.db"))
        .history(instance)
        .unwrap()
        .expect("the publish instance exists");
    history
        .into_iter()
        .find_map(|event| match event {
            Event::ActivityCompleted { seq: 2, output } => serde_json::from_str(&output).ok(),
            _ => None,
        })
        .expect("the build step's result is recorded")
}

fn pointer(published: &Path) -> Option<Manifest> {
    let text = std::fs::read(published.join(manifest::pointer_key("prod"))).ok()?;
    Some(serde_json::from_slice(&text).unwrap())
}

fn finished(output: Output) -> Manifest {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the resumed publish failed: {stderr}"
    );
    assert!(
        stderr.contains("resuming the channel's interrupted publish"),
        "{stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn artifact(published: &Path, manifest: &Manifest) -> PathBuf {
    published.join(&manifest.artifact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_killed_during_upload_resumes_with_its_recorded_build() {
    let dir = tempfile::tempdir().unwrap();
    let (data, published) = (dir.path().join("data"), dir.path().join("published"));
    ingest(&data, 8_000).await;

    let mut child = publish_command(&data, &published)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (instance, at) = kill_at_step(&mut child, &data, "uploading", Duration::ZERO);
    assert!(
        pointer(&published).is_none(),
        "a pointer appeared before the upload finished"
    );
    let built = recorded_build(&data, &instance);

    let manifest = finished(publish_command(&data, &published).output().unwrap());
    // The resumed workflow published the build it recorded before the kill, byte for byte,
    // rather than building a new one.
    assert_eq!(manifest, built.manifest, "killed at `{at}`");
    assert_eq!(pointer(&published), Some(manifest.pointer()));
    verify::verify_artifact_file(&artifact(&published, &manifest), &manifest).unwrap();
    let info = OutsideClient::new(&data.join("flow.db"))
        .status(&instance)
        .unwrap()
        .unwrap();
    assert_eq!(info.status, Status::Completed);
}

/// The same resume through the library entry point, stopping the first engine while the
/// pointer step is failing and retrying (an object store that went away after the upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_upload_is_not_redone_when_the_pointer_step_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, published) = (dir.path().join("data"), dir.path().join("published"));
    ingest(&data, 3_000).await;
    let store = Store::open(run::store_path(&data)).unwrap();
    let target = ObjectTarget::local(&published).unwrap();
    let options = PublishOptions {
        channel: "prod".into(),
        force: false,
        keep: 3,
    };

    let mut registry = Registry::new();
    workflow::register(&mut registry, store.clone(), publish::work_dir(&data));
    registry.activity("snapshot.pointer", |_, _: serde_json::Value| async move {
        Err::<(), _>("the object store is unavailable".to_string())
    });
    let engine = Engine::start(flow::flow_path(&data), registry, EngineOptions::default())
        .await
        .unwrap();
    let request = workflow::PublishRequest::new(target.spec().clone(), &options);
    let instance = "publish:prod:interrupted";
    engine
        .client()
        .start(workflow::ORCHESTRATION, instance, &request)
        .await
        .unwrap();
    let stats = engine.stats();
    assert!(
        support::wait_for(Duration::from_secs(60), || stats
            .activity_retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
        .await,
        "the pointer step never failed"
    );
    engine.shutdown().await;
    assert!(pointer(&published).is_none());
    let built = recorded_build(&data, instance);
    let uploaded = artifact(&published, &built.manifest);
    let before = std::fs::metadata(&uploaded).expect("the upload finished before the stop");

    let manifest = publish::publish_once(&store, &data, &target, &options)
        .await
        .unwrap();
    assert_eq!(
        manifest, built.manifest,
        "the interrupted publish was resumed"
    );
    assert_eq!(pointer(&published), Some(manifest.pointer()));
    let after = std::fs::metadata(&uploaded).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec()),
        "the artifact was uploaded again"
    );
    verify::verify_artifact_file(&uploaded, &manifest).unwrap();
}

/// A delta publish killed while building and, another time, while moving the pointer, then run
/// again: each resumes and finishes, the pointer never names a missing or partial delta, and the
/// base and delta together serve exactly what a whole build of the store would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_publish_killed_mid_way_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, published) = (dir.path().join("data"), dir.path().join("published"));
    ingest(&data, 2_000).await;
    let base = {
        let output = publish_command(&data, &published).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Manifest>(&output.stdout).unwrap()
    };
    let delta_command = || {
        let mut command = publish_command(&data, &published);
        command.arg("--delta");
        command
    };

    for (seed, step) in [(6, "building delta"), (7, "pointing prod at delta")] {
        // More posts (with their own edits and deletes) since the base.
        let corpus = data.join(format!("more-{seed}.ndjson"));
        pubsearch_native_worker::corpus::write_file(&corpus, 1_000, seed).unwrap();
        run::run(
            run::RunOptions::new(&data, Source::Replay(corpus)),
            CancellationToken::new(),
        )
        .await
        .unwrap();

        let mut child = delta_command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (_, at) = kill_at_step(&mut child, &data, step, Duration::from_millis(5));
        if let Some(delta) = pointer(&published).and_then(|pointer| pointer.delta) {
            verify::verify_artifact_file(&artifact(&published, &delta), &delta)
                .unwrap_or_else(|error| panic!("killed at `{at}`, the pointer names {error}"));
        }
        let delta = finished(delta_command().output().unwrap());
        let live = pointer(&published).unwrap();
        assert_eq!(live.build_id, base.build_id, "killed at `{at}`");
        assert_eq!(
            live.delta.as_deref(),
            Some(&delta.pointer()),
            "killed at `{at}`"
        );
        verify::verify_artifact_file(&artifact(&published, &delta), &delta).unwrap();

        let store = Store::open(run::store_path(&data)).unwrap();
        let whole = publish::build::build(
            &store,
            &dir.path().join(format!("whole-{seed}.db")),
            "whole",
            "prod",
            |_, _| {},
        )
        .unwrap();
        let open = |path: &Path| {
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap()
        };
        let overlay =
            pubsearch_shared::delta::Delta::open(open(&artifact(&published, &delta))).unwrap();
        assert_eq!(overlay.served(), whole.manifest.counts, "killed at `{at}`");
        let (base_conn, whole_conn) = (open(&artifact(&published, &base)), open(&whole.path));
        pubsearch_shared::search::prepare(&base_conn).unwrap();
        pubsearch_shared::search::prepare(&whole_conn).unwrap();
        let layers = pubsearch_shared::delta::Layers {
            base: &base_conn,
            delta: Some(&overlay),
        };
        let uris = support::document_uris(&run::store_path(&data));
        use pubsearch_shared::lookup::documents_by_uri_in;
        for batch in uris.chunks(pubsearch_shared::lookup::MAX_URIS) {
            let served = documents_by_uri_in(layers, batch).unwrap().unwrap();
            let expected =
                documents_by_uri_in(pubsearch_shared::delta::Layers::base(&whole_conn), batch)
                    .unwrap()
                    .unwrap();
            assert_eq!(served.missing, expected.missing, "killed at `{at}`");
        }
    }
}
