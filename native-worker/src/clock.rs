//! The wall clock, in the units the store, the firehose and manifests use.
//!
//! It never goes backwards within a process, and each process starts it no earlier than the
//! newest time its data directory recorded (the store's newest stamp, the workflow database's
//! newest update: [`raise_floor`]), so a system clock stepped back (NTP, a VM restored from a
//! snapshot) cannot make watermarks, build ids or manifest times go backwards. While the system
//! clock is behind, time stands still at the floor and moves on once it catches up.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// The newest time handed out or recorded (Unix µs).
static FLOOR: AtomicI64 = AtomicI64::new(0);

/// Shifts this process's clock by `PUBSEARCH_CLOCK_SKEW_MS` (may be negative): fault injection,
/// for testing a clock that jumped. Unset in production.
static SKEW_US: LazyLock<i64> = LazyLock::new(|| {
    std::env::var("PUBSEARCH_CLOCK_SKEW_MS")
        .ok()
        .and_then(|ms| ms.trim().parse::<i64>().ok())
        .map_or(0, |ms| ms.saturating_mul(1_000))
});

/// Now, in Unix microseconds (0 if the clock is before 1970); never less than anything returned
/// before or passed to [`raise_floor`].
pub fn now_us() -> i64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
        .saturating_add(*SKEW_US);
    let floor = FLOOR.fetch_max(system, Relaxed);
    floor.max(system)
}

/// Records that time `us` (Unix µs) has been seen, so the clock never reads earlier.
pub fn raise_floor(us: i64) {
    FLOOR.fetch_max(us, Relaxed);
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
