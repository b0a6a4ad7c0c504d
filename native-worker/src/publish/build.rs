//! Building a serving snapshot from the store's read side.
//!
//! The whole export runs inside one WAL read transaction, so it sees a single consistent state
//! while ingest keeps committing. The snapshot holds exactly the policy-passing documents with
//! `indexed_at <= watermark`, where the watermark is the newest `indexed_at` at build start.
//!
//! The build first lists those documents' ids newest first (16 bytes each while sorting: 16 MB
//! for a million), then reads and writes them in that order a page at a time, so the snapshot
//! numbers documents newest first (ARCHITECTURE.md invariant 9) and holds one page of rows in
//! memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pubsearch_shared::manifest::{self, Manifest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotPublication, SnapshotWriter};
use pubsearch_shared::{Platform, Timestamp, schema};
use rusqlite::Connection;

use crate::store::{Store, StoreError};

/// Page size of built snapshots: small pages keep the edge's per-query reads and cache small.
pub const SNAPSHOT_PAGE_SIZE: u32 = 4096;
/// Rows read from the store per page.
const PAGE_ROWS: usize = 1_000;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the store: {0}")]
    Read(rusqlite::Error),
    #[error("writing the snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the base {path}: {source}")]
    Base {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the built snapshot failed its own verification: {0}")]
    Verify(#[from] manifest::VerifyError),
}

impl BuildError {
    /// Maps an I/O error on `path` into a [`BuildError::Io`].
    pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
        move |source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Maps an SQLite error writing `path` into a [`BuildError::Write`].
    pub(super) fn write(path: &Path) -> impl Fn(rusqlite::Error) -> BuildError + '_ {
        move |source| BuildError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A snapshot file on local disk and the manifest describing it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuiltSnapshot {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// The store documents passing policy at the watermark, counted by SQL independent of the
    /// export inside the build's read transaction: what the snapshot must hold. Counted then,
    /// not at verify time, because an edit or delete meanwhile re-stamps a document past the
    /// watermark; recorded with the build, so it survives a resumed workflow. `None` only in a
    /// build recorded before this field existed.
    #[serde(default)]
    pub source_documents: Option<u64>,
}

/// Where the document aliased `d` passes policy at `:watermark`: live, searchable, author not
/// banned or deactivated, publication (if any) discoverable, and the first copy of any
/// cross-posted text among those that pass the same checks (so a banned or deactivated early
/// copy cannot hide the legitimate one).
pub(super) fn document_policy() -> String {
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

/// Builds a snapshot of `store` into `out` (replaced if present) and returns it with its manifest.
/// `progress` is called with the number of documents written so far.
pub fn build(
    store: &Store,
    out: &Path,
    build_id: &str,
    channel: &str,
    mut progress: impl FnMut(u64),
) -> Result<BuiltSnapshot, BuildError> {
    let started = Instant::now();
    let write = BuildError::write(out);
    let mut target = create_target(out)?;
    let mut source = store.reader()?;
    let read = source.transaction().map_err(BuildError::Read)?;
    let watermark = crate::store::newest_stamp(&read).map_err(BuildError::Read)?;
    let source_documents = count_passing(&read, watermark).map_err(BuildError::Read)?;

    let mut writer = SnapshotWriter::create(&mut target).map_err(&write)?;

    for publication in read_publications(&read, watermark, None).map_err(BuildError::Read)? {
        writer.add_publication(&publication).map_err(&write)?;
    }
    // Newest first: snapshot ids follow this order, and search examines matches in id order
    // (ARCHITECTURE.md invariant 9).
    let order = newest_first(&read, watermark).map_err(BuildError::Read)?;
    let mut written = 0u64;
    for ids in order.chunks(PAGE_ROWS) {
        for document in read_documents(&read, watermark, ids).map_err(BuildError::Read)? {
            writer.add_document(&document).map_err(&write)?;
        }
        written += ids.len() as u64;
        progress(written);
    }
    writer.finish(watermark).map_err(&write)?;
    drop(read);
    let manifest = seal(target, out, build_id, channel, watermark, None)?;
    let counts = manifest.counts;
    tracing::info!(
        build_id,
        documents = counts.documents,
        publications = counts.publications,
        bytes = manifest.byte_size,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "snapshot built"
    );
    Ok(BuiltSnapshot {
        path: out.to_path_buf(),
        manifest,
        source_documents: Some(source_documents),
    })
}

/// Finishes a written snapshot (or delta, over `base_build_id`) in `target` at `out`: chooses
/// its sentinel, vacuums it, counts it and hashes it into its manifest.
pub(super) fn seal(
    target: Connection,
    out: &Path,
    build_id: &str,
    channel: &str,
    watermark: i64,
    base_build_id: Option<String>,
) -> Result<Manifest, BuildError> {
    let (io, write) = (BuildError::io(out), BuildError::write(out));
    // Its own id, so a delta can be checked against the base it overlays from the files alone.
    target
        .execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('build_id', ?1)",
            [build_id],
        )
        .map_err(&write)?;
    let sentinel = manifest::choose_sentinel(&target)?;
    target.execute_batch("VACUUM").map_err(&write)?;
    let counts = pubsearch_shared::snapshot::count(&target).map_err(&write)?;
    drop(target);

    // Streamed: the artifact is never held in memory whole, however large the corpus.
    let digests = std::fs::File::open(out)
        .and_then(|file| manifest::ArtifactDigests::of_reader(file, manifest::CHUNK_BYTES))
        .map_err(&io)?;
    let byte_size = digests.bytes();
    let (sha256, chunks) = digests.finish();
    let artifact = match &base_build_id {
        Some(_) => manifest::delta_artifact_key(channel, build_id),
        None => manifest::artifact_key(build_id),
    };
    Ok(Manifest {
        build_id: build_id.to_owned(),
        channel: channel.to_owned(),
        schema_version: schema::SCHEMA_VERSION,
        tokenizer: schema::TOKENIZER.to_owned(),
        scoring_version: schema::SCORING_VERSION,
        source_watermark_us: watermark,
        sha256,
        byte_size,
        page_size: SNAPSHOT_PAGE_SIZE,
        counts,
        sentinel,
        created_at: crate::clock::now(),
        builder_version: concat!("native-worker ", env!("CARGO_PKG_VERSION")).to_owned(),
        artifact,
        chunks: Some(chunks),
        base_build_id,
        delta: None,
    })
}

/// Creates `out` afresh (its directory too) and opens it for writing a snapshot.
pub(super) fn create_target(out: &Path) -> Result<Connection, BuildError> {
    let (io, write) = (BuildError::io(out), BuildError::write(out));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(&io)?;
    }
    match std::fs::remove_file(out) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(error)),
        _ => {}
    }
    let target = Connection::open(out).map_err(&write)?;
    target
        .execute_batch(&format!(
            "PRAGMA page_size = {SNAPSHOT_PAGE_SIZE}; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
        ))
        .map_err(&write)?;
    Ok(target)
}

fn parse_time(text: Option<String>) -> Option<Timestamp> {
    text.and_then(|text| Timestamp::parse(&text).ok())
}

fn micros_to_time(micros: i64) -> Timestamp {
    Timestamp::from_unix_millis(micros / 1_000).unwrap_or_else(crate::clock::now)
}

/// The host and path of a `site` URL, as a base path (`example.com/blog`).
fn base_path_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(format!("{host}{}", parsed.path().trim_end_matches('/')))
}

/// The publications passing policy at `watermark` (of those with store ids `only`, if given).
pub(super) fn read_publications(
    conn: &Connection,
    watermark: i64,
    only: Option<&[i64]>,
) -> rusqlite::Result<Vec<SnapshotPublication>> {
    let mut statement = conn.prepare_cached(
        "SELECT p.uri, p.did, p.rkey, coalesce(p.platform, 'other'), p.name, p.description, p.base_path,
                p.created_at, p.indexed_at, p.discoverable
         FROM publications p
         WHERE p.deleted = 0 AND p.indexed_at <= ?1
           AND p.did NOT IN (SELECT did FROM banned_dids)
           AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.did = p.did AND a.active = 0)
           AND (?2 IS NULL OR p.id IN (SELECT value FROM json_each(?2)))
         ORDER BY p.id",
    )?;
    let only = only.map(|ids| serde_json::to_string(ids).expect("integers serialise"));
    let rows = statement.query_map((watermark, only), |row| {
        Ok(SnapshotPublication {
            uri: row.get(0)?,
            did: row.get(1)?,
            rkey: row.get(2)?,
            platform: row.get::<_, String>(3)?.parse().unwrap_or(Platform::Other),
            name: row.get(4)?,
            description: row.get(5)?,
            base_path: row.get(6)?,
            created_at: parse_time(row.get(7)?),
            indexed_at_us: row.get(8)?,
            discoverable: row.get(9)?,
        })
    })?;
    rows.collect()
}

/// The store ids of the documents passing policy at `watermark`, newest `created_at` first (the
/// date the snapshot gives each, see [`created_at`]), ties by store id.
fn newest_first(conn: &Connection, watermark: i64) -> rusqlite::Result<Vec<i64>> {
    let sql = format!(
        "SELECT d.id, d.created_at, d.indexed_at FROM documents d WHERE {policy}",
        policy = document_policy(),
    );
    let mut statement = conn.prepare(&sql)?;
    let mut dated: Vec<(i64, i64)> = statement
        .query_map(rusqlite::named_params! {":watermark": watermark}, |row| {
            let created = created_at(row.get(1)?, row.get(2)?);
            Ok((created.unix_millis(), row.get(0)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    dated.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(dated.into_iter().map(|(_, id)| id).collect())
}

/// The date a snapshot gives a document: its own `created_at`, or when it was indexed if that
/// does not parse.
pub(super) fn created_at(text: Option<String>, indexed_at_us: i64) -> Timestamp {
    parse_time(text).unwrap_or_else(|| micros_to_time(indexed_at_us))
}

/// The documents with store ids `ids`, in that order (each still checked against policy, in the
/// same read transaction that listed them).
pub(super) fn read_documents(
    conn: &Connection,
    watermark: i64,
    ids: &[i64],
) -> rusqlite::Result<Vec<SnapshotDocument>> {
    let sql = format!(
        "SELECT d.id, d.uri, d.did, d.rkey, d.collection, d.platform, p.platform, d.site_url, p.base_path,
                d.title, d.content, d.created_at, d.indexed_at, d.publication_uri, d.path, d.tags, d.cover_image
         FROM documents d
         LEFT JOIN publications p ON p.uri = d.publication_uri AND p.deleted = 0
         WHERE d.id IN (SELECT value FROM json_each(:ids)) AND {policy}",
        policy = document_policy(),
    );
    let ids_json = serde_json::to_string(ids).expect("integers serialise");
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(
        rusqlite::named_params! {":ids": ids_json, ":watermark": watermark},
        |row| {
            let site_url: Option<String> = row.get(7)?;
            let own_platform: Option<String> = row.get(5)?;
            let publication_platform: Option<String> = row.get(6)?;
            let platform = own_platform
                .or(publication_platform)
                .and_then(|name| name.parse().ok())
                .or_else(|| site_url.as_deref().map(Platform::from_host))
                .unwrap_or(Platform::Other);
            let publication_base: Option<String> = row.get(8)?;
            let indexed_at_us: i64 = row.get(12)?;
            let tags: String = row.get(15)?;
            Ok((
                row.get::<_, i64>(0)?,
                SnapshotDocument {
                    uri: row.get(1)?,
                    did: row.get(2)?,
                    rkey: row.get(3)?,
                    collection: row.get(4)?,
                    platform,
                    base_path: publication_base
                        .or_else(|| site_url.as_deref().and_then(base_path_of)),
                    title: row.get(9)?,
                    content: row.get(10)?,
                    created_at: created_at(row.get(11)?, indexed_at_us),
                    indexed_at_us,
                    publication_uri: row.get(13)?,
                    path: row.get(14)?,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                    cover_image: row.get(16)?,
                },
            ))
        },
    )?;
    let mut by_id: std::collections::HashMap<i64, SnapshotDocument> =
        rows.collect::<rusqlite::Result<_>>()?;
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// How many store documents pass policy at `watermark`, as the store is now: what a snapshot
/// at that watermark would contain exactly.
pub fn expected_document_count(store: &Store, watermark: i64) -> Result<u64, BuildError> {
    count_passing(&store.reader()?, watermark).map_err(BuildError::Read)
}

/// Counts the policy-passing documents at `watermark` in one query, independently of the
/// paginated export, so verification can catch an export that lost or duplicated rows.
fn count_passing(conn: &Connection, watermark: i64) -> rusqlite::Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM documents d WHERE {}",
        document_policy()
    );
    conn.query_row(
        &sql,
        rusqlite::named_params! {":watermark": watermark},
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}
