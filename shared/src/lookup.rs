//! Direct reads from a snapshot that are not searches: documents by URI, and tag counts.
//! Shared so the edge and native tools answer identically.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::platform::Platform;
use crate::search::{ResultKind, SearchResult};
use crate::timestamp::Timestamp;

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

/// Looks up documents by at-uri, keeping request order; duplicates are answered once.
pub fn documents_by_uri(
    conn: &Connection,
    uris: &[String],
) -> Result<Result<DocumentLookup, LookupError>, rusqlite::Error> {
    if uris.is_empty() {
        return Ok(Err(LookupError::NoUris));
    }
    if uris.len() > MAX_URIS {
        return Ok(Err(LookupError::TooMany));
    }
    let mut statement = conn.prepare_cached(
        "SELECT uri, did, rkey, platform, title, content, created_at, base_path, path, cover_image,
                publication_uri IS NOT NULL
         FROM documents WHERE uri = ?1",
    )?;
    let mut lookup = DocumentLookup {
        documents: Vec::new(),
        missing: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for uri in uris {
        if !seen.insert(uri.as_str()) {
            continue;
        }
        let found = statement
            .query_row([uri], |row| {
                let did: String = row.get(1)?;
                let rkey: String = row.get(2)?;
                let platform: Platform =
                    row.get::<_, String>(3)?.parse().unwrap_or(Platform::Other);
                let base_path: Option<String> = row.get(7)?;
                let path: Option<String> = row.get(8)?;
                let content: String = row.get(5)?;
                let excerpt: String = content.chars().take(EXCERPT_CHARS).collect();
                Ok(SearchResult {
                    kind: if row.get(10)? {
                        ResultKind::Article
                    } else {
                        ResultKind::Looseleaf
                    },
                    uri: row.get(0)?,
                    url: platform.document_url(&did, &rkey, base_path.as_deref(), path.as_deref()),
                    did,
                    rkey,
                    platform,
                    title: row.get(4)?,
                    snippet: crate::search::escape_html(&excerpt),
                    created_at: row
                        .get::<_, Option<String>>(6)?
                        .and_then(|t| Timestamp::parse(&t).ok()),
                    base_path,
                    path,
                    cover_image: row.get(9)?,
                })
            })
            .optional()?;
        match found {
            Some(document) => lookup.documents.push(document),
            None => lookup.missing.push(uri.clone()),
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
