//! Property test: no user input can make FTS5 fail. Every string either compiles to a MATCH
//! expression that SQLite accepts and searches, or is refused with a clear query error.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use proptest::prelude::*;
use pubsearch_shared::query::{self, QueryError};
use pubsearch_shared::search::{self, RequestError, SearchRequest};

/// Fragments that exercise FTS5's grammar and the tokenizer's edge cases.
const HOSTILE: &[&str] = &[
    "\"", "\"\"", "*", "^", "(", ")", ":", "-", "+", "{", "}", "[", "]", "NEAR", "NEAR(", "AND",
    "OR", "NOT", "title:", "content:", "\0", "\u{301}", "\u{200B}", "\u{FEFF}", "\u{E000}", "🦀",
    "ß", "İ", "ﬁ", "\t", "\n", "rust", "garden", "tomatoes", "'", ";", "--", "/*", "%", "_", "\\",
    ",", ".", "é",
];

fn hostile_query() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(proptest::sample::select(HOSTILE), 0..12)
            .prop_map(|parts| parts.concat()),
        proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(HOSTILE).prop_map(str::to_owned),
                "\\PC{0,6}",
                Just(" ".to_owned())
            ],
            0..16
        )
        .prop_map(|parts| parts.concat()),
    ]
}

#[test]
fn any_input_gives_a_valid_match_or_a_clear_error() {
    let conn = support::open_fixture();
    let config = ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(input in hostile_query())| {
        match query::build(&input) {
            Ok(expr) => {
                let matched = conn
                    .prepare_cached("SELECT count(*) FROM documents_fts WHERE documents_fts MATCH ?1")
                    .and_then(|mut statement| statement.query_row([expr.as_str()], |row| row.get::<_, i64>(0)));
                prop_assert!(matched.is_ok(), "{input:?} -> {expr} -> {matched:?}");
                let request = SearchRequest::from_params([("q", input.as_str())]).unwrap();
                let page = search::search(&conn, &request, support::now());
                prop_assert!(page.is_ok(), "{input:?} -> {expr} -> {page:?}");
            }
            // Every alphanumeric character lands in some word or phrase, so only input without
            // any is empty.
            Err(QueryError::Empty) => prop_assert!(!input.chars().any(char::is_alphanumeric)),
            Err(QueryError::TooLong) => prop_assert!(input.chars().count() > query::MAX_QUERY_CHARS),
            Err(QueryError::TooManyTerms) => prop_assert!(input.chars().count() > query::MAX_TERMS),
        }
        // The request layer reports the same errors as the builder.
        if let Err(error) = query::build(&input) {
            prop_assert_eq!(SearchRequest::from_params([("q", input.as_str())]).unwrap_err(), RequestError::Query(error));
        }
    });
}
