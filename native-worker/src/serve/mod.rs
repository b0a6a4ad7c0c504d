//! The public search API served natively: the page, `/search`, `/document`, `/tags`, `/feed`,
//! `/opensearch.xml`, `/health`, `/stats` and `/snapshot`, from the latest published build of a
//! channel and its delta, so one machine is a whole search engine with no Cloudflare
//! (ARCHITECTURE.md, "Serving").
//!
//! Every answer from the snapshot comes from `pubsearch_shared::api`, the code the edge Worker
//! runs, so both send the same bytes, statuses and caching headers for the same request. `run`
//! serves what it publishes (`--serve-addr`); `serve` follows a published directory or bucket
//! without ingesting.
//!
//! - [`live`]: the build served, kept current with the channel's pointer.

pub mod live;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pubsearch_shared::api::{self, Answer, ApiError, Route};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use live::Builds;

/// The address `run` and `serve` answer on unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// What the server shares between requests.
struct Server {
    builds: Arc<Builds>,
    started: Instant,
    requests: AtomicU64,
    failed: AtomicU64,
}

/// Binds the public address, with a message that names it (and the way out) on failure.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "binding the search server on {addr}; pass --serve-addr with another address, or \
             --serve-addr off"
        )
    })
}

/// Serves the API on `listener` from `builds`, following the channel's pointer, until
/// `shutdown`.
pub async fn serve(
    listener: TcpListener,
    builds: Arc<Builds>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(builds.clone().follow(shutdown.clone()));
    let server = Arc::new(Server {
        builds,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let app = Router::new().fallback(handle).with_state(server);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[tracing::instrument(name = "serve.request", skip_all, fields(path = %request.uri().path()))]
async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    server.requests.fetch_add(1, Ordering::Relaxed);
    let (request, _) = request.into_parts();
    let mut response = match answer(&server, &request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status() >= 500 {
                server.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "serve: request failed");
            }
            failure(&error)
        }
    };
    let headers = response.headers_mut();
    for (name, value) in api::CORS_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn answer(server: &Server, request: &Parts) -> Result<Response, ApiError> {
    let uri = &request.uri;
    let params = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes());
    let route = api::route(request.method.as_str(), uri.path(), params)?;
    let endpoint = match route {
        Route::Preflight => return Ok(StatusCode::NO_CONTENT.into_response()),
        Route::Health => return Ok(health(server)),
        Route::Stats => return Ok(stats(server)),
        Route::Snapshot => return snapshot(server),
        Route::Api(endpoint) => *endpoint,
    };
    let origin = origin(&request.headers);
    let now = live::now();
    if !endpoint.needs_snapshot() {
        let answer = endpoint.answer(&origin, None, now, &pubsearch_shared::search::NoPrefetch)?;
        return Ok(respond(answer, None));
    }
    let timed = matches!(endpoint, api::Endpoint::Search(_));
    let started = Instant::now();
    let endpoint = Arc::new(endpoint);
    let asked = endpoint.clone();
    let answer = match server
        .builds
        .query(move |layers, prefetch| asked.answer(&origin, Some(layers), now, prefetch))
        .await
    {
        Ok(answer) => answer?,
        Err(error) => endpoint.fallback(error)?,
    };
    Ok(respond(
        answer,
        timed.then(|| started.elapsed().as_millis() as u64),
    ))
}

/// `scheme://host` the client used, for the absolute links feeds and OpenSearch carry; a
/// proxy in front says `https` with `X-Forwarded-Proto`.
fn origin(headers: &HeaderMap) -> String {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    let host = header(header::HOST.as_str()).unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn respond(answer: Answer, search_ms: Option<u64>) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(answer.cache_control),
    );
    if let Some(ms) = search_ms
        && let Ok(value) = HeaderValue::from_str(&format!("search;dur={ms}"))
    {
        headers.insert("server-timing", value);
    }
    response
}

fn failure(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, error.body()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in error.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

fn no_store(body: serde_json::Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(api::NO_STORE),
    );
    response
}

fn health(server: &Server) -> Response {
    let live = server.builds.live();
    no_store(api::health(
        "pubsearch-native",
        live.as_ref().map(|live| live.pointer.build_id.as_str()),
        live.as_ref()
            .and_then(|live| live.delta())
            .map(|delta| delta.build_id.as_str()),
    ))
}

fn stats(server: &Server) -> Response {
    let live = server.builds.live();
    no_store(json!({
        "snapshot": server.builds.status(),
        "counts": live.as_ref().map(|live| live.counts()),
        "source_watermark_us": live.as_ref().map(|live| live.pointer.served_watermark_us()),
        "requests": {
            "total": server.requests.load(Ordering::Relaxed),
            "failed": server.failed.load(Ordering::Relaxed),
        },
        "uptime_seconds": server.started.elapsed().as_secs(),
    }))
}

fn snapshot(server: &Server) -> Result<Response, ApiError> {
    let live = server
        .builds
        .live()
        .ok_or_else(|| ApiError::Unavailable("no snapshot published yet".into()))?;
    Ok(no_store(json!({
        "manifest": live.pointer,
        "status": server.builds.status(),
        "source": server.builds.source(),
    })))
}
