//! The ranking function against FTS5's own bm25. Runs natively and, unchanged, as wasm under node.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::rank;
use pubsearch_shared::schema::{NAME_WEIGHT, TITLE_WEIGHT};
use pubsearch_shared::search::{self, SearchRequest};
use rusqlite::Connection;
use support::{now, open_fixture};

/// FTS5 expressions of every shape the query language produces: terms, prefixes, phrases,
/// several terms at once, alternatives and a column filter.
const EXPRESSIONS: &[&str] = &[
    "garden",
    "tom*",
    "\"heirloom tomatoes\"",
    "rust AND systems",
    "rust OR garden*",
    "title : tomatoes",
    "water",
];

/// `(matching rows, rows whose scores differ in any bit)` between FTS5's bm25 and ours on `index`.
fn compare(conn: &Connection, index: &str, weight: f64, expression: &str) -> (usize, usize) {
    let sql = format!(
        "SELECT bm25({index}, ?2, 1.0), {index}_bm25({index}, ?2, 1.0)
         FROM {index} WHERE {index} MATCH ?1"
    );
    let scores: Vec<(f64, f64)> = conn
        .prepare(&sql)
        .and_then(|mut statement| {
            statement
                .query_map((expression, weight), |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .unwrap_or_else(|e| panic!("{index} MATCH {expression}: {e}"));
    let differing = scores
        .iter()
        .filter(|(theirs, ours)| theirs.to_bits() != ours.to_bits())
        .count();
    (scores.len(), differing)
}

#[test]
fn scores_are_fts5_bm25_bit_for_bit() {
    let conn = open_fixture();
    let mut compared = 0;
    for expression in EXPRESSIONS {
        let (matching, differing) = compare(&conn, "documents_fts", TITLE_WEIGHT, expression);
        assert_eq!(differing, 0, "documents MATCH {expression}");
        compared += matching;
    }
    assert!(compared > 100, "only {compared} rows compared");
    let (matching, differing) = compare(&conn, "publications_fts", NAME_WEIGHT, "rust OR garden*");
    assert!(matching > 0);
    assert_eq!(differing, 0, "publications");
}

#[test]
fn rows_added_after_install_still_score_like_fts5() {
    let conn = open_fixture();
    let next: i64 = conn
        .query_row("SELECT max(rowid) + 1 FROM documents_fts", [], |row| {
            row.get(0)
        })
        .unwrap();
    let add = |rowid: i64, title: &str, content: &str| {
        conn.execute(
            "INSERT INTO documents_fts(rowid, title, content) VALUES (?1, ?2, ?3)",
            (rowid, title, content),
        )
        .unwrap();
    };
    // Install again over a gap in the rowids, then fill the gap, add a row past the end and
    // one far beyond any snapshot's rowids.
    add(next + 1, "Zebra notes", "zebra zebra garden");
    rank::install(&conn).unwrap();
    add(
        next,
        "Zebra gap",
        "one zebra, then a long garden of words to differ in length",
    );
    add(next + 2, "Zebra end", "zebra in the garden");
    add(1_000_000, "More zebras", "a zebra in the garden");
    for expression in ["zebra", "garden", "zebra garden"] {
        let (matching, differing) = compare(&conn, "documents_fts", TITLE_WEIGHT, expression);
        assert!(matching >= 4, "{expression}: the new rows match");
        assert_eq!(differing, 0, "{expression}");
    }
}

#[test]
fn search_needs_the_function_installed_and_says_so() {
    let mut fixture = open_fixture();
    let bytes = fixture.serialize(rusqlite::MAIN_DB).unwrap();
    let mut plain = Connection::open_in_memory().unwrap();
    plain
        .deserialize_read_exact(rusqlite::MAIN_DB, &bytes[..], bytes.len(), true)
        .unwrap();
    let request = SearchRequest::new("garden").unwrap();
    let error = search::search(&plain, &request, now())
        .unwrap_err()
        .to_string();
    assert!(error.contains("documents_fts_bm25"), "{error}");
}
