//! `backfill --all` against loopback stand-ins of a relay, a PLC directory and several PDS hosts
//! (one slow, one down, one listing malformed records): discovery by collection, every
//! reachable record copied exactly once, failures reported and retried by the next run, live
//! revisions winning over listed copies, a kill -9 resumed to the same store as an
//! uninterrupted run, and a backfill beside a running worker.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pubsearch_native_worker::backfill::workflow::{self, AllRequest};
use pubsearch_native_worker::extract::{self, Extracted};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::store::{Batch, Change, Store};
use serde_json::{Value, json};
use support::atproto::{self, HostBehaviour, Network, RelayFaults, Repo};

const ENTRY: &str = "com.whtwnd.blog.entry";
const PUBLICATION: &str = "pub.leaflet.publication";
const STANDARD: &str = "site.standard.document";

const FAST: usize = 0;
const SLOW: usize = 1;
const DOWN: usize = 2;
const ODD: usize = 3;

fn repo(did: &str, host: usize, records: Vec<(&str, Vec<Value>)>) -> Repo {
    Repo {
        did: did.to_owned(),
        host,
        rev: "3lrepo0000000".to_owned(),
        records: records
            .into_iter()
            .map(|(collection, records)| (collection.to_owned(), records))
            .collect(),
    }
}

fn entries(did: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            atproto::entry(
                did,
                &format!("3k{i:08}"),
                &format!("Listed {i} of {did}"),
                &format!("backfilled words {i}"),
            )
        })
        .collect()
}

/// Twelve repos on a fast host (one with 230 entries: three pages), three on a slow one, two on
/// a host that is down, one whose PDS lists two malformed records, and one the PLC directory
/// does not know. The relay lists the fast repos under two collections.
fn small_network() -> (Vec<Repo>, BTreeMap<String, Vec<String>>) {
    let mut repos = Vec::new();
    for i in 0..12 {
        let did = format!("did:plc:fast{i:02}");
        let count = if i == 0 { 230 } else { 3 };
        repos.push(repo(
            &did,
            FAST,
            vec![
                (ENTRY, entries(&did, count)),
                (
                    PUBLICATION,
                    vec![atproto::publication(&did, "self", "Fast blog")],
                ),
            ],
        ));
    }
    for i in 0..3 {
        let did = format!("did:plc:slow{i}");
        repos.push(repo(&did, SLOW, vec![(ENTRY, entries(&did, 2))]));
    }
    for i in 0..2 {
        let did = format!("did:plc:down{i}");
        repos.push(repo(&did, DOWN, vec![(ENTRY, entries(&did, 2))]));
    }
    let odd = "did:plc:odd";
    let mut listed = vec![atproto::standard_document(
        odd,
        "3kgood",
        "Standard post",
        "standard words",
    )];
    listed.push(json!({"uri": format!("at://{odd}/{STANDARD}/3knovalue"), "cid": "bafy"}));
    listed.push(json!({"value": {"title": "no uri"}}));
    repos.push(repo(odd, ODD, vec![(STANDARD, listed)]));

    let fast: Vec<String> = (0..12).map(|i| format!("did:plc:fast{i:02}")).collect();
    let mut everyone: Vec<String> = repos.iter().map(|r| r.did.clone()).collect();
    everyone.retain(|did| did != odd);
    everyone.push("did:plc:unknown".to_owned());
    everyone.push("not-a-did".to_owned());
    let listing = BTreeMap::from([
        (PUBLICATION.to_owned(), fast),
        (ENTRY.to_owned(), everyone),
        (STANDARD.to_owned(), vec![odd.to_owned()]),
    ]);
    (repos, listing)
}

fn hosts() -> Vec<HostBehaviour> {
    let mut hosts = vec![HostBehaviour::default(); 4];
    hosts[SLOW].latency = Duration::from_millis(150);
    hosts[DOWN].down = true;
    hosts
}

fn request(network: &Network) -> AllRequest {
    AllRequest {
        relay: format!("{}/", network.relay).parse().unwrap(),
        plc_url: network.plc.parse().unwrap(),
        listing_limit: 5,
        concurrency: 8,
        per_host: 2,
        request_timeout_ms: 5_000,
        max_attempts: 3,
        retry_initial_ms: 10,
        retry_max_ms: 50,
        ..AllRequest::default()
    }
}

fn one_document(did: &str, rkey: &str, title: &str) -> Change {
    let body = json!({"title": title, "content": "live words", "visibility": "public"});
    let Ok(Extracted::Document(document)) = extract::extract(did, ENTRY, rkey, &body) else {
        panic!("a valid entry")
    };
    Change::Document {
        document,
        rev: "3lzzzlive0000".to_owned(),
    }
}

/// Documents and publications as `(uri, rev, deleted, title-or-name)`.
fn records(store: &Path) -> BTreeSet<String> {
    let conn = support::read_store(store);
    let mut rows = BTreeSet::new();
    for sql in [
        "SELECT uri, rev, deleted, title, content FROM documents",
        "SELECT uri, rev, deleted, name, '' FROM publications",
    ] {
        let mut statement = conn.prepare(sql).unwrap();
        let found = statement
            .query_map([], |row| {
                Ok(format!(
                    "{}|{}|{}|{}|{}",
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?
                ))
            })
            .unwrap();
        rows.extend(found.map(Result::unwrap));
    }
    rows
}

fn done_collections(store: &Path) -> BTreeSet<(String, String)> {
    let conn = support::read_store(store);
    let mut statement = conn
        .prepare("SELECT did, collection FROM backfill_progress WHERE done = 1")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_reachable_repo_once_reports_failures_and_retries_them_next_run() {
    let (repos, listing) = small_network();
    let faults = RelayFaults {
        rate_limit_first: true,
        fail_request: Some(2),
        ..RelayFaults::default()
    };
    let network = Network::start(repos, listing, hosts(), faults).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_path(dir.path())).unwrap();
    // The firehose already brought a newer edit of one listed entry and a delete of another.
    let edit = one_document("did:plc:fast01", "3k00000000", "Edited live");
    let delete = Change::Delete {
        did: "did:plc:fast01".to_owned(),
        collection: ENTRY.to_owned(),
        rkey: "3k00000001".to_owned(),
        rev: "3lzzzlive0000".to_owned(),
    };
    store
        .writer()
        .unwrap()
        .apply(&Batch {
            changes: vec![edit, delete],
            marks: Vec::new(),
        })
        .unwrap();

    let started = std::time::Instant::now();
    let progress = workflow::run_all(&store, dir.path(), request(&network), None, |_| {})
        .await
        .unwrap();
    let failed: BTreeSet<&str> = progress
        .copied
        .failed_repos
        .iter()
        .map(|(did, _)| did.as_str())
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from(["did:plc:down0", "did:plc:down1", "did:plc:unknown"]),
        "{:?}",
        progress.copied.failed_repos
    );
    assert_eq!(progress.failed, 3);
    for (did, reason) in &progress.copied.failed_repos {
        let expected = if did.contains("unknown") {
            "404"
        } else {
            "error sending request"
        };
        assert!(reason.contains(expected), "{did}: {reason}");
    }
    assert_eq!(progress.copied.malformed_records, 2);
    // The 429's Retry-After was honoured.
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Every page of every listing was read; every reachable page of records exactly once,
    // though the fast repos were listed under two collections.
    let traffic = network.traffic();
    let listings: BTreeSet<_> = traffic.listings.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        listings.iter().filter(|(c, _)| c == ENTRY).count(),
        4,
        "{listings:?}"
    );
    let requested = traffic.list_records.lock().unwrap().clone();
    let distinct: BTreeSet<_> = requested.iter().cloned().collect();
    assert_eq!(requested.len(), distinct.len(), "a page was fetched twice");
    assert_eq!(traffic.list_requests("did:plc:fast00", ENTRY), 3);
    for (host, most) in traffic.max_in_flight.lock().unwrap().iter() {
        assert!(*most <= 2, "host {host} had {most} requests in flight");
    }

    // What reached the store: every listed record of a reachable repo, less the malformed
    // ones, with the live edit and delete winning over the older listed copies.
    let rows = records(&store_path(dir.path()));
    let reachable = network
        .records()
        .into_iter()
        .filter(|(did, ..)| !did.contains("down"))
        .count();
    assert_eq!(
        rows.len(),
        reachable - 1,
        "{reachable} listed, one without a value"
    );
    let fast01 = |rkey: &str| {
        rows.iter()
            .find(|row| row.starts_with(&format!("at://did:plc:fast01/{ENTRY}/{rkey}|")))
            .unwrap()
            .clone()
    };
    assert!(
        fast01("3k00000000").contains("|0|Edited live|"),
        "{}",
        fast01("3k00000000")
    );
    assert!(
        fast01("3k00000001").contains("|1||"),
        "{}",
        fast01("3k00000001")
    );
    assert!(fast01("3k00000002").contains("|0|Listed 2 of did:plc:fast01|"));

    // The next run finds the host back up: it copies the repos that failed, and nothing else.
    network.bring_up(DOWN).await;
    let before = requested.len();
    let commits_before = traffic.latest_commits.lock().unwrap().len();
    let again = workflow::run_all(&store, dir.path(), request(&network), None, |_| {})
        .await
        .unwrap();
    assert_eq!(again.failed, 1, "{:?}", again.copied.failed_repos);
    assert_eq!(again.copied.failed_repos[0].0, "did:plc:unknown");
    let later = traffic.list_records.lock().unwrap()[before..].to_vec();
    assert!(!later.is_empty());
    assert!(
        later.iter().all(|(host, ..)| *host == DOWN),
        "only the failed repos are fetched again: {later:?}"
    );
    let mut commits = traffic.latest_commits.lock().unwrap()[commits_before..].to_vec();
    commits.sort();
    assert_eq!(commits, ["did:plc:down0", "did:plc:down1"]);
    let rows = records(&store_path(dir.path()));
    assert_eq!(rows.len(), network.records().len() - 1);
}

fn cli(data_dir: &Path, network: &Network, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_native-worker"));
    command
        .args([
            "backfill",
            "--all",
            "--relay",
            &network.relay,
            "--plc-url",
            &network.plc,
        ])
        .args([
            "--repos-per-page",
            "4",
            "--concurrency",
            "4",
            "--per-host",
            "2",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Forty repos with 150 entries each (two pages) on two hosts answering in 20 ms.
fn larger_network() -> (Vec<Repo>, BTreeMap<String, Vec<String>>) {
    let repos: Vec<Repo> = (0..40)
        .map(|i| {
            let did = format!("did:plc:writer{i:02}");
            let records = vec![
                (ENTRY, entries(&did, 150)),
                (
                    PUBLICATION,
                    vec![atproto::publication(&did, "self", "A blog")],
                ),
            ];
            repo(&did, i % 2, records)
        })
        .collect();
    let dids: Vec<String> = repos.iter().map(|r| r.did.clone()).collect();
    let listing = BTreeMap::from([
        (PUBLICATION.to_owned(), dids.clone()),
        (ENTRY.to_owned(), dids),
    ]);
    (repos, listing)
}

async fn start_larger() -> Network {
    let (repos, listing) = larger_network();
    let hosts = vec![
        HostBehaviour {
            latency: Duration::from_millis(20),
            down: false,
        };
        2
    ];
    Network::start(repos, listing, hosts, RelayFaults::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_without_refetching_and_matches_an_uninterrupted_one() {
    // Reference: one uninterrupted run, beside a worker following a live firehose on the same
    // data directory.
    let reference = tempfile::tempdir().unwrap();
    let network = start_larger().await;
    let events = support::jetstream_events(2_000);
    let jetstream =
        support::firehose::JetstreamServer::start(events, support::firehose::Faults::default())
            .await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args([
            "run",
            "--source",
            "jetstream",
            "--jetstream-url",
            &jetstream.url(),
        ])
        .args([
            "--admin-addr",
            "off",
            "--serve-addr",
            "off",
            "--publish-minutes",
            "0",
            "--delta-seconds",
            "0",
        ])
        .arg("--data-dir")
        .arg(reference.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let reference_store = store_path(reference.path());
    assert!(
        support::wait_for(Duration::from_secs(20), || support::cursor(
            &reference_store
        )
        .is_some())
        .await,
        "the worker ingests"
    );
    let output = cli(reference.path(), &network, &[]).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("80 repos listed"), "{summary}");
    assert!(summary.contains("6040 records"), "{summary}");
    let last = support::last_time_us(2_000);
    assert!(
        support::wait_for(Duration::from_secs(30), || support::cursor(
            &reference_store
        ) == Some(last))
        .await,
        "the worker kept ingesting beside the backfill"
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker still runs"
    );
    worker.kill().await.unwrap();
    let live_authors = |rows: &BTreeSet<String>| {
        rows.iter()
            .filter(|row| row.contains("did:plc:author"))
            .count()
    };
    let expected = records(&reference_store);
    assert!(live_authors(&expected) > 0);
    let expected: BTreeSet<String> = expected
        .into_iter()
        .filter(|row| row.contains("did:plc:writer"))
        .collect();
    assert_eq!(expected.len(), 40 * 151);

    // Killed with SIGKILL part way, then run again.
    let network = start_larger().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = cli(dir.path(), &network, &[]).spawn().unwrap();
    let traffic = network.traffic();
    assert!(
        support::wait_for(Duration::from_secs(30), || {
            traffic.list_records.lock().unwrap().len() >= 60
        })
        .await
    );
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let store = store_path(dir.path());
    let done_before = done_collections(&store);
    assert!(
        !done_before.is_empty() && done_before.len() < 40 * 5,
        "{}",
        done_before.len()
    );

    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(["flow", "--backfill", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("backfill.all")
            && listed.contains("running")
            && listed.contains("listing "),
        "{listed}"
    );

    let requests_before = traffic.list_records.lock().unwrap().len();
    let commits_before = traffic.latest_commits.lock().unwrap().len();
    let output = cli(dir.path(), &network, &[]).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let resumed = traffic.list_records.lock().unwrap()[requests_before..].to_vec();
    for (_, did, collection, _) in &resumed {
        assert!(
            !done_before.contains(&(did.clone(), collection.clone())),
            "{did} {collection} was finished before the kill but fetched again"
        );
    }
    let finished_repos: BTreeSet<&String> = done_before
        .iter()
        .filter(|(did, _)| {
            done_before.contains(&(did.clone(), ENTRY.to_owned()))
                && done_before.contains(&(did.clone(), PUBLICATION.to_owned()))
        })
        .map(|(did, _)| did)
        .collect();
    let commits = traffic.latest_commits.lock().unwrap()[commits_before..].to_vec();
    assert!(commits.iter().all(|did| !finished_repos.contains(did)));
    assert_eq!(records(&store), expected);
    assert_eq!(done_collections(&store).len(), 40 * 5);
}

#[test]
fn the_backfill_discovers_by_every_collection_the_firehose_follows_and_extract_reads() {
    use pubsearch_native_worker::backfill::COLLECTIONS;
    use pubsearch_native_worker::firehose::is_wanted;
    for collection in COLLECTIONS {
        assert!(is_wanted(collection), "{collection}");
        assert!(
            !matches!(
                extract::extract("did:plc:a", collection, "k", &json!({})),
                Err(extract::ExtractError::UnknownCollection(_))
            ),
            "{collection}"
        );
    }
    assert_eq!(
        AllRequest::default().collections,
        COLLECTIONS.map(String::from)
    );
}
