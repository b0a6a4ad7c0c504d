//! A system clock stepped back between runs (NTP, a restored VM): watermarks, build ids and
//! manifest times still only move forward. Runs the binary, with the clock shifted by the
//! fault-injection knob `PUBSEARCH_CLOCK_SKEW_MS`.

mod support;

use std::path::Path;
use std::process::Command;

use pubsearch_shared::manifest::Manifest;

/// Runs `native-worker <args>` on `data` with the clock shifted by `skew_ms`.
fn native_worker(data: &Path, skew_ms: i64, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_native-worker"))
        .args(args)
        .env("PUBSEARCH_DATA_DIR", data)
        .env("PUBSEARCH_ADMIN_ADDR", "off")
        .env("PUBSEARCH_SERVE_ADDR", "off")
        .env("PUBSEARCH_PUBLISH_MINUTES", "0")
        .env("PUBSEARCH_CLOCK_SKEW_MS", skew_ms.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "native-worker {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ingests `events` and publishes a build; returns the channel's pointer.
fn ingest_and_publish(dir: &Path, events: usize, skew_ms: i64) -> Manifest {
    let data = dir.join("data");
    let file = dir.join(format!("events-{events}.ndjson"));
    std::fs::write(&file, support::jetstream_events(events).join("\n")).unwrap();
    native_worker(&data, skew_ms, &["run", "--replay", file.to_str().unwrap()]);
    let snapshots = dir.join("snapshots");
    native_worker(
        &data,
        skew_ms,
        &["publish", "--snapshot-dir", snapshots.to_str().unwrap()],
    );
    let pointer = std::fs::read(snapshots.join("channels/prod/latest.json")).unwrap();
    serde_json::from_slice(&pointer).unwrap()
}

#[test]
fn a_clock_stepped_back_never_takes_watermarks_or_build_ids_back() {
    let dir = tempfile::tempdir().unwrap();
    let before = ingest_and_publish(dir.path(), 200, 0);
    // Two hours back, as after a bad NTP step.
    let after = ingest_and_publish(dir.path(), 400, -2 * 3_600_000);
    assert!(
        after.counts.documents > before.counts.documents,
        "the second run ingested"
    );
    assert!(
        after.source_watermark_us > before.source_watermark_us,
        "watermark went back: {} then {}",
        before.source_watermark_us,
        after.source_watermark_us
    );
    assert!(
        after.build_id > before.build_id,
        "build id went back: {} then {}",
        before.build_id,
        after.build_id
    );
    assert!(after.created_at >= before.created_at);
}
