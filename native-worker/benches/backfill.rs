//! `backfill --all` against loopback stand-ins answering every request in 50 ms: a relay
//! listing 2,000 repos, a PLC directory, and 10 PDS hosts holding 25 records a repo.
//!
//! Each row runs the real command as a child process and reports its wall time, records/s and
//! the CPU time it used (getrusage of the child), beside the floor the stand-ins' latency and
//! the concurrency limits allow: with no worker overhead at all, a run could take no less than
//! the largest of
//! - repos × (requests per repo × latency) / repos in flight,
//! - PDS requests × latency / (hosts × per-host limit),
//! - PLC lookups × latency / per-host limit (the directory is one host),
//!
//! plus the relay's listing pages one after another. `floor/wall` near 100% means the run is
//! bound by the network's latency and the limits, not by the worker.
//!
//! `cargo bench -p pubsearch-native-worker --bench backfill`

#[allow(dead_code)]
#[path = "../tests/support/atproto.rs"]
mod atproto;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atproto::{HostBehaviour, Network, RelayFaults, Repo};

const REPOS: usize = 2_000;
const RECORDS_PER_REPO: usize = 25;
const HOSTS: usize = 10;
const LATENCY: Duration = Duration::from_millis(50);
const REPOS_PER_PAGE: usize = 500;
const ENTRY: &str = "com.whtwnd.blog.entry";
/// getLatestCommit, then listRecords once per indexed collection (25 records fit one page).
const PDS_REQUESTS_PER_REPO: usize = 1 + 5;

fn network() -> (Vec<Repo>, BTreeMap<String, Vec<String>>) {
    let repos: Vec<Repo> = (0..REPOS)
        .map(|i| {
            let did = format!("did:plc:bench{i:05}");
            let entries = (0..RECORDS_PER_REPO)
                .map(|n| {
                    atproto::entry(
                        &did,
                        &format!("3k{n:08}"),
                        &format!("Post {n} by writer {i}"),
                        &format!("Words about topic {} and more text {n}.", i % 97),
                    )
                })
                .collect();
            Repo {
                did,
                host: i % HOSTS,
                rev: "3lbench000000".into(),
                records: BTreeMap::from([(ENTRY.to_owned(), entries)]),
            }
        })
        .collect();
    let listing = BTreeMap::from([(
        ENTRY.to_owned(),
        repos.iter().map(|repo| repo.did.clone()).collect(),
    )]);
    (repos, listing)
}

/// CPU seconds (user + system) of every child waited for so far.
fn children_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid target.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The least time the limits allow (see the module doc).
fn floor(concurrency: usize, per_host: usize) -> f64 {
    let latency = LATENCY.as_secs_f64();
    let per_repo = (1 + PDS_REQUESTS_PER_REPO) as f64 * latency;
    let in_flight = REPOS as f64 * per_repo / concurrency as f64;
    let pds = (REPOS * PDS_REQUESTS_PER_REPO) as f64 * latency / (HOSTS * per_host) as f64;
    let plc = REPOS as f64 * latency / per_host as f64;
    let listing_pages = REPOS.div_ceil(REPOS_PER_PAGE) + 4;
    in_flight.max(pds).max(plc) + listing_pages as f64 * latency
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (repos, listing) = network();
    let hosts = vec![
        HostBehaviour {
            latency: LATENCY,
            down: false,
        };
        HOSTS
    ];
    let faults = RelayFaults {
        latency: LATENCY,
        ..RelayFaults::default()
    };
    let network = runtime.block_on(Network::start(repos, listing, hosts, faults));
    println!(
        "backfill --all: {REPOS} repos x {RECORDS_PER_REPO} records on {HOSTS} PDS hosts, \
         {} ms per request (relay, PLC, PDS); {} cores",
        LATENCY.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>11} {:>8} {:>8} {:>8} {:>10} {:>9} {:>10} {:>10} {:>9}",
        "concurrency",
        "per-host",
        "records",
        "wall s",
        "records/s",
        "floor s",
        "floor/wall",
        "worker CPU",
        "CPU/wall"
    );
    for (concurrency, per_host) in [(16, 4), (64, 8), (128, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let cpu_before = children_cpu();
        let started = Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_native-worker"))
            .args(["backfill", "--all", "--relay", &network.relay])
            .args(["--plc-url", &network.plc])
            .args(["--repos-per-page", &REPOS_PER_PAGE.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--per-host", &per_host.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu_before;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let store = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        let records: i64 = store
            .query_row("SELECT count(*) FROM documents", [], |row| row.get(0))
            .unwrap();
        assert_eq!(records as usize, REPOS * RECORDS_PER_REPO);
        let floor = floor(concurrency, per_host);
        println!(
            "{concurrency:>11} {per_host:>8} {records:>8} {wall:>8.1} {:>10.0} {floor:>9.1} {:>9.0}% {cpu:>9.2}s {:>8.1}%",
            records as f64 / wall,
            100.0 * floor / wall,
            100.0 * cpu / wall,
        );
    }
}
