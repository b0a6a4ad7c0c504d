//! Deltas (ARCHITECTURE.md, "Deltas"): after new posts, edits, deletes, a takedown, a ban and a
//! cross-post whose first copy goes, the live base plus a published delta answers exactly as a
//! whole build of the store at that moment would; the pointer names both; a stale delta is
//! refused.

mod support;

use std::path::{Path, PathBuf};

use pubsearch_native_worker::publish::objects::{ObjectError, ObjectTarget};
use pubsearch_native_worker::publish::{self, PublishOptions, build};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::store::{Batch, Change, Store};
use pubsearch_shared::delta::{Delta, Layers};
use pubsearch_shared::lookup;
use pubsearch_shared::manifest::Manifest;
use pubsearch_shared::search::{self, NoPrefetch, SearchRequest};
use rusqlite::{Connection, OpenFlags};

const AUTHORS: [&str; 4] = [
    "did:plc:alice",
    "did:plc:bob",
    "did:plc:carol",
    "did:plc:dave",
];
const WORDS: [&str; 8] = [
    "garden", "river", "protocol", "essay", "bread", "winter", "signal", "harbor",
];

fn options() -> PublishOptions {
    PublishOptions {
        channel: "prod".into(),
        force: false,
        keep: 5,
    }
}

/// A whitewind entry at revision `rev`, tagged with its first word.
fn entry(did: &str, rkey: &str, title: &str, content: &str, rev: &str) -> Change {
    let body = serde_json::json!({"$type": "com.whtwnd.blog.entry", "title": title,
        "content": content, "visibility": "public", "createdAt": "2025-03-01T00:00:00Z",
        "tags": [content.split(' ').next().unwrap()]});
    match pubsearch_native_worker::extract::extract(did, "com.whtwnd.blog.entry", rkey, &body)
        .unwrap()
    {
        pubsearch_native_worker::extract::Extracted::Document(document) => Change::Document {
            document,
            rev: rev.into(),
        },
        pubsearch_native_worker::extract::Extracted::Publication(_) => unreachable!(),
    }
}

fn delete(did: &str, rkey: &str) -> Change {
    Change::Delete {
        did: did.into(),
        collection: "com.whtwnd.blog.entry".into(),
        rkey: rkey.into(),
        rev: "3l9".into(),
    }
}

fn apply(store: &Store, changes: Vec<Change>) {
    store
        .writer()
        .unwrap()
        .apply(&Batch {
            changes,
            marks: Vec::new(),
        })
        .unwrap();
}

/// Sixty posts by four authors, two of them the same cross-posted text.
fn first_posts() -> Vec<Change> {
    let mut changes: Vec<Change> = (0..60)
        .map(|n| {
            let content: Vec<&str> = (0..10 + n % 7).map(|j| WORDS[(n * 3 + j) % 8]).collect();
            entry(
                AUTHORS[n % 4],
                &format!("3k{n:04}"),
                &format!("Post {n} on {}", WORDS[n % 8]),
                &content.join(" "),
                "3l1",
            )
        })
        .collect();
    for did in ["did:plc:alice", "did:plc:dave"] {
        changes.push(entry(
            did,
            "3kcross",
            "Tidal notes",
            "tidal gardens twice",
            "3l1",
        ));
    }
    changes
}

/// What changes after the base: a new post, an edit, a delete, a takedown (bob), a ban (carol)
/// and the first copy of the cross-post deleted (dave's copy is served from then on).
fn later_changes(store: &Store) {
    apply(
        store,
        vec![
            entry(
                "did:plc:alice",
                "3knew",
                "Fresh lighthouse",
                "lighthouse keepers",
                "3l1",
            ),
            entry(
                "did:plc:dave",
                "3k0003",
                "Renamed aurora",
                "aurora borealis",
                "3l2",
            ),
            delete("did:plc:alice", "3k0004"),
            delete("did:plc:alice", "3kcross"),
            Change::Account {
                did: "did:plc:bob".into(),
                active: false,
                status: Some("takendown".into()),
                version: 1,
            },
        ],
    );
    store
        .writer()
        .unwrap()
        .replace_banned_dids(&["did:plc:carol".into()])
        .unwrap();
}

fn open(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn searched(layers: Layers<'_>, query: &str) -> Vec<String> {
    let request = SearchRequest::from_params([("q", query), ("limit", "40")]).unwrap();
    let now = pubsearch_shared::Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let mut uris: Vec<String> = search::search_layers(layers, &request, now, &NoPrefetch)
        .unwrap()
        .results
        .into_iter()
        .map(|result| result.uri)
        .collect();
    uris.sort();
    uris
}

fn published(target_dir: &Path, manifest: &Manifest) -> PathBuf {
    target_dir.join(&manifest.artifact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_and_delta_answer_as_a_whole_build_of_the_store_would() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_path(dir.path())).unwrap();
    apply(&store, first_posts());
    let target_dir = dir.path().join("published");
    let target = ObjectTarget::local(&target_dir).unwrap();
    let work = dir.path().join("work");
    let base = publish::publish_once(&store, &work, &target, &options())
        .await
        .unwrap();

    later_changes(&store);
    let delta = publish::publish_delta_once(&store, &work, &target, &options())
        .await
        .unwrap();
    assert_eq!(delta.base_build_id.as_deref(), Some(base.build_id.as_str()));
    let pointer = target.current("prod").await.unwrap().unwrap();
    assert_eq!(pointer.build_id, base.build_id, "the base stays live");
    assert_eq!(pointer.delta.as_deref(), Some(&delta.pointer()));
    assert_eq!(pointer.served_watermark_us(), delta.source_watermark_us);

    // A whole build of the store as it is now: what base and delta must answer together.
    let whole = build::build(
        &store,
        &dir.path().join("whole.db"),
        "whole",
        "prod",
        |_, _| {},
    )
    .unwrap();
    let whole_conn = open(&whole.path);
    search::prepare(&whole_conn).unwrap();
    let base_conn = open(&published(&target_dir, &base));
    search::prepare(&base_conn).unwrap();
    let overlay = Delta::open(open(&published(&target_dir, &delta))).unwrap();
    overlay.check_base(&base.build_id).unwrap();
    let layers = Layers {
        base: &base_conn,
        delta: Some(&overlay),
    };
    let mut found = 0;
    for query in WORDS
        .iter()
        .chain(&["lighthouse", "aurora", "tidal", "post", "renamed"])
    {
        let expected = searched(Layers::base(&whole_conn), query);
        assert_eq!(searched(layers, query), expected, "{query}");
        found += expected.len();
    }
    assert!(found > 40, "the queries find documents: {found}");
    assert_eq!(searched(layers, "lighthouse").len(), 1, "the new post");
    assert_eq!(
        searched(layers, "tidal"),
        ["at://did:plc:dave/com.whtwnd.blog.entry/3kcross"],
        "the remaining copy of the cross-post"
    );
    for gone in ["bob", "carol"] {
        let author = format!("did:plc:{gone}");
        assert!(
            !searched(layers, "post")
                .iter()
                .any(|uri| uri.contains(&author)),
            "{gone}'s posts are hidden"
        );
    }

    // Every document the store ever had, looked up: found and missing exactly as in the whole.
    let uris = support::document_uris(&store_path(dir.path()));
    for batch in uris.chunks(lookup::MAX_URIS) {
        let answer = |layers| lookup::documents_by_uri_in(layers, batch).unwrap().unwrap();
        assert_eq!(answer(layers), answer(Layers::base(&whole_conn)));
    }
    assert_eq!(
        lookup::top_tags_in(layers, 100).unwrap(),
        lookup::top_tags(&whole_conn, 100).unwrap()
    );
    assert_eq!(overlay.served(), whole.manifest.counts);

    // The search CLI reads the pair the same way.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .arg("search")
        .arg("--snapshot")
        .arg(published(&target_dir, &base))
        .arg("--delta")
        .arg(published(&target_dir, &delta))
        .arg("lighthouse")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Fresh lighthouse"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_needs_a_base_and_never_lands_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_path(dir.path())).unwrap();
    apply(&store, first_posts());
    let target = ObjectTarget::local(&dir.path().join("published")).unwrap();
    let work = dir.path().join("work");
    let error = publish::publish_delta_once(&store, &work, &target, &options())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("publish a base first"), "{error}");

    publish::publish_once(&store, &work, &target, &options())
        .await
        .unwrap();
    later_changes(&store);
    let delta = publish::publish_delta_once(&store, &work, &target, &options())
        .await
        .unwrap();
    // A new base replaces the pointer (and its delta); the old delta cannot come back.
    apply(
        &store,
        vec![entry("did:plc:dave", "3klate", "Late", "late words", "3l1")],
    );
    let newer = publish::publish_once(&store, &work, &target, &options())
        .await
        .unwrap();
    let refused = target.advance_delta(&delta).await.unwrap_err();
    assert!(
        matches!(&refused, ObjectError::BaseMoved { live: Some(live), .. } if *live == newer.build_id),
        "{refused}"
    );
    assert_eq!(target.current("prod").await.unwrap().unwrap().delta, None);
}
