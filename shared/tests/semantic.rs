//! Semantic and hybrid search (ARCHITECTURE.md, "Embeddings") over a tiny generated model whose
//! synonyms share a direction: a query with no word in common with a post finds it; hybrid keeps
//! every exact keyword hit of the first page; filters and a delta's masks hold; base + delta
//! answer as one build; a query embedded from the snapshot's tables equals the in-memory model's.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::HashMap;

use pubsearch_shared::SearchError;
use pubsearch_shared::delta::{self, Delta, Layers};
use pubsearch_shared::embed::model::{EmbeddingModel, SnapshotModel};
use pubsearch_shared::embed::table::StaticTable;
use pubsearch_shared::embed::wordpiece::{Rules, WordPiece};
use pubsearch_shared::search::{self, NoPrefetch, SearchRequest};
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotWriter};
use rusqlite::Connection;

/// Words that mean one thing each: a word's row points mostly along its topic's dimension.
const TOPICS: &[&[&str]] = &[
    &[
        "sourdough",
        "bread",
        "loaf",
        "levain",
        "starter",
        "dough",
        "baking",
        "crumb",
    ],
    &[
        "sailing", "boat", "mainsail", "yacht", "reef", "halyard", "wind", "mooring",
    ],
    &[
        "garden", "tomato", "seedling", "compost", "soil", "harvest", "weeds",
    ],
    &[
        "bicycle", "cycling", "bike", "pedal", "chain", "saddle", "gears",
    ],
];
const DIMS: usize = 16;

/// A model over `TOPICS` and the fixture's vocabulary: topic words along their topic's axis
/// with a little noise, every other word small and scattered.
fn tiny_model() -> EmbeddingModel {
    let mut words: Vec<String> = vec!["[UNK]".into()];
    words.extend(
        TOPICS
            .iter()
            .flat_map(|topic| topic.iter().map(|w| w.to_string())),
    );
    for document in support::generated(50) {
        for word in document
            .content
            .split_whitespace()
            .chain(document.title.split_whitespace())
        {
            let word = word.to_lowercase();
            if !words.contains(&word) {
                words.push(word);
            }
        }
    }
    for word in [
        "the", "a", "of", "and", "my", "on", "in", "at", "how", "to", "with", "notes",
    ] {
        if !words.iter().any(|w| w == word) {
            words.push(word.into());
        }
    }
    let mut rng = support::Lcg::new(11);
    let mut rows = Vec::new();
    for word in &words {
        let mut row: Vec<f32> = (0..DIMS)
            .map(|_| (rng.below(2001) as f32 - 1000.0) / 10_000.0)
            .collect();
        if let Some(topic) = TOPICS
            .iter()
            .position(|topic| topic.contains(&word.as_str()))
        {
            row[topic] += 1.0;
        } else if word == "[UNK]" {
            row.iter_mut().for_each(|v| *v = 0.0);
        }
        rows.push(row);
    }
    let vocab: HashMap<String, u32> = words
        .into_iter()
        .enumerate()
        .map(|(id, word)| (word, id as u32))
        .collect();
    EmbeddingModel {
        vocab: WordPiece::from_parts(
            vocab,
            Rules {
                unknown: 0,
                prefix: "##".into(),
                max_word_chars: 100,
            },
        ),
        table: StaticTable::quantize(&rows, DIMS),
        name: "tiny-test-model".into(),
    }
}

fn entry(did: &str, rkey: &str, title: &str, content: &str) -> SnapshotDocument {
    support::whitewind_entry(did, rkey, title, content)
}

fn topical() -> Vec<SnapshotDocument> {
    vec![
        entry(
            "did:plc:baker",
            "bread",
            "My sourdough starter",
            "Feed the levain; the loaf and its crumb.",
        ),
        entry(
            "did:plc:sailor",
            "reef",
            "Reefing the mainsail",
            "Ease the halyard when the wind builds; the boat stands up.",
        ),
        entry(
            "did:plc:grower",
            "soil",
            "Compost notes",
            "Seedling trays, tomato harvest, soil and weeds.",
        ),
        entry(
            "did:plc:rider",
            "gears",
            "Chain and gears",
            "Pedal, saddle and chain: the bicycle in winter.",
        ),
        entry(
            "did:plc:sailor",
            "mooring",
            "A mooring in the wind",
            "The boat on a mooring, the wind at night, a reef in the mainsail.",
        ),
    ]
}

fn corpus() -> Vec<SnapshotDocument> {
    let mut documents = topical();
    documents.extend(support::generated(50));
    documents
}

fn build(documents: &[SnapshotDocument], model: Option<&EmbeddingModel>) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for document in documents {
        writer.add_document(document).unwrap();
    }
    writer.finish_with(support::WATERMARK_US, model).unwrap();
    search::prepare(&conn).unwrap();
    conn
}

fn uris(layers: Layers<'_>, params: &[(&str, &str)]) -> Result<Vec<String>, SearchError> {
    let request = SearchRequest::from_params(params.iter().copied()).unwrap();
    Ok(
        search::search_layers(layers, &request, support::now(), &NoPrefetch)?
            .results
            .into_iter()
            .map(|result| result.uri)
            .collect(),
    )
}

fn uri(did: &str, rkey: &str) -> String {
    format!("at://{did}/com.whtwnd.blog.entry/{rkey}")
}

#[test]
fn a_query_sharing_no_word_with_a_post_finds_it_by_meaning() {
    let model = tiny_model();
    let conn = build(&corpus(), Some(&model));
    let layers = Layers::base(&conn);
    let keyword = uris(layers, &[("q", "yacht sailing")]).unwrap();
    assert!(
        keyword.is_empty(),
        "no post says yacht or sailing: {keyword:?}"
    );
    let semantic = uris(layers, &[("q", "yacht sailing"), ("mode", "semantic")]).unwrap();
    let mut first_two = semantic[..2].to_vec();
    first_two.sort();
    assert_eq!(
        first_two,
        [
            uri("did:plc:sailor", "mooring"),
            uri("did:plc:sailor", "reef")
        ]
    );
    let bread = uris(layers, &[("q", "bread baking"), ("mode", "semantic")]).unwrap();
    assert_eq!(bread[0], uri("did:plc:baker", "bread"));

    // Filters hold: another author's boat posts are not the baker's.
    let filtered = uris(
        layers,
        &[
            ("q", "yacht"),
            ("mode", "semantic"),
            ("author", "did:plc:baker"),
        ],
    )
    .unwrap();
    assert_eq!(filtered, [uri("did:plc:baker", "bread")]);
    let elsewhere = uris(
        layers,
        &[
            ("q", "yacht"),
            ("mode", "semantic"),
            ("platform", "leaflet"),
        ],
    )
    .unwrap();
    assert!(
        !elsewhere.iter().any(|u| u.contains("whtwnd")),
        "{elsewhere:?}"
    );

    // The snapshot's tables embed a query exactly as the model in memory does.
    let stored = SnapshotModel::open(&conn, "main").unwrap().unwrap();
    assert_eq!(stored.name(), "tiny-test-model");
    for text in ["yacht sailing", "Compost, SOIL & unknownword", "", "bread"] {
        assert_eq!(stored.embed(text).unwrap(), model.embed(text), "{text:?}");
    }
    // And read back whole (as a delta's builder reads its base's), it is the same model.
    let loaded = stored.load().unwrap();
    assert_eq!(loaded.table, model.table);
    assert_eq!(loaded.vocab.rules(), model.vocab.rules());
    assert_eq!(loaded.name, model.name);
    for text in ["yacht sailing", "Compost, SOIL & unknownword", "notes"] {
        assert_eq!(loaded.embed(text), model.embed(text), "{text:?}");
    }
}

#[test]
fn hybrid_keeps_every_exact_keyword_hit_of_the_first_page() {
    let model = tiny_model();
    // Posts that use a word off their topic (a chain of moorings), and posts on that word's
    // topic that never use it: by meaning alone, the second would push the first off the page.
    let mut documents = corpus();
    for (n, title) in ["A chain of moorings", "The anchor chain", "Chain locker"]
        .iter()
        .enumerate()
    {
        documents.push(entry(
            "did:plc:skipper",
            &format!("chain{n}"),
            title,
            "The boat, the mainsail, the halyard and the wind; a yacht on a mooring by the reef.",
        ));
    }
    for n in 0..6 {
        documents.push(entry(
            "did:plc:courier",
            &format!("ride{n}"),
            "Saddle and pedal",
            "The bicycle, its gears, the saddle and the pedal: cycling to work on a bike.",
        ));
    }
    let conn = build(&documents, Some(&model));
    let layers = Layers::base(&conn);
    let mut checked = 0;
    for q in [
        "boat",
        "wind mainsail",
        "the boat",
        "soil",
        "chain",
        "loaf crumb",
        "mooring wind",
    ] {
        for limit in ["1", "3", "5"] {
            let keyword = SearchRequest::from_params([("q", q), ("limit", limit)]).unwrap();
            let page = search::search(&conn, &keyword, support::now()).unwrap();
            let hybrid = uris(layers, &[("q", q), ("limit", limit), ("mode", "hybrid")]).unwrap();
            let terms: Vec<String> = q.split(' ').map(str::to_lowercase).collect();
            for result in page.results {
                let text = format!("{} {}", result.title, result.snippet).to_lowercase();
                if terms.iter().all(|term| text.contains(term.as_str())) {
                    assert!(
                        hybrid.contains(&result.uri),
                        "{q} (limit {limit}): {} missing from {hybrid:?}",
                        result.uri
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} exact hits checked");
    // And by meaning it adds what words miss.
    let hybrid = uris(
        layers,
        &[("q", "yacht boat"), ("mode", "hybrid"), ("limit", "5")],
    )
    .unwrap();
    assert!(
        hybrid.contains(&uri("did:plc:sailor", "reef")),
        "{hybrid:?}"
    );
}

#[test]
fn base_and_delta_answer_by_meaning_as_one_build() {
    let model = tiny_model();
    let mut whole = corpus();
    // The delta brings the mooring post and an edit of the bread post.
    let mut edited = whole[0].clone();
    edited.content = "A loaf of bread with an open crumb; the starter and the levain.".into();
    let base_documents: Vec<SnapshotDocument> = whole
        .iter()
        .filter(|d| d.rkey != "mooring")
        .cloned()
        .collect();
    let mut base = build(&base_documents, Some(&model));
    let delta_documents = vec![edited.clone(), topical().remove(4)];
    let mut conn = Connection::open_in_memory().unwrap();
    {
        let mut writer = SnapshotWriter::create(&mut conn).unwrap();
        for document in &delta_documents {
            writer.add_document(document).unwrap();
        }
        writer.finish(support::WATERMARK_US).unwrap();
    }
    delta::create_tables(&conn).unwrap();
    let bread_row: i64 = base
        .query_row(
            "SELECT id FROM documents WHERE uri = ?1",
            [&edited.uri],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        "INSERT INTO delta_masks (kind, id) VALUES (0, ?1)",
        [bread_row],
    )
    .unwrap();
    conn.execute_batch("ATTACH ':memory:' AS base").unwrap();
    let data = base.serialize("main").unwrap();
    conn.deserialize_read_exact("base", &data[..], data.len(), true)
        .unwrap();
    delta::finish(&conn, "base", "base-build", Some(&model)).unwrap();
    conn.execute_batch("DETACH base").unwrap();
    let delta = Delta::open(conn).unwrap();
    let layers = Layers {
        base: &base,
        delta: Some(&delta),
    };
    whole[0] = edited;
    let one = build(&whole, Some(&model));
    for q in ["yacht", "bread", "garden tomato", "bicycle wind"] {
        let params = [("q", q), ("mode", "semantic"), ("limit", "20")];
        assert_eq!(
            uris(layers, &params).unwrap(),
            uris(Layers::base(&one), &params).unwrap(),
            "{q}"
        );
    }
    // Hybrid ranks by keyword too, whose statistics still count a masked row until the next
    // base (ARCHITECTURE.md, "Deltas"); the edited post still comes once, as edited.
    let hybrid = search::search_layers(
        layers,
        &SearchRequest::from_params([("q", "bread"), ("mode", "hybrid")]).unwrap(),
        support::now(),
        &NoPrefetch,
    )
    .unwrap();
    let copies: Vec<_> = hybrid
        .results
        .iter()
        .filter(|result| result.uri == uri("did:plc:baker", "bread"))
        .collect();
    assert_eq!(copies.len(), 1);
    assert!(
        copies[0].snippet.contains("open crumb"),
        "{}",
        copies[0].snippet
    );
}

#[test]
fn a_build_without_a_model_refuses_semantic_search_by_name() {
    let conn = build(&corpus(), None);
    let error = uris(Layers::base(&conn), &[("q", "boat"), ("mode", "semantic")]).unwrap_err();
    assert!(matches!(error, SearchError::NoVectors), "{error}");
    assert!(uris(Layers::base(&conn), &[("q", "boat"), ("mode", "keyword")]).is_ok());
    let refused = SearchRequest::from_params([("q", "boat"), ("mode", "vector")]).unwrap_err();
    assert!(refused.to_string().contains("mode"), "{refused}");
}

/// Where the native run leaves its vectors and answers for the wasm run (as `parity.rs` does).
#[cfg(not(target_arch = "wasm32"))]
const NATIVE_VECTORS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/semantic-native.json");
#[cfg(target_arch = "wasm32")]
const NATIVE_VECTORS: &str = concat!(
    env!("CARGO_TARGET_TMPDIR"),
    "/../../tmp/semantic-native.json"
);

/// Texts embedded from the snapshot's tables, and semantic and hybrid answers, on this target.
fn embeddings_and_answers() -> serde_json::Value {
    let model = tiny_model();
    let conn = build(&corpus(), Some(&model));
    let stored = SnapshotModel::open(&conn, "main").unwrap().unwrap();
    let mut rng = support::Lcg::new(5);
    let texts: Vec<String> = (0..40)
        .map(|_| {
            (0..1 + rng.below(30))
                .map(|_| {
                    let topic = TOPICS[rng.below(TOPICS.len() as u64) as usize];
                    if rng.below(2) == 0 {
                        topic[rng.below(topic.len() as u64) as usize]
                    } else {
                        rng.word()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // As bit patterns: JSON's decimal floats would leave the comparison to the parser.
    let vectors: Vec<_> = texts
        .iter()
        .map(|text| {
            let bits = stored
                .embed(text)
                .unwrap()
                .map(|vector| vector.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
            (text.clone(), bits)
        })
        .collect();
    let answers: Vec<_> = texts
        .iter()
        .take(20)
        .flat_map(|text| {
            ["semantic", "hybrid"].map(|mode| {
                uris(Layers::base(&conn), &[("q", text.as_str()), ("mode", mode)]).unwrap()
            })
        })
        .collect();
    serde_json::json!({ "vectors": vectors, "answers": answers })
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn native_vectors_are_recorded() {
    let recorded = embeddings_and_answers();
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(NATIVE_VECTORS, recorded.to_string()).unwrap();
}

/// Tolerance: none. Both targets run the same f32 operations in the same order (IEEE 754, no
/// fused multiply-add), so every component matches bit for bit, and so does every ranking.
#[cfg(target_arch = "wasm32")]
#[test]
fn wasm_vectors_and_answers_match_native() {
    let native = support::node::read_file_sync(NATIVE_VECTORS, "utf8").unwrap_or_else(|e| {
        panic!("run the native tests first: cannot read {NATIVE_VECTORS}: {e:?}")
    });
    let native: serde_json::Value = serde_json::from_str(&native).unwrap();
    let wasm = embeddings_and_answers();
    let (native_vectors, wasm_vectors) = (
        native["vectors"].as_array().unwrap(),
        wasm["vectors"].as_array().unwrap(),
    );
    assert_eq!(native_vectors.len(), wasm_vectors.len());
    for (native, wasm) in native_vectors.iter().zip(wasm_vectors) {
        assert_eq!(native, wasm, "the vectors of {} differ", native[0]);
    }
    assert_eq!(native["answers"], wasm["answers"]);
}
