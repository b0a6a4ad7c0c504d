//! Published snapshots in an object store: a local directory by default, S3 or R2 when
//! configured, through one `object_store` API.
//!
//! Upload order is the safety argument: the artifact and its manifest go up under
//! `builds/<build_id>/` first, and the channel pointer is written last in a single PUT (atomic on
//! S3/R2; write-then-rename on a local directory), so a reader can never follow a pointer to a
//! partial upload. Every uploaded artifact is read back and hashed before its manifest is
//! written, and a resumed upload skips an artifact already there only if its bytes hash right. A
//! publish never moves the pointer to a build from an older source than the live one's.

use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use pubsearch_shared::manifest::{self, Manifest};
use pubsearch_shared::timestamp::Timestamp;
use tokio::io::AsyncWriteExt;

use super::build::BuiltSnapshot;
use super::operations::{Op, count};

/// Why an object-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{operation} {key} on {target}: {source}")]
    Store {
        operation: &'static str,
        key: String,
        target: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("uploading {key} to {target}: {source}")]
    Upload {
        key: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} on {target} is not a valid manifest: {source}")]
    Manifest {
        key: String,
        target: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot configure the object store: {0}")]
    Config(String),
    #[error("channel {0:?} has no earlier build to roll back to")]
    NothingToRollBackTo(String),
    #[error(
        "channel {channel:?} serves build {live} of a newer source (watermark {live_watermark_us}) \
         than build {build} (watermark {watermark_us}); refusing to move the pointer back \
         without --force"
    )]
    StalePointer {
        channel: String,
        live: String,
        live_watermark_us: i64,
        build: String,
        watermark_us: i64,
    },
    #[error(
        "channel {channel:?} is held at build {build_id} by a rollback; a publish asked for by \
         hand (`native-worker publish`) releases it"
    )]
    Held { channel: String, build_id: String },
    #[error("{key} on {target} is not a valid hold: {source}")]
    BadHold {
        key: String,
        target: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("locking {path} against concurrent publishers: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "channel {channel:?} now serves build {live:?}, not {base}, which delta {delta} \
         overlays; the next delta is built over the new base"
    )]
    BaseMoved {
        channel: String,
        live: Option<String>,
        base: String,
        delta: String,
    },
    #[error("downloading {key} from {target} to {path}: {source}")]
    Download {
        key: String,
        target: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pointer of channel {0:?} kept changing under concurrent publishes")]
    PointerContended(String),
    #[error(
        "build {build_id}'s artifact {key} on {target} is {found}, its manifest says {expected} \
         bytes; not pointing the channel at it"
    )]
    ArtifactNotIntact {
        build_id: String,
        key: String,
        target: String,
        found: String,
        expected: u64,
    },
}

/// Where a rollback records that it holds `channel` (see [`ObjectTarget::rollback`]).
fn hold_key(channel: &str) -> String {
    format!("channels/{channel}/hold.json")
}

/// A channel held at a build by a rollback: scheduled publishes leave it alone, since they would
/// republish from the same store the rolled-back build came from, until a publish is asked for
/// by hand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub build_id: String,
    pub since: Timestamp,
}

/// Who asked for a pointer move, which decides what a [`Hold`] means to it. A request recorded
/// before requesters existed reads as the schedule's, the cautious reading: it respects holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Requester {
    /// Someone, by hand: the move goes ahead and releases a hold.
    Operator,
    /// The worker's schedule: a held channel refuses the move.
    #[default]
    Schedule,
}

/// The file in a local target directory whose `flock` serialises pointer writers there.
pub const DIR_POINTER_LOCK: &str = ".pointer.lock";

/// How long a build's files may sit without a manifest beside them before [`ObjectTarget::retain`]
/// deletes them. An upload writes the artifact before the manifest, so a younger build without
/// one may be an upload under way; an older one was left by an interrupted upload or retain.
pub const ORPHAN_AGE_MS: i64 = 24 * 3600 * 1000;

/// How long a pointer writer on a local directory waits for another's [`DIR_POINTER_LOCK`]: a
/// move holds it for a few file operations, so a longer wait means a stuck publisher.
const POINTER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Attempts at a conditional pointer update before concurrent writers are reported.
const POINTER_ATTEMPTS: usize = 5;

/// Where to publish, as configuration: durable in a workflow's input, so a resumed publish goes
/// where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetSpec {
    /// A local directory: the embedded default.
    Dir { path: std::path::PathBuf },
    /// An S3-compatible bucket, credentials from the `AWS_*` environment of the worker.
    S3 { bucket: String },
}

impl TargetSpec {
    /// Connects to the target.
    pub fn open(&self) -> Result<ObjectTarget, ObjectError> {
        match self {
            TargetSpec::Dir { path } => ObjectTarget::local(path),
            TargetSpec::S3 { bucket } => ObjectTarget::s3(bucket),
        }
    }
}

/// Where snapshots are published.
#[derive(Clone)]
pub struct ObjectTarget {
    store: Arc<dyn ObjectStore>,
    description: String,
    spec: TargetSpec,
    /// A local directory's [`DIR_POINTER_LOCK`]; S3/R2 need none (conditional PUTs).
    pointer_lock: Option<Arc<Path>>,
}

impl std::fmt::Debug for ObjectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl ObjectTarget {
    /// A local directory (created if missing): the embedded default.
    pub fn local(dir: &Path) -> Result<Self, ObjectError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ObjectError::Config(format!("creating {}: {e}", dir.display())))?;
        // Absolute, so the spec means the same directory to any process that reads it.
        let dir = &dir
            .canonicalize()
            .map_err(|e| ObjectError::Config(format!("resolving {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| ObjectError::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            store: Arc::new(store),
            description: format!("dir:{}", dir.display()),
            spec: TargetSpec::Dir {
                path: dir.to_path_buf(),
            },
            pointer_lock: Some(dir.join(DIR_POINTER_LOCK).into()),
        })
    }

    /// An S3-compatible bucket (R2, S3, moto), configured by the standard `AWS_*` variables
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP` for a loopback endpoint).
    pub fn s3(bucket: &str) -> Result<Self, ObjectError> {
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| ObjectError::Config(format!("s3 bucket {bucket}: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            description: format!("s3:{bucket}"),
            spec: TargetSpec::S3 {
                bucket: bucket.to_string(),
            },
            pointer_lock: None,
        })
    }

    /// The configuration this target was opened from.
    pub fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn fail(
        &self,
        operation: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> ObjectError {
        let (key, target) = (key.to_owned(), self.description.clone());
        move |source| ObjectError::Store {
            operation,
            key,
            target,
            source: Box::new(source),
        }
    }

    async fn get_manifest(&self, key: &str) -> Result<Option<Manifest>, ObjectError> {
        Ok(self
            .get_manifest_versioned(key)
            .await?
            .map(|(manifest, _)| manifest))
    }

    /// The object at `key`, if there is one.
    async fn read(&self, key: &str) -> Result<Option<object_store::GetResult>, ObjectError> {
        count(Op::Get);
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(Some(result)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.fail("reading", key)(error)),
        }
    }

    /// A manifest with the version it was read at, for a conditional update of it.
    async fn get_manifest_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Manifest, UpdateVersion)>, ObjectError> {
        let Some(result) = self.read(key).await? else {
            return Ok(None);
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result.bytes().await.map_err(self.fail("reading", key))?;
        let manifest = serde_json::from_slice(&bytes).map_err(|source| ObjectError::Manifest {
            key: key.to_owned(),
            target: self.description.clone(),
            source,
        })?;
        Ok(Some((manifest, version)))
    }

    /// The manifest the channel's pointer names, if any.
    pub async fn current(&self, channel: &str) -> Result<Option<Manifest>, ObjectError> {
        self.get_manifest(&manifest::pointer_key(channel)).await
    }

    /// Uploads a build's artifact (streamed, multipart where the store supports it) and manifest.
    pub async fn upload(&self, built: &BuiltSnapshot) -> Result<(), ObjectError> {
        let key = &built.manifest.artifact;
        let resumed = self.artifact_size(key).await? == Some(built.manifest.byte_size)
            && self.artifact_is_intact(&built.manifest).await?;
        if resumed {
            tracing::info!(key, "artifact already uploaded; resuming after it");
        } else {
            self.put_artifact(built).await?;
        }
        let manifest_key = manifest::manifest_key_of(&built.manifest);
        let body = serde_json::to_vec_pretty(&built.manifest).expect("manifests serialise");
        count(Op::Put);
        self.store
            .put(
                &ObjectPath::from(manifest_key.as_str()),
                PutPayload::from(body),
            )
            .await
            .map_err(self.fail("writing", &manifest_key))?;
        // An artifact found from an attempt a day or more ago had no manifest to protect it from
        // a retain's orphan sweep until now; if one took it meanwhile, put it back.
        if resumed && self.artifact_size(key).await? != Some(built.manifest.byte_size) {
            tracing::warn!(key, "artifact removed while resuming; uploading it again");
            self.put_artifact(built).await?;
        }
        Ok(())
    }

    /// Streams the build's artifact up and reads it back.
    async fn put_artifact(&self, built: &BuiltSnapshot) -> Result<(), ObjectError> {
        let key = built.manifest.artifact.clone();
        let upload_error = |source| ObjectError::Upload {
            key: key.clone(),
            target: self.description.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&built.path)
            .await
            .map_err(upload_error)?;
        let path = ObjectPath::from(key.as_str());
        count(Op::Put);
        let mut writer = object_store::buffered::BufWriter::new(Arc::clone(&self.store), path);
        let copied = match tokio::io::copy(&mut file, &mut writer).await {
            Ok(_) => writer.shutdown().await,
            Err(error) => Err(error),
        };
        if let Err(error) = copied {
            // Otherwise an S3 multipart upload stays open (and billed) until a lifecycle rule.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key, error = %abort, "could not abort the failed upload");
            }
            return Err(upload_error(error));
        }
        if !self.artifact_is_intact(&built.manifest).await? {
            return Err(ObjectError::ArtifactNotIntact {
                build_id: built.manifest.build_id.clone(),
                key,
                target: self.description.clone(),
                found: "different bytes after the upload".into(),
                expected: built.manifest.byte_size,
            });
        }
        Ok(())
    }

    /// Whether the stored artifact is the build's bytes: read back and hashed, since a same-size
    /// object left by an interrupted or botched upload is not proof, and readers would refuse it
    /// only after the pointer named it.
    async fn artifact_is_intact(&self, build: &Manifest) -> Result<bool, ObjectError> {
        use futures_util::TryStreamExt;
        let key = build.artifact.as_str();
        count(Op::Get);
        let mut stream = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(self.fail("reading back", key))?
            .into_stream();
        let mut digest = manifest::ArtifactDigest::default();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(self.fail("reading back", key))?
        {
            digest.update(&chunk);
        }
        Ok(digest.bytes() == build.byte_size && digest.finish() == build.sha256)
    }

    /// The size of the object at `key`, if there is one (a HEAD).
    async fn artifact_size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        count(Op::Head);
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.fail("checking", key)(error)),
        }
    }

    /// Checks the build's artifact is present at its manifest's size, so the pointer is never
    /// written to a build whose artifact is gone (a retain interrupted by an older worker, a
    /// hand-deleted object) or partial.
    async fn check_artifact(&self, build: &Manifest) -> Result<(), ObjectError> {
        let found = match self.artifact_size(&build.artifact).await? {
            Some(size) if size == build.byte_size => return Ok(()),
            Some(size) => format!("{size} bytes"),
            None => "missing".to_owned(),
        };
        Err(ObjectError::ArtifactNotIntact {
            build_id: build.build_id.clone(),
            key: build.artifact.clone(),
            target: self.description.clone(),
            found,
            expected: build.byte_size,
        })
    }

    /// Points the manifest's channel at it, the last write of a publish, unless the live build
    /// is of a newer source (another publisher got there first) and `force` is off.
    ///
    /// On S3/R2 the compare and the write are one step: the PUT is conditional on the pointer
    /// being as read (If-Match its ETag, or If-None-Match for a channel's first publish), and a
    /// concurrent write makes it read and compare again. object_store's local directory has no
    /// conditional update (`PutMode::Update` is not implemented there), so there every pointer
    /// writer, in any process, first takes the directory's [`DIR_POINTER_LOCK`].
    ///
    /// A channel held by a rollback refuses a scheduled move; an operator's move releases it.
    pub async fn advance_pointer(
        &self,
        manifest: &Manifest,
        force: bool,
        requester: Requester,
    ) -> Result<(), ObjectError> {
        let _lock = self.lock_pointers().await?;
        // A pointer never names a missing artifact, whatever happened since the upload.
        self.check_artifact(manifest).await?;
        let channel = &manifest.channel;
        // A scheduled move reads the hold in `move_pointer`, where the order matters.
        let held_before = match requester {
            Requester::Operator => self.hold(channel).await?,
            Requester::Schedule => None,
        };
        self.move_pointer(manifest, force, requester).await?;
        // Only the hold this publish overrode: one a rollback wrote meanwhile stands.
        if held_before.is_some() && self.hold(channel).await? == held_before {
            self.release(channel).await?;
        }
        Ok(())
    }

    /// [`ObjectTarget::advance_pointer`]'s write. A scheduled move checks the hold after reading
    /// the pointer it will replace: a rollback writes its hold before its pointer, so either the
    /// check sees the hold or the conditional PUT sees the rolled-back pointer and reads again.
    async fn move_pointer(
        &self,
        manifest: &Manifest,
        force: bool,
        requester: Requester,
    ) -> Result<(), ObjectError> {
        let key = manifest::pointer_key(&manifest.channel);
        for _ in 0..POINTER_ATTEMPTS {
            let live = self.get_manifest_versioned(&key).await?;
            if requester == Requester::Schedule
                && let Some(hold) = self.hold(&manifest.channel).await?
            {
                return Err(ObjectError::Held {
                    channel: manifest.channel.clone(),
                    build_id: hold.build_id,
                });
            }
            let mode = match live {
                Some((live, _))
                    if !force && live.source_watermark_us > manifest.source_watermark_us =>
                {
                    return Err(ObjectError::StalePointer {
                        channel: manifest.channel.clone(),
                        live: live.build_id,
                        live_watermark_us: live.source_watermark_us,
                        build: manifest.build_id.clone(),
                        watermark_us: manifest.source_watermark_us,
                    });
                }
                Some((_, version)) => PutMode::Update(version),
                None => PutMode::Create,
            };
            match self.put_pointer(manifest, mode).await {
                Ok(()) => return Ok(()),
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    return self
                        .put_pointer(manifest, PutMode::Overwrite)
                        .await
                        .map_err(self.fail("writing", &key));
                }
                Err(error) => return Err(self.fail("writing", &key)(error)),
            }
        }
        Err(ObjectError::PointerContended(manifest.channel.clone()))
    }

    /// On a local directory, waits (up to [`POINTER_LOCK_WAIT`]) for and takes the exclusive lock
    /// every pointer writer takes there, released when the returned file drops; elsewhere,
    /// nothing to take.
    async fn lock_pointers(&self) -> Result<Option<std::fs::File>, ObjectError> {
        let Some(path) = &self.pointer_lock else {
            return Ok(None);
        };
        let failed = |source| ObjectError::Lock {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(failed)?;
        let deadline = tokio::time::Instant::now() + POINTER_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(failed(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("another publisher held it for {POINTER_LOCK_WAIT:?}"),
                    )));
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(failed(error)),
            }
        }
    }

    /// Writes the manifest as its channel's pointer: one atomic PUT, in `mode`.
    async fn put_pointer(&self, manifest: &Manifest, mode: PutMode) -> object_store::Result<()> {
        let key = ObjectPath::from(manifest::pointer_key(&manifest.channel));
        let body = serde_json::to_vec_pretty(&manifest.pointer()).expect("manifests serialise");
        count(Op::Put);
        self.store
            .put_opts(&key, PutPayload::from(body), PutOptions::from(mode))
            .await
            .map(drop)
    }

    /// Points `delta`'s channel at it, over the base it was built on: refused if the channel now
    /// serves another base ([`ObjectError::BaseMoved`]) or a delta of a newer source
    /// ([`ObjectError::StalePointer`]), so deltas never go backwards. The pointer stays the
    /// base's with the delta named inside it: one small object, one atomic write.
    pub async fn advance_delta(&self, delta: &Manifest) -> Result<(), ObjectError> {
        let _lock = self.lock_pointers().await?;
        self.check_artifact(delta).await?;
        let key = manifest::pointer_key(&delta.channel);
        for _ in 0..POINTER_ATTEMPTS {
            let live = self.get_manifest_versioned(&key).await?;
            let (mut pointer, version) = match live {
                Some((live, version)) if Some(&live.build_id) == delta.base_build_id.as_ref() => {
                    (live, version)
                }
                live => {
                    return Err(ObjectError::BaseMoved {
                        channel: delta.channel.clone(),
                        live: live.map(|(live, _)| live.build_id),
                        base: delta.base_build_id.clone().unwrap_or_default(),
                        delta: delta.build_id.clone(),
                    });
                }
            };
            if let Some(current) = &pointer.delta
                && current.source_watermark_us > delta.source_watermark_us
            {
                return Err(ObjectError::StalePointer {
                    channel: delta.channel.clone(),
                    live: current.build_id.clone(),
                    live_watermark_us: current.source_watermark_us,
                    build: delta.build_id.clone(),
                    watermark_us: delta.source_watermark_us,
                });
            }
            pointer.delta = Some(Box::new(delta.pointer()));
            match self.put_pointer(&pointer, PutMode::Update(version)).await {
                Ok(()) => return Ok(()),
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    return self
                        .put_pointer(&pointer, PutMode::Overwrite)
                        .await
                        .map_err(self.fail("writing", &key));
                }
                Err(error) => return Err(self.fail("writing", &key)(error)),
            }
        }
        Err(ObjectError::PointerContended(delta.channel.clone()))
    }

    /// Deletes `channel`'s deltas but the one its pointer names and the newest `keep`, and
    /// returns how many went. Deltas are cumulative, so an older one is never needed again;
    /// the newest few stay for readers that fetched the pointer a moment ago.
    pub async fn retain_deltas(&self, channel: &str, keep: usize) -> Result<usize, ObjectError> {
        use futures_util::TryStreamExt;
        let live = self
            .current(channel)
            .await?
            .and_then(|pointer| pointer.delta)
            .map(|delta| delta.build_id);
        let prefix = manifest::delta_prefix(channel);
        count(Op::List);
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&ObjectPath::from(prefix.as_str())))
            .try_collect()
            .await
            .map_err(self.fail("listing", &prefix))?;
        let mut deltas = std::collections::BTreeMap::<String, Vec<String>>::new();
        for object in listed {
            if let Some(build_id) = object.location.parts().nth(2) {
                deltas
                    .entry(build_id.as_ref().to_owned())
                    .or_default()
                    .push(object.location.to_string());
            }
        }
        let old = deltas.len().saturating_sub(keep.max(1));
        let mut removed = 0;
        for (build_id, keys) in deltas.into_iter().take(old) {
            if live.as_ref() == Some(&build_id) {
                continue;
            }
            // The manifest first, as for builds (see `retain`).
            let mut keys = keys;
            keys.sort_by_key(|key| !key.ends_with("manifest.json"));
            for key in keys {
                self.delete(&key).await?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Downloads `build`'s artifact to `path` (through a temporary file beside it), checking
    /// its size and SHA-256 on the way; a file already at `path` with the right size is kept.
    pub async fn download(&self, build: &Manifest, path: &Path) -> Result<(), ObjectError> {
        use futures_util::TryStreamExt;
        if tokio::fs::metadata(path)
            .await
            .is_ok_and(|meta| meta.len() == build.byte_size)
        {
            return Ok(());
        }
        let key = build.artifact.as_str();
        let failed = |source| ObjectError::Download {
            key: key.to_owned(),
            target: self.description.clone(),
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(failed)?;
        }
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial).await.map_err(failed)?;
        count(Op::Get);
        let mut stream = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(self.fail("reading", key))?
            .into_stream();
        let mut digest = manifest::ArtifactDigest::default();
        while let Some(chunk) = stream.try_next().await.map_err(self.fail("reading", key))? {
            digest.update(&chunk);
            file.write_all(&chunk).await.map_err(failed)?;
        }
        file.sync_all().await.map_err(failed)?;
        drop(file);
        let (bytes, sha256) = (digest.bytes(), digest.finish());
        if bytes != build.byte_size || sha256 != build.sha256 {
            tokio::fs::remove_file(&partial).await.ok();
            return Err(ObjectError::ArtifactNotIntact {
                build_id: build.build_id.clone(),
                key: key.to_owned(),
                target: self.description.clone(),
                found: format!("{bytes} bytes with sha256 {sha256}"),
                expected: build.byte_size,
            });
        }
        tokio::fs::rename(&partial, path).await.map_err(failed)
    }

    /// Every object under `builds/`.
    async fn list_builds(&self) -> Result<Vec<object_store::ObjectMeta>, ObjectError> {
        use futures_util::TryStreamExt;
        count(Op::List);
        self.store
            .list(Some(&ObjectPath::from("builds")))
            .try_collect()
            .await
            .map_err(self.fail("listing", "builds/"))
    }

    /// Every build of `channel` with a manifest, oldest first (build ids sort by time).
    pub async fn builds(&self, channel: &str) -> Result<Vec<Manifest>, ObjectError> {
        self.manifests_in(&self.list_builds().await?, channel).await
    }

    /// The manifests of `channel`'s builds among `listed` objects, oldest first.
    async fn manifests_in(
        &self,
        listed: &[object_store::ObjectMeta],
        channel: &str,
    ) -> Result<Vec<Manifest>, ObjectError> {
        let mut builds = Vec::new();
        for object in listed {
            if object.location.filename() == Some("manifest.json")
                && let Some(manifest) = self.get_manifest(object.location.as_ref()).await?
                && manifest.channel == channel
            {
                builds.push(manifest);
            }
        }
        builds.sort_by(|a, b| a.build_id.cmp(&b.build_id));
        Ok(builds)
    }

    /// Points `channel` back at the build before the live one, unconditionally, and holds the
    /// channel there against scheduled publishes (see [`Hold`]); returns the build.
    pub async fn rollback(&self, channel: &str) -> Result<Manifest, ObjectError> {
        let _lock = self.lock_pointers().await?;
        let live = self.current(channel).await?;
        let builds = self.builds(channel).await?;
        let previous = builds
            .iter()
            .rev()
            .find(|build| {
                live.as_ref()
                    .is_none_or(|live| build.build_id < live.build_id)
            })
            .cloned()
            .ok_or_else(|| ObjectError::NothingToRollBackTo(channel.to_owned()))?;
        self.check_artifact(&previous).await?;
        // The hold goes first, so a scheduled publish racing this one either sees it or finds the
        // pointer changed under it (see `move_pointer`).
        let hold = Hold {
            build_id: previous.build_id.clone(),
            since: crate::clock::now(),
        };
        let hold_key = hold_key(channel);
        let body = serde_json::to_vec_pretty(&hold).expect("holds serialise");
        count(Op::Put);
        self.store
            .put(&ObjectPath::from(hold_key.as_str()), PutPayload::from(body))
            .await
            .map_err(self.fail("writing", &hold_key))?;
        // An explicit step back: the one pointer write allowed to go to an older source.
        let key = manifest::pointer_key(channel);
        self.put_pointer(&previous, PutMode::Overwrite)
            .await
            .map_err(self.fail("writing", &key))?;
        Ok(previous)
    }

    /// The rollback holding `channel`, if one does.
    pub async fn hold(&self, channel: &str) -> Result<Option<Hold>, ObjectError> {
        let key = hold_key(channel);
        let Some(result) = self.read(&key).await? else {
            return Ok(None);
        };
        let bytes = result.bytes().await.map_err(self.fail("reading", &key))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ObjectError::BadHold {
                key,
                target: self.description.clone(),
                source,
            })
    }

    /// Ends a rollback's hold on `channel`, if there is one.
    async fn release(&self, channel: &str) -> Result<(), ObjectError> {
        self.delete(&hold_key(channel)).await
    }

    /// Deletes old builds of `channel`, keeping the newest `keep`, the live one and the one
    /// before it (the rollback target). Returns how many builds were deleted.
    ///
    /// A build's manifest goes before its artifact: a build is listed (and a rollback target)
    /// only while its manifest exists, so an interrupted retain leaves at worst an unlisted
    /// artifact, never a listed build without one. Such leftovers, of any channel, go once they
    /// are [`ORPHAN_AGE_MS`] old.
    pub async fn retain(&self, channel: &str, keep: usize) -> Result<usize, ObjectError> {
        let live = self
            .current(channel)
            .await?
            .map(|manifest| manifest.build_id);
        // One listing serves both passes: the sweep spares any build it shows with a manifest,
        // those deleted here included, which are gone either way.
        let listed = self.list_builds().await?;
        let builds = self.manifests_in(&listed, channel).await?;
        let live_index = live
            .as_ref()
            .and_then(|live| builds.iter().position(|build| &build.build_id == live));
        let mut removed = 0;
        for (index, build) in builds.iter().enumerate() {
            let recent = index + keep.max(1) >= builds.len();
            let protected = live_index.is_some_and(|live| index == live || index + 1 == live);
            if recent || protected {
                continue;
            }
            self.delete(&manifest::manifest_key(&build.build_id))
                .await?;
            self.delete(&build.artifact).await?;
            removed += 1;
        }
        self.sweep_orphans(listed).await?;
        Ok(removed)
    }

    /// Deletes the files of builds among `listed` that have no manifest and are
    /// [`ORPHAN_AGE_MS`] old.
    async fn sweep_orphans(
        &self,
        listed: Vec<object_store::ObjectMeta>,
    ) -> Result<(), ObjectError> {
        use std::collections::BTreeMap;
        /// What one `builds/<build_id>/` holds.
        #[derive(Default)]
        struct BuildFiles {
            manifest: bool,
            young: bool,
            keys: Vec<String>,
        }
        let mut builds: BTreeMap<String, BuildFiles> = BTreeMap::new();
        let cutoff = crate::clock::now_ms() - ORPHAN_AGE_MS;
        for object in listed {
            let Some(build_id) = object.location.parts().nth(1) else {
                continue;
            };
            let build = builds.entry(build_id.as_ref().to_owned()).or_default();
            build.manifest |= object.location.filename() == Some("manifest.json");
            build.young |= object.last_modified.timestamp_millis() >= cutoff;
            build.keys.push(object.location.to_string());
        }
        for (build_id, build) in builds {
            if build.manifest || build.young {
                continue;
            }
            tracing::info!(
                build_id,
                files = build.keys.len(),
                "deleting a build left without a manifest"
            );
            for key in &build.keys {
                self.delete(key).await?;
            }
        }
        Ok(())
    }

    /// Deletes `key`; one already gone counts as deleted.
    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        count(Op::Delete);
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.fail("deleting", key)(error)),
        }
    }
}
