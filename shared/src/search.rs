//! Search requests, ranking and results.
//!
//! Ranking runs in two phases so the request path does no work proportional to the corpus beyond
//! what FTS5 itself does (ARCHITECTURE.md invariant 1):
//!
//! 1. **Candidates.** bm25 is a sum over the query's phrases, so each phrase is scanned by
//!    itself: its first [`SCAN_BUDGET`] FTS5 matches in rowid order (the newest, since documents
//!    are numbered newest first: ARCHITECTURE.md invariant 9) are tested against the filters in
//!    the same statement, from the cached facts (FTS5 drives; see `document_scan`), and those
//!    that pass are scored by the phrase's weighted bm25 (`rank`'s function, with row lengths
//!    from the same facts). A document's score is the sum of its phrases' scores, and the best
//!    [`CANDIDATE_POOL`] are kept (ties to the lower rowid). Publications are ranked the same way
//!    in their own index. Matches past a phrase's budget are never read, so a common word costs
//!    the same in a million documents as in ten thousand, while a rare word beside it is still
//!    found wherever it is; where every phrase matches fewer rows than the budget, the scores
//!    are FTS5's bm25 of the whole expression, bit for bit.
//! 2. **Re-rank and page.** Candidates get a recency penalty of one point per
//!    [`DAYS_PER_RECENCY_POINT`] days of age (capped at [`MAX_RECENCY_PENALTY`]), are merged, lose
//!    repeated `(author, title)` pairs (cross-posts) and are paged; only the page's rows are read in
//!    full and given snippets.
//!
//! The pool has a fixed size, so every page of a query is cut from the same ordering.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::delta::{Delta, Layers};
use crate::platform::{Platform, UnknownPlatform};
use crate::query::{self, MatchExpr, QueryError};
use crate::rank::CorpusStats;
use crate::semantic::{self, Mode};
use crate::timestamp::{Timestamp, TimestampError};
use crate::{content, facts, fts5, rank, schema, snippet};

/// How much of a snapshot SQLite may read in place rather than copy into its page cache (SQLite's
/// own ceiling). For a deserialized snapshot (the edge's) that is memory already, which SQLite
/// then reads without copying. A file opened natively is memory-mapped instead.
pub const MMAP_BYTES: i64 = 2_147_418_112;

/// Results per page when the client does not say.
pub const DEFAULT_LIMIT: u32 = 20;
/// Most results per page.
pub const MAX_LIMIT: u32 = 40;
/// Deepest offset served; past it, refine the query.
pub const MAX_OFFSET: u32 = 1000;
/// Candidates kept from each FTS index before re-ranking: enough for the deepest page plus the
/// one-extra `hasMore` probe, with room for deduplicated cross-posts.
pub const CANDIDATE_POOL: u32 = 1200;
/// FTS5 matches each index examines per query, in rowid order: a match past it is neither
/// filtered, scored nor read (ARCHITECTURE.md invariant 1). A phrase matching more rows than this
/// has its document frequency estimated from where its budget ran out (see [`crate::rank`]).
pub const SCAN_BUDGET: u32 = 10_000;
/// Days of age that cost one ranking point.
pub const DAYS_PER_RECENCY_POINT: f64 = 30.0;
/// The most points age can cost, so strong old matches still surface.
pub const MAX_RECENCY_PENALTY: f64 = 12.0;
/// Tokens of context in a snippet.
const SNIPPET_TOKENS: u32 = 24;
/// Private-use characters that mark matches inside snippets before HTML escaping.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

/// What kind of thing a result is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    /// A document that belongs to a publication.
    Article,
    /// A standalone document (no publication).
    Looseleaf,
    /// A publication itself.
    Publication,
}

impl ResultKind {
    const ALL: [ResultKind; 3] = [
        ResultKind::Article,
        ResultKind::Looseleaf,
        ResultKind::Publication,
    ];

    /// The name clients see (`type` in results and filters).
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Article => "article",
            ResultKind::Looseleaf => "looseleaf",
            ResultKind::Publication => "publication",
        }
    }
}

/// The JSON shape of a search response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    /// A bare array of results.
    #[default]
    V1,
    /// `{results, hasMore, nextOffset, total}`; `total` is always null because counting every
    /// match would cost work proportional to the corpus.
    V2,
}

/// A validated search: built only through [`SearchRequest::from_params`] or [`SearchRequest::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// `None` lists the author's posts, newest first, instead of searching (see
    /// [`author_listing`]).
    query: Option<MatchExpr>,
    /// The words as the client wrote them: what a semantic search embeds.
    text: Option<String>,
    mode: Mode,
    platform: Option<Platform>,
    tag: Option<String>,
    since: Option<Timestamp>,
    author: Option<Author>,
    kinds: Vec<ResultKind>,
    limit: u32,
    offset: u32,
    format: ResponseFormat,
}

/// Whose documents a search is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    Did(String),
    /// A handle (normalised), looked up in the build when searching.
    Handle(String),
}

/// Why a request was refused; every variant is the client's to fix (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("missing parameter q")]
    MissingQuery,
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Why a valid request could not be answered (HTTP 500: the snapshot or the code is at fault).
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search failed in sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A semantic or hybrid search of a build made without an embedding model (the client may
    /// ask again with `mode=keyword`: HTTP 400).
    #[error("this index has no embeddings (it was built without the model); use mode=keyword")]
    NoVectors,
    #[error("search failed reading the build's {0}")]
    Model(#[from] crate::embed::model::ModelReadError),
}

/// One search hit, in the JSON shape clients consume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    #[serde(rename = "type")]
    pub kind: ResultKind,
    pub uri: String,
    pub did: String,
    /// The author's handle, when the build knows it (see [`crate::authors`]).
    pub handle: Option<String>,
    pub title: String,
    /// HTML-escaped excerpt with matches wrapped in `<mark>`; safe to insert as HTML.
    pub snippet: String,
    pub created_at: Option<Timestamp>,
    pub rkey: String,
    pub base_path: Option<String>,
    pub platform: Platform,
    pub path: Option<String>,
    pub cover_image: Option<String>,
    /// Where a reader opens the result, by the platform's routing.
    pub url: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchPage {
    pub results: Vec<SearchResult>,
    pub has_more: bool,
    pub next_offset: Option<u32>,
}

impl SearchRequest {
    /// A request for `text` with default filters and paging.
    pub fn new(text: &str) -> Result<Self, RequestError> {
        Ok(Self {
            query: Some(query::build(text)?),
            text: Some(text.to_owned()),
            mode: Mode::Keyword,
            platform: None,
            tag: None,
            since: None,
            author: None,
            kinds: ResultKind::ALL.to_vec(),
            limit: DEFAULT_LIMIT,
            offset: 0,
            format: ResponseFormat::V1,
        })
    }

    /// Parses URL query parameters (`q`, `platform`, `tag`, `since`, `author`, `type`, `limit`,
    /// `offset`, `format`). Unknown parameters are ignored so cache-busters do no harm; a repeated
    /// parameter takes its last value.
    pub fn from_params<K: AsRef<str>, V: AsRef<str>>(
        params: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, RequestError> {
        let mut text = None;
        let mut raw: Vec<(String, String)> = Vec::new();
        for (key, value) in params {
            match key.as_ref() {
                "q" => text = Some(value.as_ref().to_owned()),
                _ => raw.push((key.as_ref().to_owned(), value.as_ref().to_owned())),
            }
        }
        let mut request = Self::new(text.as_deref().unwrap_or("listing"))?;
        if text.is_none() {
            request.query = None;
            request.text = None;
        }
        for (key, value) in &raw {
            let value = value.trim();
            match key.as_str() {
                "platform" if !value.is_empty() => {
                    request.platform = Some(
                        value
                            .parse()
                            .map_err(|e: UnknownPlatform| invalid("platform", e))?,
                    )
                }
                "tag" if !value.is_empty() => {
                    request.tag = Some(schema::normalize_tag(value).ok_or_else(|| {
                        invalid(
                            "tag",
                            format!("must be 1 to {} characters", schema::MAX_TAG_CHARS),
                        )
                    })?)
                }
                "since" if !value.is_empty() => {
                    request.since = Some(
                        Timestamp::parse(value).map_err(|e: TimestampError| invalid("since", e))?,
                    )
                }
                "author" if !value.is_empty() => {
                    request.author = Some(if is_did(value) {
                        Author::Did(value.to_owned())
                    } else {
                        Author::Handle(crate::authors::parse_handle(value).ok_or_else(|| {
                            invalid(
                                "author",
                                "must be a DID (did:plc:abc123) or a handle (alice.bsky.social)",
                            )
                        })?)
                    })
                }
                "type" if !value.is_empty() => request.kinds = parse_kinds(value)?,
                "mode" => request.mode = Mode::parse(value)?,
                "limit" => request.limit = parse_bounded("limit", value, 1, MAX_LIMIT)?,
                "offset" => request.offset = parse_bounded("offset", value, 0, MAX_OFFSET)?,
                "format" => {
                    request.format = match value {
                        "" | "v1" => ResponseFormat::V1,
                        "v2" => ResponseFormat::V2,
                        other => {
                            return Err(invalid("format", format!("{other:?} is not v1 or v2")));
                        }
                    }
                }
                _ => {}
            }
        }
        if request.query.is_none() && request.author.is_none() {
            // Without words, only an author's posts can be listed.
            return Err(RequestError::MissingQuery);
        }
        Ok(request)
    }

    /// This request's filters and paging with the query `text` instead.
    pub fn with_text(&self, text: &str) -> Result<Self, RequestError> {
        Ok(SearchRequest {
            query: Some(query::build(text)?),
            text: Some(text.to_owned()),
            ..self.clone()
        })
    }

    /// This request with `limit` results a page (within 1 and [`MAX_LIMIT`]).
    pub fn with_limit(&self, limit: u32) -> Self {
        SearchRequest {
            limit: limit.clamp(1, MAX_LIMIT),
            ..self.clone()
        }
    }

    /// The compiled FTS5 expression; `None` for a listing of an author's posts.
    pub fn match_expr(&self) -> Option<&MatchExpr> {
        self.query.as_ref()
    }

    /// The expression of a search (never asked of a listing: [`search_layers`] answers those
    /// before any statement).
    fn expr(&self) -> &MatchExpr {
        self.query
            .as_ref()
            .expect("listings are answered before any search statement")
    }

    /// How results are found.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// This request found by `mode` instead.
    pub fn with_mode(&self, mode: Mode) -> Self {
        SearchRequest {
            mode,
            ..self.clone()
        }
    }

    /// The JSON shape the client asked for.
    pub fn format(&self) -> ResponseFormat {
        self.format
    }

    /// Results per page.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Results skipped before this page.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The author filter's DID, once resolved (see [`search_layers`]).
    fn author_did(&self) -> Option<String> {
        match &self.author {
            Some(Author::Did(did)) => Some(did.clone()),
            // Unresolved handles never reach a statement; match no one if one does.
            Some(Author::Handle(_)) => Some(String::new()),
            None => None,
        }
    }

    /// Whether articles and looseleafs are wanted; `None` when neither is (no document can be).
    pub(crate) fn document_kinds(&self) -> Option<(bool, bool)> {
        let kinds = (
            self.wants(ResultKind::Article),
            self.wants(ResultKind::Looseleaf),
        );
        (kinds.0 || kinds.1).then_some(kinds)
    }

    pub(crate) fn wants(&self, kind: ResultKind) -> bool {
        self.kinds.contains(&kind)
    }
}

impl SearchPage {
    /// The response body in the requested format.
    pub fn to_json(&self, format: ResponseFormat) -> serde_json::Value {
        match format {
            ResponseFormat::V1 => serde_json::json!(self.results),
            ResponseFormat::V2 => serde_json::json!({
                "results": self.results,
                "hasMore": self.has_more,
                "nextOffset": self.next_offset,
                "total": null,
            }),
        }
    }
}

fn invalid(name: &'static str, reason: impl ToString) -> RequestError {
    RequestError::Invalid {
        name,
        reason: reason.to_string(),
    }
}

fn is_did(value: &str) -> bool {
    let mut parts = value.splitn(3, ':');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("did"), Some(method), Some(id))
            if !method.is_empty() && method.bytes().all(|b| b.is_ascii_lowercase())
                && !id.is_empty() && value.len() <= 256
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:%".contains(&b))
    )
}

fn parse_kinds(value: &str) -> Result<Vec<ResultKind>, RequestError> {
    value
        .split(',')
        .map(|name| {
            let name = name.trim();
            ResultKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == name)
                .ok_or_else(|| {
                    invalid(
                        "type",
                        format!("{name:?} is not article, looseleaf or publication"),
                    )
                })
        })
        .collect()
}

fn parse_bounded(name: &'static str, value: &str, min: u32, max: u32) -> Result<u32, RequestError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(name, format!("must be a whole number from {min} to {max}")))
}

/// Which build of [`Layers`] a candidate comes from; the delta's wins a tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Layer {
    Delta,
    Base,
}

/// One build searched for a request: the base hides the rows its delta masks.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub layer: Layer,
    pub conn: &'a Connection,
    /// The delta whose masks hide this build's rows (the base's, when there is a delta).
    masked_by: Option<&'a Delta>,
}

impl<'a> Source<'a> {
    /// The builds to search, base first.
    fn of(layers: Layers<'a>) -> Vec<Source<'a>> {
        let mut sources = vec![Source {
            layer: Layer::Base,
            conn: layers.base,
            masked_by: layers.delta,
        }];
        if let Some(delta) = layers.delta {
            sources.push(Source {
                layer: Layer::Delta,
                conn: delta.conn(),
                masked_by: None,
            });
        }
        sources
    }

    /// Whether a row of this build is hidden (replaced or removed by the delta).
    pub(crate) fn hides(&self, kind: ResultKind, id: i64) -> bool {
        self.masked_by.is_some_and(|delta| match kind {
            ResultKind::Publication => delta.masks_publication(id),
            _ => delta.masks_document(id),
        })
    }
}

/// Per phrase of the query, the IDF and average row length to score with.
type PhraseStats = Vec<(f64, f64)>;

/// The scoring statistics of `index` over every layer, per phrase of `request`, when there is
/// more than one layer (`None`: one index counts its own, FTS5's bm25 bit for bit). Row
/// counts, token totals and each phrase's matching rows are added across layers, so base and
/// delta rows are scored as one index would score them (ARCHITECTURE.md, "Deltas").
fn shared_stats(
    sources: &[Source<'_>],
    index: &str,
    request: &SearchRequest,
) -> Result<Option<PhraseStats>, SearchError> {
    if sources.len() < 2 {
        return Ok(None);
    }
    let corpora: Vec<CorpusStats> = sources
        .iter()
        .map(|source| CorpusStats::of(source.conn, index))
        .collect::<rusqlite::Result<_>>()?;
    let total = corpora
        .iter()
        .fold(CorpusStats::default(), |sum, corpus| sum.plus(*corpus));
    let mut stats = Vec::with_capacity(request.expr().phrases().len());
    for phrase in request.expr().phrases() {
        let mut matching = 0.0;
        for (source, corpus) in sources.iter().zip(&corpora) {
            matching += rank::rows_matching(source.conn, index, phrase, *corpus)?;
        }
        stats.push((
            rank::idf(total.rows as f64, matching),
            total.average_length(),
        ));
    }
    Ok(Some(stats))
}

/// A ranked candidate before paging.
pub(crate) struct Candidate {
    pub kind: ResultKind,
    pub layer: Layer,
    pub id: i64,
    /// bm25 with the index's column weights, negated: lower is better. For a semantic
    /// candidate, its negated cosine similarity.
    pub bm25: f64,
    /// Points lost for age (documents only).
    pub penalty: f64,
    /// The document's cross-post family (see `facts`); `None` for publications and untitled
    /// documents, which are never duplicates.
    pub family: Option<i64>,
    /// How many of the query's phrases it matches (none: found by meaning alone).
    pub phrases: u32,
}

impl Candidate {
    /// A document found by [`crate::semantic`], its family still to attach.
    pub(crate) fn semantic(layer: Layer, id: i64, similarity: f32) -> Self {
        Candidate {
            kind: ResultKind::Article,
            layer,
            id,
            bm25: -f64::from(similarity),
            penalty: 0.0,
            family: None,
            phrases: 0,
        }
    }
}

/// Gives each of `candidates` (documents of the build in `conn`) its cross-post family.
pub(crate) fn attach_families(
    conn: &Connection,
    candidates: &mut [Candidate],
) -> Result<(), SearchError> {
    let ids: Vec<i64> = candidates.iter().map(|candidate| candidate.id).collect();
    for (candidate, facts) in candidates
        .iter_mut()
        .zip(facts::document_facts(conn, &ids)?)
    {
        candidate.family = facts.family;
    }
    Ok(())
}

/// Readies a connection to a snapshot for [`search`]: lets SQLite read pages in place (see
/// [`MMAP_BYTES`]), makes sure the snapshot has the row facts search uses (deriving them for one
/// built before schema 6) and registers the SQL functions it calls (see [`crate::content`],
/// `facts`, `rank` and `snippet`). Like rusqlite's `load_module`, call it once after opening; the
/// snapshot must not change afterwards.
pub fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("PRAGMA mmap_size = {MMAP_BYTES}"))?;
    content::install(conn)?;
    let documents = facts::install(conn)?;
    let fts5 = fts5::api(conn)?;
    rank::install(fts5, documents)?;
    snippet::install(fts5)
}

/// Reads rows ahead of SQLite where every read may wait on the network (the paged edge): told
/// which rows a statement is about to read, it can fetch their pages in one round trip instead
/// of one per row.
pub trait Prefetch {
    /// The documents `ids` (their `documents` and `document_bodies` rows) are about to be read.
    fn documents(&self, conn: &Connection, ids: &[i64]);
}

/// For a snapshot whose reads never wait: prefetches nothing.
pub struct NoPrefetch;

impl Prefetch for NoPrefetch {
    fn documents(&self, _: &Connection, _: &[i64]) {}
}

/// Answers a request from a snapshot whose connection has been through [`prepare`]. `now`
/// anchors the recency boost; pass the current time in production and a fixed one in tests.
pub fn search(
    conn: &Connection,
    request: &SearchRequest,
    now: Timestamp,
) -> Result<SearchPage, SearchError> {
    search_with(conn, request, now, &NoPrefetch)
}

/// [`search`], telling `prefetch` which documents the page will read before it reads them.
pub fn search_with(
    conn: &Connection,
    request: &SearchRequest,
    now: Timestamp,
    prefetch: &dyn Prefetch,
) -> Result<SearchPage, SearchError> {
    search_layers(Layers::base(conn), request, now, prefetch)
}

/// [`search_with`] over a base and its delta (see [`crate::delta`]): delta rows replace the base
/// rows they mask, and both are scored with their statistics added, as one index.
/// `prefetch` hears of the base's documents only (a delta is held whole).
pub fn search_layers(
    layers: Layers<'_>,
    request: &SearchRequest,
    now: Timestamp,
    prefetch: &dyn Prefetch,
) -> Result<SearchPage, SearchError> {
    search_excluding(layers, request, now, prefetch, None, None)
}

/// A document a ranking leaves out, with its cross-posts (`/similar` leaves out the post it
/// was asked about): by its row in one layer, and its cross-post family.
pub(crate) struct Excluded {
    pub in_delta: bool,
    pub id: i64,
    pub family: Option<i64>,
}

impl Excluded {
    fn covers(&self, candidate: &Candidate) -> bool {
        candidate.kind != ResultKind::Publication
            && ((candidate.id == self.id && (candidate.layer == Layer::Delta) == self.in_delta)
                || (self.family.is_some() && candidate.family == self.family))
    }
}

/// [`search_layers`], leaving `excluded` out before paging, so pages stay contiguous.
/// A semantic or hybrid search takes `vector` as its query's embedding when given (`/similar`
/// gives the post's own), else embeds the request's words.
pub(crate) fn search_excluding(
    layers: Layers<'_>,
    request: &SearchRequest,
    now: Timestamp,
    prefetch: &dyn Prefetch,
    excluded: Option<&Excluded>,
    vector: Option<&[f32]>,
) -> Result<SearchPage, SearchError> {
    let resolved;
    let request = match &request.author {
        Some(Author::Handle(handle)) => match crate::authors::did_of(layers, handle)? {
            Some(did) => {
                resolved = SearchRequest {
                    author: Some(Author::Did(did)),
                    ..request.clone()
                };
                &resolved
            }
            // No one has that handle here: nothing of theirs to find.
            None => {
                return Ok(SearchPage {
                    results: Vec::new(),
                    has_more: false,
                    next_offset: None,
                });
            }
        },
        _ => request,
    };
    let sources = Source::of(layers);
    if request.query.is_none() {
        let mut page = author_listing(&sources, request)?;
        crate::authors::attach(layers, &mut page.results)?;
        return Ok(page);
    }
    let keyword = || -> Result<Vec<Candidate>, SearchError> {
        let mut candidates = document_candidates(&sources, request, now)?;
        candidates.extend(publication_candidates(&sources, request)?);
        // Unstable is exact here: no two candidates compare equal (kind, layer and id are
        // unique together).
        candidates.sort_unstable_by(|a, b| {
            (a.bm25 + a.penalty)
                .total_cmp(&(b.bm25 + b.penalty))
                .then_with(|| (a.kind as u8).cmp(&(b.kind as u8)))
                .then_with(|| a.layer.cmp(&b.layer))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(candidates)
    };
    let by_meaning = || -> Result<Vec<Candidate>, SearchError> {
        let embedded;
        let vector = match vector {
            Some(vector) => vector,
            None => {
                let text = request.text.as_deref().unwrap_or_default();
                match semantic::query_vector(layers.base, text)? {
                    Some(found) => {
                        embedded = found;
                        &embedded
                    }
                    // No piece of the words has a vector: nothing is near them.
                    None => return Ok(Vec::new()),
                }
            }
        };
        semantic::candidates(&sources, request, vector)
    };
    let mut candidates = match request.mode {
        Mode::Keyword => keyword()?,
        Mode::Semantic => by_meaning()?,
        Mode::Hybrid => {
            let meaning = by_meaning()?;
            semantic::fuse(
                keyword()?,
                meaning,
                request.limit as usize,
                request.expr().phrases().len(),
            )
        }
    };

    if let Some(excluded) = excluded {
        candidates.retain(|candidate| !excluded.covers(candidate));
    }
    let mut seen = HashSet::new();
    candidates.retain(|candidate| candidate.family.is_none_or(|family| seen.insert(family)));

    let start = request.offset as usize;
    let end = start + request.limit as usize;
    // No next page past MAX_OFFSET: the candidate pool runs deeper, but that offset is a 400.
    let has_more = end <= MAX_OFFSET as usize && candidates.len() > end;
    let page = candidates
        .get(start..end.min(candidates.len()))
        .unwrap_or_default();
    let documents: Vec<i64> = page
        .iter()
        .filter(|candidate| candidate.kind != ResultKind::Publication)
        .filter(|candidate| candidate.layer == Layer::Base)
        .map(|candidate| candidate.id)
        .collect();
    prefetch.documents(layers.base, &documents);
    let mut results = load_page(&sources, request, page)?;
    crate::authors::attach(layers, &mut results)?;
    Ok(SearchPage {
        results,
        has_more,
        next_offset: has_more.then_some(end as u32),
    })
}

/// Characters of text shown for a listed post (it has no match to build a snippet around).
const LISTING_EXCERPT_CHARS: usize = 300;

/// An author's documents, newest first, with the request's filters: what a search without words
/// answers. Each build's rows come through its `did` index in id order (newest first,
/// ARCHITECTURE.md invariant 9), so a page reads at most offset + limit + 1 passing rows a build,
/// plus the rows a delta masks: the work grows with that author's posts at most, never with the
/// corpus.
fn author_listing(
    sources: &[Source<'_>],
    request: &SearchRequest,
) -> Result<SearchPage, SearchError> {
    let nothing = SearchPage {
        results: Vec::new(),
        has_more: false,
        next_offset: None,
    };
    let Some(did) = request.author_did() else {
        return Ok(nothing);
    };
    let wanted = (request.offset + request.limit + 1) as usize;
    let mut tests = vec!["d.did = ?1".to_owned(), "d.id > ?2".to_owned()];
    let mut args: Vec<Value> = vec![Value::Text(did), Value::Null];
    if let Some(platform) = request.platform {
        args.push(Value::Text(platform.as_str().into()));
        tests.push(format!("d.platform = ?{}", args.len()));
    }
    if let Some(since) = request.since {
        args.push(Value::Text(since.to_rfc3339()));
        tests.push(format!("d.created_at >= ?{}", args.len()));
    }
    if let Some(tag) = &request.tag {
        args.push(Value::Text(tag.clone()));
        tests.push(format!(
            "d.id IN (SELECT document_id FROM document_tags WHERE tag = ?{})",
            args.len()
        ));
    }
    match (
        request.wants(ResultKind::Article),
        request.wants(ResultKind::Looseleaf),
    ) {
        (true, true) => {}
        (true, false) => tests.push("d.publication_uri IS NOT NULL".into()),
        (false, true) => tests.push("d.publication_uri IS NULL".into()),
        (false, false) => return Ok(nothing),
    }
    let mut listed: Vec<(Layer, SearchResult)> = Vec::new();
    for source in sources {
        let text = schema::text_source(source.conn, "d.id")?;
        let sql = format!(
            "SELECT {DOCUMENT_RESULT_COLUMNS}, substr({function}({text}), 1, {LISTING_EXCERPT_CHARS}), d.id
             FROM documents AS d WHERE {tests} ORDER BY d.id LIMIT {wanted}",
            function = content::FUNCTION,
            tests = tests.join(" AND "),
        );
        let mut statement = source.conn.prepare_cached(&sql)?;
        let (mut found, mut after) = (0, i64::MIN);
        // Rows the delta masks are skipped, so read on past them until enough pass.
        loop {
            args[1] = Value::Integer(after);
            let mut rows = statement.query(params_from_iter(args.iter()))?;
            let mut read = 0;
            while let Some(row) = rows.next()? {
                read += 1;
                let id: i64 = row.get(11)?;
                after = id;
                if source.hides(ResultKind::Article, id) {
                    continue;
                }
                let excerpt = escape_html(&row.get::<_, String>(10)?);
                listed.push((source.layer, document_result(row, excerpt)?));
                found += 1;
            }
            if read < wanted || found >= wanted {
                break;
            }
        }
    }
    // Newest first across builds; the delta's copy first on a tie.
    listed.sort_by(|(layer_a, a), (layer_b, b)| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| layer_a.cmp(layer_b))
            .then_with(|| a.uri.cmp(&b.uri))
    });
    let start = request.offset as usize;
    let end = start + request.limit as usize;
    let has_more = end <= MAX_OFFSET as usize && listed.len() > end;
    let results = listed
        .into_iter()
        .skip(start)
        .take(request.limit as usize)
        .map(|(_, result)| result)
        .collect();
    Ok(SearchPage {
        results,
        has_more,
        next_offset: has_more.then_some(end as u32),
    })
}

fn document_candidates(
    sources: &[Source<'_>],
    request: &SearchRequest,
    now: Timestamp,
) -> Result<Vec<Candidate>, SearchError> {
    let Some((articles, looseleafs)) = request.document_kinds() else {
        return Ok(Vec::new());
    };
    let now_seconds = now.unix_millis() as f64 / 1000.0;
    let stats = shared_stats(sources, "documents_fts", request)?;
    let (sql, args, given_at) = document_scan(request, articles, looseleafs, stats.is_some());
    let given = given_at.zip(stats.as_deref());
    let mut candidates = Vec::new();
    for source in sources {
        // Article or looseleaf is decided when the row is loaded; here only "document" matters.
        let mut pool = best_matches(
            *source,
            request,
            &sql,
            args.clone(),
            ResultKind::Article,
            given,
        )?;
        let ids: Vec<i64> = pool.iter().map(|candidate| candidate.id).collect();
        for (candidate, facts) in pool
            .iter_mut()
            .zip(facts::document_facts(source.conn, &ids)?)
        {
            candidate.penalty = recency_penalty(now_seconds, facts.created);
            candidate.family = facts.family;
        }
        candidates.extend(pool);
    }
    Ok(candidates)
}

/// The statement that examines the first [`SCAN_BUDGET`] documents matching the phrase bound
/// to `?1` (see [`best_matches`]), giving each `(rowid, bm25)`, with its arguments; the score is
/// NULL for a match the filters refuse.
/// The filters sit in the same statement, and FTS5 drives it: each filter tests a match, and none
/// reaches FTS5 as a rowid constraint, which would make FTS5 run the whole expression again for
/// every rowid offered (see [`TAG_FILTER`]). They test matches inside the budget rather than
/// narrowing the scan, so a filter that passes few rows cannot make the scan longer.
///
/// The platform, since, author and type filters are asked of `facts`' filter function, from its
/// cached blocks; only for a row it cannot answer for does the same test run in SQL, on the row
/// itself.
/// (Joining `documents` for every match cost a B-tree seek each: on the bench's 7.5k snapshot a
/// filtered search took twice as long as an unfiltered one.)
/// With `given`, the bm25 takes its statistics from two parameters, whose first position comes
/// back third.
fn document_scan(
    request: &SearchRequest,
    articles: bool,
    looseleafs: bool,
    given: bool,
) -> (String, Vec<Value>, Option<usize>) {
    let (filters, mut args) =
        document_filters(request, articles, looseleafs, "documents_fts.rowid");
    let given_at = given.then(|| given_parameters(&mut args));
    (
        budgeted_scan("documents_fts", &filters, given_at),
        args,
        given_at,
    )
}

/// The SQL tests of `request`'s document filters on the row whose id is `row`, and their
/// arguments from `?2` on (`?1` is left to the statement: NULL in the list).
pub(crate) fn document_filters(
    request: &SearchRequest,
    articles: bool,
    looseleafs: bool,
    row: &str,
) -> (Vec<String>, Vec<Value>) {
    let in_publication = (articles != looseleafs).then_some(articles);
    // The SQL test of each filter that is set, on the row `doc`, with its argument below.
    let row_tests: Vec<&str> = [
        (request.platform.is_some(), "doc.platform = ?2"),
        (request.since.is_some(), "doc.created_at >= ?3"),
        (request.author.is_some(), "doc.did = ?4"),
        (
            in_publication == Some(true),
            "doc.publication_uri IS NOT NULL",
        ),
        (in_publication == Some(false), "doc.publication_uri IS NULL"),
    ]
    .into_iter()
    .filter_map(|(set, test)| set.then_some(test))
    .collect();
    let mut args = vec![Value::Null];
    let mut filters = Vec::new();
    if !row_tests.is_empty() {
        let text = |value: Option<String>| value.map_or(Value::Null, Value::Text);
        args.extend([
            text(request.platform.map(|platform| platform.as_str().into())),
            text(request.since.map(|since| since.to_rfc3339())),
            text(request.author_did()),
            in_publication.map_or(Value::Null, |articles| Value::Integer(articles.into())),
        ]);
        filters.push(format!(
            "coalesce({filter}({row}, ?2, ?3, {author}, ?5), \
             EXISTS (SELECT 1 FROM documents AS doc WHERE doc.id = {row} AND {tests}))",
            filter = facts::DOCUMENT_FILTER,
            author = facts::author_number("?4"),
            tests = row_tests.join(" AND "),
        ));
    }
    if let Some(tag) = &request.tag {
        args.push(Value::Text(tag.clone()));
        filters.push(
            TAG_FILTER
                .replace("documents_fts.rowid", row)
                .replace('#', &format!("?{}", args.len())),
        );
    }
    (filters, args)
}

/// Appends the two parameters of given statistics to `args` and returns the first's position.
fn given_parameters(args: &mut Vec<Value>) -> usize {
    args.extend([Value::Null, Value::Null]);
    args.len() - 1
}

/// The statement that examines the first [`SCAN_BUDGET`] rows of `fts` matching `?1` and gives
/// each `(rowid, bm25)`, the score NULL (and never computed) where one of `filters` fails. With
/// `given_at`, bm25 takes its statistics from the parameters there (see
/// [`rank::bm25_given_call`]).
fn budgeted_scan(fts: &str, filters: &[String], given_at: Option<usize>) -> String {
    let bm25 = match given_at {
        Some(at) => rank::bm25_given_call(fts, at),
        None => rank::bm25_call(fts),
    };
    let score = match filters {
        [] => bm25,
        filters => format!("CASE WHEN {} THEN {bm25} END", filters.join(" AND ")),
    };
    format!("SELECT {fts}.rowid, {score} FROM {fts} WHERE {fts} MATCH ?1 LIMIT {SCAN_BUDGET}")
}

/// The tag filter (`#` is its placeholder). The `+` keeps the `IN` list from FTS5: offered it,
/// FTS5 looks each tagged rowid up by running the expression again, and on the bench's 7.5k
/// snapshot a search with its most common tag (87 documents) took 89 ms that way and 3.0 ms
/// scanning the matches once and probing the list (SQLite builds it once, with a Bloom filter).
const TAG_FILTER: &str =
    "+documents_fts.rowid IN (SELECT document_id FROM document_tags WHERE tag = #)";

/// The best [`CANDIDATE_POOL`] of `kind` in `source` by bm25, ties to the lower rowid: `sql` (a
/// [`budgeted_scan`]) runs once per phrase of the query, bound to `?1` (and its statistics to
/// the `given` positions), and each row's score is the sum of its phrases' (in phrase order, as
/// FTS5 sums them). Rows the source hides are left out.
///
/// Choosing the pool here rather than with FTS5's `ORDER BY rank LIMIT` spares a nested
/// statement that writes every match into SQLite's sorter and sorts them all. That was half of
/// ranking's time on the bench's 7.5k-document snapshot. Memory holds at most [`SCAN_BUDGET`]
/// rows per phrase (wasm memory never shrinks).
fn best_matches(
    source: Source<'_>,
    request: &SearchRequest,
    sql: &str,
    mut args: Vec<Value>,
    kind: ResultKind,
    given: Option<(usize, &[(f64, f64)])>,
) -> Result<Vec<Candidate>, SearchError> {
    let mut statement = source.conn.prepare_cached(sql)?;
    let mut scores: HashMap<i64, (f64, u32)> = HashMap::new();
    for (n, phrase) in request.expr().phrases().iter().enumerate() {
        args[0] = Value::Text(phrase.clone());
        if let Some((at, stats)) = given {
            let (idf, average_length) = stats[n];
            args[at - 1] = Value::Real(idf);
            args[at] = Value::Real(average_length);
        }
        let mut rows = statement.query(params_from_iter(&args))?;
        while let Some(row) = rows.next()? {
            if let Some(score) = row.get::<_, Option<f64>>(1)? {
                let entry = scores.entry(row.get(0)?).or_insert((0.0, 0));
                entry.0 += score;
                entry.1 += 1;
            }
        }
    }
    let mut matches: Vec<Candidate> = scores
        .into_iter()
        .filter(|(id, _)| !source.hides(kind, *id))
        .map(|(id, (bm25, phrases))| Candidate {
            kind,
            layer: source.layer,
            id,
            bm25,
            penalty: 0.0,
            family: None,
            phrases,
        })
        .collect();
    let pool = CANDIDATE_POOL as usize;
    if matches.len() > pool {
        matches
            .select_nth_unstable_by(pool, |a, b| a.bm25.total_cmp(&b.bm25).then(a.id.cmp(&b.id)));
        matches.truncate(pool);
    }
    Ok(matches)
}

/// Points a document loses for its age: one per [`DAYS_PER_RECENCY_POINT`] days, none for the
/// future, at most [`MAX_RECENCY_PENALTY`] (also for a date that did not parse).
fn recency_penalty(now_seconds: f64, created_seconds: Option<i64>) -> f64 {
    const SECONDS_PER_POINT: f64 = DAYS_PER_RECENCY_POINT * 86_400.0;
    created_seconds.map_or(MAX_RECENCY_PENALTY, |created| {
        ((now_seconds - created as f64) / SECONDS_PER_POINT).clamp(0.0, MAX_RECENCY_PENALTY)
    })
}

fn publication_candidates(
    sources: &[Source<'_>],
    request: &SearchRequest,
) -> Result<Vec<Candidate>, SearchError> {
    // Publications carry no tags or dates, so a tag or date filter excludes them.
    if !request.wants(ResultKind::Publication) || request.tag.is_some() || request.since.is_some() {
        return Ok(Vec::new());
    }
    let mut args = vec![Value::Null];
    let mut tests = String::new();
    if let Some(platform) = request.platform {
        args.push(Value::Text(platform.as_str().into()));
        tests.push_str(&format!(" AND p.platform = ?{}", args.len()));
    }
    if let Some(author) = request.author_did() {
        args.push(Value::Text(author));
        tests.push_str(&format!(" AND p.did = ?{}", args.len()));
    }
    let filter = format!(
        "EXISTS (SELECT 1 FROM publications AS p
                 WHERE p.id = publications_fts.rowid AND p.discoverable = 1{tests})"
    );
    let stats = shared_stats(sources, "publications_fts", request)?;
    let given_at = stats.is_some().then(|| given_parameters(&mut args));
    let sql = budgeted_scan("publications_fts", &[filter], given_at);
    let given = given_at.zip(stats.as_deref());
    let mut candidates = Vec::new();
    for source in sources {
        let kind = ResultKind::Publication;
        candidates.extend(best_matches(
            *source,
            request,
            &sql,
            args.clone(),
            kind,
            given,
        )?);
    }
    Ok(candidates)
}

/// Reads the page's rows in full and gives them snippets: one FTS5 statement per kind of result
/// and run of nearby rowids (see [`nearby_runs`]).
///
/// A `MATCH … AND rowid = ?` statement per result would set the expression up again for every
/// row, and for a prefix term that means merging the doclists of every term it expands to: on the
/// bench's 887-document snapshot, `ne shi` took 30 ms that way and takes 9 ms with this one scan.
/// The rowid range lets FTS5 seek past rows before the first and after the last result; the `+`
/// keeps the `IN` list out of FTS5's hands, which would otherwise run the expression once per
/// listed rowid.
fn load_page(
    sources: &[Source<'_>],
    request: &SearchRequest,
    page: &[Candidate],
) -> Result<Vec<SearchResult>, SearchError> {
    let is_publication = |candidate: &Candidate| candidate.kind == ResultKind::Publication;
    let mut loaded = HashMap::with_capacity(page.len());
    for source in sources {
        let (layer, conn) = (source.layer, source.conn);
        let ids = |publication: bool, matched: bool| -> Vec<i64> {
            page.iter()
                .filter(|c| c.layer == layer && is_publication(c) == publication)
                .filter(|c| (c.phrases > 0) == matched)
                .map(|c| c.id)
                .collect()
        };
        // Found by meaning alone: no match to build a snippet around, so the text's start.
        let unmatched = ids(false, false);
        if !unmatched.is_empty() {
            let text = schema::text_source(conn, "d.id")?;
            let sql = format!(
                "SELECT {DOCUMENT_RESULT_COLUMNS}, substr({function}({text}), 1, {LISTING_EXCERPT_CHARS}), d.id
                 FROM documents AS d WHERE d.id = ?1",
                function = content::FUNCTION,
            );
            let mut statement = conn.prepare_cached(&sql)?;
            for id in unmatched {
                statement.query_row([id], |row| {
                    let excerpt = escape_html(&row.get::<_, String>(10)?);
                    loaded.insert((layer, false, id), document_result(row, excerpt)?);
                    Ok(())
                })?;
            }
        }
        for run in nearby_runs(ids(false, true)) {
            for_each_row(conn, &DOCUMENT_PAGE_SQL, request, &run, |row| {
                let result = document_result(row, render_snippet(&row.get::<_, String>(10)?))?;
                loaded.insert((layer, false, row.get(11)?), result);
                Ok(())
            })?;
        }
        for run in nearby_runs(ids(true, true)) {
            for_each_row(conn, &PUBLICATION_PAGE_SQL, request, &run, |row| {
                loaded.insert((layer, true, row.get(8)?), publication_result(row)?);
                Ok(())
            })?;
        }
    }
    page.iter()
        .map(|candidate| {
            loaded
                .remove(&(candidate.layer, is_publication(candidate), candidate.id))
                // Candidates come from the same MATCH on the same read-only snapshot.
                .ok_or(SearchError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
        })
        .collect()
}

/// Most rowids one page statement spans: it runs the query over every row between its first and
/// last result, so results far apart are loaded by separate statements and a page reads at most
/// this many rows' matches per result (ARCHITECTURE.md invariant 1).
const PAGE_RUN_SPAN: i64 = 1024;

/// `ids` sorted and cut into runs each spanning at most [`PAGE_RUN_SPAN`] rowids.
fn nearby_runs(mut ids: Vec<i64>) -> Vec<Vec<i64>> {
    ids.sort_unstable();
    let mut runs: Vec<Vec<i64>> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some(run) if id - run[0] < PAGE_RUN_SPAN => run.push(id),
            _ => runs.push(vec![id]),
        }
    }
    runs
}

/// A publication result from a row of [`load_page`]'s publication statement.
fn publication_result(row: &rusqlite::Row<'_>) -> rusqlite::Result<SearchResult> {
    let base_path: Option<String> = row.get(6)?;
    Ok(SearchResult {
        kind: ResultKind::Publication,
        uri: row.get(0)?,
        did: row.get(1)?,
        handle: None,
        rkey: row.get(2)?,
        platform: row.get::<_, String>(3)?.parse().unwrap_or(Platform::Other),
        title: row.get(4)?,
        created_at: row
            .get::<_, Option<String>>(5)?
            .and_then(|text| Timestamp::parse(&text).ok()),
        url: base_path
            .as_deref()
            .map(|base| format!("https://{}", base.trim_end_matches('/'))),
        base_path,
        snippet: render_snippet(&row.get::<_, String>(7)?),
        path: None,
        cover_image: None,
    })
}

/// [`load_page`]'s statement for documents, read by [`document_result`].
static DOCUMENT_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    page_statement(
        DOCUMENT_RESULT_COLUMNS,
        "documents_fts JOIN documents AS d ON d.id = documents_fts.rowid",
        "documents_fts",
    )
});

/// [`load_page`]'s statement for publications, read by [`publication_result`].
static PUBLICATION_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    page_statement(
        "p.uri, p.did, p.rkey, p.platform, p.name, p.created_at, p.base_path",
        "publications_fts JOIN publications AS p ON p.id = publications_fts.rowid",
        "publications_fts",
    )
});

/// A page statement: `columns`, the snippet, then the rowid, for rows of `fts` matching `?1`
/// with rowids in `?2..=?3` and among `?4, ?5, …`. There are always [`MAX_LIMIT`] rowid
/// placeholders (unused ones bind NULL, which matches nothing), so each kind is one statement,
/// built once and kept by the connection's statement cache whatever the page holds.
fn page_statement(columns: &str, from: &str, fts: &str) -> String {
    let (open, close) = (MARK_OPEN as u32, MARK_CLOSE as u32);
    let ids = (4..4 + MAX_LIMIT)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {columns},
                {snippet}({fts}, 1, char({open}), char({close}), '…', {SNIPPET_TOKENS}),
                {fts}.rowid
         FROM {from}
         WHERE {fts} MATCH ?1 AND {fts}.rowid BETWEEN ?2 AND ?3 AND +{fts}.rowid IN ({ids})",
        snippet = snippet::FUNCTION,
    )
}

/// Runs one of [`load_page`]'s statements for `ids` (none: nothing to run).
fn for_each_row(
    conn: &Connection,
    sql: &str,
    request: &SearchRequest,
    ids: &[i64],
    mut each: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), SearchError> {
    let (Some(&low), Some(&high)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(());
    };
    let mut args = vec![
        Value::Text(request.expr().as_str().to_owned()),
        Value::Integer(low),
        Value::Integer(high),
    ];
    args.extend(ids.iter().map(|&id| Value::Integer(id)));
    debug_assert!(
        ids.len() <= MAX_LIMIT as usize,
        "a page holds at most MAX_LIMIT results"
    );
    args.resize(3 + MAX_LIMIT as usize, Value::Null);
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params_from_iter(args))?;
    while let Some(row) = rows.next()? {
        each(row)?;
    }
    Ok(())
}

/// The columns of `documents AS d` that [`document_result`] reads, in order.
pub(crate) const DOCUMENT_RESULT_COLUMNS: &str = "d.uri, d.did, d.rkey, d.platform, d.title, \
    d.created_at, d.base_path, d.path, d.cover_image, d.publication_uri IS NOT NULL";

/// A document result from a row that starts with [`DOCUMENT_RESULT_COLUMNS`]: one mapping for
/// search hits and direct lookups, so both describe a document the same way.
pub(crate) fn document_result(
    row: &rusqlite::Row<'_>,
    snippet: String,
) -> rusqlite::Result<SearchResult> {
    let did: String = row.get(1)?;
    let rkey: String = row.get(2)?;
    let platform: Platform = row.get::<_, String>(3)?.parse().unwrap_or(Platform::Other);
    let base_path: Option<String> = row.get(6)?;
    let path: Option<String> = row.get(7)?;
    Ok(SearchResult {
        kind: if row.get(9)? {
            ResultKind::Article
        } else {
            ResultKind::Looseleaf
        },
        uri: row.get(0)?,
        url: platform.document_url(&did, &rkey, base_path.as_deref(), path.as_deref()),
        did,
        handle: None,
        rkey,
        platform,
        title: row.get(4)?,
        created_at: row
            .get::<_, Option<String>>(5)?
            .and_then(|text| Timestamp::parse(&text).ok()),
        base_path,
        path,
        cover_image: row.get(8)?,
        snippet,
    })
}

/// HTML-escapes text so it can be inserted into a page as-is.
pub fn escape_html(text: &str) -> String {
    render_snippet(&text.replace([MARK_OPEN, MARK_CLOSE], ""))
}

/// HTML-escapes a snippet and turns the match markers into `<mark>` tags.
fn render_snippet(raw: &str) -> String {
    let mut html = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            MARK_OPEN => html.push_str("<mark>"),
            MARK_CLOSE => html.push_str("</mark>"),
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            c => html.push(c),
        }
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<SearchRequest, RequestError> {
        SearchRequest::from_params(pairs.iter().copied())
    }

    #[test]
    fn defaults_apply() {
        let request = params(&[("q", "rust")]).unwrap();
        assert_eq!(
            (request.limit, request.offset, request.format),
            (DEFAULT_LIMIT, 0, ResponseFormat::V1)
        );
        assert_eq!(request.kinds, ResultKind::ALL.to_vec());
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "missing parameter q"),
            (&[("q", "x"), ("limit", "0")], "invalid limit"),
            (&[("q", "x"), ("limit", "41")], "invalid limit"),
            (&[("q", "x"), ("limit", "-3")], "invalid limit"),
            (&[("q", "x"), ("offset", "1001")], "invalid offset"),
            (&[("q", "x"), ("since", "last tuesday")], "invalid since"),
            (&[("q", "x"), ("platform", "myspace")], "invalid platform"),
            (&[("q", "x"), ("author", "alice")], "invalid author"),
            (&[("q", "x"), ("type", "article,poem")], "invalid type"),
            (&[("q", "x"), ("format", "v9")], "invalid format"),
            (&[("q", "   ")], "empty query"),
        ];
        for (pairs, expected) in cases {
            let error = params(pairs).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{pairs:?}: {error}");
        }
    }

    #[test]
    fn snippets_are_escaped_around_marks() {
        assert_eq!(
            render_snippet("<b>\u{E000}x&y\u{E001}</b>"),
            "&lt;b&gt;<mark>x&amp;y</mark>&lt;/b&gt;"
        );
    }

    #[test]
    fn the_pool_is_the_best_by_bm25_with_ties_to_the_lower_rowid() {
        let conn = Connection::open_in_memory().unwrap();
        // 5,000 rows in a scrambled order, with only 13 distinct scores: ties everywhere.
        let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                   SELECT (i * 7919) % 5003, ((i * 31) % 13) * -1.0 FROM n WHERE ?1 IS NOT NULL";
        let request = params(&[("q", "one")]).unwrap();
        let args = vec![Value::Null];
        let source = Source {
            layer: Layer::Base,
            conn: &conn,
            masked_by: None,
        };
        let pool = best_matches(source, &request, sql, args, ResultKind::Article, None).unwrap();
        let mut all: Vec<(f64, i64)> = conn
            .prepare(sql)
            .unwrap()
            .query_map(["one"], |row| Ok((row.get(1)?, row.get(0)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut kept: Vec<(f64, i64)> = pool.iter().map(|c| (c.bm25, c.id)).collect();
        kept.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        assert_eq!(kept, all[..CANDIDATE_POOL as usize]);
    }

    #[test]
    fn filters_test_matches_instead_of_steering_fts5() {
        let conn = Connection::open_in_memory().unwrap();
        schema::create(&conn).unwrap();
        prepare(&conn).unwrap();
        let request = params(&[
            ("q", "rust"),
            ("tag", "rust"),
            ("platform", "leaflet"),
            ("author", "did:plc:abc"),
            ("since", "2024-01-01T00:00:00Z"),
            ("type", "article"),
        ])
        .unwrap();
        let (sql, args, _) = document_scan(&request, true, false, false);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params_from_iter(args), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // FTS5's plan string says `=` when it is handed rowids to look up one by one.
        assert!(
            plan[0].starts_with("SCAN documents_fts VIRTUAL TABLE"),
            "{plan:?}"
        );
        assert!(!plan[0].contains(":="), "{plan:?}");
        assert!(
            plan.iter()
                .any(|step| step.contains("document_tags USING PRIMARY KEY")),
            "{plan:?}"
        );
        // The filters' SQL fallback looks its one row up, never scans `documents`.
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH doc USING INTEGER PRIMARY KEY (rowid=?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|step| step == "SCAN doc"), "{plan:?}");
    }

    #[test]
    fn dids_are_recognised() {
        assert!(is_did("did:plc:abc123"));
        assert!(is_did("did:web:example.com"));
        assert!(!is_did("did:plc:"));
        assert!(!is_did("handle.bsky.social"));
        assert!(!is_did("did:PLC:x"));
    }
}
