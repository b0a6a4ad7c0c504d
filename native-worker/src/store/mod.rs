//! The ingest store: a local SQLite file in WAL mode, the embedded default source of truth.
//!
//! One [`StoreWriter`] owns the only write connection and applies a whole [`Batch`] of changes,
//! plus the source cursor that batch reaches, in one transaction (ARCHITECTURE.md invariants 3, 5, 7):
//! the cursor can never be ahead of the data it covers. Everything that reads opens its own
//! read-only connection with [`Store::reader`] and never waits on the writer. The writer leaves
//! WAL checkpoints to a thread of their own ([`checkpoint`]), so a commit costs only its own
//! pages. The store keeps no full-text index: snapshots build their own (migration 7 dropped the
//! one it kept, which nothing read and which was most of ingest's cost).
//!
//! Records are idempotent by revision: a change older than what is stored is ignored, deletes
//! leave a tombstone that remembers the revision, so replays and redeliveries are harmless.

mod checkpoint;
mod migrations;
pub mod replica;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use checkpoint::{BACKSTOP_PAGES, Checkpointer};
pub use migrations::{CURRENT_VERSION, MigrationError};
pub use writer::{Batch, BatchOutcome, Change, StoreWriter};

/// How long a connection waits for a lock before failing. The writer is alone, so this only
/// covers checkpoints and external tools holding the file.
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
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The single writer. Open exactly one per process; it is not shared with readers. It
    /// checkpoints the WAL from a thread of its own ([`checkpoint`]).
    pub fn writer(&self) -> Result<StoreWriter, StoreError> {
        let open = self.open_error();
        let conn = self.open_write_connection()?;
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .map_err(open)?;
        let checkpointer = checkpoint::Checkpointer::spawn(&self.path).map_err(open)?;
        Ok(StoreWriter::new(conn, checkpointer))
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

/// Reads a source's durable cursor, if it has one.
pub fn read_cursor(conn: &Connection, source: &str) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT position FROM cursors WHERE source = ?1",
        [source],
        |row| row.get(0),
    )
    .optional()
}

/// The banned-DID list last stored by [`StoreWriter::replace_banned_dids`].
pub fn read_banned_dids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT did FROM banned_dids ORDER BY did")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// Where a backfill of `did`'s `collection` stands: `None` if never started, else
/// `(cursor, done)`.
pub fn read_backfill_progress(
    conn: &Connection,
    did: &str,
    collection: &str,
) -> rusqlite::Result<Option<(Option<String>, bool)>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT cursor, done FROM backfill_progress WHERE did = ?1 AND collection = ?2",
        [did, collection],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}
