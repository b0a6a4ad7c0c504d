//! The client API: start instances, raise events, cancel, inspect, wait, list and purge.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::FlowError;
use super::db::{self, InstanceInfo, InstancePage};
use super::engine::Shared;
use super::history::{Event, Message, Status, Work, WorkItem};
use super::now_ms;
use super::turn::IdSource;
use super::writer::WriteOp;

/// A handle on a running [`super::Engine`]; cheap to clone.
#[derive(Clone)]
pub struct FlowClient {
    shared: Arc<Shared>,
}

impl FlowClient {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FlowClient { shared }
    }

    /// Starts orchestration `name` (its latest version) as `instance`. Idempotent: if the
    /// instance already exists nothing happens and `Ok(false)` is returned.
    pub async fn start<I: Serialize>(
        &self,
        name: &str,
        instance: &str,
        input: &I,
    ) -> Result<bool, FlowError> {
        let version = self
            .shared
            .registry
            .latest_version(name)
            .ok_or_else(|| FlowError::NotRegistered(name.to_string()))?;
        self.start_version(name, version, instance, input).await
    }

    /// Starts a specific registered version of orchestration `name`.
    pub async fn start_version<I: Serialize>(
        &self,
        name: &str,
        version: u32,
        instance: &str,
        input: &I,
    ) -> Result<bool, FlowError> {
        if self
            .shared
            .registry
            .orchestration_fn(name, version)
            .is_none()
        {
            return Err(FlowError::NotRegistered(format!(
                "{name} version {version}"
            )));
        }
        let input = serde_json::to_string(input)?;
        let start = WorkItem {
            id: self.shared.next_id(),
            instance: instance.to_string(),
            visible_at_ms: 0,
            work: Work::Message(Message {
                execution: Some(0),
                event: Event::Started {
                    name: name.to_string(),
                    version,
                    input: input.clone(),
                },
            }),
        };
        let report = self
            .shared
            .writer
            .commit(vec![WriteOp::CreateInstance {
                id: instance.to_string(),
                name: name.to_string(),
                version,
                input,
                parent: None,
                now_ms: now_ms(),
                start: start.clone(),
                if_taken: None,
            }])
            .await?;
        let created = report.created.first().copied().unwrap_or(false);
        if created {
            self.shared.dispatch(start);
        }
        Ok(created)
    }

    /// Raises event `name` on `instance`; kept until the orchestration waits for it.
    pub async fn raise_event<D: Serialize>(
        &self,
        instance: &str,
        name: &str,
        data: &D,
    ) -> Result<(), FlowError> {
        let event = Event::EventRaised {
            name: name.to_string(),
            data: serde_json::to_string(data)?,
        };
        self.send(instance, event).await
    }

    /// Cancels a running instance (and its running children). Activities already running
    /// finish, but their results are dropped.
    pub async fn cancel(&self, instance: &str, reason: &str) -> Result<(), FlowError> {
        let event = Event::CancelRequested {
            reason: reason.to_string(),
        };
        self.send(instance, event).await
    }

    async fn send(&self, instance: &str, event: Event) -> Result<(), FlowError> {
        if self.status(instance)?.is_none() {
            return Err(FlowError::NotFound(instance.to_string()));
        }
        let item = WorkItem {
            id: self.shared.next_id(),
            instance: instance.to_string(),
            visible_at_ms: 0,
            work: Work::Message(Message {
                execution: None,
                event,
            }),
        };
        self.shared
            .writer
            .commit(vec![WriteOp::InsertWork(item.clone())])
            .await?;
        self.shared.dispatch(item);
        Ok(())
    }

    /// The instance as last committed, if it exists.
    pub fn status(&self, instance: &str) -> Result<Option<InstanceInfo>, FlowError> {
        self.shared.read(|conn| db::instance(conn, instance))
    }

    /// The current execution's history.
    pub fn history(&self, instance: &str) -> Result<Vec<Event>, FlowError> {
        self.shared.read(|conn| {
            let info = db::instance(conn, instance)?
                .ok_or_else(|| FlowError::NotFound(instance.to_string()))?;
            db::history(conn, instance, info.execution)
        })
    }

    /// Waits until `instance` is completed, failed or cancelled, or `timeout` passes. Fails with
    /// [`FlowError::Stopped`] once the engine has stopped (shut down, or a failed commit), since
    /// nothing in this process would finish the instance any more.
    pub async fn wait(&self, instance: &str, timeout: Duration) -> Result<InstanceInfo, FlowError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // One watch for the whole wait (renewed only once it fired), removed when the wait
        // ends however it ends, so waiting on an instance that never finishes leaks nothing.
        let mut watch = self.shared.watch(instance);
        loop {
            let info = self
                .status(instance)?
                .ok_or_else(|| FlowError::NotFound(instance.to_string()))?;
            if info.status.is_terminal() {
                return Ok(info);
            }
            // The watch fires on this process's commits; the short poll covers other writers.
            let poll = tokio::time::Instant::now() + Duration::from_secs(1);
            tokio::select! {
                _ = &mut watch => watch = self.shared.watch(instance),
                () = self.shared.shutdown.cancelled() => return Err(FlowError::Stopped),
                () = tokio::time::sleep_until(deadline.min(poll)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(FlowError::Timeout {
                            instance: instance.to_string(),
                            status: info.status,
                        });
                    }
                }
            }
        }
    }

    /// Waits registered with this engine and not yet answered: a wait that ended, however it
    /// ended, leaves none behind.
    pub fn waiting(&self) -> usize {
        self.shared.waiter_count()
    }

    /// The flow database this client's engine owns.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    /// Starts other processes left in the inbox that this engine has not applied yet.
    pub fn pending_starts(&self) -> Result<Vec<db::PendingStart>, FlowError> {
        self.shared.read(db::pending_starts)
    }

    /// A page of instances in id order.
    pub fn list(
        &self,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<InstancePage, FlowError> {
        self.shared
            .read(|conn| db::list(conn, status, after, limit))
    }

    /// Deletes finished instances older than `age`, with their history. Returns how many.
    pub fn purge(&self, age: Duration) -> Result<usize, FlowError> {
        self.purge_prefixed(age, "")
    }

    /// [`FlowClient::purge`], only of instances whose id starts with `prefix`.
    pub fn purge_prefixed(&self, age: Duration, prefix: &str) -> Result<usize, FlowError> {
        let mut conn = db::open_write(&self.shared.path, true)?;
        db::purge_prefixed(&mut conn, now_ms() - age.as_millis() as i64, prefix)
    }
}
