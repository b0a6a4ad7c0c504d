//! Related posts (ARCHITECTURE.md, "Serving"; `similar`): a document's distinctive terms find
//! the documents on its topic, worded differently, ahead of the rest; never itself or its
//! cross-posts; across a base and its delta; and nothing from a build without terms.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::delta::{self, Delta, Layers};
use pubsearch_shared::search::{self, NoPrefetch, SearchRequest};
use pubsearch_shared::similar;
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotWriter};
use rusqlite::Connection;

fn entry(did: &str, rkey: &str, title: &str, content: &str) -> SnapshotDocument {
    support::whitewind_entry(did, rkey, title, content)
}

/// Three posts on sourdough, worded differently; one on sailing; a cross-post of the first.
fn topical() -> Vec<SnapshotDocument> {
    vec![
        entry(
            "did:plc:baker",
            "a",
            "Keeping a sourdough starter alive",
            "Feed the starter flour and water daily; hydration and fermentation temperature decide the crumb of the loaf.",
        ),
        entry(
            "did:plc:miller",
            "b",
            "Why my loaf collapsed",
            "Overproofed dough: the fermentation ran too long, the starter too lively, hydration too high for this flour.",
        ),
        entry(
            "did:plc:crumb",
            "c",
            "Levain notes",
            "A stiff levain, lower hydration, slower fermentation, and the loaf holds its shape. Flour matters.",
        ),
        entry(
            "did:plc:sailor",
            "d",
            "Reefing the mainsail",
            "When the wind builds, reef early: ease the halyard, tension the reef line, and the boat stands up.",
        ),
        entry(
            "did:plc:baker",
            "a2",
            "Keeping a sourdough starter alive",
            "Feed the starter flour and water daily; hydration and fermentation temperature decide the crumb of the loaf.",
        ),
    ]
}

/// Everyday posts, so the words every post uses are as common as in a real corpus.
fn everyday(count: usize) -> Vec<SnapshotDocument> {
    (0..count)
        .map(|i| {
            entry("did:plc:diarist", &format!("day{i}"), "A day",
                "Up early: the morning and the evening, when the light was low and the day was done; the boat of a neighbour, the loaf on the table.")
        })
        .collect()
}

fn build(documents: &[SnapshotDocument]) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for document in documents {
        writer.add_document(document).unwrap();
    }
    writer.finish(support::WATERMARK_US).unwrap();
    conn
}

fn related(layers: Layers<'_>, uri: &str) -> Option<Vec<String>> {
    let request = SearchRequest::from_params([("q", "x"), ("limit", "10")]).unwrap();
    similar::similar(layers, uri, &request, support::now(), &NoPrefetch)
        .unwrap()
        .map(|page| page.results.into_iter().map(|result| result.uri).collect())
}

fn uri(rkey: &str, did: &str) -> String {
    format!("at://{did}/com.whtwnd.blog.entry/{rkey}")
}

#[test]
fn a_post_finds_others_on_its_topic_first_and_never_itself() {
    let mut documents = topical();
    documents.extend(support::generated(200));
    documents.extend(everyday(40));
    let conn = build(&documents);
    search::prepare(&conn).unwrap();
    let found = related(Layers::base(&conn), &uri("a", "did:plc:baker")).unwrap();
    assert!(found.len() >= 2, "{found:?}");
    let mut first_two = found[..2].to_vec();
    first_two.sort();
    assert_eq!(
        first_two,
        [uri("c", "did:plc:crumb"), uri("b", "did:plc:miller")]
    );
    assert!(!found.contains(&uri("a", "did:plc:baker")), "not itself");
    assert!(
        !found.contains(&uri("a2", "did:plc:baker")),
        "not its cross-post"
    );
    assert!(
        !found.contains(&uri("d", "did:plc:sailor")),
        "not another topic"
    );

    let terms: String = conn
        .query_row(
            "SELECT terms FROM document_terms JOIN documents USING (id) WHERE uri = ?1",
            [uri("a", "did:plc:baker")],
            |row| row.get(0),
        )
        .unwrap();
    let terms: Vec<&str> = terms.split(' ').collect();
    assert!(terms.len() <= similar::TERMS_PER_DOCUMENT);
    assert!(
        terms.contains(&"sourdough") || terms.contains(&"starter"),
        "{terms:?}"
    );
    assert!(
        !terms.contains(&"the"),
        "a word in most documents says nothing: {terms:?}"
    );

    assert_eq!(
        related(Layers::base(&conn), "at://did:plc:nobody/x/y"),
        None
    );

    // Pages are cut from one list: the post itself is left out before paging, not after.
    let page = |offset: &str, limit: &str| {
        let request =
            SearchRequest::from_params([("q", "x"), ("limit", limit), ("offset", offset)]).unwrap();
        let source = uri("a", "did:plc:baker");
        let now = support::now();
        similar::similar(Layers::base(&conn), &source, &request, now, &NoPrefetch)
            .unwrap()
            .unwrap()
    };
    let whole = page("0", "2");
    let (first, second) = (page("0", "1"), page("1", "1"));
    assert_eq!(first.next_offset, Some(1));
    let joined: Vec<_> = first
        .results
        .iter()
        .chain(&second.results)
        .map(|r| &r.uri)
        .collect();
    let expected: Vec<_> = whole.results.iter().map(|r| &r.uri).collect();
    assert_eq!(joined, expected);
}

#[test]
fn a_post_in_the_delta_finds_related_posts_in_the_base_and_back() {
    let mut base_documents = topical();
    base_documents.retain(|document| document.rkey != "c");
    base_documents.extend(support::generated(200));
    base_documents.extend(everyday(40));
    let mut base = build(&base_documents);
    // The delta brings the third sourdough post.
    let mut conn = build(&[topical().remove(2)]);
    delta::create_tables(&conn).unwrap();
    conn.execute_batch("ATTACH ':memory:' AS base").unwrap();
    let data = base.serialize("main").unwrap();
    conn.deserialize_read_exact("base", &data[..], data.len(), true)
        .unwrap();
    delta::finish(&conn, "base", "base-build", None).unwrap();
    conn.execute_batch("DETACH base").unwrap();
    let delta = Delta::open(conn).unwrap();
    search::prepare(&base).unwrap();
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };
    let from_delta = related(layers, &uri("c", "did:plc:crumb")).unwrap();
    assert!(
        from_delta[..2].contains(&uri("a", "did:plc:baker")),
        "{from_delta:?}"
    );
    assert!(
        from_delta[..2].contains(&uri("b", "did:plc:miller")),
        "{from_delta:?}"
    );
    let from_base = related(layers, &uri("b", "did:plc:miller")).unwrap();
    assert!(
        from_base[..2].contains(&uri("c", "did:plc:crumb")),
        "{from_base:?}"
    );

    // A build from before terms were kept finds the document but nothing related.
    base.execute_batch("DROP TABLE document_terms").unwrap();
    assert_eq!(
        related(Layers::base(&base), &uri("b", "did:plc:miller")),
        Some(Vec::new())
    );
}
