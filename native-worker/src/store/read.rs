//! The store's typed read API: everything other stages read from the store goes through here,
//! so its tables, and the policy deciding what may be served, are written down in `store/` only
//! (ARCHITECTURE.md, "Stages").
//!
//! Every function takes a read connection ([`super::Store::reader`]) or a transaction on one,
//! so a caller that needs one consistent state (a snapshot build) reads it all in one
//! transaction. Rows come back as the store holds them; shaping them for serving is the
//! caller's business.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, named_params};

/// A document that passes policy at a watermark, as the store holds it, with what its
/// publication (if live) adds.
#[derive(Debug, Clone, PartialEq)]
pub struct EligibleDocument {
    pub id: i64,
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub collection: String,
    /// The platform the record names, if any.
    pub platform: Option<String>,
    pub site_url: Option<String>,
    pub title: String,
    pub content: String,
    /// As the record gave it (RFC 3339), unparsed.
    pub created_at: Option<String>,
    /// The stamp of the commit that last wrote the row (Unix µs).
    pub indexed_at: i64,
    pub publication_uri: Option<String>,
    pub path: Option<String>,
    pub tags: Vec<String>,
    pub cover_image: Option<String>,
    /// The live publication's platform and base path, if the document belongs to one.
    pub publication_platform: Option<String>,
    pub publication_base_path: Option<String>,
}

/// A publication that passes policy at a watermark.
#[derive(Debug, Clone, PartialEq)]
pub struct EligiblePublication {
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub platform: Option<String>,
    pub name: String,
    pub description: String,
    pub base_path: Option<String>,
    pub created_at: Option<String>,
    pub indexed_at: i64,
    pub discoverable: bool,
}

/// An eligible document's store id and the dates a snapshot orders it by.
#[derive(Debug, Clone, PartialEq)]
pub struct DatedDocument {
    pub id: i64,
    pub created_at: Option<String>,
    pub indexed_at: i64,
}

/// Store rows changed since a stamp: what a delta over a build cut at that stamp reconsiders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangedRows {
    /// `(store id, uri)` of documents, in id order.
    pub documents: Vec<(i64, String)>,
    /// `(store id, uri)` of publications, in id order.
    pub publications: Vec<(i64, String)>,
    /// The banned list changed since.
    pub banned_list: bool,
}

/// Where the document aliased `d` passes policy at `:watermark`: live, searchable, author not
/// banned or deactivated, publication (if any) discoverable, and the first copy of any
/// cross-posted text among those that pass the same checks (so a banned or deactivated early
/// copy cannot hide the legitimate one).
fn document_policy() -> String {
    format!(
        "{own} AND (d.content_hash IS NULL OR d.id = (
             SELECT min(d2.id) FROM documents d2 WHERE d2.content_hash = d.content_hash AND {copy}))",
        own = eligible("d"),
        copy = eligible("d2"),
    )
}

/// The per-row policy checks for the document aliased `doc`, dedup aside.
fn eligible(doc: &str) -> String {
    format!(
        "{doc}.deleted = 0 AND {doc}.searchable = 1 AND {doc}.indexed_at <= :watermark
         AND {doc}.did NOT IN (SELECT did FROM banned_dids)
         AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.did = {doc}.did AND a.active = 0)
         AND NOT EXISTS (SELECT 1 FROM publications hidden
                         WHERE hidden.uri = {doc}.publication_uri AND hidden.deleted = 0
                           AND hidden.discoverable = 0)"
    )
}

/// The store ids and dates of every document passing policy at `watermark`, in no order.
pub fn eligible_document_dates(
    conn: &Connection,
    watermark: i64,
) -> rusqlite::Result<Vec<DatedDocument>> {
    let sql = format!(
        "SELECT d.id, d.created_at, d.indexed_at FROM documents d WHERE {policy}",
        policy = document_policy(),
    );
    conn.prepare(&sql)?
        .query_map(named_params! {":watermark": watermark}, |row| {
            Ok(DatedDocument {
                id: row.get(0)?,
                created_at: row.get(1)?,
                indexed_at: row.get(2)?,
            })
        })?
        .collect()
}

/// The documents with store ids `ids` that pass policy at `watermark`, in the order of `ids`.
pub fn eligible_documents(
    conn: &Connection,
    watermark: i64,
    ids: &[i64],
) -> rusqlite::Result<Vec<EligibleDocument>> {
    let sql = format!(
        "SELECT d.id, d.uri, d.did, d.rkey, d.collection, d.platform, d.site_url, d.title, d.content,
                d.created_at, d.indexed_at, d.publication_uri, d.path, d.tags, d.cover_image,
                p.platform, p.base_path
         FROM documents d
         LEFT JOIN publications p ON p.uri = d.publication_uri AND p.deleted = 0
         WHERE d.id IN (SELECT value FROM json_each(:ids)) AND {policy}",
        policy = document_policy(),
    );
    let ids_json = serde_json::to_string(ids).expect("integers serialise");
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(
        named_params! {":ids": ids_json, ":watermark": watermark},
        |row| {
            let tags: String = row.get(13)?;
            let document = EligibleDocument {
                id: row.get(0)?,
                uri: row.get(1)?,
                did: row.get(2)?,
                rkey: row.get(3)?,
                collection: row.get(4)?,
                platform: row.get(5)?,
                site_url: row.get(6)?,
                title: row.get(7)?,
                content: row.get(8)?,
                created_at: row.get(9)?,
                indexed_at: row.get(10)?,
                publication_uri: row.get(11)?,
                path: row.get(12)?,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                cover_image: row.get(14)?,
                publication_platform: row.get(15)?,
                publication_base_path: row.get(16)?,
            };
            Ok((document.id, document))
        },
    )?;
    let mut by_id: std::collections::HashMap<i64, EligibleDocument> =
        rows.collect::<rusqlite::Result<_>>()?;
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// How many documents pass policy at `watermark`, counted in one query independently of the
/// paged export, so verification can catch an export that lost or duplicated rows.
pub fn count_eligible_documents(conn: &Connection, watermark: i64) -> rusqlite::Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM documents d WHERE {}",
        document_policy()
    );
    conn.query_row(&sql, named_params! {":watermark": watermark}, |row| {
        row.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

/// The publications passing policy at `watermark` (of those with store ids `only`, if given),
/// in store id order.
pub fn eligible_publications(
    conn: &Connection,
    watermark: i64,
    only: Option<&[i64]>,
) -> rusqlite::Result<Vec<EligiblePublication>> {
    let mut statement = conn.prepare_cached(
        "SELECT p.uri, p.did, p.rkey, p.platform, p.name, p.description, p.base_path,
                p.created_at, p.indexed_at, p.discoverable
         FROM publications p
         WHERE p.deleted = 0 AND p.indexed_at <= ?1
           AND p.did NOT IN (SELECT did FROM banned_dids)
           AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.did = p.did AND a.active = 0)
           AND (?2 IS NULL OR p.id IN (SELECT value FROM json_each(?2)))
         ORDER BY p.id",
    )?;
    let only = only.map(|ids| serde_json::to_string(ids).expect("integers serialise"));
    statement
        .query_map((watermark, only), |row| {
            Ok(EligiblePublication {
                uri: row.get(0)?,
                did: row.get(1)?,
                rkey: row.get(2)?,
                platform: row.get(3)?,
                name: row.get(4)?,
                description: row.get(5)?,
                base_path: row.get(6)?,
                created_at: row.get(7)?,
                indexed_at: row.get(8)?,
                discoverable: row.get(9)?,
            })
        })?
        .collect()
}

/// The documents and publications changed since `since`, found through the stamp indexes:
/// rows stamped after it, rows of accounts changed since, documents of publications changed
/// since, and every copy (same text hash) of a changed document.
pub fn changed_rows(conn: &Connection, since: i64) -> rusqlite::Result<ChangedRows> {
    let documents = conn
        .prepare_cached(
            "WITH changed(id) AS (
                 SELECT id FROM documents WHERE indexed_at > :since
                 UNION SELECT d.id FROM accounts AS a JOIN documents AS d ON d.did = a.did
                       WHERE a.updated_at > :since
                 UNION SELECT d.id FROM publications AS p
                       JOIN documents AS d ON d.publication_uri = p.uri
                       WHERE p.indexed_at > :since),
             copies(id) AS (
                 SELECT id FROM changed
                 UNION SELECT other.id FROM documents AS d JOIN changed USING (id)
                       JOIN documents AS other ON other.content_hash = d.content_hash
                       WHERE d.content_hash IS NOT NULL)
             SELECT d.id, d.uri FROM copies JOIN documents AS d USING (id) ORDER BY d.id",
        )?
        .query_map(named_params! {":since": since}, |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let publications = conn
        .prepare_cached(
            "SELECT id, uri FROM publications WHERE indexed_at > :since
             UNION SELECT p.id, p.uri FROM accounts AS a JOIN publications AS p ON p.did = a.did
                   WHERE a.updated_at > :since
             ORDER BY 1",
        )?
        .query_map(named_params! {":since": since}, |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let banned_list = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM policy_changes WHERE changed_at > ?1)")?
        .query_row([since], |row| row.get(0))?;
    Ok(ChangedRows {
        documents,
        publications,
        banned_list,
    })
}

/// Adds to `rows` every document carrying one of the text `hashes` it does not list yet.
pub fn add_copies_of(
    conn: &Connection,
    rows: &mut ChangedRows,
    hashes: &[String],
) -> rusqlite::Result<()> {
    let mut known: HashSet<i64> = rows.documents.iter().map(|(id, _)| *id).collect();
    let mut statement =
        conn.prepare_cached("SELECT id, uri FROM documents WHERE content_hash = ?1")?;
    for hash in hashes {
        for copy in statement.query_map([hash], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let (id, uri): (i64, String) = copy?;
            if known.insert(id) {
                rows.documents.push((id, uri));
            }
        }
    }
    Ok(())
}

/// The DIDs whose records must not be served: banned, or with a deactivated or taken-down
/// account.
pub fn excluded_dids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT did FROM banned_dids UNION SELECT did FROM accounts WHERE active = 0 ORDER BY 1",
    )?
    .query_map([], |row| row.get(0))?
    .collect()
}

/// The handles the store knows for `dids` (those it has one for), for a snapshot's `handles`.
pub fn handles<'a>(
    conn: &Connection,
    dids: impl IntoIterator<Item = &'a str>,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut statement = conn.prepare_cached(
        "SELECT handle FROM accounts WHERE did = ?1 AND handle IS NOT NULL AND handle != ''",
    )?;
    let mut found = Vec::new();
    for did in dids {
        if let Some(handle) = statement
            .query_row([did], |row| row.get::<_, String>(0))
            .optional()?
        {
            found.push((did.to_owned(), handle));
        }
    }
    Ok(found)
}

/// The banned-DID list last stored by [`super::StoreWriter::replace_banned_dids`].
pub fn banned_dids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT did FROM banned_dids ORDER BY did")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// The newest stamp of any change a snapshot reflects (0 for an empty store): documents,
/// publications, accounts and the ban list. A snapshot's watermark, and what the next batch's
/// stamp must pass so that "stamp <= watermark" cuts between commits. Each is indexed.
pub fn newest_stamp(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT max(coalesce((SELECT max(indexed_at) FROM documents), 0),
                    coalesce((SELECT max(indexed_at) FROM publications), 0),
                    coalesce((SELECT max(updated_at) FROM accounts), 0),
                    coalesce((SELECT max(changed_at) FROM policy_changes), 0))",
    )?
    .query_row([], |row| row.get(0))
}

/// Whether anything a snapshot cut at `watermark` shows has changed since: a document or
/// publication, the ban list, or the account of an author with documents. Accounts without
/// documents change all the time on the firehose and are left out, so they alone never make a
/// new snapshot worth building.
pub fn changed_since(conn: &Connection, watermark: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM documents WHERE indexed_at > ?1)
             OR EXISTS (SELECT 1 FROM publications WHERE indexed_at > ?1)
             OR EXISTS (SELECT 1 FROM policy_changes WHERE changed_at > ?1)
             OR EXISTS (SELECT 1 FROM accounts AS a WHERE a.updated_at > ?1
                        AND EXISTS (SELECT 1 FROM documents AS d WHERE d.did = a.did))",
    )?
    .query_row([watermark], |row| row.get(0))
}

/// A source's durable cursor, if it has one.
pub fn cursor(conn: &Connection, source: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT position FROM cursors WHERE source = ?1")?
        .query_row([source], |row| row.get(0))
        .optional()
}

/// Where a backfill of `did`'s `collection` stands: `None` if never started, else
/// `(cursor, done)`.
pub fn backfill_progress(
    conn: &Connection,
    did: &str,
    collection: &str,
) -> rusqlite::Result<Option<(Option<String>, bool)>> {
    conn.prepare_cached(
        "SELECT cursor, done FROM backfill_progress WHERE did = ?1 AND collection = ?2",
    )?
    .query_row([did, collection], |row| Ok((row.get(0)?, row.get(1)?)))
    .optional()
}

/// Up to `limit` entries of the upstream queue after entry `after`, oldest first: each entry's
/// id and the row images one committed batch queued for Turso.
pub fn upstream_entries(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, Vec<super::replica::RowImage>)>> {
    conn.prepare_cached("SELECT id, rows FROM upstream_queue WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map((after, limit as i64), |row| {
            let rows: String = row.get(1)?;
            let images = serde_json::from_str(&rows).map_err(|error| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    Box::new(error),
                )
            })?;
            Ok((row.get(0)?, images))
        })?
        .collect()
}
