//! A deterministic fixture corpus shared by the native and wasm test runs.
//!
//! Hand-written documents pin down specific behaviours (title weighting, recency, cross-post
//! dedup, diacritics, escaping, policy flags); a seeded generator adds a few hundred varied
//! documents so paging and filters have depth. Nothing here reads a clock or the environment, so
//! both targets build byte-identical snapshots.
#![allow(dead_code)]

use pubsearch_shared::Platform;
use pubsearch_shared::Timestamp;
use pubsearch_shared::search;
use pubsearch_shared::snapshot::{SnapshotDocument, SnapshotPublication, SnapshotWriter};
use rusqlite::Connection;

/// The instant every fixture search is ranked at.
pub fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
}

/// The instant `days` days before [`now`].
pub fn days_ago(days: i64) -> Timestamp {
    Timestamp::from_unix_millis(now().unix_millis() - days * 86_400_000).unwrap()
}

/// Source watermark stamped on the fixture snapshot.
pub const WATERMARK_US: i64 = 1_780_000_000_000_000;

pub struct DocSpec {
    pub did: &'static str,
    pub rkey: &'static str,
    pub platform: Platform,
    pub title: &'static str,
    pub content: &'static str,
    pub age_days: i64,
    pub publication: Option<&'static str>,
    pub tags: &'static [&'static str],
}

fn document(spec: &DocSpec) -> SnapshotDocument {
    let collection = match spec.platform {
        Platform::Whitewind => "com.whtwnd.blog.entry",
        Platform::Leaflet => "pub.leaflet.document",
        _ => "site.standard.document",
    };
    let base_path = spec
        .publication
        .map(|name| format!("{name}.{}", host(spec.platform)));
    SnapshotDocument {
        uri: format!("at://{}/{collection}/{}", spec.did, spec.rkey),
        did: spec.did.into(),
        rkey: spec.rkey.into(),
        collection: collection.into(),
        platform: spec.platform,
        title: spec.title.into(),
        content: spec.content.into(),
        created_at: days_ago(spec.age_days),
        indexed_at_us: WATERMARK_US - 1_000,
        publication_uri: spec
            .publication
            .map(|name| format!("at://{}/site.standard.publication/{name}", spec.did)),
        base_path,
        path: matches!(
            spec.platform,
            Platform::Pckt | Platform::Offprint | Platform::Greengale
        )
        .then(|| format!("/{}", spec.rkey)),
        tags: spec.tags.iter().map(|tag| tag.to_string()).collect(),
        cover_image: None,
    }
}

fn host(platform: Platform) -> &'static str {
    match platform {
        Platform::Leaflet => "leaflet.pub",
        Platform::Pckt => "pckt.blog",
        Platform::Offprint => "offprint.app",
        Platform::Greengale => "greengale.app",
        Platform::Whitewind => "whtwnd.com",
        Platform::Other => "example.com",
    }
}

/// Documents each written to pin one behaviour.
pub const CURATED: &[DocSpec] = &[
    DocSpec {
        did: "did:plc:alice",
        rkey: "own1",
        platform: Platform::Leaflet,
        title: "Rust ownership explained",
        content: "Borrowing and lifetimes made simple for newcomers.",
        age_days: 10,
        publication: Some("alice"),
        tags: &["rust", "#Programming"],
    },
    DocSpec {
        did: "did:plc:bob",
        rkey: "own2",
        platform: Platform::Pckt,
        title: "Notes from a compiler meetup",
        content: "We talked about ownership and borrowing in Rust for an hour.",
        age_days: 10,
        publication: Some("bob"),
        tags: &["rust"],
    },
    DocSpec {
        did: "did:plc:carol",
        rkey: "tom-new",
        platform: Platform::Leaflet,
        title: "Growing heirloom tomatoes",
        content: "Stake the tomatoes early and water at the roots.",
        age_days: 2,
        publication: Some("carol"),
        tags: &["gardening"],
    },
    DocSpec {
        did: "did:plc:dave",
        rkey: "tom-old",
        platform: Platform::Offprint,
        title: "Growing heirloom tomatoes",
        content: "Stake the tomatoes early and water at the roots.",
        age_days: 730,
        publication: Some("dave"),
        tags: &["gardening"],
    },
    DocSpec {
        did: "did:plc:erin",
        rkey: "weekly-a",
        platform: Platform::Leaflet,
        title: "Weekly notes 12",
        content: "A short week of reading and cross-posting experiments.",
        age_days: 5,
        publication: Some("erin"),
        tags: &[],
    },
    DocSpec {
        did: "did:plc:erin",
        rkey: "weekly-b",
        platform: Platform::Pckt,
        title: "Weekly Notes 12",
        content: "A short week of reading and cross-posting experiments.",
        age_days: 5,
        publication: Some("erin"),
        tags: &[],
    },
    DocSpec {
        did: "did:plc:frank",
        rkey: "cafe",
        platform: Platform::Greengale,
        title: "Café culture in Zürich",
        content: "Espresso, crème brûlée and long conversations by the lake.",
        age_days: 40,
        publication: Some("frank"),
        tags: &["travel"],
    },
    DocSpec {
        did: "did:plc:grace",
        rkey: "3kwhite",
        platform: Platform::Whitewind,
        title: "A whitewind entry about tomatoes",
        content: "Standalone thoughts on tomatoes and <script>alert('x')</script> markup.",
        age_days: 20,
        publication: None,
        tags: &[],
    },
    DocSpec {
        did: "did:plc:heidi",
        rkey: "wasm1",
        platform: Platform::Other,
        title: "Shipping SQLite to the edge with wasm",
        content: "Compile SQLite to WebAssembly and serve full-text search from a worker.",
        age_days: 1,
        publication: Some("heidi"),
        tags: &["wasm", "rust"],
    },
];

const VOCABULARY: &[&str] = &[
    "the",
    "garden",
    "rust",
    "writing",
    "notes",
    "search",
    "edge",
    "river",
    "coffee",
    "music",
    "winter",
    "protocol",
    "federation",
    "atproto",
    "essay",
    "poetry",
    "design",
    "kitchen",
    "bread",
    "travel",
    "library",
    "history",
    "sqlite",
    "compiler",
    "memory",
    "bicycle",
    "mountain",
    "ocean",
    "lantern",
    "harvest",
    "signal",
    "archive",
    "festival",
    "meadow",
    "orchard",
    "quantum",
    "velvet",
    "tundra",
    "saffron",
    "glacier",
    "harbor",
    "ember",
    "willow",
    "cobalt",
];

/// A tiny deterministic generator (64-bit LCG) so corpora match across targets and runs.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Zipf-like: low indexes far more often than high ones.
    pub fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b).min(self.below(n))
    }

    pub fn word(&mut self) -> &'static str {
        VOCABULARY[self.skewed(VOCABULARY.len() as u64) as usize]
    }
}

/// Seeded documents that give paging and filters depth.
pub fn generated(count: usize) -> Vec<SnapshotDocument> {
    let mut rng = Lcg::new(7);
    let platforms = Platform::ALL;
    let authors = [
        "did:plc:gen0",
        "did:plc:gen1",
        "did:plc:gen2",
        "did:plc:gen3",
        "did:plc:gen4",
        "did:plc:gen5",
    ];
    (0..count)
        .map(|i| {
            let platform = platforms[rng.below(platforms.len() as u64) as usize];
            let did = authors[rng.below(authors.len() as u64) as usize];
            let title = (0..1 + rng.below(5))
                .map(|_| rng.word())
                .collect::<Vec<_>>()
                .join(" ");
            let content = (0..5 + rng.below(120))
                .map(|_| rng.word())
                .collect::<Vec<_>>()
                .join(" ");
            let tags = (0..rng.below(3)).map(|_| rng.word().to_string()).collect();
            let has_publication = platform != Platform::Whitewind && rng.below(4) != 0;
            let spec = DocSpec {
                did,
                rkey: "x",
                platform,
                title: "",
                content: "",
                age_days: rng.below(1500) as i64,
                publication: None,
                tags: &[],
            };
            let mut doc = document(&spec);
            doc.rkey = format!("gen{i:04}");
            doc.uri = format!("at://{did}/{}/{}", doc.collection, doc.rkey);
            doc.title = title;
            doc.content = content;
            doc.tags = tags;
            if has_publication {
                doc.publication_uri = Some(format!("at://{did}/site.standard.publication/main"));
                doc.base_path = Some(format!(
                    "{}.{}",
                    did.trim_start_matches("did:plc:"),
                    host(platform)
                ));
            }
            doc
        })
        .collect()
}

pub fn publications() -> Vec<SnapshotPublication> {
    let publication = |did: &str, rkey: &str, name: &str, description: &str, discoverable: bool| {
        SnapshotPublication {
            uri: format!("at://{did}/site.standard.publication/{rkey}"),
            did: did.into(),
            rkey: rkey.into(),
            platform: Platform::Leaflet,
            name: name.into(),
            description: description.into(),
            base_path: Some(format!("{rkey}.leaflet.pub")),
            created_at: None,
            indexed_at_us: WATERMARK_US - 1_000,
            discoverable,
        }
    };
    vec![
        publication(
            "did:plc:carol",
            "carol",
            "The Tomato Garden",
            "Seasonal notes on growing tomatoes.",
            true,
        ),
        publication(
            "did:plc:ivan",
            "secret",
            "Secret Tomato Diary",
            "Private tomatoes, not for discovery.",
            false,
        ),
        publication(
            "did:plc:alice",
            "alice",
            "Alice writes Rust",
            "Systems programming essays.",
            true,
        ),
    ]
}

/// The curated plus generated documents, in insertion order.
pub fn documents() -> Vec<SnapshotDocument> {
    let mut documents: Vec<SnapshotDocument> = CURATED.iter().map(document).collect();
    documents.extend(generated(400));
    documents
}

/// A whitewind entry by `did` with `rkey`, `title` and `content`: no tags, no publication.
pub fn whitewind_entry(did: &str, rkey: &str, title: &str, content: &str) -> SnapshotDocument {
    let mut document = documents().remove(0);
    document.uri = format!("at://{did}/com.whtwnd.blog.entry/{rkey}");
    document.did = did.into();
    document.rkey = rkey.into();
    document.collection = "com.whtwnd.blog.entry".into();
    document.title = title.into();
    document.content = content.into();
    document.tags = Vec::new();
    document.publication_uri = None;
    document.base_path = None;
    document.platform = Platform::Whitewind;
    document
}

/// An in-memory snapshot of the fixture corpus.
pub fn open_fixture() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    let mut writer = SnapshotWriter::create(&mut conn).unwrap();
    for publication in publications() {
        writer.add_publication(&publication).unwrap();
    }
    for document in documents() {
        writer.add_document(&document).unwrap();
    }
    writer.finish(WATERMARK_US).unwrap();
    search::prepare(&conn).unwrap();
    conn
}

/// Node's `fs`, for a wasm test run (under node) to read what the native run recorded.
#[cfg(target_arch = "wasm32")]
pub mod node {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen(module = "fs")]
    extern "C" {
        #[wasm_bindgen(js_name = readFileSync, catch)]
        pub fn read_file_sync(path: &str, encoding: &str) -> Result<String, JsValue>;
    }
}
