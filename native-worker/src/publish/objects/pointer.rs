//! The channel pointer: moving it to a new build or delta (the last write of a publish), rolling
//! back, and the hold a rollback leaves (see the parent module for why the pointer goes last).

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use pubsearch_shared::manifest::{self, Manifest};
use pubsearch_shared::timestamp::Timestamp;

use super::{ObjectError, ObjectTarget};
use crate::lockfile::{LockError, LockFile};
use crate::publish::operations::{Op, count};

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

/// How long a pointer writer on a local directory waits for another's [`DIR_POINTER_LOCK`]: a
/// move holds it for a few file operations, so a longer wait means a stuck publisher.
const POINTER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Attempts at a conditional pointer update before concurrent writers are reported.
const POINTER_ATTEMPTS: usize = 5;

impl ObjectTarget {
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
    async fn lock_pointers(&self) -> Result<Option<LockFile>, ObjectError> {
        let Some(path) = &self.pointer_lock else {
            return Ok(None);
        };
        let failed = |source| ObjectError::Lock {
            path: path.display().to_string(),
            source,
        };
        match LockFile::acquire_within(path, POINTER_LOCK_WAIT).await {
            Ok(lock) => Ok(Some(lock)),
            Err(LockError::Held { holder, .. }) => Err(failed(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("another publisher ({holder}) held it for {POINTER_LOCK_WAIT:?}"),
            ))),
            Err(LockError::Io { source, .. }) => Err(failed(source)),
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
}
