//! The wall clock, in the units the store, the firehose and manifests use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix microseconds (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
}

/// Now, in Unix milliseconds: workflow timers and instance timestamps.
pub fn now_ms() -> i64 {
    now_us() / 1_000
}

/// Now, as manifests and holds record it.
pub fn now() -> pubsearch_shared::Timestamp {
    pubsearch_shared::Timestamp::from_unix_millis(now_ms())
        .expect("the clock is within years 1-9999")
}
