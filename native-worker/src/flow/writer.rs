//! The flow database's single writer: a thread that group-commits every change queued while
//! the previous transaction was committing.
//!
//! Callers never wait on it inside a turn: each submission carries a callback run right after
//! its transaction commits (or fails), which is where work is handed on. One `BEGIN IMMEDIATE`
//! transaction, one fsync (`synchronous=FULL`), for as many turns and activity results as
//! arrived meanwhile — the answer to one-transaction-per-step engines and their lock errors.

use std::sync::mpsc;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior, params};

use super::FlowError;
use super::history::{Status, WorkItem};

/// One change to the flow database.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    /// Creates an instance unless one with that id exists, queueing its start message only if
    /// it was created. Reported in [`CommitReport::created`], in submission order.
    CreateInstance {
        id: String,
        name: String,
        version: u32,
        input: String,
        parent: Option<String>,
        now_ms: i64,
        start: WorkItem,
        /// For a child: the message failing the parent's step, recorded instead of `start` in
        /// the same transaction when the id is already taken, so no crash can come between the
        /// parent's turn and its answer.
        if_taken: Option<Box<WorkItem>>,
    },
    UpdateInstance {
        id: String,
        status: Status,
        execution: u64,
        output: Option<String>,
        error: Option<String>,
        /// `None` leaves it as it is.
        custom_status: Option<Option<String>>,
        now_ms: i64,
    },
    AppendHistory {
        instance: String,
        execution: u64,
        idx: u64,
        event: String,
    },
    ClearHistory {
        instance: String,
        execution: u64,
    },
    InsertWork(WorkItem),
    DeleteWork(i64),
    /// An attempt of this activity begins: if the process dies before its outcome is recorded,
    /// recovery finds the mark and counts the attempt as failed.
    MarkRunning(i64),
    /// The attempt was abandoned by a clean shutdown: it does not count.
    UnmarkRunning(i64),
    DeleteInbox(i64),
}

/// What a commit did, for the callbacks that need to know.
#[derive(Debug, Default)]
pub(crate) struct CommitReport {
    /// For each `CreateInstance` of the submission: whether it created the instance.
    pub created: Vec<bool>,
}

pub(crate) type OnCommit = Box<dyn FnOnce(Result<CommitReport, String>) + Send>;

struct Submission {
    ops: Vec<WriteOp>,
    on_commit: OnCommit,
}

enum Request {
    Submit(Submission),
    /// Commit everything queued before this, then stop accepting work.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Counters the benchmark prints.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub transactions: std::sync::atomic::AtomicU64,
    pub submissions: std::sync::atomic::AtomicU64,
}

/// A cheap handle for submitting changes.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Request>,
}

impl Writer {
    /// Queues `ops` for the next group commit; `on_commit` runs on the writer thread after it.
    pub(crate) fn submit(&self, ops: Vec<WriteOp>, on_commit: OnCommit) {
        let request = Request::Submit(Submission { ops, on_commit });
        if let Err(mpsc::SendError(Request::Submit(submission))) = self.queue.send(request) {
            (submission.on_commit)(Err("the flow writer has stopped".to_string()));
        }
    }

    /// Commits everything queued so far and stops the writer: later submissions fail, as they
    /// would after the process exits.
    pub(crate) async fn close(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.queue.send(Request::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Queues `ops` and waits for their commit.
    pub(crate) async fn commit(&self, ops: Vec<WriteOp>) -> Result<CommitReport, FlowError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.submit(
            ops,
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        wait.await
            .map_err(|_| FlowError::Stopped)?
            .map_err(FlowError::Commit)
    }
}

/// Starts the writer thread on `conn`. It stops when every [`Writer`] is dropped.
pub(crate) fn spawn(
    conn: Connection,
    stats: std::sync::Arc<WriterStats>,
) -> Result<Writer, FlowError> {
    let (queue, receiver) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("flow-writer".into())
        .spawn(move || run(conn, receiver, &stats))
        .map_err(|source| FlowError::Io {
            path: "flow-writer thread".into(),
            source,
        })?;
    Ok(Writer { queue })
}

/// At most this many submissions share a transaction, keeping commit latency bounded.
const MAX_GROUP: usize = 4096;

fn run(mut conn: Connection, receiver: mpsc::Receiver<Request>, stats: &WriterStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut group = Vec::with_capacity(64);
    let mut close = None;
    while close.is_none() {
        let Ok(first) = receiver.recv() else {
            return; // every handle is gone
        };
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Submit(submission) => group.push(submission),
                Request::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = receiver.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue; // only a close request arrived
        }
        let started = Instant::now();
        let result = apply(&mut conn, &group);
        stats.transactions.fetch_add(1, Relaxed);
        stats.submissions.fetch_add(group.len() as u64, Relaxed);
        tracing::trace!(
            submissions = group.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "flow group commit"
        );
        match result {
            Ok(reports) => {
                for (submission, report) in group.drain(..).zip(reports) {
                    (submission.on_commit)(Ok(report));
                }
            }
            Err(error) => {
                tracing::error!(%error, "flow commit failed");
                for submission in group.drain(..) {
                    (submission.on_commit)(Err(error.to_string()));
                }
            }
        }
    }
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn apply(conn: &mut Connection, group: &[Submission]) -> rusqlite::Result<Vec<CommitReport>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut reports = Vec::with_capacity(group.len());
    for submission in group {
        let mut report = CommitReport::default();
        for op in &submission.ops {
            if let Some(created) = apply_op(&tx, op)? {
                report.created.push(created);
            }
        }
        reports.push(report);
    }
    tx.commit()?;
    Ok(reports)
}

fn insert_work(conn: &Connection, item: &WorkItem) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO flow_work (id, instance, kind, visible_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        item.id,
        item.instance,
        item.work.kind(),
        item.visible_at_ms,
        item.work.to_json()
    ])?;
    Ok(())
}

/// Applies one op; `Some(created)` for instance creations.
fn apply_op(conn: &Connection, op: &WriteOp) -> rusqlite::Result<Option<bool>> {
    match op {
        WriteOp::CreateInstance {
            id,
            name,
            version,
            input,
            parent,
            now_ms,
            start,
            if_taken,
        } => {
            let created = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO flow_instances
                     (id, name, version, status, execution, input, parent, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, 'running', 0, ?4, ?5, ?6, ?6)",
                )?
                .execute(params![id, name, version, input, parent, now_ms])?
                == 1;
            match (created, if_taken) {
                (true, _) => insert_work(conn, start)?,
                (false, Some(answer)) => insert_work(conn, answer)?,
                (false, None) => {}
            }
            return Ok(Some(created));
        }
        WriteOp::UpdateInstance {
            id,
            status,
            execution,
            output,
            error,
            custom_status,
            now_ms,
        } => {
            let (set_custom, custom) = match custom_status {
                Some(value) => (true, value.as_deref()),
                None => (false, None),
            };
            conn.prepare_cached(
                "UPDATE flow_instances SET status = ?2, execution = ?3, output = ?4, error = ?5,
                 custom_status = CASE WHEN ?6 THEN ?7 ELSE custom_status END, updated_ms = ?8
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                status.as_str(),
                *execution as i64,
                output,
                error,
                set_custom,
                custom,
                now_ms
            ])?;
        }
        WriteOp::AppendHistory {
            instance,
            execution,
            idx,
            event,
        } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO flow_history (instance, execution, idx, event)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![instance, *execution as i64, *idx as i64, event])?;
        }
        WriteOp::ClearHistory {
            instance,
            execution,
        } => {
            conn.prepare_cached("DELETE FROM flow_history WHERE instance = ?1 AND execution = ?2")?
                .execute(params![instance, *execution as i64])?;
        }
        WriteOp::InsertWork(item) => insert_work(conn, item)?,
        WriteOp::DeleteWork(id) => {
            conn.prepare_cached("DELETE FROM flow_work WHERE id = ?1")?
                .execute([id])?;
        }
        WriteOp::MarkRunning(id) => {
            conn.prepare_cached("UPDATE flow_work SET interrupted = 1 WHERE id = ?1")?
                .execute([id])?;
        }
        WriteOp::UnmarkRunning(id) => {
            conn.prepare_cached("UPDATE flow_work SET interrupted = 0 WHERE id = ?1")?
                .execute([id])?;
        }
        WriteOp::DeleteInbox(id) => {
            conn.prepare_cached("DELETE FROM flow_inbox WHERE id = ?1")?
                .execute([id])?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::history::{Event, Message, Work};

    fn message(id: i64, instance: &str, event: Event) -> WorkItem {
        WorkItem {
            id,
            instance: instance.into(),
            visible_at_ms: 0,
            work: Work::Message(Message {
                execution: Some(0),
                event,
            }),
        }
    }

    fn create(id: &str, start: WorkItem, if_taken: Option<WorkItem>) -> WriteOp {
        let if_taken = if_taken.map(Box::new);
        WriteOp::CreateInstance {
            id: id.into(),
            name: "job".into(),
            version: 1,
            input: "null".into(),
            parent: None,
            now_ms: 0,
            start,
            if_taken,
        }
    }

    fn submission(ops: Vec<WriteOp>) -> Submission {
        Submission {
            ops,
            on_commit: Box::new(|_| {}),
        }
    }

    fn queued_for(conn: &Connection, instance: &str) -> Vec<i64> {
        conn.prepare("SELECT id FROM flow_work WHERE instance = ?1 ORDER BY id")
            .unwrap()
            .query_map([instance], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_taken_child_id_answers_the_parent_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::flow::db::open_write(&dir.path().join("flow.db"), false).unwrap();
        let started = |id| {
            message(
                id,
                "child",
                Event::EventRaised {
                    name: "go".into(),
                    data: "null".into(),
                },
            )
        };
        let first = apply(
            &mut conn,
            &[submission(vec![create("child", started(1), None)])],
        )
        .unwrap();
        assert_eq!(first[0].created, [true]);

        // The parent's turn: one submission, one transaction. Nothing may be left for a second
        // commit, which a crash could prevent.
        let answer = message(
            3,
            "parent",
            Event::ChildFailed {
                seq: 0,
                error: "instance id `child` is already in use".into(),
            },
        );
        let turn = apply(
            &mut conn,
            &[submission(vec![create("child", started(2), Some(answer))])],
        )
        .unwrap();
        assert_eq!(turn[0].created, [false]);
        assert_eq!(
            queued_for(&conn, "parent"),
            [3],
            "the parent's answer is durable"
        );
        assert_eq!(
            queued_for(&conn, "child"),
            [1],
            "the taken instance is left alone"
        );
    }
}
