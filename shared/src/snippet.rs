//! FTS5's `snippet()`, byte for byte, with a fraction of its tokenizing.
//!
//! For every result, FTS5's snippet tokenizes the whole column twice: once to find where
//! sentences start, once to copy out the chosen window with highlights, going on to the end of
//! the text after the window is done. After ranking, that was the largest cost of a search on
//! the bench's snapshots (15% of native time, most of it in `fts5UnicodeTokenize`).
//! `pubsearch_snippet()` takes the same arguments and returns the same text, but tokenizes once,
//! and only up to the column's last match plus one window: nothing FTS5 reads past that point
//! can change its output (fts5_aux.c, SQLite 3.54; a test compares every matching row). Its
//! scoring also scans a sorted list of the column's matches instead of asking FTS5 for every
//! match of the row once per match.

use std::ffi::{c_char, c_int, c_void};

use rusqlite::ffi::{
    self, Fts5Context, Fts5ExtensionApi, fts5_api, sqlite3_context, sqlite3_value,
};

use crate::fts5::{self, call, check};

/// The SQL name of the function.
pub(crate) const FUNCTION: &str = "pubsearch_snippet";

/// Most tokens a snippet may ask for, as in FTS5.
const MAX_TOKENS: i64 = 64;
/// Score of each phrase's first match in a window, and of every further match, as in FTS5.
const FIRST_HIT: u32 = 1000;
const REPEAT_HIT: u32 = 1;
/// Bonus for a window that starts a sentence, and for one that starts the text, as in FTS5.
const SENTENCE_BONUS: u32 = 100;
const TEXT_START_BONUS: u32 = 120;

/// Registers `pubsearch_snippet(index, column, open, close, ellipsis, tokens)` with a
/// connection's FTS5 (`api`, see [`fts5::api`]).
pub(crate) fn install(api: *mut fts5_api) -> rusqlite::Result<()> {
    fts5::register(api, FUNCTION, snippet, ())
}

/// One match of a phrase in the snippet's column.
#[derive(Clone, Copy)]
struct Hit {
    phrase: usize,
    /// Token position in the column.
    offset: i64,
    /// Tokens in the phrase.
    length: i64,
}

unsafe extern "C" fn snippet(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    ctx: *mut sqlite3_context,
    argument_count: c_int,
    arguments: *mut *mut sqlite3_value,
) {
    // SAFETY: FTS5 calls this with a live API, cursor context, result context and
    // `argument_count` argument values, as its auxiliary-function contract says.
    unsafe {
        let arguments = if arguments.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(arguments, argument_count.max(0) as usize)
        };
        match render(&*api, fts, arguments) {
            Ok(text) => ffi::sqlite3_result_text64(
                ctx,
                text.as_ptr().cast(),
                text.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            Err(rc) => ffi::sqlite3_result_error_code(ctx, rc),
        }
    }
}

/// The snippet of the current row, as `fts5SnippetFunction` renders it for one column.
///
/// # Safety
/// `api` and `fts` are the pair FTS5 passed to [`snippet`], and `arguments` its argument values.
unsafe fn render(
    api: &Fts5ExtensionApi,
    fts: *mut Fts5Context,
    arguments: &[*mut sqlite3_value],
) -> Result<Vec<u8>, c_int> {
    let &[column, open, close, ellipsis, tokens] = arguments else {
        return Err(ffi::SQLITE_ERROR);
    };
    // SAFETY: the caller's contract; the text FTS5 returns stays valid for this call.
    unsafe {
        let column = ffi::sqlite3_value_int64(column).clamp(0, i64::from(c_int::MAX)) as c_int;
        let (open, close, ellipsis) = (text_of(open), text_of(close), text_of(ellipsis));
        let tokens = ffi::sqlite3_value_int64(tokens).clamp(0, MAX_TOKENS);
        if column >= call(api.xColumnCount)?(fts) {
            return Err(ffi::SQLITE_RANGE);
        }
        let hits = column_hits(api, fts, column)?;
        let (mut text_pointer, mut text_length) = (std::ptr::null(), 0);
        check(call(api.xColumnText)?(
            fts,
            column,
            &mut text_pointer,
            &mut text_length,
        ))?;
        let text = bytes(text_pointer.cast(), text_length);
        let mut column_size = 0;
        check(call(api.xColumnSize)?(fts, column, &mut column_size))?;
        let column_size = i64::from(column_size);

        // Sentence starts matter up to the last hit, and the window never starts past the last
        // hit's end (a window centred on a phrase longer than itself starts inside the phrase),
        // so FTS5 reads nothing that matters beyond that end plus one window. With no window
        // size, FTS5 copies the whole column.
        let last_needed = match tokens {
            0 => i64::MAX,
            _ => {
                hits.iter()
                    .map(|hit| hit.offset + hit.length)
                    .max()
                    .unwrap_or(0)
                    + tokens
            }
        };
        let scan = scan_tokens(api, fts, text, last_needed)?;
        let start = best_start(&hits, &scan.sentence_starts, column_size, tokens)?;
        Ok(highlight(
            text,
            &scan.tokens,
            &hits,
            start,
            tokens,
            column_size,
            Marks {
                open,
                close,
                ellipsis,
            },
        ))
    }
}

/// The column's hits in FTS5's instance order (by position; phrase order among equals).
///
/// # Safety
/// `api` and `fts` are the pair FTS5 passed to the running auxiliary function.
unsafe fn column_hits(
    api: &Fts5ExtensionApi,
    fts: *mut Fts5Context,
    column: c_int,
) -> Result<Vec<Hit>, c_int> {
    // SAFETY: the caller's contract; every out-pointer is a live local.
    unsafe {
        let mut count = 0;
        check(call(api.xInstCount)?(fts, &mut count))?;
        let phrase_size = call(api.xPhraseSize)?;
        let mut hits = Vec::new();
        for instance in 0..count {
            let (mut phrase, mut hit_column, mut offset) = (0, 0, 0);
            check(call(api.xInst)?(
                fts,
                instance,
                &mut phrase,
                &mut hit_column,
                &mut offset,
            ))?;
            if hit_column == column {
                hits.push(Hit {
                    phrase: phrase.max(0) as usize,
                    offset: i64::from(offset),
                    length: i64::from(phrase_size(fts, phrase)),
                });
            }
        }
        Ok(hits)
    }
}

/// What one pass of the tokenizer learns about the column's first tokens.
#[derive(Default)]
struct Scan<'a> {
    text: &'a [u8],
    /// Stop after this token position.
    last_needed: i64,
    /// Byte range of each token, by position (colocated tokens, which take no position, left out).
    tokens: Vec<(usize, usize)>,
    /// Positions of tokens that start a sentence, ascending, as `fts5SentenceFinderCb` finds them.
    sentence_starts: Vec<i64>,
}

/// Tokenizes `text` as FTS5 indexed it, up to token position `last_needed`.
///
/// # Safety
/// `api` and `fts` are the pair FTS5 passed to the running auxiliary function.
unsafe fn scan_tokens<'a>(
    api: &Fts5ExtensionApi,
    fts: *mut Fts5Context,
    text: &'a [u8],
    last_needed: i64,
) -> Result<Scan<'a>, c_int> {
    let mut scan = Scan {
        text,
        last_needed,
        ..Scan::default()
    };
    // SAFETY: the caller's contract; `scan` outlives the call that hands it to `on_token`.
    let rc = unsafe {
        call(api.xTokenize)?(
            fts,
            text.as_ptr().cast(),
            text.len() as c_int,
            (&raw mut scan).cast(),
            Some(on_token),
        )
    };
    // SQLITE_DONE is `on_token` saying it has seen enough.
    if rc != ffi::SQLITE_DONE {
        check(rc)?;
    }
    Ok(scan)
}

/// xTokenize's callback: records the token, and notes a sentence start where FTS5 would (a token
/// after whitespace that follows `.` or `:`, and the first token).
unsafe extern "C" fn on_token(
    context: *mut c_void,
    flags: c_int,
    _token: *const c_char,
    _token_length: c_int,
    start: c_int,
    end: c_int,
) -> c_int {
    // SAFETY: `context` is the `Scan` that `scan_tokens` passed to xTokenize.
    let scan = unsafe { &mut *context.cast::<Scan>() };
    if flags & ffi::FTS5_TOKEN_COLOCATED != 0 {
        return ffi::SQLITE_OK;
    }
    let position = scan.tokens.len() as i64;
    let (start, end) = (start.max(0) as usize, end.max(0) as usize);
    if position == 0 {
        scan.sentence_starts.push(0);
    } else {
        let before = &scan.text[..start.min(scan.text.len())];
        let blank = before
            .iter()
            .rev()
            .take_while(|&&c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        if blank > 0
            && matches!(
                before.len().checked_sub(blank + 1).map(|i| before[i]),
                Some(b'.' | b':')
            )
        {
            scan.sentence_starts.push(position);
        }
    }
    scan.tokens.push((start, end));
    if position >= scan.last_needed {
        ffi::SQLITE_DONE
    } else {
        ffi::SQLITE_OK
    }
}

/// `fts5SnippetScore`: the score of the window of `tokens` tokens from `from`, and where FTS5
/// would start the snippet to centre that window's hits. `hits` are sorted by offset, so the
/// window's hits are a contiguous run, visited in FTS5's order.
fn window_score(
    hits: &[Hit],
    phrases_seen: &mut Vec<bool>,
    from: i64,
    tokens: i64,
    column_size: i64,
) -> (u32, i64) {
    phrases_seen.iter_mut().for_each(|seen| *seen = false);
    let (mut score, mut first, mut last) = (0, -1, 0);
    let end = from + tokens;
    let begin = hits.partition_point(|hit| hit.offset < from);
    for hit in hits[begin..].iter().take_while(|hit| hit.offset < end) {
        if hit.phrase >= phrases_seen.len() {
            phrases_seen.resize(hit.phrase + 1, false);
        }
        score += if phrases_seen[hit.phrase] {
            REPEAT_HIT
        } else {
            FIRST_HIT
        };
        phrases_seen[hit.phrase] = true;
        if first < 0 {
            first = hit.offset;
        }
        last = hit.offset + hit.length;
    }
    let mut adjusted = first - (tokens - (last - first)) / 2;
    if adjusted + tokens > column_size {
        adjusted = column_size - tokens;
    }
    (score, adjusted.max(0))
}

/// The first token of the best window, chosen exactly as `fts5SnippetFunction` chooses it.
fn best_start(
    hits: &[Hit],
    sentence_starts: &[i64],
    column_size: i64,
    tokens: i64,
) -> Result<i64, c_int> {
    let mut seen = Vec::new();
    let (mut best_score, mut best_start) = (0, 0);
    for hit in hits {
        if hit.offset > column_size {
            return Err(ffi::SQLITE_CORRUPT_VTAB);
        }
        let (score, start) = window_score(hits, &mut seen, hit.offset, tokens, column_size);
        if score > best_score {
            (best_score, best_start) = (score, start);
        }
        if !sentence_starts.is_empty() && column_size > tokens {
            // The last sentence start at or before the hit (position 0 always is one).
            let sentence =
                sentence_starts[sentence_starts.partition_point(|&s| s <= hit.offset).max(1) - 1];
            if sentence < hit.offset {
                let (score, _) = window_score(hits, &mut seen, sentence, tokens, column_size);
                let score = score
                    + if sentence == 0 {
                        TEXT_START_BONUS
                    } else {
                        SENTENCE_BONUS
                    };
                if score > best_score {
                    (best_score, best_start) = (score, sentence);
                }
            }
        }
    }
    Ok(best_start)
}

/// The strings a snippet puts around matches and at cuts.
struct Marks<'a> {
    open: &'a [u8],
    close: &'a [u8],
    ellipsis: &'a [u8],
}

impl Marks<'_> {
    /// Appends a piece of the document's text as [`append`] does, leaving out any marks it
    /// holds: a document containing the marks' characters would otherwise open and close
    /// highlights around text that matched nothing. (FTS5's snippet keeps them.)
    fn append_text(&self, out: &mut Vec<u8>, piece: &[u8]) {
        let mut rest = until_nul(piece);
        while let Some((at, mark)) = self.find_mark(rest) {
            out.extend_from_slice(&rest[..at]);
            rest = &rest[at + mark..];
        }
        out.extend_from_slice(rest);
    }

    /// Where the first open or close mark in `text` starts, and its length.
    fn find_mark(&self, text: &[u8]) -> Option<(usize, usize)> {
        [self.open, self.close]
            .into_iter()
            .filter(|mark| !mark.is_empty())
            .filter_map(|mark| {
                let at = text.windows(mark.len()).position(|window| window == mark)?;
                Some((at, mark.len()))
            })
            .min()
    }
}

/// `fts5HighlightCb` over the scanned tokens, plus the ending `fts5SnippetFunction` appends.
fn highlight(
    text: &[u8],
    positions: &[(usize, usize)],
    hits: &[Hit],
    start: i64,
    tokens: i64,
    column_size: i64,
    marks: Marks<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut phrases = Coalesced {
        hits,
        next: 0,
        start: -1,
        end: -1,
    };
    phrases.advance();
    let range_end = start + tokens - 1;
    if start > 0 {
        append(&mut out, marks.ellipsis);
    }
    while phrases.start >= 0 && phrases.start < start {
        phrases.advance();
    }
    let (mut copied, mut open) = (0usize, false);
    for (position, &(token_start, token_end)) in positions.iter().enumerate() {
        let position = position as i64;
        if range_end >= 0 {
            if position < start || position > range_end {
                continue;
            }
            if start != 0 && position == start {
                copied = token_start;
            }
        }
        if open && (position <= phrases.start || phrases.start < 0) && token_start > copied {
            append(&mut out, marks.close);
            open = false;
        }
        if position == phrases.start && !open {
            marks.append_text(&mut out, slice(text, copied, token_start));
            append(&mut out, marks.open);
            copied = token_start;
            open = true;
        }
        if position == phrases.end {
            if !open {
                append(&mut out, marks.open);
                open = true;
            }
            marks.append_text(&mut out, slice(text, copied, token_end));
            copied = token_end;
            phrases.advance();
        }
        if position == range_end {
            if open {
                if phrases.start >= 0 && position >= phrases.start {
                    marks.append_text(&mut out, slice(text, copied, token_end));
                    copied = token_end;
                }
                append(&mut out, marks.close);
                open = false;
            }
            marks.append_text(&mut out, slice(text, copied, token_end));
            copied = token_end;
        }
    }
    if open {
        append(&mut out, marks.close);
    }
    if range_end >= column_size - 1 {
        marks.append_text(&mut out, slice(text, copied, text.len()));
    } else {
        append(&mut out, marks.ellipsis);
    }
    out
}

/// `fts5CInstIterNext`: runs of overlapping hits, as one highlighted span each.
struct Coalesced<'a> {
    hits: &'a [Hit],
    next: usize,
    /// First and last token of the current span; -1 when there are no more.
    start: i64,
    end: i64,
}

impl Coalesced<'_> {
    fn advance(&mut self) {
        (self.start, self.end) = (-1, -1);
        while let Some(hit) = self.hits.get(self.next) {
            let end = hit.offset - 1 + hit.length;
            if self.start < 0 {
                (self.start, self.end) = (hit.offset, end);
            } else if hit.offset <= self.end {
                self.end = self.end.max(end);
            } else {
                break;
            }
            self.next += 1;
        }
    }
}

/// Appends `piece` as `sqlite3_mprintf("%.*s")` would: up to its first NUL.
fn append(out: &mut Vec<u8>, piece: &[u8]) {
    out.extend_from_slice(until_nul(piece));
}

/// `piece` up to its first NUL, where C's `%.*s` stops.
fn until_nul(piece: &[u8]) -> &[u8] {
    let length = piece.iter().position(|&b| b == 0).unwrap_or(piece.len());
    &piece[..length]
}

/// `text[from..to]`, empty where FTS5's byte count would be zero or negative.
fn slice(text: &[u8], from: usize, to: usize) -> &[u8] {
    text.get(from..to.min(text.len())).unwrap_or_default()
}

/// A value's UTF-8 text; NULL reads as empty, as in FTS5.
///
/// # Safety
/// `value` is a live argument of the running function; the bytes live until it returns.
unsafe fn text_of<'a>(value: *mut sqlite3_value) -> &'a [u8] {
    // SAFETY: the caller's contract; sqlite3_value_bytes follows sqlite3_value_text, as SQLite asks.
    unsafe {
        let text = ffi::sqlite3_value_text(value);
        bytes(text.cast(), ffi::sqlite3_value_bytes(value))
    }
}

/// # Safety
/// `pointer` is null or points at `length` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(pointer: *const u8, length: c_int) -> &'a [u8] {
    if pointer.is_null() || length <= 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(pointer, length as usize) }
    }
}
