//! The pubsearch edge: a Cloudflare Worker that answers search from a shipped SQLite snapshot.
//!
//! The Worker owns no search logic: ranking, the query language and the snapshot schema all live
//! in `pubsearch-shared`, so the edge answers exactly what the native side answers.
//! Later issues add snapshot loading from R2 and the search endpoints; today it answers `/health`.

use serde::Serialize;
use worker::{Context, Env, Request, Response, Result, Router, event};

/// The `/health` body: enough for a load balancer and for a human checking a deploy.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    version: &'static str,
    schema_version: u32,
    scoring_version: u32,
}

#[event(fetch)]
async fn fetch(request: Request, env: Env, _ctx: Context) -> Result<Response> {
    Router::new()
        .get("/health", |_, _| {
            Response::from_json(&Health {
                status: "ok",
                service: "pubsearch-edge",
                version: env!("CARGO_PKG_VERSION"),
                schema_version: pubsearch_shared::schema::SCHEMA_VERSION,
                scoring_version: pubsearch_shared::schema::SCORING_VERSION,
            })
        })
        .or_else_any_method("/*path", |_, _| {
            let body = serde_json::json!({ "error": "not found" });
            Ok(Response::from_json(&body)?.with_status(404))
        })
        .run(request, env)
        .await
}
