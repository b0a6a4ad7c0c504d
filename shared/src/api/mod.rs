//! The public HTTP API apart from any HTTP library: which endpoint a request names, its validated
//! parameters, and the answer's status, body and headers. The edge Worker and the native server
//! (`native-worker serve`, `run --serve-addr`) both answer through it, so the same request gets the
//! same bytes, status and caching headers from either (ARCHITECTURE.md, "Serving").
//!
//! Each side keeps only what is its own: how it holds the live build (it hands [`Layers`] in),
//! and `/health`, `/stats` and `/snapshot`, which describe that side's state.
//!
//! - [`error`]: every failure as a status, a JSON body and headers.
//! - `page`: the search page at `/`, its first page of results rendered on the server.
//! - `feed`: `/feed`, a search as an Atom feed, newest first.
//! - `opensearch`: `/opensearch.xml`, so browsers offer the site as a search engine.

pub mod error;
mod feed;
mod opensearch;
mod page;

use serde_json::json;

use crate::delta::Layers;
use crate::lookup;
use crate::search::{self, Prefetch, SearchRequest};
use crate::timestamp::Timestamp;

pub use error::ApiError;
pub use page::PageRequest;

/// How long a cache may keep a successful answer, and serve it stale while revalidating: short
/// enough that a new post shows, and a deleted one goes, within a minute end to end (README,
/// "Freshness").
pub const CACHE_CONTROL: &str = "public, max-age=10, stale-while-revalidate=20";
/// Answers about the server itself, and errors, are never cached.
pub const NO_STORE: &str = "no-store";
/// The methods every endpoint takes.
pub const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";
/// Headers on every response: the API is public and read-only, so any page may call it.
pub const CORS_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", ALLOWED_METHODS),
    ("Access-Control-Max-Age", "86400"),
];
/// Most tags `/tags` returns.
pub const MAX_TAGS: u32 = 1000;
/// Tags `/tags` returns when the client does not say.
const DEFAULT_TAGS: u32 = 100;

/// What a request asks for.
#[derive(Debug)]
pub enum Route {
    /// A CORS preflight: 204 with no body.
    Preflight,
    /// The server's own state, answered by each side.
    Health,
    Stats,
    Snapshot,
    /// An answer every side computes the same way.
    Api(Box<Endpoint>),
}

/// An endpoint answered by this module, with its validated parameters.
#[derive(Debug)]
pub enum Endpoint {
    Page(PageRequest),
    Search(SearchRequest),
    Document(Vec<String>),
    Tags(u32),
    Feed(feed::FeedRequest),
    /// Posts related to one document (see [`crate::similar`]).
    Similar {
        uri: String,
        search: SearchRequest,
    },
    OpenSearch,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub content_type: &'static str,
    pub cache_control: &'static str,
    pub body: String,
}

const JSON: &str = "application/json";

impl Answer {
    fn json(value: &serde_json::Value) -> Self {
        Answer {
            content_type: JSON,
            cache_control: CACHE_CONTROL,
            body: value.to_string(),
        }
    }
}

/// The name a path is timed under in `/stats`; unknown paths share one.
pub fn endpoint_name(path: &str) -> &'static str {
    match path {
        "/" => "page",
        "/search" => "search",
        "/document" => "document",
        "/tags" => "tags",
        "/feed" => "feed",
        "/similar" => "similar",
        "/opensearch.xml" => "opensearch",
        "/stats" => "stats",
        "/snapshot" => "snapshot",
        "/health" => "health",
        _ => "other",
    }
}

/// Validates a request: its method, its path and the parameters the endpoint takes. Fails
/// before anything is loaded, so a bad request is a 400 even while a server is starting up.
pub fn route<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (K, V)>,
) -> Result<Route, ApiError> {
    match method {
        "GET" | "HEAD" => {}
        "OPTIONS" => return Ok(Route::Preflight),
        _ => return Err(ApiError::MethodNotAllowed),
    }
    let params: Vec<(String, String)> = params
        .into_iter()
        .map(|(key, value)| (key.as_ref().to_owned(), value.as_ref().to_owned()))
        .collect();
    let bad = |error: &dyn std::fmt::Display| ApiError::BadRequest(error.to_string());
    let endpoint = match path {
        "/health" => return Ok(Route::Health),
        "/stats" => return Ok(Route::Stats),
        "/snapshot" => return Ok(Route::Snapshot),
        "/" => Endpoint::Page(PageRequest::from_params(&params)),
        "/search" => Endpoint::Search(SearchRequest::from_params(params).map_err(|e| bad(&e))?),
        "/feed" => Endpoint::Feed(feed::request(params).map_err(|e| bad(&e))?),
        "/document" => Endpoint::Document(
            lookup::requested_uris(
                params
                    .into_iter()
                    .filter(|(key, _)| key == "uri")
                    .map(|(_, value)| value),
            )
            .map_err(|e| bad(&e))?,
        ),
        "/tags" => Endpoint::Tags(tags_limit(&params)?),
        "/similar" => similar_request(params)?,
        "/opensearch.xml" => Endpoint::OpenSearch,
        _ => return Err(ApiError::NotFound),
    };
    Ok(Route::Api(Box::new(endpoint)))
}

/// Results `/similar` gives when the client does not say.
const DEFAULT_SIMILAR: u32 = 10;
/// Longest document URI accepted.
const MAX_URI_CHARS: usize = 512;

/// `/similar`'s `uri` and the search parameters it shares with `/search` (all but `q`).
fn similar_request(params: Vec<(String, String)>) -> Result<Endpoint, ApiError> {
    let uri = params
        .iter()
        .rev()
        .find(|(key, _)| key == "uri")
        .map(|(_, uri)| uri.trim().to_owned())
        .ok_or_else(|| ApiError::BadRequest("missing parameter uri".into()))?;
    if !uri.starts_with("at://") || uri.len() > MAX_URI_CHARS {
        return Err(ApiError::BadRequest(format!(
            "invalid uri: must be the at:// URI of a document, at most {MAX_URI_CHARS} characters"
        )));
    }
    let mut search = vec![("limit".to_owned(), DEFAULT_SIMILAR.to_string())];
    search.extend(params.into_iter().filter(|(key, _)| key != "q"));
    // The query is the document's terms, put in when answering.
    search.push(("q".into(), "related".into()));
    let search =
        SearchRequest::from_params(search).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Endpoint::Similar { uri, search })
}

fn tags_limit(params: &[(String, String)]) -> Result<u32, ApiError> {
    match params.iter().rev().find(|(key, _)| key == "limit") {
        None => Ok(DEFAULT_TAGS),
        Some((_, value)) => value
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_TAGS).contains(limit))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid limit: must be a whole number from 1 to {MAX_TAGS}"
                ))
            }),
    }
}

impl Endpoint {
    /// The name it is timed under in `/stats` (as [`endpoint_name`] names its path).
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Page(_) => "page",
            Endpoint::Search(_) => "search",
            Endpoint::Document(_) => "document",
            Endpoint::Tags(_) => "tags",
            Endpoint::Feed(_) => "feed",
            Endpoint::Similar { .. } => "similar",
            Endpoint::OpenSearch => "opensearch",
        }
    }

    /// Whether answering reads the live build; those that don't answer while none is loaded.
    pub fn needs_snapshot(&self) -> bool {
        match self {
            Endpoint::Page(page) => page.searches(),
            Endpoint::OpenSearch => false,
            _ => true,
        }
    }

    /// What to send when the live build could not be read (`error`): the page still renders,
    /// saying why, uncached; every other endpoint fails with `error`.
    pub fn fallback(&self, error: ApiError) -> Result<Answer, ApiError> {
        match self {
            Endpoint::Page(page) if error.status() == 503 => {
                let mut answer = page::render(page, Some(&Err(error.to_string())));
                answer.cache_control = NO_STORE;
                Ok(answer)
            }
            _ => Err(error),
        }
    }

    /// The answer, from `layers` when [`Endpoint::needs_snapshot`] (`None` otherwise). `origin`
    /// (`https://host`) makes the absolute links feeds and OpenSearch need; `now` anchors
    /// recency.
    pub fn answer(
        &self,
        origin: &str,
        layers: Option<Layers<'_>>,
        now: Timestamp,
        prefetch: &dyn Prefetch,
    ) -> Result<Answer, ApiError> {
        let layers =
            || layers.ok_or_else(|| ApiError::Unavailable("no snapshot is loaded yet".into()));
        match self {
            Endpoint::Page(page) => {
                let results = match (page.search(), page.similar()) {
                    (Some(Ok(request)), Some(uri)) => Some(
                        crate::similar::similar(layers()?, uri, request, now, prefetch)?
                            .ok_or_else(|| "That post is not in the index.".to_owned()),
                    ),
                    (Some(Ok(request)), None) => Some(Ok(search::search_layers(
                        layers()?,
                        request,
                        now,
                        prefetch,
                    )?)),
                    (Some(Err(message)), _) => Some(Err(message.clone())),
                    (None, _) => None,
                };
                Ok(page::render(page, results.as_ref()))
            }
            Endpoint::Search(request) => {
                let page = search::search_layers(layers()?, request, now, prefetch)?;
                Ok(Answer::json(&page.to_json(request.format())))
            }
            Endpoint::Document(uris) => {
                let found = lookup::documents_by_uri_in(layers()?, uris)?
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                Ok(Answer::json(&json!(found)))
            }
            Endpoint::Tags(limit) => {
                let tags = lookup::top_tags_in(layers()?, *limit)?;
                Ok(Answer::json(&json!({ "tags": tags })))
            }
            Endpoint::Feed(request) => {
                let page = search::search_layers(layers()?, &request.search, now, prefetch)?;
                Ok(feed::render(origin, request, &page, now))
            }
            Endpoint::Similar { uri, search } => {
                let page = crate::similar::similar(layers()?, uri, search, now, prefetch)?
                    .ok_or(ApiError::NotFound)?;
                Ok(Answer::json(&page.to_json(search.format())))
            }
            Endpoint::OpenSearch => Ok(opensearch::render(origin)),
        }
    }
}

/// The body of `/health`: that `service` is up, the versions it speaks and the build (and delta)
/// it serves. A side adds what is its own.
pub fn health(service: &str, build: Option<&str>, delta: Option<&str>) -> serde_json::Value {
    json!({
        "status": "ok",
        "service": service,
        "version": env!("CARGO_PKG_VERSION"),
        "schema_version": crate::schema::SCHEMA_VERSION,
        "oldest_schema_version": crate::schema::OLDEST_READABLE_SCHEMA_VERSION,
        "scoring_version": crate::schema::SCORING_VERSION,
        "snapshot": build,
        "delta": delta,
    })
}

/// `application/x-www-form-urlencoded` text of `pairs`, for links the server writes.
fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::{ApiError, Endpoint, Route, route};

    fn parse(method: &str, target: &str) -> Result<Route, ApiError> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        route(method, path, form_urlencoded::parse(query.as_bytes()))
    }

    fn endpoint(target: &str) -> Endpoint {
        match parse("GET", target) {
            Ok(Route::Api(endpoint)) => *endpoint,
            other => panic!("{target} routed to {other:?}"),
        }
    }

    #[test]
    fn methods_and_paths_route_or_refuse() {
        assert!(matches!(parse("OPTIONS", "/search"), Ok(Route::Preflight)));
        assert_eq!(
            parse("POST", "/search?q=a").unwrap_err(),
            ApiError::MethodNotAllowed
        );
        assert_eq!(parse("GET", "/nope").unwrap_err(), ApiError::NotFound);
        assert!(matches!(parse("HEAD", "/health"), Ok(Route::Health)));
        assert!(matches!(endpoint("/opensearch.xml"), Endpoint::OpenSearch));
    }

    #[test]
    fn bad_parameters_are_400s_before_any_snapshot() {
        for target in [
            "/search",
            "/search?q=a&limit=0",
            "/feed?q=a&platform=myspace",
            "/document",
            "/tags?limit=1001",
            "/tags?limit=x",
            "/similar",
            "/similar?uri=https://example.com",
            "/similar?uri=at://x&limit=41",
        ] {
            let error = parse("GET", target).unwrap_err();
            assert_eq!(error.status(), 400, "{target}: {error}");
        }
        let Endpoint::Tags(limit) = endpoint("/tags") else {
            panic!("tags did not route");
        };
        assert_eq!(limit, 100);
    }

    #[test]
    fn the_page_says_why_when_no_build_can_be_read() {
        let page = endpoint("/?q=gardens");
        let answer = page
            .fallback(ApiError::Unavailable("no snapshot published yet".into()))
            .unwrap();
        assert!(
            answer
                .body
                .contains("search is starting up: no snapshot published yet")
        );
        assert_eq!(answer.cache_control, super::NO_STORE);
        let error = endpoint("/search?q=gardens")
            .fallback(ApiError::Unavailable("loading".into()))
            .unwrap_err();
        assert_eq!(error.status(), 503);
        let error = page.fallback(ApiError::Internal("bug".into())).unwrap_err();
        assert_eq!(error.status(), 500);
    }

    #[test]
    fn a_page_with_a_bad_query_still_routes() {
        let page = endpoint("/?q=%2A%2A%2A");
        assert!(matches!(page, Endpoint::Page(_)));
        assert!(!page.needs_snapshot(), "an invalid query searches nothing");
        assert!(!endpoint("/").needs_snapshot());
        assert!(endpoint("/?q=gardens").needs_snapshot());
    }
}
