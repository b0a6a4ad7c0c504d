//! Exclusive ownership of a file for one process, naming its holder.
//!
//! A lock file beside what it guards holds an OS advisory lock (`flock`) for as long as the
//! owner lives, released by the kernel however the process ends (a kill -9 included), and the
//! owner's description (pid, command line, since when), so a second process is refused with a
//! message saying who to stop rather than "database is locked".

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exclusive lock, held until dropped.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is held by {holder}")]
    Held { path: PathBuf, holder: String },
    #[error("cannot open the lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockFile {
    /// Takes the lock at `path` (created if needed), or says who holds it.
    pub fn acquire(path: &Path) -> Result<LockFile, LockError> {
        let mut file = open(path)?;
        if file.try_lock().is_err() {
            return Err(held(path, &mut file));
        }
        LockFile::own(path, file)
    }

    /// [`LockFile::acquire`], waiting up to `wait` for a holder that keeps it briefly (another
    /// process's check-and-start, another publisher's pointer write); then says who holds it.
    pub async fn acquire_within(path: &Path, wait: Duration) -> Result<LockFile, LockError> {
        let mut file = open(path)?;
        let deadline = tokio::time::Instant::now() + wait;
        while file.try_lock().is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(held(path, &mut file));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        LockFile::own(path, file)
    }

    /// Records this process as the holder of the lock just taken on `file`.
    fn own(path: &Path, mut file: File) -> Result<LockFile, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(describe_this_process().as_bytes())
            .map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(LockFile { _file: file })
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The refusal for a lock someone else holds, naming them from what they wrote in it.
fn held(path: &Path, file: &mut File) -> LockError {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim();
    LockError::Held {
        path: path.to_path_buf(),
        holder: if holder.is_empty() {
            "another process (it has not said which yet)".to_owned()
        } else {
            holder.to_owned()
        },
    }
}

/// `pid 1234 (native-worker run) since 2026-12-03T20:00:00Z`: the program and its subcommand
/// only, since later arguments may carry secrets (`--admin-token`).
fn describe_this_process() -> String {
    let command: Vec<String> = std::env::args()
        .enumerate()
        .map(|(index, arg)| match index {
            0 => Path::new(&arg)
                .file_name()
                .map_or(arg.clone(), |name| name.to_string_lossy().into_owned()),
            _ => arg,
        })
        .take(2)
        .collect();
    format!(
        "pid {} ({}) since {}",
        std::process::id(),
        command.join(" "),
        crate::clock::now().to_rfc3339()
    )
}
