//! The ingest store: a local SQLite file in WAL mode, the embedded default system of record.
//!
//! One [`StoreWriter`] owns the only write connection and applies a whole [`Batch`] of record
//! [`Change`]s, then its bookkeeping [`Mark`]s (the source cursor the batch reaches, backfill
//! progress, the drained upstream queue), in one transaction (ARCHITECTURE.md invariants 3, 5,
//! 7): a cursor can never be ahead of the data it covers. Everything that reads opens its own
//! read-only connection with [`Store::reader`], never waits on the writer, and reads through
//! [`read`], the only SQL over the store's tables outside the writer. The writer leaves WAL
//! checkpoints to a thread of their own ([`checkpoint`]), so a commit costs only its own pages.
//! The store keeps no full-text index: snapshots build their own (migration 7 dropped the one
//! it kept, which nothing read and which was most of ingest's cost). It does keep documents'
//! vectors for semantic search, derived data with a write connection of its own
//! ([`vectors`]), so computing them never holds up ingest's commits.
//!
//! Module map: [`migrations`] (the schema, versioned), [`writer`], [`replica`] (the replicated
//! tables' columns, defined once, and whole-row images of them), [`read`], [`vectors`],
//! [`checkpoint`].
//!
//! Records are idempotent by revision: a change older than what is stored is ignored, deletes
//! leave a tombstone that remembers the revision, so replays and redeliveries are harmless.

mod checkpoint;
mod migrations;
pub mod read;
pub mod replica;
pub mod vectors;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use checkpoint::{BACKSTOP_PAGES, Checkpointer};
pub use migrations::{CURRENT_VERSION, MigrationError};
pub use writer::{Batch, BatchOutcome, Change, Mark, StoreWriter};

/// How long a connection waits for a lock before failing: ingest's writer and the vector
/// writer's short transactions (`vectors`), checkpoints, and external tools holding the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache per read connection, in KiB (negative `cache_size` is KiB in SQLite).
const READER_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of the write connection, in KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("store write failed: {0}")]
    Write(#[from] rusqlite::Error),
    #[error(
        "the store {path} is damaged ({}); it cannot be trusted to ingest or publish from. \
         Recover it as the README's \"Recovering a damaged store\" says: move it aside, then \
         rebuild it from Turso or by backfill",
        problems.join("; ")
    )]
    Damaged {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A handle on the store file; cheap to clone, opens connections on demand.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, switches it to WAL and migrates it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store = Store { path };
        let mut conn = store.open_write_connection()?;
        migrations::migrate(&mut conn)?;
        // Stamps this store recorded stay in the past, whatever the system clock says.
        crate::clock::raise_floor(read::newest_stamp(&conn)?);
        Ok(store)
    }

    /// Checks every page of the store (`PRAGMA quick_check`: B-tree structure, record formats,
    /// NOT NULL and UNIQUE constraints), so damage is found before anything is read from it,
    /// never as a wrong answer later. Reads the whole file: seconds per GB.
    pub fn check(&self) -> Result<(), StoreError> {
        let damaged = |problems| StoreError::Damaged {
            path: self.path.clone(),
            problems,
        };
        let conn = self.reader()?;
        let problems: Vec<String> =
            match conn
                .prepare("PRAGMA quick_check(20)")
                .and_then(|mut statement| {
                    statement
                        .query_map([], |row| row.get::<_, String>(0))?
                        .collect::<rusqlite::Result<_>>()
                }) {
                Ok(lines) => lines,
                // Damage bad enough that the check itself cannot run is damage too.
                Err(error) => vec![error.to_string()],
            };
        if problems.len() == 1 && problems[0] == "ok" {
            Ok(())
        } else {
            Err(damaged(problems))
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The single writer of records. Open exactly one per process; it is not shared with
    /// readers (documents' vectors have [`Store::vector_writer`]). It
    /// checkpoints the WAL from a thread of its own ([`checkpoint`]).
    pub fn writer(&self) -> Result<StoreWriter, StoreError> {
        let open = self.open_error();
        let conn = self.open_write_connection()?;
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .map_err(open)?;
        let checkpointer = checkpoint::Checkpointer::spawn(&self.path).map_err(open)?;
        Ok(StoreWriter::new(conn, checkpointer))
    }

    /// The write connection for documents' vectors ([`vectors`]). Open one per process, beside
    /// [`Store::writer`]. Its commits are not synced to disk one by one (`synchronous =
    /// NORMAL`): vectors lost to a power cut are computed again, and never leave the store
    /// inconsistent.
    pub fn vector_writer(&self) -> Result<vectors::VectorWriter, StoreError> {
        let open = self.open_error();
        let conn = self.open_write_connection()?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .map_err(open)?;
        Ok(vectors::VectorWriter::new(conn))
    }

    /// A read-only connection that never blocks the writer (WAL readers see the last commit).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        let open = self.open_error();
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(open)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(open)?;
        Ok(conn)
    }

    /// Wraps a failure to open or set up a connection with the store's path.
    fn open_error(&self) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
        |source| StoreError::Open {
            path: self.path.clone(),
            source,
        }
    }

    fn open_write_connection(&self) -> Result<Connection, StoreError> {
        let open = self.open_error();
        let conn = Connection::open(&self.path).map_err(open)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        // WAL: readers never wait on the writer. FULL: a commit (and the cursor in it) survives
        // power loss, so a tap ack or a cursor advance is never ahead of durable data.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL required"
            ))));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open)?;
        // A whole batch (and the index pages it touches) fits, so commits don't spill
        // mid-transaction or re-read pages they just wrote.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(open)?;
        Ok(conn)
    }
}
