//! The SQL functions search registers, against FTS5's own: our bm25 against `bm25()`, our
//! snippet against `snippet()`. Runs natively and, unchanged, as wasm under node.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::schema::{NAME_WEIGHT, TITLE_WEIGHT};
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotWriter};
use rusqlite::Connection;
use support::{now, open_fixture};

/// FTS5 expressions of every shape the query language produces (terms, prefixes, phrases,
/// several terms at once, alternatives, a column filter) and NEAR, which it does not.
const EXPRESSIONS: &[&str] = &[
    "garden",
    "tom*",
    "\"heirloom tomatoes\"",
    "rust AND systems",
    "rust OR garden*",
    "title : tomatoes",
    "water",
    "NEAR(tomatoes water, 4)",
    "NEAR(rust systems) OR garden",
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
    search::prepare(&conn).unwrap();
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

/// Every filter the search statement can pass the document filter, as
/// `(platform, since, author, in a publication)`; `None` filters nothing.
fn filter_cases(conn: &Connection) -> Vec<[Option<String>; 4]> {
    let boundary: String = conn
        .query_row(
            "SELECT created_at FROM documents ORDER BY created_at LIMIT 1 OFFSET 100",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let platforms = [None, Some("leaflet"), Some("whitewind"), Some("nowhere")];
    let sinces = [
        None,
        Some(boundary.as_str()),
        Some("2025-06-01T00:00:00.000Z"),
        Some("2024-01-01T00:00:00.000Z"),
        Some("2024"),
    ];
    let authors = [None, Some("did:plc:gen1"), Some("did:plc:nobody")];
    let kinds = [None, Some("1"), Some("0")];
    let mut cases = Vec::new();
    for platform in platforms {
        for since in sinces {
            for author in authors {
                for kind in kinds {
                    cases.push([platform, since, author, kind].map(|v| v.map(str::to_owned)));
                }
            }
        }
    }
    cases
}

#[test]
fn document_filter_answers_as_sql_does_on_every_row() {
    let conn = open_fixture();
    // A date that is not canonical text: the facts must leave that row to SQL. Dropping the
    // built facts makes `prepare` derive them from the rows as they are now, as it does for a
    // snapshot older than schema 6.
    conn.execute_batch(
        "UPDATE documents SET created_at = '2024-01-01' WHERE id = (SELECT min(id) FROM documents);
         DROP TABLE document_facts; DROP TABLE document_authors;",
    )
    .unwrap();
    search::prepare(&conn).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT pubsearch_document_filter(id, ?1, ?2,
                        CASE WHEN ?3 IS NOT NULL
                             THEN coalesce((SELECT n FROM document_authors WHERE did = ?3), -1) END,
                        CAST(?4 AS INTEGER)),
                    (?1 IS NULL OR platform = ?1) AND (?2 IS NULL OR created_at >= ?2)
                    AND (?3 IS NULL OR did = ?3)
                    AND (?4 IS NULL OR (publication_uri IS NOT NULL) = CAST(?4 AS INTEGER))
             FROM documents",
        )
        .unwrap();
    let (mut passed, mut failed) = (0, 0);
    for case in filter_cases(&conn) {
        let answers: Vec<(Option<bool>, bool)> = statement
            .query_map(rusqlite::params_from_iter(&case), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let unanswered = answers.iter().filter(|(ours, _)| ours.is_none()).count();
        // Only a `since` filter needs the date, and only the odd date goes to SQL.
        let expected = usize::from(case[1].is_some());
        assert_eq!(
            unanswered, expected,
            "{case:?}: only the odd date goes to SQL"
        );
        for (ours, sql) in answers {
            if let Some(ours) = ours {
                assert_eq!(ours, sql, "{case:?}");
                if sql { passed += 1 } else { failed += 1 }
            }
        }
    }
    assert!(
        passed > 1_000 && failed > 1_000,
        "{passed} passed, {failed} failed"
    );
}

#[test]
fn documents_added_after_prepare_are_filtered_by_sql() {
    let conn = open_fixture();
    conn.execute(
        "INSERT INTO documents (uri, did, rkey, collection, platform, created_at, indexed_at,
                                title)
         VALUES ('at://did:plc:late/site.standard.document/z', 'did:plc:late', 'z',
                 'site.standard.document', 'pckt', '2026-05-01T00:00:00.000Z', 1,
                 'Zebra late')",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO document_bodies (id, content) VALUES (last_insert_rowid(), 'a zebra arrives')",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO documents_fts (rowid, title, content)
         SELECT d.id, d.title, b.content FROM documents AS d JOIN document_bodies AS b ON b.id = d.id
         WHERE d.did = 'did:plc:late'",
        [],
    )
    .unwrap();
    let found = |filters: &[(&str, &str)]| {
        let mut params = vec![("q", "zebra")];
        params.extend_from_slice(filters);
        let request = SearchRequest::from_params(params).unwrap();
        search::search(&conn, &request, now())
            .unwrap()
            .results
            .len()
    };
    assert_eq!(found(&[]), 1);
    assert_eq!(
        found(&[("author", "did:plc:late"), ("platform", "pckt")]),
        1
    );
    assert_eq!(found(&[("since", "2026-05-01"), ("type", "looseleaf")]), 1);
    assert_eq!(found(&[("author", "did:plc:gen1")]), 0);
    assert_eq!(found(&[("platform", "leaflet")]), 0);
    assert_eq!(found(&[("since", "2026-05-02")]), 0);
    assert_eq!(found(&[("type", "article")]), 0);
}

/// Documents made to stress the snippet: long texts with matches near the start, the middle and
/// the end, sentences ending in `.` and `:`, line breaks, repeated and adjacent words, accents
/// and emoji.
fn snippet_corpus() -> Connection {
    const WORDS: &[&str] = &[
        "alpha", "beta", "gamma", "delta", "café", "naïve", "rocket", "🚀", "tea", "x",
    ];
    const BREAKS: &[&str] = &[" ", " ", " ", ", ", ". ", ": ", "\n", ".\n\n", " - "];
    let template = support::documents().remove(0);
    let mut seed = 7u64;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for i in 0..60 {
        let words = [3, 20, 40, 300, 2000][i % 5];
        let mut content = String::new();
        for _ in 0..words {
            content.push_str(WORDS[next(WORDS.len())]);
            content.push_str(BREAKS[next(BREAKS.len())]);
        }
        writer
            .add_document(&SnapshotDocument {
                uri: format!("at://did:plc:snippets/site.standard.document/{i}"),
                rkey: i.to_string(),
                title: format!("{} {}", WORDS[next(WORDS.len())], WORDS[next(WORDS.len())]),
                content,
                ..template.clone()
            })
            .unwrap();
    }
    writer.finish(support::WATERMARK_US).unwrap();
    search::prepare(&conn).unwrap();
    conn
}

#[test]
fn snippets_are_fts5_snippets_byte_for_byte() {
    let corpus = snippet_corpus();
    let fixture = open_fixture();
    let cases: &[(&Connection, &str)] = &[
        (&corpus, "rocket"),
        (&corpus, "cafe"),
        (&corpus, "tea OR x"),
        (&corpus, "\"alpha beta\""),
        (&corpus, "\"tea tea\" OR gamma"),
        (&corpus, "del* naive"),
        (&corpus, "title : alpha"),
        (&fixture, "garden"),
        (&fixture, "tom*"),
        (&fixture, "rust OR systems"),
    ];
    let mut compared = 0;
    for &(conn, expression) in cases {
        for column in [0, 1] {
            for tokens in [0, 1, 7, 24, 64] {
                let args = format!("{column}, '[', ']', '…', {tokens}");
                let sql = format!(
                    "SELECT rowid, snippet(documents_fts, {args}), pubsearch_snippet(documents_fts, {args})
                     FROM documents_fts WHERE documents_fts MATCH ?1"
                );
                let mut statement = conn.prepare(&sql).unwrap();
                let rows = statement
                    .query_map([expression], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })
                    .unwrap();
                for row in rows {
                    let (rowid, theirs, ours) = row.unwrap();
                    assert_eq!(
                        ours, theirs,
                        "{expression:?}, column {column}, {tokens} tokens, row {rowid}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 2000, "only {compared} snippets compared");
}
