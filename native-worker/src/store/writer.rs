//! The store's single writer: one transaction per batch, cursor included.

use crate::extract::{Document, Publication, at_uri, is_publication_collection};
use rusqlite::{Connection, params};
use std::sync::LazyLock;

use super::checkpoint::Checkpointer;
use super::replica::{AccountOrigin, RowImage, Stamp, Table, account_supersedes};
use crate::clock::now_us;

/// One change to the store, already extracted and policy-checked.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or update a document at revision `rev`.
    Document { document: Document, rev: String },
    /// Create or update a publication at revision `rev`.
    Publication {
        publication: Publication,
        rev: String,
    },
    /// Delete a record: leaves a tombstone remembering `rev`, so an older create arriving later
    /// (a replay, a redelivery) cannot resurrect it.
    Delete {
        did: String,
        collection: String,
        rkey: String,
        rev: String,
    },
    /// An account's hosting status changed (deactivated, taken down, reactivated). `version`
    /// is the event's place in its source's order ([`crate::firehose::Event::order`]); the
    /// change applies only over an older one, so a replay cannot undo a later takedown.
    Account {
        did: String,
        active: bool,
        status: Option<String>,
        version: i64,
    },
    /// A DID's handle changed; versioned like [`Change::Account`], whose row it shares.
    Identity {
        did: String,
        handle: Option<String>,
        version: i64,
    },
    /// A row replicated from Turso (sync down): applied if newer, never queued back up.
    Replica(RowImage),
}

/// Bookkeeping that commits with the records it covers: never counted as applied or stale,
/// never replicated. Marks apply after the batch's changes, in the same transaction, so a mark
/// queued after the rows it covers commits with or after them (ARCHITECTURE.md invariant 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// A source's position (a firehose cursor, a Turso sync watermark); it only moves forward.
    Cursor { source: String, position: i64 },
    /// Turso has every queued upstream batch up to and including this id.
    UpstreamDrained { through_id: i64 },
    /// A backfill page is durable: resume `did`'s `collection` from `cursor` (or skip it once
    /// `done`).
    BackfillProgress {
        did: String,
        collection: String,
        cursor: Option<String>,
        done: bool,
        records: u64,
    },
}

/// Changes committed together, and the marks (source positions, progress) they bring the
/// store up to.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// Applied after `changes`, in the same transaction.
    pub marks: Vec<Mark>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// Changes that altered the store.
    pub applied: usize,
    /// Changes older than (or equal to) what was stored: replays and redeliveries.
    pub stale: usize,
    /// The `indexed_at` stamped on every row this batch wrote (Unix µs, strictly increasing).
    pub indexed_at: i64,
}

/// Owns the store's only write connection.
pub struct StoreWriter {
    conn: Connection,
    checkpointer: Checkpointer,
    last_indexed_at: i64,
    write_through: bool,
}

impl StoreWriter {
    pub(super) fn new(conn: Connection, checkpointer: Checkpointer) -> Self {
        Self {
            conn,
            checkpointer,
            last_indexed_at: 0,
            write_through: false,
        }
    }

    /// Caps the store file near `bytes` (SQLite's `max_page_count`; `None` lifts the cap):
    /// past it a commit fails with `SQLITE_FULL` and changes nothing, exactly as on a full disk.
    /// The cap never shrinks the file, only stops it growing.
    pub fn limit_size(&mut self, bytes: Option<u64>) -> rusqlite::Result<()> {
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let pages = bytes.map_or(u32::MAX as i64 - 1, |bytes| bytes as i64 / page_size);
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
    }

    /// Queues, with every batch, images of the rows it changed for Turso (`upstream_queue`).
    pub fn enable_write_through(&mut self) {
        self.write_through = true;
    }

    /// Applies a batch and its cursor in one durable transaction. Either all of it lands or none.
    pub fn apply(&mut self, batch: &Batch) -> rusqlite::Result<BatchOutcome> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let indexed_at = next_stamp(&tx, self.last_indexed_at)?;
        let mut outcome = BatchOutcome {
            indexed_at,
            ..BatchOutcome::default()
        };
        let mut upstream = Vec::new();
        for change in &batch.changes {
            if apply_change(&tx, change, indexed_at)? {
                outcome.applied += 1;
                // Rows that came down from Turso are never queued back up.
                if self.write_through && !matches!(change, Change::Replica(_)) {
                    upstream.extend(written_row(change));
                }
            } else {
                outcome.stale += 1;
            }
        }
        if !upstream.is_empty() {
            queue_upstream(&tx, upstream, indexed_at)?;
        }
        for mark in &batch.marks {
            apply_mark(&tx, mark)?;
        }
        tx.commit()?;
        self.checkpointer.nudge();
        self.last_indexed_at = indexed_at;
        Ok(outcome)
    }

    /// Replaces the banned-DID list the snapshot builder filters by.
    pub fn replace_banned_dids(&mut self, dids: &[String]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let stored: std::collections::BTreeSet<String> =
            super::read::banned_dids(&tx)?.into_iter().collect();
        let wanted: std::collections::BTreeSet<String> = dids.iter().cloned().collect();
        if stored == wanted {
            return Ok(());
        }
        tx.execute("DELETE FROM banned_dids", [])?;
        for did in &wanted {
            tx.execute("INSERT INTO banned_dids (did) VALUES (?1)", [did])?;
        }
        // Stamped like a batch, so the next scheduled publish sees the change.
        let changed_at = next_stamp(&tx, self.last_indexed_at)?;
        tx.execute(
            "INSERT INTO policy_changes (policy, changed_at) VALUES ('banned_dids', ?1)
             ON CONFLICT(policy) DO UPDATE SET changed_at = excluded.changed_at",
            [changed_at],
        )?;
        tx.commit()?;
        self.last_indexed_at = changed_at;
        Ok(())
    }
}

/// The stamp for a commit, taken under the write lock: past every stamp committed so far by any
/// process (a backfill writes too) and past this writer's `last`, so "stamp <= watermark" cuts
/// between commits.
fn next_stamp(tx: &Connection, last: i64) -> rusqlite::Result<i64> {
    Ok(now_us()
        .max(super::read::newest_stamp(tx)? + 1)
        .max(last + 1))
}

/// Moves a source's cursor forward (never back: a replay may end behind it). Returns rows changed.
pub(super) fn advance_cursor(
    tx: &Connection,
    source: &str,
    position: i64,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO cursors (source, position) VALUES (?1, ?2)
         ON CONFLICT(source) DO UPDATE SET position = max(position, excluded.position)",
    )?
    .execute(params![source, position])
}

/// The replicated row (table and key) a change writes, if any: what write-through queues for
/// Turso.
fn written_row(change: &Change) -> Option<(Table, String)> {
    match change {
        Change::Replica(image) => image.key().map(|key| (image.table, key.to_owned())),
        Change::Document { document, .. } => Some((Table::Documents, document.uri.clone())),
        Change::Publication { publication, .. } => {
            Some((Table::Publications, publication.uri.clone()))
        }
        Change::Delete {
            did,
            collection,
            rkey,
            ..
        } => {
            let table = if is_publication_collection(collection) {
                Table::Publications
            } else {
                Table::Documents
            };
            Some((table, at_uri(did, collection, rkey)))
        }
        Change::Account { did, .. } | Change::Identity { did, .. } => {
            Some((Table::Accounts, did.clone()))
        }
    }
}

/// Queues the images of the rows a batch changed, in the batch's own transaction.
fn queue_upstream(
    tx: &Connection,
    mut rows: Vec<(Table, String)>,
    indexed_at: i64,
) -> rusqlite::Result<()> {
    rows.sort();
    rows.dedup();
    let mut images = Vec::with_capacity(rows.len());
    for (table, key) in rows {
        images.extend(RowImage::read(tx, table, &key)?);
    }
    tx.prepare_cached(
        "INSERT INTO upstream_queue (rows, row_count, enqueued_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        serde_json::to_string(&images).expect("row images serialise"),
        images.len() as i64,
        indexed_at
    ])?;
    Ok(())
}

/// Sets an account's hosting status, over an older version only ([`account_supersedes`]).
static SET_ACCOUNT_STATUS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO accounts (did, active, status, version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(did) DO UPDATE SET active = excluded.active, status = excluded.status,
                                        version = excluded.version, updated_at = excluded.updated_at
         WHERE {}",
        account_supersedes("excluded.version", "accounts.version", AccountOrigin::Event)
    )
});

/// Sets an account's handle, versioned like [`SET_ACCOUNT_STATUS`].
static SET_ACCOUNT_HANDLE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO accounts (did, handle, version, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(did) DO UPDATE SET handle = excluded.handle, version = excluded.version,
                                        updated_at = excluded.updated_at
         WHERE {}",
        account_supersedes("excluded.version", "accounts.version", AccountOrigin::Event)
    )
});

fn apply_change(tx: &Connection, change: &Change, indexed_at: i64) -> rusqlite::Result<bool> {
    let changed = match change {
        Change::Replica(image) => return image.apply(tx, Stamp::Local(indexed_at)),
        // Whole rows, in the one column order the store and Turso share (`replica::Table`).
        Change::Document { document, rev } => {
            return RowImage::of_document(document, rev).apply(tx, Stamp::Local(indexed_at));
        }
        Change::Publication { publication, rev } => {
            return RowImage::of_publication(publication, rev).apply(tx, Stamp::Local(indexed_at));
        }
        Change::Delete {
            did,
            collection,
            rkey,
            rev,
        } => {
            let uri = at_uri(did, collection, rkey);
            let sql = if is_publication_collection(collection) {
                "INSERT INTO publications (uri, did, rkey, collection, rev, deleted, indexed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)
                 ON CONFLICT(uri) DO UPDATE SET
                     rev = excluded.rev, deleted = 1, name = '', description = '', base_path = NULL,
                     indexed_at = excluded.indexed_at
                 WHERE excluded.rev > publications.rev"
            } else {
                "INSERT INTO documents (uri, did, rkey, collection, rev, deleted, indexed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)
                 ON CONFLICT(uri) DO UPDATE SET
                     rev = excluded.rev, deleted = 1, title = '', content = '', description = NULL,
                     tags = '[]', content_hash = NULL, indexed_at = excluded.indexed_at
                 WHERE excluded.rev > documents.rev"
            };
            tx.prepare_cached(sql)?
                .execute(params![uri, did, rkey, collection, rev, indexed_at])?
        }
        Change::Account {
            did,
            active,
            status,
            version,
        } => tx
            .prepare_cached(&SET_ACCOUNT_STATUS)?
            .execute(params![did, active, status, version, indexed_at])?,
        Change::Identity {
            did,
            handle,
            version,
        } => tx
            .prepare_cached(&SET_ACCOUNT_HANDLE)?
            .execute(params![did, handle, version, indexed_at])?,
    };
    Ok(changed > 0)
}

fn apply_mark(tx: &Connection, mark: &Mark) -> rusqlite::Result<()> {
    match mark {
        Mark::Cursor { source, position } => {
            advance_cursor(tx, source, *position)?;
        }
        Mark::UpstreamDrained { through_id } => {
            tx.prepare_cached("DELETE FROM upstream_queue WHERE id <= ?1")?
                .execute([through_id])?;
        }
        Mark::BackfillProgress {
            did,
            collection,
            cursor,
            done,
            records,
        } => {
            tx.prepare_cached(
                "INSERT INTO backfill_progress (did, collection, cursor, done, records) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(did, collection) DO UPDATE SET cursor = excluded.cursor, done = excluded.done,
                                                           records = records + excluded.records",
            )?
            .execute(params![did, collection, cursor, done, *records as i64])?;
        }
    }
    Ok(())
}
