//! Related posts: when a build is written, each document gets its most distinctive terms (by
//! tf-idf over its title and leading text, [`describe`]); `/similar?uri=…` searches for those
//! terms ([`similar`]), so it costs one row read plus one ordinary search, however large the
//! corpus (ARCHITECTURE.md invariant 1), and answers the same at the edge and natively.
//!
//! A delta's documents are described against the base's statistics plus its own
//! (`delta::finish` calls [`describe`] with the base attached), so a new post's terms are
//! distinctive in the whole corpus, not in the handful of posts beside it.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::delta::Layers;
use crate::search::{self, Prefetch, SearchError, SearchPage, SearchRequest};
use crate::timestamp::Timestamp;

/// Terms kept per document: enough to find neighbours, few enough that the search for them
/// costs what an ordinary query costs.
pub const TERMS_PER_DOCUMENT: usize = 12;
/// Characters of a document's text (after its title) that describe it.
const LEAD_CHARS: usize = 2000;
/// Shortest term kept, in characters.
const MIN_TERM_CHARS: usize = 3;
/// A term in more than this share of documents says little about any one of them.
const MAX_DOCUMENT_SHARE: f64 = 0.1;
/// A title term counts this many times a body term.
const TITLE_BOOST: f64 = 3.0;

/// Document frequencies of one build's `documents_fts`, through an `fts5vocab` table.
struct Frequencies {
    /// Every term of the build being described (whole: it is the build being written).
    own: HashMap<String, u64>,
    /// Looked up term by term in a build attached beside it (a delta's base).
    other: Option<String>,
    documents: u64,
}

impl Frequencies {
    fn read(conn: &Connection, other: Option<&str>) -> rusqlite::Result<Self> {
        let vocab = |schema: &str, name: &str| {
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS temp.{name};
                 CREATE VIRTUAL TABLE temp.{name} USING fts5vocab({schema}, documents_fts, row);"
            ))
        };
        vocab("main", "pubsearch_own_vocab")?;
        let own = conn
            .prepare("SELECT term, doc FROM temp.pubsearch_own_vocab")?
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<_>>()?;
        let count = |schema: &str| {
            conn.query_row(
                &format!("SELECT count(*) FROM {schema}.documents"),
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        };
        let mut documents = count("main")?;
        if let Some(schema) = other {
            vocab(schema, "pubsearch_other_vocab")?;
            documents += count(schema)?;
        }
        Ok(Frequencies {
            own,
            other: other.map(|_| "pubsearch_other_vocab".to_owned()),
            documents,
        })
    }

    fn of(&self, conn: &Connection, term: &str) -> rusqlite::Result<u64> {
        let own = self.own.get(term).copied().unwrap_or(0);
        let Some(other) = &self.other else {
            return Ok(own);
        };
        let more: Option<i64> = conn
            .prepare_cached(&format!("SELECT doc FROM temp.{other} WHERE term = ?1"))?
            .query_row([term], |row| row.get(0))
            .optional()?;
        Ok(own + more.unwrap_or(0) as u64)
    }
}

/// Writes `document_terms` for every document of the build in `conn` (its FTS index built),
/// with document frequencies from it and, for a delta, from the base attached as `other`.
pub fn describe(conn: &Connection, other: Option<&str>) -> rusqlite::Result<()> {
    let frequencies = Frequencies::read(conn, other)?;
    let n = frequencies.documents.max(1) as f64;
    let most = (n * MAX_DOCUMENT_SHARE).max(2.0);
    let mut rows = conn.prepare(&format!(
        "SELECT d.id, d.title, substr({text}(b.content), 1, {LEAD_CHARS})
         FROM documents AS d JOIN document_bodies AS b ON b.id = d.id",
        text = crate::content::FUNCTION,
    ))?;
    let mut insert =
        conn.prepare("INSERT OR REPLACE INTO document_terms (id, terms) VALUES (?1, ?2)")?;
    let mut documents = rows.query([])?;
    while let Some(row) = documents.next()? {
        let id: i64 = row.get(0)?;
        let mut counts: HashMap<String, f64> = HashMap::new();
        for (text, weight) in [(row.get::<_, String>(1)?, TITLE_BOOST), (row.get(2)?, 1.0)] {
            for term in terms_of(&text) {
                *counts.entry(term).or_default() += weight;
            }
        }
        let mut scored = Vec::with_capacity(counts.len());
        for (term, tf) in counts {
            let df = frequencies.of(conn, &term)? as f64;
            // In one document only: nothing else shares it. In too many: it tells nothing.
            // Between, tf-idf, damped for the rarest: a term only one other document has (often
            // a cross-post of this one) links to little.
            if df >= 2.0 && df <= most {
                scored.push((tf * (n / df).ln() * (1.0 - 1.0 / df), term));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let terms: Vec<String> = scored
            .into_iter()
            .take(TERMS_PER_DOCUMENT)
            .map(|(_, term)| term)
            .collect();
        insert.execute(rusqlite::params![id, terms.join(" ")])?;
    }
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.pubsearch_own_vocab;
         DROP TABLE IF EXISTS temp.pubsearch_other_vocab;",
    )
}

/// The tokens of `text` as FTS5's unicode61 indexes them (lowercase, diacritics removed), those
/// worth keeping.
fn terms_of(text: &str) -> impl Iterator<Item = String> + '_ {
    use unicode_normalization::UnicodeNormalization;
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    text.split(|c: char| !crate::query::is_token_char(c))
        .filter(|token| token.chars().count() >= MIN_TERM_CHARS)
        .filter(|token| !token.chars().all(|c| c.is_ascii_digit()))
        .map(|token| {
            token
                .nfd()
                .filter(|c| c.general_category_group() != GeneralCategoryGroup::Mark)
                .collect::<String>()
                .to_lowercase()
        })
}

/// A document's terms and its cross-post family, in one build.
struct Described {
    id: i64,
    terms: String,
    family: Option<i64>,
}

fn described_in(conn: &Connection, uri: &str) -> rusqlite::Result<Option<Described>> {
    let has_terms = conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'document_terms'",
        )?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some();
    let terms = if has_terms {
        "coalesce((SELECT terms FROM document_terms AS t WHERE t.id = d.id), '')"
    } else {
        "''"
    };
    conn.prepare_cached(&format!(
        "SELECT d.id, {terms}, (SELECT family FROM document_facts AS f WHERE f.id = d.id)
         FROM documents AS d WHERE d.uri = ?1"
    ))?
    .query_row([uri], |row| {
        Ok(Described {
            id: row.get(0)?,
            terms: row.get(1)?,
            family: row.get(2)?,
        })
    })
    .optional()
}

/// Posts related to the document `uri`, with `request`'s filters and paging (its query is
/// replaced by the document's terms); `None` if the build does not serve `uri`. The document
/// itself and its cross-posts are left out.
pub fn similar(
    layers: Layers<'_>,
    uri: &str,
    request: &SearchRequest,
    now: Timestamp,
    prefetch: &dyn Prefetch,
) -> Result<Option<SearchPage>, SearchError> {
    let mut found = None;
    if let Some(delta) = layers.delta {
        found = described_in(delta.conn(), uri)?.map(|described| (true, described));
    }
    if found.is_none() {
        found = described_in(layers.base, uri)?
            .filter(|described| {
                !layers
                    .delta
                    .is_some_and(|delta| delta.masks_document(described.id))
            })
            .map(|described| (false, described));
    }
    let Some((in_delta, source)) = found else {
        return Ok(None);
    };
    let empty = SearchPage {
        results: Vec::new(),
        has_more: false,
        next_offset: None,
    };
    // The terms as phrases, as many as fit in a query (they are in order of weight).
    let mut text = String::new();
    for term in source.terms.split_whitespace() {
        let phrase = format!("\"{term}\"");
        if text.len() + phrase.len() + 1 > crate::query::MAX_QUERY_CHARS {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&phrase);
    }
    let semantic = request.mode() != crate::semantic::Mode::Keyword;
    // By meaning, the post's own vector is the query (a post without one: its terms, embedded).
    let vector = if semantic {
        let conn = match (in_delta, layers.delta) {
            (true, Some(delta)) => delta.conn(),
            _ => layers.base,
        };
        let dims = crate::semantic::dims(layers.base)?;
        crate::embed::index::vector_of(conn, "main", source.id, dims)?
    } else {
        None
    };
    let asked = if text.is_empty() {
        // Nothing to search for by words; by meaning alone, the vector is enough.
        if request.mode() != crate::semantic::Mode::Semantic || vector.is_none() {
            return Ok(Some(empty));
        }
        request.clone()
    } else {
        match request.with_text(&text) {
            Ok(asked) => asked,
            Err(_) => return Ok(Some(empty)),
        }
    };
    // Left out while ranking, so every page is cut from the same list.
    let excluded = search::Excluded {
        in_delta,
        id: source.id,
        family: source.family,
    };
    search::search_excluding(
        layers,
        &asked,
        now,
        prefetch,
        Some(&excluded),
        vector.as_deref(),
    )
    .map(Some)
}
