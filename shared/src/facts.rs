//! What search needs to know about each matching document beyond FTS5's hits, read in blocks of
//! rows and kept in a bounded cache.
//!
//! Without them, search pays a B-tree seek per match at three points: bm25 needs the row's length
//! (FTS5's own reads `<index>_docsize` with a statement per match), the filters (platform, since,
//! author, type) need the row's columns, and the re-rank needs the pool's dates and cross-post
//! families. The snapshot builder writes these facts into `document_facts`, a compact table of
//! integers (about 20 bytes a row, against about 700 for a `documents` row), numbered like
//! `documents`. Search reads it [`BLOCK_ROWS`] rows at a time into a cache of at most
//! [`MAX_BLOCKS`] blocks, so memory is bounded whatever the corpus (ARCHITECTURE.md invariant 1)
//! and a scan, which visits rows in id order, reads each block once. A snapshot older than schema
//! 6 has no such table: [`install`] derives one into the connection's temp schema, reading every
//! `documents` row once, as opening such a snapshot always did.
//!
//! - `pubsearch_document_filter(rowid, platform, since, author, articles)`: whether a document
//!   passes the filters (NULL arguments do not filter; `author` is the author's number in
//!   `document_authors`, -1 for a DID with no documents), exactly as the SQL of
//!   [`crate::search`]'s fallback would answer, or NULL when the facts cannot say (a row added
//!   after they were built, or a date not of the canonical form), so that SQL answers instead.
//! - `pubsearch_document_facts(ids)`, through [`document_facts`]: the pool's dates and families,
//!   for the re-rank, from the same blocks the scan read.
//!
//! [`crate::rank`]'s bm25 reads the row lengths through [`DocumentFacts::tokens`].

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params_from_iter};

/// The SQL function that tests a document against the search filters (see the module docs).
pub(crate) const DOCUMENT_FILTER: &str = "pubsearch_document_filter";
/// The SQL function behind [`document_facts`].
const DOCUMENT_FACTS: &str = "pubsearch_document_facts";
/// Bytes per document in [`DOCUMENT_FACTS`]'s answer: `created` and `family`, each an i64.
const POOL_FACTS_BYTES: usize = 16;
/// Rows read per block: 256 rows of `document_facts` are about 5 KB, a tenth of a paged chunk.
const BLOCK_ROWS: i64 = 256;
/// Blocks kept: 131,072 rows, about 6 MB of memory at most.
const MAX_BLOCKS: usize = 512;

/// Creates `document_facts` and `document_authors` in `schema` (`main` when building a
/// snapshot, `temp` when reading one built before them) from `main`'s documents and their FTS
/// lengths. Call after `documents_fts` is built.
pub fn create_tables(conn: &Connection, schema: &str) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("pubsearch_docsize_tokens", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Blob(blob) => total_tokens(blob),
            _ => None,
        })
    })?;
    conn.create_scalar_function("pubsearch_time_key", 1, flags, |ctx| {
        Ok(ctx.get_raw(0).as_bytes_or_null()?.and_then(time_key))
    })?;
    conn.create_scalar_function("pubsearch_blank", 1, flags, |ctx| {
        Ok(ctx
            .get_raw(0)
            .as_str_or_null()?
            .is_none_or(|text| text.trim().is_empty()))
    })?;
    conn.execute_batch(&format!(
        "CREATE TABLE {schema}.document_authors (
             n   INTEGER PRIMARY KEY,
             did TEXT NOT NULL UNIQUE
         );
         INSERT INTO {schema}.document_authors (did)
             SELECT DISTINCT did FROM main.documents ORDER BY did;
         CREATE TABLE {schema}.document_facts (
             id             INTEGER PRIMARY KEY,
             tokens         INTEGER,
             created        INTEGER,
             time_key       INTEGER,
             platform       TEXT NOT NULL,
             author         INTEGER NOT NULL,
             family         INTEGER,
             in_publication INTEGER NOT NULL
         );
         INSERT INTO {schema}.document_facts
             SELECT d.id, pubsearch_docsize_tokens(s.sz), unixepoch(d.created_at),
                    pubsearch_time_key(d.created_at), d.platform, a.n,
                    CASE WHEN NOT pubsearch_blank(d.title)
                         THEN dense_rank() OVER (ORDER BY d.did, lower(d.title)) END,
                    d.publication_uri IS NOT NULL
             FROM main.documents AS d
             JOIN {schema}.document_authors AS a ON a.did = d.did
             LEFT JOIN main.documents_fts_docsize AS s ON s.id = d.id
             ORDER BY d.id;"
    ))
}

/// Makes sure the snapshot has its facts (deriving them into `temp` for one built before schema
/// 6) and registers [`DOCUMENT_FILTER`] and [`DOCUMENT_FACTS`]. Returns the facts for [`crate::rank`]'s bm25. The
/// snapshot must not change afterwards (snapshots are read-only), though a row added later is
/// still filtered and scored right, by SQL, only without a date or family.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<Arc<DocumentFacts>> {
    let built: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_master WHERE name = 'document_facts')",
        [],
        |row| row.get(0),
    )?;
    if !built {
        create_tables(conn, "temp")?;
    }
    let facts = Arc::new(DocumentFacts::default());
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let shared = facts.clone();
    conn.create_scalar_function(DOCUMENT_FACTS, 1, flags, move |ctx| {
        let ids = ctx.get_raw(0).as_blob()?;
        let mut out = Vec::with_capacity(ids.len() / 8 * POOL_FACTS_BYTES);
        for id in ids.chunks_exact(8) {
            let id = i64::from_le_bytes(id.try_into().expect("8 bytes"));
            // SAFETY: the connection is used on this thread, inside this call, only to read facts.
            let open = || unsafe { ctx.get_connection() };
            let row = shared.with_row(id, open, |_, row| Some((row.created, row.family)));
            let (created, family) = row.unwrap_or((None, None));
            out.extend_from_slice(&created.unwrap_or(i64::MIN).to_le_bytes());
            out.extend_from_slice(&family.unwrap_or(i64::MIN).to_le_bytes());
        }
        Ok(out)
    })?;
    let shared = facts.clone();
    conn.create_scalar_function(DOCUMENT_FILTER, 5, flags, move |ctx| {
        let filter = Filter {
            platform: ctx.get_raw(1).as_str_or_null()?,
            since: ctx.get_raw(2).as_bytes_or_null()?,
            author: ctx.get_raw(3).as_i64_or_null()?,
            articles: ctx
                .get_raw(4)
                .as_i64_or_null()?
                .map(|articles| articles != 0),
        };
        let rowid = ctx.get_raw(0).as_i64()?;
        // SAFETY: the connection is used on this thread, inside this call, only to read facts.
        let open = || unsafe { ctx.get_connection() };
        Ok(shared.with_row(rowid, open, |block, row| block.passes(row, &filter)))
    })?;
    Ok(facts)
}

/// The SQL that gives the number `document_facts.author` holds for the DID bound at `param`
/// (-1 for a DID with no documents), or NULL when it is NULL.
pub(crate) fn author_number(param: &str) -> String {
    format!(
        "CASE WHEN {param} IS NOT NULL THEN \
         coalesce((SELECT n FROM document_authors WHERE did = {param}), -1) END"
    )
}

/// What ranking knows about one document beyond its bm25.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolFacts {
    /// `unixepoch(created_at)`; `None` if it did not parse or the row has no facts.
    pub created: Option<i64>,
    /// The cross-post family; `None` for a blank title or a row without facts.
    pub family: Option<i64>,
}

/// The facts of each of `ids`, in order, in one call: for the pool only. (The cache lives with the
/// connection, which only SQL can reach, so the ids go in and the facts come out as blobs.)
pub(crate) fn document_facts(conn: &Connection, ids: &[i64]) -> rusqlite::Result<Vec<PoolFacts>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let mut statement = conn.prepare_cached(&format!("SELECT {DOCUMENT_FACTS}(?1)"))?;
    let blob: Vec<u8> = statement.query_row([ids], |row| row.get(0))?;
    let field = |bytes: &[u8]| {
        let value = i64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        (value != i64::MIN).then_some(value)
    };
    Ok(blob
        .chunks_exact(POOL_FACTS_BYTES)
        .map(|facts| PoolFacts {
            created: field(&facts[..8]),
            family: field(&facts[8..]),
        })
        .collect())
}

/// One call's filter arguments; `None` filters nothing.
struct Filter<'a> {
    platform: Option<&'a str>,
    /// Timestamp text: the document's `created_at` must not sort before it.
    since: Option<&'a [u8]>,
    /// The author's number in `document_authors`.
    author: Option<i64>,
    /// `Some(true)`: only documents in a publication; `Some(false)`: only those outside one.
    articles: Option<bool>,
}

/// The cache of `document_facts` blocks (see the module docs), shared by the connection's
/// functions.
#[derive(Default)]
pub(crate) struct DocumentFacts {
    cache: Mutex<BlockCache>,
}

#[derive(Default)]
struct BlockCache {
    /// Block number → the block and when it was last used.
    blocks: HashMap<i64, (Arc<Block>, u64)>,
    clock: u64,
}

/// [`BLOCK_ROWS`] consecutive rows of `document_facts`.
struct Block {
    /// Indexed by rowid less the block's first; `None` where there is no row.
    rows: Vec<Option<FactRow>>,
    /// The distinct platforms of the block's rows, which name theirs by index.
    platforms: Vec<Box<str>>,
}

/// One document's facts, as the snapshot holds them.
#[derive(Clone, Copy)]
struct FactRow {
    tokens: Option<u32>,
    /// `unixepoch(created_at)`.
    created: Option<i64>,
    family: Option<i64>,
    /// The [`time_key`] of `created_at`, `None` if it is not canonical text (SQL then filters).
    time_key: Option<i64>,
    author: i64,
    platform: u8,
    in_publication: bool,
}

impl DocumentFacts {
    /// Tokens in document `rowid`, all columns together, if its facts say; `open` gives the
    /// connection to read a missing block with.
    pub(crate) fn tokens<C: Deref<Target = Connection>>(
        &self,
        rowid: i64,
        open: impl FnOnce() -> rusqlite::Result<C>,
    ) -> Option<u32> {
        self.with_row(rowid, open, |_, row| row.tokens)
    }

    /// `answer` for `rowid`'s facts, reading its block through `open`'s connection if it is not
    /// cached; `None` where there is no row or the block could not be read (SQL then answers,
    /// and a paged read's failure is reported by the VFS).
    fn with_row<T, C: Deref<Target = Connection>>(
        &self,
        rowid: i64,
        open: impl FnOnce() -> rusqlite::Result<C>,
        answer: impl FnOnce(&Block, &FactRow) -> Option<T>,
    ) -> Option<T> {
        let number = rowid.div_euclid(BLOCK_ROWS);
        let block = self.block(number, open)?;
        let row = block
            .rows
            .get(rowid.rem_euclid(BLOCK_ROWS) as usize)?
            .as_ref()?;
        answer(&block, row)
    }

    fn block<C: Deref<Target = Connection>>(
        &self,
        number: i64,
        open: impl FnOnce() -> rusqlite::Result<C>,
    ) -> Option<Arc<Block>> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        if let Some((block, used)) = cache.blocks.get_mut(&number) {
            *used = now;
            return Some(block.clone());
        }
        let conn = open().ok()?;
        let block = Arc::new(Block::read(&conn, number).ok()?);
        if cache.blocks.len() >= MAX_BLOCKS
            && let Some(oldest) = cache
                .blocks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(number, _)| *number)
        {
            cache.blocks.remove(&oldest);
        }
        cache.blocks.insert(number, (block.clone(), now));
        Some(block)
    }
}

impl Block {
    fn read(conn: &Connection, number: i64) -> rusqlite::Result<Self> {
        let first = number * BLOCK_ROWS;
        let mut block = Block {
            rows: vec![None; BLOCK_ROWS as usize],
            platforms: Vec::new(),
        };
        let mut statement = conn.prepare_cached(
            "SELECT id, tokens, time_key, author, platform, in_publication, created, family
             FROM document_facts WHERE id BETWEEN ?1 AND ?2",
        )?;
        let mut rows = statement.query(params_from_iter([first, first + BLOCK_ROWS - 1]))?;
        while let Some(row) = rows.next()? {
            let slot = (row.get::<_, i64>(0)? - first) as usize;
            let platform = row.get_ref(4)?.as_str()?;
            let index = match block.platforms.iter().position(|p| &**p == platform) {
                Some(index) => index,
                None => {
                    block.platforms.push(platform.into());
                    block.platforms.len() - 1
                }
            };
            // More than 256 platforms in 256 rows cannot happen; past it, SQL answers.
            let Ok(platform) = u8::try_from(index) else {
                continue;
            };
            block.rows[slot] = Some(FactRow {
                tokens: row.get(1)?,
                time_key: row.get(2)?,
                author: row.get(3)?,
                platform,
                in_publication: row.get(5)?,
                created: row.get(6)?,
                family: row.get(7)?,
            });
        }
        Ok(block)
    }

    /// Whether `row` passes `filter`, as SQL compares the columns; `None` if the facts cannot say.
    fn passes(&self, row: &FactRow, filter: &Filter<'_>) -> Option<bool> {
        let since = match (filter.since, row.time_key) {
            (None, _) => true,
            // Byte order, then length: SQL's BINARY collation, which `>=` on text uses.
            (Some(since), Some(created)) => time_text(created).as_slice() >= since,
            (Some(_), None) => return None,
        };
        Some(
            since
                && filter
                    .platform
                    .is_none_or(|platform| &*self.platforms[row.platform as usize] == platform)
                && filter.author.is_none_or(|author| author == row.author)
                && filter
                    .articles
                    .is_none_or(|articles| articles == row.in_publication),
        )
    }
}

/// A canonical timestamp, digits as zeros.
const CANONICAL_SHAPE: &[u8; 24] = b"0000-00-00T00:00:00.000Z";

/// A canonical timestamp's digits as one number (`2024-05-01T12:00:00.000Z` →
/// 20240501120000000), `None` for any other text. Canonical text is fixed width, so its byte
/// order, which SQL's `>=` compares, is the order of these numbers (see [`crate::timestamp`]).
fn time_key(text: &[u8]) -> Option<i64> {
    if text.len() != CANONICAL_SHAPE.len() {
        return None;
    }
    let mut key = 0i64;
    for (&byte, &shape) in text.iter().zip(CANONICAL_SHAPE) {
        match shape {
            b'0' if byte.is_ascii_digit() => key = key * 10 + i64::from(byte - b'0'),
            b'0' => return None,
            separator if byte != separator => return None,
            _ => {}
        }
    }
    Some(key)
}

/// The canonical text whose [`time_key`] is `key`.
fn time_text(mut key: i64) -> [u8; 24] {
    let mut text = *CANONICAL_SHAPE;
    for byte in text.iter_mut().rev() {
        if *byte == b'0' {
            *byte = b'0' + (key % 10) as u8;
            key /= 10;
        }
    }
    text
}

/// The sum of a docsize blob's varints (see [`crate::varint`]). `None` if the blob is truncated or
/// the sum does not fit.
fn total_tokens(mut blob: &[u8]) -> Option<u32> {
    let mut total = 0u32;
    while !blob.is_empty() {
        let (value, used) = crate::varint::read(blob)?;
        total = total.checked_add(u32::try_from(value).ok()?)?;
        blob = &blob[used..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docsize_blobs_sum_their_varints() {
        assert_eq!(total_tokens(&[]), Some(0));
        assert_eq!(total_tokens(&[3, 120]), Some(123));
        // 300 = 0b10_0101100 → 0x82 0x2c.
        assert_eq!(total_tokens(&[0x82, 0x2c, 1]), Some(301));
        assert_eq!(total_tokens(&[0x82]), None, "truncated varint");
    }

    #[test]
    fn the_block_cache_stays_within_its_budget_and_answers_after_eviction() {
        let conn = Connection::open_in_memory().unwrap();
        let rows = (MAX_BLOCKS as i64 + 8) * BLOCK_ROWS;
        conn.execute_batch(&format!(
            "CREATE TABLE document_facts (id INTEGER PRIMARY KEY, tokens INTEGER, created INTEGER,
                 time_key INTEGER, platform TEXT NOT NULL, author INTEGER NOT NULL,
                 family INTEGER, in_publication INTEGER NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO document_facts SELECT i, i % 1000, NULL, NULL, 'leaflet', 0, NULL, 0 FROM n;"
        ))
        .unwrap();
        let facts = DocumentFacts::default();
        let open = || Ok::<_, rusqlite::Error>(&conn);
        for pass in 0..2 {
            for rowid in (1..=rows).step_by(97) {
                assert_eq!(
                    facts.tokens(rowid, open),
                    Some((rowid % 1000) as u32),
                    "{pass}"
                );
            }
            let held = facts.cache.lock().unwrap().blocks.len();
            assert_eq!(held, MAX_BLOCKS, "pass {pass}");
        }
        assert_eq!(facts.tokens(rows + 1, open), None, "no such row");
    }

    #[test]
    fn time_keys_order_as_canonical_text_does() {
        let texts = [
            "1999-12-31T23:59:59.999Z",
            "2024-05-01T12:00:00.000Z",
            "2024-05-01T12:00:00.001Z",
            "2024-05-01T12:00:01.000Z",
        ];
        let keys: Vec<i64> = texts
            .iter()
            .map(|t| time_key(t.as_bytes()).unwrap())
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");
        assert_eq!(keys[1], 20240501120000000);
        for (text, key) in texts.iter().zip(&keys) {
            assert_eq!(&time_text(*key), text.as_bytes());
        }
        for other in [
            "2024-05-01T12:00:00Z",
            "2024-05-01 12:00:00.000Z",
            "2024-05-0aT12:00:00.000Z",
        ] {
            assert_eq!(time_key(other.as_bytes()), None, "{other}");
        }
    }
}
