//! The orchestration side of the engine: [`OrchestrationContext`] and the state it shares with
//! the engine ([`Core`]).
//!
//! Every side effect an orchestration takes gets the next step number (`seq`). While replaying,
//! the step must match the history entry recorded under that number, or the instance fails with
//! a nondeterminism error; past the end of the history, the step is new and becomes a history
//! entry plus work when the turn commits. Completions arrive through [`Core::deliver`], which
//! wakes whichever future waits on that step, so any future combinator (`join_all`, `select`)
//! works, and results are handed out in history order, which keeps races deterministic.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::history::Event;
use super::retry::RetryPolicy;
use super::{lock, now_ms};

/// The outcome of a step: the JSON output, or an error message.
pub(crate) type StepResult = Result<String, String>;

/// A step the engine must act on when the turn commits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Activity {
        seq: u64,
        name: String,
        input: String,
        retry: RetryPolicy,
    },
    Timer {
        seq: u64,
        fire_at_ms: i64,
    },
    Child {
        seq: u64,
        name: String,
        version: Option<u32>,
        instance: String,
        input: String,
    },
}

/// An instance's replay and in-flight state, shared by its context and the engine.
#[derive(Default)]
pub(crate) struct Core {
    pub(crate) instance: String,
    /// Which execution (continue-as-new generation) this is; part of child instance ids.
    execution: u64,
    next_seq: u64,
    /// Scheduled entries of the history being replayed, by step number.
    recorded: HashMap<u64, Event>,
    /// History entries this turn adds (scheduled steps), in the order they were taken.
    pub(crate) new_events: Vec<Event>,
    pub(crate) actions: Vec<Action>,
    results: HashMap<u64, StepResult>,
    /// Steps whose result arrived and was taken or is waiting to be: a second answer is dropped.
    answered: std::collections::HashSet<u64>,
    wakers: HashMap<u64, Waker>,
    /// Raised events nobody has waited for yet, by name, in arrival order.
    pub(crate) buffered_events: HashMap<String, VecDeque<String>>,
    /// Waits issued before their event arrived, by name, in issue order.
    pending_waits: HashMap<String, VecDeque<u64>>,
    /// Child orchestrations started and not yet answered: step → instance id.
    pub(crate) open_children: HashMap<u64, String>,
    pub(crate) custom_status: Option<Option<String>>,
    pub(crate) continue_as_new: Option<String>,
    pub(crate) nondeterminism: Option<String>,
}

impl Core {
    pub(crate) fn new(
        instance: &str,
        execution: u64,
        recorded: impl IntoIterator<Item = Event>,
    ) -> Self {
        let recorded = recorded
            .into_iter()
            .filter_map(|event| event.scheduled_seq().map(|seq| (seq, event)))
            .collect();
        Core {
            instance: instance.to_string(),
            execution,
            recorded,
            ..Core::default()
        }
    }

    /// Steps still recorded in history that the code has not re-taken.
    pub(crate) fn unreplayed_steps(&self) -> Vec<String> {
        let mut left: Vec<_> = self.recorded.iter().collect();
        left.sort_by_key(|(seq, _)| **seq);
        left.into_iter()
            .map(|(seq, event)| format!("step {seq}: {}", event.describe()))
            .collect()
    }

    /// Takes the next step, described by `fresh(seq)`. While replaying, checks it against
    /// history and returns the recorded entry; past history, records it as new and returns `None`.
    fn take_step(&mut self, fresh: impl FnOnce(u64) -> Event) -> (u64, Option<Event>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let fresh = fresh(seq);
        match self.recorded.remove(&seq) {
            Some(recorded) => {
                if !same_step(&recorded, &fresh) && self.nondeterminism.is_none() {
                    self.nondeterminism = Some(format!(
                        "nondeterminism in instance `{}`: history recorded {} at step {seq}, \
                         but the code now takes {}",
                        self.instance,
                        recorded.describe(),
                        fresh.describe()
                    ));
                }
                (seq, Some(recorded))
            }
            None => {
                self.new_events.push(fresh);
                (seq, None)
            }
        }
    }

    /// Hands a completion to the step waiting for it (or buffers a raised event).
    /// Returns false for an answer to a step that was already answered.
    pub(crate) fn deliver(&mut self, event: &Event) -> bool {
        let (seq, result) = match event {
            Event::ActivityCompleted { seq, output } | Event::ChildCompleted { seq, output } => {
                (*seq, Ok(output.clone()))
            }
            Event::ActivityFailed { seq, error } | Event::ChildFailed { seq, error } => {
                (*seq, Err(error.clone()))
            }
            Event::TimerFired { seq } => (*seq, Ok("null".to_string())),
            Event::EventRaised { name, data } => {
                match self
                    .pending_waits
                    .get_mut(name)
                    .and_then(VecDeque::pop_front)
                {
                    Some(seq) => (seq, Ok(data.clone())),
                    None => {
                        self.buffered_events
                            .entry(name.clone())
                            .or_default()
                            .push_back(data.clone());
                        return true;
                    }
                }
            }
            _ => return true,
        };
        if !self.answered.insert(seq) {
            return false;
        }
        if matches!(
            event,
            Event::ChildCompleted { .. } | Event::ChildFailed { .. }
        ) {
            self.open_children.remove(&seq);
        }
        self.results.insert(seq, result);
        if let Some(waker) = self.wakers.remove(&seq) {
            waker.wake();
        }
        true
    }

    fn poll_step(&mut self, seq: u64, cx: &mut Context<'_>) -> Poll<StepResult> {
        match self.results.remove(&seq) {
            Some(result) => Poll::Ready(result),
            None => {
                self.wakers.insert(seq, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Whether replayed code took the step history recorded. Inputs may change between versions
/// of the code (a recorded step keeps its recorded result); kinds and names may not.
fn same_step(recorded: &Event, fresh: &Event) -> bool {
    match (recorded, fresh) {
        (Event::ActivityScheduled { name: a, .. }, Event::ActivityScheduled { name: b, .. })
        | (Event::EventAwaited { name: a, .. }, Event::EventAwaited { name: b, .. }) => a == b,
        (
            Event::ChildScheduled {
                name: a,
                instance: x,
                ..
            },
            Event::ChildScheduled {
                name: b,
                instance: y,
                ..
            },
        ) => a == b && x == y,
        (Event::TimerCreated { .. }, Event::TimerCreated { .. })
        | (Event::SystemValue { .. }, Event::SystemValue { .. }) => true,
        _ => false,
    }
}

/// What an orchestration uses for every side effect. Cheap to clone; all clones drive the same
/// instance.
#[derive(Clone)]
pub struct OrchestrationContext {
    core: Arc<Mutex<Core>>,
    instance: Arc<str>,
}

impl OrchestrationContext {
    pub(crate) fn new(core: Arc<Mutex<Core>>) -> Self {
        let instance = lock(&core).instance.clone().into();
        OrchestrationContext { core, instance }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// Runs activity `name` with the default retry policy; its recorded result is replayed,
    /// never recomputed.
    pub fn activity<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> StepFuture<O> {
        self.activity_with_retry(name, input, RetryPolicy::default())
    }

    /// Runs activity `name` with an explicit retry policy.
    pub fn activity_with_retry<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        retry: RetryPolicy,
    ) -> StepFuture<O> {
        let input = to_json(input);
        let mut core = self.core();
        let (seq, recorded) = core.take_step(|seq| Event::ActivityScheduled {
            seq,
            name: name.to_string(),
            input: input.clone(),
        });
        if recorded.is_none() {
            core.actions.push(Action::Activity {
                seq,
                name: name.to_string(),
                input,
                retry,
            });
        }
        self.step(seq)
    }

    /// A durable sleep: survives restarts and fires at the recorded time.
    pub fn sleep(&self, duration: Duration) -> StepFuture<()> {
        let fire_at_ms = now_ms() + duration.as_millis() as i64;
        let mut core = self.core();
        let (seq, recorded) = core.take_step(|seq| Event::TimerCreated { seq, fire_at_ms });
        if recorded.is_none() {
            core.actions.push(Action::Timer { seq, fire_at_ms });
        }
        self.step(seq)
    }

    /// Waits for the next event called `name` raised on this instance. Events raised before
    /// the wait are kept: the n-th wait for a name receives the n-th event of that name.
    pub fn wait_event<O: DeserializeOwned>(&self, name: &str) -> StepFuture<O> {
        let mut core = self.core();
        let (seq, _) = core.take_step(|seq| Event::EventAwaited {
            seq,
            name: name.to_string(),
        });
        match core
            .buffered_events
            .get_mut(name)
            .and_then(VecDeque::pop_front)
        {
            Some(data) => {
                core.answered.insert(seq);
                core.results.insert(seq, Ok(data));
            }
            None => core
                .pending_waits
                .entry(name.to_string())
                .or_default()
                .push_back(seq),
        }
        self.step(seq)
    }

    /// Starts child orchestration `name` (its latest version) as instance
    /// `{this}:{execution}:{step}` and waits for its output.
    pub fn child<I: Serialize, O: DeserializeOwned>(&self, name: &str, input: &I) -> StepFuture<O> {
        let instance = {
            let core = self.core();
            format!("{}:{}:{}", self.instance, core.execution, core.next_seq)
        };
        self.child_with_id(name, &instance, input)
    }

    /// Starts child orchestration `name` under a chosen instance id.
    pub fn child_with_id<I: Serialize, O: DeserializeOwned>(
        &self,
        name: &str,
        instance: &str,
        input: &I,
    ) -> StepFuture<O> {
        let input = to_json(input);
        let mut core = self.core();
        let (seq, recorded) = core.take_step(|seq| Event::ChildScheduled {
            seq,
            name: name.to_string(),
            instance: instance.to_string(),
            input: input.clone(),
        });
        if !core.answered.contains(&seq) {
            core.open_children.insert(seq, instance.to_string());
        }
        if recorded.is_none() {
            core.actions.push(Action::Child {
                seq,
                name: name.to_string(),
                version: None,
                instance: instance.to_string(),
                input,
            });
        }
        self.step(seq)
    }

    /// The current time in Unix milliseconds, recorded the first time and replayed after.
    pub fn now_ms(&self) -> i64 {
        self.system_value(|| now_ms().to_string())
            .parse()
            .unwrap_or_default()
    }

    /// A random (v4) uuid, recorded the first time and replayed after.
    pub fn new_uuid(&self) -> String {
        self.system_value(|| uuid::Uuid::new_v4().to_string())
    }

    fn system_value(&self, make: impl FnOnce() -> String) -> String {
        let mut core = self.core();
        let value = make();
        let (_, recorded) = core.take_step(|seq| Event::SystemValue {
            seq,
            value: value.clone(),
        });
        match recorded {
            Some(Event::SystemValue { value, .. }) => value,
            _ => value,
        }
    }

    /// A short progress note stored on the instance (`flow show`, [`super::FlowClient::status`]).
    pub fn set_custom_status(&self, status: impl Into<String>) {
        self.core().custom_status = Some(Some(status.into()));
    }

    /// Ends this execution and starts a fresh one with `input` and an empty history, keeping
    /// long-lived loops bounded. Use as `return ctx.continue_as_new(&next).await;`: the returned
    /// future never resolves, the engine takes over.
    pub fn continue_as_new<I: Serialize, O>(&self, input: &I) -> ContinueAsNew<O> {
        self.core().continue_as_new = Some(to_json(input));
        ContinueAsNew(PhantomData)
    }

    fn step<O: DeserializeOwned>(&self, seq: u64) -> StepFuture<O> {
        StepFuture {
            core: Arc::clone(&self.core),
            seq,
            output: PhantomData,
        }
    }
}

fn to_json<I: Serialize>(input: &I) -> String {
    serde_json::to_string(input).expect("orchestration inputs serialise to JSON")
}

/// The result of one step: the deserialised output, or the step's error message.
#[must_use = "a step does nothing for the orchestration unless awaited"]
pub struct StepFuture<O> {
    core: Arc<Mutex<Core>>,
    seq: u64,
    output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> Future for StepFuture<O> {
    type Output = Result<O, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let seq = self.seq;
        lock(&self.core).poll_step(seq, cx).map(|result| {
            result.and_then(|json| {
                serde_json::from_str(&json)
                    .map_err(|error| format!("step {seq} output does not decode: {error}"))
            })
        })
    }
}

/// Returned by [`OrchestrationContext::continue_as_new`]; never resolves.
pub struct ContinueAsNew<O>(PhantomData<fn() -> O>);

impl<O> Future for ContinueAsNew<O> {
    type Output = Result<O, String>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}
