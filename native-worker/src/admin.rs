//! The local admin HTTP endpoint: `/health` and `/stats` for operators and probes.
//!
//! It reads only lock-free counters, so it answers instantly whatever ingest is doing.
//!
//! It binds a loopback address unless an admin token is set (`PUBSEARCH_ADMIN_TOKEN`); with a
//! token, every request must carry `Authorization: Bearer <token>`, compared in constant time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ingest::{IngestStats, QueueProbe};
use crate::latency::LatencyHistogram;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    /// Which source feeds this worker (`jetstream`, `tap`, `replay`).
    pub source: &'static str,
    pub stats: Arc<IngestStats>,
    pub queue: QueueProbe,
    pub started: Instant,
    /// Latency of admin requests themselves, proving the endpoint stays fast under load.
    pub requests: Arc<LatencyHistogram>,
    /// The build the publish channel's pointer names, as last seen by scheduled publishing.
    pub live_build: LiveBuild,
    /// Turso write-through progress, when replicating.
    pub upstream: Option<Arc<crate::turso::upstream::UpstreamStats>>,
    /// The bearer token every request must carry, if one is set.
    pub token: Option<Arc<str>>,
}

/// The published build in service, shared between scheduled publishing and `/stats`.
pub type LiveBuild = Arc<std::sync::Mutex<Option<pubsearch_shared::manifest::Manifest>>>;

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let requests = Arc::clone(&state.requests);
    let token = state.token.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    if let Some(token) = token
                        && !authorized(&request, &token)
                    {
                        let body = Json(json!({"error": "missing or wrong admin token"}));
                        return (StatusCode::UNAUTHORIZED, body).into_response();
                    }
                    next.run(request).await
                }
            },
        ))
        .layer(axum::middleware::from_fn(
            move |request, next: axum::middleware::Next| {
                let requests = Arc::clone(&requests);
                async move {
                    let started = Instant::now();
                    let response = next.run(request).await;
                    requests.record(started.elapsed().as_micros() as u64);
                    response
                }
            },
        ));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Whether `request` carries `Authorization: Bearer <token>`, compared in constant time.
fn authorized(request: &axum::extract::Request, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let offered = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    offered.as_bytes().ct_eq(token.as_bytes()).into()
}

/// Binds the admin address, with a message that names it on failure. A non-loopback address is
/// refused unless a token protects the endpoint (`token`).
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        anyhow::bail!(
            "refusing to serve the admin endpoint on {addr}, which is not a loopback address, \
             without PUBSEARCH_ADMIN_TOKEN; set a token or bind 127.0.0.1"
        );
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin endpoint on {addr}"))
}

#[tracing::instrument(name = "admin.request", skip_all, fields(path = "/health"))]
async fn health(State(state): State<AdminState>) -> (StatusCode, Json<Value>) {
    if let Some(since) = state.stats.store_full_since_us() {
        // Up, but not ingesting: monitoring should hear of it (a restart will not fix it).
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "degraded",
                "reason": "the store's disk is full; ingest is paused until space returns",
                "paused_since_us": since,
                "source": state.source,
                "uptime_seconds": state.started.elapsed().as_secs(),
            })),
        );
    }
    (
        StatusCode::OK,
        Json(json!({
            "status": "ok",
            "source": state.source,
            "uptime_seconds": state.started.elapsed().as_secs(),
        })),
    )
}

#[tracing::instrument(name = "admin.request", skip_all, fields(path = "/stats"))]
async fn stats(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({
        "source": state.source,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "queue_depth": state.queue.depth(),
        "ingest": state.stats.snapshot(),
        "admin_request_latency": state.requests.summary(),
        "turso_write_through": state.upstream.as_ref().map(|upstream| json!({
            "pipelines": upstream.pipelines.load(std::sync::atomic::Ordering::Relaxed),
            "rows": upstream.rows.load(std::sync::atomic::Ordering::Relaxed),
            "failures": upstream.failures.load(std::sync::atomic::Ordering::Relaxed),
        })),
        "snapshot_in_service": state.live_build.lock().ok().and_then(|live| live.as_ref().map(|m| json!({
            "build_id": m.build_id,
            "channel": m.channel,
            "documents": m.counts.documents,
            "byte_size": m.byte_size,
            "source_watermark_us": m.source_watermark_us,
            "created_at": m.created_at,
            "delta": m.delta.as_ref().map(|delta| json!({
                "build_id": delta.build_id,
                "documents": delta.counts.documents,
                "byte_size": delta.byte_size,
                "source_watermark_us": delta.source_watermark_us,
            })),
        }))),
        "object_store_operations": crate::publish::operations::operations(),
    }))
}
