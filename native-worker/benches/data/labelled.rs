//! The labelled set (`labelled.json`: hand-written documents in topics, and per topic a query
//! sharing words with them and a paraphrase), as documents of one author and date, so that only
//! what they say decides their rank. Shared by the quality bench and the model's tests
//! (`#[path]`-included).

use pubsearch_shared::snapshot::SnapshotDocument;
use pubsearch_shared::{Platform, Timestamp};

#[derive(serde::Deserialize)]
pub struct Labelled {
    pub topics: Vec<Topic>,
}

#[derive(serde::Deserialize)]
pub struct Topic {
    pub topic: String,
    pub docs: Vec<(String, String)>,
    /// The query sharing words with the documents, then the paraphrase.
    pub queries: Vec<String>,
}

/// The date every document carries (and the time searches are ranked at).
pub fn date() -> Timestamp {
    Timestamp::parse("2025-06-01").unwrap()
}

/// The set, parsed.
pub fn load() -> Labelled {
    serde_json::from_str(include_str!("labelled.json")).expect("the labelled set parses")
}

/// Every document, its `rkey` `<topic>-<n>`.
pub fn documents(labelled: &Labelled) -> Vec<SnapshotDocument> {
    let mut documents = Vec::new();
    for topic in &labelled.topics {
        for (n, (title, content)) in topic.docs.iter().enumerate() {
            let rkey = format!("{}-{n}", topic.topic);
            documents.push(SnapshotDocument {
                uri: format!("at://did:plc:eval/com.whtwnd.blog.entry/{rkey}"),
                did: "did:plc:eval".into(),
                rkey,
                collection: "com.whtwnd.blog.entry".into(),
                platform: Platform::Whitewind,
                title: title.clone(),
                content: content.clone(),
                created_at: date(),
                indexed_at_us: 1,
                publication_uri: None,
                base_path: None,
                path: None,
                tags: Vec::new(),
                cover_image: None,
            });
        }
    }
    documents
}
