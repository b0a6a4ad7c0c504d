//! The embedding model a snapshot carries (ARCHITECTURE.md, "Embeddings"): the WordPiece
//! vocabulary in `embed_vocab` and the static table's rows in `embed_rows`, so a query is
//! embedded at the edge from the build it searches, with the very model its documents were
//! embedded with natively. A reader looks up only the pieces and rows a query needs.

use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use super::table::{self, StaticTable};
use super::wordpiece::{self, Rules, Vocabulary, WordPiece};

/// Characters of a document's text (after its title) that make its vector.
pub const DOCUMENT_CHARS: usize = 2000;

/// What a document's vector is made from: its title and the start of its text.
pub fn document_text(title: &str, content: &str) -> String {
    let lead = match content.char_indices().nth(DOCUMENT_CHARS) {
        Some((at, _)) => &content[..at],
        None => content,
    };
    format!("{title}\n{lead}")
}

/// A model in memory: the vocabulary and the static table (natively, where builds are made).
pub struct EmbeddingModel {
    pub vocab: WordPiece,
    pub table: StaticTable,
    /// Names the model and table, so a build records what its vectors mean.
    pub name: String,
}

impl EmbeddingModel {
    /// `text`'s vector; `None` when none of its pieces has a row.
    pub fn embed(&self, text: &str) -> Option<Vec<f32>> {
        self.table.embed(&self.vocab.encode(text))
    }

    /// Writes the model into a snapshot being built in `conn`.
    pub fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut vocab = conn.prepare("INSERT INTO embed_vocab (token, id) VALUES (?1, ?2)")?;
        for (token, id) in self.vocab.entries() {
            vocab.execute((token, id))?;
        }
        let mut rows = conn.prepare("INSERT INTO embed_rows (id, row) VALUES (?1, ?2)")?;
        for id in 0..self.table.rows() as u32 {
            let (scale, values) = self.table.quantized(id).expect("id within the table");
            rows.execute((id, table::pack_quantized(scale, values)))?;
        }
        let rules = self.vocab.rules();
        let mut meta = conn.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        meta.execute((META_NAME, &self.name))?;
        meta.execute((META_DIMS, self.table.dims().to_string()))?;
        meta.execute((META_UNKNOWN, rules.unknown.to_string()))?;
        meta.execute((META_PREFIX, &rules.prefix))?;
        meta.execute((META_MAX_WORD_CHARS, rules.max_word_chars.to_string()))?;
        Ok(())
    }
}

const META_NAME: &str = "embed_model";
const META_DIMS: &str = "embed_dims";
const META_UNKNOWN: &str = "embed_unknown";
const META_PREFIX: &str = "embed_prefix";
const META_MAX_WORD_CHARS: &str = "embed_max_word_chars";

/// A stored row (in [`table::pack`]'s layout) split back into its scale and values; `None` when
/// it is not `dims` wide.
fn split_row(stored: &[u8], dims: usize) -> Option<(f32, Vec<i8>)> {
    table::unpack_quantized(stored, dims).map(|(scale, values)| (scale, values.collect()))
}

/// Why a snapshot's model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelReadError {
    #[error("embedding model: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("embedding model: meta {key} is {value:?}")]
    BadMeta { key: &'static str, value: String },
    #[error("embedding model: row {id} is not {dims} values and a scale")]
    BadRow { id: u32, dims: usize },
}

/// The model inside a snapshot, read as needed through its connection.
pub struct SnapshotModel<'c> {
    conn: &'c Connection,
    schema: String,
    name: String,
    rules: Rules,
    dims: usize,
}

impl<'c> SnapshotModel<'c> {
    /// The model of the snapshot attached as `schema` (`main` for the connection's own);
    /// `None` when the build carries none (built without one, or before schema 8).
    pub fn open(conn: &'c Connection, schema: &str) -> Result<Option<Self>, ModelReadError> {
        let has_meta: bool = conn.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_master WHERE name = 'embed_rows')"
            ),
            [],
            |row| row.get(0),
        )?;
        if !has_meta {
            return Ok(None);
        }
        let get = |key: &'static str| -> rusqlite::Result<Option<String>> {
            conn.query_row(
                &format!("SELECT value FROM {schema}.meta WHERE key = ?1"),
                [key],
                |row| row.get(0),
            )
            .optional()
        };
        let Some(name) = get(META_NAME)? else {
            return Ok(None);
        };
        let number = |key: &'static str| -> Result<usize, ModelReadError> {
            let value = get(key)?.unwrap_or_default();
            value
                .parse()
                .map_err(|_| ModelReadError::BadMeta { key, value })
        };
        Ok(Some(SnapshotModel {
            conn,
            schema: schema.to_owned(),
            name,
            dims: number(META_DIMS)?,
            rules: Rules {
                unknown: number(META_UNKNOWN)? as u32,
                prefix: get(META_PREFIX)?.unwrap_or_default(),
                max_word_chars: number(META_MAX_WORD_CHARS)?,
            },
        }))
    }

    /// What the model is called (see [`EmbeddingModel::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Width of its vectors.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// `text`'s vector, computed as [`EmbeddingModel::embed`] computes it; `None` when none of
    /// its pieces has a row.
    pub fn embed(&self, text: &str) -> Result<Option<Vec<f32>>, ModelReadError> {
        let vocab = SqlVocabulary {
            conn: self.conn,
            sql: format!(
                "SELECT id FROM {}.embed_vocab WHERE token = ?1",
                self.schema
            ),
            failed: RefCell::new(None),
        };
        let ids = wordpiece::encode(&vocab, &self.rules, text);
        if let Some(error) = vocab.failed.into_inner() {
            return Err(error.into());
        }
        let mut rows = HashMap::new();
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT row FROM {}.embed_rows WHERE id = ?1",
            self.schema
        ))?;
        for &id in &ids {
            if rows.contains_key(&id) {
                continue;
            }
            let stored: Option<Vec<u8>> = statement.query_row([id], |row| row.get(0)).optional()?;
            let row = match stored {
                Some(stored) => {
                    Some(split_row(&stored, self.dims).ok_or(ModelReadError::BadRow {
                        id,
                        dims: self.dims,
                    })?)
                }
                None => None,
            };
            rows.insert(id, row);
        }
        Ok(table::mean_of(
            self.dims,
            ids.iter().map(|id| {
                rows[id]
                    .as_ref()
                    .map(|(scale, values)| (*scale, values.as_slice()))
            }),
        ))
    }

    /// The whole model in memory (a delta's builder embeds its documents with its base's).
    pub fn load(&self) -> Result<EmbeddingModel, ModelReadError> {
        let vocab: HashMap<String, u32> = self
            .conn
            .prepare(&format!(
                "SELECT token, id FROM {}.embed_vocab",
                self.schema
            ))?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut statement = self.conn.prepare(&format!(
            "SELECT id, row FROM {}.embed_rows ORDER BY id",
            self.schema
        ))?;
        let mut rows = Vec::new();
        let mut stored = statement.query([])?;
        while let Some(row) = stored.next()? {
            let id: u32 = row.get(0)?;
            let bad = ModelReadError::BadRow {
                id,
                dims: self.dims,
            };
            if id as usize != rows.len() {
                return Err(bad);
            }
            rows.push(split_row(&row.get::<_, Vec<u8>>(1)?, self.dims).ok_or(bad)?);
        }
        let table = StaticTable::from_quantized(
            self.dims,
            rows.iter()
                .map(|(scale, values)| (*scale, values.as_slice())),
        )
        .expect("rows were checked to be dims wide");
        Ok(EmbeddingModel {
            vocab: WordPiece::from_parts(vocab, self.rules.clone()),
            table,
            name: self.name.clone(),
        })
    }
}

/// The snapshot's `embed_vocab` as a [`Vocabulary`]; the first read error is kept for the
/// caller, as the tokenizer's lookups cannot fail.
struct SqlVocabulary<'c> {
    conn: &'c Connection,
    sql: String,
    failed: RefCell<Option<rusqlite::Error>>,
}

impl Vocabulary for SqlVocabulary<'_> {
    fn id(&self, token: &str) -> Option<u32> {
        if self.failed.borrow().is_some() {
            return None;
        }
        let found = self
            .conn
            .prepare_cached(&self.sql)
            .and_then(|mut statement| statement.query_row([token], |row| row.get(0)).optional());
        found.unwrap_or_else(|error| {
            *self.failed.borrow_mut() = Some(error);
            None
        })
    }
}
