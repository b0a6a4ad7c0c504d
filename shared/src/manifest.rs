//! The snapshot manifest: the contract between the builder that publishes a snapshot and every
//! reader that adopts one (ARCHITECTURE.md invariant 8).
//!
//! Object layout in the store (local directory, R2 or S3):
//!
//! ```text
//! builds/<build_id>/snapshot.db      the SQLite snapshot
//! builds/<build_id>/manifest.json    its manifest, with the artifact's chunk table
//! channels/<channel>/latest.json     the pointer: the live build's manifest without the chunk
//!                                    table ([`Manifest::pointer`]), written last
//! channels/<channel>/hold.json       a rollback's hold on the channel (the publisher's; readers ignore it)
//! ```
//!
//! The publisher runs [`verify_snapshot`] on a build before uploading it. A reader fetches the
//! pointer, downloads `artifact`, checks size and sha256 while streaming, opens it, and runs
//! [`verify_published`] before serving from it. Anything that fails is refused whole.
//!
//! A reader that fetches the artifact by range instead (the paged edge) reads the build's own
//! manifest for its [`ChunkTable`] and checks each chunk's SHA-256 as the chunk arrives, before
//! SQLite reads a byte of it.

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
    /// The artifact's chunk digests: in a build's own manifest, never in the pointer, which
    /// stays one small object however large the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkTable>,
    /// In a delta's manifest: the build it overlays (see [`crate::delta`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_build_id: Option<String>,
    /// In a pointer: the newest delta over this build, itself without a chunk table (a delta is
    /// read whole). Readers that predate deltas ignore it and serve the base alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Box<Manifest>>,
}

/// Bytes per chunk in the chunk tables this builder writes: the unit a paged reader fetches,
/// checks and caches. A multiple of every snapshot page size.
pub const CHUNK_BYTES: u32 = 64 * 1024;

/// SHA-256 of each fixed-size chunk of an artifact, so a reader that fetches it by range can
/// check every chunk on arrival rather than hash gigabytes before its first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkTable {
    /// Bytes per chunk; the last chunk holds the rest.
    pub chunk_bytes: u32,
    /// Lowercase hex SHA-256 of each chunk, in order.
    pub sha256: Vec<String>,
}

impl ChunkTable {
    /// The chunk digests as bytes, after checking the table describes `byte_size` bytes.
    pub fn digests(&self, byte_size: u64) -> Result<Vec<[u8; 32]>, VerifyError> {
        let bad = |why: String| VerifyError::ChunkTable(why);
        if self.chunk_bytes == 0 {
            return Err(bad("chunk size 0".into()));
        }
        let expected = byte_size.div_ceil(u64::from(self.chunk_bytes));
        if self.sha256.len() as u64 != expected {
            return Err(bad(format!(
                "{} digests for {byte_size} bytes in chunks of {}: {expected} expected",
                self.sha256.len(),
                self.chunk_bytes
            )));
        }
        self.sha256
            .iter()
            .enumerate()
            .map(|(index, hex)| {
                decode_digest(hex).ok_or_else(|| bad(format!("digest {index} is not SHA-256 hex")))
            })
            .collect()
    }
}

/// A lowercase or uppercase hex SHA-256 as bytes.
fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
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
    #[error("chunk table: {0}")]
    ChunkTable(String),
    #[error("chunk {index} of build {build_id} has sha256 {actual}, its manifest says {expected}")]
    Chunk {
        build_id: String,
        index: usize,
        expected: String,
        actual: String,
    },
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

/// Object key of a delta's snapshot file: deltas live apart from builds, so listing builds never
/// pages through thousands of them.
pub fn delta_artifact_key(channel: &str, build_id: &str) -> String {
    format!("{}{build_id}/snapshot.db", delta_prefix(channel))
}

/// Object key of a delta's manifest.
pub fn delta_manifest_key(channel: &str, build_id: &str) -> String {
    format!("{}{build_id}/manifest.json", delta_prefix(channel))
}

/// Where a channel's deltas are kept.
pub fn delta_prefix(channel: &str) -> String {
    format!("deltas/{channel}/")
}

/// Object key of a manifest: a delta's beside it under `deltas/`, a build's under `builds/`.
pub fn manifest_key_of(manifest: &Manifest) -> String {
    match manifest.base_build_id {
        Some(_) => delta_manifest_key(&manifest.channel, &manifest.build_id),
        None => manifest_key(&manifest.build_id),
    }
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

    /// The channel pointer for this build: the manifest without its chunk table.
    pub fn pointer(&self) -> Manifest {
        Manifest {
            chunks: None,
            ..self.clone()
        }
    }

    /// The watermark a reader of this pointer serves up to: its delta's, if it names one.
    pub fn served_watermark_us(&self) -> i64 {
        self.delta
            .as_ref()
            .map_or(self.source_watermark_us, |delta| delta.source_watermark_us)
    }

    /// Checks `computed`, the chunk table of the artifact's bytes, against `table`, the manifest's.
    pub fn check_chunks(
        &self,
        table: &ChunkTable,
        computed: &ChunkTable,
    ) -> Result<(), VerifyError> {
        table.digests(self.byte_size)?;
        if table.chunk_bytes != computed.chunk_bytes || table.sha256.len() != computed.sha256.len()
        {
            return Err(VerifyError::ChunkTable(format!(
                "the artifact makes {} chunks of {} bytes, the manifest lists {} of {}",
                computed.sha256.len(),
                computed.chunk_bytes,
                table.sha256.len(),
                table.chunk_bytes
            )));
        }
        match table
            .sha256
            .iter()
            .zip(&computed.sha256)
            .position(|(a, b)| !a.eq_ignore_ascii_case(b))
        {
            None => Ok(()),
            Some(index) => Err(VerifyError::Chunk {
                build_id: self.build_id.clone(),
                index,
                expected: table.sha256[index].clone(),
                actual: computed.sha256[index].clone(),
            }),
        }
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

/// An artifact's digests, computed in one pass as it streams: the whole file's and each chunk's.
pub struct ArtifactDigests {
    whole: ArtifactDigest,
    chunk: ArtifactDigest,
    chunk_bytes: u32,
    chunks: Vec<String>,
}

impl ArtifactDigests {
    /// Digests for a chunk table of `chunk_bytes` chunks.
    pub fn new(chunk_bytes: u32) -> Self {
        assert!(chunk_bytes > 0, "chunks hold bytes");
        Self {
            whole: ArtifactDigest::default(),
            chunk: ArtifactDigest::default(),
            chunk_bytes,
            chunks: Vec::new(),
        }
    }

    /// Feeds the next bytes, however they are cut.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.whole.update(bytes);
        while !bytes.is_empty() {
            let room = (u64::from(self.chunk_bytes) - self.chunk.bytes()) as usize;
            let (head, rest) = bytes.split_at(room.min(bytes.len()));
            self.chunk.update(head);
            if self.chunk.bytes() == u64::from(self.chunk_bytes) {
                self.chunks.push(std::mem::take(&mut self.chunk).finish());
            }
            bytes = rest;
        }
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.whole.bytes()
    }

    /// The whole artifact's hex digest and its chunk table.
    pub fn finish(mut self) -> (String, ChunkTable) {
        if self.chunk.bytes() > 0 {
            self.chunks.push(self.chunk.finish());
        }
        let table = ChunkTable {
            chunk_bytes: self.chunk_bytes,
            sha256: self.chunks,
        };
        (self.whole.finish(), table)
    }

    /// The digests of everything `reader` yields.
    pub fn of_reader(mut reader: impl std::io::Read, chunk_bytes: u32) -> std::io::Result<Self> {
        let mut digests = Self::new(chunk_bytes);
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(digests),
                Ok(read) => digests.update(&buffer[..read]),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
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
    verify_stamps(conn, manifest)?;
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
    verify_sentinel(conn, manifest)
}

/// Verifies a snapshot read by range (the paged edge) before serving from it, with the checks
/// that read a bounded number of pages: versions and watermark in `meta`, and the FTS sentinel.
/// Counting every row would read the whole index; the bytes themselves are checked chunk by
/// chunk against the manifest's chunk table as they arrive, and the publisher ran
/// [`verify_snapshot`] on these exact bytes.
pub fn verify_paged(conn: &Connection, manifest: &Manifest) -> Result<(), VerifyError> {
    verify_stamps(conn, manifest)?;
    verify_sentinel(conn, manifest)
}

/// The manifest's versions are spoken here and match the snapshot's `meta`.
fn verify_stamps(conn: &Connection, manifest: &Manifest) -> Result<(), VerifyError> {
    manifest.check_spoken()?;
    let version = schema::check_compatible(conn)?;
    if version.source_watermark_us != manifest.source_watermark_us {
        return Err(VerifyError::Meta(format!(
            "watermark {} vs manifest {}",
            version.source_watermark_us, manifest.source_watermark_us
        )));
    }
    Ok(())
}

fn verify_sentinel(conn: &Connection, manifest: &Manifest) -> Result<(), VerifyError> {
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
