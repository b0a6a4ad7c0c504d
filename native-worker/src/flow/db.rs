//! The flow database: schema, connections, and the reads clients and the CLI need.
//!
//! Tables: `flow_instances` (one row per instance), `flow_history` (the current execution's
//! entries), `flow_work` (durable pending work, owned by the running engine) and `flow_inbox`
//! (messages from other processes — the CLI's `cancel` — which the engine moves into its work).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use super::FlowError;
use super::history::{Event, Message, ParentRef, Status, WorkItem};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flow_instances (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    execution     INTEGER NOT NULL DEFAULT 0,
    input         TEXT NOT NULL,
    output        TEXT,
    error         TEXT,
    custom_status TEXT,
    parent        TEXT,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_instances_by_status ON flow_instances(status, updated_ms);
CREATE TABLE IF NOT EXISTS flow_history (
    instance  TEXT NOT NULL,
    execution INTEGER NOT NULL,
    idx       INTEGER NOT NULL,
    event     TEXT NOT NULL,
    PRIMARY KEY (instance, execution, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flow_work (
    id            INTEGER PRIMARY KEY,
    instance      TEXT NOT NULL,
    kind          INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    body          TEXT NOT NULL,
    -- Attempts of this activity begun and not finished by a process that then died.
    interrupted   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS flow_work_by_instance ON flow_work(instance);
CREATE TABLE IF NOT EXISTS flow_inbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    instance TEXT NOT NULL,
    body     TEXT NOT NULL
);
";

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a read-write connection in WAL mode with durable commits, creating the schema.
pub(crate) fn open_write(path: &Path, durable: bool) -> Result<Connection, FlowError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| FlowError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open(path).map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "OFF" })?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a read-only connection; readers never wait on the writer (WAL).
pub fn open_read(path: &Path) -> Result<Connection, FlowError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| open_error(path, source))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn open_error(path: &Path, source: rusqlite::Error) -> FlowError {
    FlowError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// One instance as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    pub version: u32,
    pub status: Status,
    /// How many times the instance continued-as-new.
    pub execution: u64,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub custom_status: Option<String>,
    pub parent: Option<ParentRef>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl InstanceInfo {
    /// A completed instance's output, decoded; [`super::FlowError::Ended`] for one that failed or
    /// was cancelled (or is still running).
    pub fn output<T: serde::de::DeserializeOwned>(self) -> Result<T, super::FlowError> {
        match (self.status, self.output) {
            (Status::Completed, Some(output)) => Ok(serde_json::from_str(&output)?),
            (status, _) => Err(super::FlowError::Ended {
                instance: self.id,
                status,
                reason: self.error.unwrap_or_default(),
            }),
        }
    }
}

const INSTANCE_COLUMNS: &str = "id, name, version, status, execution, input, output, error, \
                                custom_status, parent, created_ms, updated_ms";

fn instance_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceInfo> {
    let status: String = row.get(3)?;
    let parent: Option<String> = row.get(9)?;
    Ok(InstanceInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        execution: row.get::<_, i64>(4)? as u64,
        input: row.get(5)?,
        output: row.get(6)?,
        error: row.get(7)?,
        custom_status: row.get(8)?,
        parent: parent.and_then(|json| serde_json::from_str(&json).ok()),
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
    })
}

/// One instance, if it exists.
pub fn instance(conn: &Connection, id: &str) -> Result<Option<InstanceInfo>, FlowError> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM flow_instances WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], instance_from_row)
        .optional()?)
}

/// The current execution's history, in order.
pub fn history(conn: &Connection, id: &str, execution: u64) -> Result<Vec<Event>, FlowError> {
    let mut statement = conn.prepare_cached(
        "SELECT event FROM flow_history WHERE instance = ?1 AND execution = ?2 ORDER BY idx",
    )?;
    let rows = statement.query_map(params![id, execution as i64], |row| row.get::<_, String>(0))?;
    let mut events = Vec::new();
    for row in rows {
        events.push(serde_json::from_str(&row?)?);
    }
    Ok(events)
}

/// A page of instances in id order, for `flow list`.
#[derive(Debug, Clone, Serialize)]
pub struct InstancePage {
    pub instances: Vec<InstanceInfo>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Lists instances after `after` (keyset pagination), optionally only those in `status`.
pub fn list(
    conn: &Connection,
    status: Option<Status>,
    after: Option<&str>,
    limit: usize,
) -> Result<InstancePage, FlowError> {
    let limit = limit.clamp(1, 1000);
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM flow_instances
         WHERE id > ?1 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT ?3"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![
            after.unwrap_or(""),
            status.map(Status::as_str),
            limit as i64 + 1
        ],
        instance_from_row,
    )?;
    let mut instances = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let next = (instances.len() > limit).then(|| {
        instances.truncate(limit);
        instances.last().map(|last| last.id.clone())
    });
    Ok(InstancePage {
        instances,
        next: next.flatten(),
    })
}

/// All pending work, oldest first, for recovery after a restart, each with whether an attempt
/// of it was running when the previous process stopped.
pub(crate) fn pending_work(conn: &Connection) -> Result<Vec<(WorkItem, bool)>, FlowError> {
    let mut statement = conn.prepare(
        "SELECT id, instance, kind, visible_at_ms, body, interrupted FROM flow_work ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    let mut items = Vec::new();
    for row in rows {
        let (id, instance, kind, visible_at_ms, body, interrupted) = row?;
        // A stand-in for what does not decode is due now, whenever the original was.
        let (work, visible_at_ms) = match super::history::Work::from_row(kind, &body) {
            Ok(work) => (work, visible_at_ms),
            Err(error) => (
                super::history::Work::Message(undecodable(&instance, "work item", &error)),
                0,
            ),
        };
        let item = WorkItem {
            id,
            instance,
            visible_at_ms,
            work,
        };
        items.push((item, interrupted > 0));
    }
    Ok(items)
}

/// The newest instance update (Unix ms; 0 if none): the clock's floor for this database
/// ([`crate::clock::raise_floor`]).
pub(crate) fn newest_update_ms(conn: &Connection) -> Result<i64, FlowError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(updated_ms), 0) FROM flow_instances",
        [],
        |row| row.get(0),
    )?)
}

pub(crate) fn max_work_id(conn: &Connection) -> Result<i64, FlowError> {
    Ok(
        conn.query_row("SELECT coalesce(max(id), 0) FROM flow_work", [], |row| {
            row.get(0)
        })?,
    )
}

/// What stands in for a stored message or work item that no longer decodes (written by another
/// build, or damaged): a cancellation of its instance, saying why. The engine goes on; the row
/// is deleted when the instance takes the message, as its own would have been.
fn undecodable(instance: &str, what: &str, error: &serde_json::Error) -> Message {
    tracing::error!(instance, what, %error, "a stored flow record no longer decodes; cancelling its instance");
    Message {
        execution: None,
        event: Event::CancelRequested {
            reason: format!("its stored {what} no longer decodes ({error})"),
        },
    }
}

/// Messages other processes left for the engine.
pub(crate) fn inbox(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<(i64, String, Message)>, FlowError> {
    let mut statement =
        conn.prepare_cached("SELECT id, instance, body FROM flow_inbox ORDER BY id LIMIT ?1")?;
    let rows = statement.query_map([limit as i64], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut messages = Vec::new();
    for row in rows {
        let (id, instance, body) = row?;
        let message = serde_json::from_str(&body)
            .unwrap_or_else(|error| undecodable(&instance, "inbox message", &error));
        messages.push((id, instance, message));
    }
    Ok(messages)
}

/// A start another process asked for that the engine has not applied yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingStart {
    pub instance: String,
    pub name: String,
    pub input: String,
}

/// Inbox messages read when looking for pending starts: the owning engine drains the inbox
/// every second, so more than this waiting means no engine is running to apply them.
const MAX_PENDING_STARTS: usize = 10_000;

/// The starts waiting in the inbox, oldest first.
pub(crate) fn pending_starts(conn: &Connection) -> Result<Vec<PendingStart>, FlowError> {
    Ok(inbox(conn, MAX_PENDING_STARTS)?
        .into_iter()
        .filter_map(|(_, instance, message)| match message.event {
            Event::Started { name, input, .. } => Some(PendingStart {
                instance,
                name,
                input,
            }),
            _ => None,
        })
        .collect())
}

/// Leaves a message for the engine from another process (the CLI). The running engine picks
/// it up within its inbox poll interval; a stopped one on its next start.
pub fn post_to_inbox(path: &Path, instance: &str, message: &Message) -> Result<(), FlowError> {
    let conn = open_write(path, true)?;
    conn.execute(
        "INSERT INTO flow_inbox (instance, body) VALUES (?1, ?2)",
        params![instance, serde_json::to_string(message)?],
    )?;
    Ok(())
}

/// Asks the engine owning `path` to start orchestration `name` as `instance` (idempotent, like
/// [`super::FlowClient::start`]), from another process.
pub fn post_start<I: Serialize>(
    path: &Path,
    instance: &str,
    name: &str,
    version: u32,
    input: &I,
) -> Result<(), FlowError> {
    let message = Message {
        execution: Some(0),
        event: Event::Started {
            name: name.to_string(),
            version,
            input: serde_json::to_string(input)?,
        },
    };
    post_to_inbox(path, instance, &message)
}

/// Waits, from another process, until `instance` is finished: polls every 200 ms.
pub async fn wait_finished(
    path: &Path,
    instance: &str,
    timeout: Duration,
) -> Result<InstanceInfo, FlowError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let conn = open_read(path)?;
    loop {
        let status = match self::instance(&conn, instance)? {
            Some(info) if info.status.is_terminal() => return Ok(info),
            Some(info) => info.status,
            // Not created yet: the owner has not drained its inbox.
            None => Status::Running,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(FlowError::Timeout {
                instance: instance.to_string(),
                status,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes finished instances last updated before `before_ms`, with their history and any
/// leftover work. Returns how many instances went.
pub fn purge(conn: &mut Connection, before_ms: i64) -> Result<usize, FlowError> {
    purge_prefixed(conn, before_ms, "")
}

/// [`purge`], only of instances whose id starts with `prefix`.
pub fn purge_prefixed(
    conn: &mut Connection,
    before_ms: i64,
    prefix: &str,
) -> Result<usize, FlowError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "CREATE TEMP TABLE IF NOT EXISTS purge_ids (id TEXT PRIMARY KEY)",
        [],
    )?;
    tx.execute("DELETE FROM purge_ids", [])?;
    tx.execute(
        "INSERT INTO purge_ids SELECT id FROM flow_instances
         WHERE status IN ('completed', 'failed', 'cancelled') AND updated_ms < ?1
           AND substr(id, 1, length(?2)) = ?2",
        (before_ms, prefix),
    )?;
    tx.execute(
        "DELETE FROM flow_history WHERE instance IN (SELECT id FROM purge_ids)",
        [],
    )?;
    tx.execute(
        "DELETE FROM flow_work WHERE instance IN (SELECT id FROM purge_ids)",
        [],
    )?;
    let purged = tx.execute(
        "DELETE FROM flow_instances WHERE id IN (SELECT id FROM purge_ids)",
        [],
    )?;
    tx.commit()?;
    Ok(purged)
}

/// Where a data directory keeps its flow database.
pub fn flow_path(data_dir: &Path) -> PathBuf {
    data_dir.join("flow.db")
}

#[cfg(test)]
mod tests {
    use super::{InstanceInfo, Status};
    use crate::flow::FlowError;

    fn instance(status: Status, output: Option<&str>, error: Option<&str>) -> InstanceInfo {
        InstanceInfo {
            id: "job-1".into(),
            name: "job".into(),
            version: 1,
            status,
            execution: 0,
            input: "null".into(),
            output: output.map(str::to_owned),
            error: error.map(str::to_owned),
            custom_status: None,
            parent: None,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn only_a_completed_instance_has_an_output() {
        let done = instance(Status::Completed, Some("[1,2]"), None);
        assert_eq!(done.output::<Vec<u32>>().unwrap(), [1, 2]);
        let failed = instance(Status::Failed, None, Some("disk full"));
        match failed.output::<Vec<u32>>() {
            Err(FlowError::Ended {
                instance,
                status,
                reason,
            }) => {
                assert_eq!(
                    (instance.as_str(), status, reason.as_str()),
                    ("job-1", Status::Failed, "disk full")
                );
            }
            other => panic!("{other:?}"),
        }
        let garbled = instance(Status::Completed, Some("{"), None);
        assert!(matches!(
            garbled.output::<Vec<u32>>(),
            Err(FlowError::Json(_))
        ));
    }
}
