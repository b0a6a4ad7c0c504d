//! Direct reads from a snapshot that are not searches: documents by URI, and tag counts.
//! Shared so the edge and native tools answer identically.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::content::FUNCTION as TEXT;
use crate::search::{DOCUMENT_RESULT_COLUMNS, SearchResult, document_result};

/// Most URIs one lookup accepts.
pub const MAX_URIS: usize = 25;
/// Characters of content returned as a lookup's excerpt.
const EXCERPT_CHARS: usize = 300;

/// Documents found (in request order) and the URIs that are not in the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentLookup {
    pub documents: Vec<SearchResult>,
    pub missing: Vec<String>,
}

/// A tag and how many documents carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagCount {
    pub tag: String,
    pub documents: u64,
}

/// Why a lookup was refused (the client's to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("missing parameter uri")]
    NoUris,
    #[error("too many uris: at most {MAX_URIS}")]
    TooMany,
}

/// The URIs a request asks for: its `uri` values, each a comma-separated list, trimmed, in order,
/// each once (a repeat costs nothing, so it does not count against [`MAX_URIS`]).
pub fn requested_uris<S: AsRef<str>>(
    values: impl IntoIterator<Item = S>,
) -> Result<Vec<String>, LookupError> {
    let values: Vec<S> = values.into_iter().collect();
    let listed = values
        .iter()
        .flat_map(|value| value.as_ref().split(','))
        .map(str::trim)
        .filter(|uri| !uri.is_empty());
    distinct(listed)
}

/// `uris` in order, each once, if there are some and not too many.
fn distinct<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, LookupError> {
    let mut seen = std::collections::HashSet::new();
    // One past the limit is enough to refuse, however long the request.
    let uris: Vec<String> = uris
        .into_iter()
        .filter(|uri| seen.insert(*uri))
        .take(MAX_URIS + 1)
        .map(str::to_owned)
        .collect();
    match uris.len() {
        0 => Err(LookupError::NoUris),
        count if count > MAX_URIS => Err(LookupError::TooMany),
        _ => Ok(uris),
    }
}

/// Looks up documents by at-uri, keeping request order; duplicates are answered once.
pub fn documents_by_uri(
    conn: &Connection,
    uris: &[String],
) -> Result<Result<DocumentLookup, LookupError>, rusqlite::Error> {
    let uris = match distinct(uris.iter().map(String::as_str)) {
        Ok(uris) => uris,
        Err(refused) => return Ok(Err(refused)),
    };
    let text = crate::schema::text_source(conn, "d.id")?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DOCUMENT_RESULT_COLUMNS}, substr({TEXT}({text}), 1, {EXCERPT_CHARS})
         FROM documents AS d WHERE d.uri = ?1"
    ))?;
    let mut lookup = DocumentLookup {
        documents: Vec::new(),
        missing: Vec::new(),
    };
    for uri in uris {
        let found = statement
            .query_row([&uri], |row| {
                document_result(row, crate::search::escape_html(&row.get::<_, String>(10)?))
            })
            .optional()?;
        match found {
            Some(document) => lookup.documents.push(document),
            None => lookup.missing.push(uri),
        }
    }
    Ok(Ok(lookup))
}

/// The most used tags, most documents first (ties by name).
pub fn top_tags(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<TagCount>> {
    let mut statement = conn.prepare_cached(
        "SELECT tag, documents FROM tag_counts ORDER BY documents DESC, tag LIMIT ?1",
    )?;
    let rows = statement.query_map([limit], |row| {
        Ok(TagCount {
            tag: row.get(0)?,
            documents: row.get::<_, i64>(1)? as u64,
        })
    })?;
    rows.collect()
}
