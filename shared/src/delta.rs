//! Deltas: small snapshots of what changed since a base build, searched together with it
//! (ARCHITECTURE.md, "Deltas").
//!
//! A delta is a snapshot file with the usual schema holding every document and publication that
//! changed since its base's watermark and still passes policy, plus what the base must stop
//! showing: `delta_masks` lists the base rowids replaced (a newer copy is in the delta) or gone
//! (deleted, taken down, banned, hidden). A delta is cumulative: each one covers everything since
//! its base, so a reader only ever holds the base and the newest delta.
//!
//! The builder also writes what a reader cannot cheaply work out from the base: the tags the
//! masked base rows carried (`delta_tag_removals`, for `/tags`), what base and delta serve
//! together (`served_*` in `meta`), and cross-post families numbered in the base's space, so a
//! delta document and its base copy on another platform are still one family.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};

use crate::schema::{self, SchemaError};
use crate::snapshot::SnapshotCounts;

/// What a delta adds to the snapshot schema.
pub const DDL: &str = "
CREATE TABLE delta_masks (
    kind INTEGER NOT NULL, -- 0: a document, 1: a publication
    id   INTEGER NOT NULL, -- its rowid in the base
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE delta_tag_removals (
    tag       TEXT PRIMARY KEY,
    documents INTEGER NOT NULL -- masked base documents carrying the tag
) WITHOUT ROWID;
";

/// The oldest base schema a delta can overlay: the first with `document_facts`, whose
/// cross-post families a delta continues.
pub const OLDEST_BASE_SCHEMA: u32 = 6;

/// `delta_masks.kind` of a document.
pub const MASK_DOCUMENT: i64 = 0;
/// `delta_masks.kind` of a publication.
pub const MASK_PUBLICATION: i64 = 1;

/// Why a file could not be used as a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("not a delta: {0}")]
    NotADelta(String),
    #[error("the delta overlays build {delta_base}, not {base}")]
    OtherBase { base: String, delta_base: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Creates the delta tables in a snapshot being built.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(DDL)
}

/// Stamps a delta with the base it overlays and what the two serve together.
pub fn write_meta(
    conn: &Connection,
    base_build_id: &str,
    served: SnapshotCounts,
) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?;
    upsert.execute(("base_build_id", base_build_id))?;
    upsert.execute(("served_documents", served.documents.to_string()))?;
    upsert.execute(("served_publications", served.publications.to_string()))?;
    upsert.execute(("served_tags", served.tags.to_string()))?;
    Ok(())
}

/// A delta opened for search: its connection (readied by [`crate::search::prepare`]) and the
/// base rows it hides, held in memory (a delta is small by design).
pub struct Delta {
    conn: Connection,
    base_build_id: String,
    masked_documents: HashSet<i64>,
    masked_publications: HashSet<i64>,
    served: SnapshotCounts,
}

impl Delta {
    /// Readies an open delta file for search; refuses a file that is not a delta this build
    /// speaks.
    pub fn open(conn: Connection) -> Result<Self, DeltaError> {
        schema::check_compatible(&conn)?;
        let meta = |key: &str| -> Result<String, DeltaError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?
            .ok_or_else(|| DeltaError::NotADelta(format!("no {key} in its meta")))
        };
        let number = |key: &str| -> Result<u64, DeltaError> {
            let value = meta(key)?;
            value
                .parse()
                .map_err(|_| DeltaError::NotADelta(format!("{key} is {value:?}")))
        };
        let base_build_id = meta("base_build_id")?;
        let served = SnapshotCounts {
            documents: number("served_documents")?,
            publications: number("served_publications")?,
            tags: number("served_tags")?,
        };
        crate::search::prepare(&conn)?;
        let masks = |kind: i64| -> rusqlite::Result<HashSet<i64>> {
            let mut statement = conn.prepare("SELECT id FROM delta_masks WHERE kind = ?1")?;
            let ids = statement.query_map([kind], |row| row.get(0))?;
            ids.collect()
        };
        let masked_documents = masks(MASK_DOCUMENT)?;
        let masked_publications = masks(MASK_PUBLICATION)?;
        Ok(Delta {
            conn,
            base_build_id,
            masked_documents,
            masked_publications,
            served,
        })
    }

    /// Refuses to overlay any base but its own.
    pub fn check_base(&self, base_build_id: &str) -> Result<(), DeltaError> {
        if self.base_build_id == base_build_id {
            Ok(())
        } else {
            Err(DeltaError::OtherBase {
                base: base_build_id.to_owned(),
                delta_base: self.base_build_id.clone(),
            })
        }
    }

    /// The delta's own connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The build this delta overlays.
    pub fn base_build_id(&self) -> &str {
        &self.base_build_id
    }

    /// What base and delta serve together.
    pub fn served(&self) -> SnapshotCounts {
        self.served
    }

    /// Whether the base document with rowid `id` is hidden by this delta.
    pub fn masks_document(&self, id: i64) -> bool {
        self.masked_documents.contains(&id)
    }

    /// Whether the base publication with rowid `id` is hidden by this delta.
    pub fn masks_publication(&self, id: i64) -> bool {
        self.masked_publications.contains(&id)
    }
}

/// The builds a reader answers from: a base and, when one is published, its newest delta.
#[derive(Clone, Copy)]
pub struct Layers<'a> {
    pub base: &'a Connection,
    pub delta: Option<&'a Delta>,
}

impl<'a> Layers<'a> {
    /// A base alone.
    pub fn base(base: &'a Connection) -> Self {
        Layers { base, delta: None }
    }
}

/// Completes a delta being built in `conn` (its snapshot finished, its masks inserted) against
/// the base attached as schema `base`: records the tags the masked base documents carried,
/// numbers its cross-post families in the base's space, embeds its documents with the base's
/// model (`model`, when it is that one, spares reading it from the base) and stamps
/// [`write_meta`] with what base and delta serve together.
pub fn finish(
    conn: &Connection,
    base: &str,
    base_build_id: &str,
    model: Option<&crate::embed::model::EmbeddingModel>,
) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "INSERT INTO main.delta_tag_removals (tag, documents)
             SELECT t.tag, count(*) FROM {base}.document_tags AS t
             JOIN main.delta_masks AS m ON m.kind = {MASK_DOCUMENT} AND m.id = t.document_id
             GROUP BY t.tag;"
    ))?;
    adopt_families(conn, base)?;
    // Described against the whole corpus, not the few documents beside them.
    crate::similar::describe(conn, Some(base))?;
    // Embedded with the base's model, so base and delta vectors compare: `model` when it is
    // the one the base names (no need to read 8 MB from the base), else the base's own.
    let in_base = crate::embed::model::SnapshotModel::open(conn, base).map_err(model_error)?;
    if let Some(in_base) = in_base {
        match model {
            Some(model) if model.name == in_base.name() => {
                crate::embed::index::write(conn, model)?;
            }
            _ => {
                let loaded = in_base.load().map_err(model_error)?;
                crate::embed::index::write(conn, &loaded)?;
            }
        }
    }
    let count = |sql: String| conn.query_row(&sql, [], |row| row.get::<_, i64>(0));
    let served = |table: &str, kind: i64| {
        count(format!(
            "SELECT (SELECT count(*) FROM {base}.{table})
                  - (SELECT count(*) FROM main.delta_masks WHERE kind = {kind})
                  + (SELECT count(*) FROM main.{table})"
        ))
    };
    let served = SnapshotCounts {
        documents: served("documents", MASK_DOCUMENT)?.max(0) as u64,
        publications: served("publications", MASK_PUBLICATION)?.max(0) as u64,
        tags: count(format!(
            "SELECT count(*) FROM (
                 SELECT tag, sum(n) AS n FROM (
                     SELECT tag, documents AS n FROM {base}.tag_counts
                     UNION ALL SELECT tag, -documents FROM main.delta_tag_removals
                     UNION ALL SELECT tag, documents FROM main.tag_counts)
                 GROUP BY tag)
             WHERE n > 0"
        ))?
        .max(0) as u64,
    };
    write_meta(conn, base_build_id, served)
}

fn model_error(error: crate::embed::model::ModelReadError) -> rusqlite::Error {
    match error {
        crate::embed::model::ModelReadError::Sqlite(error) => error,
        other => rusqlite::Error::UserFunctionError(other.into()),
    }
}

/// Renumbers the delta's cross-post families (see [`crate::facts`]) in the base's space: a
/// delta document by the same author with the same title as a base document joins its family,
/// and new pairs get numbers past the base's, in the order the base numbers them.
fn adopt_families(conn: &Connection, base: &str) -> rusqlite::Result<()> {
    let next: i64 = conn.query_row(
        &format!("SELECT coalesce(max(family), 0) + 1 FROM {base}.document_facts"),
        [],
        |row| row.get(0),
    )?;
    let rows: Vec<(i64, String, String)> = conn
        .prepare(
            "SELECT f.id, d.did, lower(d.title) FROM main.document_facts AS f
             JOIN main.documents AS d ON d.id = f.id
             WHERE f.family IS NOT NULL
             ORDER BY d.did, lower(d.title), f.id",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut in_base = conn.prepare(&format!(
        "SELECT f.family FROM {base}.documents AS d JOIN {base}.document_facts AS f ON f.id = d.id
         WHERE d.did = ?1 AND lower(d.title) = ?2 AND f.family IS NOT NULL LIMIT 1"
    ))?;
    let mut update = conn.prepare("UPDATE main.document_facts SET family = ?2 WHERE id = ?1")?;
    let (mut next, mut previous): (i64, Option<(&str, &str, i64)>) = (next, None);
    for (id, did, title) in &rows {
        let family = match previous {
            Some((p_did, p_title, family)) if p_did == did && p_title == title => family,
            _ => match in_base
                .query_row((did, title), |row| row.get(0))
                .optional()?
            {
                Some(family) => family,
                None => {
                    next += 1;
                    next - 1
                }
            },
        };
        update.execute((id, family))?;
        previous = Some((did, title, family));
    }
    Ok(())
}
