//! Paged builds: a snapshot read by range from R2, a chunk at a time, instead of held whole.
//!
//! SQLite opens the build through [`vfs`], a read-only VFS whose reads come, in order, from the
//! isolate's [`cache`] (a fixed byte budget), the Cache API (shared by the colo's isolates) and
//! R2 range GETs ([`fetch`]). Every chunk is checked against its SHA-256 in the build's chunk
//! table before SQLite sees a byte of it. A read that must fetch suspends the running JSPI job
//! ([`crate::jspi`]); sequential reads fetch a few chunks ahead in the same round trip.
//!
//! A failed fetch or a chunk that fails its digest fails the SQLite call that asked for it; the
//! VFS records which ([`take_failure`]) so the request answers 503 rather than 500, and a corrupt
//! chunk marks its build bad (see [`crate::snapshot`]). ARCHITECTURE.md, "Paged snapshots", has
//! the whole design.

pub mod btree;
pub mod cache;
pub mod fetch;
pub mod vfs;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pubsearch_shared::manifest::{Manifest, VerifyError};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use worker::Bucket;

use cache::ChunkCache;

/// SQLite's own page cache per paged connection, in KiB: small, since the chunk cache holds the
/// snapshot's hot bytes already.
const PAGE_CACHE_KIB: i64 = 1024;

/// A build's artifact, read by range.
pub struct RemoteArtifact {
    /// Distinguishes this artifact's chunks from other builds' in the shared cache.
    pub id: u32,
    pub build_id: String,
    pub key: String,
    pub byte_size: u64,
    pub page_size: u32,
    pub chunk_bytes: u32,
    pub digests: Vec<[u8; 32]>,
    pub bucket: Bucket,
}

impl RemoteArtifact {
    /// The artifact `manifest` (a build's own, with its chunk table) describes.
    pub fn new(bucket: Bucket, manifest: &Manifest) -> Result<Self, VerifyError> {
        let table = manifest.chunks.as_ref().ok_or_else(|| {
            VerifyError::ChunkTable(format!(
                "build {} has no chunk table: it was published before paged snapshots",
                manifest.build_id
            ))
        })?;
        if table.chunk_bytes % manifest.page_size.max(1) != 0 {
            return Err(VerifyError::ChunkTable(format!(
                "chunks of {} bytes do not hold whole pages of {}",
                table.chunk_bytes, manifest.page_size
            )));
        }
        Ok(Self {
            id: NEXT_ARTIFACT.with(|next| {
                let id = next.get();
                next.set(id.wrapping_add(1));
                id
            }),
            build_id: manifest.build_id.clone(),
            key: manifest.artifact.clone(),
            byte_size: manifest.byte_size,
            page_size: manifest.page_size,
            chunk_bytes: table.chunk_bytes,
            digests: table.digests(manifest.byte_size)?,
            bucket,
        })
    }

    /// Chunks in the artifact.
    pub fn chunks(&self) -> u32 {
        self.digests.len() as u32
    }

    /// The byte range of chunk `index`.
    pub fn range(&self, index: u32) -> (u64, u64) {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        let end = (start + u64::from(self.chunk_bytes)).min(self.byte_size);
        (start, end - start)
    }
}

/// Why a paged read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// R2 or the Cache API failed or timed out: try again shortly.
    #[error("reading build {build_id} from R2 failed: {reason}")]
    Unavailable { build_id: String, reason: String },
    /// A chunk's bytes are not the ones published: the build must not serve again.
    #[error("chunk {index} of build {build_id} does not match its SHA-256")]
    Corrupt { build_id: String, index: u32 },
}

/// Reads and fetches of paged builds, counted since the isolate started.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct IoCounts {
    pub r2_chunks: u64,
    pub r2_bytes: u64,
    pub cache_api_chunks: u64,
    pub cache_api_bytes: u64,
    /// Chunk reads answered by the isolate's chunk cache.
    pub memory_hits: u64,
    /// Chunk reads that had to fetch.
    pub memory_misses: u64,
    /// Suspensions: fetches a request waited on one after another.
    pub round_trips: u64,
    pub corrupt_chunks: u64,
    pub failed_fetches: u64,
}

impl IoCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &IoCounts) -> IoCounts {
        self.zip(earlier, |now, then| now - then)
    }

    /// `self` and `more` together.
    pub fn plus(&self, more: &IoCounts) -> IoCounts {
        self.zip(more, |a, b| a + b)
    }

    /// Each count of `self` combined with the same count of `other`.
    fn zip(&self, other: &IoCounts, combine: impl Fn(u64, u64) -> u64) -> IoCounts {
        IoCounts {
            r2_chunks: combine(self.r2_chunks, other.r2_chunks),
            r2_bytes: combine(self.r2_bytes, other.r2_bytes),
            cache_api_chunks: combine(self.cache_api_chunks, other.cache_api_chunks),
            cache_api_bytes: combine(self.cache_api_bytes, other.cache_api_bytes),
            memory_hits: combine(self.memory_hits, other.memory_hits),
            memory_misses: combine(self.memory_misses, other.memory_misses),
            round_trips: combine(self.round_trips, other.round_trips),
            corrupt_chunks: combine(self.corrupt_chunks, other.corrupt_chunks),
            failed_fetches: combine(self.failed_fetches, other.failed_fetches),
        }
    }
}

thread_local! {
    static NEXT_ARTIFACT: Cell<u32> = const { Cell::new(0) };
    static CACHE: RefCell<ChunkCache> = RefCell::new(ChunkCache::new(0));
    static COUNTS: Cell<IoCounts> = Cell::new(IoCounts::default());
    static FAILURE: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Sets the chunk cache's budget (the first call wins: wasm memory never shrinks).
pub fn configure(budget_bytes: usize) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.budget_bytes() == 0 {
            *cache = ChunkCache::new(budget_bytes);
        }
    });
}

/// The chunk cache's budget and what it holds now.
pub fn cache_bytes() -> (usize, usize) {
    CACHE.with(|cache| {
        let cache = cache.borrow();
        (cache.budget_bytes(), cache.held_bytes())
    })
}

/// The counts so far.
pub fn counts() -> IoCounts {
    COUNTS.with(Cell::get)
}

fn count(update: impl FnOnce(&mut IoCounts)) {
    COUNTS.with(|counts| {
        let mut now = counts.get();
        update(&mut now);
        counts.set(now);
    });
}

/// The failure recorded by the last paged read that failed, if any, clearing it.
pub fn take_failure() -> Option<Failure> {
    FAILURE.with(|failure| failure.borrow_mut().take())
}

fn record_failure(failure: Failure) {
    count(|counts| match failure {
        Failure::Corrupt { .. } => counts.corrupt_chunks += 1,
        Failure::Unavailable { .. } => counts.failed_fetches += 1,
    });
    FAILURE.with(|slot| *slot.borrow_mut() = Some(failure));
}

/// Opens `artifact` read-only through the paged VFS. Must run inside a JSPI job: opening reads.
pub fn open(artifact: Rc<RemoteArtifact>) -> rusqlite::Result<Connection> {
    let name = vfs::register(artifact);
    let opened = Connection::open_with_flags_and_vfs(
        format!("file:{name}?immutable=1"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        vfs::VFS_NAME,
    );
    // The open file holds the artifact from here on; the name is needed only to open it.
    vfs::unregister(&name);
    let conn = opened?;
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{PAGE_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
    ))?;
    Ok(conn)
}
