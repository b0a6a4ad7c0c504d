//! Embedding benchmark (ARCHITECTURE.md, "Embeddings"): distilling the static token table from
//! all-MiniLM-L6-v2 over its whole vocabulary, the table's size, and documents embedded per
//! second with the table and with the full model, beside what the firehose brings. Prints a
//! table; asserts nothing. Needs the model `scripts/install-toolchain.sh` installs.
//!
//! `cargo bench -p pubsearch-native-worker --bench embed` (EMBED_BENCH_DOCS=2000)

use std::path::PathBuf;
use std::time::Instant;

use pubsearch_native_worker::embed::distill::{self, DistillOptions};
use pubsearch_native_worker::embed::{self, Model};

fn main() {
    let dir = std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        PathBuf::from,
    );
    let docs: usize = std::env::var("EMBED_BENCH_DOCS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let Model { bert, tokenizer } =
        embed::load(&dir).expect("the model (scripts/install-toolchain.sh installs it)");
    let options = DistillOptions::default();

    let vocabulary: Vec<u32> = (0..tokenizer.len() as u32).collect();
    let started = Instant::now();
    let table = distill::distill(&bert, &vocabulary, &options);
    let distill_s = started.elapsed().as_secs_f64();
    let table_bytes = table.rows() * (table.dims() + 4);

    // Documents like long-form posts: a title and 2,000 characters of prose.
    let words = [
        "garden",
        "river",
        "protocol",
        "essay",
        "bread",
        "winter",
        "signal",
        "harbor",
        "the",
        "of",
        "and",
        "writing",
        "network",
        "federated",
        "posts",
        "about",
        "morning",
        "quietly",
    ];
    let texts: Vec<String> = (0..docs)
        .map(|i| {
            let mut text = String::new();
            let mut n = i;
            while text.len() < 2000 {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(words[(n >> 33) % words.len()]);
                text.push(' ');
            }
            text
        })
        .collect();
    let started = Instant::now();
    let mut tokens = 0;
    for text in &texts {
        let ids = tokenizer.encode(text);
        tokens += ids.len();
        std::hint::black_box(table.embed(&ids));
    }
    let static_s = started.elapsed().as_secs_f64();

    // The full model on the same documents, cut to 256 tokens as sentence-transformers does.
    let sample = docs.min(50);
    let started = Instant::now();
    for text in &texts[..sample] {
        let mut ids = vec![options.cls];
        ids.extend(tokenizer.encode(text).into_iter().take(254));
        ids.push(options.sep);
        std::hint::black_box(bert.mean_pooled(&[&ids]));
    }
    let full_s = started.elapsed().as_secs_f64();

    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!(
        "| distil the table ({} tokens, {} threads) | {distill_s:.1} s ({:.0} tokens/s) |",
        vocabulary.len(),
        options.threads,
        vocabulary.len() as f64 / distill_s
    );
    println!(
        "| table size ({} × {} int8 + scales) | {:.1} MB |",
        table.rows(),
        table.dims(),
        table_bytes as f64 / 1e6
    );
    println!(
        "| documents embedded with the table ({docs} of ~2,000 chars, {:.0} tokens each, 1 thread) | {:.0} docs/s |",
        tokens as f64 / docs as f64,
        docs as f64 / static_s
    );
    println!(
        "| documents embedded with the full model ({sample}, 256 tokens, 1 thread) | {:.1} docs/s |",
        sample as f64 / full_s
    );
    println!(
        "| vector bytes per document (256 int8 + f32 scale) | {} |",
        table.dims() + 4
    );
}
