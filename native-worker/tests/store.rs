//! The store's revision rules, tombstones, cursor atomicity and reader isolation.

mod support;

use pubsearch_native_worker::extract::{self, Extracted};
use pubsearch_native_worker::store::read::cursor as read_cursor;
use pubsearch_native_worker::store::replica::{RowImage, Stamp, Table};
use pubsearch_native_worker::store::{Batch, Change, Mark, Store};
use rusqlite::types::Value;
use serde_json::json;

const COLLECTION: &str = "com.whtwnd.blog.entry";

fn document(rkey: &str, title: &str, rev: &str) -> Change {
    let body = json!({"$type": COLLECTION, "title": title, "content": format!("{title} body text"),
                      "createdAt": "2025-01-01T00:00:00Z", "visibility": "public"});
    match extract::extract("did:plc:a", COLLECTION, rkey, &body).unwrap() {
        Extracted::Document(document) => Change::Document {
            document,
            rev: rev.into(),
        },
        Extracted::Publication(_) => unreachable!(),
    }
}

fn delete(rkey: &str, rev: &str) -> Change {
    Change::Delete {
        did: "did:plc:a".into(),
        collection: COLLECTION.into(),
        rkey: rkey.into(),
        rev: rev.into(),
    }
}

fn batch(changes: Vec<Change>) -> Batch {
    Batch {
        changes,
        marks: Vec::new(),
    }
}

fn titles(store: &Store) -> Vec<(String, String, bool)> {
    let conn = store.reader().unwrap();
    let mut statement = conn
        .prepare("SELECT rkey, title, deleted FROM documents ORDER BY rkey")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn newest_revision_wins_whatever_the_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let outcome = writer
        .apply(&batch(vec![
            document("k1", "second", "3l2"),
            document("k1", "first", "3l1"),
        ]))
        .unwrap();
    assert_eq!((outcome.applied, outcome.stale), (1, 1));
    writer
        .apply(&batch(vec![document("k1", "second", "3l2")]))
        .unwrap();
    assert_eq!(titles(&store), [("k1".into(), "second".into(), false)]);
}

#[test]
fn deletes_leave_tombstones_that_block_older_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    writer
        .apply(&batch(vec![
            document("k1", "hello", "3l1"),
            delete("k1", "3l2"),
        ]))
        .unwrap();
    assert_eq!(titles(&store), [("k1".into(), "".into(), true)]);
    // A delete seen before its create (or a replayed old create) must not resurrect the record.
    writer
        .apply(&batch(vec![
            document("k1", "hello", "3l1"),
            delete("k9", "3l5"),
            document("k9", "zombie", "3l4"),
        ]))
        .unwrap();
    assert_eq!(
        titles(&store),
        [
            ("k1".into(), "".into(), true),
            ("k9".into(), "".into(), true)
        ]
    );
    // A genuinely newer create revives it.
    writer
        .apply(&batch(vec![document("k1", "reborn", "3l3")]))
        .unwrap();
    assert_eq!(titles(&store)[0], ("k1".into(), "reborn".into(), false));
}

#[test]
fn one_batch_applies_every_kind_of_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    writer
        .apply(&batch(vec![
            document("k1", "alpha", "3l1"),
            document("k2", "bravo", "3l1"),
            document("k3", "charlie", "3l1"),
        ]))
        .unwrap();
    // One batch: an update, a stale change, a delete, a create updated twice, a delete of a
    // record never seen.
    let outcome = writer
        .apply(&batch(vec![
            document("k1", "delta", "3l2"),
            document("k2", "echo", "3l0"),
            delete("k3", "3l2"),
            document("k4", "foxtrot", "3l1"),
            document("k4", "golf", "3l2"),
            delete("k5", "3l1"),
        ]))
        .unwrap();
    assert_eq!((outcome.applied, outcome.stale), (5, 1));
    let expected: Vec<(String, String, bool)> = [
        ("k1", "delta", false),
        ("k2", "bravo", false),
        ("k3", "", true),
        ("k4", "golf", false),
        ("k5", "", true),
    ]
    .iter()
    .map(|(rkey, title, deleted)| (rkey.to_string(), title.to_string(), *deleted))
    .collect();
    assert_eq!(titles(&store), expected);
}

/// Whether the store file has a table or virtual table named `name`.
fn has_table(path: &std::path::Path, name: &str) -> bool {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

#[test]
fn the_store_keeps_no_full_text_index_and_an_old_one_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(&path).unwrap();
    store
        .writer()
        .unwrap()
        .apply(&batch(vec![document("k1", "alpha", "3l1")]))
        .unwrap();
    drop(store);
    assert!(!has_table(&path, "documents_fts"), "a new store has none");
    // A store from before migration 7, with the index it used to keep: opening it drops the
    // index (and its shadow tables) and keeps every row.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE VIRTUAL TABLE documents_fts USING fts5(title, content, content = 'documents',
                 content_rowid = 'id');
             INSERT INTO documents_fts (documents_fts) VALUES ('rebuild');
             PRAGMA user_version = 6;",
        )
        .unwrap();
    assert!(has_table(&path, "documents_fts_data"));
    let store = Store::open(&path).unwrap();
    assert!(!has_table(&path, "documents_fts"));
    assert!(!has_table(&path, "documents_fts_data"));
    assert_eq!(titles(&store), [("k1".into(), "alpha".into(), false)]);
}

fn jetstream_at(position: i64) -> Mark {
    Mark::Cursor {
        source: "jetstream".into(),
        position,
    }
}

#[test]
fn cursor_commits_with_its_batch_and_never_regresses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(read_cursor(&reader, "jetstream").unwrap(), None);
    let mut with_cursor = batch(vec![document("k1", "a", "3l1")]);
    with_cursor.marks = vec![jetstream_at(500)];
    let first = writer.apply(&with_cursor).unwrap();
    assert_eq!(read_cursor(&reader, "jetstream").unwrap(), Some(500));
    with_cursor.marks = vec![jetstream_at(400)];
    let second = writer.apply(&with_cursor).unwrap();
    assert_eq!(
        read_cursor(&reader, "jetstream").unwrap(),
        Some(500),
        "a rewound replay keeps the cursor"
    );
    assert!(
        second.indexed_at > first.indexed_at,
        "indexed_at strictly increases per batch"
    );
}

#[test]
fn indexed_at_passes_stamps_another_process_committed_while_we_waited_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    writer
        .apply(&batch(vec![document("k0", "earlier", "3l1")]))
        .unwrap();
    // Another process (a backfill) holds the write lock and commits a later stamp while our
    // batch waits for it.
    let other = rusqlite::Connection::open(store.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let waiting = std::thread::spawn(move || {
        writer
            .apply(&batch(vec![document("k1", "ours", "3l1")]))
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let theirs = pubsearch_native_worker::clock::now_us();
    other
        .execute(
            "UPDATE documents SET indexed_at = ?1 WHERE rkey = 'k0'",
            [theirs],
        )
        .unwrap();
    other.execute_batch("COMMIT").unwrap();
    let ours = waiting.join().unwrap();
    assert!(
        ours.indexed_at > theirs,
        "a snapshot cut at {theirs} must not miss a batch committed after it ({})",
        ours.indexed_at
    );
}

#[test]
fn readers_do_not_block_on_an_open_write_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    store
        .writer()
        .unwrap()
        .apply(&batch(vec![document("k1", "visible", "3l1")]))
        .unwrap();
    let other = rusqlite::Connection::open(store.path()).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; UPDATE documents SET title = 'uncommitted';")
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        titles(&store)[0].1,
        "visible",
        "readers see the last commit"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "no busy wait behind the writer"
    );
    other.execute_batch("ROLLBACK").unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_store_from_the_future_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    Store::open(&path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let error = Store::open(&path).unwrap_err().to_string();
    assert!(error.contains("newer than this build"), "{error}");
}

#[test]
fn commits_reach_the_database_file_without_the_writer_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let file_size = || std::fs::metadata(store.path()).unwrap().len();
    let before = file_size();
    let mut writer = store.writer().unwrap();
    // Far below the writer's own autocheckpoint threshold: only the checkpoint thread copies
    // these pages out of the WAL, when the commit nudges it (well before its idle interval).
    let changes = (0..200)
        .map(|i| document(&format!("k{i:03}"), &format!("title number {i}"), "3l1"))
        .collect();
    writer.apply(&batch(changes)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while file_size() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        file_size() > before,
        "the committed pages were checkpointed into the database file"
    );
}

/// `(active, handle, version)` of `did`'s account row.
fn account(store: &Store, did: &str) -> (bool, Option<String>, i64) {
    store
        .reader()
        .unwrap()
        .query_row(
            "SELECT active, handle, version FROM accounts WHERE did = ?1",
            [did],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap()
}

#[test]
fn an_older_account_copy_never_undoes_a_newer_takedown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let did = "did:plc:a";
    let takedown = Change::Account {
        did: did.into(),
        active: false,
        status: Some("takendown".into()),
        version: 200,
    };
    writer.apply(&batch(vec![takedown])).unwrap();
    // An older copy from Turso, stamped with a later watermark, and a replayed older event.
    let older = writer
        .apply(&batch(vec![
            Change::Replica(support::account_image(did, true, 100)),
            Change::Account {
                did: did.into(),
                active: true,
                status: None,
                version: 150,
            },
        ]))
        .unwrap();
    assert_eq!((older.applied, older.stale), (0, 2));
    assert_eq!(account(&store, did), (false, None, 200));
    // Newer events and copies do apply.
    writer
        .apply(&batch(vec![Change::Identity {
            did: did.into(),
            handle: Some("a.test".into()),
            version: 300,
        }]))
        .unwrap();
    assert_eq!(account(&store, did), (false, Some("a.test".into()), 300));
    writer
        .apply(&batch(vec![Change::Replica(support::account_image(
            did, true, 400,
        ))]))
        .unwrap();
    assert_eq!(account(&store, did), (true, None, 400));
}

#[test]
fn account_changes_still_apply_after_a_switch_from_jetstream_to_tap() {
    // Jetstream versions are `time_us`, tap's are event ids: a switch must not freeze accounts.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let did = "did:plc:a";
    let status = |active: bool, version: i64| Change::Account {
        did: did.into(),
        active,
        status: (!active).then(|| "takendown".to_owned()),
        version,
    };
    let jetstream_time = 1_760_000_000_000_000;
    writer
        .apply(&batch(vec![status(true, jetstream_time)]))
        .unwrap();

    // The first tap event applies over Jetstream's row; within tap, an older id does not.
    writer.apply(&batch(vec![status(false, 5)])).unwrap();
    assert_eq!(account(&store, did), (false, None, 5));
    let older = writer.apply(&batch(vec![status(true, 4)])).unwrap();
    assert_eq!((older.applied, older.stale), (0, 1));
    writer
        .apply(&batch(vec![Change::Identity {
            did: did.into(),
            handle: Some("a.test".into()),
            version: 6,
        }]))
        .unwrap();
    assert_eq!(account(&store, did), (false, Some("a.test".into()), 6));

    // Copies from Turso: an older tap copy is stale, and so is a Jetstream one, an echo of the
    // store's writes before the switch, however late it comes down.
    let copies = writer
        .apply(&batch(vec![
            Change::Replica(support::account_image(did, true, 3)),
            Change::Replica(support::account_image(did, true, jetstream_time + 1)),
        ]))
        .unwrap();
    assert_eq!((copies.applied, copies.stale), (0, 2));
    assert_eq!(account(&store, did), (false, Some("a.test".into()), 6));
    // Going up, the store's tap rows replace Turso's Jetstream ones; an older tap row does not.
    let turso = rusqlite::Connection::open_in_memory().unwrap();
    turso.execute_batch(&Table::Accounts.remote_ddl()).unwrap();
    for (active, version) in [(true, jetstream_time), (false, 5), (true, 4)] {
        let (sql, args) = support::account_image(did, active, version).upsert(Stamp::ServerClock);
        turso
            .execute(sql, rusqlite::params_from_iter(args))
            .unwrap();
    }
    let upstream: (bool, i64) = turso
        .query_row("SELECT active, version FROM accounts", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(upstream, (false, 5));
}

#[test]
fn accounts_from_before_versions_stay_readable_and_lose_to_any_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(Store::open(&path).unwrap());
    // Put the store back at schema 4: accounts without a version, a 5-column image queued.
    let legacy = rusqlite::Connection::open(&path).unwrap();
    let queued = r#"[{"table":"accounts","values":[{"type":"text","value":"did:plc:old"},{"type":"null"},{"type":"integer","value":"0"},{"type":"text","value":"deactivated"},{"type":"integer","value":"7"}]}]"#;
    legacy
        .execute_batch(&format!(
            "DROP INDEX accounts_updated_at;
             DROP TABLE policy_changes;
             ALTER TABLE accounts DROP COLUMN version;
             INSERT INTO accounts (did, active, status, updated_at) VALUES ('did:plc:old', 0, 'deactivated', 7);
             INSERT INTO upstream_queue (rows, row_count, enqueued_at) VALUES ('{queued}', 1, 7);
             PRAGMA user_version = 4;"
        ))
        .unwrap();
    drop(legacy);

    let store = Store::open(&path).unwrap();
    assert_eq!(account(&store, "did:plc:old"), (false, None, 0));
    let rows: String = store
        .reader()
        .unwrap()
        .query_row("SELECT rows FROM upstream_queue", [], |row| row.get(0))
        .unwrap();
    let images: Vec<RowImage> = serde_json::from_str(&rows).unwrap();
    assert_eq!(
        images[0].values,
        [
            Value::Text("did:plc:old".into()),
            Value::Null,
            Value::Integer(0),
            Value::Text("deactivated".into()),
            Value::Integer(0),
            Value::Integer(7),
        ]
    );
    store
        .writer()
        .unwrap()
        .apply(&batch(vec![Change::Account {
            did: "did:plc:old".into(),
            active: true,
            status: None,
            version: 1,
        }]))
        .unwrap();
    assert_eq!(account(&store, "did:plc:old"), (true, None, 1));
}

fn queued_images(store: &Store) -> Vec<RowImage> {
    let conn = store.reader().unwrap();
    let mut statement = conn
        .prepare("SELECT rows FROM upstream_queue ORDER BY id")
        .unwrap();
    let entries: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    entries
        .iter()
        .flat_map(|rows| serde_json::from_str::<Vec<RowImage>>(rows).unwrap())
        .collect()
}

#[test]
fn images_queued_in_the_wire_format_by_an_older_build_are_rewritten_in_the_stores_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(&path).unwrap();
    let mut writer = store.writer().unwrap();
    writer.enable_write_through();
    writer
        .apply(&batch(vec![
            document("k1", "alpha", "3l1"),
            delete("k2", "3l2"),
            Change::Identity {
                did: "did:plc:a".into(),
                handle: Some("a.test".into()),
                version: 9,
            },
        ]))
        .unwrap();
    drop(writer);
    let queued = queued_images(&store);
    assert_eq!(queued.len(), 3, "a document, a tombstone and an account");
    assert!(
        queued
            .iter()
            .any(|image| image.values.contains(&Value::Null))
    );

    // What a build before schema 8 queued: the same rows, each value in Hrana's tagged form.
    let legacy: Vec<serde_json::Value> = queued
        .iter()
        .map(|image| {
            let values: Vec<_> = image
                .values
                .iter()
                .cloned()
                .map(pubsearch_native_worker::turso::hrana::Value::from)
                .collect();
            json!({"table": image.table, "values": values})
        })
        .collect();
    let legacy = serde_json::to_string(&legacy).unwrap();
    assert!(legacy.contains(r#"{"type":"integer","value":"#));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE upstream_queue SET rows = ?1", [&legacy])
        .unwrap();
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);

    let store = Store::open(&path).unwrap();
    assert_eq!(queued_images(&store), queued);
}

#[test]
fn a_new_snapshot_is_due_after_a_change_it_would_show_and_only_then() {
    use pubsearch_native_worker::store::read::{changed_since, newest_stamp};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let reader = store.reader().unwrap();
    let account = |did: &str, active: bool, version: i64| Change::Account {
        did: did.into(),
        active,
        status: None,
        version,
    };
    writer
        .apply(&batch(vec![document("k0", "first", "3l1")]))
        .unwrap();
    let built = newest_stamp(&reader).unwrap();
    assert!(!changed_since(&reader, built).unwrap());

    // The firehose reports accounts of the whole network: one without documents shows nowhere,
    // though the next snapshot's watermark covers its stamp.
    writer
        .apply(&batch(vec![account("did:plc:stranger", false, 1)]))
        .unwrap();
    assert!(!changed_since(&reader, built).unwrap());
    let built = newest_stamp(&reader).unwrap();

    // An author's deactivation takes their documents out of the next snapshot.
    writer
        .apply(&batch(vec![account("did:plc:a", false, 2)]))
        .unwrap();
    assert!(changed_since(&reader, built).unwrap());
    let built = newest_stamp(&reader).unwrap();
    assert!(!changed_since(&reader, built).unwrap());

    // So does a ban list that changed; the same list again is no change.
    writer.replace_banned_dids(&[]).unwrap();
    assert!(!changed_since(&reader, built).unwrap());
    writer
        .replace_banned_dids(&["did:plc:b".to_owned()])
        .unwrap();
    assert!(changed_since(&reader, built).unwrap());
    let built = newest_stamp(&reader).unwrap();
    writer
        .replace_banned_dids(&["did:plc:b".to_owned()])
        .unwrap();
    assert!(!changed_since(&reader, built).unwrap());

    // A later batch is stamped past the ban list's change, so a cut between them stays clean.
    let later = writer
        .apply(&batch(vec![document("k1", "second", "3l1")]))
        .unwrap();
    assert!(later.indexed_at > built);
    assert!(changed_since(&reader, built).unwrap());
}

#[test]
fn a_full_disk_refuses_the_whole_batch_and_the_same_batch_commits_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let mut writer = store.writer().unwrap();
    let mut first = batch(vec![document("k0", "before the disk filled", "3l0")]);
    first.marks = vec![jetstream_at(100)];
    writer.apply(&first).unwrap();
    let used: i64 = store
        .reader()
        .unwrap()
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |row| row.get(0),
        )
        .unwrap();

    // A batch far larger than the room left: 200 documents of ~8 KB against 64 KB free.
    writer.limit_size(Some(used as u64 + 64 * 1024)).unwrap();
    let body = "words of a long post ".repeat(400);
    let mut big = batch(
        (1..=200)
            .map(|i| document(&format!("k{i}"), &format!("{i} {body}"), "3l1"))
            .collect(),
    );
    big.marks = vec![jetstream_at(200)];
    let error = writer
        .apply(&big)
        .expect_err("the batch fit on a full disk");
    assert_eq!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull),
        "{error}"
    );
    assert!(error.to_string().contains("full"), "{error}");
    // Nothing of it landed, the cursor stayed with the data, and the file is sound.
    assert_eq!(titles(&store).len(), 1);
    assert_eq!(
        read_cursor(&store.reader().unwrap(), "jetstream").unwrap(),
        Some(100)
    );
    store.check().expect("the store is sound after a full disk");

    // Space returns: the very same batch commits.
    writer.limit_size(None).unwrap();
    writer.apply(&big).unwrap();
    assert_eq!(titles(&store).len(), 201);
    assert_eq!(
        read_cursor(&store.reader().unwrap(), "jetstream").unwrap(),
        Some(200)
    );
    store.check().unwrap();
}
