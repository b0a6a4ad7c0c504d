//! The serving snapshot's schema and the version stamps that say who can read it.
//!
//! A snapshot is a self-contained SQLite file. Documents and publications each have an
//! external-content FTS5 index (text stored once, in the base table; a document's compressed, see
//! [`crate::content`]), tags are a separate table so
//! a tag filter is an `IN` subquery the FTS index can drive, and `meta` records the versions a
//! reader must speak. Bump [`SCHEMA_VERSION`] for any table change and [`SCORING_VERSION`] for any
//! ranking change: readers refuse snapshots whose versions they do not know.

use rusqlite::{Connection, OptionalExtension};

/// Version of the table layout below.
///
/// 2: `documents` keeps its text last, so reading the columns after it no longer walks the text's
/// overflow pages (`search::prepare` reads every row's date, author and title; the `since`
/// filter reads every match's date), and `documents_fts` has a
/// prefix index for [`crate::query::MIN_PREFIX_CHARS`]-character prefixes, the shortest the query
/// language expands (`shi*` merged hundreds of terms' doclists per query without it).
///
/// 3: `documents.content` is LZ4-compressed ([`crate::content`]) and `documents_fts` reads it
/// through the `document_text` view, so the snapshot, and the edge's memory for it, is about 28%
/// smaller.
///
/// 4: document text moves out of `documents` into `document_bodies`, so `documents` is compact
/// metadata. The paged edge reads a snapshot by range (see the README's "Paged snapshots"):
/// opening one reads every `documents` row (`search::prepare`'s facts), which in schema 3
/// meant reading most of the text too, since each row's first kilobytes of text share its page.
///
/// 5: documents are numbered newest first (the builder adds them in that order), so the matches
/// a search examines within [`crate::search::SCAN_BUDGET`] are the newest (ARCHITECTURE.md
/// invariant 9). The tables are those of version 4; an older snapshot is answered the same way,
/// its budget spent on its lowest ids instead.
///
/// 6: `document_facts` and `document_authors` ([`crate::facts::create_tables`]) hold what search
/// needs of each match in about 20 bytes a row, read in blocks as matches need them; before,
/// opening a snapshot read every `documents` row into memory. An older snapshot gets them in the
/// connection's temp schema when it is opened.
///
/// 7: `handles` maps each author's DID to their handle ([`crate::authors`]), so results name
/// their author and `author=` takes a handle; `document_terms` holds each document's most
/// distinctive terms, what `/similar` searches for ([`crate::similar`]). Older snapshots answer
/// without handles, and with no related posts.
pub const SCHEMA_VERSION: u32 = 8;
/// The oldest table layout this build still reads. Versions 1 and 2 store plain text, which
/// `pubsearch_text` passes through, version 1 has its columns in another order and no prefix
/// index, and versions 1 to 3 keep text in `documents.content` ([`text_source`] says where): the
/// same SQL answers them identically, only slower, so a new reader keeps serving the last old
/// snapshot until the first new one is published.
pub const OLDEST_READABLE_SCHEMA_VERSION: u32 = 1;
/// The FTS5 tokenizer both indexes use; a snapshot built with another is refused.
pub const TOKENIZER: &str = "unicode61 remove_diacritics 2";
/// Version of what a snapshot must hold for the ranking formula (bm25 weights, recency boost,
/// candidate pool) to apply to it. The scan budget came with schema 5 and kept number 1: it needs
/// nothing new of a snapshot, and changes answers only for expressions matching more rows than
/// the budget, so a new reader keeps serving an older build during an upgrade.
pub const SCORING_VERSION: u32 = 1;

/// bm25 weight of a document's title relative to its content (weight 1).
pub const TITLE_WEIGHT: f64 = 10.0;
/// bm25 weight of a publication's name relative to its description (weight 1).
pub const NAME_WEIGHT: f64 = 10.0;
/// Each FTS5 index with the bm25 weight of its first column (the second weighs 1): the weights
/// of the snapshot's persistent rank and of the functions search ranks with.
pub const FTS_WEIGHTS: [(&str, f64); 2] = [
    ("documents_fts", TITLE_WEIGHT),
    ("publications_fts", NAME_WEIGHT),
];

/// Longest tag kept, in characters; longer ones are dropped rather than truncated into a different tag.
pub const MAX_TAG_CHARS: usize = 64;

/// The snapshot's tables. Timestamps are canonical RFC 3339 text (see [`crate::timestamp`]);
/// `indexed_at` is the ingest time in Unix microseconds, the unit of the source watermark.
pub const DDL: &str = r#"
CREATE TABLE documents (
    id              INTEGER PRIMARY KEY,
    uri             TEXT NOT NULL UNIQUE,
    did             TEXT NOT NULL,
    rkey            TEXT NOT NULL,
    collection      TEXT NOT NULL,
    platform        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    indexed_at      INTEGER NOT NULL,
    publication_uri TEXT,
    base_path       TEXT,
    path            TEXT,
    tags            TEXT NOT NULL DEFAULT '[]',
    cover_image     TEXT,
    title           TEXT NOT NULL
);
CREATE INDEX documents_publication_uri ON documents(publication_uri);
CREATE INDEX documents_did ON documents(did);

-- Each document's text, LZ4-compressed (see `content`), apart from the metadata every search reads.
CREATE TABLE document_bodies (
    id      INTEGER PRIMARY KEY REFERENCES documents(id),
    content BLOB NOT NULL
);

CREATE TABLE publications (
    id           INTEGER PRIMARY KEY,
    uri          TEXT NOT NULL UNIQUE,
    did          TEXT NOT NULL,
    rkey         TEXT NOT NULL,
    platform     TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    base_path    TEXT,
    created_at   TEXT,
    indexed_at   INTEGER NOT NULL,
    discoverable INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX publications_did ON publications(did);

CREATE TABLE document_tags (
    tag         TEXT NOT NULL,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    PRIMARY KEY (tag, document_id)
) WITHOUT ROWID;

CREATE TABLE tag_counts (
    tag       TEXT PRIMARY KEY,
    documents INTEGER NOT NULL
) WITHOUT ROWID;

-- What FTS5 reads of a document: its text, decompressed (by `pubsearch_text`, see `content`).
CREATE VIEW document_text AS
    SELECT d.id, d.title, pubsearch_text(b.content) AS content
    FROM documents AS d JOIN document_bodies AS b ON b.id = d.id;

CREATE VIRTUAL TABLE documents_fts USING fts5(
    title, content,
    content = 'document_text', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '3'
);
CREATE VIRTUAL TABLE publications_fts USING fts5(
    name, description,
    content = 'publications', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Each author's handle as last seen, for the authors of the rows above (see `authors`).
CREATE TABLE handles (
    did    TEXT PRIMARY KEY,
    handle TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX handles_handle ON handles(handle);

-- Each document's most distinctive terms, space-separated (see `similar`).
CREATE TABLE document_terms (
    id    INTEGER PRIMARY KEY REFERENCES documents(id),
    terms TEXT NOT NULL
);

-- The embedding model (see `embed::model`): the vocabulary and the static table's rows.
CREATE TABLE embed_vocab (
    token TEXT PRIMARY KEY,
    id    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE embed_rows (
    id  INTEGER PRIMARY KEY,
    row BLOB NOT NULL
);

-- Documents' vectors by leaf of the tree that finds them, and its nodes (see `embed::index`).
CREATE TABLE vector_nodes (
    node     INTEGER PRIMARY KEY,
    centroid BLOB NOT NULL
);
CREATE TABLE document_vectors (
    leaf   INTEGER NOT NULL,
    id     INTEGER NOT NULL REFERENCES documents(id),
    vector BLOB NOT NULL,
    PRIMARY KEY (leaf, id)
) WITHOUT ROWID;
CREATE INDEX document_vectors_id ON document_vectors(id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// What a reader needs to know before trusting a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVersion {
    pub schema_version: u32,
    pub tokenizer: String,
    pub scoring_version: u32,
    /// Every document with `indexed_at <= source_watermark_us` is in the snapshot, and no other.
    pub source_watermark_us: i64,
}

/// Why a database cannot be served as a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("snapshot is missing meta key {0:?}")]
    MissingMeta(&'static str),
    #[error("snapshot meta key {key:?} has unreadable value {value:?}")]
    BadMeta { key: &'static str, value: String },
    #[error(
        "snapshot speaks schema {found_schema}/scoring {found_scoring}/tokenizer {found_tokenizer:?}; \
         this build reads schema {OLDEST_READABLE_SCHEMA_VERSION}..={SCHEMA_VERSION}/scoring {SCORING_VERSION}/tokenizer {TOKENIZER:?}"
    )]
    Incompatible {
        found_schema: u32,
        found_scoring: u32,
        found_tokenizer: String,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Creates the snapshot tables and configures FTS ranking in an empty database, and readies
/// the connection to fill them ([`crate::content::install`]).
pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    crate::content::install(conn)?;
    conn.execute_batch(DDL)?;
    // A persistent rank lets `ORDER BY rank` use FTS5's own sort with our column weights.
    for (index, weight) in FTS_WEIGHTS {
        conn.execute(
            &format!("INSERT INTO {index}({index}, rank) VALUES ('rank', ?1)"),
            [format!("bm25({weight:.1}, 1.0)")],
        )?;
    }
    Ok(())
}

/// Stamps the snapshot with this build's versions and the source watermark it covers.
pub fn write_version(conn: &Connection, source_watermark_us: i64) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?;
    upsert.execute(("schema_version", SCHEMA_VERSION.to_string()))?;
    upsert.execute(("tokenizer", TOKENIZER))?;
    upsert.execute(("scoring_version", SCORING_VERSION.to_string()))?;
    upsert.execute(("source_watermark_us", source_watermark_us.to_string()))?;
    Ok(())
}

/// Reads a snapshot's version stamps.
pub fn read_version(conn: &Connection) -> Result<SnapshotVersion, SchemaError> {
    let get = |key: &'static str| -> Result<String, SchemaError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?
        .ok_or(SchemaError::MissingMeta(key))
    };
    fn number<T: std::str::FromStr>(key: &'static str, value: String) -> Result<T, SchemaError> {
        value
            .parse()
            .map_err(|_| SchemaError::BadMeta { key, value })
    }
    Ok(SnapshotVersion {
        schema_version: number("schema_version", get("schema_version")?)?,
        tokenizer: get("tokenizer")?,
        scoring_version: number("scoring_version", get("scoring_version")?)?,
        source_watermark_us: number("source_watermark_us", get("source_watermark_us")?)?,
    })
}

/// Whether this build reads a snapshot stamped with these versions and ranks it identically.
pub fn speaks(schema_version: u32, scoring_version: u32, tokenizer: &str) -> bool {
    (OLDEST_READABLE_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&schema_version)
        && scoring_version == SCORING_VERSION
        && tokenizer == TOKENIZER
}

/// The SQL for the stored text of the document whose id is `id_sql` (an expression), whatever
/// the layout: schema 4 keeps text in `document_bodies`, older ones in `documents.content`.
/// Decompressed by the caller with [`crate::content::FUNCTION`].
pub fn text_source(conn: &Connection, id_sql: &str) -> rusqlite::Result<String> {
    let split: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'document_bodies')",
        [],
        |row| row.get(0),
    )?;
    Ok(if split {
        format!("(SELECT content FROM document_bodies WHERE id = {id_sql})")
    } else {
        format!("(SELECT content FROM documents WHERE id = {id_sql})")
    })
}

/// Reads the version stamps and refuses a snapshot this build cannot rank identically.
pub fn check_compatible(conn: &Connection) -> Result<SnapshotVersion, SchemaError> {
    let version = read_version(conn)?;
    if !speaks(
        version.schema_version,
        version.scoring_version,
        &version.tokenizer,
    ) {
        return Err(SchemaError::Incompatible {
            found_schema: version.schema_version,
            found_scoring: version.scoring_version,
            found_tokenizer: version.tokenizer,
        });
    }
    Ok(version)
}

/// The stored form of a tag: trimmed, lowercase, without a leading `#`; `None` if nothing is left
/// or it is longer than [`MAX_TAG_CHARS`].
pub fn normalize_tag(tag: &str) -> Option<String> {
    let tag = tag.trim().trim_start_matches('#').trim();
    let tag: String = tag
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .to_lowercase();
    (!tag.is_empty() && tag.chars().count() <= MAX_TAG_CHARS).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trips_and_mismatch_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        create(&conn).unwrap();
        assert!(matches!(
            check_compatible(&conn),
            Err(SchemaError::MissingMeta("schema_version"))
        ));
        write_version(&conn, 42).unwrap();
        assert_eq!(check_compatible(&conn).unwrap().source_watermark_us, 42);
        conn.execute(
            "UPDATE meta SET value = '999' WHERE key = 'scoring_version'",
            [],
        )
        .unwrap();
        assert!(matches!(
            check_compatible(&conn),
            Err(SchemaError::Incompatible {
                found_scoring: 999,
                ..
            })
        ));
    }

    #[test]
    fn older_layouts_are_read_until_the_oldest_readable_one() {
        for version in OLDEST_READABLE_SCHEMA_VERSION..=SCHEMA_VERSION {
            assert!(speaks(version, SCORING_VERSION, TOKENIZER), "{version}");
        }
        assert!(!speaks(
            OLDEST_READABLE_SCHEMA_VERSION - 1,
            SCORING_VERSION,
            TOKENIZER
        ));
        assert!(!speaks(SCHEMA_VERSION + 1, SCORING_VERSION, TOKENIZER));
        assert!(!speaks(SCHEMA_VERSION, SCORING_VERSION + 1, TOKENIZER));
        assert!(!speaks(SCHEMA_VERSION, SCORING_VERSION, "porter"));
    }

    #[test]
    fn the_prefix_index_serves_the_shortest_prefix_queries() {
        let prefix = format!("prefix = '{}'", crate::query::MIN_PREFIX_CHARS);
        assert!(DDL.contains(&prefix), "documents_fts must declare {prefix}");
    }

    #[test]
    fn tags_normalise() {
        assert_eq!(normalize_tag("  #Rust "), Some("rust".into()));
        assert_eq!(normalize_tag("#"), None);
        assert_eq!(normalize_tag(&"x".repeat(MAX_TAG_CHARS + 1)), None);
    }
}
