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

use pubsearch_shared::embed::model::EmbeddingModel;
use pubsearch_shared::manifest::{self, Manifest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotPublication, SnapshotWriter};
use pubsearch_shared::{Platform, Timestamp, schema};
use rusqlite::Connection;

use crate::store::{Store, StoreError, read, vectors};

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

/// Builds a snapshot of `store` into `out` (replaced if present) and returns it with its manifest.
/// `progress` is called with the number of documents written so far and how many there are.
pub fn build(
    store: &Store,
    out: &Path,
    build_id: &str,
    channel: &str,
    progress: impl FnMut(u64, u64),
) -> Result<BuiltSnapshot, BuildError> {
    // With the model installed, every document is embedded for semantic search.
    let model = crate::embed::stored::for_builds();
    build_with(store, out, build_id, channel, model.as_deref(), progress)
}

/// [`build`], embedding documents with `model` (none: a build without vectors).
pub fn build_with(
    store: &Store,
    out: &Path,
    build_id: &str,
    channel: &str,
    model: Option<&EmbeddingModel>,
    mut progress: impl FnMut(u64, u64),
) -> Result<BuiltSnapshot, BuildError> {
    let started = Instant::now();
    let write = BuildError::write(out);
    let mut target = create_target(out)?;
    let mut source = store.reader()?;
    let tx = source.transaction().map_err(BuildError::Read)?;
    let watermark = read::newest_stamp(&tx).map_err(BuildError::Read)?;
    let source_documents =
        read::count_eligible_documents(&tx, watermark).map_err(BuildError::Read)?;

    let mut writer = SnapshotWriter::create(&mut target).map_err(&write)?;
    // Every author of a row written, for the snapshot's `handles`.
    let mut authors = std::collections::BTreeSet::new();

    for publication in read_publications(&tx, watermark, None).map_err(BuildError::Read)? {
        writer.add_publication(&publication).map_err(&write)?;
        authors.insert(publication.did);
    }
    // Newest first: snapshot ids follow this order, and search examines matches in id order
    // (ARCHITECTURE.md invariant 9).
    let order = newest_first(&tx, watermark).map_err(BuildError::Read)?;
    let mut written = 0u64;
    let mut stored_vectors = 0u64;
    for ids in order.chunks(PAGE_ROWS) {
        let documents = read_documents(&tx, watermark, ids).map_err(BuildError::Read)?;
        stored_vectors += add_documents(&tx, &mut writer, documents, model, &mut authors, out)?;
        written += ids.len() as u64;
        progress(written, order.len() as u64);
    }
    add_handles(&tx, &mut writer, &authors, out)?;
    writer.finish_with(watermark, model).map_err(&write)?;
    drop(tx);
    let manifest = seal(target, out, build_id, channel, watermark, None)?;
    let counts = manifest.counts;
    tracing::info!(
        build_id,
        documents = counts.documents,
        publications = counts.publications,
        stored_vectors,
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

/// Writes `documents` (store id and row), giving each the vector by `model` the store keeps
/// for it (see `store::vectors`), so the build embeds only the others; notes their authors.
/// Returns how many vectors came from the store.
pub(super) fn add_documents(
    tx: &rusqlite::Transaction<'_>,
    writer: &mut SnapshotWriter<'_>,
    documents: Vec<(i64, SnapshotDocument)>,
    model: Option<&EmbeddingModel>,
    authors: &mut std::collections::BTreeSet<String>,
    out: &Path,
) -> Result<u64, BuildError> {
    let write = BuildError::write(out);
    let stored = match model {
        Some(model) => {
            let ids: Vec<i64> = documents.iter().map(|(id, _)| *id).collect();
            vectors::current(tx, &model.name, &ids).map_err(BuildError::Read)?
        }
        None => Default::default(),
    };
    let mut given = 0;
    for (store_id, document) in documents {
        let row = writer.add_document(&document).map_err(&write)?;
        if let (Some(model), Some(vector)) = (model, stored.get(&store_id)) {
            writer
                .give_vector(row, &model.name, vector)
                .map_err(&write)?;
            given += 1;
        }
        authors.insert(document.did);
    }
    Ok(given)
}

/// Writes the handles the store knows for `authors` (see `pubsearch_shared::authors`).
pub(super) fn add_handles(
    tx: &rusqlite::Transaction<'_>,
    writer: &mut SnapshotWriter<'_>,
    authors: &std::collections::BTreeSet<String>,
    out: &Path,
) -> Result<(), BuildError> {
    let handles =
        read::handles(tx, authors.iter().map(String::as_str)).map_err(BuildError::Read)?;
    for (did, handle) in handles {
        writer
            .add_handle(&did, &handle)
            .map_err(BuildError::write(out))?;
    }
    Ok(())
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

/// The publications passing policy at `watermark` (of those with store ids `only`, if given),
/// as the snapshot holds them.
pub(super) fn read_publications(
    conn: &Connection,
    watermark: i64,
    only: Option<&[i64]>,
) -> rusqlite::Result<Vec<SnapshotPublication>> {
    let rows = read::eligible_publications(conn, watermark, only)?;
    Ok(rows
        .into_iter()
        .map(|p| SnapshotPublication {
            platform: p
                .platform
                .and_then(|name| name.parse().ok())
                .unwrap_or(Platform::Other),
            created_at: parse_time(p.created_at),
            indexed_at_us: p.indexed_at,
            uri: p.uri,
            did: p.did,
            rkey: p.rkey,
            name: p.name,
            description: p.description,
            base_path: p.base_path,
            discoverable: p.discoverable,
        })
        .collect())
}

/// The store ids of the documents passing policy at `watermark`, newest `created_at` first (the
/// date the snapshot gives each, see [`created_at`]), ties by store id.
fn newest_first(conn: &Connection, watermark: i64) -> rusqlite::Result<Vec<i64>> {
    let mut dated: Vec<(i64, i64)> = read::eligible_document_dates(conn, watermark)?
        .into_iter()
        .map(|d| (created_at(d.created_at, d.indexed_at).unix_millis(), d.id))
        .collect();
    dated.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(dated.into_iter().map(|(_, id)| id).collect())
}

/// The date a snapshot gives a document: its own `created_at`, or when it was indexed if that
/// does not parse.
pub(super) fn created_at(text: Option<String>, indexed_at_us: i64) -> Timestamp {
    parse_time(text).unwrap_or_else(|| micros_to_time(indexed_at_us))
}

/// The documents with store ids `ids` passing policy at `watermark`, in that order, with their
/// store ids, as the snapshot holds them: the platform the record names, else its
/// publication's, else its site's host; the publication's base path, else the site's.
pub(super) fn read_documents(
    conn: &Connection,
    watermark: i64,
    ids: &[i64],
) -> rusqlite::Result<Vec<(i64, SnapshotDocument)>> {
    let rows = read::eligible_documents(conn, watermark, ids)?;
    Ok(rows
        .into_iter()
        .map(|d| {
            (
                d.id,
                SnapshotDocument {
                    platform: d
                        .platform
                        .or(d.publication_platform)
                        .and_then(|name| name.parse().ok())
                        .or_else(|| d.site_url.as_deref().map(Platform::from_host))
                        .unwrap_or(Platform::Other),
                    base_path: d
                        .publication_base_path
                        .or_else(|| d.site_url.as_deref().and_then(base_path_of)),
                    created_at: created_at(d.created_at, d.indexed_at),
                    indexed_at_us: d.indexed_at,
                    uri: d.uri,
                    did: d.did,
                    rkey: d.rkey,
                    collection: d.collection,
                    title: d.title,
                    content: d.content,
                    publication_uri: d.publication_uri,
                    path: d.path,
                    tags: d.tags,
                    cover_image: d.cover_image,
                },
            )
        })
        .collect())
}

/// How many store documents pass policy at `watermark`, as the store is now: what a snapshot
/// at that watermark would contain exactly.
pub fn expected_document_count(store: &Store, watermark: i64) -> Result<u64, BuildError> {
    read::count_eligible_documents(&store.reader()?, watermark).map_err(BuildError::Read)
}
