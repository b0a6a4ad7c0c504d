//! The `run` job: wires a firehose source, the ingest pipeline, the store and the admin endpoint
//! together, logs progress, and shuts down cleanly (every queued change committed) on Ctrl-C or
//! when a replay ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use pubsearch_shared::manifest::Manifest;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::embedder::{self, EmbedderOptions};
use crate::firehose::jetstream::{self, JetstreamConfig};
use crate::firehose::replay;
use crate::firehose::tap::{self, TapConfig};
use crate::ingest::{self, IngestConfig, IngestStats, Policy, StatsSnapshot};
use crate::store::{self, Store};
use crate::{flow, publish, serve};

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Source {
    Jetstream(Url),
    Tap(Url),
    Replay(PathBuf),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Jetstream(_) => "jetstream",
            Source::Tap(_) => "tap",
            Source::Replay(_) => "replay",
        }
    }
}

/// Everything `run` needs; the CLI fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Directory holding `store.db` (created if missing).
    pub data_dir: PathBuf,
    pub source: Source,
    /// Banned-DID list to enforce and store; `None` enforces the list the store already has.
    pub banned_dids: Option<PathBuf>,
    /// Where `/health` and `/stats` listen; `None` disables the endpoint.
    pub admin_addr: Option<SocketAddr>,
    /// The bearer token the admin endpoint requires (needed to bind a non-loopback address).
    /// Redacted in `Debug`.
    pub admin_token: Option<secrecy::SecretString>,
    pub progress_every: Duration,
    pub ingest: IngestConfig,
    /// Build and publish a snapshot this often while ingesting; `None` disables it.
    pub publish: Option<ScheduledPublish>,
    /// Write through to and sync down from Turso; `None` keeps the store local only.
    pub turso: Option<crate::turso::Replication>,
    /// Serve the public search API from published builds; `None` serves nothing.
    pub serve: Option<ServeOptions>,
    /// Told ingest's counters about five times a second (a progress display).
    pub progress: Option<ProgressHook>,
    /// Keep documents' vectors in the store as they are written ([`crate::embedder`]), when
    /// the embedding model is installed; `None` leaves every vector to the builds.
    pub embed: Option<EmbedderOptions>,
}

/// A callback for ingest's counters (see [`RunOptions::progress`]).
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn Fn(&StatsSnapshot) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// The public search API `run` serves beside ingest (see [`crate::serve`]).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Where builds are published (usually where `run` publishes them).
    pub target: crate::publish::objects::ObjectTarget,
    pub channel: String,
}

impl ServeOptions {
    /// The builds it serves, downloading remote ones under `data_dir`.
    pub fn builds(&self, data_dir: &std::path::Path) -> Arc<serve::Builds> {
        Arc::new(serve::Builds::new(
            self.target.clone(),
            self.channel.clone(),
            data_dir.join("serve-cache"),
            std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        ))
    }
}

impl RunOptions {
    /// Ingest from `source` into `data_dir` with defaults: no admin endpoint, no publishing,
    /// progress logged hourly (tests, benchmarks, embedding).
    pub fn new(data_dir: impl Into<PathBuf>, source: Source) -> Self {
        RunOptions {
            data_dir: data_dir.into(),
            source,
            banned_dids: None,
            admin_addr: None,
            admin_token: None,
            progress_every: Duration::from_secs(3600),
            ingest: IngestConfig::default(),
            publish: None,
            turso: None,
            serve: None,
            progress: None,
            embed: Some(EmbedderOptions::default()),
        }
    }
}

/// Periodic snapshot publishing alongside ingest.
#[derive(Debug, Clone)]
pub struct ScheduledPublish {
    /// How often a new base is built (when the store changed).
    pub every: Duration,
    /// How often a delta over the live base is published (when the store changed); `None`
    /// publishes bases only (ARCHITECTURE.md, "Deltas").
    pub delta_every: Option<Duration>,
    /// A delta larger than this makes the next publish a base, so readers never load a large one.
    pub delta_max_bytes: u64,
    pub target: crate::publish::objects::ObjectTarget,
    pub options: crate::publish::PublishOptions,
}

/// The store file inside a data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.db")
}

/// The lock a running worker holds on its data directory (see [`crate::lockfile`]).
pub fn worker_lock_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("worker.lock")
}

/// Runs ingest until Ctrl-C, `shutdown`, or the end of a replay; returns the final counters.
pub async fn run(options: RunOptions, shutdown: CancellationToken) -> Result<StatsSnapshot> {
    // One worker per data directory: a second is refused, told which process holds it, before
    // it touches anything (a backfill or a one-off publish may still run beside the worker).
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let _worker = crate::lockfile::LockFile::acquire(&worker_lock_path(&options.data_dir))
        .map_err(|error| {
            anyhow::anyhow!(
                "another worker owns the data directory {}: {error}; stop it, or give this one \
                 another --data-dir",
                options.data_dir.display()
            )
        })?;
    let store = Store::open(store_path(&options.data_dir))?;
    let admin_token = options
        .admin_token
        .as_ref()
        .map(|token| secrecy::ExposeSecret::expose_secret(token).to_owned());
    let checked = std::time::Instant::now();
    store.check()?;
    tracing::info!(store = %store.path().display(), seconds = format!("{:.2}", checked.elapsed().as_secs_f64()), "store checked");
    // First of all that can clash with another worker, so a second one fails before it starts
    // anything.
    let admin_listener = match options.admin_addr {
        Some(addr) => Some(admin::bind(addr, admin_token.as_deref()).await?),
        None => None,
    };
    let serve_listener = match &options.serve {
        Some(serve) => Some(serve::bind(serve.addr).await?),
        None => None,
    };
    let policy = options
        .banned_dids
        .as_deref()
        .map(Policy::load)
        .transpose()?;
    let (ack_sender, ack_receiver) = match options.source {
        Source::Tap(_) => {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        }
        _ => (None, None),
    };
    let ingest_config = IngestConfig {
        write_through: options.turso.is_some(),
        ..options.ingest.clone()
    };
    let (sink, writer) = ingest::spawn_writer(&store, &ingest_config, policy, ack_sender)
        .with_context(|| format!("starting the store writer on {}", store.path().display()))?;
    let stats = Arc::clone(sink.stats());
    tracing::info!(store = %store.path().display(), source = options.source.name(), "ingest starting");
    let mut workflows = flow::Registry::new();
    publish::workflow::register(
        &mut workflows,
        store.clone(),
        publish::work_dir(&options.data_dir),
    );
    let flow_db = flow::flow_path(&options.data_dir);
    let engine = flow::Engine::start(&flow_db, workflows, flow::EngineOptions::default())
        .await
        .with_context(|| format!("starting the workflow engine on {}", flow_db.display()))?;

    // Publishing needs the engine: if it stops on its own (a failed commit), stop ingest and
    // fail, so the worker is restarted instead of ingesting on with /health saying ok.
    let ingest_stop = shutdown.child_token();
    let engine_stopped = engine.stopped_token();
    let interrupt = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!(
                "interrupted; committing what is queued and stopping (interrupt again to exit now)"
            );
            interrupt.cancel();
        }
        // Exiting now is a crash the store and the workflows are built to survive.
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted again; exiting without waiting");
            std::process::exit(130);
        }
    });
    let background = CancellationToken::new();
    tokio::spawn(stop_ingest_if_engine_dies(
        engine_stopped.clone(),
        ingest_stop.clone(),
        background.clone(),
    ));
    let live_build: admin::LiveBuild = Default::default();
    if let Some(schedule) = &options.publish {
        let current = schedule
            .target
            .current(&schedule.options.channel)
            .await
            .ok()
            .flatten();
        *live_build.lock().expect("not poisoned") = current;
    }
    if let Some(listener) = admin_listener {
        tracing::info!(addr = %listener.local_addr()?, "admin endpoint listening (/health, /stats)");
        let state = AdminState {
            source: options.source.name(),
            stats: Arc::clone(&stats),
            queue: sink.queue_probe(),
            started: Instant::now(),
            requests: Default::default(),
            live_build: Arc::clone(&live_build),
            token: admin_token.as_deref().map(Arc::from),
            upstream: options.turso.as_ref().map(|turso| Arc::clone(&turso.stats)),
        };
        tokio::spawn(admin::serve(listener, state, background.clone()));
    }
    if let (Some(listener), Some(serve)) = (serve_listener, &options.serve) {
        tracing::info!(
            url = %format!("http://{}/", listener.local_addr()?),
            "search server listening"
        );
        let builds = serve.builds(&options.data_dir);
        tokio::spawn(serve::serve(listener, builds, background.clone()));
    }
    if let Some(hook) = options.progress.clone() {
        let (stats, stop) = (Arc::clone(&stats), background.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                (hook.0)(&stats.snapshot());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    tokio::spawn(log_progress(
        Arc::clone(&stats),
        sink.queue_probe(),
        options.progress_every,
        background.clone(),
    ));
    if let Some(schedule) = options.publish.clone() {
        tokio::spawn(publish_periodically(
            engine.client(),
            store.clone(),
            schedule,
            Arc::clone(&live_build),
            background.clone(),
        ));
    }

    let replication_stop = CancellationToken::new();
    let replication = match &options.turso {
        Some(turso) => start_replication(&store, &sink, turso, &replication_stop)?,
        None => Vec::new(),
    };
    // Stopped with the background work, or when this function returns however it does.
    let embed_stop = background.child_token();
    let _stop_embedding = embed_stop.clone().drop_guard();
    let embedder = match options.embed.clone() {
        Some(embed) => {
            let load = crate::embed::stored::for_builds;
            Some(
                embedder::spawn(&store, load, embed, embed_stop).with_context(|| {
                    format!("starting the embedder on {}", store.path().display())
                })?,
            )
        }
        None => None,
    };

    let source_result = match options.source {
        Source::Jetstream(url) => {
            jetstream::run(JetstreamConfig::new(url), sink, ingest_stop.clone()).await;
            Ok(())
        }
        Source::Tap(url) => {
            let acks = ack_receiver.expect("tap always has an ack channel");
            tap::run(TapConfig::new(url), sink, acks, ingest_stop.clone()).await;
            Ok(())
        }
        Source::Replay(path) => {
            let replayed = replay::run(&path, &sink, &ingest_stop).await;
            drop(sink);
            replayed.map(drop)
        }
    };
    // Replication holds sink clones: stop it (one last upstream flush) before the writer.
    replication_stop.cancel();
    for task in replication {
        let _ = task.await;
    }
    // Every sink clone is gone now: the writer commits what is queued and stops.
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("the writer thread failed")?;
    let engine_died = engine_stopped.is_cancelled();
    background.cancel();
    if let Some(embedder) = embedder {
        let _ = tokio::task::spawn_blocking(move || embedder.join()).await;
    }
    engine.shutdown().await;
    writer_result.context("the store writer stopped with an error")?;
    source_result?;
    if engine_died {
        anyhow::bail!(
            "the workflow engine on {} stopped on its own (a flow commit failed; see the log)",
            flow_db.display()
        );
    }
    let summary = stats.snapshot();
    tracing::info!(
        events = summary.events,
        applied = summary.applied,
        stale = summary.stale,
        malformed = summary.malformed,
        batches = summary.batches,
        "ingest stopped; everything received is committed"
    );
    Ok(summary)
}

/// Cancels `ingest` if the workflow engine stops before `background` work is stopped (which
/// comes before the engine's own shutdown).
async fn stop_ingest_if_engine_dies(
    engine_stopped: CancellationToken,
    ingest: CancellationToken,
    background: CancellationToken,
) {
    tokio::select! {
        biased;
        () = background.cancelled() => {}
        () = engine_stopped.cancelled() => {
            tracing::error!("the workflow engine stopped on its own; stopping ingest");
            ingest.cancel();
        }
    }
}

/// Starts write-through and sync down; both stop on `stop`.
fn start_replication(
    store: &Store,
    sink: &ingest::Sink,
    turso: &crate::turso::Replication,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    use crate::turso::{TursoClient, sync, upstream};
    let client = TursoClient::new(turso.config.clone()).context("configuring the Turso client")?;
    tracing::info!(url = %client.url(), "replicating with Turso: write-through and sync down");
    Ok(vec![
        tokio::spawn(upstream::drain(
            store.clone(),
            client.clone(),
            sink.clone(),
            turso.upstream.clone(),
            Arc::clone(&turso.stats),
            stop.clone(),
        )),
        tokio::spawn(sync::run(
            store.clone(),
            client,
            sink.clone(),
            turso.sync.clone(),
            stop.clone(),
        )),
    ])
}

/// Publishes through the durable publish workflow (an interrupted one is resumed first) when
/// the store has changed since what the channel serves: a delta over the live base every
/// `schedule.delta_every`, and a new base (with a catch-up delta, so nothing a delta showed
/// disappears) every `schedule.every` or once the delta outgrows `delta_max_bytes`. A failed
/// publish is logged and retried next time; it never disturbs ingest.
async fn publish_periodically(
    workflows: flow::FlowClient,
    store: Store,
    schedule: ScheduledPublish,
    live_build: admin::LiveBuild,
    stop: CancellationToken,
) {
    let tick = schedule
        .delta_every
        .map_or(schedule.every, |delta| delta.min(schedule.every));
    let mut purged_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let live = schedule
            .target
            .current(&schedule.options.channel)
            .await
            .ok()
            .flatten();
        if let Ok(mut shown) = live_build.lock() {
            shown.clone_from(&live);
        }
        let since = live.as_ref().map_or(0, Manifest::served_watermark_us);
        let changed = store
            .reader()
            .map_err(anyhow::Error::from)
            .and_then(|conn| Ok(store::read::changed_since(&conn, since)?));
        match changed {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether the store changed; will retry");
                continue;
            }
        }
        // Building would be wasted: a held channel refuses a scheduled pointer move anyway.
        match schedule.target.hold(&schedule.options.channel).await {
            Ok(None) => {}
            Ok(Some(hold)) => {
                tracing::info!(
                    channel = schedule.options.channel,
                    build_id = hold.build_id,
                    since = %hold.since,
                    "channel held by a rollback; not publishing until `native-worker publish` releases it"
                );
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the channel's hold; will retry");
                continue;
            }
        }
        let delta = wants_delta(&schedule, live.as_ref());
        let span = tracing::info_span!("publish", channel = %schedule.options.channel, delta);
        let published = async {
            let spec = schedule.target.spec().clone();
            let mut request = publish::workflow::PublishRequest::scheduled(spec, &schedule.options);
            request.delta = delta;
            request.catch_up = !delta && schedule.delta_every.is_some();
            publish::workflow::publish_and_wait(&workflows, &request, publish::PUBLISH_TIMEOUT)
                .await
        }
        .instrument(span)
        .await;
        // A new base shows in `/stats` now; a delta, with the pointer read on the next tick.
        if let Some(manifest) = published.as_ref().ok().filter(|_| !delta)
            && let Ok(mut shown) = live_build.lock()
        {
            *shown = Some(manifest.clone());
        }
        match published {
            Ok(manifest) if delta => tracing::debug!(
                build_id = manifest.build_id,
                documents = manifest.counts.documents,
                "scheduled delta done"
            ),
            Ok(manifest) => tracing::info!(
                build_id = manifest.build_id,
                documents = manifest.counts.documents,
                "scheduled publish done"
            ),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                delta,
                "scheduled publish failed; will retry"
            ),
        }
        // A delta every few seconds is thousands of finished workflows a day.
        if delta && purged_at.elapsed() >= DELTA_WORKFLOWS_KEPT {
            purged_at = tokio::time::Instant::now();
            let prefix = publish::workflow::DELTA_INSTANCES;
            match workflows.purge_prefixed(DELTA_WORKFLOWS_KEPT, prefix) {
                Ok(purged) => tracing::debug!(purged, "purged finished delta workflows"),
                Err(error) => tracing::warn!(%error, "purging finished delta workflows failed"),
            }
        }
    }
}

/// How long finished delta workflows stay in the flow database for `flow list` and `flow show`.
const DELTA_WORKFLOWS_KEPT: Duration = Duration::from_secs(3600);

/// Whether the next scheduled publish is a delta rather than a base: deltas are on, the channel
/// has a base a delta can overlay (schema 6 or later, which has the row facts a delta continues),
/// the base is younger than `schedule.every`, and its delta has not outgrown its limit.
fn wants_delta(schedule: &ScheduledPublish, live: Option<&Manifest>) -> bool {
    let Some(live) = live else {
        return false;
    };
    let age_ms = crate::clock::now_ms() - live.created_at.unix_millis();
    schedule.delta_every.is_some()
        && live.schema_version >= pubsearch_shared::delta::OLDEST_BASE_SCHEMA
        && u128::try_from(age_ms).unwrap_or(0) < schedule.every.as_millis()
        && live
            .delta
            .as_ref()
            .is_none_or(|delta| delta.byte_size <= schedule.delta_max_bytes)
}

async fn log_progress(
    stats: Arc<IngestStats>,
    queue: ingest::QueueProbe,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last = stats.snapshot();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = stats.snapshot();
        let seconds = last_at.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            events_per_sec = format!("{:.0}", (now.events - last.events) as f64 / seconds),
            commits_per_sec = format!("{:.0}", (now.applied - last.applied) as f64 / seconds),
            lag_ms = now.lag_ms,
            queue = queue.depth(),
            malformed = now.malformed,
            dropped = now.banned + now.oversized_frames + now.undecodable_frames,
            reconnects = now.reconnects,
            "ingest progress"
        );
        last = now;
        last_at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(deltas: bool, dir: &std::path::Path) -> ScheduledPublish {
        ScheduledPublish {
            every: Duration::from_secs(900),
            delta_every: deltas.then(|| Duration::from_secs(10)),
            delta_max_bytes: 1_000_000,
            target: publish::objects::ObjectTarget::local(dir).unwrap(),
            options: publish::PublishOptions {
                channel: "prod".into(),
                force: false,
                keep: 3,
            },
        }
    }

    /// A live pointer built `age` ago, with a delta of `delta_bytes` if given.
    fn live(age: Duration, delta_bytes: Option<u64>) -> Manifest {
        let created = crate::clock::now_ms() - age.as_millis() as i64;
        let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
            "build_id": "b", "channel": "prod", "schema_version": 6, "tokenizer": "t",
            "scoring_version": 1, "source_watermark_us": 1, "sha256": "", "byte_size": 1,
            "page_size": 4096, "counts": {"documents": 1, "publications": 0, "tags": 0},
            "sentinel": null, "builder_version": "test", "artifact": "a",
            "created_at": pubsearch_shared::Timestamp::from_unix_millis(created).unwrap(),
        }))
        .unwrap();
        manifest.delta = delta_bytes.map(|bytes| {
            Box::new(Manifest {
                byte_size: bytes,
                base_build_id: Some("b".into()),
                ..manifest.clone()
            })
        });
        manifest
    }

    #[test]
    fn a_delta_is_published_over_a_young_base_until_it_grows_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let (on, off) = (schedule(true, dir.path()), schedule(false, dir.path()));
        let young = Duration::from_secs(60);
        assert!(wants_delta(&on, Some(&live(young, None))));
        assert!(wants_delta(&on, Some(&live(young, Some(900_000)))));
        assert!(!wants_delta(&on, None), "nothing to overlay: a base first");
        assert!(!wants_delta(&off, Some(&live(young, None))), "deltas off");
        assert!(
            !wants_delta(&on, Some(&live(Duration::from_secs(901), None))),
            "the base is due"
        );
        assert!(
            !wants_delta(&on, Some(&live(young, Some(1_000_001)))),
            "the delta outgrew its limit"
        );
        let mut old_schema = live(young, None);
        old_schema.schema_version = 5;
        assert!(
            !wants_delta(&on, Some(&old_schema)),
            "no row facts to continue"
        );
    }
}
