//! The running engine: instance slots and their cache, the turn and activity dispatchers,
//! durable timers, the inbox poll, and recovery after a restart.
//!
//! Work moves by in-process hand-off: a commit's callback dispatches exactly the work that
//! commit made durable, so nothing polls the database while the engine runs (the inbox poll
//! only picks up other processes' messages). An instance has at most one turn in flight; its
//! next turn waits until the previous one's commit is durable, so state never runs ahead of disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::FlowError;
use super::client::FlowClient;
use super::db;
use super::history::{ActivityWork, Event, Message, Work, WorkItem};
use super::registry::Registry;
use super::turn::{self, IdSource, Live, TurnOutput};
use super::writer::{self, CommitReport, WriteOp, Writer, WriterStats};
use super::{lock, now_ms};
use crate::lockfile::{LockError, LockFile};

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Turns running at once (orchestration slots).
    pub orchestration_slots: usize,
    /// Activities running at once (activity slots).
    pub activity_slots: usize,
    /// Instances kept live in memory between turns; beyond it the least recently used are
    /// dropped and replayed from history when next needed.
    pub cache_capacity: usize,
    /// How often to look for messages left by other processes (the CLI's `cancel`).
    pub inbox_poll: Duration,
    /// `synchronous=FULL`: a commit survives power loss. Off only for throwaway databases.
    pub durable: bool,
    /// How long [`Engine::shutdown`] lets activity attempts under way finish and record their
    /// results before abandoning them, so the next engine on the file (another process taking
    /// over) does not run them a second time beside the first.
    pub shutdown_grace: Duration,
    /// Finished instances older than this are purged with their history, at start and then
    /// every `retention_sweep`, so the database does not grow forever. `None` keeps them all.
    pub retention: Option<Duration>,
    /// How often the retention purge runs.
    pub retention_sweep: Duration,
}

/// The default [`EngineOptions::retention`]: a week of finished instances stays inspectable.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            orchestration_slots: 4,
            activity_slots: 4,
            cache_capacity: 10_000,
            inbox_poll: Duration::from_secs(1),
            durable: true,
            shutdown_grace: Duration::from_secs(30),
            retention: Some(DEFAULT_RETENTION),
            retention_sweep: Duration::from_secs(3600),
        }
    }
}

/// Counters for benchmarks and `/stats`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub turns: AtomicU64,
    pub replays: AtomicU64,
    pub activities: AtomicU64,
    pub activity_retries: AtomicU64,
    pub(crate) writer: Arc<WriterStats>,
}

impl EngineStats {
    /// Transactions committed by the group-commit writer.
    pub fn transactions(&self) -> u64 {
        self.writer.transactions.load(Relaxed)
    }

    /// Submissions (turns, activity results, client calls) those transactions carried.
    pub fn submissions(&self) -> u64 {
        self.writer.submissions.load(Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Idle,
    Queued,
    Busy,
}

struct Slot {
    inbox: Vec<(i64, Message)>,
    state: SlotState,
    live: Option<Box<Live>>,
    last_used: u64,
}

pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) writer: Writer,
    pub(crate) path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    slots: Mutex<HashMap<String, Slot>>,
    ready: mpsc::UnboundedSender<String>,
    activities: mpsc::UnboundedSender<WorkItem>,
    next_work_id: AtomicI64,
    tick: AtomicU64,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Activity work items with an attempt running in this process.
    pub(super) running: Mutex<std::collections::HashSet<i64>>,
    /// Activities recovered after a restart, whose next attempt is marked durably before it runs.
    pub(super) suspects: Mutex<std::collections::HashSet<i64>>,
    options: EngineOptions,
    pub(super) runtime: tokio::runtime::Handle,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<EngineStats>,
}

impl IdSource for Shared {
    fn next_id(&self) -> i64 {
        self.next_work_id.fetch_add(1, Relaxed) + 1
    }
}

impl Shared {
    /// Runs `read` on a pooled read-only connection.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, FlowError>,
    ) -> Result<T, FlowError> {
        let conn = match lock(&self.readers).pop() {
            Some(conn) => conn,
            None => db::open_read(&self.path)?,
        };
        let result = read(&conn);
        lock(&self.readers).push(conn);
        result
    }

    /// Hands durable work on: a message to its instance's inbox, an activity to a slot; work
    /// that is not yet due waits on a timer.
    pub(crate) fn dispatch(self: &Arc<Self>, item: WorkItem) {
        let delay = item.visible_at_ms - now_ms();
        if delay > 0 {
            let shared = Arc::clone(self);
            self.runtime.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(delay as u64)) => shared.dispatch_now(item),
                    () = shared.shutdown.cancelled() => {}
                }
            });
        } else {
            self.dispatch_now(item);
        }
    }

    fn dispatch_now(&self, item: WorkItem) {
        match item.work {
            Work::Message(message) => {
                let mut slots = lock(&self.slots);
                let slot = slots.entry(item.instance.clone()).or_insert_with(|| Slot {
                    inbox: Vec::new(),
                    state: SlotState::Idle,
                    live: None,
                    last_used: 0,
                });
                slot.inbox.push((item.id, message));
                if slot.state == SlotState::Idle {
                    slot.state = SlotState::Queued;
                    let _ = self.ready.send(item.instance);
                }
            }
            Work::Activity(_) => {
                let _ = self.activities.send(item);
            }
        }
    }

    /// Commits ops and dispatches `items` once they are durable.
    pub(crate) fn commit_and_dispatch(self: &Arc<Self>, ops: Vec<WriteOp>, items: Vec<WorkItem>) {
        let shared = Arc::clone(self);
        self.writer.submit(
            ops,
            Box::new(move |result| match result {
                Ok(_) => items.into_iter().for_each(|item| shared.dispatch(item)),
                Err(error) => shared.fail(&error),
            }),
        );
    }

    /// A commit failed: memory may be ahead of disk, so stop; a restart recovers from disk.
    pub(super) fn fail(&self, error: &str) {
        if self.shutdown.is_cancelled() {
            // Work finishing after shutdown: it stays durable as pending and runs next start.
            tracing::debug!(error, "flow work not recorded: the engine is stopping");
            return;
        }
        tracing::error!(error, "flow engine stopping: a commit failed");
        self.shutdown.cancel();
    }

    /// Registers interest in `instance` reaching a terminal state, until the returned watch is
    /// dropped.
    pub(crate) fn watch(self: &Arc<Self>, instance: &str) -> Watch {
        let (notify, wait) = oneshot::channel();
        lock(&self.waiters)
            .entry(instance.to_string())
            .or_default()
            .push(notify);
        Watch {
            wait,
            instance: instance.to_string(),
            shared: Arc::clone(self),
        }
    }

    /// Waiters registered now (every instance).
    pub(crate) fn waiter_count(&self) -> usize {
        lock(&self.waiters).values().map(Vec::len).sum()
    }

    async fn run_turn(self: Arc<Self>, id: String) {
        let (messages, cached) = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.get_mut(&id) else {
                return;
            };
            slot.state = SlotState::Busy;
            (std::mem::take(&mut slot.inbox), slot.live.take())
        };
        let mut live = match cached {
            Some(live) => Some(live),
            None => {
                self.stats.replays.fetch_add(1, Relaxed);
                let loaded = self.read(|conn| {
                    turn::load(
                        db::instance(conn, &id)?,
                        |info| db::history(conn, &id, info.execution),
                        &self.registry,
                    )
                });
                match loaded {
                    Ok(live) => live,
                    Err(error) => {
                        self.fail(&format!("loading instance {id}: {error}"));
                        return;
                    }
                }
            }
        };
        self.stats.turns.fetch_add(1, Relaxed);
        let output = turn::run_turn(live.as_deref_mut(), messages, &self.registry, &*self);
        self.commit_turn(id, live, output);
    }

    fn commit_turn(self: &Arc<Self>, id: String, live: Option<Box<Live>>, output: TurnOutput) {
        let TurnOutput {
            ops,
            dispatch,
            child_starts,
            terminal,
        } = output;
        let shared = Arc::clone(self);
        self.writer.submit(
            ops,
            Box::new(move |result: Result<CommitReport, String>| {
                let report = match result {
                    Ok(report) => report,
                    Err(error) => return shared.fail(&error),
                };
                for item in dispatch {
                    shared.dispatch(item);
                }
                for (child, created) in child_starts.into_iter().zip(report.created) {
                    if created {
                        shared.dispatch(child.start);
                    } else {
                        // The parent's step fails rather than adopt someone else's instance;
                        // the answer committed with the turn.
                        tracing::warn!(child = %child.start.instance, parent = %child.taken.instance,
                                       "child instance id already in use");
                        shared.dispatch(child.taken);
                    }
                }
                if terminal.is_some() {
                    for waiter in lock(&shared.waiters).remove(&id).unwrap_or_default() {
                        let _ = waiter.send(());
                    }
                }
                shared.release(id, live);
            }),
        );
    }

    /// The turn is durable: park the live instance and run the next turn if messages came in.
    fn release(&self, id: String, live: Option<Box<Live>>) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        slot.last_used = self.tick.fetch_add(1, Relaxed);
        let finished = live.as_ref().is_none_or(|live| live.status.is_terminal());
        if slot.inbox.is_empty() {
            if finished {
                slots.remove(&id);
                return;
            }
            slot.state = SlotState::Idle;
            slot.live = live;
        } else {
            slot.state = SlotState::Queued;
            slot.live = live;
            let _ = self.ready.send(id);
        }
        if slots.len() > self.options.cache_capacity {
            evict(&mut slots, self.options.cache_capacity);
        }
    }

    /// Moves messages other processes left in the inbox into durable work.
    async fn drain_inbox(self: &Arc<Self>) -> Result<(), FlowError> {
        let messages = self.read(|conn| db::inbox(conn, 1000))?;
        if messages.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(messages.len() * 2);
        let mut items = Vec::with_capacity(messages.len());
        let mut starts = Vec::new();
        for (inbox_id, instance, message) in messages {
            ops.push(WriteOp::DeleteInbox(inbox_id));
            let start = match &message.event {
                Event::Started {
                    name,
                    version,
                    input,
                } => Some((name.clone(), *version, input.clone())),
                _ => None,
            };
            let item = WorkItem {
                id: self.next_id(),
                instance: instance.clone(),
                visible_at_ms: 0,
                work: Work::Message(message),
            };
            match start {
                Some((name, version, input)) => {
                    ops.push(WriteOp::CreateInstance {
                        id: instance,
                        name,
                        version,
                        input,
                        parent: None,
                        now_ms: now_ms(),
                        start: item.clone(),
                        if_taken: None,
                    });
                    starts.push(item);
                }
                None => {
                    ops.push(WriteOp::InsertWork(item.clone()));
                    items.push(item);
                }
            }
        }
        let report = self.writer.commit(ops).await?;
        items.into_iter().for_each(|item| self.dispatch(item));
        for (start, created) in starts.into_iter().zip(report.created) {
            if created {
                self.dispatch(start);
            }
        }
        Ok(())
    }
}

/// Drops the least recently used idle instances until the cache is back under 90% of capacity.
fn evict(slots: &mut HashMap<String, Slot>, capacity: usize) {
    let target = capacity * 9 / 10;
    let mut idle: Vec<(u64, String)> = slots
        .iter()
        .filter(|(_, slot)| slot.state == SlotState::Idle && slot.inbox.is_empty())
        .map(|(id, slot)| (slot.last_used, id.clone()))
        .collect();
    idle.sort_unstable();
    let excess = slots.len().saturating_sub(target);
    for (_, id) in idle.into_iter().take(excess) {
        slots.remove(&id);
    }
}

/// A running engine. Dropping it without [`Engine::shutdown`] leaves background tasks to
/// the runtime; shut it down to stop them and flush the writer.
pub struct Engine {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _lock: LockFile,
}

impl Engine {
    /// Opens (creating) the flow database at `path`, recovers pending work and starts running.
    /// Only one engine may own a database: a second gets [`FlowError::Locked`].
    pub async fn start(
        path: impl AsRef<Path>,
        registry: Registry,
        options: EngineOptions,
    ) -> Result<Engine, FlowError> {
        let path = path.as_ref().to_path_buf();
        let conn = db::open_write(&path, options.durable)?;
        let lock_file =
            LockFile::acquire(&path.with_extension("lock")).map_err(|error| match error {
                LockError::Held { holder, .. } => FlowError::Locked {
                    path: path.clone(),
                    holder,
                },
                LockError::Io { path, source } => FlowError::Io { path, source },
            })?;
        // Times this database recorded stay in the past, whatever the system clock says.
        crate::clock::raise_floor(db::newest_update_ms(&conn)?.saturating_mul(1_000));
        let pending = db::pending_work(&conn)?;
        let next_work_id = db::max_work_id(&conn)?;
        let stats = Arc::new(EngineStats::default());
        let writer = writer::spawn(conn, Arc::clone(&stats.writer))?;
        let (ready, ready_rx) = mpsc::unbounded_channel();
        let (activities, activities_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry,
            writer,
            path,
            readers: Mutex::new(Vec::new()),
            slots: Mutex::new(HashMap::new()),
            ready,
            activities,
            next_work_id: AtomicI64::new(next_work_id),
            tick: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            running: Mutex::new(std::collections::HashSet::new()),
            suspects: Mutex::new(std::collections::HashSet::new()),
            options: options.clone(),
            runtime: tokio::runtime::Handle::current(),
            shutdown: CancellationToken::new(),
            stats,
        });
        let recovered = pending.len();
        let (mut ops, mut after_commit) = (Vec::new(), Vec::new());
        for (item, interrupted) in pending {
            if matches!(item.work, Work::Activity(_)) {
                lock(&shared.suspects).insert(item.id);
            }
            match &item.work {
                Work::Activity(work)
                    if interrupted
                        && shared.registry.is_repeatable(&work.name)
                        && work.interruptions < super::registry::FREE_INTERRUPTIONS =>
                {
                    // Safe to repeat: the same attempt runs again and does not count.
                    tracing::warn!(instance = %item.instance, activity = %work.name, attempt = work.attempt, "activity attempt was interrupted by the worker stopping; running it again");
                    let mut again = item.clone();
                    again.work = Work::Activity(ActivityWork {
                        interruptions: work.interruptions + 1,
                        ..work.clone()
                    });
                    ops.push(WriteOp::InsertWork(again.clone()));
                    after_commit.push(again);
                }
                Work::Activity(work) if interrupted => {
                    // The previous process died during this attempt: it counts as failed, so an
                    // activity that crashes the worker cannot run forever.
                    tracing::warn!(instance = %item.instance, activity = %work.name, attempt = work.attempt, "activity attempt was interrupted by the worker stopping");
                    let error = format!(
                        "attempt {} was interrupted: the worker stopped while it ran",
                        work.attempt
                    );
                    let (more, next) = shared.after_failure(&item, work, &error, true);
                    ops.extend(more);
                    after_commit.push(next);
                }
                _ => shared.dispatch(item),
            }
        }
        if !ops.is_empty() {
            shared.writer.commit(ops).await?;
            after_commit
                .into_iter()
                .for_each(|item| shared.dispatch(item));
        }
        if recovered > 0 {
            tracing::info!(recovered, "flow engine resumed pending work");
        }
        let tasks = vec![
            tokio::spawn(dispatch_turns(Arc::clone(&shared), ready_rx)),
            tokio::spawn(dispatch_activities(Arc::clone(&shared), activities_rx)),
            tokio::spawn(poll_inbox(Arc::clone(&shared))),
            tokio::spawn(purge_finished(Arc::clone(&shared))),
        ];
        Ok(Engine {
            shared,
            tasks,
            _lock: lock_file,
        })
    }

    /// A client for starting, signalling and inspecting instances.
    pub fn client(&self) -> FlowClient {
        FlowClient::new(Arc::clone(&self.shared))
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Resolves when the engine stops on its own (a failed commit).
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// A token cancelled when the engine stops, for a task that cannot borrow the engine;
    /// cancelling it does not stop the engine.
    pub fn stopped_token(&self) -> CancellationToken {
        self.shared.shutdown.child_token()
    }

    /// Stops dispatching, gives running activity attempts [`EngineOptions::shutdown_grace`] to
    /// finish and record their results, lets queued commits finish and joins the writer.
    /// Attempts still running then are abandoned and run again on the next start
    /// (at-least-once).
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let grace = self.shared.options.shutdown_grace;
        let running = lock(&self.shared.running).len();
        if running > 0 && !grace.is_zero() {
            tracing::info!(running, ?grace, "waiting for running activities to finish");
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !lock(&self.shared.running).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Attempts abandoned by a clean stop run again without counting against their policy.
        let abandoned: Vec<WriteOp> = lock(&self.shared.running)
            .iter()
            .map(|id| WriteOp::UnmarkRunning(*id))
            .collect();
        if !abandoned.is_empty() {
            let _ = self.shared.writer.commit(abandoned).await;
        }
        self.shared.writer.close().await;
    }
}

async fn dispatch_turns(shared: Arc<Shared>, mut ready: mpsc::UnboundedReceiver<String>) {
    let slots = Arc::new(Semaphore::new(shared.options.orchestration_slots.max(1)));
    loop {
        let id = tokio::select! {
            id = ready.recv() => match id { Some(id) => id, None => return },
            () = shared.shutdown.cancelled() => return,
        };
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.run_turn(id).await;
            drop(permit);
        });
    }
}

async fn dispatch_activities(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<WorkItem>) {
    let slots = Arc::new(Semaphore::new(shared.options.activity_slots.max(1)));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit { Ok(permit) => permit, Err(_) => return },
            () = shared.shutdown.cancelled() => return,
        };
        let item = tokio::select! {
            item = queue.recv() => match item { Some(item) => item, None => return },
            () = shared.shutdown.cancelled() => return,
        };
        tokio::spawn(Arc::clone(&shared).run_activity(item, permit));
    }
}

async fn poll_inbox(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.options.inbox_poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        if let Err(error) = shared.drain_inbox().await {
            tracing::warn!(%error, "reading the flow inbox failed");
        }
    }
}

/// Purges finished instances past [`EngineOptions::retention`], now and every sweep.
async fn purge_finished(shared: Arc<Shared>) {
    let Some(retention) = shared.options.retention else {
        return;
    };
    let mut interval = tokio::time::interval(shared.options.retention_sweep);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = FlowClient::new(Arc::clone(&shared));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        match client.purge(retention) {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, ?retention, "purged finished flow instances"),
            Err(error) => tracing::warn!(%error, "purging finished flow instances failed"),
        }
    }
}

/// A registered interest in one instance finishing (see [`Shared::watch`]); a future that
/// resolves when it does. Dropping it unregisters it.
pub(crate) struct Watch {
    wait: oneshot::Receiver<()>,
    instance: String,
    shared: Arc<Shared>,
}

impl std::future::Future for Watch {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.wait).poll(cx).map(|_| ())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.wait.close();
        let mut waiters = lock(&self.shared.waiters);
        if let Some(senders) = waiters.get_mut(&self.instance) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiters.remove(&self.instance);
            }
        }
    }
}
