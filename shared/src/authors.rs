//! Authors' handles: a build's `handles` table maps each author's DID to the handle the native
//! worker last saw for it (the firehose's identity events), so results name their author and
//! `author=` takes a handle as well as a DID.
//!
//! A delta carries the handles of the authors it rewrites, which include every author whose
//! handle changed since its base (a handle change marks the account changed). So the delta's
//! row for a DID wins over the base's, and a handle the base maps to a DID the delta renamed
//! no longer finds that DID. Builds from before schema 7 have no `handles`: their results carry
//! no handle, and a handle matches no one.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::delta::Layers;
use crate::search::SearchResult;

/// Longest handle accepted (a DNS name).
const MAX_HANDLE_CHARS: usize = 253;

/// The handle `text` names, normalised (lowercase, no leading `@`), if it is shaped like one:
/// two or more dot-separated labels of letters, digits and hyphens, none starting or ending with
/// a hyphen, the last not starting with a digit.
pub fn parse_handle(text: &str) -> Option<String> {
    let handle = text.trim().trim_start_matches('@').to_ascii_lowercase();
    let labels: Vec<&str> = handle.split('.').collect();
    let label_ok = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let shaped = handle.len() <= MAX_HANDLE_CHARS
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && !labels
            .last()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_digit()));
    shaped.then_some(handle)
}

/// Whether a build has a `handles` table.
fn has_handles(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'handles'")?
        .query_row([], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

fn handle_in(conn: &Connection, did: &str) -> rusqlite::Result<Option<String>> {
    if !has_handles(conn)? {
        return Ok(None);
    }
    conn.prepare_cached("SELECT handle FROM handles WHERE did = ?1")?
        .query_row([did], |row| row.get(0))
        .optional()
}

fn did_in(conn: &Connection, handle: &str) -> rusqlite::Result<Option<String>> {
    if !has_handles(conn)? {
        return Ok(None);
    }
    // Two DIDs claiming one handle (a stale row beside a rename): it names no one.
    let dids: Vec<String> = conn
        .prepare_cached("SELECT did FROM handles WHERE handle = ?1 LIMIT 2")?
        .query_map([handle], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(match <[String; 1]>::try_from(dids) {
        Ok([did]) => Some(did),
        Err(_) => None,
    })
}

/// The author's current handle: the delta's, else the base's.
pub fn handle_of(layers: Layers<'_>, did: &str) -> rusqlite::Result<Option<String>> {
    if let Some(delta) = layers.delta
        && let Some(handle) = handle_in(delta.conn(), did)?
    {
        return Ok(Some(handle));
    }
    handle_in(layers.base, did)
}

/// The DID whose current handle is `handle` (normalised by [`parse_handle`]).
pub fn did_of(layers: Layers<'_>, handle: &str) -> rusqlite::Result<Option<String>> {
    if let Some(delta) = layers.delta
        && let Some(did) = did_in(delta.conn(), handle)?
    {
        return Ok(Some(did));
    }
    match did_in(layers.base, handle)? {
        // Unless the delta renamed that DID since.
        Some(did) if handle_of(layers, &did)?.as_deref() == Some(handle) => Ok(Some(did)),
        _ => Ok(None),
    }
}

/// Fills in each result's handle: one lookup per distinct author on the page.
pub fn attach(layers: Layers<'_>, results: &mut [SearchResult]) -> rusqlite::Result<()> {
    let mut known: HashMap<String, Option<String>> = HashMap::new();
    for result in results {
        if !known.contains_key(&result.did) {
            known.insert(result.did.clone(), handle_of(layers, &result.did)?);
        }
        result.handle = known[&result.did].clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_handle;

    #[test]
    fn handles_are_normalised_or_refused() {
        assert_eq!(
            parse_handle("@Alice.bsky.social").as_deref(),
            Some("alice.bsky.social")
        );
        assert_eq!(
            parse_handle("a-b.example.com").as_deref(),
            Some("a-b.example.com")
        );
        for bad in [
            "alice",
            "did:plc:abc",
            "-a.example",
            "a-.example",
            "a..example",
            "a.123",
            "a b.example",
            "",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert_eq!(parse_handle(bad), None, "{bad:?}");
        }
    }
}
