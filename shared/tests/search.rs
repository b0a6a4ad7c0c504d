//! Search behaviour on the fixture corpus. Runs natively and, unchanged, as wasm under node.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::schema;
use pubsearch_shared::search::{self, RequestError, ResultKind, SearchPage, SearchRequest};
use pubsearch_shared::snapshot;
use rusqlite::Connection;
use support::{now, open_fixture};

fn run(conn: &Connection, pairs: &[(&str, &str)]) -> SearchPage {
    let request = SearchRequest::from_params(pairs.iter().copied()).unwrap();
    search::search(conn, &request, now()).unwrap()
}

fn uris(page: &SearchPage) -> Vec<&str> {
    page.results
        .iter()
        .map(|result| result.uri.as_str())
        .collect()
}

fn rkeys(page: &SearchPage) -> Vec<&str> {
    page.results
        .iter()
        .map(|result| result.rkey.as_str())
        .collect()
}

#[test]
fn title_match_outranks_content_match() {
    let conn = open_fixture();
    let page = run(&conn, &[("q", "ownership ")]);
    assert_eq!(rkeys(&page), ["own1", "own2"]);
}

#[test]
fn newer_document_wins_among_equal_matches() {
    let conn = open_fixture();
    let page = run(&conn, &[("q", "heirloom ")]);
    assert_eq!(rkeys(&page), ["tom-new", "tom-old"]);
}

#[test]
fn newer_document_wins_even_when_stored_first_is_older() {
    // Same text, so the same bm25: only age can order them, not rowid (the older is stored first).
    let template = support::documents().remove(0);
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = snapshot::SnapshotWriter::create(&mut conn).unwrap();
    for (rkey, did, age_days) in [("old", "did:plc:old", 400), ("new", "did:plc:new", 3)] {
        writer
            .add_document(&snapshot::SnapshotDocument {
                uri: format!("at://{did}/site.standard.document/{rkey}"),
                did: did.into(),
                rkey: rkey.into(),
                title: "Quince preserves".into(),
                content: "Simmer the quince slowly.".into(),
                created_at: support::days_ago(age_days),
                ..template.clone()
            })
            .unwrap();
    }
    writer.finish(support::WATERMARK_US).unwrap();
    search::prepare(&conn).unwrap();
    assert_eq!(rkeys(&run(&conn, &[("q", "quince")])), ["new", "old"]);
}

#[test]
fn text_holding_the_match_markers_highlights_only_matches() {
    // The snippet marks matches with U+E000/U+E001 before escaping: a document's own copies of
    // them must not become highlights.
    let template = support::documents().remove(0);
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = snapshot::SnapshotWriter::create(&mut conn).unwrap();
    writer
        .add_document(&snapshot::SnapshotDocument {
            title: "Zebra notes".into(),
            content: "zebra \u{E001} stripes \u{E000} and more".into(),
            ..template
        })
        .unwrap();
    writer.finish(support::WATERMARK_US).unwrap();
    search::prepare(&conn).unwrap();
    let page = run(&conn, &[("q", "stripes")]);
    assert_eq!(
        page.results[0].snippet,
        "zebra  <mark>stripes</mark>  and more"
    );
}

#[test]
fn cross_posts_collapse_to_the_best_copy() {
    let conn = open_fixture();
    let page = run(&conn, &[("q", "\"weekly notes\"")]);
    assert_eq!(page.results.len(), 1, "{:?}", uris(&page));
    assert_eq!(page.results[0].did, "did:plc:erin");
}

#[test]
fn diacritics_fold_both_ways() {
    let conn = open_fixture();
    assert_eq!(rkeys(&run(&conn, &[("q", "cafe zurich ")])), ["cafe"]);
    assert_eq!(rkeys(&run(&conn, &[("q", "crème")])), ["cafe"]);
}

#[test]
fn last_word_is_a_prefix_while_typing() {
    let conn = open_fixture();
    assert_eq!(rkeys(&run(&conn, &[("q", "owners")])), ["own1", "own2"]);
    assert!(run(&conn, &[("q", "owners ")]).results.is_empty());
}

#[test]
fn filters_restrict_results() {
    let conn = open_fixture();
    let all = run(&conn, &[("q", "tomatoes "), ("limit", "40")]);
    assert!(all.results.len() >= 4);

    let offprint = run(&conn, &[("q", "tomatoes "), ("platform", "offprint")]);
    assert_eq!(rkeys(&offprint), ["tom-old"]);

    let recent = run(&conn, &[("q", "heirloom "), ("since", "2026-01-01")]);
    assert_eq!(rkeys(&recent), ["tom-new"]);

    let by_dave = run(&conn, &[("q", "tomatoes "), ("author", "did:plc:dave")]);
    assert_eq!(rkeys(&by_dave), ["tom-old"]);

    let tagged = run(&conn, &[("q", "sqlite "), ("tag", "#WASM")]);
    assert_eq!(rkeys(&tagged), ["wasm1"]);

    let loose = run(&conn, &[("q", "tomatoes "), ("type", "looseleaf")]);
    assert_eq!(rkeys(&loose), ["3kwhite"]);
    assert_eq!(loose.results[0].kind, ResultKind::Looseleaf);
    assert_eq!(
        loose.results[0].url.as_deref(),
        Some("https://whtwnd.com/did:plc:grace/3kwhite")
    );
}

#[test]
fn publications_are_results_unless_undiscoverable() {
    let conn = open_fixture();
    let page = run(&conn, &[("q", "tomato "), ("type", "publication")]);
    assert_eq!(rkeys(&page), ["carol"]);
    assert_eq!(page.results[0].kind, ResultKind::Publication);
    assert_eq!(page.results[0].title, "The Tomato Garden");
    assert_eq!(
        page.results[0].url.as_deref(),
        Some("https://carol.leaflet.pub")
    );
}

#[test]
fn snippets_highlight_matches_and_escape_html() {
    let conn = open_fixture();
    let page = run(&conn, &[("q", "markup ")]);
    assert_eq!(rkeys(&page), ["3kwhite"]);
    let snippet = &page.results[0].snippet;
    assert!(snippet.contains("<mark>markup</mark>"), "{snippet}");
    assert!(
        snippet.contains("&lt;script&gt;") && !snippet.contains("<script>"),
        "{snippet}"
    );
}

/// The snippet FTS5 gives one row when asked about that row alone, rendered as results are.
fn lone_snippet(conn: &Connection, table: &str, query: &str, uri: &str) -> String {
    let base = table.trim_end_matches("_fts");
    let raw: String = conn
        .query_row(
            &format!(
                "SELECT snippet({table}, 1, char(57344), char(57345), '…', 24)
                 FROM {table} JOIN {base} AS row ON row.id = {table}.rowid
                 WHERE {table} MATCH ?1 AND row.uri = ?2"
            ),
            (query, uri),
            |row| row.get(0),
        )
        .unwrap();
    raw.split('\u{E000}')
        .enumerate()
        .map(|(index, part)| {
            let (marked, rest) = match part.split_once('\u{E001}') {
                Some((marked, rest)) if index > 0 => (Some(marked), rest),
                _ => (None, part),
            };
            let marked = marked.map_or(String::new(), |m| {
                format!("<mark>{}</mark>", search::escape_html(m))
            });
            marked + &search::escape_html(rest)
        })
        .collect()
}

#[test]
fn each_result_gets_its_own_rows_snippet() {
    let conn = open_fixture();
    let mut kinds = std::collections::HashSet::new();
    for (text, offset) in [
        ("tomato gard", "0"),
        ("tomatoes stake gar", "3"),
        ("garden", "20"),
    ] {
        let request =
            SearchRequest::from_params([("q", text), ("limit", "12"), ("offset", offset)]).unwrap();
        let page = search::search(&conn, &request, now()).unwrap();
        assert!(page.results.len() > 1, "{text}: a page to check");
        for result in &page.results {
            let table = match result.kind {
                ResultKind::Publication => "publications_fts",
                _ => "documents_fts",
            };
            let expected = lone_snippet(
                &conn,
                table,
                request.match_expr().unwrap().as_str(),
                &result.uri,
            );
            assert_eq!(result.snippet, expected, "{text}: {}", result.uri);
            kinds.insert(result.kind);
        }
    }
    assert_eq!(
        kinds.len(),
        3,
        "articles, looseleafs and publications were all checked"
    );
}

#[test]
fn paging_is_consistent_and_reports_more() {
    let conn = open_fixture();
    let whole = run(&conn, &[("q", "garden "), ("limit", "40")]);
    assert!(
        whole.has_more,
        "the fixture has more than 40 garden documents"
    );
    assert_eq!(whole.next_offset, Some(40));
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let offset_text = offset.to_string();
        let page = run(
            &conn,
            &[("q", "garden "), ("limit", "7"), ("offset", &offset_text)],
        );
        paged.extend(page.results.iter().map(|result| result.uri.clone()));
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
        assert!(offset <= 1000, "paging must end");
    }
    assert_eq!(paged[..40], uris(&whole)[..]);
    let unique: std::collections::HashSet<_> = paged.iter().collect();
    assert_eq!(unique.len(), paged.len(), "no result appears on two pages");
}

#[test]
fn paging_ends_at_the_deepest_offset_a_request_may_ask_for() {
    // More matches than MAX_OFFSET + MAX_LIMIT, so only the offset limit can end the paging.
    let template = support::documents().remove(0);
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = snapshot::SnapshotWriter::create(&mut conn).unwrap();
    let matches = (search::MAX_OFFSET + 2 * search::MAX_LIMIT) as usize;
    for n in 0..matches {
        let did = format!("did:plc:deep{n}");
        writer
            .add_document(&snapshot::SnapshotDocument {
                uri: format!("at://{did}/site.standard.document/p{n}"),
                did,
                rkey: format!("p{n}"),
                title: format!("Quince note {n}"),
                content: "Simmer the quince slowly.".into(),
                ..template.clone()
            })
            .unwrap();
    }
    writer.finish(support::WATERMARK_US).unwrap();
    search::prepare(&conn).unwrap();

    let limit = search::MAX_LIMIT.to_string();
    let before_last = (search::MAX_OFFSET - search::MAX_LIMIT).to_string();
    let page = run(
        &conn,
        &[("q", "quince"), ("limit", &limit), ("offset", &before_last)],
    );
    assert_eq!(page.next_offset, Some(search::MAX_OFFSET));
    let last = search::MAX_OFFSET.to_string();
    let page = run(
        &conn,
        &[("q", "quince"), ("limit", &limit), ("offset", &last)],
    );
    assert_eq!(page.results.len(), search::MAX_LIMIT as usize);
    assert!(
        !page.has_more,
        "a next page at {} would be refused",
        search::MAX_OFFSET + search::MAX_LIMIT
    );
    assert_eq!(page.next_offset, None);
}

#[test]
fn hostile_queries_are_inert() {
    let conn = open_fixture();
    for hostile in [
        "title:rust",
        "NEAR(rust wasm)",
        "rust*",
        "^rust",
        "\"rust",
        "(rust",
        "rust OR",
        "-rust",
        "{title}: x",
    ] {
        let request = SearchRequest::from_params([("q", hostile)]).unwrap();
        search::search(&conn, &request, now()).unwrap_or_else(|e| panic!("{hostile:?}: {e}"));
    }
    assert!(matches!(
        SearchRequest::from_params([("q", "*** ()")]),
        Err(RequestError::Query(_))
    ));
}

/// The fixture rebuilt in schema version 1's layout: text in the middle of `documents`, and no
/// prefix index.
fn fixture_in_version_1_layout() -> Connection {
    let mut fixture = open_fixture();
    let bytes = fixture.serialize(rusqlite::MAIN_DB).unwrap();
    let mut old = Connection::open_in_memory().unwrap();
    schema::create(&old).unwrap();
    old.execute_batch(
        "DROP TABLE documents_fts;
         DROP VIEW document_text;
         DROP TABLE document_bodies;
         DROP TABLE documents;
         CREATE TABLE documents (
             id INTEGER PRIMARY KEY, uri TEXT NOT NULL UNIQUE, did TEXT NOT NULL,
             rkey TEXT NOT NULL, collection TEXT NOT NULL, platform TEXT NOT NULL,
             title TEXT NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL,
             indexed_at INTEGER NOT NULL, publication_uri TEXT, base_path TEXT, path TEXT,
             tags TEXT NOT NULL DEFAULT '[]', cover_image TEXT);
         CREATE INDEX documents_publication_uri ON documents(publication_uri);
         CREATE INDEX documents_did ON documents(did);
         CREATE VIRTUAL TABLE documents_fts USING fts5(title, content, content = 'documents',
             content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2');
         ATTACH ':memory:' AS fixture;",
    )
    .unwrap();
    old.execute(
        "INSERT INTO documents_fts(documents_fts, rank) VALUES ('rank', ?1)",
        [format!("bm25({:.1}, 1.0)", schema::TITLE_WEIGHT)],
    )
    .unwrap();
    old.deserialize_read_exact("fixture", &bytes[..], bytes.len(), true)
        .unwrap();
    old.execute_batch(
        "INSERT INTO documents SELECT d.id, uri, did, rkey, collection, platform, title,
             pubsearch_text(b.content), created_at, indexed_at, publication_uri, base_path, path, tags, cover_image
             FROM fixture.documents AS d JOIN fixture.document_bodies AS b ON b.id = d.id;
         INSERT INTO documents_fts(documents_fts) VALUES ('rebuild');
         INSERT INTO publications SELECT * FROM fixture.publications;
         INSERT INTO publications_fts(publications_fts) VALUES ('rebuild');
         INSERT INTO document_tags SELECT * FROM fixture.document_tags;
         INSERT INTO tag_counts SELECT * FROM fixture.tag_counts;
         INSERT INTO meta SELECT * FROM fixture.meta;
         UPDATE meta SET value = '1' WHERE key = 'schema_version';
         DETACH fixture;",
    )
    .unwrap();
    search::prepare(&old).unwrap();
    old
}

#[test]
fn a_version_1_snapshot_is_read_and_answers_identically() {
    let (current, old) = (open_fixture(), fixture_in_version_1_layout());
    assert_eq!(schema::check_compatible(&old).unwrap().schema_version, 1);
    for pairs in [
        &[("q", "tomato gard")][..],
        &[("q", "garden"), ("offset", "20")],
        &[
            ("q", "rust"),
            ("tag", "rust"),
            ("since", "2024-01-01T00:00:00Z"),
        ],
        &[("q", "tomatoes"), ("type", "looseleaf")],
    ] {
        let page = run(&current, pairs);
        assert!(!page.results.is_empty(), "{pairs:?}: something to compare");
        assert_eq!(run(&old, pairs), page, "{pairs:?}");
    }
    // Its plain text reads as the current layout's compressed text does.
    let uris: Vec<String> = support::documents()
        .iter()
        .map(|doc| doc.uri.clone())
        .collect();
    let lookup = |conn| pubsearch_shared::lookup::documents_by_uri(conn, &uris[..20]);
    let found = lookup(&current).unwrap().unwrap();
    assert!(found.documents.iter().all(|doc| !doc.snippet.is_empty()));
    assert_eq!(lookup(&old).unwrap().unwrap(), found);
}

#[test]
fn document_text_is_stored_compressed_and_read_back_whole() {
    let conn = open_fixture();
    let (blobs, stored, text): (i64, i64, i64) = conn
        .query_row(
            "SELECT sum(typeof(content) = 'blob'), sum(length(content)),
                    sum(length(CAST(pubsearch_text(content) AS BLOB))) FROM document_bodies",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(blobs as usize, support::documents().len());
    let expected: usize = support::documents()
        .iter()
        .map(|doc| doc.content.len())
        .sum();
    assert_eq!(text as usize, expected);
    assert!(stored < text, "{stored} stored bytes for {text} of text");
    // What FTS5 reads is the text itself.
    let first: String = conn
        .query_row(
            "SELECT content FROM document_text ORDER BY id LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(first, support::documents()[0].content);
}

#[test]
fn snapshot_counts_and_version_are_recorded() {
    let conn = open_fixture();
    let counts = snapshot::count(&conn).unwrap();
    assert_eq!(counts.documents as usize, support::documents().len());
    assert_eq!(counts.publications, 3);
    let version = schema::check_compatible(&conn).unwrap();
    assert_eq!(version.source_watermark_us, support::WATERMARK_US);
    let rust_docs: i64 = conn
        .query_row(
            "SELECT documents FROM tag_counts WHERE tag = 'rust'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let expected = support::documents()
        .iter()
        .filter(|d| d.tags.iter().any(|t| t == "rust"))
        .count();
    assert_eq!(rust_docs as usize, expected);
}

#[test]
fn documents_are_looked_up_in_request_order() {
    use pubsearch_shared::lookup::{self, LookupError};
    let conn = open_fixture();
    let uris = vec![
        "at://did:plc:heidi/site.standard.document/wasm1".to_owned(),
        "at://did:plc:nobody/site.standard.document/none".to_owned(),
        "at://did:plc:alice/pub.leaflet.document/own1".to_owned(),
    ];
    let found = lookup::documents_by_uri(&conn, &uris).unwrap().unwrap();
    let rkeys: Vec<&str> = found.documents.iter().map(|d| d.rkey.as_str()).collect();
    assert_eq!(rkeys, ["wasm1", "own1"]);
    assert_eq!(found.missing, [uris[1].clone()]);
    // A lookup describes a document exactly as a search hit does, bar the snippet (an excerpt).
    let page = run(&conn, &[("q", &found.documents[0].title)]);
    let mut hit = page
        .results
        .iter()
        .find(|result| result.uri == uris[0])
        .expect("the document is found by its title")
        .clone();
    let looked_up = &found.documents[0];
    assert!(!looked_up.snippet.contains("<mark>"));
    assert!(
        looked_up.snippet.chars().count() <= 300 + 10 * 5,
        "an excerpt, not the content"
    );
    hit.snippet.clone_from(&looked_up.snippet);
    assert_eq!(&hit, looked_up);
    assert_eq!(
        lookup::documents_by_uri(&conn, &[]).unwrap(),
        Err(LookupError::NoUris)
    );
    // Repeats are answered once and do not count against the limit.
    let repeated = vec![uris[0].clone(); lookup::MAX_URIS + 1];
    let found_once = lookup::documents_by_uri(&conn, &repeated).unwrap().unwrap();
    assert_eq!(found_once.documents.len(), 1);
    let many: Vec<String> = (0..=lookup::MAX_URIS)
        .map(|n| format!("at://did:plc:nobody/site.standard.document/{n}"))
        .collect();
    assert_eq!(
        lookup::documents_by_uri(&conn, &many).unwrap(),
        Err(LookupError::TooMany)
    );
    let listed = format!(" {} ,,{},{}", uris[2], uris[0], uris[2]);
    assert_eq!(
        lookup::requested_uris([listed.as_str(), uris[1].as_str()]),
        Ok(vec![uris[2].clone(), uris[0].clone(), uris[1].clone()])
    );
    assert_eq!(lookup::requested_uris([" , "]), Err(LookupError::NoUris));
    let joined = many.join(",");
    assert_eq!(
        lookup::requested_uris([joined.as_str()]),
        Err(LookupError::TooMany)
    );

    let tags = lookup::top_tags(&conn, 3).unwrap();
    assert_eq!(tags.len(), 3);
    assert!(tags[0].documents >= tags[1].documents && tags[1].documents >= tags[2].documents);
}

/// `search::prepare` has SQLite read snapshot pages in place, which SQLite compiles out on
/// platforms it does not know; `.cargo/config.toml` compiles it in for wasm32.
#[cfg(target_arch = "wasm32")]
#[test]
fn sqlite_reads_pages_in_place_on_wasm() {
    let conn = Connection::open_in_memory().unwrap();
    let options: Vec<String> = conn
        .prepare("PRAGMA compile_options")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let limit = format!("MAX_MMAP_SIZE={}", search::MMAP_BYTES);
    assert!(options.contains(&limit), "{options:?}");
}
