//! Published snapshots in an object store: a local directory by default, S3 or R2 when
//! configured, through one `object_store` API.
//!
//! Upload order is the safety argument: the artifact and its manifest go up under
//! `builds/<build_id>/` first, and the channel pointer is written last in a single PUT (atomic on
//! S3/R2; write-then-rename on a local directory), so a reader can never follow a pointer to a
//! partial upload. Every uploaded artifact is read back and hashed before its manifest is
//! written, and a resumed upload skips an artifact already there only if its bytes hash right. A
//! publish never moves the pointer to a build from an older source than the live one's.
//!
//! - this module: the target, uploads (with read-back), downloads and listings;
//! - [`pointer`]: moving the channel pointer to a build or a delta, rollback and its hold;
//! - [`retention`]: deleting old builds and deltas, sweeping leftovers.

use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, UpdateVersion};
use pubsearch_shared::manifest::{self, Manifest};
use tokio::io::AsyncWriteExt;

mod pointer;
mod retention;

pub use pointer::{DIR_POINTER_LOCK, Hold, Requester};
pub use retention::ORPHAN_AGE_MS;

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

    /// Deletes `key`; one already gone counts as deleted.
    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        count(Op::Delete);
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.fail("deleting", key)(error)),
        }
    }
}
