//! Native and wasm answer every query identically.
//!
//! Both targets build the same fixture snapshot and run the same query set. The native run writes
//! its answers to `target/tmp/parity-native.json`; the wasm run (under node, after the native one)
//! reads that file through node's `fs` and compares answer by answer. The query set is mostly hits
//! (checked natively), so agreement is not agreement on empty pages.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::search::{self, SearchRequest};
use serde_json::{Value, json};

/// Where the native run leaves its answers. Cargo gives a `--target` build its own
/// `target/<triple>/tmp`, so the wasm run looks two levels up for the host's `target/tmp`.
#[cfg(not(target_arch = "wasm32"))]
const NATIVE_ANSWERS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/parity-native.json");
#[cfg(target_arch = "wasm32")]
const NATIVE_ANSWERS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/../../tmp/parity-native.json");

/// The query set: curated cases, every filter, paging, and a seeded sweep over the vocabulary.
fn queries() -> Vec<Vec<(String, String)>> {
    let mut queries: Vec<Vec<(&str, String)>> = vec![
        vec![("q", "ownership ".into())],
        vec![("q", "tomatoes".into())],
        vec![("q", "\"weekly notes\"".into())],
        vec![("q", "cafe zurich".into())],
        vec![("q", "tomato ".into()), ("type", "publication".into())],
        vec![
            ("q", "garden ".into()),
            ("limit", "40".into()),
            ("format", "v2".into()),
        ],
        vec![
            ("q", "garden ".into()),
            ("offset", "35".into()),
            ("limit", "10".into()),
            ("format", "v2".into()),
        ],
        vec![("q", "rust ".into()), ("platform", "leaflet".into())],
        vec![("q", "river ".into()), ("since", "2025-06-01".into())],
        vec![("q", "notes ".into()), ("author", "did:plc:gen3".into())],
        vec![("q", "coffee ".into()), ("tag", "music".into())],
        vec![
            ("q", "the ".into()),
            ("type", "looseleaf".into()),
            ("limit", "40".into()),
        ],
        vec![("q", "NEAR(rust wasm) title:x".into())],
    ];
    let mut rng = support::Lcg::new(99);
    for _ in 0..60 {
        let words = (0..1 + rng.below(3))
            .map(|_| rng.word())
            .collect::<Vec<_>>()
            .join(" ");
        let mut query = vec![("q", words)];
        match rng.below(5) {
            0 => query.push((
                "platform",
                ["leaflet", "pckt", "whitewind", "other"][rng.below(4) as usize].into(),
            )),
            1 => query.push(("offset", (rng.below(6) * 10).to_string())),
            2 => query.push(("tag", rng.word().into())),
            _ => {}
        }
        queries.push(query);
    }
    queries
        .into_iter()
        .map(|query| query.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        .collect()
}

fn answers() -> Vec<Value> {
    let conn = support::open_fixture();
    queries()
        .into_iter()
        .map(|params| {
            let request = SearchRequest::from_params(params.clone()).unwrap();
            let page = search::search(&conn, &request, support::now()).unwrap();
            json!({ "params": params, "page": page })
        })
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn native_answers_are_recorded() {
    let answers = answers();
    let with_results = answers
        .iter()
        .filter(|answer| !answer["page"]["results"].as_array().unwrap().is_empty())
        .count();
    assert!(
        with_results * 10 >= answers.len() * 8,
        "the query set must mostly hit: {with_results}/{}",
        answers.len()
    );
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::write(
        NATIVE_ANSWERS,
        serde_json::to_string_pretty(&answers).unwrap(),
    )
    .unwrap();
}

#[cfg(target_arch = "wasm32")]
#[test]
fn wasm_answers_match_native() {
    let native = support::node::read_file_sync(NATIVE_ANSWERS, "utf8").unwrap_or_else(|e| {
        panic!("run the native tests first: cannot read {NATIVE_ANSWERS}: {e:?}")
    });
    let native: Vec<Value> = serde_json::from_str(&native).unwrap();
    let wasm = answers();
    assert_eq!(
        native.len(),
        wasm.len(),
        "the query sets differ: rebuild both targets"
    );
    for (native, wasm) in native.iter().zip(&wasm) {
        assert_eq!(
            native, wasm,
            "native and wasm disagree on {}",
            native["params"]
        );
    }
}
