//! Property tests of extraction: any JSON value, and any mutation of a realistic record, gives
//! either a typed error or an extraction that keeps every rule (the record's own URI, the kind
//! its collection holds, the length limits, the text hash of what it kept), the same one every
//! time; a field extraction does not read never changes what it gives.
use proptest::prelude::*;
use pubsearch_native_worker::extract::{self, ExtractError, Extracted};
use serde_json::{Value, json};

const DID: &str = "did:plc:p";
const RKEY: &str = "rk";

/// Extracts `value` twice and checks the outcome against the rules every extraction keeps.
fn checked(collection: &str, value: &Value) -> Result<Result<Extracted, String>, TestCaseError> {
    let outcome = extract::extract(DID, collection, RKEY, value);
    prop_assert_eq!(
        &outcome,
        &extract::extract(DID, collection, RKEY, value),
        "deterministic"
    );
    let extracted = match outcome {
        Err(error) => {
            prop_assert!(!error.to_string().is_empty(), "errors explain themselves");
            if !value.is_object() {
                prop_assert!(matches!(error, ExtractError::NotAnObject));
            }
            return Ok(Err(error.to_string()));
        }
        Ok(extracted) => extracted,
    };
    prop_assert!(value.is_object(), "only objects are records");
    prop_assert!(collection != "app.bsky.feed.post", "posts are not indexed");
    let uri = extract::at_uri(DID, collection, RKEY);
    match &extracted {
        Extracted::Document(doc) => {
            prop_assert!(!extract::is_publication_collection(collection));
            prop_assert_eq!(&doc.uri, &uri);
            prop_assert_eq!(
                (&*doc.did, &*doc.rkey, &*doc.collection),
                (DID, RKEY, collection)
            );
            prop_assert!(doc.content.chars().count() <= extract::MAX_CONTENT_CHARS);
            prop_assert!(doc.title.chars().count() <= extract::MAX_TITLE_CHARS);
            prop_assert!(doc.tags.len() <= extract::MAX_TAGS);
            prop_assert_eq!(
                &doc.content_hash,
                &extract::content_hash(&doc.title, &doc.content)
            );
        }
        Extracted::Publication(publication) => {
            prop_assert!(extract::is_publication_collection(collection));
            prop_assert_eq!(&publication.uri, &uri);
            prop_assert_eq!(
                (
                    &*publication.did,
                    &*publication.rkey,
                    &*publication.collection
                ),
                (DID, RKEY, collection)
            );
        }
    }
    Ok(Ok(extracted))
}

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
    fn any_json_extracts_by_the_rules_or_errors(collection in prop::sample::select(COLLECTIONS), value in json_value()) {
        let _outcome = checked(collection, &value)?;
    }

    #[test]
    fn mutated_records_extract_by_the_rules_or_error(seed in 0usize..4, field in "[a-zA-Z$]{1,12}", replacement in json_value()) {
        let (collection, mut value) = seeds().swap_remove(seed);
        let key = value.as_object().unwrap().keys().nth(field.len() % 3).cloned().unwrap_or(field);
        value[key] = replacement;
        let _outcome = checked(collection, &value)?;
    }

    #[test]
    fn a_field_extraction_does_not_read_changes_nothing(seed in 0usize..4, field in "[a-z]{1,12}", extra in json_value()) {
        let (collection, mut value) = seeds().swap_remove(seed);
        let seed_outcome = checked(collection, &value)?;
        prop_assert!(seed_outcome.is_ok(), "every seed record extracts");
        value[format!("x-unknown-{field}")] = extra;
        prop_assert_eq!(checked(collection, &value)?, seed_outcome);
    }
}
