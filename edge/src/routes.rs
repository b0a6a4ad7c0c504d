//! The endpoints. Each reads the live snapshot through `shared`, so answers match the native
//! side exactly; none writes SQL of its own for search.

use pubsearch_shared::lookup;
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::{Timestamp, schema};
use serde_json::json;
use worker::{Env, Method, Request, Response, Url};

use crate::error::EdgeError;
use crate::{jspi, page, paged, snapshot, stats};

/// How long a cache may keep a successful answer, and serve it stale while revalidating: short
/// enough that a new post shows, and a deleted one goes, within a minute end to end (README,
/// "Freshness").
const CACHE_CONTROL: &str = "public, max-age=10, stale-while-revalidate=20";
/// Most tags `/tags` returns.
const MAX_TAGS: u32 = 1000;

/// The endpoint a path belongs to, for timing; unknown paths share one bucket.
pub fn endpoint(path: &str) -> &'static str {
    match path {
        "/" => "page",
        "/search" => "search",
        "/document" => "document",
        "/tags" => "tags",
        "/stats" => "stats",
        "/snapshot" => "snapshot",
        "/health" => "health",
        _ => "other",
    }
}

/// Answers one request.
pub async fn handle(request: &Request, env: &Env) -> Result<Response, EdgeError> {
    match request.method() {
        Method::Get | Method::Head => {}
        Method::Options => return Ok(Response::empty()?.with_status(204)),
        _ => return Err(EdgeError::MethodNotAllowed),
    }
    let url = request.url()?;
    match url.path() {
        "/" => Ok(Response::from_html(page::HTML)?),
        "/health" => health(),
        "/search" => search(&url, env).await,
        "/document" => document(&url, env).await,
        "/tags" => tags(&url, env).await,
        "/stats" => stats_response(),
        "/snapshot" => snapshot_response(env).await,
        _ => Err(EdgeError::NotFound),
    }
}

fn cached(mut response: Response) -> Result<Response, EdgeError> {
    response.headers_mut().set("Cache-Control", CACHE_CONTROL)?;
    Ok(response)
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(worker::Date::now().as_millis() as i64)
        .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("the epoch is in range"))
}

fn health() -> Result<Response, EdgeError> {
    let live = snapshot::peek();
    let body = json!({
        "status": "ok",
        "service": "pubsearch-edge",
        "version": env!("CARGO_PKG_VERSION"),
        "schema_version": schema::SCHEMA_VERSION,
        "oldest_schema_version": schema::OLDEST_READABLE_SCHEMA_VERSION,
        "scoring_version": schema::SCORING_VERSION,
        "snapshot": live.as_ref().map(|live| live.manifest.build_id.clone()),
        "delta": live
            .as_ref()
            .and_then(|live| live.delta())
            .map(|delta| delta.manifest.build_id.clone()),
        "paged": live.as_ref().map(|live| live.paged),
        // Paged builds need JSPI; without it only builds under RESIDENT_MAX_MB are served.
        "jspi": jspi::available(),
    });
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("Cache-Control", "no-store")?;
    Ok(response)
}

async fn search(url: &Url, env: &Env) -> Result<Response, EdgeError> {
    // Validate before loading anything: a bad request is a 400 even while starting up.
    let request = SearchRequest::from_params(url.query_pairs())
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    let live = snapshot::current(env).await?;
    let started = worker::Date::now().as_millis();
    let format = request.format();
    let at = now();
    let page = live
        .query("search", move |layers, prefetch| {
            search::search_layers(layers, &request, at, prefetch)
        })
        .await??;
    let query_ms = worker::Date::now().as_millis() - started;
    let mut response = cached(Response::from_json(&page.to_json(format))?)?;
    // Time spent in the search core alone, for comparing with native (clocks are coarse in production).
    response
        .headers_mut()
        .set("Server-Timing", &format!("search;dur={query_ms}"))?;
    Ok(response)
}

async fn document(url: &Url, env: &Env) -> Result<Response, EdgeError> {
    let uris = lookup::requested_uris(
        url.query_pairs()
            .filter(|(key, _)| key == "uri")
            .map(|(_, value)| value),
    )
    .map_err(|refused| EdgeError::BadRequest(refused.to_string()))?;
    let live = snapshot::current(env).await?;
    let found = live
        .query("document", move |layers, _| {
            lookup::documents_by_uri_in(layers, &uris)
        })
        .await??
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    cached(Response::from_json(&found)?)
}

async fn tags(url: &Url, env: &Env) -> Result<Response, EdgeError> {
    let limit = match url.query_pairs().find(|(key, _)| key == "limit") {
        None => 100,
        Some((_, value)) => value
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_TAGS).contains(limit))
            .ok_or_else(|| {
                EdgeError::BadRequest(format!(
                    "invalid limit: must be a whole number from 1 to {MAX_TAGS}"
                ))
            })?,
    };
    let live = snapshot::current(env).await?;
    let tags = live
        .query("tags", move |layers, _| lookup::top_tags_in(layers, limit))
        .await??;
    cached(Response::from_json(&json!({ "tags": tags }))?)
}

/// Linear memory the isolate's wasm instance has grown to (it never shrinks).
fn wasm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

fn stats_response() -> Result<Response, EdgeError> {
    let live = snapshot::peek();
    let body = json!({
        "snapshot": snapshot::status(),
        "counts": live.as_ref().map(|live| live.served_counts()),
        "source_watermark_us": live.as_ref().map(|live| {
            live.delta()
                .map_or(live.manifest.source_watermark_us, |delta| {
                    delta.manifest.source_watermark_us
                })
        }),
        "requests": stats::summary(),
        "paged": {
            "overall": stats::paged_overall(),
            "chunk_cache_budget_bytes": paged::cache_bytes().0,
            "chunk_cache_held_bytes": paged::cache_bytes().1,
            "abandoned_jobs": jspi::abandoned(),
        },
        "wasm_memory_bytes": wasm_memory_bytes(),
    });
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("Cache-Control", "no-store")?;
    Ok(response)
}

async fn snapshot_response(env: &Env) -> Result<Response, EdgeError> {
    let live = snapshot::current(env).await?;
    let body = json!({ "manifest": live.manifest, "status": snapshot::status() });
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("Cache-Control", "no-store")?;
    Ok(response)
}
