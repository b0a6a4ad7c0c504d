//! The user query language, compiled to a safe FTS5 `MATCH` expression.
//!
//! Users type words and `"quoted phrases"`. Every word and phrase becomes an FTS5 string (double
//! quoted, inner quotes doubled), so no input can reach FTS5's own syntax: `NEAR`, `AND`, column
//! filters, `^`, `*`, parentheses and stray quotes are all just text. Terms are OR-ed so bm25 ranks
//! documents matching more of them first, and the last bare word is a prefix match while the user
//! is still typing it.

use std::collections::HashSet;
use std::fmt;

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// Most words in one query, each word of a phrase counted. Every word is a doclist FTS5 reads,
/// and a phrase checks positions in each of its words', so words bound a query's cost: a phrase
/// of 63 words that every document contains took 195 ms in the Worker on the bench's 7.5k
/// snapshot, against 5 ms for a usual query.
pub const MAX_TERMS: usize = 32;
/// Shortest last word that becomes a prefix match; shorter prefixes expand to too many terms.
/// Counted in the word's last token, the part FTS5 expands: `"well-kn"*` is the phrase `well kn*`.
pub const MIN_PREFIX_CHARS: usize = 3;

/// A validated FTS5 `MATCH` expression built from user input: phrases joined by `OR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchExpr {
    expression: String,
    phrases: Vec<String>,
}

impl MatchExpr {
    /// The expression, ready to bind as the right-hand side of `MATCH`.
    pub fn as_str(&self) -> &str {
        &self.expression
    }

    /// Each phrase of the expression alone, in order, each a `MATCH` expression itself. bm25 is a
    /// sum over phrases, so search can score each phrase's matches by itself (see
    /// [`crate::search::SCAN_BUDGET`]).
    pub fn phrases(&self) -> &[String] {
        &self.phrases
    }
}

impl fmt::Display for MatchExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Why a query cannot be searched; each is the user's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("empty query: type at least one word")]
    Empty,
    #[error("query too long: at most {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("too many words: at most {MAX_TERMS}, counting each word of a phrase")]
    TooManyTerms,
}

/// One unit of the user's query.
#[derive(Debug, PartialEq, Eq)]
enum Term<'a> {
    Word(&'a str),
    Phrase(&'a str),
}

/// Compiles user input into a `MATCH` expression, or says why it cannot be searched.
pub fn build(input: &str) -> Result<MatchExpr, QueryError> {
    if input.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let terms = split_terms(input);
    let prefix_last =
        matches!(terms.last(), Some(Term::Word(_))) && !input.ends_with(char::is_whitespace);

    let mut seen = HashSet::new();
    let mut parts = Vec::new();
    let mut words = 0;
    let last_index = terms.len().saturating_sub(1);
    for (index, term) in terms.iter().enumerate() {
        let text = match term {
            Term::Word(text) | Term::Phrase(text) => clean(text),
        };
        let tokens = Tokens::cut(&text);
        let Some(&last_token_chars) = tokens.lengths.last() else {
            continue;
        };
        // FTS5 applies a prefix to the string's last token only, so that is what must be long
        // enough: counting all of `-lo` made FTS5 merge every term starting with `lo` (7 ms for
        // one count on the bench's 7.5k snapshot), and `--a` every term starting with `a` (20 ms).
        let prefix = prefix_last
            && index == last_index
            && tokens.last_ends_text
            && last_token_chars >= MIN_PREFIX_CHARS;
        if !seen.insert((text.to_lowercase(), prefix)) {
            continue;
        }
        words += tokens.lengths.len();
        let quoted = format!("\"{}\"", text.replace('"', "\"\""));
        parts.push(if prefix { format!("{quoted}*") } else { quoted });
    }
    if parts.is_empty() {
        return Err(QueryError::Empty);
    }
    if words > MAX_TERMS {
        return Err(QueryError::TooManyTerms);
    }
    Ok(MatchExpr {
        expression: parts.join(" OR "),
        phrases: parts,
    })
}

/// Splits input into bare words and quoted phrases; an unbalanced quote runs to the end.
fn split_terms(input: &str) -> Vec<Term<'_>> {
    let mut terms = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return terms;
        }
        if let Some(after_quote) = rest.strip_prefix('"') {
            let end = after_quote.find('"').unwrap_or(after_quote.len());
            terms.push(Term::Phrase(&after_quote[..end]));
            rest = after_quote.get(end + 1..).unwrap_or_default();
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            terms.push(Term::Word(&rest[..end]));
            rest = &rest[end..];
        }
    }
}

/// The tokens FTS5's unicode61 tokenizer cuts from a text, as far as this crate can tell.
struct Tokens {
    /// Each token's length in characters.
    lengths: Vec<usize>,
    /// Whether only ASCII separators follow the last token, so that it is surely the token FTS5
    /// expands when the text is a prefix (see [`Tokens::cut`] for why it might not be).
    last_ends_text: bool,
}

impl Tokens {
    /// Cuts `text` the way unicode61 does: a token is a run of letters, digits and private-use
    /// characters (its default categories, `L* N* Co`), which the combining diacritics it folds
    /// away may continue without adding to its length. Every other character separates tokens,
    /// marks included: Rust's `is_alphanumeric` counts some (U+0345, Devanagari's signs) as
    /// letters, which once let `a\u{345}b\u{345}c…` pass as one word while FTS5 read one per
    /// letter. One difference remains: FTS5 also keeps characters its Unicode tables predate
    /// (emoji, say) in tokens. Splitting at them only counts more words, but a token of them
    /// alone could be the one FTS5 expands, hence [`Tokens::last_ends_text`].
    fn cut(text: &str) -> Self {
        let mut lengths = Vec::new();
        let mut current = 0;
        let mut last_ends_text = true;
        for c in text.chars() {
            if is_token_char(c) {
                current += 1;
                last_ends_text = true;
            } else if current > 0 && is_folded_diacritic(c) {
                continue;
            } else {
                if current > 0 {
                    lengths.push(current);
                    current = 0;
                }
                last_ends_text &= c.is_ascii();
            }
        }
        if current > 0 {
            lengths.push(current);
        }
        Self {
            lengths,
            last_ends_text,
        }
    }
}

/// Whether unicode61, with its default categories, keeps `c` in a token.
pub(crate) fn is_token_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number
    ) || c.general_category() == GeneralCategory::PrivateUse
}

/// Whether `c` is one of the combining diacritics (U+0300–U+0331, less a few) that unicode61
/// lets continue a token and removes from it: SQLite's `sqlite3Fts5UnicodeIsdiacritic`.
fn is_folded_diacritic(c: char) -> bool {
    const FIRST: u32 = 0x300;
    const MASKS: [u32; 2] = [0x0802_9FDF, 0x0003_61F8];
    let offset = (c as u32).wrapping_sub(FIRST);
    offset < 50 && MASKS[(offset / 32) as usize] & (1 << (offset % 32)) != 0
}

/// Replaces control characters (NUL included) with spaces and trims.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(input: &str) -> String {
        build(input).unwrap().expression
    }

    #[test]
    fn words_are_quoted_ored_and_last_is_prefix() {
        assert_eq!(expr("rust wasm"), r#""rust" OR "wasm"*"#);
        assert_eq!(expr("rust wasm "), r#""rust" OR "wasm""#);
        assert_eq!(
            expr("rust go"),
            r#""rust" OR "go""#,
            "short last word is not a prefix"
        );
    }

    #[test]
    fn a_prefix_is_counted_in_the_token_fts5_expands() {
        // FTS5 expands only the last token of a prefix string: these would expand `lo*`, `a*`, `kn*`.
        assert_eq!(expr("ka -lo"), r#""ka" OR "-lo""#);
        assert_eq!(expr("--a"), r#""--a""#);
        assert_eq!(expr("well-kn"), r#""well-kn""#);
        assert_eq!(expr("well-kno"), r#""well-kno"*"#);
        assert_eq!(expr("garden."), r#""garden."*"#);
        assert_eq!(expr("café"), r#""café"*"#);
    }

    #[test]
    fn marks_split_tokens_as_fts5_splits_them() {
        // U+0345 and U+0903 are marks that Rust calls alphabetic; FTS5 cuts words at them.
        let joined: Vec<String> = (0..=MAX_TERMS).map(|i| format!("w{i}")).collect();
        assert_eq!(
            build(&format!("\"{}\"", joined.join("\u{345}"))),
            Err(QueryError::TooManyTerms)
        );
        assert_eq!(
            expr("ab\u{903}"),
            "\"ab\u{903}\"",
            "the token is `ab`: no prefix"
        );
        assert_eq!(expr("a\u{345}\u{345}"), "\"a\u{345}\u{345}\"");
        // A folded diacritic continues its token and is removed from it.
        assert_eq!(expr("cafe\u{301}"), "\"cafe\u{301}\"*");
        assert_eq!(expr("e\u{301}\u{301}\u{301}"), "\"e\u{301}\u{301}\u{301}\"");
        assert_eq!(build("\u{345}\u{301}"), Err(QueryError::Empty));
    }

    #[test]
    fn phrases_survive_and_are_never_prefixes() {
        assert_eq!(
            expr(r#""static site" generator"#),
            r#""static site" OR "generator"*"#
        );
        assert_eq!(expr(r#"blog "static site""#), r#""blog" OR "static site""#);
        assert_eq!(
            expr(r#"say "unbalanced phrase"#),
            r#""say" OR "unbalanced phrase""#
        );
    }

    #[test]
    fn fts_syntax_is_inert() {
        assert_eq!(
            expr("title:foo NEAR(a b) ^x"),
            r#""title:foo" OR "NEAR(a" OR "b)" OR "^x""#
        );
        assert_eq!(
            expr("a AND b NOT c"),
            r#""a" OR "AND" OR "b" OR "NOT" OR "c""#
        );
    }

    #[test]
    fn duplicates_collapse_case_insensitively() {
        assert_eq!(expr("Rust rust RUST "), r#""Rust""#);
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(build(""), Err(QueryError::Empty));
        assert_eq!(build(r#"  "" ** ()  "#), Err(QueryError::Empty));
        assert_eq!(
            build(&"a".repeat(MAX_QUERY_CHARS + 1)),
            Err(QueryError::TooLong)
        );
        let many: Vec<String> = (0..=MAX_TERMS).map(|i| format!("w{i}")).collect();
        assert_eq!(build(&many.join(" ")), Err(QueryError::TooManyTerms));
        assert!(build(&many[1..].join(" ")).is_ok());
        // A phrase counts each of its words, however they are joined.
        let phrase = format!("\"{}\"", many[1..].join(" "));
        assert!(build(&phrase).is_ok());
        assert_eq!(
            build(&format!("{phrase} more")),
            Err(QueryError::TooManyTerms)
        );
        assert_eq!(
            build(&format!("\"{}\"", many.join("-"))),
            Err(QueryError::TooManyTerms)
        );
    }
}
