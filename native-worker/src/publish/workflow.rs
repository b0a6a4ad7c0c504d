//! Publishing as a durable workflow: build → verify → upload → pointer → retention, each step an
//! activity with its own retry policy, orchestrated by [`crate::flow`].
//!
//! A crash anywhere resumes at the step it interrupted: a recorded step is never redone, the
//! upload skips an artifact already present at the right size, and the pointer is written only
//! after the upload step has completed, so no reader ever follows it to a partial build. A gate
//! that fails ends the workflow `Failed` with its reason and publishes nothing.
//!
//! Interruptions: an attempt cut short by the worker stopping (a kill, a crash) counts as a
//! failed attempt, except for the steps safe to repeat — `snapshot.build`, `snapshot.live`,
//! `snapshot.verify`, `snapshot.upload`, `delta.build` and `delta.verify` write only files named
//! by their build id, read, or PUT the same bytes again — which run again without counting, up
//! to `flow::FREE_INTERRUPTIONS` times (`flow::Registry::repeatable_activity`). Pointer moves and
//! retention count every interruption.

use std::path::PathBuf;
use std::time::Duration;

use pubsearch_shared::manifest::Manifest;
use serde::{Deserialize, Serialize};

use super::build::{self, BuiltSnapshot};
use super::objects::{ObjectError, Requester, TargetSpec};
use super::{PublishOptions, verify};
use crate::flow::{
    FlowClient, FlowError, InstancePage, OrchestrationContext, OutsideClient, PendingStart,
    Registry, RetryPolicy, Status,
};
use crate::lockfile::{LockError, LockFile};
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
    /// Publish a delta over the channel's live base instead of a new base (see
    /// [`super::delta`]).
    #[serde(default)]
    pub delta: bool,
    /// With a new base, publish a delta of what changed while it was built in the same pointer
    /// write, so readers never lose a change an earlier delta showed them (ARCHITECTURE.md,
    /// "Deltas").
    #[serde(default)]
    pub catch_up: bool,
    /// Per-attempt limits of the steps (recorded with the request, so a resumed publish keeps
    /// them).
    #[serde(default)]
    pub timeouts: StepTimeouts,
}

/// How long one attempt of each kind of publish step may take before it counts as failed (and
/// is retried per its policy). Without limits a hung step would hold the channel's publish for
/// good, and every later publish would join it and wait. Generous: they bound hangs, not work
/// (a build of a million documents takes minutes here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTimeouts {
    /// `snapshot.build`, `delta.build` (a delta's includes fetching its base).
    pub build_ms: u64,
    /// `snapshot.verify`, `delta.verify`.
    pub verify_ms: u64,
    /// Object store work: `snapshot.live`, `snapshot.upload`, the pointer moves.
    pub io_ms: u64,
    /// Retention of old builds and deltas.
    pub housekeeping_ms: u64,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        const MINUTE: u64 = 60_000;
        StepTimeouts {
            build_ms: 30 * MINUTE,
            verify_ms: 15 * MINUTE,
            io_ms: 30 * MINUTE,
            housekeeping_ms: 10 * MINUTE,
        }
    }
}

/// The retry policy of each kind of step.
struct Policies {
    build: RetryPolicy,
    verify: RetryPolicy,
    io: RetryPolicy,
    housekeeping: RetryPolicy,
}

impl StepTimeouts {
    fn policies(&self) -> Policies {
        let limit = Duration::from_millis;
        Policies {
            build: RetryPolicy::exponential(2, Duration::from_secs(1), Duration::from_secs(5))
                .with_timeout(limit(self.build_ms)),
            // The gates are deterministic: a failed one is final, not retried.
            verify: RetryPolicy::no_retry().with_timeout(limit(self.verify_ms)),
            io: RetryPolicy::exponential(5, Duration::from_secs(1), Duration::from_secs(30))
                .with_timeout(limit(self.io_ms)),
            housekeeping: RetryPolicy::default().with_timeout(limit(self.housekeeping_ms)),
        }
    }
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
            delta: false,
            catch_up: false,
            timeouts: StepTimeouts::default(),
        }
    }

    /// A delta over the channel's live base, as `publish --delta` asks for.
    pub fn delta(target: TargetSpec, options: &PublishOptions) -> Self {
        PublishRequest {
            delta: true,
            ..PublishRequest::new(target, options)
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
            delta,
            catch_up,
            timeouts: _,
        } = running;
        (target, channel, force, keep, requester, delta, catch_up)
            == (
                &self.target,
                &self.channel,
                &self.force,
                &self.keep,
                &self.requester,
                &self.delta,
                &self.catch_up,
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
    /// Keep the local file as the base deltas are built over (see [`base_file`]).
    #[serde(default)]
    keep_as_base: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaBuildStep {
    build_id: String,
    /// The pointer (or new base's manifest) the delta overlays.
    base: Manifest,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeltaVerifyStep {
    built: BuiltSnapshot,
    base_build_id: String,
    traceparent: Option<String>,
}

/// Deltas kept in the object store besides the live one: a reader that read the pointer just
/// before it moved can still fetch the delta it named.
const DELTAS_KEPT: usize = 3;

/// Where a data directory keeps the base deltas are built over: `bases/<build_id>.db` in the
/// work directory, downloaded once per base (or kept from its own build).
fn base_file(work_dir: &std::path::Path, build_id: &str) -> PathBuf {
    work_dir.join("bases").join(format!("{build_id}.db"))
}

/// Removes every kept base file but `keep`'s.
fn forget_other_bases(work_dir: &std::path::Path, keep: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(work_dir.join("bases")) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path() != keep {
            std::fs::remove_file(entry.path()).ok();
        }
    }
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
    if request.delta {
        return publish_delta(ctx, request).await;
    }
    let build_id = build_id(ctx.now_ms(), &ctx.new_uuid());
    ctx.set_custom_status(format!("building {build_id}"));
    let building = BuildStep {
        build_id: build_id.clone(),
        channel: request.channel.clone(),
        traceparent: request.traceparent.clone(),
    };
    let policies = request.timeouts.policies();
    let built: BuiltSnapshot = ctx
        .activity_with_retry("snapshot.build", &building, policies.build)
        .await?;
    ctx.set_custom_status(format!(
        "verifying {build_id} ({} documents)",
        built.manifest.counts.documents
    ));
    let live: Option<Manifest> = ctx
        .activity_with_retry(
            "snapshot.live",
            &request.step(request.channel.clone()),
            policies.io,
        )
        .await?;
    let verifying = VerifyStep {
        built: built.clone(),
        live,
        force: request.force,
        traceparent: request.traceparent.clone(),
    };
    ctx.activity_with_retry::<_, ()>("snapshot.verify", &verifying, policies.verify)
        .await
        .map_err(|error| {
            format!("build {build_id} failed verification; nothing was published: {error}")
        })?;
    ctx.set_custom_status(format!(
        "uploading {build_id} ({} bytes)",
        built.manifest.byte_size
    ));
    ctx.activity_with_retry::<_, ()>("snapshot.upload", &request.step(built.clone()), policies.io)
        .await?;
    let mut pointer = built.manifest.clone();
    if request.catch_up {
        let delta_id = self::build_id(ctx.now_ms(), &ctx.new_uuid());
        let delta = build_delta(&ctx, &request, &built.manifest, delta_id).await?;
        pointer.delta = Some(Box::new(delta.manifest.pointer()));
    }
    ctx.set_custom_status(format!("pointing {} at {build_id}", request.channel));
    let pointing = request.step(PointerStep {
        manifest: pointer,
        force: request.force,
        requester: request.requester,
    });
    // A refusal (the live build is newer) is final, so it comes back as a result, not an error
    // to retry.
    let refused: Option<String> = ctx
        .activity_with_retry("snapshot.pointer", &pointing, policies.io)
        .await?;
    if let Some(reason) = refused {
        return Err(format!("build {build_id} was not published: {reason}"));
    }
    let retaining = request.step(RetainStep {
        channel: request.channel.clone(),
        keep: request.keep,
        local_file: built.path.clone(),
        keep_as_base: request.catch_up,
    });
    // Housekeeping: a failure here leaves old builds behind but does not undo the publish.
    match ctx
        .activity_with_retry::<_, usize>("snapshot.retain", &retaining, policies.housekeeping)
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

/// A delta over the channel's live base: build, verify, upload, then the pointer names it.
async fn publish_delta(
    ctx: OrchestrationContext,
    request: PublishRequest,
) -> Result<Manifest, String> {
    let build_id = build_id(ctx.now_ms(), &ctx.new_uuid());
    let policies = request.timeouts.policies();
    let live: Option<Manifest> = ctx
        .activity_with_retry(
            "snapshot.live",
            &request.step(request.channel.clone()),
            policies.io,
        )
        .await?;
    let Some(base) = live else {
        return Err(format!(
            "channel {:?} has no build to publish a delta over; publish a base first",
            request.channel
        ));
    };
    let built = build_delta(&ctx, &request, &base, build_id.clone()).await?;
    ctx.set_custom_status(format!("pointing {} at delta {build_id}", request.channel));
    let refused: Option<String> = ctx
        .activity_with_retry(
            "delta.pointer",
            &request.step(built.manifest.clone()),
            policies.io,
        )
        .await?;
    if let Some(reason) = refused {
        return Err(format!("delta {build_id} was not published: {reason}"));
    }
    let retaining = request.step(RetainStep {
        channel: request.channel.clone(),
        keep: DELTAS_KEPT,
        local_file: built.path.clone(),
        keep_as_base: false,
    });
    if let Err(error) = ctx
        .activity_with_retry::<_, usize>("delta.retain", &retaining, policies.housekeeping)
        .await
    {
        ctx.set_custom_status(format!(
            "published delta {build_id}; retention failed: {error}"
        ));
    }
    Ok(built.manifest)
}

/// Builds, verifies and uploads a delta over `base` (the steps before its pointer).
async fn build_delta(
    ctx: &OrchestrationContext,
    request: &PublishRequest,
    base: &Manifest,
    build_id: String,
) -> Result<BuiltSnapshot, String> {
    ctx.set_custom_status(format!("building delta {build_id} over {}", base.build_id));
    let policies = request.timeouts.policies();
    let building = request.step(DeltaBuildStep {
        build_id: build_id.clone(),
        base: base.clone(),
    });
    let built: BuiltSnapshot = ctx
        .activity_with_retry("delta.build", &building, policies.build)
        .await?;
    let verifying = DeltaVerifyStep {
        built: built.clone(),
        base_build_id: base.build_id.clone(),
        traceparent: request.traceparent.clone(),
    };
    ctx.activity_with_retry::<_, ()>("delta.verify", &verifying, policies.verify)
        .await
        .map_err(|error| {
            format!("delta {build_id} failed verification; nothing was published: {error}")
        })?;
    ctx.activity_with_retry::<_, ()>("snapshot.upload", &request.step(built.clone()), policies.io)
        .await?;
    Ok(built)
}

/// A pointer move as its activity reports it: a refusal (final: another build or delta got
/// there first, or a rollback holds the channel) as `Ok(Some(reason))`, any other failure as
/// an error to retry.
fn pointer_outcome(moved: Result<(), ObjectError>) -> Result<Option<String>, String> {
    match moved {
        Ok(()) => Ok(None),
        Err(
            refusal @ (ObjectError::StalePointer { .. }
            | ObjectError::Held { .. }
            | ObjectError::BaseMoved { .. }),
        ) => Ok(Some(refusal.to_string())),
        Err(error) => Err(error.to_string()),
    }
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
    let (delta_store, verify_delta_store) = (store.clone(), store.clone());
    let (delta_dir, retain_dir) = (work_dir.clone(), work_dir.clone());
    registry
        .orchestration(ORCHESTRATION, 1, publish)
        .repeatable_activity("snapshot.build", move |_, step: BuildStep| {
            let (store, out) = (
                build_store.clone(),
                work_dir.join(format!("{}.db", step.build_id)),
            );
            blocking(span("snapshot.build", &step.traceparent), move || {
                build::build(
                    &store,
                    &out,
                    &step.build_id,
                    &step.channel,
                    |written, total| {
                        super::progress::report("building", written, Some(total));
                        if written % 50_000 == 0 {
                            tracing::info!(written, total, "building snapshot");
                        }
                    },
                )
                .map_err(|error| error.to_string())
            })
        })
        .repeatable_activity("snapshot.live", |_, step: TargetStep<String>| async move {
            let target = step.target.open().map_err(|error| error.to_string())?;
            target
                .current(&step.input)
                .await
                .map_err(|error| error.to_string())
        })
        .repeatable_activity("snapshot.verify", move |_, step: VerifyStep| {
            super::progress::report("verifying", 0, None);
            let store = store.clone();
            blocking(span("snapshot.verify", &step.traceparent), move || {
                verify::verify_build(&store, &step.built, step.live.as_ref(), step.force)
                    .map_err(|error| error.to_string())
            })
        })
        .repeatable_activity(
            "snapshot.upload",
            |_, step: TargetStep<BuiltSnapshot>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let bytes = step.input.manifest.byte_size;
                super::progress::report("uploading", 0, None);
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
                super::progress::report("moving the channel's pointer", 0, None);
                let span = span("snapshot.pointer", &step.traceparent);
                let PointerStep {
                    manifest,
                    force,
                    requester,
                } = step.input;
                let pointed = target.advance_pointer(&manifest, force, requester);
                if let Some(refusal) =
                    pointer_outcome(tracing::Instrument::instrument(pointed, span).await)?
                {
                    return Ok(Some(refusal));
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
        .activity("snapshot.retain", move |_, step: TargetStep<RetainStep>| {
            let work_dir = retain_dir.clone();
            async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let local = &step.input.local_file;
                let build_id = local.file_stem().and_then(|stem| stem.to_str());
                match build_id.filter(|_| step.input.keep_as_base) {
                    Some(build_id) => {
                        let kept = base_file(&work_dir, build_id);
                        if let Some(dir) = kept.parent() {
                            std::fs::create_dir_all(dir).ok();
                        }
                        std::fs::rename(local, &kept).ok();
                        forget_other_bases(&work_dir, &kept);
                    }
                    None => {
                        std::fs::remove_file(local).ok();
                    }
                }
                target
                    .retain(&step.input.channel, step.input.keep)
                    .await
                    .map_err(|error| error.to_string())
            }
        })
        .repeatable_activity("delta.build", move |_, step: TargetStep<DeltaBuildStep>| {
            let (store, work_dir) = (delta_store.clone(), delta_dir.clone());
            async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let DeltaBuildStep { build_id, base } = step.input;
                super::progress::report("building a delta", 0, None);
                // The new base of a catch-up is still at its build path; otherwise the kept one,
                // downloaded if this worker has not got it.
                let own = work_dir.join(format!("{}.db", base.build_id));
                let base_path = if own.exists() {
                    own
                } else {
                    let kept = base_file(&work_dir, &base.build_id);
                    let download = span("delta.base", &step.traceparent);
                    tracing::Instrument::instrument(target.download(&base, &kept), download)
                        .await
                        .map_err(|error| error.to_string())?;
                    forget_other_bases(&work_dir, &kept);
                    kept
                };
                let out = work_dir.join(format!("{build_id}.db"));
                blocking(span("delta.build", &step.traceparent), move || {
                    super::delta::build(&store, &base, &base_path, &out, &build_id)
                        .map_err(|error| error.to_string())
                })
                .await
            }
        })
        .repeatable_activity("delta.verify", move |_, step: DeltaVerifyStep| {
            let store = verify_delta_store.clone();
            blocking(span("delta.verify", &step.traceparent), move || {
                verify::verify_delta(&store, &step.built, &step.base_build_id)
                    .map_err(|error| error.to_string())
            })
        })
        .activity(
            "delta.pointer",
            |_, step: TargetStep<Manifest>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                let span = span("delta.pointer", &step.traceparent);
                let delta = step.input;
                let pointed = target.advance_delta(&delta);
                if let Some(refusal) =
                    pointer_outcome(tracing::Instrument::instrument(pointed, span).await)?
                {
                    return Ok(Some(refusal));
                }
                tracing::info!(
                    build_id = delta.build_id,
                    base = delta.base_build_id,
                    documents = delta.counts.documents,
                    "delta published"
                );
                Ok(None)
            },
        )
        .activity(
            "delta.retain",
            |_, step: TargetStep<RetainStep>| async move {
                let target = step.target.open().map_err(|error| error.to_string())?;
                std::fs::remove_file(&step.input.local_file).ok();
                target
                    .retain_deltas(&step.input.channel, step.input.keep)
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
}

/// A publish under way (running, interrupted, or asked for and not started yet) that serves
/// `request`, if there is one. A publish of the same channel to another target or with other
/// options does not: it would report its own result as this one's.
fn running_publish(
    running: impl Fn(Option<&str>) -> Result<InstancePage, FlowError>,
    pending: Vec<PendingStart>,
    request: &PublishRequest,
) -> Result<Option<String>, FlowError> {
    let serves = |name: &str, input: &str| {
        name == ORCHESTRATION
            && serde_json::from_str::<PublishRequest>(input)
                .is_ok_and(|running| request.is_served_by(&running))
    };
    if let Some(start) = pending
        .iter()
        .find(|start| serves(&start.name, &start.input))
    {
        return Ok(Some(start.instance.clone()));
    }
    let mut after = None;
    loop {
        let page = running(after.as_deref())?;
        if let Some(info) = page
            .instances
            .iter()
            .find(|info| serves(&info.name, &info.input))
        {
            return Ok(Some(info.id.clone()));
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
fn new_instance_id(request: &PublishRequest) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let kind = if request.delta {
        DELTA_INSTANCES
    } else {
        "publish:"
    };
    format!(
        "{kind}{}:{}-{}",
        request.channel,
        crate::flow::now_ms(),
        &suffix[..8]
    )
}

/// How the ids of delta publishes start: a worker publishing one every few seconds purges them
/// by this prefix once they are an hour old (see `run`).
pub const DELTA_INSTANCES: &str = "delta:";

/// Publishes through `client`'s engine: joins a running publish of the same request if there is
/// one (resumed after a crash), otherwise starts a new one, and waits for its manifest.
pub async fn publish_and_wait(
    client: &FlowClient,
    request: &PublishRequest,
    timeout: Duration,
) -> Result<Manifest, PublishError> {
    let claim = claim_publishing(client.path()).await?;
    let running = running_publish(
        |after| client.list(Some(Status::Running), after, 500),
        client.pending_starts()?,
        request,
    )?;
    let instance = match running {
        Some(instance) => {
            tracing::info!(instance, "resuming the channel's interrupted publish");
            instance
        }
        None => {
            let instance = new_instance_id(request);
            client.start(ORCHESTRATION, &instance, request).await?;
            instance
        }
    };
    drop(claim);
    Ok(client.wait(&instance, timeout).await?.output()?)
}

/// Hands `request` to the engine that owns `flow_db` (through its inbox), or joins a running
/// publish that serves it; returns the instance to wait for.
pub async fn hand_over(
    flow_db: &std::path::Path,
    request: &PublishRequest,
) -> Result<String, FlowError> {
    let _claim = claim_publishing(flow_db).await?;
    let flows = OutsideClient::new(flow_db);
    let running = |after: Option<&str>| flows.list(Some(Status::Running), after, 500);
    if let Some(instance) = running_publish(running, flows.pending_starts()?, request)? {
        return Ok(instance);
    }
    let instance = new_instance_id(request);
    flows.start(&instance, ORCHESTRATION, 1, request)?;
    Ok(instance)
}

/// Serialises "is a publish serving this request under way? if not, start one" across every
/// process using `flow_db` (the worker's scheduler, `publish` commands), so a channel's publish
/// is single-flight: the second asker finds the first's start, pending or running, and joins it.
/// Held for the check and the start only, never while a publish runs.
async fn claim_publishing(flow_db: &std::path::Path) -> Result<LockFile, FlowError> {
    let path = flow_db.with_extension("publish.lock");
    LockFile::acquire_within(&path, CLAIM_TIMEOUT)
        .await
        .map_err(|error| match error {
            LockError::Held { path, holder } => FlowError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!("still held by {holder} after {CLAIM_TIMEOUT:?}"),
                ),
            },
            LockError::Io { path, source } => FlowError::Io { path, source },
        })
}

/// How long [`claim_publishing`] waits for another process's check-and-start (milliseconds of
/// work) before giving up.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits up to `timeout` for a handed-over publish, from outside the engine that runs it;
/// `Ok(None)` if it is still unfinished then.
pub async fn wait_handed_over(
    flow_db: &std::path::Path,
    instance: &str,
    timeout: Duration,
) -> Result<Option<Manifest>, PublishError> {
    match OutsideClient::new(flow_db).wait(instance, timeout).await {
        Ok(info) => Ok(Some(info.output()?)),
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
    Ok(client.wait(instance, timeout).await?.output()?)
}
