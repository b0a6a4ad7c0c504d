//! The wall clock, in the unit the store and the firehose use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix microseconds (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
}
