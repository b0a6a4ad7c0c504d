//! Search quality on the labelled set (`benches/data/labelled.json`: 100 hand-written documents
//! in 25 topics, 50 queries, half sharing words with their topic, half paraphrases): nDCG@10
//! and recall@20 for the product's three modes (`mode=keyword|semantic|hybrid` over a snapshot
//! built with the static model, as `publish` builds them), and for reference semantic search
//! with the full model and plain reciprocal rank fusion (k = 60) without hybrid's exact hits
//! first. Prints a table; asserts nothing. Needs the model the test command installs.
//!
//! `cargo bench -p pubsearch-native-worker --bench quality`

use std::collections::HashMap;
use std::path::PathBuf;

use pubsearch_native_worker::embed::distill::DistillOptions;
use pubsearch_native_worker::embed::{self, Model};
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotWriter};
use rusqlite::Connection;

#[path = "data/labelled.rs"]
mod labelled;

const RRF_K: f64 = 60.0;

fn main() {
    let labelled = labelled::load();
    let dir = std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        PathBuf::from,
    );
    let Model { bert, tokenizer } =
        embed::load(&dir).expect("the model (scripts/install-toolchain.sh installs it)");
    let options = DistillOptions::default();
    let model = embed::stored::load_or_distill(&dir).expect("the static table");

    // Documents: one date for all, so recency plays no part.
    let created_at = labelled::date();
    let documents = labelled::documents(&labelled);
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for document in &documents {
        writer.add_document(document).unwrap();
    }
    writer.finish_with(1, Some(&model)).unwrap();
    search::prepare(&conn).unwrap();

    let text_of = |d: &SnapshotDocument| format!("{} {}", d.title, d.content);
    let full = |text: &str| -> Vec<f32> {
        let mut ids = vec![options.cls];
        ids.extend(tokenizer.encode(text).into_iter().take(254));
        ids.push(options.sep);
        unit(bert.mean_pooled(&[&ids]).remove(0))
    };
    let static_vectors: Vec<Vec<f32>> = documents
        .iter()
        .map(|d| model.embed(&text_of(d)).unwrap_or_default())
        .collect();
    let full_vectors: Vec<Vec<f32>> = documents.iter().map(|d| full(&text_of(d))).collect();

    let systems = [
        "mode=keyword",
        "mode=semantic (static table, tree)",
        "mode=hybrid",
        "reference: semantic, full model (exhaustive)",
        "reference: plain RRF, keyword + static",
        "reference: plain RRF, keyword + full model",
    ];
    // [system][query kind] → (nDCG@10 sum, recall@20 sum, queries)
    let mut scores = vec![[(0.0, 0.0, 0usize); 2]; systems.len()];
    for topic in &labelled.topics {
        let relevant: Vec<String> = documents
            .iter()
            .filter(|d| d.rkey.starts_with(&format!("{}-", topic.topic)))
            .map(|d| d.uri.clone())
            .collect();
        for (kind, query) in topic.queries.iter().enumerate() {
            let product = |mode: &str| -> Vec<String> {
                let params = [("q", query.as_str()), ("limit", "20"), ("mode", mode)];
                match SearchRequest::from_params(params) {
                    Ok(request) => search::search(&conn, &request, created_at)
                        .unwrap()
                        .results
                        .into_iter()
                        .map(|r| r.uri)
                        .collect(),
                    Err(_) => Vec::new(),
                }
            };
            let keyword = product("keyword");
            let by_vector = |vectors: &[Vec<f32>], q: &[f32]| -> Vec<String> {
                let mut ranked: Vec<(f32, &str)> = vectors
                    .iter()
                    .zip(&documents)
                    .map(|(v, d)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), d.uri.as_str()))
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
                ranked
                    .into_iter()
                    .take(20)
                    .map(|(_, uri)| uri.to_owned())
                    .collect()
            };
            let static_query = model.embed(query).unwrap_or_default();
            let semantic_static = by_vector(&static_vectors, &static_query);
            let semantic_full = by_vector(&full_vectors, &full(query));
            let rankings = [
                keyword.clone(),
                product("semantic"),
                product("hybrid"),
                semantic_full.clone(),
                fuse(&[&keyword, &semantic_static]),
                fuse(&[&keyword, &semantic_full]),
            ];
            for (system, ranking) in rankings.iter().enumerate() {
                let entry = &mut scores[system][kind];
                entry.0 += ndcg(ranking, &relevant, 10);
                entry.1 += recall(ranking, &relevant, 20);
                entry.2 += 1;
            }
        }
    }
    println!();
    println!(
        "{} documents, {} queries ({} sharing words with their topic, {} paraphrases)",
        documents.len(),
        labelled.topics.len() * 2,
        labelled.topics.len(),
        labelled.topics.len()
    );
    println!();
    println!("| system | nDCG@10 all | recall@20 all | nDCG@10 lexical | nDCG@10 paraphrase |");
    println!("|---|---|---|---|---|");
    for (system, name) in systems.iter().enumerate() {
        let [lexical, paraphrase] = scores[system];
        let n = (lexical.2 + paraphrase.2) as f64;
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
            (lexical.0 + paraphrase.0) / n,
            (lexical.1 + paraphrase.1) / n,
            lexical.0 / lexical.2 as f64,
            paraphrase.0 / paraphrase.2 as f64,
        );
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Reciprocal rank fusion of rankings: each item scores the sum of 1 / (k + rank).
fn fuse(rankings: &[&Vec<String>]) -> Vec<String> {
    let mut score: HashMap<&str, f64> = HashMap::new();
    for ranking in rankings {
        for (rank, uri) in ranking.iter().enumerate() {
            *score.entry(uri.as_str()).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(&str, f64)> = score.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    fused
        .into_iter()
        .take(20)
        .map(|(uri, _)| uri.to_owned())
        .collect()
}

/// nDCG@k with binary relevance.
fn ndcg(ranking: &[String], relevant: &[String], k: usize) -> f64 {
    let gain = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, uri)| relevant.contains(uri))
        .map(|(rank, _)| gain(rank))
        .sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(gain).sum();
    dcg / ideal
}

fn recall(ranking: &[String], relevant: &[String], k: usize) -> f64 {
    let found = ranking
        .iter()
        .take(k)
        .filter(|uri| relevant.contains(uri))
        .count();
    found as f64 / relevant.len() as f64
}
