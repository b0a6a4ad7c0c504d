//! The object-store requests this process has made, by kind: R2 bills PUTs and LISTs as class A
//! and GETs and HEADs as class B (deletes are free). Reported in `/stats` and by the freshness
//! bench, which turns them into operations per day.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests made so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Operations {
    pub gets: u64,
    pub heads: u64,
    /// Object writes; a large artifact's multipart upload counts once.
    pub puts: u64,
    pub lists: u64,
    pub deletes: u64,
}

/// A kind of request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Get,
    Head,
    Put,
    List,
    Delete,
}

static COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Counts one request of kind `op`.
pub(super) fn count(op: Op) {
    COUNTS[op as usize].fetch_add(1, Ordering::Relaxed);
}

/// The requests made by this process so far.
pub fn operations() -> Operations {
    let read = |op: Op| COUNTS[op as usize].load(Ordering::Relaxed);
    Operations {
        gets: read(Op::Get),
        heads: read(Op::Head),
        puts: read(Op::Put),
        lists: read(Op::List),
        deletes: read(Op::Delete),
    }
}
