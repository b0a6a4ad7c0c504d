//! Routing: `pubsearch_shared::api` validates each request and computes every answer that comes
//! from the snapshot (the same bytes the native server sends); this module hands it the live
//! build and answers `/health`, `/stats` and `/snapshot` from the isolate's own state.

use pubsearch_shared::Timestamp;
use pubsearch_shared::api::{self, Answer, Endpoint, Route};
use serde_json::json;
use worker::{Env, Request, Response};

use crate::error::EdgeError;
use crate::{jspi, paged, snapshot, stats};

/// Answers one request.
pub async fn handle(request: &Request, env: &Env) -> Result<Response, EdgeError> {
    let url = request.url()?;
    // Validated before loading anything: a bad request is a 400 even while starting up.
    let route = api::route(request.method().as_ref(), url.path(), url.query_pairs())?;
    match route {
        Route::Preflight => Ok(Response::empty()?.with_status(204)),
        Route::Health => health(),
        Route::Stats => stats_response(),
        Route::Snapshot => snapshot_response(env).await,
        Route::Api(endpoint) => answer(*endpoint, &url.origin().ascii_serialization(), env).await,
    }
}

async fn answer(endpoint: Endpoint, origin: &str, env: &Env) -> Result<Response, EdgeError> {
    let at = now();
    if !endpoint.needs_snapshot() {
        return respond(
            endpoint.answer(origin, None, at, &pubsearch_shared::search::NoPrefetch)?,
            None,
        );
    }
    let live = match snapshot::current(env).await {
        Ok(live) => live,
        Err(error) => return respond(endpoint.fallback(error.0)?, None),
    };
    let name = endpoint.name();
    let timed = matches!(endpoint, Endpoint::Search(_));
    let origin = origin.to_owned();
    let started = worker::Date::now().as_millis();
    let endpoint = std::rc::Rc::new(endpoint);
    let asked = endpoint.clone();
    let answer = match live
        .query(name, move |layers, prefetch| {
            asked.answer(&origin, Some(layers), at, prefetch)
        })
        .await
    {
        Ok(answer) => answer?,
        Err(error) => endpoint.fallback(error.0)?,
    };
    // Time spent in the search core alone, for comparing with native (clocks are coarse in
    // production).
    let timing = timed.then(|| worker::Date::now().as_millis() - started);
    respond(answer, timing)
}

fn respond(answer: Answer, search_ms: Option<u64>) -> Result<Response, EdgeError> {
    let mut response = Response::ok(answer.body)?;
    let headers = response.headers_mut();
    headers.set("Content-Type", answer.content_type)?;
    headers.set("Cache-Control", answer.cache_control)?;
    if let Some(ms) = search_ms {
        headers.set("Server-Timing", &format!("search;dur={ms}"))?;
    }
    Ok(response)
}

fn now() -> Timestamp {
    Timestamp::from_unix_millis(worker::Date::now().as_millis() as i64)
        .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("the epoch is in range"))
}

fn health() -> Result<Response, EdgeError> {
    let live = snapshot::peek();
    let delta = live.as_ref().and_then(|live| live.delta());
    let mut body = api::health(
        "pubsearch-edge",
        live.as_ref().map(|live| live.manifest.build_id.as_str()),
        delta.as_ref().map(|delta| delta.manifest.build_id.as_str()),
    );
    body["paged"] = json!(live.as_ref().map(|live| live.paged));
    // Paged builds need JSPI; without it only builds under RESIDENT_MAX_MB are served.
    body["jspi"] = json!(jspi::available());
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("Cache-Control", api::NO_STORE)?;
    Ok(response)
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
    response.headers_mut().set("Cache-Control", api::NO_STORE)?;
    Ok(response)
}

async fn snapshot_response(env: &Env) -> Result<Response, EdgeError> {
    let live = snapshot::current(env).await?;
    let body = json!({ "manifest": live.manifest, "status": snapshot::status() });
    let mut response = Response::from_json(&body)?;
    response.headers_mut().set("Cache-Control", api::NO_STORE)?;
    Ok(response)
}
