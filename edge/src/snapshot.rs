//! The live snapshot: loaded from R2, verified, swapped atomically, kept on failure.
//!
//! One isolate holds at most one live build. The first request loads it; concurrent first
//! requests wait for that load instead of each starting one. They wait on their own timers, not on
//! a lock the loading request releases: the Workers runtime cancels a request that waits on
//! another request's I/O as hung. Afterwards the pointer is re-read at most every
//! `POINTER_CHECK_SECONDS` by one request while the others keep answering from the live build, and
//! a new build replaces the live one only after it checks out. A failure is recorded for `/stats`
//! and `/snapshot` and the current build keeps serving (ARCHITECTURE.md, invariant 2).
//!
//! The pointer may also name a delta over the build (ARCHITECTURE.md, "Deltas"): it is loaded
//! whole ([`crate::delta`]) and searched together with the build. A new build is adopted only
//! with the delta the pointer names beside it, so a change a delta showed never disappears
//! until the next build includes it; a delta that fails leaves the current pair serving.
//!
//! A build is served one of two ways (ARCHITECTURE.md, "Paged snapshots"):
//! - **Resident**, up to `RESIDENT_MAX_MB`: the artifact streams from R2 straight into memory
//!   SQLite owns, hashed on the way ([`crate::download`]), and opens with `sqlite3_deserialize`:
//!   one copy of the bytes in wasm memory, ever. Checked whole: size, digest, contents.
//! - **Paged**, above it: SQLite reads the artifact by range through [`crate::paged`], each chunk
//!   checked against the build's chunk table on arrival, so memory stays within `PAGE_CACHE_MB`
//!   plus a fixed overhead whatever the build's size. Every use of a paged connection is a JSPI
//!   job ([`crate::jspi`]). A chunk that fails its digest marks the build bad: the previous good
//!   build serves again, and the bad one is not adopted again.

use std::cell::RefCell;
use std::rc::Rc;

use pubsearch_shared::delta::{DeltaError, Layers};
use pubsearch_shared::manifest::{self, Manifest, VerifyError};
use pubsearch_shared::search;
use rusqlite::Connection;
use rusqlite::serialize::OwnedData;
use worker::Env;

use crate::delta::LiveDelta;
use crate::error::EdgeError;
use crate::jspi::{self, JobError};
use crate::paged::{self, Failure, RemoteArtifact};
use crate::{download, stats};

/// The R2 binding holding published builds.
pub const BUCKET_BINDING: &str = "SNAPSHOTS";
/// Page cache per snapshot, in KiB: wasm memory never shrinks, so keep it small.
const CACHE_KIB: i64 = 2 * 1024;
/// How soon to retry when no snapshot could be loaded at all.
const RETRY_EMPTY_MS: f64 = 2_000.0;
/// A load older than this is presumed abandoned (its request was cancelled) and taken over.
const LOAD_TIMEOUT_MS: f64 = 30_000.0;
/// How often a request waiting for another's load checks for it.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// Builds at most this large load whole unless `RESIDENT_MAX_MB` says otherwise.
const DEFAULT_RESIDENT_MAX_MB: f64 = 32.0;
/// The chunk cache's budget for paged builds unless `PAGE_CACHE_MB` says otherwise.
const DEFAULT_PAGE_CACHE_MB: f64 = 32.0;
/// How often the pointer is read while requests arrive, unless `POINTER_CHECK_SECONDS` says
/// otherwise: one small GET per isolate at most this often bounds how late a delta is seen
/// (README, "Freshness").
const DEFAULT_POINTER_CHECK_SECONDS: f64 = 5.0;
/// Builds found bad remembered, most recent last.
const BAD_BUILDS_KEPT: usize = 16;

/// A verified build, open for queries with its delta. Use it through [`Live::query`].
pub struct Live {
    conn: Connection,
    /// The delta over this build the pointer named when last read; queries take it as they
    /// start, so each answers from one consistent pair.
    delta: RefCell<Option<Rc<LiveDelta>>>,
    /// The read-ahead of result rows: a paged build's, or none for a resident one.
    prefetch: Box<dyn search::Prefetch>,
    pub manifest: Manifest,
    /// Read by range through [`crate::paged`] rather than held whole.
    pub paged: bool,
    pub loaded_at_ms: f64,
    /// From reading the pointer to a verified build. Workers' clocks advance only on I/O, so in
    /// production this is the I/O; locally (workerd) it includes opening and verifying.
    pub load_ms: f64,
    /// The artifact download alone (see [`crate::download`]).
    pub download_ms: f64,
}

/// Why a build was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no pointer at {0}: nothing has been published to this channel")]
    NoPointer(String),
    #[error("the pointer names {0}, which is not in the bucket")]
    MissingArtifact(String),
    #[error("R2: {0}")]
    R2(#[from] worker::Error),
    #[error("streaming the artifact: {0}")]
    Stream(worker::Error),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("sqlite cannot allocate {0} bytes for the snapshot")]
    OutOfMemory(u64),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "build {build_id} is {mb:.1} MB, over RESIDENT_MAX_MB, and this runtime has no JSPI to read it by range"
    )]
    NeedsJspi { build_id: String, mb: f64 },
    #[error("build {0} was found corrupt and is not adopted again")]
    MarkedBad(String),
    #[error(transparent)]
    Paged(#[from] Failure),
    #[error("paged open: {0}")]
    Job(#[from] JobError),
    #[error("delta: {0}")]
    Delta(#[from] DeltaError),
}

#[derive(Default)]
struct State {
    live: Option<Rc<Live>>,
    /// The build live before the current one, to fall back to if the current one turns out bad.
    previous: Option<Rc<Live>>,
    /// Builds refused for good: a chunk failed its digest.
    bad_builds: Vec<String>,
    checked_at_ms: Option<f64>,
    /// Pointer GETs and delta downloads: this isolate's R2 reads besides a build's own.
    pointer_reads: u64,
    delta_loads: u64,
    loads: u64,
    failures: u64,
    last_failure: Option<String>,
    /// When the load in progress started, if one is.
    loading_since_ms: Option<f64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Where the worker looks for builds, and how it holds them.
pub struct Config {
    pub channel: String,
    pub check_every_ms: f64,
    /// Builds larger than this are paged.
    pub resident_max_bytes: u64,
    /// The chunk cache's budget for paged builds.
    pub page_cache_bytes: usize,
}

impl Config {
    /// Reads `SNAPSHOT_CHANNEL` (default `prod`), `POINTER_CHECK_SECONDS` (5),
    /// `RESIDENT_MAX_MB` (32) and `PAGE_CACHE_MB` (32).
    pub fn from_env(env: &Env) -> Self {
        let var = |name: &str| env.var(name).ok().map(|value| value.to_string());
        let number = |name: &str, default: f64| {
            var(name)
                .and_then(|value| value.trim().parse::<f64>().ok())
                .filter(|value| value.is_finite() && *value >= 0.0)
                .unwrap_or(default)
        };
        Self {
            channel: var("SNAPSHOT_CHANNEL").unwrap_or_else(|| "prod".into()),
            check_every_ms: number("POINTER_CHECK_SECONDS", DEFAULT_POINTER_CHECK_SECONDS) * 1000.0,
            resident_max_bytes: (number("RESIDENT_MAX_MB", DEFAULT_RESIDENT_MAX_MB) * 1e6) as u64,
            page_cache_bytes: (number("PAGE_CACHE_MB", DEFAULT_PAGE_CACHE_MB) * 1e6) as usize,
        }
    }
}

/// What `/stats` and `/snapshot` report about loading.
#[derive(Debug, serde::Serialize)]
pub struct LoadStatus {
    pub build_id: Option<String>,
    /// R2 reads of the pointer by this isolate, and deltas it downloaded (README, "Freshness").
    pub pointer_reads: u64,
    pub delta_loads: u64,
    pub loads: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    pub loaded_at_ms: Option<f64>,
    /// The live build's [`Live::load_ms`] and [`Live::download_ms`].
    pub load_ms: Option<f64>,
    pub download_ms: Option<f64>,
    /// Whether the live build is read by range.
    pub paged: Option<bool>,
    /// The build served before the live one, kept to fall back to.
    pub previous_build_id: Option<String>,
    /// Builds found corrupt, never adopted again.
    pub bad_builds: Vec<String>,
    /// The live build's delta, if the pointer names one and it loaded.
    pub delta: Option<DeltaStatus>,
}

/// What `/stats` and `/snapshot` report about the live delta.
#[derive(Debug, serde::Serialize)]
pub struct DeltaStatus {
    pub build_id: String,
    pub source_watermark_us: i64,
    pub documents: u64,
    pub byte_size: u64,
    pub loaded_at_ms: f64,
    pub load_ms: f64,
}

/// The current load status.
pub fn status() -> LoadStatus {
    STATE.with(|state| {
        let state = state.borrow();
        LoadStatus {
            build_id: state
                .live
                .as_ref()
                .map(|live| live.manifest.build_id.clone()),
            pointer_reads: state.pointer_reads,
            delta_loads: state.delta_loads,
            loads: state.loads,
            failures: state.failures,
            last_failure: state.last_failure.clone(),
            loaded_at_ms: state.live.as_ref().map(|live| live.loaded_at_ms),
            load_ms: state.live.as_ref().map(|live| live.load_ms),
            download_ms: state.live.as_ref().map(|live| live.download_ms),
            paged: state.live.as_ref().map(|live| live.paged),
            previous_build_id: state
                .previous
                .as_ref()
                .map(|previous| previous.manifest.build_id.clone()),
            bad_builds: state.bad_builds.clone(),
            delta: state
                .live
                .as_ref()
                .and_then(|live| live.delta())
                .map(|delta| DeltaStatus {
                    build_id: delta.manifest.build_id.clone(),
                    source_watermark_us: delta.manifest.source_watermark_us,
                    documents: delta.manifest.counts.documents,
                    byte_size: delta.manifest.byte_size,
                    loaded_at_ms: delta.loaded_at_ms,
                    load_ms: delta.load_ms,
                }),
        }
    })
}

/// The live build, if one is loaded, without touching R2.
pub fn peek() -> Option<Rc<Live>> {
    STATE.with(|state| state.borrow().live.clone())
}

fn now_ms() -> f64 {
    worker::Date::now().as_millis() as f64
}

/// Whether the pointer is due for a check.
enum Freshness {
    /// The live build, checked recently enough.
    Fresh(Rc<Live>),
    /// No build is live and the last attempt failed less than [`RETRY_EMPTY_MS`] ago: its error.
    Failed(String),
    Due,
}

fn freshness(config: &Config) -> Freshness {
    STATE.with(|state| {
        let state = state.borrow();
        let Some(checked) = state.checked_at_ms else {
            return Freshness::Due;
        };
        let since = now_ms() - checked;
        match &state.live {
            Some(live) if since < config.check_every_ms => Freshness::Fresh(live.clone()),
            None if since < RETRY_EMPTY_MS => Freshness::Failed(
                state
                    .last_failure
                    .clone()
                    .unwrap_or_else(|| "no snapshot loaded".into()),
            ),
            _ => Freshness::Due,
        }
    })
}

/// The build to answer from: loads or refreshes it when due, and never gives up a working
/// build because a newer one failed.
pub async fn current(env: &Env) -> Result<Rc<Live>, EdgeError> {
    let config = Config::from_env(env);
    let started = now_ms();
    loop {
        // A failure stands for RETRY_EMPTY_MS, for this request and those that waited on the
        // load: without a build, retrying at once would re-download for every request.
        match freshness(&config) {
            Freshness::Fresh(live) => return Ok(live),
            Freshness::Failed(error) => return Err(EdgeError::unavailable(error)),
            Freshness::Due => {}
        }
        let claimed = STATE.with(|state| {
            let mut state = state.borrow_mut();
            let now = now_ms();
            if state
                .loading_since_ms
                .is_some_and(|since| now - since < LOAD_TIMEOUT_MS)
            {
                false
            } else {
                state.loading_since_ms = Some(now);
                true
            }
        });
        if claimed {
            let result = refresh(env, &config).await;
            return adopt(result);
        }
        // Another request is loading: answer from the live build if there is one, else wait.
        if let Some(live) = peek() {
            return Ok(live);
        }
        if now_ms() - started > LOAD_TIMEOUT_MS {
            return Err(EdgeError::unavailable("the snapshot is still loading"));
        }
        worker::Delay::from(WAIT_POLL).await;
    }
}

/// Records a load's outcome and returns the build to answer from.
fn adopt(result: Result<Option<Live>, LoadError>) -> Result<Rc<Live>, EdgeError> {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        state.loading_since_ms = None;
        state.checked_at_ms = Some(now_ms());
        match result {
            Ok(Some(live)) => {
                state.loads += 1;
                worker::console_log!(
                    "adopted build {}: {} bytes {}, loaded in {} ms (download {} ms)",
                    live.manifest.build_id,
                    live.manifest.byte_size,
                    if live.paged { "paged" } else { "resident" },
                    live.load_ms,
                    live.download_ms
                );
                // Only a paged build can turn out bad after adoption (its chunks are checked as
                // they arrive), so only then is the build before it worth its memory.
                let paged = live.paged;
                let before = state.live.replace(Rc::new(live));
                state.previous = if paged { before } else { None };
            }
            Ok(None) => {}
            Err(error) => {
                state.failures += 1;
                worker::console_error!("snapshot load failed: {error}");
                state.last_failure = Some(error.to_string());
            }
        }
        state.live.clone().ok_or_else(|| {
            EdgeError::unavailable(
                state
                    .last_failure
                    .clone()
                    .unwrap_or_else(|| "no snapshot loaded".into()),
            )
        })
    })
}

/// Reads the pointer; loads and verifies the build it names if that is not the live one.
/// `Ok(None)` means the live build is still current.
async fn refresh(env: &Env, config: &Config) -> Result<Option<Live>, LoadError> {
    let started = now_ms();
    let bucket = env.bucket(BUCKET_BINDING)?;
    let pointer_key = manifest::pointer_key(&config.channel);
    STATE.with(|state| state.borrow_mut().pointer_reads += 1);
    let pointer = Manifest::parse(
        &read_object(&bucket, &pointer_key)
            .await?
            .ok_or_else(|| LoadError::NoPointer(pointer_key.clone()))?,
    )?;
    if let Some(live) = peek().filter(|live| live.manifest.build_id == pointer.build_id) {
        sync_delta(&bucket, &live, pointer.delta.as_deref()).await?;
        return Ok(None);
    }
    let live = load_build(&bucket, pointer.clone(), config, started).await?;
    // Adopted together, so what the old delta showed never vanishes in between.
    sync_delta(&bucket, &live, pointer.delta.as_deref()).await?;
    Ok(Some(live))
}

/// Makes `wanted` (the pointer's delta, if any) the live build's delta, loading it if it is new.
async fn sync_delta(
    bucket: &worker::Bucket,
    live: &Live,
    wanted: Option<&Manifest>,
) -> Result<(), LoadError> {
    let Some(wanted) = wanted else {
        live.delta.replace(None);
        return Ok(());
    };
    if live
        .delta()
        .is_some_and(|delta| delta.manifest.build_id == wanted.build_id)
    {
        return Ok(());
    }
    STATE.with(|state| state.borrow_mut().delta_loads += 1);
    let delta = crate::delta::load(bucket, wanted, &live.manifest.build_id).await?;
    worker::console_log!(
        "adopted delta {} over {}: {} documents, {} bytes, loaded in {} ms",
        delta.manifest.build_id,
        live.manifest.build_id,
        delta.manifest.counts.documents,
        delta.manifest.byte_size,
        delta.load_ms
    );
    live.delta.replace(Some(Rc::new(delta)));
    Ok(())
}

/// Loads and verifies the build `pointer` names (resident or paged, by size).
async fn load_build(
    bucket: &worker::Bucket,
    pointer: Manifest,
    config: &Config,
    started: f64,
) -> Result<Live, LoadError> {
    // The build itself; its delta is the pointer's business.
    let pointer = Manifest {
        delta: None,
        ..pointer
    };
    if STATE.with(|state| state.borrow().bad_builds.contains(&pointer.build_id)) {
        return Err(LoadError::MarkedBad(pointer.build_id));
    }
    if pointer.byte_size > config.resident_max_bytes {
        let bucket = bucket.clone();
        if !jspi::available() {
            return Err(LoadError::NeedsJspi {
                build_id: pointer.build_id,
                mb: pointer.byte_size as f64 / 1e6,
            });
        }
        // The build's own manifest has the chunk table the pointer leaves out.
        let key = manifest::manifest_key(&pointer.build_id);
        let built = Manifest::parse(
            &read_object(&bucket, &key)
                .await?
                .ok_or(LoadError::MissingArtifact(key))?,
        )?;
        if built.pointer() != pointer.pointer() {
            return Err(VerifyError::Meta(format!(
                "build {}'s manifest differs from the pointer naming it",
                pointer.build_id
            ))
            .into());
        }
        // A build published before chunk tables has none: it can only load whole.
        if built.chunks.is_some() {
            return open_paged(bucket, built, config, started).await;
        }
    }
    let download_started = now_ms();
    let data = download::artifact(bucket, &pointer).await?;
    let download_ms = now_ms() - download_started;
    let conn = open(data)?;
    manifest::verify_published(&conn, &pointer)?;
    let loaded_at_ms = now_ms();
    Ok(Live {
        conn,
        delta: RefCell::new(None),
        prefetch: Box::new(search::NoPrefetch),
        manifest: pointer,
        paged: false,
        loaded_at_ms,
        load_ms: loaded_at_ms - started,
        download_ms,
    })
}

/// A small object's bytes, `None` if it is not in the bucket.
async fn read_object(bucket: &worker::Bucket, key: &str) -> Result<Option<Vec<u8>>, LoadError> {
    let Some(object) = bucket.get(key).execute().await? else {
        return Ok(None);
    };
    match object.body() {
        Some(body) => Ok(Some(body.bytes().await?)),
        None => Ok(None),
    }
}

/// Opens a build by range and runs the checks a paged build can afford (see
/// [`manifest::verify_paged`]), all in one JSPI job.
async fn open_paged(
    bucket: worker::Bucket,
    manifest: Manifest,
    config: &Config,
    started: f64,
) -> Result<Live, LoadError> {
    paged::configure(config.page_cache_bytes);
    let artifact = Rc::new(RemoteArtifact::new(bucket, &manifest)?);
    let prefetch = Box::new(paged::btree::RowPrefetch::new(artifact.clone()));
    let checked = manifest.clone();
    paged::take_failure();
    let opened = jspi::run(move || -> Result<Connection, LoadError> {
        let conn = paged::open(artifact)?;
        search::prepare(&conn)?;
        manifest::verify_paged(&conn, &checked)?;
        Ok(conn)
    })
    .await?;
    if let Some(failure) = paged::take_failure() {
        if let Failure::Corrupt { build_id, .. } = &failure {
            mark_bad(build_id);
        }
        return Err(failure.into());
    }
    let conn = opened?;
    let loaded_at_ms = now_ms();
    Ok(Live {
        conn,
        delta: RefCell::new(None),
        prefetch,
        manifest,
        paged: true,
        loaded_at_ms,
        load_ms: loaded_at_ms - started,
        download_ms: 0.0,
    })
}

/// Refuses `build_id` for good; if it is live, the previous build serves again.
fn mark_bad(build_id: &str) {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        if !state.bad_builds.iter().any(|bad| bad == build_id) {
            state.bad_builds.push(build_id.to_owned());
            if state.bad_builds.len() > BAD_BUILDS_KEPT {
                state.bad_builds.remove(0);
            }
        }
        if state
            .live
            .as_ref()
            .is_some_and(|live| live.manifest.build_id == build_id)
        {
            state.live = state.previous.take();
            worker::console_error!(
                "build {build_id} is corrupt; serving {} again",
                state
                    .live
                    .as_ref()
                    .map_or("nothing", |live| live.manifest.build_id.as_str())
            );
            // Found while serving. Found while opening, the failed load counts it instead.
            state.failures += 1;
            state.last_failure = Some(format!("build {build_id} has a corrupt chunk"));
        }
    });
}

/// Forgets a paged build whose connection an abandoned job may still hold: the next request
/// opens it afresh on a connection of its own.
fn forget(build_id: &str) {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        if state
            .live
            .as_ref()
            .is_some_and(|live| live.manifest.build_id == build_id)
        {
            state.live = state.previous.take();
            state.checked_at_ms = None;
        }
    });
}

impl Live {
    /// The delta served with this build, if any.
    pub fn delta(&self) -> Option<Rc<LiveDelta>> {
        self.delta.borrow().clone()
    }

    /// What this build and its delta serve together.
    pub fn served_counts(&self) -> pubsearch_shared::snapshot::SnapshotCounts {
        self.delta()
            .map_or(self.manifest.counts, |delta| delta.delta.served())
    }

    /// Runs `work` on the build and its delta, with the build's read-ahead: directly for a
    /// resident build, as a JSPI job for a paged one, whose chunk reads and fetches are recorded
    /// for `endpoint` in `/stats`. A paged read that fails answers 503, and a corrupt chunk
    /// marks the build bad.
    pub async fn query<R: 'static>(
        self: &Rc<Self>,
        endpoint: &'static str,
        work: impl FnOnce(Layers<'_>, &dyn search::Prefetch) -> R + 'static,
    ) -> Result<R, EdgeError> {
        let delta = self.delta();
        if !self.paged {
            return Ok(work(layers(self, delta.as_deref()), &*self.prefetch));
        }
        let live = self.clone();
        paged::take_failure();
        let before = paged::counts();
        let result =
            jspi::run(move || work(layers(&live, delta.as_deref()), &*live.prefetch)).await;
        stats::record_io(endpoint, paged::counts().since(&before));
        let build_id = &self.manifest.build_id;
        match (result, paged::take_failure()) {
            (_, Some(failure)) => {
                if matches!(failure, Failure::Corrupt { .. }) {
                    mark_bad(build_id);
                }
                Err(EdgeError::degraded(failure.to_string()))
            }
            (Err(JobError::Abandoned(ms)), None) => {
                forget(build_id);
                Err(EdgeError::degraded(format!(
                    "a request abandoned after {ms:.0} ms held build {build_id}; reopening it"
                )))
            }
            (Err(error), None) => Err(EdgeError::internal(error.to_string())),
            (Ok(output), None) => Ok(output),
        }
    }
}

/// A build and the delta it is served with.
fn layers<'a>(live: &'a Live, delta: Option<&'a LiveDelta>) -> Layers<'a> {
    Layers {
        base: &live.conn,
        delta: delta.map(|delta| &delta.delta),
    }
}

/// Opens a downloaded artifact read-only and readies it for search.
fn open(data: OwnedData) -> Result<Connection, LoadError> {
    let conn = deserialize(data)?;
    search::prepare(&conn)?;
    Ok(conn)
}

/// Opens a downloaded artifact read-only, as it is.
pub fn deserialize(data: OwnedData) -> Result<Connection, LoadError> {
    let mut conn = Connection::open_in_memory()?;
    conn.deserialize(rusqlite::MAIN_DB, data, true)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}
