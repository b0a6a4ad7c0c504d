//! Leaflet: `pub.leaflet.publication`, `pub.leaflet.document`, and the page/block tree that
//! `site.standard.document` content of type `pub.leaflet.content` reuses.
//!
//! Text lives in `plaintext` fields of blocks (text, header, blockquote, code, list items, …);
//! lists nest through `children`. Unknown block types contribute whatever `plaintext` they carry,
//! so new block kinds are searchable before this code learns their names.

use serde_json::{Map, Value};

use super::{DocumentParts, ExtractError, Fields, Publication, RecordRef};
use pubsearch_shared::Platform;

/// How deep block trees are followed; deeper nesting is abuse, not writing.
const MAX_DEPTH: usize = 32;

pub(super) fn publication(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
) -> Result<Publication, ExtractError> {
    let name = fields.required_text("name")?;
    let base_path = fields
        .text("base_path")?
        .map(|base| {
            // A bare host by the lexicon, but some records carry a scheme; links add https://.
            base.trim()
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_ascii_lowercase()
        })
        .filter(|base| !base.is_empty());
    let platform = base_path
        .as_deref()
        .map(Platform::from_host)
        .filter(|platform| *platform != Platform::Other)
        .unwrap_or(Platform::Leaflet);
    Ok(super::publication(at, fields, name, base_path, platform))
}

pub(super) fn document(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
) -> Result<super::Document, ExtractError> {
    let title = fields.required_text("title")?;
    let pages = match fields.get("pages") {
        None | Some(Value::Null) => None,
        Some(pages @ Value::Array(_)) => Some(pages),
        Some(_) => {
            return Err(ExtractError::InvalidField {
                field: "pages",
                expected: "an array of pages",
            });
        }
    };
    let description = fields.optional_text("description");
    let mut content = pages.map(flatten_pages).unwrap_or_default();
    if content.trim().is_empty() {
        content = description.clone().unwrap_or_default();
    }
    let publication_uri = fields
        .text("publication")?
        .filter(|uri| uri.starts_with("at://"))
        .map(str::to_owned);
    Ok(DocumentParts {
        publication_uri,
        // Leaflet documents live on leaflet whichever host serves their publication.
        platform: Some(Platform::Leaflet),
        ..DocumentParts::published(fields, title, content, description)
    }
    .into_document(at))
}

/// Plain text of a `pages` array: every block's `plaintext`, one block per line.
pub(super) fn flatten_pages(pages: &Value) -> String {
    let mut lines = Vec::new();
    for page in pages.as_array().into_iter().flatten() {
        for block in page
            .get("blocks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Linear documents wrap each block as {block: {...}}; canvases add positions.
            collect_text(block.get("block").unwrap_or(block), 0, &mut lines);
        }
    }
    lines.join("\n")
}

fn collect_text(node: &Value, depth: usize, lines: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(object) = node.as_object() else {
        return;
    };
    if let Some(text) = object.get("plaintext").and_then(Value::as_str) {
        let text = text.trim();
        if !text.is_empty() {
            lines.push(text.to_owned());
        }
    }
    // List items keep their text under `content`; nested lists under `children`.
    if let Some(content) = object.get("content") {
        collect_text(content, depth + 1, lines);
    }
    for child in object
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        collect_text(child, depth + 1, lines);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Extracted, extract};
    use serde_json::json;

    fn document_fixture() -> serde_json::Value {
        json!({
            "$type": "pub.leaflet.document",
            "title": "Growing  tomatoes",
            "author": "did:plc:alice",
            "publication": "at://did:plc:alice/pub.leaflet.publication/3kpub",
            "publishedAt": "2025-03-01T10:00:00.000Z",
            "description": "A season in the garden",
            "tags": ["Gardening", "#gardening", 7, "food"],
            "pages": [{
                "$type": "pub.leaflet.pages.linearDocument",
                "blocks": [
                    {"$type": "pub.leaflet.pages.linearDocument#block",
                     "block": {"$type": "pub.leaflet.blocks.header", "level": 1, "plaintext": "Spring"}},
                    {"block": {"$type": "pub.leaflet.blocks.text", "plaintext": "Stake them early.", "facets": []}},
                    {"block": {"$type": "pub.leaflet.blocks.unorderedList", "children": [
                        {"content": {"$type": "pub.leaflet.blocks.text", "plaintext": "Water at the roots"},
                         "children": [{"content": {"$type": "pub.leaflet.blocks.text", "plaintext": "mornings only"}}]}
                    ]}},
                    {"block": {"$type": "pub.leaflet.blocks.image", "image": {"$type": "blob"}, "alt": "tomatoes"}},
                    {"block": {"$type": "pub.leaflet.blocks.code", "language": "rust", "plaintext": "fn grow() {}"}},
                    {"block": {"$type": "pub.leaflet.blocks.someFutureBlock", "plaintext": "Future text"}}
                ]
            }]
        })
    }

    #[test]
    fn documents_flatten_every_block_in_order() {
        let Extracted::Document(doc) = extract(
            "did:plc:alice",
            "pub.leaflet.document",
            "3kdoc",
            &document_fixture(),
        )
        .unwrap() else {
            panic!("not a document")
        };
        assert_eq!(doc.title, "Growing tomatoes");
        assert_eq!(
            doc.content,
            "Spring\nStake them early.\nWater at the roots\nmornings only\nfn grow() {}\nFuture text"
        );
        assert_eq!(doc.tags, ["gardening", "food"]);
        assert_eq!(
            doc.publication_uri.as_deref(),
            Some("at://did:plc:alice/pub.leaflet.publication/3kpub")
        );
        assert_eq!(
            doc.created_at.unwrap().to_rfc3339(),
            "2025-03-01T10:00:00.000Z"
        );
        assert_eq!(doc.platform, Some(pubsearch_shared::Platform::Leaflet));
        assert_eq!(doc.uri, "at://did:plc:alice/pub.leaflet.document/3kdoc");
    }

    #[test]
    fn publications_carry_base_path_and_discovery() {
        let record = json!({"name": "Alice's garden", "base_path": "alice.leaflet.pub",
                            "preferences": {"showInDiscover": false}});
        let Extracted::Publication(publication) =
            extract("did:plc:alice", "pub.leaflet.publication", "3kpub", &record).unwrap()
        else {
            panic!("not a publication")
        };
        assert_eq!(publication.base_path.as_deref(), Some("alice.leaflet.pub"));
        assert!(!publication.discoverable);
        assert_eq!(publication.platform, pubsearch_shared::Platform::Leaflet);
        for written in ["http://Alice.leaflet.pub/", "https://alice.leaflet.pub"] {
            let record = json!({"name": "Alice's garden", "base_path": written});
            let Ok(Extracted::Publication(publication)) =
                extract("did:plc:alice", "pub.leaflet.publication", "3kpub", &record)
            else {
                panic!("not a publication")
            };
            assert_eq!(publication.base_path.as_deref(), Some("alice.leaflet.pub"));
        }
    }

    #[test]
    fn malformed_documents_name_the_field() {
        let error = extract(
            "did:plc:a",
            "pub.leaflet.document",
            "k",
            &json!({"pages": []}),
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "required field \"title\" is missing");
        let error = extract(
            "did:plc:a",
            "pub.leaflet.document",
            "k",
            &json!({"title": "x", "pages": "no"}),
        )
        .unwrap_err();
        assert!(error.to_string().contains("pages"));
    }
}
