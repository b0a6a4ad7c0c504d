//! Turning one firehose event into one store change, or a counted reason not to.

use crate::extract::{self, Extracted};

use super::Policy;
use crate::firehose::{self, Event, Operation, Payload};
use crate::store::Change;

/// Why an event produced no change. Each is counted in the ingest stats.
#[derive(Debug)]
pub enum Skip {
    /// The author is on the banned list.
    Banned,
    /// A collection we do not index (tap and replays are not pre-filtered).
    Unwanted,
    /// The record failed extraction: counted and skipped, never fatal.
    Malformed(extract::ExtractError),
    /// The event's source time is over [`MAX_AHEAD_OF_CLOCK_US`] ahead of ours: bogus, and as
    /// a Jetstream cursor it would skip everything after it. Counted as malformed.
    FromTheFuture,
}

/// How far ahead of the local clock an event's source time may be (10 minutes of skew).
pub const MAX_AHEAD_OF_CLOCK_US: i64 = 10 * 60 * 1_000_000;

/// Whether `event` claims a source time too far ahead of `now_us` to be believed.
pub fn is_from_the_future(event: &Event, now_us: i64) -> bool {
    event
        .time_us
        .is_some_and(|time_us| time_us > now_us.saturating_add(MAX_AHEAD_OF_CLOCK_US))
}

/// Decides what an event does to the store.
pub fn classify(event: &Event, policy: &Policy) -> Result<Change, Skip> {
    if policy.is_banned(&event.did) {
        return Err(Skip::Banned);
    }
    match &event.payload {
        Payload::Identity { handle } => Ok(Change::Identity {
            did: event.did.clone(),
            handle: handle.clone(),
            version: event.order(),
        }),
        Payload::Account { active, status } => Ok(Change::Account {
            did: event.did.clone(),
            active: *active,
            status: status.clone(),
            version: event.order(),
        }),
        Payload::Commit(commit) => {
            if !firehose::is_wanted(&commit.collection) {
                return Err(Skip::Unwanted);
            }
            let rev = commit.rev.clone();
            let Some(body) = commit
                .record
                .as_ref()
                .filter(|_| commit.operation != Operation::Delete)
            else {
                return Ok(Change::Delete {
                    did: event.did.clone(),
                    collection: commit.collection.clone(),
                    rkey: commit.rkey.clone(),
                    rev,
                });
            };
            match extract::extract(&event.did, &commit.collection, &commit.rkey, body) {
                Ok(Extracted::Document(document)) => Ok(Change::Document { document, rev }),
                Ok(Extracted::Publication(publication)) => {
                    Ok(Change::Publication { publication, rev })
                }
                Err(error) => Err(Skip::Malformed(error)),
            }
        }
    }
}
