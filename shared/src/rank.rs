//! bm25 scoring from row lengths held in memory.
//!
//! Search scores every match before it keeps the best [`crate::search::CANDIDATE_POOL`]. FTS5's
//! `bm25()` reads every match's length from `<index>_docsize` with a statement of its own; the
//! `<index>_bm25(weight, …)` functions registered here, one per index, compute FTS5's bm25
//! formula operation for operation (fts5_aux.c, SQLite 3.54) with the length taken from
//! [`crate::facts`]. The scores are the same `f64`s bit for bit, so ranking does not change; a
//! test compares every matching row.
//!
//! The bm25 functions use FTS5's C extension API through [`crate::fts5`]; each `unsafe` block
//! says what it relies on.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use rusqlite::ffi::{
    self, Fts5Context, Fts5ExtensionApi, fts5_api, sqlite3_context, sqlite3_value,
};

use rusqlite::{Connection, OptionalExtension};

use crate::facts::DocumentFacts;
use crate::fts5::{self, call, check};
use crate::schema::FTS_WEIGHTS;
use crate::search::SCAN_BUDGET;

/// bm25's term-frequency saturation, as in FTS5.
const K1: f64 = 1.2;
/// bm25's length normalisation, as in FTS5.
const B: f64 = 0.75;

/// The SQL that scores the current row of `index` with its installed bm25 and the schema's
/// column weights.
pub(crate) fn bm25_call(index: &str) -> String {
    format!("{index}_bm25({index}, {})", weights(index))
}

/// [`bm25_call`] with the statistics given rather than counted in `index`: the phrase's IDF in
/// parameter `?{at}` and the average row length in `?{at + 1}` (see [`CorpusStats`]).
pub(crate) fn bm25_given_call(index: &str, at: usize) -> String {
    format!(
        "{index}_bm25_given({index}, ?{at}, ?{next}, {weights})",
        next = at + 1,
        weights = weights(index)
    )
}

/// The schema's column weights of `index`, as SQL arguments.
fn weights(index: &str) -> String {
    let weight = FTS_WEIGHTS
        .iter()
        .find(|(name, _)| *name == index)
        .map_or(1.0, |(_, weight)| *weight);
    format!("{weight:.1}, 1.0")
}

/// Registers `<index>_bm25` and `<index>_bm25_given` with the connection's FTS5 (`api`, see
/// [`fts5::api`]) for each index, scoring documents with lengths from `documents` (see
/// [`crate::facts`]) and publications with FTS5's own.
pub(crate) fn install(api: *mut fts5_api, documents: Arc<DocumentFacts>) -> rusqlite::Result<()> {
    for (index, _) in FTS_WEIGHTS {
        let lengths = (index == "documents_fts").then(|| documents.clone());
        for (suffix, given) in [("bm25", false), ("bm25_given", true)] {
            let scorer = Scorer {
                lengths: lengths.clone(),
                given,
            };
            fts5::register(api, &format!("{index}_{suffix}"), bm25, scorer)?;
        }
    }
    Ok(())
}

/// What a bm25 function is registered with.
struct Scorer {
    /// Where it reads row lengths: `None` for FTS5's `<index>_docsize`.
    lengths: Option<Arc<DocumentFacts>>,
    /// Whether its first two arguments are the IDF and average length to score with, rather than
    /// counted in the index (`<index>_bm25_given`).
    given: bool,
}

/// An index's row count and total tokens: what bm25's IDF and average length are computed from.
/// Searching a base and a delta together, search adds the two indexes' statistics, so both
/// are scored as one index (ARCHITECTURE.md, "Deltas").
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CorpusStats {
    pub rows: i64,
    pub tokens: i64,
}

impl CorpusStats {
    /// `index`'s statistics, from FTS5's averages record (the row FTS5's own `xRowCount` and
    /// `xColumnTotalSize` read): a varint row count, then each column's total tokens.
    pub fn of(conn: &Connection, index: &str) -> rusqlite::Result<Self> {
        let block: Option<Vec<u8>> = conn
            .query_row(
                &format!("SELECT block FROM {index}_data WHERE id = 1"),
                [],
                |row| row.get(0),
            )
            .optional()?;
        let mut stats = CorpusStats::default();
        let Some(block) = block else {
            return Ok(stats);
        };
        let mut rest = block.as_slice();
        let mut first = true;
        while let Some((value, used)) = crate::varint::read(rest) {
            if first {
                stats.rows = value as i64;
                first = false;
            } else {
                stats.tokens += value as i64;
            }
            rest = &rest[used..];
        }
        Ok(stats)
    }

    /// Both indexes' statistics together.
    pub fn plus(self, other: CorpusStats) -> CorpusStats {
        CorpusStats {
            rows: self.rows + other.rows,
            tokens: self.tokens + other.tokens,
        }
    }

    /// The average row length, as FTS5 computes it.
    pub fn average_length(self) -> f64 {
        self.tokens as f64 / self.rows as f64
    }
}

/// How many of `index`'s rows match `phrase`, counted to the scan budget and estimated past it,
/// exactly as bm25's IDF counts it.
pub(crate) fn rows_matching(
    conn: &Connection,
    index: &str,
    phrase: &str,
    stats: CorpusStats,
) -> rusqlite::Result<f64> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT count(*), coalesce(max(rowid), 0) FROM
             (SELECT rowid FROM {index} WHERE {index} MATCH ?1 LIMIT {SCAN_BUDGET})"
    ))?;
    let count = statement.query_row([phrase], |row| {
        Ok(PhraseCount {
            rows: row.get(0)?,
            last_rowid: row.get(1)?,
        })
    })?;
    Ok(count.rows_matching(stats.rows))
}

/// bm25's inverse document frequency of a phrase found in `matching` of `rows` rows, as FTS5
/// computes it (never below 1e-6).
pub(crate) fn idf(rows: f64, matching: f64) -> f64 {
    let value = ((rows - matching) + 0.5) / (matching + 0.5);
    let value = value.ln();
    if value <= 0.0 { 1e-6 } else { value }
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
    /// The statistics `<index>_bm25_given` was called with: `idf` for every phrase.
    ///
    /// # Safety
    /// `api` and `fts` must be the pair FTS5 passed to the running auxiliary function.
    unsafe fn given(
        api: &Fts5ExtensionApi,
        fts: *mut Fts5Context,
        idf: f64,
        average_length: f64,
    ) -> Result<Self, c_int> {
        // SAFETY: the caller's contract.
        let phrases = unsafe { call(api.xPhraseCount)?(fts) }.max(0) as usize;
        Ok(Self {
            hits: vec![0.0; phrases],
            weights: Vec::new(),
            idf: vec![idf; phrases],
            average_length,
        })
    }

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
                let mut count = PhraseCount::default();
                let counter = (&raw mut count).cast();
                check(call(api.xQueryPhrase)?(
                    fts,
                    phrase,
                    counter,
                    Some(count_row),
                ))?;
                idf.push(self::idf(rows as f64, count.rows_matching(rows)));
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
/// taken from the facts; `<index>_bm25_given(idf, average_length, weight, …)` the same with the
/// corpus statistics given.
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
        match score(&*api, fts, ctx, weight_count, weights) {
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
    ctx: *mut sqlite3_context,
    weight_count: c_int,
    weights: *mut *mut sqlite3_value,
) -> Result<f64, c_int> {
    // SAFETY: the caller's contract. The auxiliary data is only ever a QueryStats set below, and
    // FTS5 keeps it for this cursor until `drop_boxed` frees it.
    unsafe {
        let scorer = fts5::user_data::<Scorer>(api, fts)?;
        let (given, weight_count, weights) = match scorer.given {
            true if weight_count >= 2 => (
                Some((
                    ffi::sqlite3_value_double(*weights),
                    ffi::sqlite3_value_double(*weights.add(1)),
                )),
                weight_count - 2,
                weights.add(2),
            ),
            true => return Err(ffi::SQLITE_MISUSE),
            false => (None, weight_count, weights),
        };
        let mut stats = call(api.xGetAuxdata)?(fts, 0).cast::<QueryStats>();
        if stats.is_null() {
            let fresh = match given {
                Some((idf, average)) => QueryStats::given(api, fts, idf, average)?,
                None => QueryStats::compute(api, fts)?,
            };
            let fresh = Box::into_raw(Box::new(fresh));
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

        let rowid = call(api.xRowid)?(fts);
        // SAFETY: the handle is the connection running this function, used only to read facts.
        let open = || Connection::from_handle(ffi::sqlite3_context_db_handle(ctx)).map(Box::new);
        let facts = scorer.lengths.as_deref();
        let length = match facts.and_then(|facts| facts.tokens(rowid, open)) {
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

/// A phrase's matching rows as counted by [`count_row`], which stops at the scan budget.
#[derive(Default)]
struct PhraseCount {
    /// Rows seen, at most [`SCAN_BUDGET`].
    rows: i64,
    /// The rowid of the last row seen.
    last_rowid: i64,
}

impl PhraseCount {
    /// How many of the index's `rows` contain the phrase: the count itself if the budget was not
    /// reached, else an estimate from the rowids the budget covered (rowids are dense from 1, so
    /// the budget's matches came from the first `last_rowid` rows, and the rest are assumed to
    /// contain the phrase as densely). Deterministic arithmetic: native and edge agree.
    fn rows_matching(&self, rows: i64) -> f64 {
        if self.rows < i64::from(SCAN_BUDGET) || self.last_rowid <= 0 {
            return self.rows as f64;
        }
        (self.rows as f64 * rows as f64 / self.last_rowid as f64).min(rows as f64)
    }
}

/// xQueryPhrase's callback: counts the rows that contain the phrase, up to [`SCAN_BUDGET`], so
/// IDF costs no more per query than the scan itself (ARCHITECTURE.md invariant 1).
unsafe extern "C" fn count_row(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    counter: *mut c_void,
) -> c_int {
    // SAFETY: `counter` is the `PhraseCount` that `QueryStats::compute` passed to xQueryPhrase,
    // and FTS5 passes this callback a live API and cursor context.
    unsafe {
        let count = &mut *counter.cast::<PhraseCount>();
        count.rows += 1;
        if let Some(rowid) = (*api).xRowid {
            count.last_rowid = rowid(fts);
        }
        if count.rows >= i64::from(SCAN_BUDGET) {
            // FTS5 ends the iteration and reports SQLITE_OK for SQLITE_DONE.
            return ffi::SQLITE_DONE;
        }
    }
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_within_the_budget_is_counted_exactly() {
        let count = PhraseCount {
            rows: 1_234,
            last_rowid: 90_000,
        };
        assert_eq!(count.rows_matching(100_000), 1_234.0);
    }

    #[test]
    fn a_phrase_past_the_budget_is_estimated_from_the_rows_it_covered() {
        let budget = i64::from(SCAN_BUDGET);
        // The budget's matches came from the first quarter of the rows: four times as many.
        let quarter = PhraseCount {
            rows: budget,
            last_rowid: 50_000,
        };
        assert_eq!(quarter.rows_matching(200_000), 4.0 * budget as f64);
        // Never more rows than the index has.
        let dense = PhraseCount {
            rows: budget,
            last_rowid: budget / 2,
        };
        assert_eq!(dense.rows_matching(budget * 3), (budget * 3) as f64);
    }
}
