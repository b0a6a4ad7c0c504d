//! The pubsearch search core, shared by the edge Worker (wasm32) and the native worker.
//!
//! Everything that decides *what a search answers* lives here, so a query gives the same results
//! natively and in the Worker:
//!
//! - [`api`]: the public HTTP API apart from any HTTP library, answered the same by the edge and
//!   the native server.
//! - [`authors`]: authors' handles, on results and in the `author` filter.
//! - [`schema`]: the serving snapshot's tables, FTS5 indexes and version stamps.
//! - [`content`]: document text at rest in a snapshot (LZ4) and the SQL function that reads it.
//! - [`snapshot`]: writes documents and publications into a snapshot (builders and test fixtures).
//! - [`query`]: turns untrusted user text into a safe FTS5 `MATCH` expression.
//! - [`search`]: validated search requests, ranking (bm25 top-K, then recency re-rank) and results.
//! - `facts`, `rank`, `snippet` and `fts5` (internal): the SQL functions search calls. `facts`
//!   holds what search needs of every row in memory and filters documents from it; `rank` and
//!   `snippet` are built on FTS5's C extension API: bm25 from the facts' row lengths, and FTS5's
//!   snippet with less tokenizing.
//! - [`embed`]: the embedding model and documents' vectors in a snapshot.
//! - [`semantic`]: semantic and hybrid ranking (`mode=semantic|hybrid`).
//! - [`similar`]: each document's distinctive terms, and the related posts they find.
//! - [`lookup`]: documents by URI and tag counts, for the edge's non-search endpoints.
//! - [`delta`]: what changed since a base build, searched together with it.
//! - [`manifest`]: the contract between a published snapshot and the readers that adopt it.
//! - [`platform`]: which publishing platform a record belongs to, and its public URL.
//! - [`varint`]: SQLite's variable-length integers, in FTS5 records and raw pages.
//! - [`timestamp`]: the one timestamp format stored in snapshots and returned to clients.
//!
//! Data flows one way: the native worker extracts records, stores them, and builds snapshots with
//! [`snapshot::SnapshotWriter`]; the edge opens the snapshot read-only, calls [`search::prepare`]
//! and then [`search::search`].

pub mod api;
pub mod authors;
pub mod content;
pub mod delta;
pub mod embed;
mod facts;
mod fts5;
pub mod lookup;
pub mod manifest;
pub mod platform;
pub mod query;
mod rank;
pub mod schema;
pub mod search;
pub mod semantic;
pub mod similar;
pub mod snapshot;
mod snippet;
pub mod timestamp;
pub mod varint;

pub use platform::Platform;
pub use query::{MatchExpr, QueryError};
pub use search::{SearchError, SearchPage, SearchRequest, SearchResult};
pub use timestamp::Timestamp;
