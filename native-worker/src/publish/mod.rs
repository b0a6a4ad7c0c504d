//! The snapshot pipeline: build → verify → publish (DESIGN.md invariants 2 and 8).
//!
//! - [`build`]: export the store's policy-passing documents at a watermark into a snapshot file.
//! - [`verify`]: the gates a build must pass before anyone can see it.
//! - [`objects`]: upload to an object store (a local directory by default, S3/R2 when
//!   configured), the pointer written last; rollback and retention.

pub mod build;
pub mod objects;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result};
use pubsearch_shared::manifest::Manifest;
use tracing::Instrument;

use crate::store::Store;

/// Options for one publish run.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub channel: String,
    /// Publish even if the build is under half the previous one's document count.
    pub force: bool,
    /// Builds to keep besides the live one and its predecessor.
    pub keep: usize,
}

/// A new build id: UTC time (sortable) plus a random suffix (unique across workers).
pub fn new_build_id() -> String {
    use rand::Rng;
    let now = time_now();
    let suffix: u32 = rand::rng().random();
    format!("{}-{suffix:08x}", now.replace([':', '-', '.'], ""))
}

fn time_now() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default();
    pubsearch_shared::Timestamp::from_unix_millis(millis)
        .expect("the clock is within years 1-9999")
        .to_rfc3339()
}

/// Builds, verifies and publishes one snapshot of `store` to `target`; returns its manifest.
/// Nothing becomes visible unless every gate passes.
#[tracing::instrument(name = "publish", skip_all, fields(channel = %options.channel))]
pub async fn publish_once(
    store: &Store,
    work_dir: &Path,
    target: &objects::ObjectTarget,
    options: &PublishOptions,
) -> Result<Manifest> {
    let build_id = new_build_id();
    let path = work_dir.join(format!("{build_id}.db"));
    let (store_for_build, path_for_build, id, channel) = (
        store.clone(),
        path.clone(),
        build_id.clone(),
        options.channel.clone(),
    );
    let build_span = tracing::info_span!("snapshot.build", build_id);
    let built = tokio::task::spawn_blocking(move || {
        let _entered = build_span.entered();
        build::build(
            &store_for_build,
            &path_for_build,
            &id,
            &channel,
            |written| {
                if written % 50_000 == 0 {
                    tracing::info!(written, "building snapshot");
                }
            },
        )
    })
    .await
    .context("the build task failed")??;
    let previous = target.current(&options.channel).await?;
    let (store_for_verify, built_for_verify, force) = (store.clone(), built.clone(), options.force);
    let verify_span = tracing::info_span!("snapshot.verify");
    tokio::task::spawn_blocking(move || {
        let _entered = verify_span.entered();
        verify::verify_build(
            &store_for_verify,
            &built_for_verify,
            previous.as_ref(),
            force,
        )
    })
    .await
    .context("the verify task failed")?
    .with_context(|| format!("build {build_id} failed verification; nothing was published"))?;
    target
        .upload(&built)
        .instrument(tracing::info_span!(
            "snapshot.upload",
            bytes = built.manifest.byte_size
        ))
        .await?;
    target
        .set_pointer(&built.manifest)
        .instrument(tracing::info_span!("snapshot.pointer"))
        .await?;
    let removed = target.retain(&options.channel, options.keep).await?;
    std::fs::remove_file(&path).ok();
    tracing::info!(
        build_id,
        channel = options.channel,
        removed_builds = removed,
        "snapshot published"
    );
    Ok(built.manifest)
}
