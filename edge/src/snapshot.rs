//! The live snapshot: loaded from R2, verified, swapped atomically, kept on failure.
//!
//! One isolate holds at most one live build. The first request loads it; concurrent first
//! requests wait for that load instead of each starting one. They wait on their own timers, not on
//! a lock the loading request releases: the Workers runtime cancels a request that waits on
//! another request's I/O as hung. Afterwards the pointer is re-read at most every
//! `POINTER_CHECK_SECONDS` by one request while the others keep answering from the live build, and
//! a new build replaces the live one only after its size, digest and contents check out (see
//! `manifest::verify_published`). A failure is recorded for `/stats` and `/snapshot` and the
//! current build keeps serving (DESIGN.md invariant 2).
//!
//! The artifact streams from R2 straight into memory SQLite owns (`sqlite3_malloc64`), hashed on
//! the way ([`crate::download`]), then opens read-only with `sqlite3_deserialize`: one copy of the
//! bytes in wasm memory, ever.

use std::cell::RefCell;
use std::rc::Rc;

use pubsearch_shared::manifest::{self, Manifest, VerifyError};
use pubsearch_shared::search;
use rusqlite::Connection;
use rusqlite::serialize::OwnedData;
use worker::Env;

use crate::download;
use crate::error::EdgeError;

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

/// A verified build, open for queries.
pub struct Live {
    pub conn: Connection,
    pub manifest: Manifest,
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
}

#[derive(Default)]
struct State {
    live: Option<Rc<Live>>,
    checked_at_ms: Option<f64>,
    loads: u64,
    failures: u64,
    last_failure: Option<String>,
    /// When the load in progress started, if one is.
    loading_since_ms: Option<f64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Where the worker looks for builds.
pub struct Config {
    pub channel: String,
    pub check_every_ms: f64,
}

impl Config {
    /// Reads `SNAPSHOT_CHANNEL` (default `prod`) and `POINTER_CHECK_SECONDS` (default 60).
    pub fn from_env(env: &Env) -> Self {
        let var = |name: &str| env.var(name).ok().map(|value| value.to_string());
        Self {
            channel: var("SNAPSHOT_CHANNEL").unwrap_or_else(|| "prod".into()),
            check_every_ms: var("POINTER_CHECK_SECONDS")
                .and_then(|seconds| seconds.parse::<f64>().ok())
                .unwrap_or(60.0)
                * 1000.0,
        }
    }
}

/// What `/stats` and `/snapshot` report about loading.
#[derive(Debug, serde::Serialize)]
pub struct LoadStatus {
    pub build_id: Option<String>,
    pub loads: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    pub loaded_at_ms: Option<f64>,
    /// The live build's [`Live::load_ms`] and [`Live::download_ms`].
    pub load_ms: Option<f64>,
    pub download_ms: Option<f64>,
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
            loads: state.loads,
            failures: state.failures,
            last_failure: state.last_failure.clone(),
            loaded_at_ms: state.live.as_ref().map(|live| live.loaded_at_ms),
            load_ms: state.live.as_ref().map(|live| live.load_ms),
            download_ms: state.live.as_ref().map(|live| live.download_ms),
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
            Freshness::Failed(error) => return Err(EdgeError::Unavailable(error)),
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
            return Err(EdgeError::Unavailable(
                "the snapshot is still loading".into(),
            ));
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
                    "adopted build {}: {} bytes, loaded in {} ms (download {} ms)",
                    live.manifest.build_id,
                    live.manifest.byte_size,
                    live.load_ms,
                    live.download_ms
                );
                state.live = Some(Rc::new(live));
            }
            Ok(None) => {}
            Err(error) => {
                state.failures += 1;
                worker::console_error!("snapshot load failed: {error}");
                state.last_failure = Some(error.to_string());
            }
        }
        state.live.clone().ok_or_else(|| {
            EdgeError::Unavailable(
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
    let pointer = bucket
        .get(&pointer_key)
        .execute()
        .await?
        .ok_or_else(|| LoadError::NoPointer(pointer_key.clone()))?;
    let body = pointer
        .body()
        .ok_or_else(|| LoadError::NoPointer(pointer_key.clone()))?
        .bytes()
        .await?;
    let manifest = Manifest::parse(&body)?;
    if peek().is_some_and(|live| live.manifest.build_id == manifest.build_id) {
        return Ok(None);
    }
    let download_started = now_ms();
    let data = download::artifact(&bucket, &manifest).await?;
    let download_ms = now_ms() - download_started;
    let conn = open(data)?;
    manifest::verify_published(&conn, &manifest)?;
    let loaded_at_ms = now_ms();
    Ok(Some(Live {
        conn,
        manifest,
        loaded_at_ms,
        load_ms: loaded_at_ms - started,
        download_ms,
    }))
}

/// Opens a downloaded artifact read-only and readies it for search.
fn open(data: OwnedData) -> Result<Connection, LoadError> {
    let mut conn = Connection::open_in_memory()?;
    conn.deserialize(rusqlite::MAIN_DB, data, true)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    search::prepare(&conn)?;
    Ok(conn)
}
