//! Ranking inputs held in memory: facts about every row, read once per opened snapshot and
//! served through SQL functions of our own.
//!
//! Search scores every match before it keeps the best [`crate::search::CANDIDATE_POOL`], then
//! re-ranks those by age and drops cross-posts. In SQL alone each step costs a B-tree seek per row:
//! FTS5's `bm25()` reads every match's length from `<index>_docsize` with a statement of its own,
//! and the re-rank joined `documents` for each candidate's date, author and title. A snapshot never
//! changes once opened, so [`install`] reads those facts once (10–13 ms natively for 7.5k
//! documents, mostly SQLite reading `documents`; 57–59 ms in workerd) and registers:
//!
//! - `<index>_bm25(weight, …)` for both indexes: FTS5's bm25 formula, operation for operation
//!   (fts5_aux.c, SQLite 3.54), with the row length taken from memory. The scores are the same
//!   `f64`s bit for bit, so ranking does not change; a test compares every matching row.
//! - `pubsearch_document_facts(ids)`: each listed document's `unixepoch(created_at)` and
//!   cross-post family (a number shared by the documents of one author with the same title, ASCII
//!   case folded as SQL's `lower` does; none for a blank title). Search asks it once per query,
//!   for the pool only, through [`document_facts`].
//!
//! The bm25 functions use FTS5's C extension API through [`crate::fts5`]; each `unsafe` block
//! says what it relies on.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

use rusqlite::Connection;
use rusqlite::ffi::{self, Fts5Context, Fts5ExtensionApi, sqlite3_context, sqlite3_value};
use rusqlite::functions::FunctionFlags;

use crate::fts5::{self, call, check};
use crate::schema::FTS_WEIGHTS;

/// bm25's term-frequency saturation, as in FTS5.
const K1: f64 = 1.2;
/// bm25's length normalisation, as in FTS5.
const B: f64 = 0.75;

/// The SQL that scores the current row of `index` with its installed bm25 and the schema's
/// column weights.
pub(crate) fn bm25_call(index: &str) -> String {
    let weight = FTS_WEIGHTS
        .iter()
        .find(|(name, _)| *name == index)
        .map_or(1.0, |(_, weight)| *weight);
    format!("{index}_bm25({index}, {weight:.1}, 1.0)")
}

/// Reads the facts ranking needs from a snapshot and registers the functions that serve them
/// (see the module docs); [`crate::search::prepare`] calls it. The facts describe the snapshot as
/// it is now, so the connection must not write to it afterwards (snapshots are read-only); a row
/// added later still gets its bm25 right, at FTS5's cost, but no date or family.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<()> {
    let api = fts5::api(conn)?;
    for (index, _) in FTS_WEIGHTS {
        let mut facts = RowFacts::default();
        facts.read_lengths(conn, index)?;
        if index == "documents_fts" {
            facts.read_documents(conn)?;
            let facts = Arc::new(facts);
            let shared = facts.clone();
            conn.create_scalar_function(
                DOCUMENT_FACTS,
                1,
                FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
                move |ctx| Ok(encode_facts(&shared, ctx.get_raw(0).as_blob()?)),
            )?;
            fts5::register(api, "documents_fts_bm25", bm25, facts)?;
        } else {
            fts5::register(api, &format!("{index}_bm25"), bm25, Arc::new(facts))?;
        }
    }
    Ok(())
}

/// The SQL function behind [`document_facts`].
const DOCUMENT_FACTS: &str = "pubsearch_document_facts";
/// Bytes per document in [`DOCUMENT_FACTS`]'s answer: `created` as i64, `family` as u32.
const FACTS_BYTES: usize = 12;

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
        out.extend_from_slice(&facts.created(id).unwrap_or(i64::MIN).to_le_bytes());
        out.extend_from_slice(&facts.family(id).unwrap_or(u32::MAX).to_le_bytes());
    }
    out
}

/// Facts about the rows of one FTS5 index, indexed by rowid (dense from 1 in a snapshot).
#[derive(Default)]
struct RowFacts {
    /// Tokens in the row, all columns together; [`RowFacts::NO_LENGTH`] where unread.
    tokens: Vec<u32>,
    /// Documents only: `unixepoch(created_at)`, `None` where unread or unparsable.
    created: Vec<Option<i64>>,
    /// Documents only: the cross-post family (see the module docs), `None` for blank titles.
    family: Vec<Option<u32>>,
}

impl RowFacts {
    const NO_LENGTH: u32 = u32::MAX;

    /// The slot for `rowid` in a table of `rows` rows, or `None` for a rowid so far beyond the
    /// row count that keeping it would waste memory (FTS5 then answers for it).
    fn slot(rowid: i64, rows: usize) -> Option<usize> {
        usize::try_from(rowid)
            .ok()
            .filter(|&slot| slot <= rows.saturating_mul(2) + 1024)
    }

    /// Reads `<index>_docsize`, whose `sz` blob holds one varint token count per column.
    fn read_lengths(&mut self, conn: &Connection, index: &str) -> rusqlite::Result<()> {
        let rows = row_count(conn, &format!("{index}_docsize"))?;
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

    /// Reads each document's date and groups documents into cross-post families, with the same
    /// SQL functions (`unixepoch`, `lower`) the re-rank used when it joined `documents`.
    fn read_documents(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let rows = row_count(conn, "documents")?;
        // Keyed by `did NUL lower(title)` (a DID has no NUL), built in one buffer: a row allocates
        // only when it starts a new family.
        let mut families: HashMap<String, u32> = HashMap::with_capacity(rows);
        let mut key = String::new();
        let mut statement =
            conn.prepare("SELECT id, unixepoch(created_at), did, lower(title) FROM documents")?;
        let mut cursor = statement.query([])?;
        while let Some(row) = cursor.next()? {
            let Some(slot) = Self::slot(row.get(0)?, rows) else {
                continue;
            };
            grow_to(&mut self.created, slot, None)[slot] = row.get(1)?;
            let title = row.get_ref(3)?.as_str()?;
            if title.trim().is_empty() {
                continue;
            }
            key.clear();
            key.push_str(row.get_ref(2)?.as_str()?);
            key.push('\0');
            key.push_str(title);
            let family = match families.get(key.as_str()) {
                Some(&family) => family,
                None => {
                    let family = families.len() as u32;
                    families.insert(key.clone(), family);
                    family
                }
            };
            grow_to(&mut self.family, slot, None)[slot] = Some(family);
        }
        Ok(())
    }

    fn length(&self, rowid: i64) -> Option<u32> {
        let tokens = *self.tokens.get(usize::try_from(rowid).ok()?)?;
        (tokens != Self::NO_LENGTH).then_some(tokens)
    }

    fn created(&self, rowid: i64) -> Option<i64> {
        *self.created.get(usize::try_from(rowid).ok()?)?
    }

    fn family(&self, rowid: i64) -> Option<u32> {
        *self.family.get(usize::try_from(rowid).ok()?)?
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

/// What one query's scoring shares across rows: kept by FTS5 as the cursor's auxiliary data.
struct QueryStats {
    /// Inverse document frequency of each phrase.
    idf: Vec<f64>,
    /// Average row length in tokens.
    average_length: f64,
    /// Scratch: the current row's weighted hits per phrase.
    hits: Vec<f64>,
    /// Scratch: the current row's column weights (the function's arguments).
    weights: Vec<f64>,
}

impl QueryStats {
    /// FTS5's `fts5Bm25GetData`: row count, average length and each phrase's IDF.
    ///
    /// # Safety
    /// `api` and `fts` must be the pair FTS5 passed to the running auxiliary function.
    unsafe fn compute(api: &Fts5ExtensionApi, fts: *mut Fts5Context) -> Result<Self, c_int> {
        let (mut rows, mut tokens) = (0i64, 0i64);
        // SAFETY: the caller's contract; every out-pointer is a live local.
        unsafe {
            let phrases = call(api.xPhraseCount)?(fts);
            check(call(api.xRowCount)?(fts, &mut rows))?;
            check(call(api.xColumnTotalSize)?(fts, -1, &mut tokens))?;
            let mut idf = Vec::with_capacity(phrases.max(0) as usize);
            for phrase in 0..phrases {
                let mut matching = 0i64;
                let counter = (&raw mut matching).cast();
                check(call(api.xQueryPhrase)?(
                    fts,
                    phrase,
                    counter,
                    Some(count_row),
                ))?;
                let value = ((rows - matching) as f64 + 0.5) / (matching as f64 + 0.5);
                let value = value.ln();
                idf.push(if value <= 0.0 { 1e-6 } else { value });
            }
            Ok(Self {
                hits: vec![0.0; idf.len()],
                weights: Vec::new(),
                idf,
                average_length: tokens as f64 / rows as f64,
            })
        }
    }
}

/// `<index>_bm25(weight, …)`: FTS5's bm25 (negated, so lower ranks first) with the row length
/// taken from [`RowFacts`].
unsafe extern "C" fn bm25(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    ctx: *mut sqlite3_context,
    weight_count: c_int,
    weights: *mut *mut sqlite3_value,
) {
    // SAFETY: FTS5 calls this with a live API, cursor context, result context and `weight_count`
    // argument values, as its auxiliary-function contract says.
    unsafe {
        match score(&*api, fts, weight_count, weights) {
            Ok(score) => ffi::sqlite3_result_double(ctx, score),
            Err(rc) => ffi::sqlite3_result_error_code(ctx, rc),
        }
    }
}

/// # Safety
/// The arguments are those FTS5 passed to [`bm25`].
unsafe fn score(
    api: &Fts5ExtensionApi,
    fts: *mut Fts5Context,
    weight_count: c_int,
    weights: *mut *mut sqlite3_value,
) -> Result<f64, c_int> {
    // SAFETY: the caller's contract. The auxiliary data is only ever a QueryStats set below, and
    // FTS5 keeps it for this cursor until `drop_boxed` frees it.
    unsafe {
        let mut stats = call(api.xGetAuxdata)?(fts, 0).cast::<QueryStats>();
        if stats.is_null() {
            let fresh = Box::into_raw(Box::new(QueryStats::compute(api, fts)?));
            check(call(api.xSetAuxdata)?(
                fts,
                fresh.cast(),
                Some(fts5::drop_boxed::<QueryStats>),
            ))?;
            stats = fresh;
        }
        let stats = &mut *stats;

        stats.hits.fill(0.0);
        // The weights are the function's arguments: read once per row, not once per hit.
        stats.weights.clear();
        for i in 0..weight_count.max(0) as usize {
            stats
                .weights
                .push(ffi::sqlite3_value_double(*weights.add(i)));
        }
        // Each phrase's hits, column by column: the same instances xInst would list, in the same
        // order per phrase (so the same sums), without merging all phrases into one sorted array.
        let next = call(api.xPhraseNext)?;
        for (phrase, hits) in stats.hits.iter_mut().enumerate() {
            let mut iter = std::mem::zeroed::<ffi::Fts5PhraseIter>();
            let (mut column, mut offset) = (0, 0);
            check(call(api.xPhraseFirst)?(
                fts,
                phrase as c_int,
                &mut iter,
                &mut column,
                &mut offset,
            ))?;
            while column >= 0 {
                *hits += stats.weights.get(column as usize).copied().unwrap_or(1.0);
                next(fts, &mut iter, &mut column, &mut offset);
            }
        }

        let length = match facts(api, fts)?.length(call(api.xRowid)?(fts)) {
            Some(tokens) => tokens as f64,
            None => {
                let mut tokens = 0;
                check(call(api.xColumnSize)?(fts, -1, &mut tokens))?;
                tokens as f64
            }
        };

        let mut score = 0.0;
        for (idf, hits) in stats.idf.iter().zip(&stats.hits) {
            score += idf
                * ((hits * (K1 + 1.0))
                    / (hits + K1 * (1.0 - B + B * length / stats.average_length)));
        }
        Ok(-score)
    }
}

/// The facts `install` registered with the running function.
///
/// # Safety
/// `api` and `fts` are the pair FTS5 passed to one of this module's functions.
unsafe fn facts<'a>(api: &Fts5ExtensionApi, fts: *mut Fts5Context) -> Result<&'a RowFacts, c_int> {
    // SAFETY: every function here is registered with an `Arc<RowFacts>`.
    unsafe { fts5::user_data::<Arc<RowFacts>>(api, fts).map(|facts| &**facts) }
}

/// xQueryPhrase's callback: counts the rows that contain the phrase.
unsafe extern "C" fn count_row(
    _: *const Fts5ExtensionApi,
    _: *mut Fts5Context,
    counter: *mut c_void,
) -> c_int {
    // SAFETY: `counter` is the `i64` that `QueryStats::compute` passed to xQueryPhrase.
    unsafe { *counter.cast::<i64>() += 1 };
    ffi::SQLITE_OK
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
