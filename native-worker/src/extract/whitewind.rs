//! WhiteWind: `com.whtwnd.blog.entry`, one markdown document per record.
//!
//! Only `visibility: public` entries (or entries without a visibility) are searchable; `url`
//! (unlisted) and `author` (private) entries are stored but never published.

use serde_json::{Map, Value};

use super::{DocumentParts, ExtractError, Fields, RecordRef, markdown};
use pubsearch_shared::Platform;

pub(super) fn entry(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
) -> Result<super::Document, ExtractError> {
    let content = fields.required_text("content")?;
    let visibility = fields.text("visibility")?.unwrap_or("public");
    Ok(DocumentParts {
        title: fields.text("title")?.unwrap_or_default().to_owned(),
        content: markdown::to_text(content),
        description: fields.optional_text("subtitle"),
        tags: fields.tags("tags"),
        created_at: fields.timestamp("createdAt"),
        updated_at: None,
        publication_uri: None,
        site_url: None,
        path: None,
        cover_image: None,
        platform: Some(Platform::Whitewind),
        searchable: visibility == "public",
    }
    .into_document(at))
}

#[cfg(test)]
mod tests {
    use super::super::{ExtractError, Extracted, extract};
    use serde_json::json;

    #[test]
    fn entries_are_markdown_and_respect_visibility() {
        let record = json!({"$type": "com.whtwnd.blog.entry", "title": "Hello", "content": "**bold** move",
                            "createdAt": "2024-09-09T09:09:09.999+09:00", "visibility": "public"});
        let Extracted::Document(doc) =
            extract("did:plc:w", "com.whtwnd.blog.entry", "3k", &record).unwrap()
        else {
            panic!()
        };
        assert_eq!((doc.content.as_str(), doc.searchable), ("bold move", true));
        assert_eq!(
            doc.created_at.unwrap().to_rfc3339(),
            "2024-09-09T00:09:09.999Z"
        );

        for hidden in ["url", "author"] {
            let record = json!({"content": "x", "visibility": hidden});
            let Extracted::Document(doc) =
                extract("did:plc:w", "com.whtwnd.blog.entry", "3k", &record).unwrap()
            else {
                panic!()
            };
            assert!(!doc.searchable, "{hidden}");
        }
    }

    #[test]
    fn content_must_be_text() {
        assert_eq!(
            extract(
                "did:plc:w",
                "com.whtwnd.blog.entry",
                "3k",
                &json!({"content": 42})
            ),
            Err(ExtractError::InvalidField {
                field: "content",
                expected: "a string"
            })
        );
        assert_eq!(
            extract(
                "did:plc:w",
                "com.whtwnd.blog.entry",
                "3k",
                &json!({"title": "x"})
            ),
            Err(ExtractError::MissingField("content"))
        );
    }
}
