//! WAL checkpoints on a thread of their own.
//!
//! SQLite copies committed WAL frames back into the database file inside the commit that pushes
//! the WAL past `wal_autocheckpoint`, on the committing thread: the single writer would stop
//! ingesting while it copies and fsyncs a batch's worth of pages. Instead the writer nudges this
//! thread after every commit and it runs a `PASSIVE` checkpoint, which never blocks the writer
//! or readers. The writer's own autocheckpoint stays as a backstop at [`BACKSTOP_PAGES`].

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// WAL pages after which a commit checkpoints by itself (SQLite's default is 1,000): only
/// reached if this thread falls behind.
pub const BACKSTOP_PAGES: i64 = 16_384;
/// How often to checkpoint when no commit asks for it.
const IDLE_INTERVAL: Duration = Duration::from_secs(5);

/// The running checkpoint thread; stops (after a last checkpoint) when dropped. Public so the
/// ingest bench's raw ceiling loop checkpoints exactly as the writer does.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` on its own connection.
    pub fn spawn(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        let (wake, nudges) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                loop {
                    let stopping = matches!(
                        nudges.recv_timeout(IDLE_INTERVAL),
                        Err(RecvTimeoutError::Disconnected)
                    );
                    checkpoint(&conn);
                    if stopping {
                        break;
                    }
                }
            })
            .expect("spawning the store checkpoint thread");
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint soon; never waits (nudges made while one is pending merge).
    pub fn nudge(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(0)
    });
    match result {
        Ok(_) => {}
        // Another checkpoint (the writer's backstop) is running: it does the same work.
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::DatabaseBusy => {}
        Err(error) => {
            tracing::warn!(%error, "WAL checkpoint failed; the WAL grows until one succeeds")
        }
    }
}
