//! The embedding model natively (ARCHITECTURE.md, "Embeddings"): sentence-transformers'
//! all-MiniLM-L6-v2 from the files the test command installs, run as a BERT encoder, and the
//! static token table semantic search embeds with, distilled from it.
//!
//! A crate of its own so that it is compiled optimised even in debug builds (the workspace's
//! `Cargo.toml`): distilling the table runs the encoder over the whole vocabulary, minutes
//! unoptimised and seconds optimised.
//!
//! - [`bert`]: the encoder's forward pass and mean pooling.
//! - [`distill`]: the static token table from the model (model2vec's recipe).

pub mod bert;
pub mod distill;
