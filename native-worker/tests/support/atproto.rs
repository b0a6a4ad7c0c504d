//! Loopback stand-ins for the part of the ATProto network a backfill reads, written from the
//! XRPC definitions: a relay (`com.atproto.sync.listReposByCollection`, cursor-paged), a PLC
//! directory (DID documents naming each repo's PDS) and PDS hosts
//! (`com.atproto.sync.getLatestCommit`, `com.atproto.repo.listRecords`).
//!
//! Failure modes, as real servers show them: a relay answering 429 with `Retry-After` or a 500
//! for one page, a slow host (fixed latency per request), a host that is down (connection
//! refused), and records a PDS lists that are malformed. Every host counts its requests and
//! the most it had in flight at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// One listRecords request: (host index, did, collection, cursor).
pub type ListRecords = (usize, String, String, Option<String>);

/// What the servers were asked, and how busy they got.
#[derive(Default)]
pub struct Traffic {
    /// listRecords requests: (host index, did, collection, cursor).
    pub list_records: Mutex<Vec<ListRecords>>,
    /// getLatestCommit requests by DID.
    pub latest_commits: Mutex<Vec<String>>,
    /// Relay listing requests answered with repos (collection, cursor).
    pub listings: Mutex<Vec<(String, Option<String>)>>,
    /// PLC directory lookups.
    pub resolutions: AtomicUsize,
    /// Requests in flight per PDS host now, and the most seen at once.
    in_flight: Mutex<HashMap<usize, usize>>,
    pub max_in_flight: Mutex<HashMap<usize, usize>>,
}

impl Traffic {
    /// listRecords requests for (did, collection).
    pub fn list_requests(&self, did: &str, collection: &str) -> usize {
        self.list_records
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, d, c, _)| d == did && c == collection)
            .count()
    }

    fn enter(&self, host: usize) {
        let mut in_flight = self.in_flight.lock().unwrap();
        let now = in_flight.entry(host).or_default();
        *now += 1;
        let mut max = self.max_in_flight.lock().unwrap();
        let most = max.entry(host).or_default();
        *most = (*most).max(*now);
    }

    fn leave(&self, host: usize) {
        *self.in_flight.lock().unwrap().entry(host).or_default() -= 1;
    }
}

/// One repo: its DID, the PDS host (index) that holds it and its records by collection.
#[derive(Clone)]
pub struct Repo {
    pub did: String,
    pub host: usize,
    pub rev: String,
    pub records: BTreeMap<String, Vec<Value>>,
}

/// How a PDS host behaves.
#[derive(Clone, Copy, Default)]
pub struct HostBehaviour {
    /// Added to every request.
    pub latency: Duration,
    /// Refuses connections (nothing listens on its port) until [`Network::bring_up`].
    pub down: bool,
}

/// How the relay misbehaves.
#[derive(Clone, Copy, Default)]
pub struct RelayFaults {
    /// Answer the first listing request with 429 and `Retry-After: 1`.
    pub rate_limit_first: bool,
    /// Answer the n-th listing request (0-based) with a 500, once.
    pub fail_request: Option<usize>,
    /// Added to every relay and PLC directory request.
    pub latency: Duration,
}

#[derive(Clone)]
struct Shared {
    repos: Arc<HashMap<String, Repo>>,
    /// Per collection, the DIDs the relay lists, in listing order.
    listing: Arc<BTreeMap<String, Vec<String>>>,
    hosts: Arc<Mutex<Vec<String>>>,
    behaviour: Arc<Vec<HostBehaviour>>,
    relay_faults: RelayFaults,
    relay_requests: Arc<AtomicUsize>,
    rate_limited: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
}

/// The running stand-ins.
pub struct Network {
    pub relay: String,
    pub plc: String,
    shared: Shared,
    /// Ports of hosts started down, to bring them up on.
    down_ports: Mutex<HashMap<usize, u16>>,
    servers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Network {
    /// Starts a relay listing `listing` (collection → DIDs, which may repeat across
    /// collections), a PLC directory and one PDS per entry of `hosts` serving `repos`.
    pub async fn start(
        repos: Vec<Repo>,
        listing: BTreeMap<String, Vec<String>>,
        hosts: Vec<HostBehaviour>,
        relay_faults: RelayFaults,
    ) -> Network {
        let shared = Shared {
            repos: Arc::new(repos.into_iter().map(|r| (r.did.clone(), r)).collect()),
            listing: Arc::new(listing),
            hosts: Arc::new(Mutex::new(vec![String::new(); hosts.len()])),
            behaviour: Arc::new(hosts.clone()),
            relay_faults,
            relay_requests: Arc::default(),
            rate_limited: Arc::default(),
            traffic: Arc::default(),
        };
        let network = Network {
            relay: String::new(),
            plc: String::new(),
            shared,
            down_ports: Mutex::default(),
            servers: Mutex::default(),
        };
        let mut network = network;
        for (index, behaviour) in hosts.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            network.shared.hosts.lock().unwrap()[index] = format!("http://{address}");
            if behaviour.down {
                network
                    .down_ports
                    .lock()
                    .unwrap()
                    .insert(index, address.port());
                drop(listener);
            } else {
                network.serve_host(index, listener);
            }
        }
        let relay = Router::new()
            .route(
                "/xrpc/com.atproto.sync.listReposByCollection",
                get(list_repos),
            )
            .route("/plc/{did}", get(did_document))
            .with_state(network.shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        network
            .servers
            .lock()
            .unwrap()
            .push(tokio::spawn(async move {
                axum::serve(listener, relay).await.unwrap()
            }));
        network.relay = base.clone();
        network.plc = format!("{base}/plc/");
        network
    }

    fn serve_host(&self, index: usize, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/xrpc/com.atproto.sync.getLatestCommit", get(latest_commit))
            .route("/xrpc/com.atproto.repo.listRecords", get(list_records))
            .with_state((self.shared.clone(), index));
        self.servers.lock().unwrap().push(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap()
        }));
    }

    /// Starts a host that was down, on the port its repos' DID documents name.
    pub async fn bring_up(&self, index: usize) {
        let port = self.down_ports.lock().unwrap().remove(&index).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        self.serve_host(index, listener);
    }

    pub fn traffic(&self) -> &Traffic {
        &self.shared.traffic
    }

    /// Every repo's records, as (did, collection, rkey, record).
    pub fn records(&self) -> Vec<(String, String, String, Value)> {
        let mut all = Vec::new();
        for repo in self.shared.repos.values() {
            for (collection, records) in &repo.records {
                for entry in records {
                    let Some(uri) = entry["uri"].as_str() else {
                        continue;
                    };
                    let rkey = uri.rsplit('/').next().unwrap().to_owned();
                    all.push((
                        repo.did.clone(),
                        collection.clone(),
                        rkey,
                        entry["value"].clone(),
                    ));
                }
            }
        }
        all
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for server in self.servers.lock().unwrap().drain(..) {
            server.abort();
        }
    }
}

/// A listed whitewind entry.
pub fn entry(did: &str, rkey: &str, title: &str, content: &str) -> Value {
    json!({"uri": format!("at://{did}/com.whtwnd.blog.entry/{rkey}"), "cid": "bafyentry",
           "value": {"$type": "com.whtwnd.blog.entry", "title": title, "content": content,
                     "visibility": "public", "createdAt": "2025-01-01T00:00:00Z"}})
}

/// A listed leaflet publication.
pub fn publication(did: &str, rkey: &str, name: &str) -> Value {
    json!({"uri": format!("at://{did}/pub.leaflet.publication/{rkey}"), "cid": "bafypub",
           "value": {"$type": "pub.leaflet.publication", "name": name,
                     "base_path": format!("{rkey}.leaflet.pub")}})
}

/// A listed site.standard document.
pub fn standard_document(did: &str, rkey: &str, title: &str, text: &str) -> Value {
    json!({"uri": format!("at://{did}/site.standard.document/{rkey}"), "cid": "bafydoc",
           "value": {"$type": "site.standard.document", "title": title, "textContent": text,
                     "site": format!("at://{did}/site.standard.publication/self"),
                     "publishedAt": "2025-02-01T00:00:00Z"}})
}

async fn list_repos(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let faults = shared.relay_faults;
    tokio::time::sleep(faults.latency).await;
    let request = shared.relay_requests.fetch_add(1, Ordering::SeqCst);
    if faults.rate_limit_first && !shared.rate_limited.swap(true, Ordering::SeqCst) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "rate limited",
        )
            .into_response();
    }
    if faults.fail_request == Some(request) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    let Some(collection) = query.get("collection") else {
        return (StatusCode::BAD_REQUEST, "collection is required").into_response();
    };
    let cursor = query.get("cursor").cloned();
    shared
        .traffic
        .listings
        .lock()
        .unwrap()
        .push((collection.clone(), cursor.clone()));
    let all = shared.listing.get(collection).cloned().unwrap_or_default();
    let start: usize = cursor.as_deref().map_or(0, |c| c.parse().unwrap());
    let limit: usize = query.get("limit").map_or(500, |l| l.parse().unwrap());
    let repos: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|did| json!({"did": did}))
        .collect();
    let next = (start + limit < all.len()).then(|| (start + limit).to_string());
    Json(json!({"repos": repos, "cursor": next})).into_response()
}

async fn did_document(State(shared): State<Shared>, Path(did): Path<String>) -> Response {
    tokio::time::sleep(shared.relay_faults.latency).await;
    shared.traffic.resolutions.fetch_add(1, Ordering::SeqCst);
    let Some(repo) = shared.repos.get(&did) else {
        return (StatusCode::NOT_FOUND, "DID not registered").into_response();
    };
    let endpoint = shared.hosts.lock().unwrap()[repo.host].clone();
    Json(json!({"id": did, "service": [{"id": "#atproto_pds",
        "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}]}))
    .into_response()
}

/// Counts a request in flight on `host` for as long as it lives.
struct InFlight<'a>(&'a Traffic, usize);

impl<'a> InFlight<'a> {
    fn enter(traffic: &'a Traffic, host: usize) -> Self {
        traffic.enter(host);
        InFlight(traffic, host)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

async fn latest_commit(
    State((shared, host)): State<(Shared, usize)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let _counted = InFlight::enter(&shared.traffic, host);
    tokio::time::sleep(shared.behaviour[host].latency).await;
    let did = query.get("did").cloned().unwrap_or_default();
    shared
        .traffic
        .latest_commits
        .lock()
        .unwrap()
        .push(did.clone());
    match shared.repos.get(&did).filter(|repo| repo.host == host) {
        Some(repo) => Json(json!({"cid": "bafyroot", "rev": repo.rev})).into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "RepoNotFound", "message": "Could not find repo"})),
        )
            .into_response(),
    }
}

async fn list_records(
    State((shared, host)): State<(Shared, usize)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let _counted = InFlight::enter(&shared.traffic, host);
    tokio::time::sleep(shared.behaviour[host].latency).await;
    let (Some(did), Some(collection)) = (query.get("repo"), query.get("collection")) else {
        return (StatusCode::BAD_REQUEST, "repo and collection are required").into_response();
    };
    let cursor = query.get("cursor").cloned();
    shared.traffic.list_records.lock().unwrap().push((
        host,
        did.clone(),
        collection.clone(),
        cursor.clone(),
    ));
    let Some(repo) = shared.repos.get(did).filter(|repo| repo.host == host) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "RepoNotFound", "message": "Could not find repo"})),
        )
            .into_response();
    };
    let all = repo.records.get(collection).cloned().unwrap_or_default();
    let start: usize = cursor.as_deref().map_or(0, |c| c.parse().unwrap());
    let limit: usize = query.get("limit").map_or(50, |l| l.parse().unwrap());
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let next = (start + limit < all.len()).then(|| (start + limit).to_string());
    Json(json!({"records": page, "cursor": next})).into_response()
}
