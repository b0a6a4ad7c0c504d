//! What the engine records: history events, the messages that drive turns, activity work.
//!
//! Every payload is JSON text. The engine never looks inside inputs and outputs; typed
//! (de)serialisation happens at the edges ([`super::Registry`], [`super::OrchestrationContext`]).

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;

/// One entry of an execution's history. Replay feeds the completions back, in order, to a
/// fresh run of the orchestration and checks every step it takes against the scheduled entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Always the first entry of an execution.
    Started {
        name: String,
        version: u32,
        input: String,
    },
    ActivityScheduled {
        seq: u64,
        name: String,
        input: String,
    },
    TimerCreated {
        seq: u64,
        fire_at_ms: i64,
    },
    ChildScheduled {
        seq: u64,
        name: String,
        instance: String,
        input: String,
    },
    EventAwaited {
        seq: u64,
        name: String,
    },
    /// A nondeterministic value (`now`, a uuid) taken once and replayed ever after.
    SystemValue {
        seq: u64,
        value: String,
    },
    ActivityCompleted {
        seq: u64,
        output: String,
    },
    ActivityFailed {
        seq: u64,
        error: String,
    },
    TimerFired {
        seq: u64,
    },
    ChildCompleted {
        seq: u64,
        output: String,
    },
    ChildFailed {
        seq: u64,
        error: String,
    },
    EventRaised {
        name: String,
        data: String,
    },
    CancelRequested {
        reason: String,
    },
}

impl Event {
    /// The step number of an entry the orchestration itself scheduled.
    pub(crate) fn scheduled_seq(&self) -> Option<u64> {
        match self {
            Event::ActivityScheduled { seq, .. }
            | Event::TimerCreated { seq, .. }
            | Event::ChildScheduled { seq, .. }
            | Event::EventAwaited { seq, .. }
            | Event::SystemValue { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// A short human description of a scheduled step, for nondeterminism errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            Event::ActivityScheduled { name, .. } => format!("activity `{name}`"),
            Event::TimerCreated { .. } => "a timer".to_string(),
            Event::ChildScheduled { name, instance, .. } => {
                format!("child orchestration `{name}` ({instance})")
            }
            Event::EventAwaited { name, .. } => format!("a wait for event `{name}`"),
            Event::SystemValue { .. } => "a system value (now/uuid)".to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// A message for an orchestration instance: the only way anything reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The execution the message answers; `None` (events, cancellation) applies to whichever
    /// execution is current. Answers to an execution that has since continued-as-new are dropped.
    pub execution: Option<u64>,
    pub event: Event,
}

/// An activity to run, durable until its result is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityWork {
    pub execution: u64,
    pub seq: u64,
    pub name: String,
    pub input: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub retry: RetryPolicy,
    /// Times this attempt of a repeatable activity was interrupted by the worker stopping and
    /// run again without counting (see [`super::Registry::repeatable_activity`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interruptions: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A durable unit of pending work: a message waiting for its instance, or an activity.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Message(Message),
    Activity(ActivityWork),
}

impl Work {
    pub(crate) fn kind(&self) -> i64 {
        match self {
            Work::Message(_) => 0,
            Work::Activity(_) => 1,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        match self {
            Work::Message(message) => serde_json::to_string(message),
            Work::Activity(activity) => serde_json::to_string(activity),
        }
        .expect("work items serialise")
    }

    pub(crate) fn from_row(kind: i64, body: &str) -> serde_json::Result<Self> {
        Ok(match kind {
            0 => Work::Message(serde_json::from_str(body)?),
            _ => Work::Activity(serde_json::from_str(body)?),
        })
    }
}

/// A work item with its identity and when it becomes due.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub id: i64,
    pub instance: String,
    pub visible_at_ms: i64,
    pub work: Work,
}

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => Status::Running,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Running
    }
}

impl std::str::FromStr for Status {
    type Err = super::FlowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Status::parse(text).ok_or_else(|| super::FlowError::BadStatus(text.to_string()))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parent step a child orchestration reports back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentRef {
    pub instance: String,
    pub execution: u64,
    pub seq: u64,
}
