//! The pubsearch edge: a Cloudflare Worker that answers search from a published SQLite snapshot.
//!
//! - [`snapshot`]: loads the channel's live build from R2, verifies it, swaps it atomically.
//! - [`delta`]: the live build's delta (what changed since it), loaded whole and searched with it.
//! - [`download`]: streams a resident build's artifact into SQLite's memory, checking size and
//!   digest.
//! - [`paged`]: reads a build too large to hold by range, a verified chunk at a time, through a
//!   SQLite VFS and a bounded chunk cache.
//! - [`jspi`]: runs the synchronous SQLite calls whose reads wait on R2 as JSPI jobs, one at a
//!   time.
//! - [`routes`]: hands each request to `pubsearch_shared::api` (the page, `/search`, `/document`,
//!   `/tags`, `/feed`, `/opensearch.xml`) with the live build, and answers `/stats`, `/snapshot`
//!   and `/health` itself.
//! - [`stats`]: per-endpoint request timings for `/stats`.
//! - [`error`]: every failure as a JSON response with the right status.
//!
//! The Worker owns no search logic: ranking, the query language and the snapshot schema all live
//! in `pubsearch-shared`, so the edge answers exactly what the native side answers.

pub mod delta;
pub mod download;
pub mod error;
pub mod jspi;
pub mod paged;
pub mod routes;
pub mod snapshot;
pub mod stats;

use worker::{Context, Env, Request, Response, Result, event};

#[event(fetch)]
async fn fetch(request: Request, env: Env, ctx: Context) -> Result<Response> {
    let started = worker::Date::now().as_millis();
    let endpoint = pubsearch_shared::api::endpoint_name(&request.path());
    let (mut response, failed) = match routes::handle(&request, &env).await {
        Ok(response) => (response, false),
        Err(error) => {
            let failed = error.status() >= 500;
            (error.into_response()?, failed)
        }
    };
    let headers = response.headers_mut();
    for (name, value) in pubsearch_shared::api::CORS_HEADERS {
        headers.set(name, value)?;
    }
    // Chunks fetched from R2 go to the Cache API after the answer.
    for write in paged::fetch::take_cache_writes() {
        ctx.wait_until(write);
    }
    stats::record(
        endpoint,
        (worker::Date::now().as_millis() - started) as f64,
        failed,
    );
    Ok(response)
}
