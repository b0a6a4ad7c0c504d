//! pubsearch's native worker, as a library the `native-worker` binary, its tests and its benches
//! share.
//!
//! Data flows one way, sources → extract → store → snapshot/delta → publish → serve, and the modules
//! form one order in which each imports only those before it (ARCHITECTURE.md, "Module order";
//! checked by `tests/layering.rs`):
//!
//! - [`clock`]: the wall clock in Unix µs.
//! - [`lockfile`]: exclusive ownership of a data file by one process, naming its holder.
//! - [`latency`]: lock-free latency histograms behind `/stats`.
//! - [`telemetry`]: stderr logs and non-blocking OTLP trace export.
//! - [`extract`]: a record → a normalised document or publication, or why not.
//! - [`embed`]: the model builds embed documents with (the `pubsearch-encoder` crate distils its table;
//!   `embed::stored` keeps it beside the model).
//! - [`firehose`]: Jetstream, tap and replay consumers decoding frames into events, delivered
//!   through the source interface [`firehose::EventSink`].
//! - [`corpus`]: a deterministic synthetic firehose corpus for tests and benchmarks.
//! - [`store`]: the local WAL SQLite system of record: one writer applying record changes and
//!   bookkeeping marks, row images shared with Turso, a typed read API, read-only readers, and
//!   documents' vectors with a write connection of their own.
//! - [`ingest`]: events → extraction and policy → a bounded queue → one batching writer thread
//!   (implements [`firehose::EventSink`]).
//! - [`embedder`]: keeps the store's document vectors current beside ingest, on a thread of its
//!   own, so builds read them instead of embedding.
//! - [`turso`]: Hrana client, write-through of ingest batches, and sync down by watermark.
//! - [`backfill`]: copies whole repos from their PDS through the same pipeline.
//! - [`flow`]: durable orchestrations on WAL SQLite for the long jobs (snapshot publishing).
//! - [`publish`]: snapshot and delta build → verify → upload → pointer, as a `flow` workflow.
//! - [`serve`]: the public search API and page, answered natively from published builds.
//! - [`admin`]: the local `/health` and `/stats` endpoint.
//! - [`run`]: the `run` job wiring the above together.
//! - [`cli`]: the command line; one subcommand per job, embedded defaults everywhere.

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod clock;
pub mod corpus;
pub mod embed;
pub mod embedder;
pub mod extract;
pub mod firehose;
pub mod flow;
pub mod ingest;
pub mod latency;
pub mod lockfile;
pub mod publish;
pub mod run;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod turso;
