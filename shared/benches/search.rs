//! Native query latency of the search core on a snapshot file, for comparison with the edge.
//!
//! `SNAPSHOT=path/to/snapshot.db QUERIES='ka lo|mi|ra' cargo bench -p pubsearch-shared --bench search`
//! prints one JSON line per query: `{"query", "mean_us", "p50_us", "p99_us"}`.
//!
//! With `SERVE=1` it instead answers one query per stdin line, printing the microseconds that
//! search took, so a driver can interleave native and Worker queries: both sides then see the
//! same moments of machine noise, and their ratio holds still from run to run.

use std::io::{BufRead, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pubsearch_shared::Timestamp;
use pubsearch_shared::search::{self, SearchRequest};
use rusqlite::Connection;

fn main() {
    let Ok(path) = std::env::var("SNAPSHOT") else {
        eprintln!("set SNAPSHOT to a snapshot file (and QUERIES to |-separated queries)");
        return;
    };
    // Same setup as the edge: the whole file in memory, read-only, small page cache.
    let bytes = std::fs::read(&path).expect("reading the snapshot");
    let mut conn = Connection::open_in_memory().unwrap();
    conn.deserialize_read_exact(rusqlite::MAIN_DB, &bytes[..], bytes.len(), true)
        .unwrap();
    conn.pragma_update(None, "cache_size", -2048).unwrap();
    search::prepare(&conn).unwrap();
    let now = Timestamp::from_unix_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
    .unwrap();
    let time_one = |query: &str| {
        let request = SearchRequest::from_params([("q", query), ("format", "v2")]).unwrap();
        let started = Instant::now();
        std::hint::black_box(search::search(&conn, &request, now).unwrap());
        started.elapsed().as_micros()
    };

    if std::env::var_os("SERVE").is_some() {
        let mut out = std::io::stdout().lock();
        for line in std::io::stdin().lock().lines() {
            writeln!(out, "{}", time_one(&line.unwrap())).unwrap();
            out.flush().unwrap();
        }
        return;
    }

    let queries = std::env::var("QUERIES").unwrap_or_else(|_| "ka|mi lo|\"ra ten\"".into());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    for query in queries.split('|') {
        let mut samples: Vec<u128> = (0..rounds).map(|_| time_one(query)).collect();
        samples.sort();
        let mean = samples.iter().sum::<u128>() as f64 / samples.len() as f64;
        println!(
            "{}",
            serde_json::json!({"query": query, "mean_us": mean, "p50_us": samples[samples.len() / 2],
                               "p99_us": samples[samples.len() * 99 / 100]})
        );
    }
}
