//! The build the native server answers from, kept current with the channel's pointer.
//!
//! Like the edge (ARCHITECTURE.md, "Serving"): the pointer is read every [`POLL`]; a build or
//! delta it names is checked (size, SHA-256, contents) before it serves, and one that fails leaves
//! the current pair serving. From a local directory the published files are opened in place;
//! from S3/R2 they are downloaded into a cache directory first.
//!
//! SQLite connections are not shared between threads, so a build is opened once per worker
//! thread into a pool ([`Pool`]); a request borrows one base connection (and one of its delta's),
//! queries on a blocking thread, and gives them back. A pool opens every connection when the
//! build is adopted, so a file retention deletes afterwards stays readable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pubsearch_shared::api::ApiError;
use pubsearch_shared::delta::{Delta, Layers};
use pubsearch_shared::manifest::{self, ArtifactDigest, Manifest};
use pubsearch_shared::search::{self, NoPrefetch, Prefetch};
use pubsearch_shared::snapshot::SnapshotCounts;
use pubsearch_shared::timestamp::Timestamp;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::publish::objects::{ObjectTarget, TargetSpec};

/// How often the channel's pointer is read: a delta lands within this of its publish.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a build could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the pointer: {0}")]
    Pointer(#[from] crate::publish::objects::ObjectError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("build {build_id} does not check out: {source}")]
    Verify {
        build_id: String,
        source: manifest::VerifyError,
    },
    #[error("opening build {build_id}: {source}")]
    Sqlite {
        build_id: String,
        source: rusqlite::Error,
    },
    #[error("delta {build_id}: {source}")]
    Delta {
        build_id: String,
        source: pubsearch_shared::delta::DeltaError,
    },
    #[error("the loader stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Connections to one file, one per thread that may query at once.
struct Pool<T> {
    idle: Mutex<Vec<T>>,
    permits: Semaphore,
}

impl<T> Pool<T> {
    fn new(items: Vec<T>) -> Self {
        Pool {
            permits: Semaphore::new(items.len()),
            idle: Mutex::new(items),
        }
    }

    /// An idle item, waiting for one; it goes back when the guard drops, whatever happens to
    /// the request meanwhile (cancelled, or its query panicked).
    async fn take(self: &Arc<Self>) -> Pooled<T> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("pools are never closed");
        permit.forget();
        let item = self
            .idle
            .lock()
            .expect("pool lock poisoned")
            .pop()
            .expect("a permit stands for an idle item");
        Pooled {
            pool: Arc::clone(self),
            item: Some(item),
        }
    }
}

/// An item borrowed from a [`Pool`], returned on drop.
struct Pooled<T> {
    pool: Arc<Pool<T>>,
    item: Option<T>,
}

impl<T> std::ops::Deref for Pooled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.item.as_ref().expect("present until dropped")
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            // A poisoned lock means a panic while pushing or popping, never mid-update.
            let mut idle = match self.pool.idle.lock() {
                Ok(idle) => idle,
                Err(poisoned) => poisoned.into_inner(),
            };
            idle.push(item);
            self.pool.permits.add_permits(1);
        }
    }
}

/// A verified build with the delta served over it, if any.
pub struct LiveBuild {
    /// The pointer it was adopted from (the build's manifest, naming the delta).
    pub pointer: Manifest,
    pub loaded_at: Timestamp,
    base: Arc<Pool<Connection>>,
    delta: Option<Arc<Pool<Delta>>>,
    /// What the build and its delta serve together.
    served: SnapshotCounts,
}

impl LiveBuild {
    /// The newest delta served over the build.
    pub fn delta(&self) -> Option<&Manifest> {
        self.delta.as_ref().and(self.pointer.delta.as_deref())
    }

    /// What the build and its delta serve together.
    pub fn counts(&self) -> SnapshotCounts {
        self.served
    }
}

/// What `/stats` and `/snapshot` report about loading.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStatus {
    pub build_id: Option<String>,
    pub delta_id: Option<String>,
    pub loaded_at: Option<Timestamp>,
    pub failures: u64,
    pub last_failure: Option<String>,
}

/// The live build, shared by every request.
pub struct Builds {
    target: ObjectTarget,
    channel: String,
    /// Where builds from a remote target are downloaded.
    cache_dir: PathBuf,
    connections: usize,
    live: RwLock<Option<Arc<LiveBuild>>>,
    status: Mutex<LoadStatus>,
    /// The pointer (build and delta ids) that last failed to load, and when: retried only
    /// after [`RETRY_FAILED`], so a bad build is not fetched and hashed every second.
    failed: Mutex<Option<(PointerKey, Instant)>>,
}

/// A pointer's build and delta ids.
type PointerKey = (String, Option<String>);

/// How long a pointer that failed to load waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(30);

impl Builds {
    /// Serves `channel` of `target`, with `connections` queries at once.
    pub fn new(
        target: ObjectTarget,
        channel: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
        connections: usize,
    ) -> Self {
        Builds {
            target,
            channel: channel.into(),
            cache_dir: cache_dir.into(),
            connections: connections.max(1),
            live: RwLock::new(None),
            status: Mutex::new(LoadStatus::default()),
            failed: Mutex::new(None),
        }
    }

    pub fn live(&self) -> Option<Arc<LiveBuild>> {
        self.live.read().expect("live lock poisoned").clone()
    }

    pub fn status(&self) -> LoadStatus {
        self.status.lock().expect("status lock poisoned").clone()
    }

    /// Where the builds come from, for logs and `/snapshot`.
    pub fn source(&self) -> String {
        format!("{:?} channel {}", self.target, self.channel)
    }

    /// Reads the pointer until `shutdown`, adopting each new build or delta it names.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.refresh().await {
                let message = error.to_string();
                let mut status = self.status.lock().expect("status lock poisoned");
                status.failures += 1;
                if status.last_failure.as_deref() != Some(&message) {
                    tracing::warn!(error = %message, "serve: keeping the current build");
                }
                status.last_failure = Some(message);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Reads the pointer once and adopts what it names, if that is new.
    pub async fn refresh(&self) -> Result<(), LoadError> {
        let Some(pointer) = self.target.current(&self.channel).await? else {
            return Ok(());
        };
        let live = self.live();
        let same_base = live
            .as_ref()
            .is_some_and(|live| live.pointer.build_id == pointer.build_id);
        let delta_id = |pointer: &Manifest| pointer.delta.as_ref().map(|d| d.build_id.clone());
        if same_base
            && live.as_ref().map(|live| delta_id(&live.pointer)) == Some(delta_id(&pointer))
        {
            return Ok(());
        }
        let key = (pointer.build_id.clone(), delta_id(&pointer));
        if let Some((failed, at)) = &*self.failed.lock().expect("failed lock poisoned")
            && *failed == key
            && at.elapsed() < RETRY_FAILED
        {
            return Ok(());
        }
        let adopted = self.adopt(pointer, live.filter(|_| same_base)).await;
        if adopted.is_err() {
            *self.failed.lock().expect("failed lock poisoned") = Some((key, Instant::now()));
        }
        adopted
    }

    /// Opens what `pointer` names (reusing `live`'s base when it is the same build) and makes
    /// it the live pair.
    async fn adopt(
        &self,
        pointer: Manifest,
        live: Option<Arc<LiveBuild>>,
    ) -> Result<(), LoadError> {
        let base = match live {
            Some(live) => live.base.clone(),
            None => Arc::new(self.open_base(&pointer).await?),
        };
        let (delta, served) = match pointer.delta.as_deref() {
            Some(delta) => {
                let (pool, served) = self.open_delta(delta, &pointer.build_id).await?;
                (Some(Arc::new(pool)), served)
            }
            None => (None, pointer.counts),
        };
        let adopted = Arc::new(LiveBuild {
            loaded_at: now(),
            pointer,
            base,
            delta,
            served,
        });
        tracing::info!(
            build = adopted.pointer.build_id,
            delta = adopted.delta().map(|d| d.build_id.as_str()),
            documents = adopted.counts().documents,
            "serve: build adopted"
        );
        {
            let mut status = self.status.lock().expect("status lock poisoned");
            status.build_id = Some(adopted.pointer.build_id.clone());
            status.delta_id = adopted.delta().map(|d| d.build_id.clone());
            status.loaded_at = Some(adopted.loaded_at);
        }
        *self.live.write().expect("live lock poisoned") = Some(adopted);
        self.forget_downloads().await;
        Ok(())
    }

    /// The checked local file of `build`: in place in a directory target, else downloaded.
    async fn local_file(&self, build: &Manifest) -> Result<PathBuf, LoadError> {
        match self.target.spec() {
            TargetSpec::Dir { path } => {
                let file = path.join(&build.artifact);
                let (size, sha256) = digest(file.clone()).await??;
                build
                    .check_artifact(size, &sha256)
                    .map_err(|source| LoadError::Verify {
                        build_id: build.build_id.clone(),
                        source,
                    })?;
                Ok(file)
            }
            TargetSpec::S3 { .. } => {
                let file = self.cache_dir.join(format!("{}.db", build.build_id));
                self.target.download(build, &file).await?;
                Ok(file)
            }
        }
    }

    async fn open_base(&self, pointer: &Manifest) -> Result<Pool<Connection>, LoadError> {
        pointer.check_spoken().map_err(|source| LoadError::Verify {
            build_id: pointer.build_id.clone(),
            source,
        })?;
        let file = self.local_file(pointer).await?;
        let (pointer, connections) = (pointer.clone(), self.connections);
        tokio::task::spawn_blocking(move || {
            let sqlite = |source| LoadError::Sqlite {
                build_id: pointer.build_id.clone(),
                source,
            };
            let first = open(&file).map_err(sqlite)?;
            manifest::verify_published(&first, &pointer).map_err(|source| LoadError::Verify {
                build_id: pointer.build_id.clone(),
                source,
            })?;
            let mut pool = vec![first];
            for _ in 1..connections {
                pool.push(open(&file).map_err(sqlite)?);
            }
            for conn in &pool {
                search::prepare(conn).map_err(sqlite)?;
            }
            Ok(Pool::new(pool))
        })
        .await?
    }

    async fn open_delta(
        &self,
        delta: &Manifest,
        base: &str,
    ) -> Result<(Pool<Delta>, SnapshotCounts), LoadError> {
        delta.check_spoken().map_err(|source| LoadError::Verify {
            build_id: delta.build_id.clone(),
            source,
        })?;
        let file = self.local_file(delta).await?;
        let (delta, base, connections) = (delta.clone(), base.to_owned(), self.connections);
        tokio::task::spawn_blocking(move || {
            let failed = |source| LoadError::Delta {
                build_id: delta.build_id.clone(),
                source,
            };
            let mut pool = Vec::with_capacity(connections);
            for _ in 0..connections {
                let conn = open(&file).map_err(|source| LoadError::Sqlite {
                    build_id: delta.build_id.clone(),
                    source,
                })?;
                if pool.is_empty() {
                    manifest::verify_published(&conn, &delta).map_err(|source| {
                        LoadError::Verify {
                            build_id: delta.build_id.clone(),
                            source,
                        }
                    })?;
                }
                let opened = Delta::open(conn).map_err(failed)?;
                opened.check_base(&base).map_err(failed)?;
                pool.push(opened);
            }
            let served = pool[0].served();
            Ok((Pool::new(pool), served))
        })
        .await?
    }

    /// Deletes downloaded builds the live one no longer needs (open connections keep theirs).
    async fn forget_downloads(&self) {
        let Some(live) = self.live() else { return };
        let keep: Vec<String> = std::iter::once(&live.pointer)
            .chain(live.delta())
            .map(|build| format!("{}.db", build.build_id))
            .collect();
        let Ok(mut entries) = tokio::fs::read_dir(&self.cache_dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                tokio::fs::remove_file(entry.path()).await.ok();
            }
        }
    }

    /// Runs `work` on the live build and its delta on a blocking thread.
    pub async fn query<R: Send + 'static>(
        &self,
        work: impl FnOnce(Layers<'_>, &dyn Prefetch) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let live = self.live().ok_or_else(|| {
            let status = self.status();
            ApiError::Unavailable(
                status
                    .last_failure
                    .unwrap_or_else(|| "no snapshot published yet".into()),
            )
        })?;
        let base = live.base.take().await;
        let delta = match &live.delta {
            Some(pool) => Some(pool.take().await),
            None => None,
        };
        // The guards go with the query, so the connections return even if this request is
        // dropped while it runs.
        let result = tokio::task::spawn_blocking(move || {
            let layers = Layers {
                base: &base,
                delta: delta.as_deref(),
            };
            work(layers, &NoPrefetch)
        })
        .await
        .map_err(|error| ApiError::Internal(format!("query thread: {error}")))?;
        Ok(result)
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The size and SHA-256 of a file, read on a blocking thread.
fn digest(path: PathBuf) -> tokio::task::JoinHandle<Result<(u64, String), LoadError>> {
    tokio::task::spawn_blocking(move || {
        let failed = |source| LoadError::File {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(failed)?;
        let mut digest = ArtifactDigest::default();
        let mut buffer = vec![0; 1 << 20];
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer).map_err(failed)?;
            if read == 0 {
                break;
            }
            digest.update(&buffer[..read]);
        }
        Ok((digest.bytes(), digest.finish()))
    })
}

/// The current time as a timestamp.
pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    Timestamp::from_unix_millis(millis)
        .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("the epoch is in range"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Pool;

    #[tokio::test]
    async fn a_borrowed_item_returns_however_its_borrower_ends() {
        let pool = Arc::new(Pool::new(vec![7]));
        let again = || async {
            tokio::time::timeout(Duration::from_secs(5), pool.take())
                .await
                .expect("the item came back")
        };
        // Dropped normally.
        drop(pool.take().await);
        // Held by a request that is cancelled mid-wait.
        let held = pool.take().await;
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { *pool.take().await }
        });
        waiting.abort();
        drop(held);
        // Moved into a query that panics.
        let borrowed = again().await;
        let panicked = tokio::task::spawn_blocking(move || {
            let _borrowed = borrowed;
            panic!("the query failed");
        })
        .await;
        assert!(panicked.is_err());
        assert_eq!(*again().await, 7);
    }
}
