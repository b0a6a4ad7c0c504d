//! pubsearch's native worker, as a library the `native-worker` binary, its tests and its benches
//! share.
//!
//! Data flows one way through these modules, each the single owner of its stage:
//!
//! - [`cli`]: the command line; one subcommand per job, embedded defaults everywhere.
//!
//! Later stages (firehose, store, flow, publish, turso, telemetry) each land as a module of
//! their own.

pub mod cli;
