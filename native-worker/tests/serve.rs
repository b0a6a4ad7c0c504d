//! The native search server (ARCHITECTURE.md, "Serving"): real published builds in a directory,
//! real HTTP over loopback. It answers what the search core answers for the same build, with the
//! API's statuses and headers; it follows the channel's pointer to new builds and deltas and
//! keeps serving through a pointer it cannot load; `serve` and `run --serve-addr` wire it up.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pubsearch_native_worker::publish::objects::ObjectTarget;
use pubsearch_native_worker::publish::{self, PublishOptions};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::serve::{self, Builds};
use pubsearch_native_worker::store::Store;
use pubsearch_shared::api;
use pubsearch_shared::manifest::Manifest;
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::timestamp::Timestamp;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

fn options() -> PublishOptions {
    PublishOptions {
        channel: "prod".into(),
        force: false,
        keep: 5,
    }
}

/// A store from `events`, published once to `dir/published`.
async fn published(dir: &Path, events: &[String]) -> (ObjectTarget, Manifest) {
    support::replay(dir, events).await;
    let target = ObjectTarget::local(&dir.join("published")).unwrap();
    let store = Store::open(store_path(dir)).unwrap();
    let manifest = publish::publish_once(&store, dir, &target, &options())
        .await
        .unwrap();
    (target, manifest)
}

/// A server on a loopback port for `target`, stopped when the token is cancelled.
async fn start(target: ObjectTarget, cache: &Path) -> (String, CancellationToken) {
    let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let builds = Arc::new(Builds::new(target, "prod", cache, 2));
    let stop = CancellationToken::new();
    tokio::spawn(serve::serve(listener, builds, stop.clone()));
    (url, stop)
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn request(method: reqwest::Method, url: &str) -> Reply {
    let response = reqwest::Client::new()
        .request(method, url)
        .send()
        .await
        .unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn get(url: &str) -> Reply {
    request(reqwest::Method::GET, url).await
}

/// Polls `url` until `done` holds for its reply (10 s at most).
async fn get_until(url: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    for _ in 0..200 {
        let reply = get(url).await;
        if done(&reply) {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered as expected: {}", get(url).await.body);
}

/// What the search core answers for `params` on a build file: the reference.
fn reference(file: &Path, params: &[(&str, &str)]) -> Value {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    search::prepare(&conn).unwrap();
    let request = SearchRequest::from_params(params.iter().copied()).unwrap();
    let now = Timestamp::from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
    .unwrap();
    search::search(&conn, &request, now)
        .unwrap()
        .to_json(request.format())
}

fn query(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Three posts on one topic, worded differently, by three authors, after the generated ones.
fn topical_events(after_us: i64) -> Vec<String> {
    [
        ("did:plc:baker", "Keeping a sourdough starter alive", "Feed the starter flour and water daily; hydration and fermentation decide the loaf."),
        ("did:plc:miller", "Why my loaf collapsed", "Overproofed dough: fermentation ran long, the starter too lively, hydration too high."),
        ("did:plc:crumb", "Levain notes", "A stiff levain, lower hydration, slower fermentation: the loaf holds. Flour matters; so does the starter."),
    ]
    .iter()
    .enumerate()
    .map(|(i, (did, title, content))| {
        serde_json::json!({"did": did, "time_us": after_us + 1 + i as i64, "kind": "commit",
            "commit": {"rev": format!("3z{i:011}"), "operation": "create", "cid": format!("bafyz{i}"),
                "collection": "com.whtwnd.blog.entry", "rkey": format!("3zz{i}"),
                "record": {"$type": "com.whtwnd.blog.entry", "title": title, "content": content,
                    "createdAt": "2025-01-03T00:00:00.000Z", "visibility": "public"}}})
        .to_string()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_what_the_search_core_answers_with_the_api_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = support::jetstream_events(600);
    events.extend(topical_events(support::last_time_us(600)));
    let (target, manifest) = published(dir.path(), &events).await;
    let file = dir.path().join("published").join(&manifest.artifact);
    let (url, stop) = start(target, &dir.path().join("cache")).await;
    get_until(&format!("{url}/health"), |reply| {
        reply.json()["snapshot"] == manifest.build_id.as_str()
    })
    .await;

    for params in [
        vec![("q", "garden")],
        vec![("q", "river protocol"), ("limit", "5"), ("format", "v2")],
        vec![
            ("q", "\"signal harbor\""),
            ("offset", "10"),
            ("format", "v2"),
        ],
        vec![("q", "entry"), ("author", "did:plc:author3")],
    ] {
        let reply = get(&format!("{url}/search?{}", query(&params))).await;
        assert_eq!(reply.status, 200, "{params:?}: {}", reply.body);
        assert_eq!(reply.json(), reference(&file, &params), "{params:?}");
        assert_eq!(reply.header("cache-control"), api::CACHE_CONTROL);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("access-control-allow-origin"), "*");
        assert!(reply.header("server-timing").starts_with("search;dur="));
    }

    let first = reference(&file, &[("q", "garden"), ("limit", "1")]);
    let uri = first[0]["uri"].as_str().unwrap();
    let reply = get(&format!("{url}/document?{}", query(&[("uri", uri)]))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["documents"][0]["uri"], uri);
    let reply = get(&format!("{url}/tags?limit=3")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.json()["tags"].is_array());

    // Related posts: the others on the topic, never the post itself; the core's answer.
    let uri = "at://did:plc:baker/com.whtwnd.blog.entry/3zz0";
    let reply = get(&format!(
        "{url}/similar?{}",
        query(&[("uri", uri), ("format", "v2")])
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let related = reply.json()["results"].as_array().unwrap().clone();
    let first_two: Vec<&str> = related
        .iter()
        .take(2)
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert!(
        first_two.contains(&"at://did:plc:miller/com.whtwnd.blog.entry/3zz1"),
        "{related:?}"
    );
    assert!(
        first_two.contains(&"at://did:plc:crumb/com.whtwnd.blog.entry/3zz2"),
        "{related:?}"
    );
    assert!(related.iter().all(|r| r["uri"] != uri));
    let conn = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    search::prepare(&conn).unwrap();
    let asked = SearchRequest::from_params([("q", "x"), ("limit", "10")]).unwrap();
    let expected = pubsearch_shared::similar::similar(
        pubsearch_shared::delta::Layers::base(&conn),
        uri,
        &asked,
        pubsearch_shared::Timestamp::from_unix_millis(0).unwrap(),
        &search::NoPrefetch,
    )
    .unwrap()
    .unwrap();
    let uris = |results: &[Value]| -> Vec<String> {
        results
            .iter()
            .map(|r| r["uri"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected_uris: Vec<String> = expected.results.iter().map(|r| r.uri.clone()).collect();
    // (The reference ranks at the epoch: recency costs every result the same, so the set is
    // compared, not the order.)
    let mut got = uris(&related);
    got.sort();
    let mut want = expected_uris;
    want.sort();
    assert_eq!(got, want);
    let missing = get(&format!("{url}/similar?uri=at://did:plc:nobody/x/y")).await;
    assert_eq!(missing.status, 404);

    // Every refusal is the API's: a JSON error, never cached.
    for (method, path, status) in [
        (reqwest::Method::GET, "/search", 400),
        (reqwest::Method::GET, "/search?q=a&limit=999", 400),
        (reqwest::Method::GET, "/search?q=%2A%2A%2A%20()", 400),
        (reqwest::Method::GET, "/tags?limit=0", 400),
        (reqwest::Method::GET, "/document?uri=", 400),
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::POST, "/search?q=a", 405),
    ] {
        let reply = request(method.clone(), &format!("{url}{path}")).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{path}: {}", reply.body);
        assert_eq!(reply.header("cache-control"), "no-store", "{path}");
        if status == 405 {
            assert_eq!(reply.header("allow"), api::ALLOWED_METHODS);
        }
    }
    let reply = request(reqwest::Method::OPTIONS, &format!("{url}/search")).await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-methods"),
        api::ALLOWED_METHODS
    );

    // The feed: the most relevant matches, newest first, with links back to this server.
    let reply = get(&format!("{url}/feed?q=garden")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .starts_with("application/atom+xml")
    );
    let entries = reply.body.matches("<entry>").count();
    let expected = reference(&file, &[("q", "garden"), ("limit", "40")]);
    assert_eq!(entries, expected.as_array().unwrap().len());
    let updated: Vec<&str> = reply
        .body
        .split("<entry>")
        .skip(1)
        .map(|entry| {
            entry
                .split("<updated>")
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
        })
        .collect();
    assert!(
        updated.windows(2).all(|pair| pair[0] >= pair[1]),
        "{updated:?}"
    );
    assert!(
        reply
            .body
            .contains(&format!("href=\"{url}/feed?q=garden\""))
    );

    let reply = get(&format!("{url}/opensearch.xml")).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .body
            .contains(&format!("template=\"{url}/?q={{searchTerms}}\""))
    );

    // The page renders the first page of results itself, in the order /search gives.
    let reply = get(&format!("{url}/?q=garden")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").starts_with("text/html"));
    let expected = reference(&file, &[("q", "garden"), ("limit", "10")]);
    let titles: Vec<&str> = reply
        .body
        .split("<li class=\"result\">")
        .skip(1)
        .map(|item| item.split("class=\"title\"").nth(1).unwrap())
        .map(|rest| rest.split('>').nth(1).unwrap().split('<').next().unwrap())
        .collect();
    let expected: Vec<&str> = expected
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, expected);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_pointer_and_keeps_serving_through_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let published_dir = dir.path().join("published");
    let target = ObjectTarget::local(&published_dir).unwrap();
    let (url, stop) = start(target.clone(), &dir.path().join("cache")).await;

    // Nothing published: a 503 to retry, never an empty answer.
    let reply = get(&format!("{url}/search?q=garden")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), "5");
    assert!(get(&format!("{url}/health")).await.json()["snapshot"].is_null());
    // The page itself needs no build, and a search on it says why it has no results.
    assert_eq!(get(&format!("{url}/")).await.status, 200);
    let reply = get(&format!("{url}/?q=garden")).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("search is starting up"),
        "{}",
        reply.body
    );
    assert_eq!(reply.header("cache-control"), "no-store");

    let events = support::jetstream_events(300);
    support::replay(dir.path(), &events).await;
    let store = Store::open(store_path(dir.path())).unwrap();
    let base = publish::publish_once(&store, dir.path(), &target, &options())
        .await
        .unwrap();
    get_until(&format!("{url}/search?q=garden"), |reply| {
        reply.status == 200 && !reply.json().as_array().unwrap().is_empty()
    })
    .await;

    // A new post reaches the server in a delta.
    let mut more = support::jetstream_events(301);
    let last = more
        .pop()
        .unwrap()
        .replace("Entry 300", "Zanzibar lighthouse");
    drop(store);
    support::replay(dir.path(), &[last]).await;
    let store = Store::open(store_path(dir.path())).unwrap();
    let delta = publish::publish_delta_once(&store, dir.path(), &target, &options())
        .await
        .unwrap();
    let reply = get_until(&format!("{url}/search?q=zanzibar"), |reply| {
        reply.status == 200 && reply.json().as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert_eq!(reply.json()[0]["title"], "Zanzibar lighthouse (first)");
    let health = get(&format!("{url}/health")).await.json();
    assert_eq!(health["snapshot"], base.build_id.as_str());
    assert_eq!(health["delta"], delta.build_id.as_str());

    // A pointer to a build that is not there: logged and counted, the current pair serves on.
    let pointer = published_dir.join("channels/prod/latest.json");
    let good = std::fs::read(&pointer).unwrap();
    let mut bad: Value = serde_json::from_slice(&good).unwrap();
    bad["build_id"] = "20990101T000000Z-missing".into();
    bad["artifact"] = "builds/20990101T000000Z-missing/snapshot.db".into();
    std::fs::write(&pointer, serde_json::to_vec(&bad).unwrap()).unwrap();
    let stats = get_until(&format!("{url}/stats"), |reply| {
        reply.json()["snapshot"]["failures"].as_u64() > Some(0)
    })
    .await
    .json();
    assert!(
        stats["snapshot"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{stats}"
    );
    let reply = get(&format!("{url}/search?q=zanzibar")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json().as_array().unwrap().len(), 1);
    assert_eq!(
        get(&format!("{url}/health")).await.json()["snapshot"],
        base.build_id.as_str()
    );
    std::fs::write(&pointer, good).unwrap();
    stop.cancel();
}

/// A Jetstream identity event naming `did`'s handle.
fn identity(did: &str, handle: &str, time_us: i64) -> String {
    serde_json::json!({"did": did, "time_us": time_us, "kind": "identity",
        "identity": {"did": did, "handle": handle, "seq": 1, "time": "2025-01-01T00:00:00Z"}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_name_their_authors_and_follow_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = support::jetstream_events(300);
    let last = support::last_time_us(300);
    events.push(identity("did:plc:author3", "Author3.example.com", last + 1));
    let (target, _) = published(dir.path(), &events).await;
    let (url, stop) = start(target.clone(), &dir.path().join("cache")).await;
    let search = |author: &str| {
        let url = url.clone();
        let author = author.to_owned();
        async move {
            let reply = get_until(
                &format!("{url}/search?q=entry&limit=40&author={author}"),
                |reply| reply.status == 200,
            )
            .await;
            reply.json().as_array().unwrap().clone()
        }
    };
    let by_did = search("did:plc:author3").await;
    assert!(!by_did.is_empty());
    assert!(
        by_did.iter().all(|r| r["handle"] == "author3.example.com"),
        "{by_did:?}"
    );
    assert_eq!(search("author3.example.com").await, by_did);
    let others = search("did:plc:author4").await;
    assert!(
        others.iter().all(|r| r["handle"].is_null()),
        "no identity event, no handle"
    );

    // A rename reaches readers in the next delta: the new handle finds the author, the old
    // one no one.
    support::replay(
        dir.path(),
        &[identity("did:plc:author3", "a3.example.org", last + 2)],
    )
    .await;
    let store = Store::open(store_path(dir.path())).unwrap();
    publish::publish_delta_once(&store, dir.path(), &target, &options())
        .await
        .unwrap();
    get_until(
        &format!("{url}/search?q=entry&author=a3.example.org"),
        |reply| reply.status == 200 && !reply.json().as_array().unwrap().is_empty(),
    )
    .await;
    let renamed = search("a3.example.org").await;
    assert_eq!(renamed.len(), by_did.len());
    assert!(renamed.iter().all(|r| r["handle"] == "a3.example.org"));
    assert!(search("author3.example.com").await.is_empty());
    // The page shows the handle and links to the author's other posts by it.
    let page = get(&format!("{url}/?q=entry&author=a3.example.org")).await;
    assert!(page.body.contains(">@a3.example.org</a>"), "{}", page.body);
    stop.cancel();
}

/// Starts the binary with `args` and returns it with the URL it logs once listening.
async fn spawn_listening(args: &[&str], data: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(args)
        .env("PUBSEARCH_DATA_DIR", data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("search server listening") {
                let at = line.find("url=http://").expect("the log names the URL") + 4;
                return line[at..].split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the worker exited before listening");
    })
    .await
    .expect("the worker listens within a minute");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url.trim_end_matches('/').to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_and_run_serve_addr_give_a_search_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (_, manifest) = published(dir.path(), &support::jetstream_events(300)).await;
    let published_dir = dir.path().join("published");
    let (mut child, url) = spawn_listening(
        &[
            "serve",
            "--serve-addr",
            "127.0.0.1:0",
            "--snapshot-dir",
            published_dir.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    let reply = get_until(&format!("{url}/health"), |reply| {
        reply.json()["snapshot"] == manifest.build_id.as_str()
    })
    .await;
    assert_eq!(reply.json()["service"], "pubsearch-native");
    let reply = get(&format!("{url}/search?q=garden&limit=3")).await;
    assert_eq!(reply.json().as_array().unwrap().len(), 3);
    child.kill().await.unwrap();

    // A directory that does not exist is refused, by name.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(["serve", "--serve-addr", "127.0.0.1:0", "--snapshot-dir"])
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no published directory"));

    // `run` publishes and serves what it publishes: a search engine from one command.
    let live = tempfile::tempdir().unwrap();
    let jetstream = support::firehose::JetstreamServer::start(
        support::jetstream_events(500),
        support::firehose::Faults::default(),
    )
    .await;
    let jetstream_url = jetstream.url();
    let (mut worker, url) = spawn_listening(
        &[
            "run",
            "--source",
            "jetstream",
            "--jetstream-url",
            &jetstream_url,
            "--admin-addr",
            "off",
            "--serve-addr",
            "127.0.0.1:0",
            "--publish-minutes",
            "1",
            "--delta-seconds",
            "1",
        ],
        live.path(),
    )
    .await;
    let mut found = 0;
    for _ in 0..300 {
        let reply = get(&format!("{url}/search?q=garden&format=v2")).await;
        if reply.status == 200 {
            found = reply.json()["results"].as_array().unwrap().len();
            if found > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found > 0, "run never served what it published");
    worker.kill().await.unwrap();
}
