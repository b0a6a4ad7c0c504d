//! Property test: no user input can make FTS5 fail. Every string either compiles to a MATCH
//! expression that SQLite accepts and searches, or is refused with a clear query error.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use proptest::prelude::*;
use pubsearch_shared::query::{self, QueryError};
use pubsearch_shared::schema;
use pubsearch_shared::search::{self, RequestError, SearchRequest};
use rusqlite::Connection;

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

/// A run of `count` cases that leaves no regression files behind.
fn cases(count: u32) -> ProptestConfig {
    ProptestConfig {
        cases: count,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn any_input_gives_a_valid_match_or_a_clear_error() {
    let conn = support::open_fixture();
    let config = cases(10_000);
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
            // Every character lands in some word or phrase, so only input without a letter, digit
            // or private-use character is empty.
            Err(QueryError::Empty) => prop_assert!(!input.chars().any(is_letter_digit_or_private)),
            Err(QueryError::TooLong) => prop_assert!(input.chars().count() > query::MAX_QUERY_CHARS),
            Err(QueryError::TooManyTerms) => prop_assert!(input.chars().count() > query::MAX_TERMS),
        }
        // The request layer reports the same errors as the builder.
        if let Err(error) = query::build(&input) {
            prop_assert_eq!(SearchRequest::from_params([("q", input.as_str())]).unwrap_err(), RequestError::Query(error));
        }
    });
}

/// FTS5 itself, with the snapshot's tokenizer: the tokens it cuts from a text, in order.
struct Tokenizer(Connection);

impl Tokenizer {
    fn new() -> Self {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE t USING fts5(x, tokenize = '{}');
             CREATE VIRTUAL TABLE v USING fts5vocab(t, instance);",
            schema::TOKENIZER
        ))
        .unwrap();
        Self(conn)
    }
}

fn fts5_tokens(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
    let conn = &tokenizer.0;
    conn.execute("INSERT INTO t (rowid, x) VALUES (1, ?1)", [text])
        .unwrap();
    let tokens = conn
        .prepare_cached("SELECT term FROM v ORDER BY \"offset\"")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    conn.execute("DELETE FROM t", []).unwrap();
    tokens
}

/// The characters unicode61 keeps in tokens by its default categories, `L* N* Co`.
fn is_letter_digit_or_private(c: char) -> bool {
    use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number
    ) || c.general_category() == GeneralCategory::PrivateUse
}

/// Characters where Rust's and FTS5's idea of a word part differ, or could: marks Rust calls
/// alphabetic, diacritics FTS5 folds away and those it does not, joiners, symbols.
const WORD_PARTS: &[&str] = &[
    "a", "b", "ab", "abc", "1", "\u{663}", "中", "文", "é", "ß", "İ", "\u{E000}", "\u{345}",
    "\u{903}", "\u{902}", "\u{93E}", "\u{951}", "\u{64B}", "\u{300}", "\u{301}", "\u{308}",
    "\u{30E}", "\u{331}", "\u{332}", "\u{20DD}", "\u{200D}", "\u{FE0F}", "-", ".", "_", "\u{2160}",
    "\u{B2}", " ",
];
/// Characters newer than SQLite's Unicode tables: FTS5 keeps those it does not know in tokens.
/// The query builder splits at them, so it may count more words, and shorter last words, than
/// FTS5 cuts, never fewer or longer.
const UNKNOWN_TO_SQLITE: &[&str] = &["🦀", "\u{1F600}"];

#[test]
fn the_limits_count_the_tokens_fts5_cuts() {
    let tokenizer = Tokenizer::new();
    let config = cases(4_000);
    let part = prop_oneof![
        20 => proptest::sample::select(WORD_PARTS),
        1 => proptest::sample::select(UNKNOWN_TO_SQLITE),
    ];
    let text = proptest::collection::vec(part, 1..48).prop_map(|parts| parts.concat());
    proptest!(config, |(text in text)| {
        let exact = !UNKNOWN_TO_SQLITE.iter().any(|unknown| text.contains(unknown));
        let tokens = fts5_tokens(&tokenizer, &text);
        // As a phrase, every token is a word against the limit.
        let phrase = query::build(&format!("\"{text}\""));
        if tokens.len() > query::MAX_TERMS {
            prop_assert_eq!(phrase, Err(QueryError::TooManyTerms), "{:?}: {:?}", text, tokens);
        } else if tokens.is_empty() {
            prop_assert_eq!(phrase, Err(QueryError::Empty), "{:?}", text);
        } else if exact {
            prop_assert!(phrase.is_ok(), "{text:?}: {tokens:?} -> {phrase:?}");
        }
        // As the last bare word, it is a prefix only if the token FTS5 expands is long enough.
        let word = text.split(' ').rfind(|word| !word.is_empty()).unwrap_or_default();
        let word_tokens = fts5_tokens(&tokenizer, word);
        if let Ok(expr) = query::build(word) {
            let prefix = expr.as_str().ends_with('*');
            let long_enough = word_tokens
                .last()
                .is_some_and(|last| last.chars().count() >= query::MIN_PREFIX_CHARS);
            prop_assert!(prefix <= long_enough, "{:?}: {:?} -> {}", word, word_tokens, expr);
            // The builder expands only a last token that nothing but ASCII follows.
            let tail = word.rsplit(is_letter_digit_or_private).next().unwrap_or_default();
            if exact && tail.is_ascii() {
                prop_assert_eq!(prefix, long_enough, "{:?}: {:?} -> {}", word, word_tokens, expr);
            }
        }
    });
}
