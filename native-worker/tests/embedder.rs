//! The embedder keeps the store's document vectors current beside ingest (ARCHITECTURE.md,
//! "Embeddings"), and builds take those vectors instead of embedding: with the real static
//! model the test command installs, on real WAL store files.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pubsearch_native_worker::embedder::{self, Embedder, EmbedderOptions};
use pubsearch_native_worker::extract::{self, Extracted};
use pubsearch_native_worker::publish::build;
use pubsearch_native_worker::store::vectors::{self, Need, Position, VectorUpdate};
use pubsearch_native_worker::store::{Batch, Change, Store};
use pubsearch_shared::embed::model::{EmbeddingModel, document_text};
use pubsearch_shared::embed::table;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const COLLECTION: &str = "com.whtwnd.blog.entry";
const TOPICS: &[&str] = &[
    "baking sourdough bread with a levain starter",
    "sailing a small boat when the wind picks up",
    "a laptop battery that drains too quickly",
    "learning the violin as an adult",
    "growing tomatoes on a balcony garden",
];

fn model() -> Arc<EmbeddingModel> {
    let dir = std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        PathBuf::from,
    );
    let model = pubsearch_native_worker::embed::stored::load_or_distill(&dir)
        .unwrap_or_else(|e| panic!("{e}; scripts/install-toolchain.sh installs the model"));
    Arc::new(model)
}

fn title(n: usize) -> String {
    format!("Notes {n}")
}

fn text(n: usize) -> String {
    format!("Day {n} of {}.", TOPICS[n % TOPICS.len()])
}

fn document(n: usize, rev: &str, content: &str) -> Change {
    let body = json!({"$type": COLLECTION, "title": title(n), "content": content,
                      "createdAt": "2025-01-01T00:00:00Z", "visibility": "public"});
    match extract::extract("did:plc:writer", COLLECTION, &format!("r{n}"), &body).unwrap() {
        Extracted::Document(document) => Change::Document {
            document,
            rev: rev.into(),
        },
        Extracted::Publication(_) => unreachable!(),
    }
}

fn commit(store: &Store, changes: Vec<Change>) {
    let mut writer = store.writer().unwrap();
    writer
        .apply(&Batch {
            changes,
            marks: Vec::new(),
        })
        .unwrap();
}

/// Store ids by rkey number.
fn id_of(store: &Store, n: usize) -> i64 {
    store
        .reader()
        .unwrap()
        .query_row(
            "SELECT id FROM documents WHERE rkey = ?1",
            [format!("r{n}")],
            |row| row.get(0),
        )
        .unwrap()
}

fn start(store: &Store, model: &Arc<EmbeddingModel>) -> (Embedder, CancellationToken) {
    let stop = CancellationToken::new();
    let model = Arc::clone(model);
    let options = EmbedderOptions {
        // Pages smaller than a commit, so a page boundary falls inside one.
        page: 7,
        threads: 2,
        idle: Duration::from_millis(20),
        ..EmbedderOptions::default()
    };
    let embedder = embedder::spawn(store, move || Some(model), options, stop.clone()).unwrap();
    (embedder, stop)
}

/// Waits (bounded) until every live document has a current vector and the embedder has
/// looked again and found nothing left.
fn wait_until_current(store: &Store, model: &EmbeddingModel, embedder: &Embedder) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (current, live) = vectors::coverage(&store.reader().unwrap(), &model.name).unwrap();
        if current == live && embedder.stats().caught_up.load(Ordering::Relaxed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "vectors still behind after 60 s: {current} of {live}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stored_vector(store: &Store, model: &EmbeddingModel, n: usize) -> Option<Vec<u8>> {
    let id = id_of(store, n);
    vectors::current(&store.reader().unwrap(), &model.name, &[id])
        .unwrap()
        .remove(&id)
}

fn expected(model: &EmbeddingModel, n: usize, content: &str) -> Vec<u8> {
    table::pack(&model.embed(&document_text(&title(n), content)).unwrap())
}

fn vector_rows(store: &Store) -> i64 {
    store
        .reader()
        .unwrap()
        .query_row("SELECT count(*) FROM document_vectors", [], |row| {
            row.get(0)
        })
        .unwrap()
}

#[test]
fn every_live_document_gets_its_vector_and_edits_and_deletes_follow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let model = model();
    // Two commits of 30, so pages of 7 end inside commits.
    for first in [0, 30] {
        commit(
            &store,
            (first..first + 30)
                .map(|n| document(n, "1", &text(n)))
                .collect(),
        );
    }
    let (embedder, stop) = start(&store, &model);
    wait_until_current(&store, &model, &embedder);
    for n in 0..60 {
        assert_eq!(
            stored_vector(&store, &model, n),
            Some(expected(&model, n, &text(n))),
            "document {n}"
        );
    }
    assert_eq!(embedder.stats().embedded.load(Ordering::Relaxed), 60);
    stop.cancel();
    embedder.join();

    // An edit and a delete while it is stopped: the edit's old vector stops being current
    // the moment the edit commits.
    commit(
        &store,
        vec![
            document(3, "2", "Rewritten about the violin."),
            Change::Delete {
                did: "did:plc:writer".into(),
                collection: COLLECTION.into(),
                rkey: "r4".into(),
                rev: "2".into(),
            },
        ],
    );
    assert_eq!(stored_vector(&store, &model, 3), None);

    // Restarted, it resumes where it stopped: the edit gets the new text's vector, the delete
    // takes its vector with it, and nothing else is embedded again.
    let (embedder, stop) = start(&store, &model);
    wait_until_current(&store, &model, &embedder);
    assert_eq!(
        stored_vector(&store, &model, 3),
        Some(expected(&model, 3, "Rewritten about the violin."))
    );
    assert_eq!(
        vector_rows(&store),
        59,
        "the deleted document's vector is gone"
    );
    assert_eq!(embedder.stats().embedded.load(Ordering::Relaxed), 1);
    assert_eq!(embedder.stats().removed.load(Ordering::Relaxed), 1);
    // And it follows what is written while it runs.
    commit(&store, vec![document(60, "1", &text(60))]);
    wait_until_current(&store, &model, &embedder);
    assert_eq!(
        stored_vector(&store, &model, 60),
        Some(expected(&model, 60, &text(60)))
    );
    assert_eq!(embedder.stats().embedded.load(Ordering::Relaxed), 2);
    stop.cancel();
    embedder.join();
}

/// Packed vectors keyed by a document URI or a tree node.
type Keyed<K> = Vec<(K, Vec<u8>)>;

#[test]
fn the_embedder_waits_while_documents_are_written_fast_and_catches_up_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(&path).unwrap();
    let model = model();
    commit(
        &store,
        (0..20).map(|n| document(n, "1", &text(n))).collect(),
    );
    // Another writer of the same file (as a backfill beside `run` is): 5 documents every
    // 10 ms (fewer if commits are slow, still well above the threshold: 20 a second) for 1.5 s.
    let writing = std::thread::spawn(move || {
        let store = Store::open(&path).unwrap();
        let mut writer = store.writer().unwrap();
        let started = Instant::now();
        let mut n = 20;
        while started.elapsed() < Duration::from_millis(1_500) {
            let changes = (n..n + 5).map(|n| document(n, "1", &text(n))).collect();
            writer
                .apply(&Batch {
                    changes,
                    marks: Vec::new(),
                })
                .unwrap();
            n += 5;
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    });
    let stop = CancellationToken::new();
    let embedder = {
        let model = Arc::clone(&model);
        let options = EmbedderOptions {
            idle: Duration::from_millis(20),
            defer_above: 20,
            ..EmbedderOptions::default()
        };
        embedder::spawn(&store, move || Some(model), options, stop.clone()).unwrap()
    };
    let written = writing.join().unwrap();
    assert!(written > 100, "only {written} documents written");
    assert_eq!(
        embedder.stats().embedded.load(Ordering::Relaxed),
        0,
        "embedded while {written} documents were written in 1.5 s"
    );
    // Writes stopped: it catches up with all of them.
    wait_until_current(&store, &model, &embedder);
    assert_eq!(
        embedder.stats().embedded.load(Ordering::Relaxed),
        written as u64
    );
    stop.cancel();
    embedder.join();
}

/// The vectors a snapshot holds, by document URI, and its tree's centroids.
fn snapshot_vectors(path: &std::path::Path) -> (Keyed<String>, Keyed<i64>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let vectors = conn
        .prepare(
            "SELECT d.uri, v.vector FROM document_vectors AS v JOIN documents AS d ON d.id = v.id
             ORDER BY d.uri",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let nodes = conn
        .prepare("SELECT node, centroid FROM vector_nodes ORDER BY node")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    (vectors, nodes)
}

#[test]
fn builds_take_the_stored_vectors_and_embed_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let model = model();
    // 450 documents: a tree with leaves below the root.
    let changes = || (0..450).map(|n| document(n, "1", &text(n))).collect();
    let embedded = Store::open(dir.path().join("embedded.db")).unwrap();
    commit(&embedded, changes());
    let (embedder, stop) = start(&embedded, &model);
    wait_until_current(&embedded, &model, &embedder);
    stop.cancel();
    embedder.join();
    // One more written after the embedder stopped: the build embeds it itself.
    commit(&embedded, vec![document(450, "1", &text(450))]);
    let bare = Store::open(dir.path().join("bare.db")).unwrap();
    commit(&bare, changes());
    commit(&bare, vec![document(450, "1", &text(450))]);

    let build = |store: &Store, name: &str| {
        let out = dir.path().join(name);
        build::build_with(store, &out, name, "main", Some(&model), |_, _| {}).unwrap();
        snapshot_vectors(&out)
    };
    // Whichever way its vectors came, the build is the same.
    let from_store = build(&embedded, "from-store.db");
    let from_text = build(&bare, "from-text.db");
    assert_eq!(from_store.0.len(), 451);
    assert!(from_store.1.len() > 3, "a tree, not one leaf");
    assert_eq!(from_store, from_text);

    // And the build reads the store's vector: one planted in the store is the one served.
    let (planted, other) = (id_of(&embedded, 7), id_of(&embedded, 8));
    let writer = rusqlite::Connection::open(embedded.path()).unwrap();
    writer
        .execute(
            "UPDATE document_vectors SET vector = (SELECT vector FROM document_vectors
                                                   WHERE document_id = ?2)
             WHERE document_id = ?1",
            [planted, other],
        )
        .unwrap();
    let (vectors, _) = build(&embedded, "planted.db");
    let of = |rkey: &str| {
        vectors
            .iter()
            .find(|(uri, _)| uri.ends_with(rkey))
            .map(|(_, vector)| vector.clone())
            .unwrap()
    };
    assert_eq!(of("/r7"), of("/r8"));
    assert_eq!(of("/r8"), expected(&model, 8, &text(8)));
}

#[test]
fn an_edit_committed_while_its_page_is_embedded_is_never_served_the_old_vector() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let model = model();
    commit(&store, (0..3).map(|n| document(n, "1", &text(n))).collect());
    // The embedder's steps, with an edit of document 1 between reading the page and storing
    // its vectors.
    let reader = store.reader().unwrap();
    let page = vectors::pending(&reader, &model.name, Position::default(), 10).unwrap();
    assert_eq!(page.len(), 3);
    commit(&store, vec![document(1, "2", "Rewritten about tomatoes.")]);
    let update = VectorUpdate {
        vectors: page
            .iter()
            .map(|pending| match &pending.need {
                Need::Vector { title, content } => (
                    pending.at.id,
                    pending.at.stamp,
                    table::pack(&model.embed(&document_text(title, content)).unwrap()),
                ),
                other => panic!("a new document needs a vector, not {other:?}"),
            })
            .collect(),
        removed: Vec::new(),
        reached: page.last().unwrap().at,
    };
    store
        .vector_writer()
        .unwrap()
        .apply(&model.name, &update)
        .unwrap();
    // The old text's vector is stored but not current, and the edit is still owed.
    assert_eq!(stored_vector(&store, &model, 1), None);
    assert_eq!(
        stored_vector(&store, &model, 0),
        Some(expected(&model, 0, &text(0)))
    );
    let resumed = vectors::resume_position(&reader, &model.name).unwrap();
    let owed = vectors::pending(&reader, &model.name, resumed, 10).unwrap();
    let edited = owed
        .iter()
        .find(|pending| pending.at.id == id_of(&store, 1))
        .expect("the edited document is visited again");
    assert_eq!(
        edited.need,
        Need::Vector {
            title: title(1),
            content: "Rewritten about tomatoes.".into()
        }
    );
}

/// The nice value of each of this process's threads named `name` (Linux's /proc).
#[cfg(target_os = "linux")]
fn nice_of_threads(name: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis, from the state (field 3): the nice
        // value is field 19.
        if let Some((_, fields)) = stat.rsplit_once(") ") {
            nice.push(fields.split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    nice
}

#[cfg(target_os = "linux")]
#[test]
fn the_embedder_runs_at_the_lowest_cpu_priority() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    // Its loader waits until the thread has been looked at.
    let (looked, release) = std::sync::mpsc::channel::<()>();
    let (loading, started) = std::sync::mpsc::channel::<()>();
    let stop = CancellationToken::new();
    let embedder = embedder::spawn(
        &store,
        move || {
            loading.send(()).unwrap();
            release.recv_timeout(Duration::from_secs(30)).ok();
            None
        },
        EmbedderOptions::default(),
        stop.clone(),
    )
    .unwrap();
    started.recv_timeout(Duration::from_secs(30)).unwrap();
    let nice = nice_of_threads("embedder");
    looked.send(()).unwrap();
    embedder.join();
    assert!(!nice.is_empty(), "no thread named embedder");
    assert!(
        nice.iter().all(|&n| n == 19),
        "embedder threads' nice values: {nice:?}"
    );
}
