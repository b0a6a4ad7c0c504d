//! Writing serving snapshots.
//!
//! The snapshot builder (native worker) and every test fixture fill a snapshot through
//! [`SnapshotWriter`], so the rows a search reads are always shaped the way [`crate::search`]
//! expects. Rows go in inside one transaction; [`SnapshotWriter::finish`] builds the FTS indexes
//! in one pass, writes each document's search facts (see [`crate::facts`]), materialises tag
//! counts and stamps the versions.

use rusqlite::{Connection, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::embed::model::EmbeddingModel;
use crate::platform::Platform;
use crate::schema;
use crate::timestamp::Timestamp;

/// A document as the snapshot stores it: already extracted, normalised and policy-checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDocument {
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub collection: String,
    pub platform: Platform,
    pub title: String,
    pub content: String,
    pub created_at: Timestamp,
    pub indexed_at_us: i64,
    pub publication_uri: Option<String>,
    pub base_path: Option<String>,
    pub path: Option<String>,
    pub tags: Vec<String>,
    pub cover_image: Option<String>,
}

/// A publication (a blog) as the snapshot stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPublication {
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub platform: Platform,
    pub name: String,
    pub description: String,
    pub base_path: Option<String>,
    pub created_at: Option<Timestamp>,
    pub indexed_at_us: i64,
    /// `false` when the author opted out of discovery: kept for URL resolution, never a result.
    pub discoverable: bool,
}

/// What a finished snapshot holds; the manifest records these and verification re-counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotCounts {
    pub documents: u64,
    pub publications: u64,
    pub tags: u64,
}

/// Fills an empty database with a snapshot, in one transaction.
pub struct SnapshotWriter<'conn> {
    tx: Transaction<'conn>,
}

impl<'conn> SnapshotWriter<'conn> {
    /// Creates the schema in `conn` (which must be empty) and starts the build transaction.
    pub fn create(conn: &'conn mut Connection) -> rusqlite::Result<Self> {
        let tx = conn.transaction()?;
        schema::create(&tx)?;
        crate::embed::index::prepare_given(&tx)?;
        Ok(Self { tx })
    }

    /// Adds one document (its tags normalised and deduplicated) and returns its row.
    pub fn add_document(&mut self, doc: &SnapshotDocument) -> rusqlite::Result<i64> {
        let mut tags: Vec<String> = doc
            .tags
            .iter()
            .filter_map(|tag| schema::normalize_tag(tag))
            .collect();
        tags.sort();
        tags.dedup();
        let tags_json = serde_json::to_string(&tags).expect("a list of strings serialises");
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO documents (uri, did, rkey, collection, platform, title, created_at,
                                    indexed_at, publication_uri, base_path, path, tags, cover_image)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        insert.execute(params![
            doc.uri,
            doc.did,
            doc.rkey,
            doc.collection,
            doc.platform.as_str(),
            doc.title,
            doc.created_at.to_rfc3339(),
            doc.indexed_at_us,
            doc.publication_uri,
            doc.base_path,
            doc.path,
            tags_json,
            doc.cover_image,
        ])?;
        let id = self.tx.last_insert_rowid();
        self.tx
            .prepare_cached("INSERT INTO document_bodies (id, content) VALUES (?1, ?2)")?
            .execute(params![id, crate::content::compress(&doc.content)])?;
        let mut tag_insert = self
            .tx
            .prepare_cached("INSERT INTO document_tags (tag, document_id) VALUES (?1, ?2)")?;
        for tag in &tags {
            tag_insert.execute(params![tag, id])?;
        }
        Ok(id)
    }

    /// Gives the document in row `id` its vector by `model`, computed before (the native store
    /// keeps them): [`SnapshotWriter::finish_with`] that model embeds only the others.
    pub fn give_vector(&mut self, id: i64, model: &str, packed: &[u8]) -> rusqlite::Result<()> {
        crate::embed::index::give(&self.tx, id, model, packed)
    }

    /// Adds one publication.
    pub fn add_publication(&mut self, publication: &SnapshotPublication) -> rusqlite::Result<()> {
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO publications (uri, did, rkey, platform, name, description, base_path, created_at,
                                       indexed_at, discoverable)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        insert.execute(params![
            publication.uri,
            publication.did,
            publication.rkey,
            publication.platform.as_str(),
            publication.name,
            publication.description,
            publication.base_path,
            publication.created_at.map(Timestamp::to_rfc3339),
            publication.indexed_at_us,
            publication.discoverable,
        ])?;
        Ok(())
    }

    /// Records an author's handle (normalised; one that is not shaped like a handle is
    /// skipped, as is a second one for the same DID).
    pub fn add_handle(&mut self, did: &str, handle: &str) -> rusqlite::Result<()> {
        if let Some(handle) = crate::authors::parse_handle(handle) {
            self.tx
                .prepare_cached("INSERT OR IGNORE INTO handles (did, handle) VALUES (?1, ?2)")?
                .execute([did, handle.as_str()])?;
        }
        Ok(())
    }

    /// Builds the FTS indexes and tag counts, stamps versions and the watermark, and commits.
    pub fn finish(self, source_watermark_us: i64) -> rusqlite::Result<SnapshotCounts> {
        self.finish_with(source_watermark_us, None)
    }

    /// [`SnapshotWriter::finish`], also writing `model` and every document's vector by it (the
    /// ones given with [`SnapshotWriter::give_vector`], the rest embedded here; see
    /// [`crate::embed::index`]), so the build answers semantic searches.
    pub fn finish_with(
        self,
        source_watermark_us: i64,
        model: Option<&EmbeddingModel>,
    ) -> rusqlite::Result<SnapshotCounts> {
        let tx = self.tx;
        tx.execute_batch(
            "INSERT INTO documents_fts(documents_fts) VALUES ('rebuild');
             INSERT INTO documents_fts(documents_fts) VALUES ('optimize');
             INSERT INTO publications_fts(publications_fts) VALUES ('rebuild');
             INSERT INTO publications_fts(publications_fts) VALUES ('optimize');
             INSERT INTO tag_counts (tag, documents)
                 SELECT tag, count(*) FROM document_tags GROUP BY tag;",
        )?;
        crate::facts::create_tables(&tx, "main")?;
        crate::similar::describe(&tx, None)?;
        if let Some(model) = model {
            model.write(&tx)?;
            crate::embed::index::write(&tx, model)?;
        }
        schema::write_version(&tx, source_watermark_us)?;
        let counts = count(&tx)?;
        tx.commit()?;
        Ok(counts)
    }
}

/// Counts what a snapshot holds.
pub fn count(conn: &Connection) -> rusqlite::Result<SnapshotCounts> {
    let count = |sql: &str| {
        conn.query_row(sql, [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
    };
    Ok(SnapshotCounts {
        documents: count("SELECT count(*) FROM documents")?,
        publications: count("SELECT count(*) FROM publications")?,
        tags: count("SELECT count(*) FROM tag_counts")?,
    })
}
