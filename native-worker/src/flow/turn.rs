//! One turn of one instance: apply its pending messages to the live orchestration, and turn
//! what it did into history entries, new work and an instance update — committed together.
//!
//! A [`Live`] instance stays in the engine's cache between turns, so a turn costs the messages
//! it applies, not a reload and replay of the whole history. Replay ([`Live::replay`]) happens
//! only after a restart or an eviction, and checks every step against the recorded history.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::context::{Action, Core, OrchestrationContext};
use super::db::InstanceInfo;
use super::history::{ActivityWork, Event, Message, ParentRef, Status, Work, WorkItem};
use super::now_ms;
use super::registry::{BoxFuture, Registry};
use super::writer::WriteOp;

/// How an execution ended in this turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Completed(String),
    Failed(String),
    Cancelled(String),
    ContinueAsNew(String),
}

/// An instance in memory: its running orchestration future and replay state.
pub(crate) struct Live {
    pub(crate) id: String,
    name: String,
    version: u32,
    pub(crate) execution: u64,
    parent: Option<ParentRef>,
    pub(crate) status: Status,
    core: Arc<Mutex<Core>>,
    future: Option<BoxFuture<Result<String, String>>>,
    history_len: u64,
    /// An outcome reached while replaying (changed code, or nondeterminism), applied next turn.
    replay_outcome: Option<Outcome>,
}

/// Allocates work ids; the engine owns the id space of `flow_work`.
pub(crate) trait IdSource {
    fn next_id(&self) -> i64;
}

/// A child instance the turn creates: its start message, dispatched if the commit created it,
/// or else the answer failing the parent's step (committed in its place, `WriteOp::CreateInstance`).
pub(crate) struct ChildStart {
    pub start: WorkItem,
    pub taken: WorkItem,
}

/// What a turn produced: the ops to commit and what to hand on once they are durable.
#[derive(Default)]
pub(crate) struct TurnOutput {
    pub ops: Vec<WriteOp>,
    /// Messages and activities to dispatch after the commit.
    pub dispatch: Vec<WorkItem>,
    /// Child instances created by the turn.
    pub child_starts: Vec<ChildStart>,
    /// The instance reached a terminal state; waiters are told after the commit.
    pub terminal: Option<Status>,
}

impl Live {
    /// An instance whose history is empty: its start message creates the orchestration.
    fn fresh(info: &InstanceInfo) -> Box<Live> {
        Box::new(Live {
            id: info.id.clone(),
            name: info.name.clone(),
            version: info.version,
            execution: info.execution,
            parent: info.parent.clone(),
            status: info.status,
            core: Arc::new(Mutex::new(Core::new(&info.id, info.execution, []))),
            future: None,
            history_len: 0,
            replay_outcome: None,
        })
    }

    /// Rebuilds an instance from its stored history by running its code against it.
    fn replay(info: &InstanceInfo, history: Vec<Event>, registry: &Registry) -> Box<Live> {
        let mut live = Live::fresh(info);
        live.core = Arc::new(Mutex::new(Core::new(
            &info.id,
            info.execution,
            history.iter().cloned(),
        )));
        live.history_len = history.len() as u64;
        for event in history {
            if event.scheduled_seq().is_some() {
                continue;
            }
            if let Some(outcome) = live.apply(event, registry) {
                live.replay_outcome = Some(outcome);
                return live;
            }
        }
        let unreplayed = live.core().unreplayed_steps();
        if !unreplayed.is_empty() {
            live.replay_outcome = Some(Outcome::Failed(format!(
                "nondeterminism in instance `{}`: history recorded steps the code no longer \
                 takes: {}",
                live.id,
                unreplayed.join(", ")
            )));
        }
        live
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        super::lock(&self.core)
    }

    /// Applies one history event (replayed or new) and runs the orchestration as far as it goes.
    fn apply(&mut self, event: Event, registry: &Registry) -> Option<Outcome> {
        match event {
            Event::Started {
                name,
                version,
                input,
            } => {
                if self.future.is_some() {
                    return None;
                }
                let Some(run) = registry.orchestration_fn(&name, version) else {
                    return Some(Outcome::Failed(format!(
                        "orchestration `{name}` version {version} is not registered"
                    )));
                };
                let ctx = OrchestrationContext::new(Arc::clone(&self.core));
                self.future = Some(run(ctx, input));
            }
            Event::CancelRequested { reason } => return Some(Outcome::Cancelled(reason)),
            completion => {
                if !self.core().deliver(&completion) {
                    tracing::warn!(instance = %self.id, ?completion, "dropped a duplicate answer");
                }
            }
        }
        self.poll()
    }

    fn poll(&mut self) -> Option<Outcome> {
        let future = self.future.as_mut()?;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        let mut core = self.core();
        if let Some(error) = core.nondeterminism.take() {
            return Some(Outcome::Failed(error));
        }
        if let Some(input) = core.continue_as_new.take() {
            return Some(Outcome::ContinueAsNew(input));
        }
        match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(Ok(output))) => Some(Outcome::Completed(output)),
            Ok(Poll::Ready(Err(error))) => Some(Outcome::Failed(error)),
            Err(panic) => Some(Outcome::Failed(format!(
                "orchestration panicked: {}",
                panic_message(&panic)
            ))),
        }
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Builds a work item for `instance`.
pub(crate) fn message_item(
    ids: &dyn IdSource,
    instance: &str,
    execution: Option<u64>,
    event: Event,
    visible_at_ms: i64,
) -> WorkItem {
    WorkItem {
        id: ids.next_id(),
        instance: instance.to_string(),
        visible_at_ms,
        work: Work::Message(Message { execution, event }),
    }
}

/// Continue-as-new inside one turn is bounded so a loop that never waits cannot spin.
const MAX_CONTINUES_PER_TURN: usize = 64;

/// Runs one turn. `live` is `None` when the instance does not exist (purged): its messages are
/// dropped.
pub(crate) fn run_turn(
    live: Option<&mut Live>,
    messages: Vec<(i64, Message)>,
    registry: &Registry,
    ids: &dyn IdSource,
) -> TurnOutput {
    let mut out = TurnOutput::default();
    out.ops
        .extend(messages.iter().map(|(id, _)| WriteOp::DeleteWork(*id)));
    let Some(live) = live else {
        return out;
    };
    if live.status.is_terminal() {
        return out;
    }
    let mut outcome = live.replay_outcome.take();
    // Steps taken while replaying (code that grew new steps) are scheduled now.
    collect_steps(live, registry, ids, &mut out);
    let mut continues = 0;
    let mut messages = messages.into_iter();
    loop {
        if let Some(Outcome::ContinueAsNew(input)) = &outcome {
            continues += 1;
            if continues > MAX_CONTINUES_PER_TURN {
                outcome = Some(Outcome::Failed(format!(
                    "continued as new {MAX_CONTINUES_PER_TURN} times in one turn without waiting"
                )));
            } else {
                let input = input.clone();
                outcome = continue_as_new(live, input, registry, ids, &mut out);
                continue;
            }
        }
        if outcome.is_some() {
            break;
        }
        let Some((_, message)) = messages.next() else {
            break;
        };
        if message
            .execution
            .is_some_and(|execution| execution != live.execution)
        {
            continue;
        }
        record(live, &message.event, &mut out);
        outcome = live.apply(message.event, registry);
        collect_steps(live, registry, ids, &mut out);
    }
    match outcome {
        Some(outcome) => finish(live, outcome, ids, &mut out),
        None => {
            if let Some(custom_status) = live.core().custom_status.take() {
                out.ops.push(update(
                    live,
                    Status::Running,
                    None,
                    None,
                    Some(custom_status),
                ));
            }
        }
    }
    out
}

fn record(live: &mut Live, event: &Event, out: &mut TurnOutput) {
    out.ops.push(WriteOp::AppendHistory {
        instance: live.id.clone(),
        execution: live.execution,
        idx: live.history_len,
        event: serde_json::to_string(event).expect("events serialise"),
    });
    live.history_len += 1;
}

/// Turns the steps the orchestration just took into history entries and work.
fn collect_steps(live: &mut Live, registry: &Registry, ids: &dyn IdSource, out: &mut TurnOutput) {
    let (events, actions) = {
        let mut core = live.core();
        (
            std::mem::take(&mut core.new_events),
            std::mem::take(&mut core.actions),
        )
    };
    for event in &events {
        record(live, event, out);
    }
    for action in actions {
        match action {
            Action::Activity {
                seq,
                name,
                input,
                retry,
            } => {
                let item = WorkItem {
                    id: ids.next_id(),
                    instance: live.id.clone(),
                    visible_at_ms: 0,
                    work: Work::Activity(ActivityWork {
                        execution: live.execution,
                        seq,
                        name,
                        input,
                        attempt: 1,
                        retry,
                        interruptions: 0,
                    }),
                };
                out.ops.push(WriteOp::InsertWork(item.clone()));
                out.dispatch.push(item);
            }
            Action::Timer { seq, fire_at_ms } => {
                let item = message_item(
                    ids,
                    &live.id,
                    Some(live.execution),
                    Event::TimerFired { seq },
                    fire_at_ms,
                );
                out.ops.push(WriteOp::InsertWork(item.clone()));
                out.dispatch.push(item);
            }
            Action::Child {
                seq,
                name,
                version,
                instance,
                input,
            } => match version.or_else(|| registry.latest_version(&name)) {
                Some(version) => {
                    let parent = ParentRef {
                        instance: live.id.clone(),
                        execution: live.execution,
                        seq,
                    };
                    let start = message_item(
                        ids,
                        &instance,
                        Some(0),
                        Event::Started {
                            name: name.clone(),
                            version,
                            input: input.clone(),
                        },
                        0,
                    );
                    let taken = message_item(
                        ids,
                        &live.id,
                        Some(live.execution),
                        Event::ChildFailed {
                            seq,
                            error: format!("instance id `{instance}` is already in use"),
                        },
                        0,
                    );
                    out.ops.push(WriteOp::CreateInstance {
                        if_taken: Some(Box::new(taken.clone())),
                        id: instance,
                        name,
                        version,
                        input,
                        parent: Some(
                            serde_json::to_string(&parent).expect("parent references serialise"),
                        ),
                        now_ms: now_ms(),
                        start: start.clone(),
                    });
                    out.child_starts.push(ChildStart { start, taken });
                }
                None => {
                    let item = message_item(
                        ids,
                        &live.id,
                        Some(live.execution),
                        Event::ChildFailed {
                            seq,
                            error: format!("orchestration `{name}` is not registered"),
                        },
                        0,
                    );
                    out.ops.push(WriteOp::InsertWork(item.clone()));
                    out.dispatch.push(item);
                }
            },
        }
    }
}

/// Ends the current execution and starts the next with `input`, carrying unconsumed events.
fn continue_as_new(
    live: &mut Live,
    input: String,
    registry: &Registry,
    ids: &dyn IdSource,
    out: &mut TurnOutput,
) -> Option<Outcome> {
    let carried = std::mem::take(&mut live.core().buffered_events);
    out.ops.push(WriteOp::ClearHistory {
        instance: live.id.clone(),
        execution: live.execution,
    });
    live.execution += 1;
    live.history_len = 0;
    live.future = None;
    live.version = registry.latest_version(&live.name).unwrap_or(live.version);
    live.core = Arc::new(Mutex::new(Core::new(&live.id, live.execution, [])));
    out.ops
        .push(update(live, Status::Running, None, None, None));
    let started = Event::Started {
        name: live.name.clone(),
        version: live.version,
        input,
    };
    record(live, &started, out);
    let mut outcome = live.apply(started, registry);
    collect_steps(live, registry, ids, out);
    for (name, data) in carried
        .into_iter()
        .flat_map(|(name, queue)| queue.into_iter().map(move |data| (name.clone(), data)))
    {
        if outcome.is_some() {
            break;
        }
        let event = Event::EventRaised { name, data };
        record(live, &event, out);
        outcome = live.apply(event, registry);
        collect_steps(live, registry, ids, out);
    }
    outcome
}

fn update(
    live: &Live,
    status: Status,
    output: Option<String>,
    error: Option<String>,
    custom_status: Option<Option<String>>,
) -> WriteOp {
    WriteOp::UpdateInstance {
        id: live.id.clone(),
        status,
        execution: live.execution,
        output,
        error,
        custom_status,
        now_ms: now_ms(),
    }
}

/// Records a terminal outcome: instance row, parent notification, children cancelled.
fn finish(live: &mut Live, outcome: Outcome, ids: &dyn IdSource, out: &mut TurnOutput) {
    let custom_status = live.core().custom_status.take();
    let (status, output, error) = match outcome {
        Outcome::Completed(output) => (Status::Completed, Some(output), None),
        Outcome::Failed(error) => (Status::Failed, None, Some(error)),
        Outcome::Cancelled(reason) => (Status::Cancelled, None, Some(reason)),
        Outcome::ContinueAsNew(_) => unreachable!("continue-as-new is handled by the turn loop"),
    };
    if status == Status::Failed {
        tracing::warn!(instance = %live.id, error = error.as_deref().unwrap_or(""), "orchestration failed");
    }
    out.ops.push(update(
        live,
        status,
        output.clone(),
        error.clone(),
        custom_status,
    ));
    if let Some(parent) = &live.parent {
        let event = match &output {
            Some(output) => Event::ChildCompleted {
                seq: parent.seq,
                output: output.clone(),
            },
            None => Event::ChildFailed {
                seq: parent.seq,
                error: format!(
                    "child `{}` {status}: {}",
                    live.id,
                    error.clone().unwrap_or_default()
                ),
            },
        };
        let item = message_item(ids, &parent.instance, Some(parent.execution), event, 0);
        out.ops.push(WriteOp::InsertWork(item.clone()));
        out.dispatch.push(item);
    }
    if status == Status::Cancelled {
        let children: Vec<String> = live.core().open_children.values().cloned().collect();
        for child in children {
            let item = message_item(
                ids,
                &child,
                None,
                Event::CancelRequested {
                    reason: format!("parent `{}` was cancelled", live.id),
                },
                0,
            );
            out.ops.push(WriteOp::InsertWork(item.clone()));
            out.dispatch.push(item);
        }
    }
    live.status = status;
    live.future = None;
    out.terminal = Some(status);
}

/// Loads an instance for its first turn in this process.
pub(crate) fn load(
    info: Option<InstanceInfo>,
    history: impl FnOnce(&InstanceInfo) -> Result<Vec<Event>, super::FlowError>,
    registry: &Registry,
) -> Result<Option<Box<Live>>, super::FlowError> {
    let Some(info) = info else {
        return Ok(None);
    };
    if info.status.is_terminal() {
        return Ok(Some(Live::fresh(&info)));
    }
    let events = match history(&info) {
        Ok(events) => events,
        // Written by another build, or damaged: this instance cannot resume, but the engine and
        // every other instance go on.
        Err(super::FlowError::Json(error)) => {
            let mut live = Live::fresh(&info);
            live.replay_outcome = Some(Outcome::Failed(format!(
                "its stored history no longer decodes ({error}); it cannot resume"
            )));
            return Ok(Some(live));
        }
        Err(error) => return Err(error),
    };
    Ok(Some(if events.is_empty() {
        Live::fresh(&info)
    } else {
        Live::replay(&info, events, registry)
    }))
}
