//! A client of a flow database for a process that does not run its engine (the CLI, a
//! `publish` while `run` owns the database): starts and cancellations are left in the database's
//! inbox, which the owning engine applies within its inbox poll (or on its next start), and reads
//! are read-only. The in-process counterpart is [`super::FlowClient`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::FlowError;
use super::db::{self, InstanceInfo, InstancePage, PendingStart};
use super::history::{Event, Message, Status};

/// Starts, cancels, lists and waits on the instances of a flow database from outside its engine.
#[derive(Debug, Clone)]
pub struct OutsideClient {
    path: PathBuf,
}

impl OutsideClient {
    /// A client of the flow database at `path`.
    pub fn new(path: &Path) -> Self {
        OutsideClient {
            path: path.to_path_buf(),
        }
    }

    /// Asks the owning engine to start orchestration `name` (at `version`) as `instance`;
    /// idempotent, like [`super::FlowClient::start`].
    pub fn start<I: Serialize>(
        &self,
        instance: &str,
        name: &str,
        version: u32,
        input: &I,
    ) -> Result<(), FlowError> {
        db::post_start(&self.path, instance, name, version, input)
    }

    /// Asks the owning engine to cancel `instance`, giving `reason`.
    pub fn cancel(&self, instance: &str, reason: String) -> Result<(), FlowError> {
        let message = Message {
            execution: None,
            event: Event::CancelRequested { reason },
        };
        db::post_to_inbox(&self.path, instance, &message)
    }

    /// One instance, if it exists.
    pub fn status(&self, instance: &str) -> Result<Option<InstanceInfo>, FlowError> {
        db::instance(&db::open_read(&self.path)?, instance)
    }

    /// One instance with the history of its current execution, if it exists.
    pub fn history(&self, instance: &str) -> Result<Option<(InstanceInfo, Vec<Event>)>, FlowError> {
        let conn = db::open_read(&self.path)?;
        let Some(info) = db::instance(&conn, instance)? else {
            return Ok(None);
        };
        let history = db::history(&conn, instance, info.execution)?;
        Ok(Some((info, history)))
    }

    /// A page of instances (of `status`, if given) after the id `after`.
    pub fn list(
        &self,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<InstancePage, FlowError> {
        db::list(&db::open_read(&self.path)?, status, after, limit)
    }

    /// Starts left in the inbox that the owning engine has not applied yet.
    pub fn pending_starts(&self) -> Result<Vec<PendingStart>, FlowError> {
        db::pending_starts(&db::open_read(&self.path)?)
    }

    /// Waits up to `timeout` for `instance` to finish.
    pub async fn wait(&self, instance: &str, timeout: Duration) -> Result<InstanceInfo, FlowError> {
        db::wait_finished(&self.path, instance, timeout).await
    }

    /// Deletes instances that finished before `before_ms` (Unix ms), with their history;
    /// returns how many.
    pub fn purge_before(&self, before_ms: i64) -> Result<usize, FlowError> {
        db::purge(&mut db::open_write(&self.path, true)?, before_ms)
    }
}
