//! The embedding model's forward pass on the real weights (installed by the test command): a
//! sentence's nearest neighbour among others is the one that says the same thing in other
//! words, and unrelated sentences are far apart.

use std::path::PathBuf;

use pubsearch_native_worker::embed::bert::Bert;
use pubsearch_shared::embed::wordpiece::WordPiece;

fn model_dir() -> PathBuf {
    std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        PathBuf::from,
    )
}

/// A sentence's embedding as sentence-transformers makes it: `[CLS] … [SEP]`, mean-pooled,
/// normalised.
fn embed(bert: &Bert, tokenizer: &WordPiece, text: &str) -> Vec<f32> {
    let mut ids = vec![tokenizer.id("[CLS]").unwrap()];
    ids.extend(tokenizer.encode(text));
    ids.push(tokenizer.id("[SEP]").unwrap());
    let mut vector = bert.mean_pooled(&[&ids]).remove(0);
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|v| *v /= norm);
    vector
}

/// The model and its tokenizer, as the test command installs them.
fn model() -> (Bert, WordPiece) {
    let model = pubsearch_native_worker::embed::load(&model_dir())
        .unwrap_or_else(|e| panic!("{e}; scripts/install-toolchain.sh installs the model"));
    (model.bert, model.tokenizer)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn paraphrases_are_nearest_neighbours() {
    let (bert, tokenizer) = model();
    let pairs = [
        (
            "How do I keep my sourdough starter alive?",
            "Tips for feeding a bread yeast culture every day",
        ),
        (
            "The boat heeled over as the wind picked up",
            "A strong gust made the sailing vessel lean",
        ),
        (
            "My laptop battery drains too quickly",
            "The notebook computer loses charge fast",
        ),
        (
            "Learning to play the violin as an adult",
            "Starting lessons on a string instrument later in life",
        ),
        (
            "Tomatoes need plenty of sun to ripen",
            "Ripening tomato plants require lots of sunlight",
        ),
        (
            "The city council approved the new budget",
            "Local government passed the spending plan",
        ),
    ];
    let queries: Vec<Vec<f32>> = pairs
        .iter()
        .map(|(q, _)| embed(&bert, &tokenizer, q))
        .collect();
    let documents: Vec<Vec<f32>> = pairs
        .iter()
        .map(|(_, d)| embed(&bert, &tokenizer, d))
        .collect();
    for (n, query) in queries.iter().enumerate() {
        let scores: Vec<f32> = documents.iter().map(|d| cosine(query, d)).collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(best, n, "{:?}: scores {scores:?}", pairs[n].0);
        // Clearly nearer than any other sentence, not just by a hair.
        let runner_up = scores
            .iter()
            .enumerate()
            .filter(|&(m, _)| m != n)
            .map(|(_, score)| *score)
            .fold(f32::MIN, f32::max);
        eprintln!(
            "{:?}: paraphrase {:.3}, next {runner_up:.3}",
            pairs[n].0, scores[n]
        );
        assert!(scores[n] - runner_up > 0.1, "{:?}: {scores:?}", pairs[n].0);
    }
    // Unrelated sentences are far apart, and a vector is its own nearest.
    assert!(cosine(&queries[0], &queries[2]) < 0.3);
    assert!((cosine(&queries[0], &queries[0]) - 1.0).abs() < 1e-5);
    // One length in a batch: the batch gives what each alone does.
    let ids: Vec<u32> = vec![101, 7592, 102];
    let other: Vec<u32> = vec![101, 2088, 102];
    let batch = bert.mean_pooled(&[&ids, &other]);
    let alone = bert.mean_pooled(&[&other]);
    assert!(
        batch[1]
            .iter()
            .zip(&alone[0])
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );
}

#[test]
fn a_distilled_table_keeps_paraphrases_close() {
    use pubsearch_native_worker::embed::distill::{self, DistillOptions};
    let (bert, tokenizer) = model();
    let pairs = [
        (
            "garden tomatoes ripen in the summer sun",
            "ripe tomato plants need sunlight",
        ),
        (
            "the sailing boat heeled in a strong wind",
            "a gust made the vessel lean over",
        ),
        (
            "my laptop battery drains quickly",
            "the notebook computer loses its charge",
        ),
        (
            "learning the violin as an adult",
            "adult lessons on a string instrument",
        ),
        (
            "the council approved the city budget",
            "local government passed the spending plan",
        ),
        (
            "baking bread with a sourdough starter",
            "a yeast culture for making loaves",
        ),
    ];
    // The table for these texts' tokens and a spread of the vocabulary beside them (the whole
    // vocabulary is the benchmark's: this is a debug build).
    let mut ids: Vec<u32> = pairs
        .iter()
        .flat_map(|(a, b)| tokenizer.encode(a).into_iter().chain(tokenizer.encode(b)))
        .chain((1_996..30_000).step_by(150))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let options = DistillOptions {
        dims: 128,
        ..DistillOptions::default()
    };
    let table = distill::distill(&bert, &ids, &options);
    assert_eq!((table.rows(), table.dims()), (ids.len(), 128));
    let row_of = |text: &str| -> Vec<u32> {
        tokenizer
            .encode(text)
            .iter()
            .map(|id| ids.binary_search(id).unwrap() as u32)
            .collect()
    };
    let mut nearest = 0;
    for (n, (query, _)) in pairs.iter().enumerate() {
        let q = table.embed(&row_of(query)).unwrap();
        let scores: Vec<f32> = pairs
            .iter()
            .map(|(_, d)| cosine(&q, &table.embed(&row_of(d)).unwrap()))
            .collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        eprintln!(
            "{query:?}: paraphrase {:.3}, best is {best}: {scores:?}",
            scores[n]
        );
        nearest += usize::from(best == n);
    }
    // The static table keeps most of the model's sense (model2vec's published retrieval
    // numbers: about 60% of the full model's), well above chance (1 in 6).
    assert!(nearest >= 4, "{nearest} of 6 paraphrases nearest");
}

#[path = "../benches/data/labelled.rs"]
mod labelled;

/// Words of three letters or more, lowercased.
fn words(text: &str) -> std::collections::HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.len() >= 3)
        .map(str::to_lowercase)
        .collect()
}

#[test]
fn a_snapshot_built_with_the_model_finds_paraphrases_that_share_no_word() {
    use pubsearch_shared::search::{self, SearchRequest};
    use pubsearch_shared::snapshot::SnapshotWriter;

    let labelled = labelled::load();
    let model = pubsearch_native_worker::embed::stored::load_or_distill(&model_dir())
        .unwrap_or_else(|e| panic!("{e}; scripts/install-toolchain.sh installs the model"));
    let created_at = labelled::date();
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for document in labelled::documents(&labelled) {
        writer.add_document(&document).unwrap();
    }
    writer.finish_with(1, Some(&model)).unwrap();
    search::prepare(&conn).unwrap();

    let top = |query: &str, mode: &str| -> Vec<String> {
        let request =
            SearchRequest::from_params([("q", query), ("mode", mode), ("limit", "3")]).unwrap();
        search::search(&conn, &request, created_at)
            .unwrap()
            .results
            .into_iter()
            .map(|result| result.rkey)
            .collect()
    };
    // Paraphrases: those sharing no word with their topic's documents, and those keyword
    // search misses (no document of the topic in its top 3).
    let (mut disjoint, mut disjoint_found, mut missed, mut missed_found) = (0, 0, 0, 0);
    for topic in &labelled.topics {
        let topic_words: std::collections::HashSet<String> = topic
            .docs
            .iter()
            .flat_map(|(title, content)| words(&format!("{title} {content}")))
            .collect();
        let query = &topic.queries[1];
        let prefix = format!("{}-", topic.topic);
        let hits = |found: Vec<String>| found.iter().any(|rkey| rkey.starts_with(&prefix));
        let by_meaning = hits(top(query, "semantic"));
        if words(query).is_disjoint(&topic_words) {
            disjoint += 1;
            disjoint_found += usize::from(by_meaning);
            assert!(
                !hits(top(query, "keyword")),
                "{query}: no shared word, no keyword hit"
            );
        }
        if !hits(top(query, "keyword")) {
            missed += 1;
            missed_found += usize::from(by_meaning);
        }
    }
    eprintln!(
        "semantic top 3: {disjoint_found} of {disjoint} paraphrases sharing no word, \
         {missed_found} of {missed} keyword misses"
    );
    assert!(
        disjoint >= 3 && missed >= 5,
        "{disjoint} disjoint, {missed} missed"
    );
    assert_eq!(
        disjoint_found, disjoint,
        "every paraphrase sharing no word is found"
    );
    assert!(
        missed_found * 10 >= missed * 7,
        "semantic search found {missed_found} of the {missed} paraphrases keyword search missed"
    );
}
