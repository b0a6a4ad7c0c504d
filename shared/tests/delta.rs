//! A base and its delta answer as one snapshot would (ARCHITECTURE.md, "Deltas"): delta rows
//! replace the base rows they mask, masked rows vanish from every endpoint, and both are scored
//! with their statistics added.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::delta::{self, Delta, Layers, MASK_DOCUMENT};
use pubsearch_shared::lookup;
use pubsearch_shared::search::{self, NoPrefetch, SearchRequest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotPublication, SnapshotWriter};
use rusqlite::Connection;

const BASE_ID: &str = "base-build";

fn snapshot(publications: &[SnapshotPublication], documents: &[SnapshotDocument]) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for publication in publications {
        writer.add_publication(publication).unwrap();
    }
    for document in documents {
        writer.add_document(document).unwrap();
    }
    writer.finish(support::WATERMARK_US).unwrap();
    conn
}

/// A delta of `documents` over `base`, hiding the base documents with `masked` URIs.
fn delta_over(base: &mut Connection, documents: &[SnapshotDocument], masked: &[&str]) -> Delta {
    let conn = snapshot(&[], documents);
    delta::create_tables(&conn).unwrap();
    conn.execute_batch("ATTACH ':memory:' AS base").unwrap();
    let mut conn = conn;
    let data = base.serialize("main").unwrap();
    conn.deserialize_read_exact("base", &data[..], data.len(), true)
        .unwrap();
    for uri in masked {
        let id: i64 = base
            .query_row("SELECT id FROM documents WHERE uri = ?1", [uri], |row| {
                row.get(0)
            })
            .unwrap();
        conn.execute(
            "INSERT INTO delta_masks (kind, id) VALUES (?1, ?2)",
            (MASK_DOCUMENT, id),
        )
        .unwrap();
    }
    delta::finish(&conn, "base", BASE_ID, None).unwrap();
    conn.execute_batch("DETACH base").unwrap();
    Delta::open(conn).unwrap()
}

fn uris(layers: Layers<'_>, query: &str) -> Vec<String> {
    let request = SearchRequest::from_params([("q", query), ("limit", "40")]).unwrap();
    search::search_layers(layers, &request, support::now(), &NoPrefetch)
        .unwrap()
        .results
        .into_iter()
        .map(|result| result.uri)
        .collect()
}

#[test]
fn a_corpus_split_into_base_and_delta_ranks_as_one_snapshot() {
    // Each a different age under the recency cap, so no two results tie: a tie is broken by
    // rowid in one snapshot and by layer across two.
    let mut documents = support::documents();
    for (n, document) in documents.iter_mut().enumerate() {
        let age_ms = (n as i64 + 1) * 3_600_000;
        document.created_at =
            pubsearch_shared::Timestamp::from_unix_millis(support::now().unix_millis() - age_ms)
                .unwrap();
    }
    let curated = documents.len() - 400;
    // The generated documents about orchards, and every seventh other, arrive in the delta
    // instead: its own statistics would differ from the whole's, so ranking tells whether the
    // two are scored as one index.
    let (mut in_base, mut in_delta) = (Vec::new(), Vec::new());
    for (n, document) in documents.iter().enumerate() {
        let orchard = document.content.split(' ').any(|word| word == "orchard");
        match n >= curated && (orchard || n % 7 == 0) {
            true => in_delta.push(document.clone()),
            false => in_base.push(document.clone()),
        }
    }
    let whole = snapshot(&support::publications(), &documents);
    search::prepare(&whole).unwrap();
    let mut base = snapshot(&support::publications(), &in_base);
    search::prepare(&base).unwrap();
    let delta = delta_over(&mut base, &in_delta, &[]);
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };
    let mut compared = 0;
    for query in [
        "rust",
        "tomato",
        "orchard",
        "orchard harbor",
        "quantum",
        "mea",
        "\"static site\"",
    ] {
        let expected = uris(Layers::base(&whole), query);
        assert_eq!(uris(layers, query), expected, "{query}");
        compared += expected.len();
    }
    assert!(
        compared > 100,
        "the queries must find something: {compared}"
    );
    assert_eq!(
        delta.served().documents,
        documents.len() as u64,
        "served together"
    );
}

#[test]
fn masked_rows_vanish_and_the_delta_copy_replaces_them() {
    let documents = support::documents();
    let mut base = snapshot(&support::publications(), &documents);
    search::prepare(&base).unwrap();
    let edited_uri = documents[0].uri.clone();
    let deleted_uri = documents[1].uri.clone();
    let old_title = documents[0].title.clone();
    let mut edited = documents[0].clone();
    edited.title = "Zanzibar rewritten".into();
    edited.tags = vec!["zanzibar".into()];
    let delta = delta_over(&mut base, &[edited], &[&edited_uri, &deleted_uri]);
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };

    // Search: the edit is found by its new title only, the deleted document not at all.
    assert_eq!(uris(layers, "zanzibar"), vec![edited_uri.clone()]);
    let old_word = old_title.split_whitespace().next().unwrap();
    let before = uris(Layers::base(&base), old_word);
    assert!(before.contains(&edited_uri), "{old_word}: {before:?}");
    let after = uris(layers, old_word);
    assert!(!after.contains(&edited_uri), "{old_word}: {after:?}");
    for word in documents[1].title.split_whitespace() {
        assert!(!uris(layers, word).contains(&deleted_uri), "{word}");
    }

    // Lookup: the delta's copy, and the deleted document missing.
    let found = lookup::documents_by_uri_in(layers, &[edited_uri.clone(), deleted_uri.clone()])
        .unwrap()
        .unwrap();
    assert_eq!(found.documents.len(), 1);
    assert_eq!(found.documents[0].title, "Zanzibar rewritten");
    assert_eq!(found.missing, vec![deleted_uri]);

    // Tags: the masked documents' tags no longer count, the delta's do.
    let count = |tags: &[lookup::TagCount], tag: &str| {
        tags.iter()
            .find(|t| t.tag == tag)
            .map_or(0, |t| t.documents)
    };
    let base_tags = lookup::top_tags(&base, 1000).unwrap();
    let served_tags = lookup::top_tags_in(layers, 1000).unwrap();
    let normalized = |document: &SnapshotDocument| -> Vec<String> {
        document
            .tags
            .iter()
            .filter_map(|tag| pubsearch_shared::schema::normalize_tag(tag))
            .collect()
    };
    let masked_tags: Vec<String> = normalized(&documents[0])
        .into_iter()
        .chain(normalized(&documents[1]))
        .collect();
    assert!(
        !masked_tags.is_empty(),
        "the fixture's first documents carry tags"
    );
    for tag in &masked_tags {
        let removed = [&documents[0], &documents[1]]
            .iter()
            .filter(|d| normalized(d).contains(tag))
            .count() as u64;
        assert_eq!(
            count(&served_tags, tag) + removed,
            count(&base_tags, tag),
            "{tag}"
        );
    }
    assert_eq!(count(&served_tags, "zanzibar"), 1);
    assert_eq!(delta.served().documents, documents.len() as u64 - 1);
    assert_eq!(delta.served().tags, served_tags.len() as u64);
}

#[test]
fn a_delta_for_another_base_is_refused() {
    let mut base = snapshot(&[], &support::documents()[..3]);
    let delta = delta_over(&mut base, &[], &[]);
    assert!(delta.check_base(BASE_ID).is_ok());
    let error = delta
        .check_base("some-other-build")
        .unwrap_err()
        .to_string();
    assert!(error.contains("overlays build base-build"), "{error}");
}

#[test]
fn handles_name_authors_and_a_rename_in_the_delta_wins() {
    let documents = support::documents();
    let author = documents[0].did.clone();
    let words: Vec<&str> = documents[0].title.split_whitespace().collect();
    let query = words[0].to_owned();
    let handles = |conn: &mut Connection, handle: &str| {
        conn.execute(
            "INSERT INTO handles (did, handle) VALUES (?1, ?2)",
            [author.as_str(), handle],
        )
        .unwrap();
    };
    let mut base = snapshot(&[], &documents);
    handles(&mut base, "alice.example.com");
    // The delta (over the base as written) before the base is readied for search.
    let delta = delta_over(&mut base, &[], &[]);
    search::prepare(&base).unwrap();
    let search = |layers: Layers<'_>, author: &str| {
        let request = SearchRequest::from_params([
            ("q", query.as_str()),
            ("author", author),
            ("limit", "40"),
        ])
        .unwrap();
        search::search_layers(layers, &request, support::now(), &NoPrefetch)
            .unwrap()
            .results
    };

    // By handle as by DID, and every result names its author's handle.
    let by_did = search(Layers::base(&base), &author);
    assert!(!by_did.is_empty());
    let by_handle = search(Layers::base(&base), "@Alice.example.com");
    assert_eq!(by_handle, by_did);
    assert!(
        by_did
            .iter()
            .all(|r| r.handle.as_deref() == Some("alice.example.com"))
    );
    assert!(search(Layers::base(&base), "nobody.example.com").is_empty());

    // The delta renames the author: the new handle finds them, the old one no longer does.
    let conn = delta.conn();
    conn.execute(
        "INSERT INTO handles (did, handle) VALUES (?1, 'alice2.example.com')",
        [author.as_str()],
    )
    .unwrap();
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };
    assert!(search(layers, "alice.example.com").is_empty());
    let renamed = search(layers, "alice2.example.com");
    assert_eq!(renamed.len(), by_did.len());
    assert!(
        renamed
            .iter()
            .all(|r| r.handle.as_deref() == Some("alice2.example.com"))
    );
    let uri = [renamed[0].uri.clone()];
    let found = lookup::documents_by_uri_in(layers, &uri).unwrap().unwrap();
    assert_eq!(
        found.documents[0].handle.as_deref(),
        Some("alice2.example.com")
    );
}

#[test]
fn without_words_an_author_is_listed_newest_first_across_base_and_delta() {
    let documents = support::documents();
    let author = "did:plc:gen0";
    let theirs: Vec<&SnapshotDocument> = documents.iter().filter(|d| d.did == author).collect();
    assert!(theirs.len() > 45, "enough for two pages");
    let mut base = snapshot(&[], &documents);
    // The delta edits one of their posts and adds a new one.
    let mut edited = theirs[3].clone();
    edited.title = "Edited title".into();
    let mut new = theirs[0].clone();
    new.uri = format!("at://{author}/com.whtwnd.blog.entry/brandnew");
    new.rkey = "brandnew".into();
    new.created_at = support::now();
    let delta = delta_over(
        &mut base,
        &[edited.clone(), new.clone()],
        &[edited.uri.as_str()],
    );
    search::prepare(&base).unwrap();
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };
    let list = |params: &[(&str, &str)]| {
        let mut all = vec![("author", author)];
        all.extend_from_slice(params);
        let request = SearchRequest::from_params(all).unwrap();
        search::search_layers(layers, &request, support::now(), &NoPrefetch).unwrap()
    };
    let first = list(&[("limit", "40")]);
    assert!(first.has_more);
    assert_eq!(first.next_offset, Some(40));
    let rest = list(&[("limit", "40"), ("offset", "40")]);
    let all: Vec<_> = first.results.iter().chain(&rest.results).collect();
    assert_eq!(
        all.len(),
        theirs.len() + 1,
        "every post once, the new one too"
    );
    assert_eq!(all[0].uri, new.uri, "newest first");
    assert!(
        all.windows(2)
            .all(|pair| pair[0].created_at >= pair[1].created_at)
    );
    assert!(all.iter().all(|result| result.did == author));
    let edited_copies: Vec<_> = all.iter().filter(|r| r.uri == edited.uri).collect();
    assert_eq!(edited_copies.len(), 1);
    assert_eq!(edited_copies[0].title, "Edited title", "the delta's copy");

    let platform = theirs[1].platform.as_str();
    let filtered = list(&[("limit", "40"), ("platform", platform)]);
    assert!(!filtered.results.is_empty());
    assert!(
        filtered
            .results
            .iter()
            .all(|r| r.platform.as_str() == platform)
    );
    // Without words or an author there is nothing to answer.
    assert!(SearchRequest::from_params([("limit", "40")]).is_err());
}
