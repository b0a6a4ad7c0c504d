//! `site.standard.*`: the cross-platform publication and document lexicons written by pckt,
//! offprint, greengale and others.
//!
//! A document names its site by publication at-uri or by URL; only a URL tells the platform on
//! its own. Content is an open union: leaflet pages and markdown are read, anything else falls
//! back to the writer-provided `textContent`, then to the description.

use serde_json::{Map, Value};

use super::{
    DocumentParts, ExtractError, Fields, Publication, RecordRef, base_path_of_url, leaflet,
    markdown,
};
use pubsearch_shared::Platform;

pub(super) fn publication(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
) -> Result<Publication, ExtractError> {
    let name = fields.required_text("name")?;
    let url = fields.required_text("url")?;
    let base_path = base_path_of_url(url).ok_or(ExtractError::InvalidField {
        field: "url",
        expected: "an https URL",
    })?;
    let platform = Platform::from_host(&base_path);
    Ok(super::publication(
        at,
        fields,
        name,
        Some(base_path),
        platform,
    ))
}

pub(super) fn document(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
) -> Result<super::Document, ExtractError> {
    let title = fields.required_text("title")?;
    let site = fields.required_text("site")?;
    let (publication_uri, site_url) = if site.starts_with("at://") {
        (Some(site.to_owned()), None)
    } else if base_path_of_url(site).is_some() {
        (None, Some(site.trim().to_owned()))
    } else {
        return Err(ExtractError::InvalidField {
            field: "site",
            expected: "a publication at-uri or an https URL",
        });
    };
    let description = fields.optional_text("description");
    let text_content = fields
        .get("textContent")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let content = fields
        .get("content")
        .map(content_text)
        .filter(|text| !text.trim().is_empty())
        .or(text_content.filter(|text| !text.trim().is_empty()))
        .or_else(|| description.clone())
        .unwrap_or_default();
    let path = fields.optional_text("path").map(|path| {
        if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        }
    });
    Ok(DocumentParts {
        platform: site_url
            .as_deref()
            .and_then(base_path_of_url)
            .map(|base| Platform::from_host(&base)),
        publication_uri,
        site_url,
        path,
        ..DocumentParts::published(fields, title, content, description)
    }
    .into_document(at))
}

/// Text of a `content` union member; empty for kinds we cannot read.
fn content_text(content: &Value) -> String {
    let kind = content
        .get("$type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind == "pub.leaflet.content" || content.get("pages").is_some_and(Value::is_array) {
        return leaflet::flatten_pages(content.get("pages").unwrap_or(&Value::Null));
    }
    let markdown_field = ["markdown", "text", "value"]
        .iter()
        .find_map(|name| content.get(*name).and_then(Value::as_str));
    match markdown_field {
        Some(source)
            if kind.to_ascii_lowercase().contains("markdown")
                || content.get("markdown").is_some() =>
        {
            markdown::to_text(source)
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Extracted, extract};
    use pubsearch_shared::Platform;
    use serde_json::json;

    fn doc(record: serde_json::Value) -> super::super::Document {
        match extract("did:plc:bob", "site.standard.document", "3kdoc", &record).unwrap() {
            Extracted::Document(doc) => doc,
            Extracted::Publication(_) => panic!("not a document"),
        }
    }

    #[test]
    fn publications_take_platform_from_their_url() {
        let record =
            json!({"name": "Bob", "url": "https://bob.pckt.blog/", "description": "notes"});
        let Extracted::Publication(publication) =
            extract("did:plc:bob", "site.standard.publication", "3kpub", &record).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (publication.platform, publication.base_path.as_deref()),
            (Platform::Pckt, Some("bob.pckt.blog"))
        );
        assert!(publication.discoverable);
        let error = extract(
            "did:plc:bob",
            "site.standard.publication",
            "k",
            &json!({"name": "x", "url": "nope"}),
        );
        assert!(error.is_err());
    }

    #[test]
    fn content_union_members_are_read_or_fall_back() {
        let leaflet = doc(
            json!({"site": "at://did:plc:bob/site.standard.publication/3kpub", "title": "T",
            "content": {"$type": "pub.leaflet.content", "pages": [{"blocks": [{"block": {"plaintext": "from blocks"}}]}]},
            "textContent": "from text content", "publishedAt": "2025-01-01T00:00:00Z", "path": "hello-world"}),
        );
        assert_eq!(leaflet.content, "from blocks");
        assert_eq!(leaflet.path.as_deref(), Some("/hello-world"));
        assert_eq!(
            leaflet.platform, None,
            "platform comes from the linked publication"
        );

        let markdown = doc(json!({"site": "https://example.com/blog", "title": "T",
            "content": {"$type": "app.greengale.content#markdown", "markdown": "## Hi\n\n*there*"}}));
        assert_eq!(markdown.content, "Hi\nthere");
        assert_eq!(
            markdown.site_url.as_deref(),
            Some("https://example.com/blog")
        );
        assert_eq!(markdown.platform, Some(Platform::Other));

        let unknown = doc(json!({"site": "https://x.offprint.app", "title": "T",
            "content": {"$type": "app.offprint.richtext", "nodes": []}, "textContent": "plain words"}));
        assert_eq!(
            (unknown.content.as_str(), unknown.platform),
            ("plain words", Some(Platform::Offprint))
        );

        let bare = doc(
            json!({"site": "https://x.greengale.app", "title": "T", "description": "only this"}),
        );
        assert_eq!(bare.content, "only this");
    }

    #[test]
    fn a_site_must_be_an_at_uri_or_url() {
        let error = extract(
            "did:plc:b",
            "site.standard.document",
            "k",
            &json!({"site": "somewhere", "title": "T"}),
        );
        assert!(error.unwrap_err().to_string().contains("site"));
    }
}
