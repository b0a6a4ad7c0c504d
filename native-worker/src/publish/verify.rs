//! Verification gates a build passes before it is published, and again on adoption by readers.

use std::path::Path;

use pubsearch_shared::manifest::{self, ArtifactDigests, Manifest, VerifyError};
use rusqlite::{Connection, OpenFlags};

use super::build::{BuiltSnapshot, expected_document_count};
use crate::store::Store;

/// Why a build is refused. Every variant names what failed; the workflow fails with it.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Snapshot(#[from] VerifyError),
    #[error(
        "the snapshot has {actual} documents but the store had {expected} passing policy at the \
         watermark when it was built"
    )]
    SourceCount { expected: u64, actual: u64 },
    #[error("{0} documents by banned or deactivated authors leaked into the snapshot")]
    BannedLeak(u64),
    #[error("{0} documents of undiscoverable publications leaked into the snapshot")]
    UndiscoverableLeak(u64),
    #[error(
        "the build has {actual} documents, under half of the live build's {previous}; \
         refusing without --force"
    )]
    CountFloor { previous: u64, actual: u64 },
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] super::build::BuildError),
    #[error(transparent)]
    Delta(#[from] pubsearch_shared::delta::DeltaError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Checks an artifact file against its manifest: size, sha256 and, where the manifest has one,
/// every chunk's digest in its chunk table.
pub fn verify_artifact_file(path: &Path, manifest: &Manifest) -> Result<(), GateError> {
    let io = |source| GateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let chunk_bytes = manifest
        .chunks
        .as_ref()
        .map_or(manifest::CHUNK_BYTES, |table| table.chunk_bytes);
    let digests = std::fs::File::open(path)
        .and_then(|file| ArtifactDigests::of_reader(file, chunk_bytes))
        .map_err(io)?;
    let bytes = digests.bytes();
    let (sha256, chunks) = digests.finish();
    manifest.check_artifact(bytes, &sha256)?;
    if let Some(table) = &manifest.chunks {
        manifest.check_chunks(table, &chunks)?;
    }
    Ok(())
}

/// Every gate: artifact digest, schema, integrity, exact counts (against the manifest and against
/// the store as the build read it), FTS sentinel, no banned or undiscoverable leaks in the store
/// as it is now, count floor.
pub fn verify_build(
    store: &Store,
    built: &BuiltSnapshot,
    previous: Option<&Manifest>,
    force: bool,
) -> Result<(), GateError> {
    let manifest = &built.manifest;
    let conn = open_verified(built)?;
    let expected = match built.source_documents {
        Some(counted) => counted,
        // Built by a worker that did not record the count: the live store is all there is.
        None => expected_document_count(store, manifest.source_watermark_us)?,
    };
    if expected != manifest.counts.documents {
        return Err(GateError::SourceCount {
            expected,
            actual: manifest.counts.documents,
        });
    }
    check_no_leaks(store, &conn)?;
    if let Some(previous) = previous
        && !force
        && manifest.counts.documents * 2 < previous.counts.documents
    {
        return Err(GateError::CountFloor {
            previous: previous.counts.documents,
            actual: manifest.counts.documents,
        });
    }
    Ok(())
}

/// Opens a built file after checking it against its manifest: digests, integrity, counts and
/// sentinel.
fn open_verified(built: &BuiltSnapshot) -> Result<Connection, GateError> {
    verify_artifact_file(&built.path, &built.manifest)?;
    let conn = Connection::open_with_flags(&built.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // No check reads document text today, but one that did would need this to.
    pubsearch_shared::content::install(&conn)?;
    manifest::verify_snapshot(&conn, &built.manifest)?;
    Ok(conn)
}

/// No document in the snapshot open on `conn` is by an author the store now excludes (banned or
/// deactivated) or in a publication hidden from discovery.
fn check_no_leaks(store: &Store, conn: &Connection) -> Result<(), GateError> {
    let source = store.reader().map_err(super::build::BuildError::from)?;
    let excluded = crate::store::read::excluded_dids(&source)?;
    let mut leaked = 0u64;
    let mut by_author = conn.prepare("SELECT count(*) FROM documents WHERE did = ?1")?;
    for did in &excluded {
        leaked += by_author.query_row([did], |row| row.get::<_, i64>(0))? as u64;
    }
    if leaked > 0 {
        return Err(GateError::BannedLeak(leaked));
    }
    let hidden: i64 = conn.query_row(
        "SELECT count(*) FROM documents d JOIN publications p ON p.uri = d.publication_uri WHERE p.discoverable = 0",
        [],
        |row| row.get(0),
    )?;
    if hidden > 0 {
        return Err(GateError::UndiscoverableLeak(hidden as u64));
    }
    Ok(())
}

/// The gates of a delta (see [`super::delta`]): artifact digest, integrity, counts, sentinel,
/// that it is a delta over `base_build_id`, and no leaks.
pub fn verify_delta(
    store: &Store,
    built: &BuiltSnapshot,
    base_build_id: &str,
) -> Result<(), GateError> {
    let manifest = &built.manifest;
    let conn = open_verified(built)?;
    check_no_leaks(store, &conn)?;
    let delta = pubsearch_shared::delta::Delta::open(conn)?;
    delta.check_base(base_build_id)?;
    if manifest.base_build_id.as_deref() != Some(base_build_id) {
        return Err(GateError::Delta(
            pubsearch_shared::delta::DeltaError::OtherBase {
                base: base_build_id.to_owned(),
                delta_base: manifest.base_build_id.clone().unwrap_or_default(),
            },
        ));
    }
    Ok(())
}
