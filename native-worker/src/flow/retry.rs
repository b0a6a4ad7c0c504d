//! Activity retry policies: how many attempts, how long between them, how long each may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backoff {
    Fixed {
        delay_ms: u64,
    },
    /// `initial_ms × 2^(attempt−1)`, capped at `max_ms`.
    Exponential {
        initial_ms: u64,
        max_ms: u64,
    },
}

/// Bounded retries for an activity: a failing activity ends in a recorded failure after
/// `max_attempts`, it never spins forever.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts including the first; at least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Per-attempt limit; a timed-out attempt counts as a failed one.
    pub timeout_ms: Option<u64>,
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart, no per-attempt limit.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial_ms: 100,
                max_ms: 10_000,
            },
            timeout_ms: None,
        }
    }
}

impl RetryPolicy {
    /// A single attempt: failures are reported to the orchestration at once.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// `attempts` tries with exponential backoff starting at `initial`.
    pub fn exponential(attempts: u32, initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts: attempts.max(1),
            backoff: Backoff::Exponential {
                initial_ms: initial.as_millis() as u64,
                max_ms: max.as_millis() as u64,
            },
            timeout_ms: None,
        }
    }

    /// `attempts` tries, `delay` apart.
    pub fn fixed(attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: attempts.max(1),
            backoff: Backoff::Fixed {
                delay_ms: delay.as_millis() as u64,
            },
            timeout_ms: None,
        }
    }

    /// Limits each attempt to `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis() as u64);
        self
    }

    /// The wait after failed attempt number `attempt` (1-based), or `None` when it was the last.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let ms = match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Exponential { initial_ms, max_ms } => {
                let factor = 1u64 << (attempt - 1).min(32);
                initial_ms.saturating_mul(factor).min(max_ms)
            }
        };
        Some(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap_and_stops_after_the_last_attempt() {
        let policy =
            RetryPolicy::exponential(5, Duration::from_millis(100), Duration::from_millis(300));
        let delays: Vec<_> = (1..=5).map(|attempt| policy.delay_after(attempt)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(300)),
                Some(Duration::from_millis(300)),
                None
            ]
        );
    }

    #[test]
    fn fixed_backoff_and_single_attempt() {
        let fixed = RetryPolicy::fixed(2, Duration::from_millis(50));
        assert_eq!(fixed.delay_after(1), Some(Duration::from_millis(50)));
        assert_eq!(fixed.delay_after(2), None);
        assert_eq!(RetryPolicy::no_retry().delay_after(1), None);
    }
}
