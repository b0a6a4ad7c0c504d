//! `flow`: durable orchestrations on WAL SQLite, for the worker's long jobs (snapshot build →
//! verify → publish, backfills) that must survive crashes and restarts.
//!
//! An orchestration is an async function that takes every side effect through its
//! [`OrchestrationContext`]: activities (retried per [`RetryPolicy`]), durable timers, external
//! events, child orchestrations, `continue_as_new`, and recorded `now`/uuid. Each step is
//! recorded in history; after a crash the function is replayed against the history, so a
//! recorded result is never recomputed and a code change that takes different steps is reported
//! as a nondeterminism failure instead of being mis-applied. Activities run at least once.
//!
//! How it stays fast (the lessons of engines that poll and lock):
//! - [`writer`]: one thread group-commits every turn and activity result queued meanwhile in a
//!   single `BEGIN IMMEDIATE` transaction, durable on commit (`synchronous=FULL`);
//! - [`engine`]: commits hand their work on in-process — no polling while running — and live
//!   instances stay cached between turns, so a turn does not reload and replay history;
//! - [`turn`]: a turn applies all of an instance's pending messages at once.
//!
//! Module map: [`history`] (what is recorded), [`context`] (the orchestration's API),
//! [`registry`] (named, versioned code), [`retry`], [`db`] (schema and reads), [`writer`],
//! [`turn`], [`engine`], [`activity`] (attempts, timeouts, retries), [`client`] (start, raise,
//! cancel, wait, list, purge), [`outside`] (the same from a process that does not run the
//! engine, through the database's inbox).

mod activity;
mod client;
mod context;
mod db;
mod engine;
pub mod history;
mod outside;
mod registry;
mod retry;
mod turn;
mod writer;

use std::path::PathBuf;

pub use client::FlowClient;
pub use context::{ContinueAsNew, OrchestrationContext, StepFuture};
pub use db::{InstanceInfo, InstancePage, PendingStart, flow_path};
pub use engine::{DEFAULT_RETENTION, Engine, EngineOptions, EngineStats};
pub use history::{Event, Status};
pub use outside::OutsideClient;
pub use registry::{ActivityContext, FREE_INTERRUPTIONS, Registry};
pub use retry::{Backoff, RetryPolicy};

/// Locks state shared with orchestration code, which may have panicked while holding it: the
/// panic is reported as the instance's failure, so the state is still usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Wall-clock Unix milliseconds: timer deadlines and instance timestamps.
pub(crate) use crate::clock::now_ms;

/// Why a flow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("cannot open the flow database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another process is running the flow engine on {path}: {holder}")]
    Locked { path: PathBuf, holder: String },
    #[error("flow database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("flow record does not decode: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the flow commit failed: {0}")]
    Commit(String),
    #[error("the flow engine has stopped")]
    Stopped,
    #[error("orchestration `{0}` is not registered")]
    NotRegistered(String),
    #[error("no flow instance `{0}`")]
    NotFound(String),
    #[error("instance `{instance}` is still {status} after the wait timed out")]
    Timeout { instance: String, status: Status },
    #[error("unknown status `{0}` (expected running, completed, failed or cancelled)")]
    BadStatus(String),
    /// An instance ended without output: failed or cancelled.
    #[error("instance `{instance}` {status}: {reason}")]
    Ended {
        instance: String,
        status: Status,
        reason: String,
    },
}
