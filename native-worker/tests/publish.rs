//! Build → verify → publish to a local directory: gates, pointer, rollback and retention.

mod support;

use pubsearch_native_worker::publish::objects::{ObjectTarget, Requester};
use pubsearch_native_worker::publish::{self, PublishOptions, build, verify};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::store::{Batch, Change, Store};
use pubsearch_shared::manifest::{self, ArtifactDigests, Manifest};

async fn ingested_store(dir: &std::path::Path, events: usize) -> Store {
    support::replay(dir, &support::jetstream_events(events)).await;
    Store::open(store_path(dir)).unwrap()
}

fn options(keep: usize) -> PublishOptions {
    PublishOptions {
        channel: "prod".into(),
        force: false,
        keep,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_a_verified_build_then_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 2_000).await;
    let target_dir = dir.path().join("published");
    let target = ObjectTarget::local(&target_dir).unwrap();
    let manifest = publish::publish_once(&store, &dir.path().join("work"), &target, &options(5))
        .await
        .unwrap();

    let live = target.current("prod").await.unwrap().unwrap();
    assert_eq!(
        live,
        manifest.pointer(),
        "the pointer is the manifest less its chunk table"
    );
    // The build's own manifest lists every chunk's digest, and they are the artifact's.
    let chunks = manifest.chunks.as_ref().expect("a chunk table");
    assert_eq!(
        chunks.digests(manifest.byte_size).unwrap().len() as u64,
        manifest.byte_size.div_ceil(u64::from(chunks.chunk_bytes))
    );
    let artifact = std::fs::read(target_dir.join(&manifest.artifact)).unwrap();
    let (_, computed) = ArtifactDigests::of_reader(&artifact[..], chunks.chunk_bytes)
        .unwrap()
        .finish();
    assert_eq!(&computed, chunks);
    let stored: Manifest = serde_json::from_slice(
        &std::fs::read(target_dir.join(manifest::manifest_key(&manifest.build_id))).unwrap(),
    )
    .unwrap();
    assert_eq!(stored, manifest);
    assert_eq!(
        manifest.counts.documents,
        build::expected_document_count(&store, manifest.source_watermark_us).unwrap()
    );
    assert!(manifest.counts.documents > 1_000);
    let artifact = target_dir.join(&manifest.artifact);
    verify::verify_artifact_file(&artifact, &manifest).unwrap();
    let conn = rusqlite::Connection::open(&artifact).unwrap();
    manifest::verify_snapshot(&conn, &manifest).unwrap();
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    assert_eq!(page_size, manifest.page_size);

    // One corrupted byte and the artifact is refused.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&artifact, &bytes).unwrap();
    let error = verify::verify_artifact_file(&artifact, &manifest).unwrap_err();
    assert!(error.to_string().contains("sha256"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrunken_build_is_refused_unless_forced_and_rollback_restores() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 1_000).await;
    let target = ObjectTarget::local(&dir.path().join("published")).unwrap();
    let work = dir.path().join("work");
    let first = publish::publish_once(&store, &work, &target, &options(5))
        .await
        .unwrap();

    // Delete most documents: the next build is under half the live one.
    let uris: Vec<(String, String)> = store
        .reader()
        .unwrap()
        .prepare("SELECT did, rkey FROM documents WHERE deleted = 0 LIMIT 800")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let changes = uris
        .into_iter()
        .map(|(did, rkey)| Change::Delete {
            did,
            collection: "com.whtwnd.blog.entry".into(),
            rkey,
            rev: "9zzzzzzzzzzzz".into(),
        })
        .collect();
    store
        .writer()
        .unwrap()
        .apply(&Batch {
            changes,
            marks: Vec::new(),
        })
        .unwrap();

    let error = publish::publish_once(&store, &work, &target, &options(5))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("under half"), "{error:#}");
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        first.build_id,
        "pointer untouched"
    );

    let mut forced = options(5);
    forced.force = true;
    let second = publish::publish_once(&store, &work, &target, &forced)
        .await
        .unwrap();
    assert!(second.counts.documents < first.counts.documents / 2);
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        second.build_id
    );

    let restored = target.rollback("prod").await.unwrap();
    assert_eq!(restored.build_id, first.build_id);
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        first.build_id
    );
}

/// Publishes one 300-event store `count` times to the local directory `dir/published`;
/// returns that directory, its target and the build ids in publish order.
async fn published_builds(
    dir: &std::path::Path,
    count: usize,
) -> (std::path::PathBuf, ObjectTarget, Vec<String>) {
    let store = ingested_store(dir, 300).await;
    let target_dir = dir.join("published");
    let target = ObjectTarget::local(&target_dir).unwrap();
    let mut ids = Vec::new();
    for _ in 0..count {
        let manifest = publish::publish_once(&store, &dir.join("work"), &target, &options(10))
            .await
            .unwrap();
        ids.push(manifest.build_id);
    }
    (target_dir, target, ids)
}

async fn listed_builds(target: &ObjectTarget) -> Vec<String> {
    let builds = target.builds("prod").await.unwrap();
    builds.into_iter().map(|m| m.build_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_the_live_build_or_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let (target_dir, target, ids) = published_builds(dir.path(), 4).await;
    // Roll back twice: the live build is now the second one.
    target.rollback("prod").await.unwrap();
    target.rollback("prod").await.unwrap();
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        ids[1]
    );
    let removed = target.retain("prod", 1).await.unwrap();
    assert_eq!(
        removed, 1,
        "only builds[2] is neither recent, live, nor the rollback target"
    );
    assert_eq!(
        listed_builds(&target).await,
        [ids[0].clone(), ids[1].clone(), ids[3].clone()]
    );
    assert!(!target_dir.join(manifest::artifact_key(&ids[2])).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_builds_left_without_a_manifest_once_they_are_old() {
    use pubsearch_native_worker::publish::objects::ORPHAN_AGE_MS;
    let dir = tempfile::tempdir().unwrap();
    let (target_dir, target, ids) = published_builds(dir.path(), 2).await;
    // An interrupted retain left one artifact behind; an upload under way has not written its
    // manifest yet.
    let left = target_dir.join("builds/20200101T000000Z-left/snapshot.db");
    let uploading = target_dir.join("builds/29990101T000000Z-uploading/snapshot.db");
    for path in [&left, &uploading] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"snapshot bytes").unwrap();
    }
    let age = std::time::Duration::from_millis(ORPHAN_AGE_MS as u64 + 60_000);
    // So is the oldest real build: its manifest keeps it.
    let oldest = target_dir.join(manifest::artifact_key(&ids[0]));
    for path in [
        &left,
        &oldest,
        &target_dir.join(manifest::manifest_key(&ids[0])),
    ] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }

    assert_eq!(target.retain("prod", 10).await.unwrap(), 0);
    assert!(!left.exists(), "the old leftover is deleted");
    assert!(uploading.exists(), "a young upload is not");
    assert!(oldest.exists(), "a build with a manifest is not");
    assert_eq!(listed_builds(&target).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_pointer_to_a_partial_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 1_500).await;
    let target_dir = dir.path().join("published");
    let target = ObjectTarget::local(&target_dir).unwrap();
    let work = dir.path().join("work");
    publish::publish_once(&store, &work, &target, &options(10))
        .await
        .unwrap();

    // Readers follow the pointer as fast as they can while builds are published.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, target_dir) = (std::sync::Arc::clone(&stop), target_dir.clone());
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes =
                        std::fs::read(target_dir.join(manifest::pointer_key("prod"))).unwrap();
                    let live = manifest::Manifest::parse(&bytes)
                        .expect("the pointer is always a whole manifest");
                    verify::verify_artifact_file(&target_dir.join(&live.artifact), &live)
                        .expect("the pointer only ever names a complete, matching artifact");
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    for _ in 0..4 {
        publish::publish_once(&store, &work, &target, &options(10))
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checked: u64 = readers
        .into_iter()
        .map(|reader| reader.join().unwrap())
        .sum();
    assert!(
        checked > 10,
        "readers kept reading during the publishes ({checked} reads)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staler_build_never_moves_the_pointer_back_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (older_dir, newer_dir) = (dir.path().join("older"), dir.path().join("newer"));
    std::fs::create_dir_all(&older_dir).unwrap();
    std::fs::create_dir_all(&newer_dir).unwrap();
    // Two publishers of one channel; the second store was written later, so its source is newer.
    let older = ingested_store(&older_dir, 300).await;
    let newer = ingested_store(&newer_dir, 300).await;
    let target = ObjectTarget::local(&dir.path().join("published")).unwrap();
    let live = publish::publish_once(&newer, &newer_dir, &target, &options(5))
        .await
        .unwrap();

    let error = publish::publish_once(&older, &older_dir, &target, &options(5))
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("refusing to move the pointer back"),
        "{error:#}"
    );
    assert_eq!(target.current("prod").await.unwrap(), Some(live.pointer()));

    let mut forced = options(5);
    forced.force = true;
    let stale = publish::publish_once(&older, &older_dir, &target, &forced)
        .await
        .unwrap();
    assert!(stale.source_watermark_us < live.source_watermark_us);
    assert_eq!(target.current("prod").await.unwrap(), Some(stale.pointer()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_retain_leaves_no_manifest_naming_a_deleted_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let (target_dir, target, ids) = published_builds(dir.path(), 3).await;
    // The oldest build's artifact cannot be deleted (a directory stands in its place), so the
    // retain stops between its two deletes.
    let artifact = target_dir.join(manifest::artifact_key(&ids[0]));
    std::fs::remove_file(&artifact).unwrap();
    std::fs::create_dir_all(artifact.join("stuck")).unwrap();
    target.retain("prod", 1).await.unwrap_err();
    assert_eq!(
        listed_builds(&target).await,
        [ids[1].clone(), ids[2].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_refuses_a_build_whose_artifact_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (target_dir, target, ids) = published_builds(dir.path(), 2).await;
    let missing = manifest::artifact_key(&ids[0]);
    std::fs::remove_file(target_dir.join(&missing)).unwrap();

    let error = target.rollback("prod").await.unwrap_err();
    assert!(error.to_string().contains(&missing), "{error}");
    let live = target.current("prod").await.unwrap().unwrap();
    assert_eq!(live.build_id, ids[1], "the pointer is untouched");
}

#[test]
fn the_keep_help_counts_the_live_build_as_retain_does() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(["publish", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("counting the live one"), "{help}");
}

/// Deletes the store's first live document, re-stamping its `indexed_at` past any watermark.
fn delete_one_document(store: &Store) {
    let (did, rkey): (String, String) = store
        .reader()
        .unwrap()
        .query_row(
            "SELECT did, rkey FROM documents WHERE deleted = 0 ORDER BY id LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let delete = Change::Delete {
        did,
        collection: "com.whtwnd.blog.entry".into(),
        rkey,
        rev: "9zzzzzzzzzzzz".into(),
    };
    store
        .writer()
        .unwrap()
        .apply(&Batch {
            changes: vec![delete],
            marks: Vec::new(),
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_build_against_the_store_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 300).await;
    let built = build::build(&store, &dir.path().join("b1.db"), "b1", "prod", |_, _| {}).unwrap();
    verify::verify_build(&store, &built, None, false).unwrap();

    // A delete after the build is news for the next build, not a fault in this one; the
    // expected count travels with the build through the workflow's history (JSON).
    delete_one_document(&store);
    let recorded: build::BuiltSnapshot =
        serde_json::from_str(&serde_json::to_string(&built).unwrap()).unwrap();
    verify::verify_build(&store, &recorded, None, false).unwrap();
}

/// The same whitewind entry (title and text) posted by `did`.
fn cross_post(did: &str) -> Change {
    whitewind_entry(
        did,
        "3kpost",
        "Cross-posted",
        "the same essay about tidal gardens",
        Some("2025-01-01T00:00:00Z"),
    )
}

/// A whitewind entry as ingest stores it; `created_at: None` leaves the date out, so the
/// snapshot dates it when it was indexed.
fn whitewind_entry(
    did: &str,
    rkey: &str,
    title: &str,
    content: &str,
    created_at: Option<&str>,
) -> Change {
    let mut body = serde_json::json!({"$type": "com.whtwnd.blog.entry", "title": title,
        "content": content, "visibility": "public"});
    if let Some(created_at) = created_at {
        body["createdAt"] = created_at.into();
    }
    match pubsearch_native_worker::extract::extract(did, "com.whtwnd.blog.entry", rkey, &body)
        .unwrap()
    {
        pubsearch_native_worker::extract::Extracted::Document(document) => Change::Document {
            document,
            rev: "3l1".into(),
        },
        pubsearch_native_worker::extract::Extracted::Publication(_) => unreachable!(),
    }
}

#[test]
fn the_first_eligible_copy_of_a_cross_post_is_the_one_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_path(dir.path())).unwrap();
    let mut writer = store.writer().unwrap();
    writer
        .replace_banned_dids(&["did:plc:banned".into()])
        .unwrap();
    // The earlier copies are by a deactivated and a banned author: alice's must stay findable.
    let changes = vec![
        cross_post("did:plc:old"),
        cross_post("did:plc:banned"),
        cross_post("did:plc:alice"),
        Change::Account {
            did: "did:plc:old".into(),
            active: false,
            status: Some("deactivated".into()),
            version: 1,
        },
    ];
    writer
        .apply(&Batch {
            changes,
            marks: Vec::new(),
        })
        .unwrap();
    drop(writer);

    let built = build::build(
        &store,
        &dir.path().join("snapshot.db"),
        "b1",
        "prod",
        |_, _| {},
    )
    .unwrap();
    let expected =
        build::expected_document_count(&store, built.manifest.source_watermark_us).unwrap();
    assert_eq!(expected, 1);
    assert_eq!(
        texts(&built.path, "SELECT did FROM documents"),
        ["did:plc:alice"]
    );
}

/// The one text column `sql` selects from the snapshot at `path`, row by row.
fn texts(path: &std::path::Path, sql: &str) -> Vec<String> {
    rusqlite::Connection::open(path)
        .unwrap()
        .prepare(sql)
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// An entry by `did` titled and keyed `rkey`, dated `created_at`.
fn dated_entry(did: &str, rkey: &str, created_at: Option<&str>) -> Change {
    whitewind_entry(
        did,
        rkey,
        rkey,
        &format!("an essay numbered {rkey}"),
        created_at,
    )
}

#[test]
fn the_snapshot_numbers_documents_newest_first() {
    // Search examines each phrase's matches in id order within a budget, so the newest must
    // come first whatever order the store holds them in (ARCHITECTURE.md invariant 9).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_path(dir.path())).unwrap();
    let mut writer = store.writer().unwrap();
    let changes = vec![
        dated_entry("did:plc:a", "middle", Some("2024-06-01T00:00:00.000Z")),
        dated_entry("did:plc:a", "oldest", Some("2020-01-01T00:00:00.000Z")),
        // Undated: dated when indexed, which is now, so newest of all.
        dated_entry("did:plc:b", "undated", None),
        dated_entry("did:plc:b", "newest", Some("2025-03-01T00:00:00.000Z")),
        dated_entry("did:plc:c", "tie-b", Some("2022-01-01T00:00:00.000Z")),
        dated_entry("did:plc:c", "tie-a", Some("2022-01-01T00:00:00.000Z")),
    ];
    writer
        .apply(&Batch {
            changes,
            marks: Vec::new(),
        })
        .unwrap();
    drop(writer);
    let built = build::build(&store, &dir.path().join("s.db"), "b1", "prod", |_, _| {}).unwrap();
    // Equal dates keep the store's order.
    assert_eq!(
        texts(&built.path, "SELECT rkey FROM documents ORDER BY id"),
        ["undated", "newest", "middle", "tie-b", "tie-a", "oldest"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_replaces_an_artifact_of_the_right_size_but_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 300).await;
    let built = build::build(&store, &dir.path().join("b1.db"), "b1", "prod", |_, _| {}).unwrap();
    let target_dir = dir.path().join("published");
    let target = ObjectTarget::local(&target_dir).unwrap();
    target.upload(&built).await.unwrap();
    let uploaded = target_dir.join(&built.manifest.artifact);
    let good = std::fs::read(&uploaded).unwrap();
    assert_eq!(good, std::fs::read(&built.path).unwrap());

    // An upload interrupted and botched: the size is right, a byte is not.
    let mut damaged = good.clone();
    damaged[good.len() / 2] ^= 0xff;
    std::fs::write(&uploaded, &damaged).unwrap();
    target.upload(&built).await.unwrap();
    assert_eq!(
        std::fs::read(&uploaded).unwrap(),
        good,
        "the resume re-uploaded the artifact instead of trusting its size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_holds_the_channel_against_the_schedule_until_a_publish_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target, ids) = published_builds(dir.path(), 2).await;
    let rolled_back = target.rollback("prod").await.unwrap();
    assert_eq!(rolled_back.build_id, ids[0]);
    assert_eq!(target.hold("prod").await.unwrap().unwrap().build_id, ids[0]);

    // The schedule would republish from the same store: refused, the rollback stands.
    let newest = target.builds("prod").await.unwrap().pop().unwrap();
    let error = target
        .advance_pointer(&newest, false, Requester::Schedule)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("held at build"), "{error}");
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        ids[0]
    );

    // A publish asked for by hand goes ahead and ends the hold.
    let store = Store::open(store_path(dir.path())).unwrap();
    let manifest = publish::publish_once(&store, &dir.path().join("work"), &target, &options(10))
        .await
        .unwrap();
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        manifest.build_id
    );
    assert_eq!(target.hold("prod").await.unwrap(), None);
    target
        .advance_pointer(&manifest, false, Requester::Schedule)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointer_writers_on_a_directory_wait_for_each_other() {
    use pubsearch_native_worker::publish::objects::DIR_POINTER_LOCK;
    let dir = tempfile::tempdir().unwrap();
    let (_, target, ids) = published_builds(dir.path(), 2).await;
    // Another process mid-move: it holds the directory's pointer lock.
    let other = std::fs::File::open(dir.path().join("published").join(DIR_POINTER_LOCK)).unwrap();
    other.lock().unwrap();

    let rollback = tokio::spawn({
        let target = target.clone();
        async move { target.rollback("prod").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!rollback.is_finished(), "the rollback waits for the lock");
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        ids[1]
    );
    assert_eq!(target.hold("prod").await.unwrap(), None);

    drop(other);
    assert_eq!(rollback.await.unwrap().unwrap().build_id, ids[0]);
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        ids[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pointer_never_moves_to_a_build_whose_artifact_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (target_dir, target, ids) = published_builds(dir.path(), 2).await;
    let first = target.builds("prod").await.unwrap().remove(0);
    std::fs::remove_file(target_dir.join(manifest::artifact_key(&ids[0]))).unwrap();
    let error = target
        .advance_pointer(&first, true, Requester::Operator)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
    assert_eq!(
        target.current("prod").await.unwrap().unwrap().build_id,
        ids[1]
    );
}

#[test]
fn a_publish_recorded_before_requesters_existed_respects_holds() {
    use pubsearch_native_worker::publish::objects::TargetSpec;
    use pubsearch_native_worker::publish::workflow::PublishRequest;
    let request = PublishRequest::new(
        TargetSpec::Dir {
            path: "published".into(),
        },
        &options(10),
    );
    let mut recorded = serde_json::to_value(&request).unwrap();
    assert_eq!(recorded["requester"], "operator");
    recorded.as_object_mut().unwrap().remove("requester");
    let resumed: PublishRequest = serde_json::from_value(recorded).unwrap();
    assert_eq!(resumed.requester, Requester::Schedule);
}

/// The build's disk fills mid-build: the publish fails with a clear error and publishes
/// nothing, the store is untouched, and once space returns the next publish goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_fills_its_disk_fails_cleanly_and_the_next_one_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ingested_store(dir.path(), 2_000).await;
    let work = dir.path().join("work");
    let builds = publish::work_dir(&work);
    std::fs::create_dir_all(&builds).unwrap();
    let Some(disk) = support::SmallDisk::mount(&builds, "64k") else {
        return;
    };
    let target = ObjectTarget::local(&dir.path().join("published")).unwrap();
    let error = publish::publish_once(&store, &work, &target, &options(5))
        .await
        .expect_err("a build fitted in 64 KB");
    let message = error.to_string();
    assert!(message.contains("full"), "says why: {message}");
    assert_eq!(
        target.current("prod").await.unwrap(),
        None,
        "nothing was published"
    );
    store.check().expect("the store is untouched");

    disk.resize("64m");
    let manifest = publish::publish_once(&store, &work, &target, &options(5))
        .await
        .unwrap();
    assert_eq!(
        target.current("prod").await.unwrap(),
        Some(manifest.pointer())
    );
}
