//! BERT's WordPiece tokenizer, as the embedding model was trained with it (the
//! `BertNormalizer` + `BertPreTokenizer` + `WordPiece` of its `tokenizer.json`): clean the text,
//! space out CJK characters, strip accents and lowercase; split on whitespace and punctuation;
//! then cut each word into the longest vocabulary pieces, `##`-prefixed after the first.
//! `shared/tests/wordpiece.rs` checks it id for id against the reference implementation.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Why a vocabulary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tokenizer.json {0}")]
    Shape(String),
}

/// Where token ids are looked up: a map in memory natively, the snapshot's `embed_vocab` table
/// at the edge (see `embed::model`), so a query is cut as its documents were.
pub trait Vocabulary {
    /// The id of a vocabulary entry, if it is one.
    fn id(&self, token: &str) -> Option<u32>;
}

impl Vocabulary for HashMap<String, u32> {
    fn id(&self, token: &str) -> Option<u32> {
        self.get(token).copied()
    }
}

/// How words are cut, apart from the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The id of the unknown token.
    pub unknown: u32,
    /// What marks a piece that continues a word (`##`).
    pub prefix: String,
    /// A longer word is one unknown token.
    pub max_word_chars: usize,
}

/// A WordPiece vocabulary and the rules that cut text into its pieces.
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    rules: Rules,
}

impl WordPiece {
    /// Reads the `model` of a Hugging Face `tokenizer.json` whose model is WordPiece.
    pub fn from_tokenizer_json(json: &[u8]) -> Result<Self, VocabError> {
        #[derive(serde::Deserialize)]
        struct File {
            model: Model,
        }
        #[derive(serde::Deserialize)]
        struct Model {
            #[serde(rename = "type")]
            kind: String,
            unk_token: String,
            continuing_subword_prefix: String,
            max_input_chars_per_word: usize,
            vocab: HashMap<String, u32>,
        }
        let File { model } = serde_json::from_slice(json)?;
        if model.kind != "WordPiece" {
            return Err(VocabError::Shape(format!(
                "has a {} model, not WordPiece",
                model.kind
            )));
        }
        let unknown = *model.vocab.get(&model.unk_token).ok_or_else(|| {
            VocabError::Shape(format!("has no {} in its vocabulary", model.unk_token))
        })?;
        Ok(WordPiece {
            vocab: model.vocab,
            rules: Rules {
                unknown,
                prefix: model.continuing_subword_prefix,
                max_word_chars: model.max_input_chars_per_word,
            },
        })
    }

    /// A vocabulary from its entries and rules (as a snapshot stores them).
    pub fn from_parts(vocab: HashMap<String, u32>, rules: Rules) -> Self {
        WordPiece { vocab, rules }
    }

    /// The id of a vocabulary entry, if it is one.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Every entry with its id.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u32)> {
        self.vocab.iter().map(|(token, &id)| (token.as_str(), id))
    }

    /// The rules words are cut by.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Vocabulary entries.
    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// Whether the vocabulary is empty (it never is, once read).
    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// The ids of `text`'s pieces, without the special tokens around them.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        encode(&self.vocab, &self.rules, text)
    }
}

/// The ids of `text`'s pieces in `vocab`, cut by `rules`, without the special tokens around them.
pub fn encode(vocab: &impl Vocabulary, rules: &Rules, text: &str) -> Vec<u32> {
    let normalized = normalize(text);
    let mut ids = Vec::new();
    for word in pre_tokenize(&normalized) {
        pieces(vocab, rules, word, &mut ids);
    }
    ids
}

/// Greedy longest-match-first pieces of one word; a word with a part no piece covers, or too
/// long, is one unknown token.
fn pieces(vocab: &impl Vocabulary, rules: &Rules, word: &str, ids: &mut Vec<u32>) {
    if word.chars().count() > rules.max_word_chars {
        ids.push(rules.unknown);
        return;
    }
    let bounds: Vec<usize> = word
        .char_indices()
        .map(|(at, _)| at)
        .chain(std::iter::once(word.len()))
        .collect();
    let mut found = Vec::new();
    let mut start = 0;
    let mut key = String::with_capacity(word.len() + rules.prefix.len());
    while start < bounds.len() - 1 {
        let mut matched = None;
        for end in (start + 1..bounds.len()).rev() {
            key.clear();
            if start > 0 {
                key.push_str(&rules.prefix);
            }
            key.push_str(&word[bounds[start]..bounds[end]]);
            if let Some(id) = vocab.id(key.as_str()) {
                matched = Some((id, end));
                break;
            }
        }
        match matched {
            Some((id, end)) => {
                found.push(id);
                start = end;
            }
            None => {
                ids.push(rules.unknown);
                return;
            }
        }
    }
    ids.extend(found);
}

/// `BertNormalizer` with `clean_text`, `handle_chinese_chars`, accent stripping and lowercasing.
fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_chinese(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    cleaned
        .nfd()
        .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
        .collect::<String>()
        .to_lowercase()
}

/// `BertPreTokenizer`: words split on whitespace, each punctuation character a word of its own.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for chunk in text.split(is_whitespace).filter(|chunk| !chunk.is_empty()) {
        let mut start = 0;
        for (at, c) in chunk.char_indices() {
            if is_punctuation(c) {
                if start < at {
                    words.push(&chunk[start..at]);
                }
                words.push(&chunk[at..at + c.len_utf8()]);
                start = at + c.len_utf8();
            }
        }
        if start < chunk.len() {
            words.push(&chunk[start..]);
        }
    }
    words
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.general_category_group() == GeneralCategoryGroup::Other
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// The CJK ideograph blocks BERT spaces out (its `_is_chinese_char`).
fn is_chinese(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::{WordPiece, normalize, pre_tokenize};

    fn vocab() -> WordPiece {
        let json = serde_json::json!({"model": {"type": "WordPiece", "unk_token": "[UNK]",
            "continuing_subword_prefix": "##", "max_input_chars_per_word": 10,
            "vocab": {"[UNK]": 0, "un": 1, "##aff": 2, "##able": 3, "naive": 4, "##ly": 5, ",": 6, "水": 7}}});
        WordPiece::from_tokenizer_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn words_are_cut_into_the_longest_pieces() {
        let wp = vocab();
        assert_eq!(wp.encode("Unaffable, NAÏVELY"), [1, 2, 3, 6, 4, 5]);
        // A word with an uncovered part, or too long, is one unknown token.
        assert_eq!(wp.encode("unx"), [0]);
        assert_eq!(wp.encode("unaffableaff"), [0]);
        assert_eq!(wp.encode("水水"), [7, 7]);
    }

    #[test]
    fn normalising_cleans_spaces_out_cjk_and_folds() {
        assert_eq!(normalize("A\u{0}b\tc\u{200b}É水"), "ab ce 水 ");
        assert_eq!(
            pre_tokenize(" it's  (ok) "),
            ["it", "'", "s", "(", "ok", ")"]
        );
    }

    #[test]
    fn a_tokenizer_that_is_not_wordpiece_is_refused() {
        let json = br#"{"model": {"type": "BPE", "unk_token": "x", "continuing_subword_prefix": "", "max_input_chars_per_word": 1, "vocab": {}}}"#;
        let error = WordPiece::from_tokenizer_json(json).err().unwrap();
        assert!(error.to_string().contains("not WordPiece"), "{error}");
    }
}
