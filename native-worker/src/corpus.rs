//! A deterministic synthetic corpus: Jetstream NDJSON shaped like the real firehose, for tests,
//! benchmarks and offline development (`native-worker gen-corpus`).
//!
//! Every collection and platform appears in realistic proportions: publications first, then
//! documents linking them (leaflet block trees, `site.standard` documents with leaflet, markdown
//! or text-only content, whitewind markdown with some non-public entries), Zipfian vocabulary,
//! long-tail lengths from ~200 B to ~100 KB, tags, updates, deletes, identity and account events.
//! The same seed always produces byte-identical output (ChaCha8, no clock, no hash-map order).

use std::io::{self, Write};

use crate::extract::at_uri;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusConfig {
    /// Events to write.
    pub records: usize,
    pub seed: u64,
    /// Fraction of records deliberately malformed (0.0–1.0), to exercise skip-and-count paths.
    pub malformed_rate: f64,
}

/// What was generated, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorpusSummary {
    pub events: usize,
    pub publications: usize,
    pub documents: usize,
    pub updates: usize,
    pub deletes: usize,
    pub identity_and_account: usize,
    pub malformed: usize,
    pub bytes: u64,
}

/// The first event's time (Unix µs): a fixed instant, so output never depends on the clock.
pub const START_TIME_US: i64 = 1_760_000_000_000_000;
const VOCABULARY_SIZE: usize = 20_000;
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "su", "vo", "ne", "shi", "da", "pe", "lu", "gor", "an", "el",
    "is", "or", "um", "tra", "bel", "qui", "zo", "mar", "fen", "dra", "ol", "ki", "sta", "ver",
    "nu",
];
const SORTABLE_BASE32: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Zipf-distributed words from a pseudo-word vocabulary.
struct Vocabulary {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Vocabulary {
    fn new() -> Self {
        // The vocabulary has its own fixed seed: corpora with different seeds share words.
        let mut rng = ChaCha8Rng::seed_from_u64(0x7075_6273);
        let mut words = Vec::with_capacity(VOCABULARY_SIZE);
        let mut seen = std::collections::HashSet::new();
        while words.len() < VOCABULARY_SIZE {
            let syllables = 1 + rng.random_range(0..4);
            let word: String = (0..syllables)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect();
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        let mut total = 0.0;
        let cumulative = (1..=VOCABULARY_SIZE)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(1.07);
                total
            })
            .collect();
        Self { words, cumulative }
    }

    fn word(&self, rng: &mut ChaCha8Rng) -> &str {
        let target = rng.random::<f64>() * self.cumulative[VOCABULARY_SIZE - 1];
        let index = self.cumulative.partition_point(|weight| *weight < target);
        &self.words[index.min(VOCABULARY_SIZE - 1)]
    }

    fn sentence(&self, rng: &mut ChaCha8Rng, words: usize) -> String {
        let mut sentence = String::new();
        for i in 0..words {
            if i > 0 {
                sentence.push(' ');
            }
            sentence.push_str(self.word(rng));
        }
        sentence
    }
}

/// A record identifier in the TID format: 13 sortable base32 characters.
fn tid(time_us: i64, clock: u64) -> String {
    let value = ((time_us as u64) << 10) | (clock & 0x3ff);
    (0..13)
        .rev()
        .map(|i| SORTABLE_BASE32[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[derive(Clone)]
struct PublicationRef {
    did: String,
    uri: String,
    kind: Host,
}

#[derive(Clone, Copy, PartialEq)]
enum Host {
    Leaflet,
    Pckt,
    Offprint,
    Greengale,
    Other,
}

impl Host {
    fn domain(self) -> &'static str {
        match self {
            Host::Leaflet => "leaflet.pub",
            Host::Pckt => "pckt.blog",
            Host::Offprint => "offprint.app",
            Host::Greengale => "greengale.app",
            Host::Other => "example.net",
        }
    }
}

struct LiveDocument {
    did: String,
    collection: &'static str,
    rkey: String,
}

/// Writes `records` well-formed events generated from `seed` to the file `path`: the corpus
/// tests and benchmarks replay.
pub fn write_file(path: &std::path::Path, records: usize, seed: u64) -> io::Result<CorpusSummary> {
    let config = CorpusConfig {
        records,
        seed,
        malformed_rate: 0.0,
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let summary = generate(&config, &mut out, |_| {})?;
    out.flush()?;
    Ok(summary)
}

/// Writes the corpus to `out` as NDJSON; `progress` is called every 1,000 events.
pub fn generate(
    config: &CorpusConfig,
    out: &mut impl Write,
    mut progress: impl FnMut(usize),
) -> io::Result<CorpusSummary> {
    let vocabulary = Vocabulary::new();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let authors: Vec<String> = (0..(config.records / 20).max(3))
        .map(|_| {
            format!(
                "did:plc:{}",
                (0..24)
                    .map(|_| SORTABLE_BASE32[rng.random_range(0..32)] as char)
                    .collect::<String>()
            )
        })
        .collect();
    let publication_count = (config.records / 50).max(1);
    let mut publications: Vec<PublicationRef> = Vec::new();
    let mut live: Vec<LiveDocument> = Vec::new();
    let mut summary = CorpusSummary::default();
    let mut time_us = START_TIME_US;

    for index in 0..config.records {
        time_us += rng.random_range(1_000..2_000_000);
        let clock = rng.random_range(0..1024u64);
        let rev = tid(time_us, clock);
        let did = authors[(rng.random::<f64>().powi(2) * authors.len() as f64) as usize].clone();
        let roll: f64 = rng.random();
        let event = if index < publication_count {
            summary.publications += 1;
            let (publication, body, collection) = publication_record(&mut rng, &vocabulary, &did);
            let rkey = publication
                .uri
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            publications.push(publication);
            commit(&did, time_us, &rev, "create", collection, &rkey, Some(body))
        } else if roll < 0.005 {
            summary.identity_and_account += 1;
            json!({"did": did, "time_us": time_us, "kind": "identity",
                   "identity": {"did": did, "handle": format!("{}.bsky.social", vocabulary.word(&mut rng)), "seq": index, "time": "2025-01-01T00:00:00Z"}})
        } else if roll < 0.007 {
            summary.identity_and_account += 1;
            let active = rng.random_bool(0.5);
            json!({"did": did, "time_us": time_us, "kind": "account",
                   "account": {"did": did, "active": active, "status": if active { Value::Null } else { json!("deactivated") }, "seq": index, "time": "2025-01-01T00:00:00Z"}})
        } else if roll < 0.027 && !live.is_empty() {
            summary.deletes += 1;
            let target = live.swap_remove(rng.random_range(0..live.len()));
            commit(
                &target.did,
                time_us,
                &rev,
                "delete",
                target.collection,
                &target.rkey,
                None,
            )
        } else if roll < 0.077 && !live.is_empty() {
            summary.updates += 1;
            let target = &live[rng.random_range(0..live.len())];
            let publication = publications.iter().find(|p| p.did == target.did).cloned();
            let body = document_record(
                &mut rng,
                &vocabulary,
                target.collection,
                publication.as_ref(),
            );
            commit(
                &target.did,
                time_us,
                &rev,
                "update",
                target.collection,
                &target.rkey,
                Some(body),
            )
        } else {
            summary.documents += 1;
            let publication = publications[rng.random_range(0..publications.len())].clone();
            let collection = match (rng.random_range(0..10), publication.kind) {
                (0..=1, _) => "com.whtwnd.blog.entry",
                (_, Host::Leaflet) if rng.random_bool(0.7) => "pub.leaflet.document",
                _ => "site.standard.document",
            };
            let author = if collection == "com.whtwnd.blog.entry" {
                did
            } else {
                publication.did.clone()
            };
            let linked = (collection != "com.whtwnd.blog.entry").then_some(&publication);
            let mut body = document_record(&mut rng, &vocabulary, collection, linked);
            if rng.random::<f64>() < config.malformed_rate {
                summary.malformed += 1;
                body = malformed(&mut rng, collection);
            }
            let rkey = tid(time_us, clock ^ 0x155);
            live.push(LiveDocument {
                did: author.clone(),
                collection,
                rkey: rkey.clone(),
            });
            commit(
                &author,
                time_us,
                &rev,
                "create",
                collection,
                &rkey,
                Some(body),
            )
        };
        let line = serde_json::to_string(&event).expect("events serialise");
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        summary.bytes += line.len() as u64 + 1;
        summary.events += 1;
        if summary.events % 1_000 == 0 {
            progress(summary.events);
        }
    }
    out.flush()?;
    Ok(summary)
}

fn commit(
    did: &str,
    time_us: i64,
    rev: &str,
    operation: &str,
    collection: &str,
    rkey: &str,
    record: Option<Value>,
) -> Value {
    let mut commit =
        json!({"rev": rev, "operation": operation, "collection": collection, "rkey": rkey});
    if let Some(record) = record {
        commit["cid"] = json!(format!("bafyrei{}", &rev[..10]));
        commit["record"] = record;
    }
    json!({"did": did, "time_us": time_us, "kind": "commit", "commit": commit})
}

fn publication_record(
    rng: &mut ChaCha8Rng,
    vocabulary: &Vocabulary,
    did: &str,
) -> (PublicationRef, Value, &'static str) {
    let kind = [
        Host::Leaflet,
        Host::Leaflet,
        Host::Pckt,
        Host::Offprint,
        Host::Greengale,
        Host::Other,
    ][rng.random_range(0..6)];
    let slug = format!("{}{}", vocabulary.word(rng), rng.random_range(0..10_000));
    let name = {
        let words = rng.random_range(1..4);
        vocabulary.sentence(rng, words)
    };
    let description = {
        let words = rng.random_range(0..15);
        vocabulary.sentence(rng, words)
    };
    let discoverable = !rng.random_bool(0.05);
    let rkey = tid(
        START_TIME_US + rng.random_range(0..1_000_000_000),
        rng.random_range(0..1024),
    );
    let (collection, body) = if kind == Host::Leaflet {
        (
            "pub.leaflet.publication",
            json!({"$type": "pub.leaflet.publication", "name": name, "description": description,
            "base_path": format!("{slug}.leaflet.pub"), "preferences": {"showInDiscover": discoverable}}),
        )
    } else {
        (
            "site.standard.publication",
            json!({"$type": "site.standard.publication", "name": name, "description": description,
            "url": format!("https://{slug}.{}", kind.domain()), "preferences": {"showInDiscover": discoverable}}),
        )
    };
    let uri = at_uri(did, collection, &rkey);
    (
        PublicationRef {
            did: did.to_owned(),
            uri,
            kind,
        },
        body,
        collection,
    )
}

/// Long-tail length in words: most documents are short, a few are ~100 KB.
fn body_words(rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.random();
    (30.0 * (15_000.0f64 / 30.0).powf(u.powi(5))) as usize
}

fn paragraphs(rng: &mut ChaCha8Rng, vocabulary: &Vocabulary, words: usize) -> Vec<String> {
    let mut left = words;
    let mut paragraphs = Vec::new();
    while left > 0 {
        let take = left.min(rng.random_range(20..120));
        paragraphs.push(vocabulary.sentence(rng, take));
        left -= take;
    }
    paragraphs
}

fn blocks(rng: &mut ChaCha8Rng, vocabulary: &Vocabulary, words: usize) -> Value {
    let blocks: Vec<Value> = paragraphs(rng, vocabulary, words)
        .into_iter()
        .map(|text| {
            let block = match rng.random_range(0..10) {
                0 => json!({"$type": "pub.leaflet.blocks.header", "level": 2, "plaintext": text}),
                1 => json!({"$type": "pub.leaflet.blocks.unorderedList", "children": [
                    {"content": {"$type": "pub.leaflet.blocks.text", "plaintext": text},
                     "children": [{"content": {"$type": "pub.leaflet.blocks.text", "plaintext": vocabulary.word(rng)}}]}]}),
                2 => json!({"$type": "pub.leaflet.blocks.blockquote", "plaintext": text}),
                3 => json!({"$type": "pub.leaflet.blocks.code", "language": "rust", "plaintext": text}),
                _ => json!({"$type": "pub.leaflet.blocks.text", "plaintext": text, "facets": []}),
            };
            json!({"$type": "pub.leaflet.pages.linearDocument#block", "block": block})
        })
        .collect();
    json!([{"$type": "pub.leaflet.pages.linearDocument", "blocks": blocks}])
}

fn document_record(
    rng: &mut ChaCha8Rng,
    vocabulary: &Vocabulary,
    collection: &str,
    publication: Option<&PublicationRef>,
) -> Value {
    let title = {
        let words = rng.random_range(2..9);
        vocabulary.sentence(rng, words)
    };
    let words = body_words(rng);
    let published = format!(
        "2025-{:02}-{:02}T{:02}:00:00.000Z",
        rng.random_range(1..13),
        rng.random_range(1..29),
        rng.random_range(0..24)
    );
    let tags: Vec<&str> = (0..rng.random_range(0..5))
        .map(|_| vocabulary.words[rng.random_range(0..200)].as_str())
        .collect();
    match collection {
        "pub.leaflet.document" => {
            json!({"$type": collection, "title": title, "author": publication.map(|p| p.did.clone()),
            "publication": publication.map(|p| p.uri.clone()), "publishedAt": published, "tags": tags,
            "description": vocabulary.sentence(rng, 12), "pages": blocks(rng, vocabulary, words)})
        }
        "site.standard.document" => {
            let text = paragraphs(rng, vocabulary, words).join("\n\n");
            let content = match rng.random_range(0..3) {
                0 => {
                    json!({"$type": "pub.leaflet.content", "pages": blocks(rng, vocabulary, words)})
                }
                1 => {
                    json!({"$type": "blog.pckt.content#markdown", "markdown": format!("## {title}\n\n{text}")})
                }
                _ => Value::Null,
            };
            let mut record = json!({"$type": collection, "title": title, "site": publication.map(|p| p.uri.clone()),
                "path": format!("/{}", title.replace(' ', "-")), "publishedAt": published, "tags": tags,
                "textContent": text});
            if !content.is_null() {
                record["content"] = content;
            }
            record
        }
        _ => {
            let visibility = ["public"; 18]
                .iter()
                .chain(&["url", "author"])
                .nth(rng.random_range(0..20))
                .copied();
            json!({"$type": collection, "title": title, "createdAt": published, "visibility": visibility,
                   "content": format!("# {title}\n\n{}", paragraphs(rng, vocabulary, words).join("\n\n"))})
        }
    }
}

fn malformed(rng: &mut ChaCha8Rng, collection: &str) -> Value {
    match rng.random_range(0..3) {
        0 => {
            json!({"$type": collection, "title": 12345, "content": ["not", "text"], "site": false})
        }
        1 => json!({"$type": collection, "pages": "not pages", "content": null}),
        _ => json!("a record that is not an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract;

    fn corpus(records: usize, seed: u64, malformed_rate: f64) -> (Vec<u8>, CorpusSummary) {
        let mut out = Vec::new();
        let config = CorpusConfig {
            records,
            seed,
            malformed_rate,
        };
        let summary = generate(&config, &mut out, |_| {}).unwrap();
        (out, summary)
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(corpus(500, 9, 0.0).0, corpus(500, 9, 0.0).0);
        assert_ne!(corpus(500, 9, 0.0).0, corpus(500, 10, 0.0).0);
    }

    #[test]
    fn every_record_extracts_except_the_deliberately_malformed() {
        let (bytes, summary) = corpus(3_000, 1, 0.02);
        let mut collections = std::collections::BTreeMap::new();
        let mut failures = 0;
        let mut hosts = std::collections::BTreeSet::new();
        for line in String::from_utf8(bytes).unwrap().lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            let Some(body) = event["commit"].get("record") else {
                continue;
            };
            let collection = event["commit"]["collection"].as_str().unwrap();
            *collections.entry(collection.to_owned()).or_insert(0) += 1;
            match extract::extract(
                event["did"].as_str().unwrap(),
                collection,
                event["commit"]["rkey"].as_str().unwrap(),
                body,
            ) {
                Ok(extract::Extracted::Publication(p)) => {
                    hosts.insert(p.platform);
                }
                Ok(_) => {}
                Err(_) => failures += 1,
            }
        }
        assert_eq!(failures, summary.malformed);
        assert!(
            summary.malformed > 0
                && summary.updates > 0
                && summary.deletes > 0
                && summary.identity_and_account > 0
        );
        assert_eq!(collections.len(), 5, "{collections:?}");
        assert_eq!(
            hosts.len(),
            5,
            "leaflet, pckt, offprint, greengale and other hosts: {hosts:?}"
        );
    }

    #[test]
    fn times_and_revisions_increase() {
        let (bytes, _) = corpus(1_000, 3, 0.0);
        let events: Vec<Value> = String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for pair in events.windows(2) {
            assert!(pair[1]["time_us"].as_i64() > pair[0]["time_us"].as_i64());
            if let (Some(a), Some(b)) = (
                pair[0]["commit"]["rev"].as_str(),
                pair[1]["commit"]["rev"].as_str(),
            ) {
                assert!(b > a, "revisions sort by time: {a} {b}");
            }
        }
    }
}
