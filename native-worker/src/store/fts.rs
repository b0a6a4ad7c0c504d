//! The store's full-text index (`documents_fts`), maintained once per batch instead of per row.
//!
//! FTS5 buffers new terms in memory and writes them out as an on-disk segment when the
//! transaction commits, but also whenever a statement inside the transaction opens a savepoint,
//! which every constrained upsert does. Row triggers therefore wrote one tiny segment per
//! document and spent most of ingest merging them. The writer instead takes the
//! batch's documents out of the index before it changes them and puts the live ones back after,
//! one set-based statement each, so a whole batch reaches the index as one segment (migration 4
//! also lets FTS5 buffer 64 MiB of terms, not 1 MiB, before it must write one). Both statements
//! go in rowid order: FTS5 also writes a segment whenever a rowid is lower than the last one.
//! (Selecting by `id IN (…)` gives that order without sorting the documents' text.)

use rusqlite::Connection;

use super::replica::Table;
use super::writer::{Change, written_row};

/// The documents a batch touches, as the JSON array of URIs the index statements read.
pub(super) struct TouchedDocuments(Option<String>);

impl TouchedDocuments {
    /// Collects the URIs of every document row `changes` may write.
    pub(super) fn of(changes: &[Change]) -> Self {
        let uris: Vec<String> = changes
            .iter()
            .filter_map(written_row)
            .filter_map(|(table, uri)| (table == Table::Documents).then_some(uri))
            .collect();
        Self((!uris.is_empty()).then(|| serde_json::to_string(&uris).expect("URIs serialise")))
    }

    /// Removes the touched documents' current text from the index. Runs before the batch
    /// changes them: an external-content index forgets a row only given the text it indexed.
    pub(super) fn unindex(&self, tx: &Connection) -> rusqlite::Result<()> {
        self.run(
            tx,
            "INSERT INTO documents_fts (documents_fts, rowid, title, content)
             SELECT 'delete', id, title, content FROM documents
             WHERE id IN (SELECT id FROM documents WHERE uri IN (SELECT value FROM json_each(?1)))
               AND deleted = 0
             ORDER BY id",
        )
    }

    /// Indexes the touched documents that are live after the batch: the new and changed ones,
    /// and the unchanged ones `unindex` took out (a stale change leaves its row as it was).
    pub(super) fn reindex(&self, tx: &Connection) -> rusqlite::Result<()> {
        self.run(
            tx,
            "INSERT INTO documents_fts (rowid, title, content)
             SELECT id, title, content FROM documents
             WHERE id IN (SELECT id FROM documents WHERE uri IN (SELECT value FROM json_each(?1)))
               AND deleted = 0
             ORDER BY id",
        )
    }

    fn run(&self, tx: &Connection, sql: &str) -> rusqlite::Result<()> {
        if let Some(uris) = &self.0 {
            tx.prepare_cached(sql)?.execute([uris])?;
        }
        Ok(())
    }
}
