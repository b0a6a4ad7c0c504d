//! What the publish running in this process is doing, for the `publish` command's progress
//! display: its activities report their stage here as they start, and the build its documents.
//! A process runs one publish at a time per channel, so one slot is enough; a publish `run`
//! starts on another's behalf reports in that process.

use std::sync::Mutex;

/// One stage of a publish and how far it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub done: u64,
    pub total: Option<u64>,
}

static CURRENT: Mutex<Option<Stage>> = Mutex::new(None);

/// Records that the publish is at `name`, `done` of `total`.
pub fn report(name: &'static str, done: u64, total: Option<u64>) {
    if let Ok(mut current) = CURRENT.lock() {
        *current = Some(Stage { name, done, total });
    }
}

/// The stage last reported, if any.
pub fn current() -> Option<Stage> {
    CURRENT.lock().ok().and_then(|current| current.clone())
}
