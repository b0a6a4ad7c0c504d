//! Running activities: one attempt per slot, with its timeout, panic capture and retry policy,
//! each attempt marked so that a crash mid-attempt counts against the policy on recovery.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::engine::Shared;
use super::history::{ActivityWork, Event, Work, WorkItem};
use super::registry::ActivityContext;
use super::turn;
use super::writer::WriteOp;
use super::{lock, now_ms};

/// Why an attempt failed, and whether another attempt may succeed.
struct ActivityFailure {
    error: String,
    retryable: bool,
}

impl Shared {
    pub(crate) async fn run_activity(
        self: Arc<Self>,
        item: WorkItem,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Work::Activity(work) = &item.work else {
            return;
        };
        self.stats.activities.fetch_add(1, Relaxed);
        // Marked so that a crash mid-attempt counts against the retry policy on recovery. Work
        // recovered after a restart is suspect (it may be what crashed the last process), so its
        // mark is made durable before it runs; fresh work does not wait, so an activity that kills
        // the process costs at most one uncounted crash.
        lock(&self.running).insert(item.id);
        let mark = vec![WriteOp::MarkRunning(item.id)];
        if lock(&self.suspects).remove(&item.id) {
            if let Err(error) = self.writer.commit(mark).await {
                self.fail(&error.to_string());
                return;
            }
        } else {
            let shared = Arc::clone(&self);
            self.writer.submit(
                mark,
                Box::new(move |result| {
                    if let Err(error) = result {
                        shared.fail(&error);
                    }
                }),
            );
        }
        let result = self.call_activity(&item.instance, work).await;
        drop(slot);
        let (ops, next) = match result {
            Ok(output) => self.activity_answer(
                &item,
                Event::ActivityCompleted {
                    seq: work.seq,
                    output,
                },
            ),
            Err(ActivityFailure { error, retryable }) => {
                self.after_failure(&item, work, &error, retryable)
            }
        };
        self.commit_and_dispatch(ops, vec![next]);
        // Only now: a stopping engine waits for this set to empty before closing its writer.
        lock(&self.running).remove(&item.id);
    }

    /// What follows a failed attempt: the next attempt after the policy's delay, or the failure
    /// reported to the orchestration once attempts are spent.
    pub(crate) fn after_failure(
        &self,
        item: &WorkItem,
        work: &ActivityWork,
        error: &str,
        retryable: bool,
    ) -> (Vec<WriteOp>, WorkItem) {
        match work.retry.delay_after(work.attempt).filter(|_| retryable) {
            Some(delay) => {
                self.stats.activity_retries.fetch_add(1, Relaxed);
                tracing::debug!(instance = %item.instance, activity = %work.name, attempt = work.attempt, %error, "activity failed; retrying");
                let mut retry = item.clone();
                retry.visible_at_ms = now_ms() + delay.as_millis() as i64;
                retry.work = Work::Activity(ActivityWork {
                    attempt: work.attempt + 1,
                    ..work.clone()
                });
                (vec![WriteOp::InsertWork(retry.clone())], retry)
            }
            None => self.activity_answer(
                item,
                Event::ActivityFailed {
                    seq: work.seq,
                    error: format!(
                        "activity `{}` failed after {} attempt(s): {error}",
                        work.name, work.attempt
                    ),
                },
            ),
        }
    }

    fn activity_answer(&self, item: &WorkItem, event: Event) -> (Vec<WriteOp>, WorkItem) {
        let Work::Activity(work) = &item.work else {
            unreachable!("only activities are answered");
        };
        let answer = turn::message_item(self, &item.instance, Some(work.execution), event, 0);
        (
            vec![
                WriteOp::DeleteWork(item.id),
                WriteOp::InsertWork(answer.clone()),
            ],
            answer,
        )
    }

    async fn call_activity(
        &self,
        instance: &str,
        work: &ActivityWork,
    ) -> Result<String, ActivityFailure> {
        let Some(run) = self.registry.activity_fn(&work.name) else {
            return Err(ActivityFailure {
                error: format!("activity `{}` is not registered", work.name),
                retryable: false,
            });
        };
        let ctx = ActivityContext {
            instance: instance.to_string(),
            name: work.name.clone(),
            attempt: work.attempt,
            seq: work.seq,
        };
        let mut task = self.runtime.spawn(run(ctx, work.input.clone()));
        let joined = match work.retry.timeout_ms {
            Some(limit) => {
                match tokio::time::timeout(Duration::from_millis(limit), &mut task).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        task.abort();
                        return Err(ActivityFailure {
                            error: format!("attempt timed out after {limit} ms"),
                            retryable: true,
                        });
                    }
                }
            }
            None => task.await,
        };
        match joined {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(ActivityFailure {
                error,
                retryable: true,
            }),
            Err(join) if join.is_panic() => Err(ActivityFailure {
                error: format!("panicked: {}", turn::panic_message(&join.into_panic())),
                retryable: true,
            }),
            Err(join) => Err(ActivityFailure {
                error: join.to_string(),
                retryable: true,
            }),
        }
    }
}
