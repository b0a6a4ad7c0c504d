//! The firehose event model both sources decode into, and the frame decoders themselves.
//!
//! Jetstream and tap say the same things in different shapes; everything downstream of the
//! consumer sees only [`Event`]. Decoding never panics: a frame that is not an event is a
//! [`FrameError`], counted and skipped by the consumer.

use serde::Deserialize;
use serde_json::Value;

/// Where an event sits in its source's stream: what the cursor (Jetstream) or ack (tap) refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Jetstream's cursor: the event's `time_us`.
    TimeUs(i64),
    /// A tap event id, acknowledged once the data it carries is durable.
    TapId(u64),
    /// A replayed file line; replays keep no cursor.
    Line(u64),
    /// A change from outside the firehose (backfill, Turso): no cursor or ack to advance.
    Untracked,
}

/// One firehose event, normalised across sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub position: Position,
    /// When the source saw the event (Unix microseconds), for lag; `None` when the source does not say.
    pub time_us: Option<i64>,
    pub did: String,
    pub payload: Payload,
}

/// The smallest [`Event::order`] that is a Jetstream `time_us` (1973-03-03 in Unix µs); tap
/// event ids sit below it. No tap ever hands out 10^14 ids, and no Jetstream event predates it.
pub const FIRST_TIME_VERSION: i64 = 100_000_000_000_000;

impl Event {
    /// The event's place in its source's order: the tap id, else the source's `time_us` (0
    /// when it has neither). It versions account rows. Tap ids stay below
    /// [`FIRST_TIME_VERSION`], so the store can tell the two kinds apart, which do not compare
    /// ([`crate::store::replica::account_supersedes`]).
    pub fn order(&self) -> i64 {
        match self.position {
            Position::TapId(id) => id.min(FIRST_TIME_VERSION as u64 - 1) as i64,
            _ => self.time_us.unwrap_or(0),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A record was created, updated or deleted in a repo.
    Commit(Commit),
    /// A DID's handle changed.
    Identity { handle: Option<String> },
    /// An account was activated, deactivated, taken down or deleted.
    Account {
        active: bool,
        status: Option<String>,
    },
}

/// A record operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub operation: Operation,
    pub collection: String,
    pub rkey: String,
    /// The repo revision (a TID: sortable text); the newest revision of a record wins.
    pub rev: String,
    /// The record body; `None` for deletes.
    pub record: Option<Value>,
}

/// A record operation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// Why a frame did not decode to an event.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown event kind {0:?}")]
    UnknownKind(String),
    #[error("{kind} event without its {field:?} body")]
    MissingBody {
        kind: &'static str,
        field: &'static str,
    },
    #[error("unknown commit operation {0:?}")]
    UnknownOperation(String),
    #[error("{0} without a record body")]
    MissingRecord(&'static str),
}

impl Operation {
    fn parse(name: &str) -> Result<Self, FrameError> {
        match name {
            "create" => Ok(Operation::Create),
            "update" => Ok(Operation::Update),
            "delete" => Ok(Operation::Delete),
            other => Err(FrameError::UnknownOperation(
                other.chars().take(32).collect(),
            )),
        }
    }
}

fn commit(
    operation: &str,
    collection: String,
    rkey: String,
    rev: String,
    record: Option<Value>,
) -> Result<Commit, FrameError> {
    let operation = Operation::parse(operation)?;
    let record = match operation {
        Operation::Delete => None,
        Operation::Create if record.is_none() => return Err(FrameError::MissingRecord("create")),
        Operation::Update if record.is_none() => return Err(FrameError::MissingRecord("update")),
        _ => record,
    };
    Ok(Commit {
        operation,
        collection,
        rkey,
        rev,
        record,
    })
}

#[derive(Deserialize)]
struct JetstreamFrame {
    did: String,
    time_us: i64,
    kind: String,
    commit: Option<JetstreamCommit>,
    identity: Option<JetstreamIdentity>,
    account: Option<JetstreamAccount>,
}

#[derive(Deserialize)]
struct JetstreamCommit {
    rev: String,
    operation: String,
    collection: String,
    rkey: String,
    record: Option<Value>,
}

#[derive(Deserialize)]
struct JetstreamIdentity {
    handle: Option<String>,
}

#[derive(Deserialize)]
struct JetstreamAccount {
    active: bool,
    status: Option<String>,
}

/// Decodes one Jetstream v1 JSON frame.
pub fn decode_jetstream(frame: &str) -> Result<Event, FrameError> {
    let frame: JetstreamFrame = serde_json::from_str(frame)?;
    let payload = match frame.kind.as_str() {
        "commit" => {
            let c = frame.commit.ok_or(FrameError::MissingBody {
                kind: "commit",
                field: "commit",
            })?;
            Payload::Commit(commit(&c.operation, c.collection, c.rkey, c.rev, c.record)?)
        }
        "identity" => Payload::Identity {
            handle: frame.identity.and_then(|identity| identity.handle),
        },
        "account" => {
            let account = frame.account.ok_or(FrameError::MissingBody {
                kind: "account",
                field: "account",
            })?;
            Payload::Account {
                active: account.active,
                status: account.status,
            }
        }
        other => return Err(FrameError::UnknownKind(other.chars().take(32).collect())),
    };
    Ok(Event {
        position: Position::TimeUs(frame.time_us),
        time_us: Some(frame.time_us),
        did: frame.did,
        payload,
    })
}

#[derive(Deserialize)]
struct TapFrame {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    record: Option<TapRecord>,
    identity: Option<TapIdentity>,
}

#[derive(Deserialize)]
struct TapRecord {
    did: String,
    rev: String,
    collection: String,
    rkey: String,
    action: String,
    record: Option<Value>,
}

#[derive(Deserialize)]
struct TapIdentity {
    did: String,
    handle: Option<String>,
    #[serde(alias = "isActive")]
    is_active: Option<bool>,
    status: Option<String>,
}

/// Decodes one tap `/channel` frame. Returns the id even when the body is unusable, so the
/// consumer can still acknowledge (and so retire) a frame it will never be able to process.
pub fn decode_tap(frame: &str) -> Result<Event, (Option<u64>, FrameError)> {
    let frame: TapFrame = serde_json::from_str(frame).map_err(|e| (tap_id(frame), e.into()))?;
    let id = frame.id;
    let fail = |error| (Some(id), error);
    let (did, payload) = match frame.kind.as_str() {
        "record" => {
            let r = frame.record.ok_or_else(|| {
                fail(FrameError::MissingBody {
                    kind: "record",
                    field: "record",
                })
            })?;
            let commit = commit(&r.action, r.collection, r.rkey, r.rev, r.record).map_err(fail)?;
            (r.did, Payload::Commit(commit))
        }
        "identity" => {
            let identity = frame.identity.ok_or_else(|| {
                fail(FrameError::MissingBody {
                    kind: "identity",
                    field: "identity",
                })
            })?;
            // tap folds account state into identity events.
            match identity.is_active {
                Some(active) => (
                    identity.did,
                    Payload::Account {
                        active,
                        status: identity.status,
                    },
                ),
                None => (
                    identity.did,
                    Payload::Identity {
                        handle: identity.handle,
                    },
                ),
            }
        }
        other => {
            return Err(fail(FrameError::UnknownKind(
                other.chars().take(32).collect(),
            )));
        }
    };
    Ok(Event {
        position: Position::TapId(id),
        time_us: None,
        did,
        payload,
    })
}

/// A tap frame's id without decoding its body: serde skips every other field unallocated, so
/// this is a single pass even over an oversized frame.
pub fn tap_id(frame: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_str::<IdOnly>(frame)
        .ok()
        .map(|frame| frame.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetstream_commit_decodes() {
        let event = decode_jetstream(
            r#"{"did":"did:plc:a","time_us":1725911162329308,"kind":"commit","commit":{"rev":"3l3qo2vutsw2b","operation":"create","collection":"com.whtwnd.blog.entry","rkey":"3l3qo2vuowo2b","record":{"title":"x"},"cid":"bafy"}}"#,
        )
        .unwrap();
        assert_eq!(event.position, Position::TimeUs(1725911162329308));
        assert_eq!(event.order(), 1725911162329308);
        let Payload::Commit(commit) = event.payload else {
            panic!("not a commit")
        };
        assert_eq!(
            (commit.operation, commit.rkey.as_str()),
            (Operation::Create, "3l3qo2vuowo2b")
        );
    }

    #[test]
    fn jetstream_delete_has_no_record_and_accounts_decode() {
        let delete = decode_jetstream(
            r#"{"did":"did:plc:a","time_us":5,"kind":"commit","commit":{"rev":"r","operation":"delete","collection":"c","rkey":"k"}}"#,
        )
        .unwrap();
        assert!(matches!(
            delete.payload,
            Payload::Commit(Commit {
                operation: Operation::Delete,
                record: None,
                ..
            })
        ));
        let account = decode_jetstream(
            r#"{"did":"did:plc:a","time_us":6,"kind":"account","account":{"active":false,"did":"did:plc:a","seq":1,"status":"takendown","time":"2024-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(
            account.payload,
            Payload::Account {
                active: false,
                status: Some("takendown".into())
            }
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for frame in [
            "",
            "null",
            "[]",
            "{",
            r#"{"did":"d","time_us":1,"kind":"nope"}"#,
            r#"{"did":"d","time_us":1,"kind":"commit"}"#,
            r#"{"did":"d","time_us":1,"kind":"commit","commit":{"rev":"r","operation":"create","collection":"c","rkey":"k"}}"#,
            r#"{"did":"d","time_us":1,"kind":"commit","commit":{"rev":"r","operation":"explode","collection":"c","rkey":"k"}}"#,
        ] {
            assert!(decode_jetstream(frame).is_err(), "{frame:?}");
        }
    }

    #[test]
    fn tap_frames_decode_and_keep_ids_on_error() {
        let event = decode_tap(
            r#"{"id":7,"type":"record","record":{"live":true,"rev":"r1","did":"did:plc:a","collection":"c","rkey":"k","action":"update","cid":"x","record":{"a":1}}}"#,
        )
        .unwrap();
        assert_eq!(event.position, Position::TapId(7));
        let account = decode_tap(r#"{"id":8,"type":"identity","identity":{"did":"did:plc:a","handle":"a.test","isActive":false,"status":"deactivated"}}"#).unwrap();
        assert_eq!(
            account.payload,
            Payload::Account {
                active: false,
                status: Some("deactivated".into())
            }
        );
        assert_eq!(
            (event.order(), account.order()),
            (7, 8),
            "tap events order by id"
        );
        let huge = decode_tap(&format!(
            r#"{{"id":{},"type":"identity","identity":{{"did":"did:plc:a","handle":"a.test"}}}}"#,
            u64::MAX
        ))
        .unwrap();
        assert_eq!(
            huge.order(),
            FIRST_TIME_VERSION - 1,
            "a tap id never reads as a Jetstream time"
        );
        let (id, _) = decode_tap(r#"{"id":9,"type":"mystery"}"#).unwrap_err();
        assert_eq!(id, Some(9));
        assert_eq!(decode_tap("garbage").unwrap_err().0, None);
    }
}
