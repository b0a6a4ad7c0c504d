//! Property test: extraction never panics. Any JSON value, and any mutation of a realistic record,
//! gives an extraction or an error.
use proptest::prelude::*;
use pubsearch_native_worker::extract::{self, Extracted};
use serde_json::{Value, json};

const COLLECTIONS: &[&str] = &[
    "pub.leaflet.publication",
    "pub.leaflet.document",
    "site.standard.publication",
    "site.standard.document",
    "com.whtwnd.blog.entry",
    "app.bsky.feed.post",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
        prop::sample::select(vec![
            "https://a.pckt.blog/",
            "at://did:plc:x/site.standard.publication/p",
            "2024-01-01T00:00:00Z",
            "public",
            "url"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        let keys = prop::sample::select(vec![
            "title",
            "content",
            "pages",
            "blocks",
            "block",
            "plaintext",
            "children",
            "site",
            "url",
            "name",
            "textContent",
            "tags",
            "publishedAt",
            "createdAt",
            "visibility",
            "preferences",
            "showInDiscover",
            "$type",
            "markdown",
            "coverImage",
            "ref",
            "$link",
            "base_path",
            "path",
            "description",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..8).prop_map(|map| Value::Object(
                map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

/// Realistic records to mutate.
fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "pub.leaflet.document",
            json!({"title": "T", "pages": [{"blocks": [{"block": {"plaintext": "x",
            "children": [{"content": {"plaintext": "y"}}]}}]}], "tags": ["a"], "publishedAt": "2024-01-01T00:00:00Z"}),
        ),
        (
            "site.standard.document",
            json!({"title": "T", "site": "https://a.pckt.blog", "path": "/p",
            "content": {"$type": "x#markdown", "markdown": "# h"}, "textContent": "t"}),
        ),
        (
            "com.whtwnd.blog.entry",
            json!({"title": "T", "content": "**x**", "visibility": "public"}),
        ),
        (
            "site.standard.publication",
            json!({"name": "N", "url": "https://b.offprint.app"}),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_json_extracts_or_errors(collection in prop::sample::select(COLLECTIONS), value in json_value()) {
        if let Ok(extracted) = extract::extract("did:plc:p", collection, "rk", &value) {
            match extracted {
                Extracted::Document(doc) => {
                    prop_assert!(doc.content.chars().count() <= extract::MAX_CONTENT_CHARS);
                    prop_assert!(doc.title.chars().count() <= extract::MAX_TITLE_CHARS);
                    prop_assert!(doc.tags.len() <= extract::MAX_TAGS);
                    prop_assert_eq!(doc.content_hash.len(), 32);
                }
                Extracted::Publication(publication) => prop_assert!(!publication.uri.is_empty()),
            }
        }
    }

    #[test]
    fn mutated_records_extract_or_error(seed in 0usize..4, field in "[a-zA-Z$]{1,12}", replacement in json_value()) {
        let (collection, mut value) = seeds().swap_remove(seed);
        let key = value.as_object().unwrap().keys().nth(field.len() % 3).cloned().unwrap_or(field);
        value[key] = replacement;
        let _ = extract::extract("did:plc:p", collection, "rk", &value);
    }
}
