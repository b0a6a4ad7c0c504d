//! Retention: old builds and deltas deleted from the object store, leftovers of interrupted
//! uploads swept.

use object_store::path::Path as ObjectPath;
use pubsearch_shared::manifest;

use super::{ObjectError, ObjectTarget};
use crate::publish::operations::{Op, count};

/// How long a build's files may sit without a manifest beside them before [`ObjectTarget::retain`]
/// deletes them. An upload writes the artifact before the manifest, so a younger build without
/// one may be an upload under way; an older one was left by an interrupted upload or retain.
pub const ORPHAN_AGE_MS: i64 = 24 * 3600 * 1000;

impl ObjectTarget {
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
}
