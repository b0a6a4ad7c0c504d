//! Facts about every row of a snapshot, read once when it is opened and served from memory.
//!
//! Without them, search pays a B-tree seek per row at three points: FTS5's `bm25()` reads every
//! match's length from `<index>_docsize`, the filters (platform, since, author, type) join
//! `documents` for every match, and the re-rank joined `documents` again for each candidate's date,
//! author and title. A snapshot never changes once opened, so [`RowFacts::read`] reads what those
//! steps need once (on the bench's 7.5k documents, 15–25 ms natively on this noisy machine, of
//! which the filter columns take 2–4 ms, and 43–44 ms in workerd, mostly SQLite reading every
//! page of `documents`), and [`install`] registers the SQL functions that serve it:
//!
//! - `pubsearch_document_facts(ids)`: each listed document's `unixepoch(created_at)` and
//!   cross-post family (a number shared by the documents of one author with the same title, ASCII
//!   case folded as SQL's `lower` does; none for a blank title). Search asks it once per query,
//!   for the pool only, through [`document_facts`].
//! - `pubsearch_document_filter(rowid, platform, since, author, articles)`: whether a document
//!   passes the filters (NULL arguments do not filter), exactly as the SQL of
//!   [`crate::search`]'s fallback would answer, or NULL when memory cannot say (a row added after
//!   the facts were read, or a date not of the canonical length), so that SQL answers instead.
//!
//! [`crate::rank`]'s bm25 functions read the row lengths.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use crate::schema::FTS_WEIGHTS;

/// The SQL function behind [`document_facts`].
const DOCUMENT_FACTS: &str = "pubsearch_document_facts";
/// The SQL function that tests a document against the search filters (see the module docs).
pub(crate) const DOCUMENT_FILTER: &str = "pubsearch_document_filter";
/// Bytes per document in [`DOCUMENT_FACTS`]'s answer: `created` as i64, `family` as u32.
const FACTS_BYTES: usize = 12;
/// Bytes in a canonical timestamp (`2024-05-01T12:00:00.000Z`, see [`crate::timestamp`]).
const CANONICAL_TIME_LEN: usize = 24;

/// Reads the facts of both FTS indexes' rows and registers [`DOCUMENT_FACTS`] and
/// [`DOCUMENT_FILTER`] over the documents'. Returns each index with its facts, for
/// [`crate::rank`]'s bm25 functions. The facts describe the snapshot as it is now: the
/// connection must not write to it afterwards (snapshots are read-only), though a row added later
/// is still filtered and scored right, by SQL, only without a date or family.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<Vec<(&'static str, Arc<RowFacts>)>> {
    let mut indexes = Vec::new();
    for (index, _) in FTS_WEIGHTS {
        let facts = Arc::new(RowFacts::read(conn, index)?);
        if index == "documents_fts" {
            register_document_functions(conn, facts.clone())?;
        }
        indexes.push((index, facts));
    }
    Ok(indexes)
}

fn register_document_functions(conn: &Connection, facts: Arc<RowFacts>) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let shared = facts.clone();
    conn.create_scalar_function(DOCUMENT_FACTS, 1, flags, move |ctx| {
        Ok(encode_facts(&shared, ctx.get_raw(0).as_blob()?))
    })?;
    conn.create_scalar_function(DOCUMENT_FILTER, 5, flags, move |ctx| {
        let filter = Filter {
            platform: ctx.get_raw(1).as_str_or_null()?,
            since: ctx.get_raw(2).as_bytes_or_null()?,
            author: ctx.get_raw(3).as_str_or_null()?,
            articles: ctx
                .get_raw(4)
                .as_i64_or_null()?
                .map(|articles| articles != 0),
        };
        Ok(facts.passes(ctx.get_raw(0).as_i64()?, &filter))
    })
}

/// What ranking knows about one document beyond its bm25.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DocumentFacts {
    /// `unixepoch(created_at)`; `None` if it did not parse or the row was added after install.
    pub created: Option<i64>,
    /// The cross-post family; `None` for a blank title or a row added after install.
    pub family: Option<u32>,
}

/// The facts of each of `ids`, in order, read from memory in one call. (The facts live with
/// the connection, which only SQL can reach, so the ids go in and the facts come out as blobs.)
pub(crate) fn document_facts(
    conn: &Connection,
    ids: &[i64],
) -> rusqlite::Result<Vec<DocumentFacts>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let mut statement = conn.prepare_cached(&format!("SELECT {DOCUMENT_FACTS}(?1)"))?;
    let blob: Vec<u8> = statement.query_row([ids], |row| row.get(0))?;
    Ok(blob
        .chunks_exact(FACTS_BYTES)
        .map(|chunk| {
            let (created, family) = chunk.split_at(8);
            let created = i64::from_le_bytes(created.try_into().expect("8 bytes"));
            let family = u32::from_le_bytes(family.try_into().expect("4 bytes"));
            DocumentFacts {
                created: (created != i64::MIN).then_some(created),
                family: (family != u32::MAX).then_some(family),
            }
        })
        .collect())
}

/// [`DOCUMENT_FACTS`]: little-endian i64 ids in, [`FACTS_BYTES`] per id out (`i64::MIN` and
/// `u32::MAX` for none).
fn encode_facts(facts: &RowFacts, ids: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() / 8 * FACTS_BYTES);
    for id in ids.chunks_exact(8) {
        let id = i64::from_le_bytes(id.try_into().expect("8 bytes"));
        let row = facts.document(id);
        let created = row.and_then(|row| row.created).unwrap_or(i64::MIN);
        let family = row.and_then(|row| row.family).unwrap_or(u32::MAX);
        out.extend_from_slice(&created.to_le_bytes());
        out.extend_from_slice(&family.to_le_bytes());
    }
    out
}

/// One call's filter arguments; `None` filters nothing.
struct Filter<'a> {
    platform: Option<&'a str>,
    /// Timestamp text: the document's `created_at` must not sort before it.
    since: Option<&'a [u8]>,
    author: Option<&'a str>,
    /// `Some(true)`: only documents in a publication; `Some(false)`: only those outside one.
    articles: Option<bool>,
}

/// Facts about the rows of one FTS5 index, indexed by rowid (dense from 1 in a snapshot).
#[derive(Default)]
pub(crate) struct RowFacts {
    /// Tokens in the row, all columns together; [`RowFacts::NO_LENGTH`] where unread.
    tokens: Vec<u32>,
    /// Documents only: what re-ranking needs of each row of `documents`, `None` where there is
    /// none or it was not read.
    documents: Vec<Option<DocumentRow>>,
    /// Documents only: each row's filter columns, `None` where there is no row, it was not read,
    /// or a column holds what memory cannot compare exactly as SQL would (SQL then answers).
    /// Kept apart from `documents`, which every search reads for its whole pool.
    filters: Vec<Option<FilterColumns>>,
    /// The distinct DIDs of `documents.did`, numbered.
    dids: Interner,
    /// The distinct texts of `documents.platform`, numbered.
    platforms: Interner,
}

/// What re-ranking needs of one document row.
#[derive(Clone, Copy)]
struct DocumentRow {
    /// `unixepoch(created_at)`, `None` if it does not parse.
    created: Option<i64>,
    /// The cross-post family (see the module docs), `None` for a blank title.
    family: Option<u32>,
}

/// A document's filter columns, as the snapshot schema has them: text, never NULL.
#[derive(Clone, Copy)]
struct FilterColumns {
    did: u32,
    platform: u32,
    /// `created_at`, kept only as text of the canonical length (any other value leaves the row to
    /// SQL, so that this stays fixed-size). Canonical text is fixed width: byte order is time order.
    created_at: [u8; CANONICAL_TIME_LEN],
    /// `publication_uri IS NOT NULL`.
    in_publication: bool,
}

impl RowFacts {
    const NO_LENGTH: u32 = u32::MAX;

    /// Reads the facts of `index`'s rows; for `documents_fts`, also those of `documents`.
    fn read(conn: &Connection, index: &str) -> rusqlite::Result<Self> {
        let mut facts = Self::default();
        facts.read_lengths(conn, index)?;
        if index == "documents_fts" {
            facts.read_documents(conn)?;
        }
        Ok(facts)
    }

    /// Tokens in `rowid`'s row, if it was read.
    pub(crate) fn length(&self, rowid: i64) -> Option<u32> {
        let tokens = *self.tokens.get(usize::try_from(rowid).ok()?)?;
        (tokens != Self::NO_LENGTH).then_some(tokens)
    }

    /// The slot for `rowid` in a table of `rows` rows, or `None` for a rowid so far beyond the
    /// row count that keeping it would waste memory (SQL then answers for it).
    fn slot(rowid: i64, rows: usize) -> Option<usize> {
        usize::try_from(rowid)
            .ok()
            .filter(|&slot| slot <= rows.saturating_mul(2) + 1024)
    }

    /// Reads `<index>_docsize`, whose `sz` blob holds one varint token count per column.
    fn read_lengths(&mut self, conn: &Connection, index: &str) -> rusqlite::Result<()> {
        let rows = row_count(conn, &format!("{index}_docsize"))?;
        // Sized once for dense rowids: growing by doubling would leave up to twice the memory
        // taken, and wasm memory never shrinks.
        self.tokens = vec![Self::NO_LENGTH; rows + 1];
        let mut statement = conn.prepare(&format!("SELECT id, sz FROM {index}_docsize"))?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            let Some(slot) = Self::slot(row.get(0)?, rows) else {
                continue;
            };
            if let Some(length) = total_tokens(row.get_ref(1)?.as_blob()?) {
                grow_to(&mut self.tokens, slot, Self::NO_LENGTH)[slot] = length;
            }
        }
        Ok(())
    }

    /// Reads each document's date, filter columns and cross-post family, with the same SQL
    /// functions (`unixepoch`, `lower`) the re-rank used when it joined `documents`.
    fn read_documents(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let rows = row_count(conn, "documents")?;
        self.documents = vec![None; rows + 1];
        self.filters = vec![None; rows + 1];
        // Keyed by `did NUL lower(title)` (a DID has no NUL), built in one reused buffer.
        let mut families = Interner::with_capacity(rows);
        let mut key = String::new();
        let mut statement = conn.prepare(
            "SELECT id, unixepoch(created_at), did, lower(title), platform, created_at,
                    publication_uri IS NOT NULL
             FROM documents",
        )?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            let Some(slot) = Self::slot(row.get(0)?, rows) else {
                continue;
            };
            let title = row.get_ref(3)?.as_str_or_null()?.unwrap_or_default();
            let family = match (row.get_ref(2)?, title.trim().is_empty()) {
                (ValueRef::Text(did), false) => std::str::from_utf8(did).ok().map(|did| {
                    key.clear();
                    key.push_str(did);
                    key.push('\0');
                    key.push_str(title);
                    families.intern(&key)
                }),
                _ => None,
            };
            let document = DocumentRow {
                created: row.get(1)?,
                family,
            };
            grow_to(&mut self.documents, slot, None)[slot] = Some(document);
            grow_to(&mut self.filters, slot, None)[slot] =
                filter_columns(row, &mut self.dids, &mut self.platforms);
        }
        Ok(())
    }

    fn document(&self, rowid: i64) -> Option<&DocumentRow> {
        self.documents.get(usize::try_from(rowid).ok()?)?.as_ref()
    }

    /// Whether document `rowid` passes `filter`, as SQL compares the columns; `None` if memory
    /// cannot say.
    fn passes(&self, rowid: i64, filter: &Filter<'_>) -> Option<bool> {
        let columns = (*self.filters.get(usize::try_from(rowid).ok()?)?)?;
        let equals = |wanted: Option<&str>, interner: &Interner, have: u32| {
            wanted.is_none_or(|wanted| interner.get(wanted) == Some(have))
        };
        Some(
            // Byte order, then length: SQL's BINARY collation, which `>=` on text uses.
            filter
                .since
                .is_none_or(|since| columns.created_at.as_slice() >= since)
                && equals(filter.platform, &self.platforms, columns.platform)
                && equals(filter.author, &self.dids, columns.did)
                && filter
                    .articles
                    .is_none_or(|articles| articles == columns.in_publication),
        )
    }
}

/// A `documents` row's filter columns (columns 2, 4, 5 and 6 of [`RowFacts::read_documents`]'s
/// statement), or `None` if one holds what memory cannot compare as SQL would: a DID or platform
/// that is not text, or a `created_at` that is not text of the canonical length.
fn filter_columns(
    row: &rusqlite::Row<'_>,
    dids: &mut Interner,
    platforms: &mut Interner,
) -> Option<FilterColumns> {
    Some(FilterColumns {
        did: dids.intern_text(row.get_ref(2).ok()?)?,
        platform: platforms.intern_text(row.get_ref(4).ok()?)?,
        created_at: match row.get_ref(5).ok()? {
            ValueRef::Text(text) => text.try_into().ok()?,
            _ => return None,
        },
        in_publication: row.get(6).ok()?,
    })
}

/// Numbers distinct strings in the order they are first seen.
#[derive(Default)]
struct Interner {
    numbers: HashMap<Box<str>, u32>,
}

impl Interner {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            numbers: HashMap::with_capacity(capacity),
        }
    }

    /// `text`'s number, giving it the next one if it is new (allocating only then).
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&number) = self.numbers.get(text) {
            return number;
        }
        let number = self.numbers.len() as u32;
        self.numbers.insert(text.into(), number);
        number
    }

    /// A column value's number, `None` for a value that is not text.
    fn intern_text(&mut self, value: ValueRef<'_>) -> Option<u32> {
        match value {
            ValueRef::Text(text) => Some(self.intern(std::str::from_utf8(text).ok()?)),
            _ => None,
        }
    }

    fn get(&self, text: &str) -> Option<u32> {
        self.numbers.get(text).copied()
    }
}

fn row_count(conn: &Connection, table: &str) -> rusqlite::Result<usize> {
    let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })?;
    Ok(usize::try_from(rows).unwrap_or(0))
}

/// `column`, grown with `fill` so that `slot` is in it.
fn grow_to<T: Clone>(column: &mut Vec<T>, slot: usize, fill: T) -> &mut Vec<T> {
    if column.len() <= slot {
        column.resize(slot + 1, fill);
    }
    column
}

/// The sum of a docsize blob's varints (SQLite's format: 7 bits a byte, high bit set on all but
/// the last, a ninth byte carrying 8). `None` if the blob is truncated or the sum does not fit.
fn total_tokens(mut blob: &[u8]) -> Option<u32> {
    let mut total = 0u32;
    while !blob.is_empty() {
        let mut value = 0u64;
        let mut used = 0;
        for (i, &byte) in blob.iter().enumerate().take(9) {
            used = i + 1;
            if i == 8 {
                value = (value << 8) | u64::from(byte);
                break;
            }
            value = (value << 7) | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                break;
            }
        }
        if used < 9 && blob[used - 1] & 0x80 != 0 {
            return None;
        }
        total = total.checked_add(u32::try_from(value).ok()?)?;
        blob = &blob[used..];
    }
    (total != RowFacts::NO_LENGTH).then_some(total)
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
}
