//! Direct reads from a snapshot that are not searches: documents by URI, and tag counts.
//! Shared so the edge and native tools answer identically.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::content::FUNCTION as TEXT;
use crate::delta::Layers;
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
    documents_by_uri_in(Layers::base(conn), uris)
}

/// [`documents_by_uri`] over a base and its delta: the delta's copy of a document wins, and a
/// base document the delta masks is missing.
pub fn documents_by_uri_in(
    layers: Layers<'_>,
    uris: &[String],
) -> Result<Result<DocumentLookup, LookupError>, rusqlite::Error> {
    let uris = match distinct(uris.iter().map(String::as_str)) {
        Ok(uris) => uris,
        Err(refused) => return Ok(Err(refused)),
    };
    let mut lookup = DocumentLookup {
        documents: Vec::new(),
        missing: Vec::new(),
    };
    for uri in uris {
        let mut found = None;
        if let Some(delta) = layers.delta {
            found = find_document(delta.conn(), &uri)?.map(|(_, document)| document);
        }
        if found.is_none() {
            found = find_document(layers.base, &uri)?
                .filter(|(id, _)| !layers.delta.is_some_and(|delta| delta.masks_document(*id)))
                .map(|(_, document)| document);
        }
        match found {
            Some(document) => lookup.documents.push(document),
            None => lookup.missing.push(uri),
        }
    }
    crate::authors::attach(layers, &mut lookup.documents)?;
    Ok(Ok(lookup))
}

/// The document `uri` in one build, with its rowid there.
fn find_document(conn: &Connection, uri: &str) -> rusqlite::Result<Option<(i64, SearchResult)>> {
    let text = crate::schema::text_source(conn, "d.id")?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DOCUMENT_RESULT_COLUMNS}, substr({TEXT}({text}), 1, {EXCERPT_CHARS}), d.id
         FROM documents AS d WHERE d.uri = ?1"
    ))?;
    statement
        .query_row([uri], |row| {
            let excerpt = crate::search::escape_html(&row.get::<_, String>(10)?);
            Ok((row.get(11)?, document_result(row, excerpt)?))
        })
        .optional()
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

/// [`top_tags`] over a base and its delta: the base's counts, less the tags of the documents
/// the delta masks, plus the delta's own. Only the tags the delta touches can move, so the
/// answer is among the base's first `limit` plus that many, and those tags.
pub fn top_tags_in(layers: Layers<'_>, limit: u32) -> rusqlite::Result<Vec<TagCount>> {
    let Some(delta) = layers.delta else {
        return top_tags(layers.base, limit);
    };
    let mut changes: HashMap<String, i64> = HashMap::new();
    for (sql, sign) in [
        ("SELECT tag, documents FROM tag_counts", 1),
        ("SELECT tag, documents FROM delta_tag_removals", -1),
    ] {
        let mut statement = delta.conn().prepare_cached(sql)?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (tag, documents) = row?;
            *changes.entry(tag).or_default() += sign * documents;
        }
    }
    let touched = u32::try_from(changes.len()).unwrap_or(u32::MAX);
    let mut counts: HashMap<String, i64> = top_tags(layers.base, limit.saturating_add(touched))?
        .into_iter()
        .map(|count| (count.tag, count.documents as i64))
        .collect();
    let mut base_count = layers
        .base
        .prepare_cached("SELECT documents FROM tag_counts WHERE tag = ?1")?;
    for (tag, change) in changes {
        let base = match counts.get(&tag) {
            Some(&documents) => documents,
            None => base_count
                .query_row([&tag], |row| row.get(0))
                .optional()?
                .unwrap_or(0),
        };
        counts.insert(tag, base + change);
    }
    let mut tags: Vec<TagCount> = counts
        .into_iter()
        .filter(|(_, documents)| *documents > 0)
        .map(|(tag, documents)| TagCount {
            tag,
            documents: documents as u64,
        })
        .collect();
    tags.sort_by(|a, b| {
        b.documents
            .cmp(&a.documents)
            .then_with(|| a.tag.cmp(&b.tag))
    });
    tags.truncate(limit as usize);
    Ok(tags)
}
