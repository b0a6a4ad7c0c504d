//! Our WordPiece tokenizer against the reference (Hugging Face `tokenizers`, the library the
//! model was trained with), on the model's own `tokenizer.json`: the same ids for every string of
//! a mixed corpus (accents, CJK, punctuation, emoji, control characters, long words).
//! `scripts/install-toolchain.sh` installs both the model and the reference.

#![cfg(not(target_arch = "wasm32"))]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use pubsearch_shared::embed::wordpiece::WordPiece;

/// Where the test command unpacks the model (`PUBSEARCH_MODEL_DIR` overrides).
fn model_dir() -> PathBuf {
    std::env::var_os("PUBSEARCH_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"),
        PathBuf::from,
    )
}

/// The reference ids of `texts`, without special tokens.
fn reference(tokenizer: &std::path::Path, texts: &[String]) -> Vec<Vec<u32>> {
    const SCRIPT: &str = r#"
import json, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
tokenizer.no_padding()
tokenizer.no_truncation()
texts = json.load(sys.stdin)
print(json.dumps([tokenizer.encode(t, add_special_tokens=False).ids for t in texts]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(tokenizer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the reference tokenizer failed (run scripts/install-toolchain.sh)"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A deterministic mix of the text posts are made of, and of what they should not be.
fn corpus() -> Vec<String> {
    let pieces = [
        "Sourdough",
        "starter's",
        "naïvely",
        "Ångström",
        "café",
        "résumé",
        "don't",
        "e-mail",
        "U.S.A.",
        "3.14159",
        "1,000,000",
        "#hashtag",
        "@alice.bsky.social",
        "https://example.com/a?b=c",
        "水の流れ",
        "中文字符",
        "한국어",
        "Ελληνικά",
        "Русский",
        "עברית",
        "العربية",
        "हिन्दी",
        "emoji🙂👍🏽",
        "zero\u{200b}width",
        "tab\there",
        "new\nline",
        "nul\u{0}char",
        "\u{fffd}",
        "a\u{0301}",
        "ﬁ ligature",
        "ＦＵＬＬ",
        "…",
        "—dash—",
        "«quotes»",
        "“smart”",
        "(paren)",
        "[brackets]",
        "{braces}",
        "snake_case",
        "CamelCaseWord",
        "x".repeat(101).leak(),
        "supercalifragilisticexpialidocious",
        "antidisestablishmentarianism",
        "ok",
        "",
        " ",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut texts: Vec<String> = pieces.iter().map(|piece| piece.to_string()).collect();
    for _ in 0..300 {
        let words = 1 + next(12);
        let text: Vec<&str> = (0..words).map(|_| pieces[next(pieces.len())]).collect();
        let separator = [" ", "", ", ", "\t", "  "][next(5)];
        texts.push(text.join(separator));
    }
    texts
}

#[test]
fn our_wordpiece_matches_the_reference_id_for_id() {
    let tokenizer = model_dir().join("tokenizer.json");
    let json = std::fs::read(&tokenizer).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; scripts/install-toolchain.sh installs the model",
            tokenizer.display()
        )
    });
    let ours = WordPiece::from_tokenizer_json(&json).unwrap();
    assert_eq!(ours.len(), 30_522);
    let texts = corpus();
    let expected = reference(&tokenizer, &texts);
    let mut differ = Vec::new();
    for (text, expected) in texts.iter().zip(&expected) {
        let got = ours.encode(text);
        if &got != expected {
            differ.push(format!("{text:?}: ours {got:?}, reference {expected:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        texts.len(),
        differ.join("\n")
    );
}
