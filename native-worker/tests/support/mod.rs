//! Shared test support: firehose stand-ins, a small event corpus and store inspection.
#![allow(dead_code)]

pub mod atproto;
pub mod firehose;
pub mod hrana_server;

use std::path::Path;
use std::time::{Duration, Instant};

use pubsearch_native_worker::ingest::StatsSnapshot;
use pubsearch_native_worker::run::{self, RunOptions, Source};
use pubsearch_native_worker::store::replica::{RowImage, Table};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The first event time in generated corpora (Unix µs).
pub const START_US: i64 = 1_760_000_000_000_000;
/// Time between generated events: 20 events/s, so a 5 s reconnect rewind re-sends ~100.
pub const SPACING_US: i64 = 50_000;

/// A deterministic Jetstream event stream: whitewind entries and leaflet documents across a few
/// authors, with updates (newer rev, same rkey), deletes, and some malformed records.
/// Returns the NDJSON lines in time order.
pub fn jetstream_events(count: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(count);
    for i in 0..count {
        let time_us = START_US + i as i64 * SPACING_US;
        let did = format!("did:plc:author{}", i % 7);
        let rev = format!("3l{:011}", i);
        // Every 10th event updates an earlier record, every 13th deletes one, every 50th is malformed.
        let (operation, rkey, record) = if i % 50 == 49 {
            (
                "create",
                format!("3k{:08}", i),
                Some(json!({"$type": "com.whtwnd.blog.entry", "content": 42})),
            )
        } else if i % 13 == 12 {
            ("delete", format!("3k{:08}", i - 12), None)
        } else if i % 10 == 9 {
            (
                "update",
                format!("3k{:08}", i - 9),
                Some(entry(i, "revised")),
            )
        } else {
            ("create", format!("3k{:08}", i), Some(entry(i, "first")))
        };
        let did = if operation == "create" {
            did
        } else {
            format!("did:plc:author{}", rkey_index(&rkey) % 7)
        };
        let mut commit = json!({"rev": rev, "operation": operation, "collection": "com.whtwnd.blog.entry", "rkey": rkey});
        if let Some(record) = record {
            commit["record"] = record;
            commit["cid"] = json!(format!("bafy{i}"));
        }
        lines.push(
            json!({"did": did, "time_us": time_us, "kind": "commit", "commit": commit}).to_string(),
        );
    }
    lines
}

fn rkey_index(rkey: &str) -> usize {
    rkey.trim_start_matches("3k").parse().unwrap()
}

fn entry(i: usize, version: &str) -> serde_json::Value {
    let words = [
        "garden", "river", "protocol", "essay", "bread", "winter", "signal", "harbor",
    ];
    let body: Vec<&str> = (0..20 + i % 40)
        .map(|j| words[(i * 7 + j * 3) % words.len()])
        .collect();
    json!({
        "$type": "com.whtwnd.blog.entry",
        "title": format!("Entry {i} ({version})"),
        "content": format!("# Entry {i}\n\n{}", body.join(" ")),
        "createdAt": "2025-01-02T03:04:05.000Z",
        "visibility": "public",
    })
}

/// The time of the last event in a corpus of `count`.
pub fn last_time_us(count: usize) -> i64 {
    START_US + (count as i64 - 1) * SPACING_US
}

/// Opens a store read-only, for inspection while a worker may be writing.
pub fn read_store(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Every document URI the store at `path` has (tombstones included), in order.
pub fn document_uris(path: &Path) -> Vec<String> {
    read_store(path)
        .prepare("SELECT uri FROM documents ORDER BY uri")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Everything a store says about records, minus write-time bookkeeping (ids, indexed_at), in a
/// stable order: two runs over the same events must produce equal dumps.
pub fn dump(path: &Path) -> Vec<String> {
    let conn = read_store(path);
    let rows: Vec<String> = conn
        .prepare(
            "SELECT uri, rev, deleted, title, content, coalesce(description, ''), tags, coalesce(created_at, ''),
                    searchable, coalesce(content_hash, '') FROM documents ORDER BY uri",
        )
        .unwrap()
        .query_map([], |row| {
            Ok((0..10)
                .map(|i| row.get_ref(i).map(|v| format!("{v:?}")))
                .collect::<Result<Vec<_>, _>>()?
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// The store's Jetstream cursor, if any.
pub fn cursor(path: &Path) -> Option<i64> {
    if !path.exists() {
        return None;
    }
    let conn = read_store(path);
    conn.query_row(
        "SELECT position FROM cursors WHERE source = 'jetstream'",
        [],
        |row| row.get(0),
    )
    .ok()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Run options for ingesting from `source` into `data_dir`, with no admin endpoint or publishing.
pub fn run_options(data_dir: &Path, source: Source) -> RunOptions {
    RunOptions::new(data_dir, source)
}

/// Writes `events` to a file in `data_dir` and replays it into the store there, uninterrupted.
pub async fn replay(data_dir: &Path, events: &[String]) -> StatsSnapshot {
    let file = data_dir.join("events.ndjson");
    std::fs::write(&file, events.join("\n")).unwrap();
    run::run(
        run_options(data_dir, Source::Replay(file)),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// A plain HTTP/1.0 GET over loopback, returning (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// An account row image at `version`, as Turso or the upstream queue carries it (its
/// watermark is whatever the applying side stamps).
pub fn account_image(did: &str, active: bool, version: i64) -> RowImage {
    RowImage {
        table: Table::Accounts,
        values: vec![
            Value::Text(did.into()),
            Value::Null,
            Value::Integer(i64::from(active)),
            Value::Null,
            Value::Integer(version),
            Value::Integer(1),
        ],
    }
}

/// An admin endpoint's state over `sink`'s counters, requiring `token` if given.
pub fn admin_state(
    sink: &pubsearch_native_worker::ingest::Sink,
    token: Option<&str>,
) -> pubsearch_native_worker::admin::AdminState {
    pubsearch_native_worker::admin::AdminState {
        source: "test",
        stats: std::sync::Arc::clone(sink.stats()),
        queue: sink.queue_probe(),
        started: Instant::now(),
        requests: Default::default(),
        live_build: Default::default(),
        upstream: None,
        token: token.map(std::sync::Arc::from),
    }
}

/// A size-limited filesystem (a tmpfs) mounted at a directory, for full-disk tests; unmounted
/// (lazily, in case a failed test's worker still holds files) when dropped.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`700k`, `64m`) at `dir`. Mounting needs root: elsewhere this
    /// says loudly, past the harness's capture, that the test is skipped, and returns `None`.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED a full-disk test: mounting a tmpfs needs root (the store-level \
                 full-disk test in tests/store.rs runs everywhere)\n"
            );
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }

    /// Space returns: the filesystem grows to `size`.
    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remounting {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
