//! pubsearch's native worker, as a library the `native-worker` binary, its tests and its benches
//! share.
//!
//! Data flows one way through these modules, each the single owner of its stage:
//!
//! - [`firehose`]: Jetstream, tap and replay consumers decoding frames into events.
//! - [`extract`]: a record → a normalised document or publication, or why not.
//! - [`ingest`]: events → extraction and policy → a bounded queue → one batching writer thread.
//! - [`store`]: the local WAL SQLite source of truth; one writer, read-only readers.
//! - [`backfill`]: copies whole repos from their PDS through the same pipeline.
//! - [`flow`]: durable orchestrations on WAL SQLite for the long jobs (snapshot publishing).
//! - [`turso`]: Hrana client, write-through of ingest batches, and sync down by watermark.
//! - [`clock`]: the wall clock in Unix µs.
//! - [`latency`]: lock-free latency histograms behind `/stats`.
//! - [`admin`]: the local `/health` and `/stats` endpoint.
//! - [`run`]: the `run` job wiring the above together.
//! - [`corpus`]: a deterministic synthetic firehose corpus for tests and benchmarks.
//! - [`telemetry`]: stderr logs and non-blocking OTLP trace export.
//! - [`cli`]: the command line; one subcommand per job, embedded defaults everywhere.

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod clock;
pub mod corpus;
pub mod extract;
pub mod firehose;
pub mod flow;
pub mod ingest;
pub mod latency;
pub mod publish;
pub mod run;
pub mod store;
pub mod telemetry;
pub mod turso;
