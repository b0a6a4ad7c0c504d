//! Progress on long command-line work: a bar (or a spinner, when the total is unknown) when
//! stderr is a terminal, and otherwise a plain log line at most every [`LOG_EVERY`], so logs
//! collected from a service stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often progress is logged when stderr is not a terminal.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// One piece of long work's progress.
pub(super) struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
    last_log: Option<Instant>,
}

impl Progress {
    /// Progress through `total` `unit`s (`None`: unknown, a spinner with counts).
    pub(super) fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    indicatif::ProgressBar::new(total),
                    "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {msg} ({eta} left)",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {prefix} [{elapsed_precise}] {human_pos} {msg}",
                ),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template).expect("valid template"),
            );
            bar.set_prefix(label);
            bar.set_message(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            label,
            unit,
            total,
            bar,
            last_log: None,
        }
    }

    /// `done` units so far, and a word on what is happening (empty: none).
    pub(super) fn show(&mut self, done: u64, note: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(if note.is_empty() {
                    self.unit.to_owned()
                } else {
                    format!("{} · {note}", self.unit)
                });
            }
            None => {
                if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    self.last_log = Some(Instant::now());
                    let of = self
                        .total
                        .map(|total| format!(" of {total}"))
                        .unwrap_or_default();
                    let note = if note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({note})")
                    };
                    tracing::info!("{}: {done}{of} {}{note}", self.label, self.unit);
                }
            }
        }
    }

    /// Removes the bar; the caller logs the outcome. (Dropping it does too.)
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs `poll` every 200 ms on a thread until the returned guard is dropped: for work that
/// reports progress through shared counters while the caller blocks on it.
pub(super) fn poll_while(mut poll: impl FnMut() + Send + 'static) -> PollGuard {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            poll();
            std::thread::sleep(Duration::from_millis(200));
        }
        poll();
    });
    PollGuard {
        stop,
        thread: Some(thread),
    }
}

/// Stops [`poll_while`]'s thread (after one last poll) when dropped.
pub(super) struct PollGuard {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}
