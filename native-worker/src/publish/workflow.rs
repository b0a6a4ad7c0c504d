//! Publishing as a durable workflow: build → verify → upload → pointer → retention, each step an
//! activity with its own retry policy, orchestrated by [`crate::flow`].
//!
//! A crash anywhere resumes at the step it interrupted: a recorded step is never redone, the
//! upload skips an artifact already present at the right size, and the pointer is written only
//! after the upload step has completed, so no reader ever follows it to a partial build. A gate
//! that fails ends the workflow `Failed` with its reason and publishes nothing.

use std::path::PathBuf;
use std::time::Duration;

use pubsearch_shared::manifest::Manifest;
use serde::{Deserialize, Serialize};

use super::build::{self, BuiltSnapshot};
use super::objects::{ObjectError, Requester, TargetSpec};
use super::{PublishOptions, verify};
use crate::flow::{
    FlowClient, FlowError, InstanceInfo, OrchestrationContext, Registry, RetryPolicy, Status, db,
};
use crate::store::Store;

/// The orchestration's registered name.
pub const ORCHESTRATION: &str = "snapshot.publish";

/// One publish, as the workflow records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub target: TargetSpec,
    pub channel: String,
    pub force: bool,
    pub keep: usize,
    /// The requester's trace (W3C `traceparent`), so every step's span joins it.
    pub traceparent: Option<String>,
    /// Who asked: a scheduled publish leaves a channel held by a rollback alone.
    #[serde(default)]
    pub requester: Requester,
}

impl PublishRequest {
    pub fn new(target: TargetSpec, options: &PublishOptions) -> Self {
        PublishRequest {
            target,
            channel: options.channel.clone(),
            force: options.force,
            keep: options.keep,
            traceparent: crate::telemetry::current_traceparent(),
            requester: Requester::Operator,
        }
    }

    /// A publish the worker's schedule asks for.
    pub fn scheduled(target: TargetSpec, options: &PublishOptions) -> Self {
        PublishRequest {
            requester: Requester::Schedule,
            ..PublishRequest::new(target, options)
        }
    }

    /// Whether a running publish of `running` does what this request asks, so the request may
    /// wait for it instead of starting its own: same channel, target and options; only the
    /// requester's trace may differ (destructured, so a new field has to be decided on here).
    fn is_served_by(&self, running: &PublishRequest) -> bool {
        let PublishRequest {
            target,
            channel,
            force,
            keep,
            traceparent: _,
            requester,
        } = running;
        (target, channel, force, keep, requester)
            == (
                &self.target,
                &self.channel,
                &self.force,
                &self.keep,
                &self.requester,
            )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BuildStep {
    build_id: String,
    channel: String,
    traceparent: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TargetStep<T> {
    target: TargetSpec,
    traceparent: Option<String>,
    input: T,
}

impl PublishRequest {
    fn step<T>(&self, input: T) -> TargetStep<T> {
        TargetStep {
            target: self.target.clone(),
            traceparent: self.traceparent.clone(),
            input,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct VerifyStep {
    built: BuiltSnapshot,
    /// The channel's live build, for the count floor.
    live: Option<Manifest>,
    force: bool,
    traceparent: Option<String>,
}

/// The pointer step's input. The manifest is flattened, so a step recorded before `force` was
/// part of it (a bare manifest) still decodes, unforced.
#[derive(Debug, Serialize, Deserialize)]
struct PointerStep {
    #[serde(flatten)]
    manifest: Manifest,
    /// Move the pointer even to a build of an older source than the live one's.
    #[serde(default)]
    force: bool,
    #[serde(default)]
    requester: Requester,
}

#[derive(Debug, Serialize, Deserialize)]
struct RetainStep {
    channel: String,
    keep: usize,
    local_file: PathBuf,
}

/// A build id from the workflow's recorded clock and uuid: UTC time (sortable) plus a suffix.
fn build_id(unix_ms: i64, uuid: &str) -> String {
    let time = pubsearch_shared::Timestamp::from_unix_millis(unix_ms)
        .map(|time| time.to_rfc3339())
        .unwrap_or_default()
        .replace([':', '-', '.'], "");
    format!("{time}-{}", &uuid[..8])
}

/// The workflow's code.
async fn publish(ctx: OrchestrationContext, request: PublishRequest) -> Result<Manifest, String> {
    let build_id = build_id(ctx.now_ms(), &ctx.new_uuid());
    ctx.set_custom_status(format!("building {build_id}"));
    let building = BuildStep {
        build_id: build_id.clone(),
        channel: request.channel.clone(),
        traceparent: request.traceparent.clone(),
    };
    let retry_build = RetryPolicy::exponential(2, Duration::from_secs(1), Duration::from_secs(5));
    let built: BuiltSnapshot = ctx
        .activity_with_retry("snapshot.build", &building, retry_build)
        .await?;
    ctx.set_custom_status(format!(
        "verifying {build_id} ({} documents)",
        built.manifest.counts.documents
    ));
    let retry_io = RetryPolicy::exponential(5, Duration::from_secs(1), Duration::from_secs(30));
    let live: Option<Manifest> = ctx
        .activity_with_retry(
            "snapshot.live",
            &request.step(request.channel.clone()),
            retry_io,
        )
        .await?;
    let verifying = VerifyStep {
        built: built.clone(),
        live,
        force: request.force,
        traceparent: request.traceparent.clone(),
    };
    // The gates are deterministic: a failed one is final, not retried.
    ctx.activity_with_retry::<_, ()>("snapshot.verify", &verifying, RetryPolicy::no_retry())
        .await
        .map_err(|error| {
            format!("build {build_id} failed verification; nothing was published: {error}")
        })?;
    ctx.set_custom_status(format!(
        "uploading {build_id} ({} bytes)",
        built.manifest.byte_size
    ));
    ctx.activity_with_retry::<_, ()>("snapshot.upload", &request.step(built.clone()), retry_io)
        .await?;
    ctx.set_custom_status(format!("pointing {} at {build_id}", request.channel));
    let pointing = request.step(PointerStep {
        manifest: built.manifest.clone(),
        force: request.force,
        requester: request.requester,
    });
    // A refusal (the live build is newer) is final, so it comes back as a result, not an error
    // to retry.
    let refused: Option<String> = ctx
        .activity_with_retry("snapshot.pointer", &pointing, retry_io)
        .await?;
    if let Some(reason) = refused {
        return Err(format!("build {build_id} was not published: {reason}"));
    }
    let retaining = request.step(RetainStep {
        channel: request.channel.clone(),
        keep: request.keep,
        local_file: built.path.clone(),
    });
    // Housekeeping: a failure here leaves old builds behind but does not undo the publish.
    match ctx
        .activity::<_, usize>("snapshot.retain", &retaining)
        .await
    {
        Ok(removed) => ctx.set_custom_status(format!(
            "published {build_id}; removed {removed} old build(s)"
        )),
        Err(error) => {
            ctx.set_custom_status(format!("published {build_id}; retention failed: {error}"))
        }
    }
    Ok(built.manifest)
}

fn span(name: &'static str, traceparent: &Option<String>) -> tracing::Span {
    let span = tracing::info_span!("step", otel.name = name);
    if let Some(traceparent) = traceparent {
        crate::telemetry::adopt_traceparent(&span, traceparent);
    }
    span
}

/// Runs blocking step code on the blocking pool inside `span`.
async fn blocking<T: Send + 'static>(
    span: tracing::Span,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|error| format!("the step's task failed: {error}"))?
}

/// Registers the publish workflow and its activities, which build from `store` into `work_dir`.
pub fn register(registry: &mut Registry, store: Store, work_dir: PathBuf) {
    let build_store = store.clone();
    registry
        .orchestration(ORCHESTRATION, 1, publish)
        .activity("snapshot.build", move |_, step: BuildStep| {
            let (store, out) = (
                build_store.clone(),
                work_dir.join(format!("{}.db", step.build_id)),
            );
            blocking(span("snapshot.build", &step.traceparent), move || {
                build::build(&store, &out, &step.build_id, &step.channel, |written| {
                    if written % 50_000 == 0 {
                        tracing::info!(written, "building snapshot");
                    }
                })
                .map_err(|error| error.to_string())
            })
        })
        .activity("snapshot.live", |_, step: TargetStep<String>| async move {
            let target = step.target.open().map_err(|error| error.to_string())?;
            target
                .current(&step.input)
                .await
                .map_err(|error| error.to_string())
        })
        .activity("snapshot.verify", move |_, step: VerifyStep| {
            let store = store.clone();
            blocking(span("snapshot.verify", &step.traceparent), move || {
                verify::verify_build(&store, &step.built, step.live.as_ref(), step.force)
                    .map_err(|error| error.to_string())
            })
        })
        .activity(
            "snapshot.upload",
            |_, step: TargetStep<BuiltSnapshot>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let bytes = step.input.manifest.byte_size;
                let span = span("snapshot.upload", &step.traceparent);
                tracing::debug!(bytes, "uploading");
                tracing::Instrument::instrument(target.upload(&step.input), span)
                    .await
                    .map_err(|error| error.to_string())
            },
        )
        .activity(
            "snapshot.pointer",
            |_, step: TargetStep<PointerStep>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let span = span("snapshot.pointer", &step.traceparent);
                let PointerStep {
                    manifest,
                    force,
                    requester,
                } = step.input;
                let pointed = target.advance_pointer(&manifest, force, requester);
                match tracing::Instrument::instrument(pointed, span).await {
                    Ok(()) => {}
                    Err(
                        refusal @ (ObjectError::StalePointer { .. } | ObjectError::Held { .. }),
                    ) => {
                        return Ok(Some(refusal.to_string()));
                    }
                    Err(error) => return Err(error.to_string()),
                }
                tracing::info!(
                    build_id = manifest.build_id,
                    channel = manifest.channel,
                    documents = manifest.counts.documents,
                    "snapshot published"
                );
                Ok(None)
            },
        )
        .activity(
            "snapshot.retain",
            |_, step: TargetStep<RetainStep>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                std::fs::remove_file(&step.input.local_file).ok();
                target
                    .retain(&step.input.channel, step.input.keep)
                    .await
                    .map_err(|error| error.to_string())
            },
        );
}

/// Why a requested publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("publish {instance} {status}: {reason}")]
    Failed {
        instance: String,
        status: Status,
        reason: String,
    },
}

/// A running publish (interrupted or under way) that serves `request`, if there is one. A
/// running publish of the same channel to another target or with other options does not: it
/// would report its own result as this one's.
fn running_publish(
    conn: &rusqlite::Connection,
    request: &PublishRequest,
) -> Result<Option<String>, FlowError> {
    let mut after = None;
    loop {
        let page = db::list(conn, Some(Status::Running), after.as_deref(), 500)?;
        for info in &page.instances {
            let serves = serde_json::from_str::<PublishRequest>(&info.input)
                .is_ok_and(|running| request.is_served_by(&running));
            if info.name == ORCHESTRATION && serves {
                return Ok(Some(info.id.clone()));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(None),
        }
    }
}

/// A fresh instance id. The random suffix matters now that publishes of one channel with other
/// targets or options run side by side: two started in the same millisecond must not share an
/// id, or the second would wait on the first's instance.
fn new_instance_id(channel: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "publish:{channel}:{}-{}",
        crate::flow::now_ms(),
        &suffix[..8]
    )
}

fn outcome(info: InstanceInfo) -> Result<Manifest, PublishError> {
    match (info.status, info.output) {
        (Status::Completed, Some(output)) => {
            Ok(serde_json::from_str(&output).map_err(FlowError::from)?)
        }
        (status, _) => Err(PublishError::Failed {
            instance: info.id,
            status,
            reason: info.error.unwrap_or_default(),
        }),
    }
}

/// Publishes through `client`'s engine: joins a running publish of the same request if there is
/// one (resumed after a crash), otherwise starts a new one, and waits for its manifest.
pub async fn publish_and_wait(
    client: &FlowClient,
    request: &PublishRequest,
    timeout: Duration,
) -> Result<Manifest, PublishError> {
    let running = client.read(|conn| running_publish(conn, request))?;
    let instance = match running {
        Some(instance) => {
            tracing::info!(instance, "resuming the channel's interrupted publish");
            instance
        }
        None => {
            let instance = new_instance_id(&request.channel);
            client.start(ORCHESTRATION, &instance, request).await?;
            instance
        }
    };
    outcome(client.wait(&instance, timeout).await?)
}

/// Hands `request` to the engine that owns `flow_db` (through its inbox), or joins a running
/// publish that serves it; returns the instance to wait for.
pub fn hand_over(flow_db: &std::path::Path, request: &PublishRequest) -> Result<String, FlowError> {
    if let Some(instance) = running_publish(&db::open_read(flow_db)?, request)? {
        return Ok(instance);
    }
    let instance = new_instance_id(&request.channel);
    db::post_start(flow_db, &instance, ORCHESTRATION, 1, request)?;
    Ok(instance)
}

/// Waits up to `timeout` for a handed-over publish, from outside the engine that runs it;
/// `Ok(None)` if it is still unfinished then.
pub async fn wait_handed_over(
    flow_db: &std::path::Path,
    instance: &str,
    timeout: Duration,
) -> Result<Option<Manifest>, PublishError> {
    match db::wait_finished(flow_db, instance, timeout).await {
        Ok(info) => outcome(info).map(Some),
        Err(FlowError::Timeout { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Finishes a publish handed over to an engine that stopped before finishing it, now that
/// `client`'s engine owns the flow database: starts it under its handed-over id (a no-op if the
/// other engine created it, whose pending work this engine resumed; the inbox copy, if still
/// there, is then dropped as a duplicate) and waits for it.
pub async fn finish_handed_over(
    client: &FlowClient,
    instance: &str,
    request: &PublishRequest,
    timeout: Duration,
) -> Result<Manifest, PublishError> {
    client.start(ORCHESTRATION, instance, request).await?;
    outcome(client.wait(instance, timeout).await?)
}
