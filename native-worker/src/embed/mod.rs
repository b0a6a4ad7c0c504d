//! The embedding model, natively (ARCHITECTURE.md, "Embeddings"): loading
//! sentence-transformers/all-MiniLM-L6-v2 from the files the test command installs, and its
//! forward pass, from which the static token table semantic search uses is distilled.
//!
//! - [`bert`], [`distill`]: the encoder and the table distilled from it (the `pubsearch-encoder`
//!   crate, optimised even in debug builds).
//! - [`stored`]: that table kept beside the model, and the model builds embed with.

pub mod stored;

pub use pubsearch_encoder::{bert, distill};

use std::path::{Path, PathBuf};

use pubsearch_shared::embed::wordpiece::WordPiece;

use bert::{Bert, ModelError};

/// Where `scripts/install-toolchain.sh` unpacks the model, relative to the workspace.
pub const DEFAULT_MODEL_DIR: &str = "target/models/all-minilm-l6-v2";

/// The model directory: `PUBSEARCH_MODEL_DIR`, or [`DEFAULT_MODEL_DIR`].
pub fn model_dir() -> PathBuf {
    std::env::var_os("PUBSEARCH_MODEL_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR), PathBuf::from)
}

/// The model and the tokenizer it was trained with.
pub struct Model {
    pub bert: Bert,
    pub tokenizer: WordPiece,
}

/// Loads the model from `dir` (see [`model_dir`]).
pub fn load(dir: &Path) -> Result<Model, ModelError> {
    Ok(Model {
        tokenizer: tokenizer(dir)?,
        bert: Bert::load(dir)?,
    })
}

/// The model's tokenizer, from `dir`'s `tokenizer.json`.
pub fn tokenizer(dir: &Path) -> Result<WordPiece, ModelError> {
    let path = dir.join("tokenizer.json");
    let json = std::fs::read(&path).map_err(|source| ModelError::Read {
        path: path.display().to_string(),
        source,
    })?;
    WordPiece::from_tokenizer_json(&json).map_err(|e| ModelError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
