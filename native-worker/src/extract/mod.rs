//! Record extraction, the stage between the sources and the store (ARCHITECTURE.md, "Stages"):
//! every collection pubsearch indexes, turned into one normalised [`Document`] or
//! [`Publication`]. Native only: the Worker never sees a record.
//!
//! Records come from strangers' repos, so nothing here trusts its input: any JSON value gives
//! either an extraction or an [`ExtractError`] naming what was wrong, never a panic. Optional
//! fields that are malformed (a bad date, a non-string tag) are dropped; only a record that cannot
//! be a document at all is an error.
//!
//! - [`leaflet`]: `pub.leaflet.publication`, `pub.leaflet.document` and the block tree both
//!   leaflet and `site.standard` content use.
//! - [`standard`]: `site.standard.publication` and `site.standard.document`.
//! - [`whitewind`]: WhiteWind blog entries (`com.whtwnd.blog.entry`).
//! - [`markdown`]: markdown to searchable plain text.

mod leaflet;
mod markdown;
mod standard;
mod whitewind;

use serde_json::{Map, Value};

use pubsearch_shared::Platform;
use pubsearch_shared::Timestamp;
use pubsearch_shared::schema::normalize_tag;

/// Longest content kept, in characters (the snapshot's limit); longer text is cut on a character
/// boundary.
pub use pubsearch_shared::content::MAX_CONTENT_CHARS;
/// Longest title kept, in characters.
pub const MAX_TITLE_CHARS: usize = 1_000;
/// Most tags kept per document.
pub const MAX_TAGS: usize = 20;

/// What a record extracts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted {
    Document(Document),
    Publication(Publication),
}

/// A document (an article or a standalone post), normalised across platforms.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `at://{did}/{collection}/{rkey}`.
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub collection: String,
    pub title: String,
    /// Plain text flattened from blocks, markdown or `textContent`.
    pub content: String,
    pub description: Option<String>,
    /// Normalised with [`normalize_tag`], deduplicated, in first-seen order.
    pub tags: Vec<String>,
    /// When the author says it was published (`publishedAt` / `createdAt`).
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    /// The publication record this document belongs to, when it names one by at-uri.
    pub publication_uri: Option<String>,
    /// The site URL, when a `site.standard.document` names its site by URL instead.
    pub site_url: Option<String>,
    pub path: Option<String>,
    /// An image URL or blob CID.
    pub cover_image: Option<String>,
    /// Set when the record alone decides the platform; `None` when the linked publication's
    /// host does (resolved at snapshot build time).
    pub platform: Option<Platform>,
    /// `false` for records their authors did not make public (e.g. whitewind `visibility`).
    pub searchable: bool,
    /// Hex digest of the normalised title and content: equal for cross-posted copies.
    pub content_hash: String,
}

/// A publication (a blog), normalised across platforms.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub uri: String,
    pub did: String,
    pub rkey: String,
    pub collection: String,
    pub name: String,
    pub description: String,
    /// Host and path where its documents live (`alice.leaflet.pub`, `example.com/blog`).
    pub base_path: Option<String>,
    pub platform: Platform,
    /// `false` when the author opted out of discovery (`preferences.showInDiscover: false`).
    pub discoverable: bool,
    pub created_at: Option<Timestamp>,
}

/// Why a record could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("collection {0:?} is not one pubsearch indexes")]
    UnknownCollection(String),
    #[error("record is not a JSON object")]
    NotAnObject,
    #[error("required field {0:?} is missing")]
    MissingField(&'static str),
    #[error("field {field:?} should be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
}

/// Every collection [`extract`] reads, publications before documents (a backfill copies them in
/// this order, so a publication is stored before the posts that name it).
pub const COLLECTIONS: [&str; 5] = [
    "pub.leaflet.publication",
    "site.standard.publication",
    "pub.leaflet.document",
    "site.standard.document",
    "com.whtwnd.blog.entry",
];

/// Extracts a record from `collection` in `did`'s repo at `rkey`.
pub fn extract(
    did: &str,
    collection: &str,
    rkey: &str,
    record: &Value,
) -> Result<Extracted, ExtractError> {
    let fields = record.as_object().ok_or(ExtractError::NotAnObject)?;
    let at = RecordRef {
        did,
        collection,
        rkey,
    };
    match collection {
        "pub.leaflet.publication" => leaflet::publication(&at, fields).map(Extracted::Publication),
        "pub.leaflet.document" => leaflet::document(&at, fields).map(Extracted::Document),
        "site.standard.publication" => {
            standard::publication(&at, fields).map(Extracted::Publication)
        }
        "site.standard.document" => standard::document(&at, fields).map(Extracted::Document),
        "com.whtwnd.blog.entry" => whitewind::entry(&at, fields).map(Extracted::Document),
        other => Err(ExtractError::UnknownCollection(
            other.chars().take(128).collect(),
        )),
    }
}

/// Whether `collection` holds publications (as opposed to documents).
pub fn is_publication_collection(collection: &str) -> bool {
    matches!(
        collection,
        "pub.leaflet.publication" | "site.standard.publication"
    )
}

/// Where a record lives.
struct RecordRef<'a> {
    did: &'a str,
    collection: &'a str,
    rkey: &'a str,
}

impl RecordRef<'_> {
    fn uri(&self) -> String {
        at_uri(self.did, self.collection, self.rkey)
    }
}

/// A record's `at://` URI, the key documents and publications are stored and looked up by.
pub fn at_uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

/// Accessors that tolerate absent optional fields but refuse wrongly-typed required ones.
trait Fields {
    fn text(&self, name: &'static str) -> Result<Option<&str>, ExtractError>;
    fn required_text(&self, name: &'static str) -> Result<&str, ExtractError>;
    fn optional_text(&self, name: &str) -> Option<String>;
    fn timestamp(&self, name: &str) -> Option<Timestamp>;
    fn tags(&self, name: &str) -> Vec<String>;
    fn show_in_discover(&self) -> bool;
}

impl Fields for Map<String, Value> {
    fn text(&self, name: &'static str) -> Result<Option<&str>, ExtractError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ExtractError::InvalidField {
                field: name,
                expected: "a string",
            }),
        }
    }

    fn required_text(&self, name: &'static str) -> Result<&str, ExtractError> {
        self.text(name)?.ok_or(ExtractError::MissingField(name))
    }

    fn optional_text(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(Value::as_str)
            .map(clean_line)
            .filter(|text| !text.is_empty())
    }

    fn timestamp(&self, name: &str) -> Option<Timestamp> {
        self.get(name)
            .and_then(Value::as_str)
            .and_then(|text| Timestamp::parse(text).ok())
    }

    fn tags(&self, name: &str) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for tag in self
            .get(name)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(tag) = tag.as_str().and_then(normalize_tag)
                && !tags.contains(&tag)
                && tags.len() < MAX_TAGS
            {
                tags.push(tag);
            }
        }
        tags
    }

    fn show_in_discover(&self) -> bool {
        self.get("preferences")
            .and_then(|preferences| preferences.get("showInDiscover"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }
}

/// A single-line field: control characters become spaces, runs of whitespace collapse.
fn clean_line(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Body text: control characters other than newlines and tabs removed, length capped.
fn clean_body(text: &str) -> String {
    let kept = |c: &char| !c.is_control() || *c == '\n' || *c == '\t';
    // Almost all text is already clean and short enough: copy it whole, not char by char.
    let mut body = if text.len() <= MAX_CONTENT_CHARS && text.chars().all(|c| kept(&c)) {
        text.to_owned()
    } else {
        text.chars().filter(kept).take(MAX_CONTENT_CHARS).collect()
    };
    body.truncate(body.trim_end().len());
    body
}

fn clean_title(text: &str) -> String {
    clean_line(text).chars().take(MAX_TITLE_CHARS).collect()
}

/// A blob reference's CID (`{"$type":"blob","ref":{"$link":"bafy…"}}`) or a plain URL string.
fn image_ref(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(url) if url.starts_with("https://") => Some(url.clone()),
        Value::Object(blob) => blob
            .get("ref")
            .and_then(|reference| reference.get("$link"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// Host and path of an `https://` URL without a trailing slash, as a base path.
fn base_path_of_url(url: &str) -> Option<String> {
    let rest = url
        .trim()
        .strip_prefix("https://")
        .or_else(|| url.trim().strip_prefix("http://"))?;
    let rest = rest
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let host = rest.split('/').next().unwrap_or_default();
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| rest.to_ascii_lowercase())
}

/// Hex SHA-256 of lowercase, whitespace-collapsed title and content: what marks cross-posted
/// copies of one text. Public so a delta can find the copies of a text from a snapshot's title
/// and content (see `publish::delta`).
pub fn content_hash(title: &str, content: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    // The hashed text: the lowercased title, a newline, then each lowercased word and a space.
    // Built in one buffer and hashed once; word-by-word hashing cost more than the extraction.
    let mut text = clean_line(title).to_lowercase();
    text.reserve(content.len() + 1);
    text.push('\n');
    for word in content.split_whitespace() {
        let start = text.len();
        if word.is_ascii() {
            text.push_str(word);
            text[start..].make_ascii_lowercase();
        } else {
            text.push_str(&word.to_lowercase());
        }
        text.push(' ');
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..16]
        .iter()
        .fold(String::with_capacity(32), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Assembles a publication from the fields every publication lexicon shares.
fn publication(
    at: &RecordRef<'_>,
    fields: &Map<String, Value>,
    name: &str,
    base_path: Option<String>,
    platform: Platform,
) -> Publication {
    Publication {
        uri: at.uri(),
        did: at.did.to_owned(),
        rkey: at.rkey.to_owned(),
        collection: at.collection.to_owned(),
        name: clean_line(name),
        description: fields.optional_text("description").unwrap_or_default(),
        base_path,
        platform,
        discoverable: fields.show_in_discover(),
        created_at: fields.timestamp("createdAt"),
    }
}

/// Assembles a document once a platform module has found its parts.
struct DocumentParts {
    title: String,
    content: String,
    description: Option<String>,
    tags: Vec<String>,
    created_at: Option<Timestamp>,
    updated_at: Option<Timestamp>,
    publication_uri: Option<String>,
    site_url: Option<String>,
    path: Option<String>,
    cover_image: Option<String>,
    platform: Option<Platform>,
    searchable: bool,
}

impl DocumentParts {
    /// The parts every publishing lexicon (leaflet, site.standard) records the same way: tags,
    /// `publishedAt` (else `createdAt`), `updatedAt` and `coverImage`. Platform-specific parts
    /// are filled in by the caller.
    fn published(
        fields: &Map<String, Value>,
        title: &str,
        content: String,
        description: Option<String>,
    ) -> Self {
        DocumentParts {
            title: title.to_owned(),
            content,
            description,
            tags: fields.tags("tags"),
            created_at: fields
                .timestamp("publishedAt")
                .or_else(|| fields.timestamp("createdAt")),
            updated_at: fields.timestamp("updatedAt"),
            publication_uri: None,
            site_url: None,
            path: None,
            cover_image: image_ref(fields.get("coverImage")),
            platform: None,
            searchable: true,
        }
    }

    fn into_document(self, at: &RecordRef<'_>) -> Document {
        let title = clean_title(&self.title);
        let content = clean_body(&self.content);
        Document {
            uri: at.uri(),
            did: at.did.to_owned(),
            rkey: at.rkey.to_owned(),
            collection: at.collection.to_owned(),
            content_hash: content_hash(&title, &content),
            title,
            content,
            description: self.description,
            tags: self.tags,
            created_at: self.created_at,
            updated_at: self.updated_at,
            publication_uri: self.publication_uri,
            site_url: self.site_url,
            path: self.path,
            cover_image: self.cover_image,
            platform: self.platform,
            searchable: self.searchable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_collections_and_non_objects_are_errors() {
        assert_eq!(
            extract("did:plc:a", "app.bsky.feed.post", "k", &json!({})),
            Err(ExtractError::UnknownCollection("app.bsky.feed.post".into()))
        );
        assert_eq!(
            extract("did:plc:a", "com.whtwnd.blog.entry", "k", &json!([1])),
            Err(ExtractError::NotAnObject)
        );
    }

    #[test]
    fn cross_posts_hash_equal_despite_case_and_spacing() {
        assert_eq!(
            content_hash("Hello  World", "a  b\nc"),
            content_hash("hello world", "A b c")
        );
        assert_ne!(content_hash("Hello", "a b"), content_hash("Hello", "a c"));
    }

    /// The hash as first defined (word by word), so stored hashes stay comparable.
    fn reference_hash(title: &str, content: &str) -> String {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(clean_line(title).to_lowercase().as_bytes());
        hasher.update(b"\n");
        for word in content.split_whitespace() {
            hasher.update(word.to_lowercase().as_bytes());
            hasher.update(b" ");
        }
        hasher.finalize()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    #[test]
    fn the_hash_is_unchanged_from_its_first_definition() {
        for (title, content) in [
            ("", ""),
            ("Hello  World", "a  b\nc"),
            ("ΣΊΣΥΦΟΣ", "ΟΔΥΣΣΕΑΣ  Straße\tİstanbul ǅemal"),
            ("mixed Ünïcödé", "ascii AND Ünïcödé words\u{85}together"),
        ] {
            assert_eq!(content_hash(title, content), reference_hash(title, content));
        }
    }

    #[test]
    fn body_cleaning_drops_control_characters_and_caps_length() {
        assert_eq!(clean_body("a\u{0}b\u{85}c\n\td  \n"), "abc\n\td");
        assert_eq!(clean_body("plain text\n"), "plain text");
        let long = "é".repeat(MAX_CONTENT_CHARS + 5);
        assert_eq!(clean_body(&long).chars().count(), MAX_CONTENT_CHARS);
    }

    #[test]
    fn base_paths_come_from_urls() {
        assert_eq!(
            base_path_of_url("https://Alice.pckt.blog/"),
            Some("alice.pckt.blog".into())
        );
        assert_eq!(
            base_path_of_url("https://example.com/blog/?x=1"),
            Some("example.com/blog".into())
        );
        assert_eq!(
            base_path_of_url("at://did:plc:a/site.standard.publication/x"),
            None
        );
    }
}
