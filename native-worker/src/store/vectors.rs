//! Documents' vectors in the store (ARCHITECTURE.md, "Embeddings"): derived data that the
//! embedder keeps current beside ingest, so builds and deltas read a vector per document
//! instead of computing it.
//!
//! A vector row names the model that made it and the document row it was made from (that
//! row's `indexed_at`, as `source_stamp`): it is current while both still match, and every
//! write to a document restamps it, so an edit can never be served with the old text's vector.
//! Vectors have their own write connection ([`VectorWriter`]), apart from ingest's writer:
//! its short transactions are the only thing ingest's commits can wait on. They are never
//! queued for Turso; every store computes its own.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::read;

/// A place in the order the embedder visits documents: by stamp, then id. Every write to a
/// document restamps it past every earlier commit, so a row written after the embedder passed
/// a position is always found after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub stamp: i64,
    pub id: i64,
}

/// What a document written after a position needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A live, searchable document without a current vector: embed its text.
    Vector { title: String, content: String },
    /// A deleted or unsearchable document that still has a vector: remove it.
    Removal,
    /// Nothing: its vector is current, or it has none and needs none.
    Nothing,
}

/// A document written after a position, where it stands in the order and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub at: Position,
    pub need: Need,
}

/// Up to `limit` documents written after `after`, in visiting order, with what each needs for
/// `model` (a document's text is read only when it needs a vector). Walks the `indexed_at`
/// index, so the work is proportional to what is returned.
pub fn pending(
    conn: &Connection,
    model: &str,
    after: Position,
    limit: usize,
) -> rusqlite::Result<Vec<Pending>> {
    conn.prepare_cached(
        "SELECT id, indexed_at, live, has_vector,
                CASE WHEN live AND NOT current THEN title END,
                CASE WHEN live AND NOT current THEN content END
         FROM (SELECT d.id, d.indexed_at, d.title, d.content,
                      d.deleted = 0 AND d.searchable = 1 AS live,
                      v.document_id IS NOT NULL AS has_vector,
                      coalesce(v.model = ?1 AND v.source_stamp = d.indexed_at, 0) AS current
               FROM documents AS d LEFT JOIN document_vectors AS v ON v.document_id = d.id
               WHERE d.indexed_at >= ?2 AND NOT (d.indexed_at = ?2 AND d.id <= ?3)
               ORDER BY d.indexed_at, d.id LIMIT ?4)",
    )?
    .query_map(params![model, after.stamp, after.id, limit as i64], |row| {
        let at = Position {
            id: row.get(0)?,
            stamp: row.get(1)?,
        };
        let (live, has_vector): (bool, bool) = (row.get(2)?, row.get(3)?);
        let text: Option<(String, String)> = match row.get::<_, Option<String>>(4)? {
            Some(title) => Some((title, row.get(5)?)),
            None => None,
        };
        let need = match text {
            Some((title, content)) => Need::Vector { title, content },
            None if !live && has_vector => Need::Removal,
            None => Need::Nothing,
        };
        Ok(Pending { at, need })
    })?
    .collect()
}

/// The cursor source under which the embedder's position for `model` is kept.
fn cursor_source(model: &str) -> String {
    format!("embedder:{model}")
}

/// Where the embedder resumes for `model`: at the start of the last commit it finished reading
/// (rows already current there are passed over), or the beginning.
pub fn resume_position(conn: &Connection, model: &str) -> rusqlite::Result<Position> {
    Ok(Position {
        stamp: read::cursor(conn, &cursor_source(model))?.unwrap_or(0),
        id: 0,
    })
}

/// The current vectors (packed, `shared::embed::table::pack`) by `model` of the documents with
/// store ids `ids`, by id; documents without one are absent.
pub fn current(
    conn: &Connection,
    model: &str,
    ids: &[i64],
) -> rusqlite::Result<HashMap<i64, Vec<u8>>> {
    let mut statement = conn.prepare_cached(
        "SELECT v.vector FROM document_vectors AS v JOIN documents AS d ON d.id = v.document_id
         WHERE v.document_id = ?1 AND v.model = ?2 AND v.source_stamp = d.indexed_at",
    )?;
    let mut found = HashMap::with_capacity(ids.len());
    for &id in ids {
        let mut rows = statement.query(params![id, model])?;
        if let Some(row) = rows.next()? {
            found.insert(id, row.get(0)?);
        }
    }
    Ok(found)
}

/// The newest document stamp (0 for none): where [`written_since`] starts counting.
pub fn newest_stamp(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(indexed_at), 0) FROM documents")?
        .query_row([], |row| row.get(0))
}

/// How many document rows were written after `stamp`, and the newest stamp among them (or
/// `stamp`): how fast the store is being written, by any process. Reads the `indexed_at` index
/// over just those rows.
pub fn written_since(conn: &Connection, stamp: i64) -> rusqlite::Result<(u64, i64)> {
    conn.prepare_cached(
        "SELECT count(*), coalesce(max(indexed_at), ?1) FROM documents WHERE indexed_at > ?1",
    )?
    .query_row([stamp], |row| {
        Ok((row.get::<_, i64>(0)? as u64, row.get(1)?))
    })
}

/// How many documents have a current vector by `model`, and how many live searchable ones
/// there are: the embedder's progress. Reads every document row; for tests and reports.
pub fn coverage(conn: &Connection, model: &str) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT count(v.document_id), count(*) FROM documents AS d
         LEFT JOIN document_vectors AS v
             ON v.document_id = d.id AND v.model = ?1 AND v.source_stamp = d.indexed_at
         WHERE d.deleted = 0 AND d.searchable = 1",
        [model],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
    )
}

/// What one pass of the embedder found: vectors to keep, vectors to drop, and how far it read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorUpdate {
    /// `(document id, the stamp of the row embedded, packed vector)`.
    pub vectors: Vec<(i64, i64, Vec<u8>)>,
    /// Documents whose vector goes (deleted, unsearchable).
    pub removed: Vec<i64>,
    /// Everything up to here has been handled.
    pub reached: Position,
}

/// The write connection for vectors (see the module doc).
pub struct VectorWriter {
    conn: Connection,
}

impl VectorWriter {
    pub(super) fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Stores an update by `model` and the position it reached, in one transaction.
    pub fn apply(&mut self, model: &str, update: &VectorUpdate) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO document_vectors (document_id, model, source_stamp, vector)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (id, stamp, vector) in &update.vectors {
                insert.execute(params![id, model, stamp, vector])?;
            }
            let mut remove =
                tx.prepare_cached("DELETE FROM document_vectors WHERE document_id = ?1")?;
            for id in &update.removed {
                remove.execute([id])?;
            }
        }
        super::writer::advance_cursor(&tx, &cursor_source(model), update.reached.stamp)?;
        tx.commit()
    }
}
