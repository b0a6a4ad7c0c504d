//! The snapshot pipeline: build → verify → publish (ARCHITECTURE.md invariants 2 and 8).
//!
//! - [`build`]: export the store's policy-passing documents at a watermark into a snapshot file.
//! - [`delta`]: what changed since the live base, as a small snapshot that overlays it.
//! - [`verify`]: the gates a build must pass before anyone can see it.
//! - [`objects`]: upload to an object store (a local directory by default, S3/R2 when
//!   configured), the pointer written last; rollback and retention.
//! - [`operations`]: the object-store requests made, for `/stats` and R2 cost.
//! - [`progress`]: the stage a publish in this process is at, for the command's display.
//! - [`workflow`]: the steps as a durable [`crate::flow`] orchestration, resumable after a crash.

pub mod build;
pub mod delta;
pub mod objects;
pub mod operations;
pub mod progress;
pub mod verify;
pub mod workflow;

use std::path::Path;
use std::time::Duration;

use pubsearch_shared::manifest::Manifest;
use tokio::time::Instant;
use tracing::Instrument;

use crate::flow::{self, Engine, EngineOptions, FlowError, Registry};
use crate::store::Store;
pub use workflow::PublishError;

/// Options for one publish run.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub channel: String,
    /// Publish even if the build is under half the previous one's document count.
    pub force: bool,
    /// Builds to keep: the newest N (counting the live one), and always the live one and its
    /// predecessor (the rollback target).
    pub keep: usize,
}

/// How long a publish may take before the caller stops waiting (the workflow itself goes on).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a data directory keeps snapshot builds in progress.
pub fn work_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("builds")
}

/// How often a publish handed to another process's engine tries for the engine itself, in case
/// that process stops before finishing it (another short-lived `publish`, a worker shutting down).
const HANDOVER_POLL: Duration = Duration::from_secs(2);

/// Builds, verifies and publishes one snapshot of `store` to `target` through the durable
/// publish workflow, and returns its manifest. Nothing becomes visible unless every gate passes.
///
/// Runs the workflow engine on `data_dir`'s flow database; if another process owns it, hands
/// the publish to that engine and waits, taking the engine over to finish the publish if that
/// process stops first. An interrupted publish of the same request (a crash, a kill) is resumed
/// and awaited rather than started over.
pub async fn publish_once(
    store: &Store,
    data_dir: &Path,
    target: &objects::ObjectTarget,
    options: &PublishOptions,
) -> Result<Manifest, PublishError> {
    let request = workflow::PublishRequest::new(target.spec().clone(), options);
    publish_request(store, data_dir, request).await
}

/// [`publish_once`] for a delta over the channel's live base (see [`delta`]): what
/// `native-worker publish --delta` runs.
pub async fn publish_delta_once(
    store: &Store,
    data_dir: &Path,
    target: &objects::ObjectTarget,
    options: &PublishOptions,
) -> Result<Manifest, PublishError> {
    let request = workflow::PublishRequest::delta(target.spec().clone(), options);
    publish_request(store, data_dir, request).await
}

async fn publish_request(
    store: &Store,
    data_dir: &Path,
    mut request: workflow::PublishRequest,
) -> Result<Manifest, PublishError> {
    let span = tracing::info_span!("publish", channel = %request.channel, delta = request.delta);
    async {
        // Every step's span joins this one.
        request.traceparent = crate::telemetry::current_traceparent();
        let flow_db = flow::flow_path(data_dir);
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let mut handed_over: Option<String> = None;
        loop {
            let mut registry = Registry::new();
            workflow::register(&mut registry, store.clone(), work_dir(data_dir));
            let left = deadline.saturating_duration_since(Instant::now());
            match Engine::start(&flow_db, registry, EngineOptions::default()).await {
                Ok(engine) => {
                    let client = engine.client();
                    let result = match &handed_over {
                        Some(instance) => {
                            tracing::info!(instance, "the engine it was handed to stopped; finishing the publish here");
                            workflow::finish_handed_over(&client, instance, &request, left).await
                        }
                        None => workflow::publish_and_wait(&client, &request, left).await,
                    };
                    engine.shutdown().await;
                    return result;
                }
                Err(FlowError::Locked { .. }) => {
                    let instance = match &handed_over {
                        Some(instance) => instance.clone(),
                        None => {
                            tracing::info!(db = %flow_db.display(), "a running worker owns the workflows; asking it to publish");
                            handed_over.insert(workflow::hand_over(&flow_db, &request).await?).clone()
                        }
                    };
                    if let Some(manifest) =
                        workflow::wait_handed_over(&flow_db, &instance, left.min(HANDOVER_POLL))
                            .await?
                    {
                        return Ok(manifest);
                    }
                    if Instant::now() >= deadline {
                        return Err(FlowError::Timeout {
                            instance,
                            status: flow::Status::Running,
                        }
                        .into());
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    .instrument(span)
    .await
}
