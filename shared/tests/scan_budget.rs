//! The scan budget: a query examines at most `SCAN_BUDGET` matches per index, the newest (lowest
//! ids), so a common word costs the same whatever the corpus size (ARCHITECTURE.md invariant 1).

use pubsearch_shared::search::{self, SCAN_BUDGET, SearchPage, SearchRequest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotWriter};
use pubsearch_shared::{Platform, Timestamp};
use rusqlite::Connection;

/// Documents past the budget: every one of them matches `common`.
const BEYOND: usize = 500;

fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
}

fn document(n: usize, title: &str, content: &str) -> SnapshotDocument {
    let did = format!("did:plc:author{}", n % 50);
    SnapshotDocument {
        uri: format!("at://{did}/site.standard.document/d{n}"),
        rkey: format!("d{n}"),
        did,
        collection: "site.standard.document".into(),
        platform: Platform::Leaflet,
        title: title.into(),
        content: content.into(),
        // All the same age: only the budget, not recency, decides what is examined.
        created_at: Timestamp::parse("2026-05-01T00:00:00Z").unwrap(),
        indexed_at_us: 1,
        publication_uri: None,
        base_path: None,
        path: None,
        tags: vec!["budget".into()],
        cover_image: None,
    }
}

/// `SCAN_BUDGET + BEYOND` documents, all matching `common`. The last (highest id, so the last
/// examined) is by far the best match for it and the only one holding `zebra`; its author wrote
/// nothing else.
fn corpus() -> Connection {
    let total = SCAN_BUDGET as usize + BEYOND;
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for n in 1..total {
        let content = format!(
            "a long ordinary post {n} that mentions common once among many other words here"
        );
        let title = format!("ordinary post {n}");
        writer.add_document(&document(n, &title, &content)).unwrap();
    }
    let mut best = document(total, "common common common", "common common zebra");
    best.did = "did:plc:loner".into();
    best.uri = "at://did:plc:loner/site.standard.document/best".into();
    writer.add_document(&best).unwrap();
    writer.finish(1).unwrap();
    search::prepare(&conn).unwrap();
    conn
}

fn run(conn: &Connection, pairs: &[(&str, &str)]) -> SearchPage {
    let request = SearchRequest::from_params(pairs.iter().copied()).unwrap();
    search::search(conn, &request, now()).unwrap()
}

fn has_best(page: &SearchPage) -> bool {
    page.results
        .iter()
        .any(|result| result.uri.ends_with("/best"))
}

#[test]
fn a_common_word_is_answered_from_the_matches_inside_the_budget() {
    let conn = corpus();
    let page = run(&conn, &[("q", "common"), ("limit", "40")]);
    assert_eq!(page.results.len(), 40);
    assert!(
        !has_best(&page),
        "the best match lies past the budget and must not be examined"
    );
    // The match past the budget is still found by what only it contains.
    assert!(has_best(&run(&conn, &[("q", "zebra")])));
    assert!(has_best(&run(&conn, &[("q", "common zebra")])));
}

#[test]
fn filters_test_the_matches_inside_the_budget_without_extending_it() {
    let conn = corpus();
    let by_loner = [("q", "common"), ("author", "did:plc:loner")];
    assert!(run(&conn, &by_loner).results.is_empty());
    let tagged = run(
        &conn,
        &[("q", "common"), ("tag", "budget"), ("limit", "40")],
    );
    assert_eq!(tagged.results.len(), 40);
    assert!(!has_best(&tagged));
    assert!(has_best(&run(
        &conn,
        &[("q", "zebra"), ("author", "did:plc:loner")]
    )));
}

#[test]
fn paging_runs_through_the_budget_and_stops_there() {
    let conn = corpus();
    // Every page comes from the same examined matches: no result repeats and none is the one
    // past the budget, down to the deepest offset served.
    let mut seen = std::collections::HashSet::new();
    let mut offset = 0;
    loop {
        let page = run(
            &conn,
            &[
                ("q", "common"),
                ("limit", "40"),
                ("offset", &offset.to_string()),
            ],
        );
        assert!(!has_best(&page));
        for result in &page.results {
            assert!(seen.insert(result.uri.clone()), "{} repeated", result.uri);
        }
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    // The last page starts at the deepest offset served.
    assert_eq!(seen.len(), search::MAX_OFFSET as usize + 40);
}
