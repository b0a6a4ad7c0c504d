//! The snapshot manifest: the contract between the builder that publishes a snapshot and every
//! reader that adopts one (DESIGN.md invariant 8).
//!
//! Object layout in the store (local directory, R2 or S3):
//!
//! ```text
//! builds/<build_id>/snapshot.db      the SQLite snapshot
//! builds/<build_id>/manifest.json    its manifest
//! channels/<channel>/latest.json     the pointer: a copy of the live build's manifest, written last
//! channels/<channel>/hold.json       a rollback's hold on the channel (the publisher's; readers ignore it)
//! ```
//!
//! The publisher runs [`verify_snapshot`] on a build before uploading it. A reader fetches the
//! pointer, downloads `artifact`, checks size and sha256 while streaming, opens it, and runs
//! [`verify_published`] before serving from it. Anything that fails is refused whole.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::schema::{
    self, OLDEST_READABLE_SCHEMA_VERSION, SCHEMA_VERSION, SCORING_VERSION, TOKENIZER,
};
use crate::snapshot::{self, SnapshotCounts};
use crate::timestamp::Timestamp;

/// A word and the number of documents it must match: proves the FTS index answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentinel {
    pub term: String,
    pub documents: u64,
}

/// Everything a reader needs to trust a snapshot build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub build_id: String,
    /// `prod`, `staging`, …: each channel has its own pointer.
    pub channel: String,
    pub schema_version: u32,
    pub tokenizer: String,
    pub scoring_version: u32,
    /// The snapshot holds exactly the policy-passing documents with `indexed_at` at or below this.
    pub source_watermark_us: i64,
    /// Lowercase hex SHA-256 of the artifact.
    pub sha256: String,
    pub byte_size: u64,
    pub page_size: u32,
    pub counts: SnapshotCounts,
    pub sentinel: Option<Sentinel>,
    pub created_at: Timestamp,
    /// Which builder made it (`native-worker x.y.z`), for incident forensics.
    pub builder_version: String,
    /// Object key of the snapshot file.
    pub artifact: String,
}

/// Why a snapshot (or its manifest) was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("manifest is not valid JSON: {0}")]
    Manifest(#[from] serde_json::Error),
    #[error(
        "build {build_id} speaks schema {schema}/scoring {scoring}/tokenizer {tokenizer:?}; this reader speaks \
         {OLDEST_READABLE_SCHEMA_VERSION}..={SCHEMA_VERSION}/{SCORING_VERSION}/{TOKENIZER:?}"
    )]
    Unspoken {
        build_id: String,
        schema: u32,
        scoring: u32,
        tokenizer: String,
    },
    #[error("artifact is {actual} bytes, manifest says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("artifact sha256 is {actual}, manifest says {expected}")]
    Checksum { expected: String, actual: String },
    #[error("snapshot integrity check failed: {0}")]
    Integrity(String),
    #[error("snapshot counts {actual:?} differ from the manifest's {expected:?}")]
    Counts {
        expected: SnapshotCounts,
        actual: SnapshotCounts,
    },
    #[error("snapshot meta disagrees with its manifest: {0}")]
    Meta(String),
    #[error("{index} indexes {indexed} rows of {rows}")]
    Unindexed {
        index: &'static str,
        rows: u64,
        indexed: u64,
    },
    #[error("FTS sentinel {term:?} matched {actual} documents, manifest says {expected}")]
    Sentinel {
        term: String,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Object key of a build's snapshot file.
pub fn artifact_key(build_id: &str) -> String {
    format!("builds/{build_id}/snapshot.db")
}

/// Object key of a build's manifest.
pub fn manifest_key(build_id: &str) -> String {
    format!("builds/{build_id}/manifest.json")
}

/// Object key of a channel's pointer.
pub fn pointer_key(channel: &str) -> String {
    format!("channels/{channel}/latest.json")
}

impl Manifest {
    /// Parses a manifest (or pointer) and refuses one this build cannot serve identically.
    pub fn parse(json: &[u8]) -> Result<Self, VerifyError> {
        let manifest: Manifest = serde_json::from_slice(json)?;
        manifest.check_spoken()?;
        Ok(manifest)
    }

    /// Refuses versions this code does not speak, before downloading anything.
    pub fn check_spoken(&self) -> Result<(), VerifyError> {
        if !schema::speaks(self.schema_version, self.scoring_version, &self.tokenizer) {
            return Err(VerifyError::Unspoken {
                build_id: self.build_id.clone(),
                schema: self.schema_version,
                scoring: self.scoring_version,
                tokenizer: self.tokenizer.clone(),
            });
        }
        Ok(())
    }

    /// Checks a downloaded artifact's size and digest against the manifest.
    pub fn check_artifact(&self, byte_size: u64, sha256: &str) -> Result<(), VerifyError> {
        if byte_size != self.byte_size {
            return Err(VerifyError::Size {
                expected: self.byte_size,
                actual: byte_size,
            });
        }
        if !sha256.eq_ignore_ascii_case(&self.sha256) {
            return Err(VerifyError::Checksum {
                expected: self.sha256.clone(),
                actual: sha256.to_owned(),
            });
        }
        Ok(())
    }
}

/// Incremental SHA-256 over an artifact as it streams.
#[derive(Default, Clone)]
pub struct ArtifactDigest {
    hasher: sha2::Sha256,
    bytes: u64,
}

impl ArtifactDigest {
    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The lowercase hex digest.
    pub fn finish(self) -> String {
        use sha2::Digest;
        Self::hex(&self.hasher.finalize())
    }

    /// A SHA-256 digest computed elsewhere (the edge asks the Workers runtime for it), written as
    /// manifests write digests: lowercase hex.
    pub fn hex(digest: &[u8]) -> String {
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Digest of a whole buffer.
    pub fn of(bytes: &[u8]) -> String {
        let mut digest = ArtifactDigest::default();
        digest.update(bytes);
        digest.finish()
    }
}

/// Verifies an opened snapshot against its manifest before it is published: `PRAGMA
/// quick_check`, then everything [`verify_published`] checks.
pub fn verify_snapshot(conn: &Connection, manifest: &Manifest) -> Result<(), VerifyError> {
    let check: String = conn.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        return Err(VerifyError::Integrity(check));
    }
    verify_published(conn, manifest)
}

/// Verifies a snapshot whose bytes are the published ones (their digest matched the manifest's)
/// before serving from it: versions and watermark in `meta`, exact counts, every row indexed, and
/// the FTS sentinel.
///
/// It skips `quick_check`: the publisher's gate ran [`verify_snapshot`] on these exact bytes, and
/// the check reads every page again. In workerd that was half of a cold start (1.0 of 2.1 s on
/// the bench's 7.5k-document snapshot).
pub fn verify_published(conn: &Connection, manifest: &Manifest) -> Result<(), VerifyError> {
    manifest.check_spoken()?;
    let version = schema::check_compatible(conn)?;
    if version.source_watermark_us != manifest.source_watermark_us {
        return Err(VerifyError::Meta(format!(
            "watermark {} vs manifest {}",
            version.source_watermark_us, manifest.source_watermark_us
        )));
    }
    let counts = snapshot::count(conn)?;
    if counts != manifest.counts {
        return Err(VerifyError::Counts {
            expected: manifest.counts,
            actual: counts,
        });
    }
    // Every row is in its index: the sentinel alone would pass an index built empty.
    for (index, rows) in [
        ("documents_fts", counts.documents),
        ("publications_fts", counts.publications),
    ] {
        let indexed = conn.query_row(
            &format!("SELECT count(*) FROM {index}_docsize"),
            [],
            |row| row.get::<_, i64>(0),
        )? as u64;
        if indexed != rows {
            return Err(VerifyError::Unindexed {
                index,
                rows,
                indexed,
            });
        }
    }
    if let Some(sentinel) = &manifest.sentinel {
        let actual = sentinel_hits(conn, &sentinel.term)?;
        if actual != sentinel.documents {
            return Err(VerifyError::Sentinel {
                term: sentinel.term.clone(),
                expected: sentinel.documents,
                actual,
            });
        }
    }
    Ok(())
}

/// How many documents the FTS index says contain `term` (quoted, so any word is safe).
pub fn sentinel_hits(conn: &Connection, term: &str) -> Result<u64, VerifyError> {
    let expr = format!("\"{}\"", term.replace('"', "\"\""));
    let hits: i64 = conn.query_row(
        "SELECT count(*) FROM documents_fts WHERE documents_fts MATCH ?1",
        [expr],
        |row| row.get(0),
    )?;
    Ok(hits as u64)
}

/// Picks a sentinel for a freshly built snapshot: the first word of the first titled document.
pub fn choose_sentinel(conn: &Connection) -> Result<Option<Sentinel>, VerifyError> {
    let title: Option<String> = conn
        .query_row(
            "SELECT title FROM documents WHERE title <> '' ORDER BY id LIMIT 1",
            [],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|error| match error {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    let Some(term) = title.and_then(|title| {
        title
            .split(|c: char| !c.is_alphanumeric())
            .find(|word| word.chars().count() >= 3)
            .map(str::to_lowercase)
    }) else {
        return Ok(None);
    };
    let documents = sentinel_hits(conn, &term)?;
    Ok(Some(Sentinel { term, documents }))
}
