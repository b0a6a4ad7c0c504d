//! Embeddings for semantic search (ARCHITECTURE.md, "Embeddings"): text to the model's tokens,
//! on both sides, so a query is embedded at the edge exactly as documents were natively.
//!
//! - [`wordpiece`]: BERT's WordPiece tokenizer, read from the model's `tokenizer.json`.
//! - [`table`]: the static token table, and texts embedded with it.
//! - [`model`]: the vocabulary and table a snapshot carries, read as a query needs them.
//! - [`index`]: documents' vectors in a snapshot, and the tree that finds the nearest.

pub mod index;
pub mod model;
pub mod table;
pub mod wordpiece;
