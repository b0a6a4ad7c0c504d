//! Semantic and hybrid ranking (ARCHITECTURE.md, "Embeddings").
//!
//! A semantic search embeds the query with the base build's model (`embed::model`), reads the
//! leaves of each build's vector tree nearest it (`embed::index`: bounded work), keeps the rows
//! its delta does not hide and its filters pass, and ranks them by cosine similarity. A hybrid
//! search fuses the keyword and semantic rankings by reciprocal rank (k = [`RRF_K`]), and then
//! makes sure the keyword ranking's exact hits (documents matching every phrase) within the
//! request's page size are on the first page: fusion may reorder them, never push them off it.

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use crate::embed::index;
use crate::embed::model::SnapshotModel;
use crate::search::{
    Candidate, Layer, RequestError, ResultKind, SearchError, SearchRequest, Source,
};

/// How results are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Words, by bm25 and recency (the default until semantic quality is shown on real posts).
    #[default]
    Keyword,
    /// Meaning, by the cosine similarity of embeddings.
    Semantic,
    /// Both, fused by reciprocal rank, keeping keyword's exact hits on the first page.
    Hybrid,
}

impl Mode {
    /// Parses the `mode` parameter.
    pub fn parse(value: &str) -> Result<Self, RequestError> {
        match value {
            "" | "keyword" => Ok(Mode::Keyword),
            "semantic" => Ok(Mode::Semantic),
            "hybrid" => Ok(Mode::Hybrid),
            other => Err(RequestError::Invalid {
                name: "mode",
                reason: format!("{other:?} is not keyword, semantic or hybrid"),
            }),
        }
    }

    /// The parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Keyword => "keyword",
            Mode::Semantic => "semantic",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// The `k` of reciprocal rank fusion: a result's fused score is the sum of `1 / (k + rank)`
/// over the rankings that hold it.
pub const RRF_K: f64 = 60.0;
/// Semantic candidates kept from each build, after filters.
pub const SEMANTIC_POOL: usize = 400;
/// How deep into each ranking a place earns a fused score: a document far down both lists would
/// otherwise outscore one near the top of either (on the labelled set, fusing whole lists scored
/// nDCG@10 0.635, the top 50 of each 0.640). Documents below it in both follow the fused ones,
/// by their better place, so hybrid still pages as deep as either ranking.
pub const FUSION_DEPTH: usize = 20;

/// `text` embedded with the base build's model; [`SearchError::NoVectors`] when the base has
/// none, `None` when no piece of the text has a vector.
pub(crate) fn query_vector(
    base: &rusqlite::Connection,
    text: &str,
) -> Result<Option<Vec<f32>>, SearchError> {
    let model = SnapshotModel::open(base, "main")
        .map_err(SearchError::from)?
        .ok_or(SearchError::NoVectors)?;
    model.embed(text).map_err(SearchError::from)
}

/// The dimensions of the base build's model, for reading a stored vector.
pub(crate) fn dims(base: &rusqlite::Connection) -> Result<usize, SearchError> {
    Ok(SnapshotModel::open(base, "main")
        .map_err(SearchError::from)?
        .ok_or(SearchError::NoVectors)?
        .dims())
}

/// The documents nearest `vector` in every build that pass `request`'s filters and are not
/// hidden, best first (`bm25` holds the negated similarity, so lower is better as in keyword
/// candidates).
pub(crate) fn candidates(
    sources: &[Source<'_>],
    request: &SearchRequest,
    vector: &[f32],
) -> Result<Vec<Candidate>, SearchError> {
    let Some((articles, looseleafs)) = request.document_kinds() else {
        return Ok(Vec::new());
    };
    let (filters, mut args) = crate::search::document_filters(request, articles, looseleafs, "?1");
    let test = (!filters.is_empty()).then(|| format!("SELECT {}", filters.join(" AND ")));
    let mut found = Vec::new();
    for source in sources {
        let mut statement = match &test {
            Some(sql) => Some(source.conn.prepare_cached(sql)?),
            None => None,
        };
        let mut mine = Vec::new();
        for near in index::nearest(source.conn, "main", vector)? {
            if mine.len() == SEMANTIC_POOL {
                break;
            }
            if source.hides(ResultKind::Article, near.id) {
                continue;
            }
            if let Some(statement) = &mut statement {
                args[0] = Value::Integer(near.id);
                let passes: Option<bool> =
                    statement.query_row(params_from_iter(&args), |row| row.get(0))?;
                if passes != Some(true) {
                    continue;
                }
            }
            mine.push(Candidate::semantic(source.layer, near.id, near.similarity));
        }
        crate::search::attach_families(source.conn, &mut mine)?;
        found.extend(mine);
    }
    found.sort_unstable_by(|a, b| {
        a.bm25
            .total_cmp(&b.bm25)
            .then_with(|| a.layer.cmp(&b.layer))
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(found)
}

/// Hybrid order: everything by fused reciprocal rank, then `keyword`'s exact hits within its
/// first `page` results (after cross-posts are folded) that fusion ranked past the first page
/// moved onto it. Both lists come ranked best first; a document in both counts once, with both
/// ranks.
pub(crate) fn fuse(
    keyword: Vec<Candidate>,
    semantic: Vec<Candidate>,
    page: usize,
    phrases: usize,
) -> Vec<Candidate> {
    type Key = (u8, Layer, i64);
    let key = |c: &Candidate| -> Key { (c.kind as u8, c.layer, c.id) };
    let mut pinned: Vec<Key> = Vec::new();
    let mut families = std::collections::HashSet::new();
    let mut position = 0;
    for candidate in &keyword {
        if candidate
            .family
            .is_some_and(|family| !families.insert(family))
        {
            continue;
        }
        if position == page {
            break;
        }
        position += 1;
        if candidate.phrases as usize == phrases {
            pinned.push(key(candidate));
        }
    }
    // Per document: its fused score, its best rank in either list and whether keyword gave it
    // (ties go by those, never by row numbers, which differ between a base + delta and one build).
    let mut fused: std::collections::HashMap<Key, (f64, usize, bool, Candidate)> =
        std::collections::HashMap::new();
    for (from_keyword, list) in [(true, keyword), (false, semantic)] {
        for (rank, candidate) in list.into_iter().enumerate() {
            let score = if rank < FUSION_DEPTH {
                1.0 / (RRF_K + rank as f64 + 1.0)
            } else {
                0.0
            };
            fused
                .entry(key(&candidate))
                .and_modify(|(sum, best, _, kept)| {
                    *sum += score;
                    *best = (*best).min(rank);
                    kept.phrases = kept.phrases.max(candidate.phrases);
                })
                .or_insert((score, rank, from_keyword, candidate));
        }
    }
    let mut rest: Vec<(f64, usize, bool, Candidate)> = fused.into_values().collect();
    rest.sort_unstable_by(
        |(a_score, a_best, a_keyword, a), (b_score, b_best, b_keyword, b)| {
            b_score
                .total_cmp(a_score)
                .then_with(|| a_best.cmp(b_best))
                .then_with(|| b_keyword.cmp(a_keyword))
                .then_with(|| (a.kind as u8).cmp(&(b.kind as u8)))
                .then_with(|| a.layer.cmp(&b.layer))
                .then_with(|| a.id.cmp(&b.id))
        },
    );
    let mut ranked: Vec<Candidate> = rest.into_iter().map(|(_, _, _, c)| c).collect();
    keep_on_first_page(&mut ranked, &pinned, page, key);
    ranked
}

/// Moves the `pinned` candidates that fusion ranked past the first `page` onto it, in their
/// order, each displacing the lowest unpinned candidate there to just after the page.
fn keep_on_first_page<K: PartialEq>(
    ranked: &mut Vec<Candidate>,
    pinned: &[K],
    page: usize,
    key: impl Fn(&Candidate) -> K,
) {
    let page = page.min(ranked.len());
    let missing: Vec<usize> = (page..ranked.len())
        .filter(|&at| pinned.contains(&key(&ranked[at])))
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut moved: Vec<Candidate> = Vec::with_capacity(missing.len());
    for &at in missing.iter().rev() {
        moved.push(ranked.remove(at));
    }
    moved.reverse();
    // The lowest unpinned entries of the page make room, and lead what follows it.
    let mut displaced = Vec::new();
    let mut at = page;
    while displaced.len() < moved.len() && at > 0 {
        at -= 1;
        if !pinned.contains(&key(&ranked[at])) {
            displaced.push(ranked.remove(at));
        }
    }
    displaced.reverse();
    let end = page - displaced.len();
    let tail = ranked.split_off(end);
    ranked.extend(moved);
    ranked.extend(displaced);
    ranked.extend(tail);
}
