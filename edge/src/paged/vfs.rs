//! The read-only SQLite VFS paged builds open through.
//!
//! A file is a registered [`RemoteArtifact`], named by its build id; reads are served from the
//! chunk cache, fetching what is missing ([`super::fetch::ensure`]). Anonymous files (SQLite's
//! temporary files, should a query need one despite `temp_store = MEMORY`) live in memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use rsqlite_vfs::{
    AccessMode, LockLevel, MemChunksFile, OpenRequest, OpenedFile, OsCallback, SQLiteIoMethods,
    SQLiteVfs, SyncOptions, VfsError, VfsErrorCode, VfsFile, VfsRegistration, VfsResult, VfsStore,
};

use super::{CACHE, RemoteArtifact, count, fetch};

/// The VFS's registered name.
pub const VFS_NAME: &str = "pubsearch-paged";
/// Chunks fetched together when SQLite reads on from where it stopped (a scan, a long doclist).
const READ_AHEAD_CHUNKS: u32 = 8;

thread_local! {
    /// Kept for the isolate's life: dropping a registration unregisters the VFS.
    static REGISTRATION: RefCell<Option<VfsRegistration<Artifacts>>> = const { RefCell::new(None) };
    /// What each file name opens.
    static FILES: RefCell<HashMap<String, Rc<RemoteArtifact>>> = RefCell::new(HashMap::new());
}

/// Registers the VFS (once) and `artifact` under a file name of its own, which it returns.
pub fn register(artifact: Rc<RemoteArtifact>) -> String {
    REGISTRATION.with(|registration| {
        let mut registration = registration.borrow_mut();
        if registration.is_none() {
            // SAFETY: the VFS uses the crate's default constructor and file layout; Io and Store
            // agree on `Artifacts`, which the registration retains. The isolate is one thread.
            let registered =
                unsafe { rsqlite_vfs::register_vfs::<Io, Paged>(VFS_NAME, Artifacts, false) }
                    .expect("the paged VFS registers once per isolate");
            *registration = Some(registered);
        }
    });
    let name = format!("{}-{}", artifact.build_id, artifact.id);
    FILES.with(|files| files.borrow_mut().insert(name.clone(), artifact));
    name
}

/// Forgets `name`: connections open on it keep reading, new opens fail.
pub fn unregister(name: &str) {
    FILES.with(|files| files.borrow_mut().remove(name));
}

/// The VFS's app data: the artifacts live in [`FILES`].
pub struct Artifacts;

/// A file the VFS opened.
pub enum File {
    Remote {
        artifact: Rc<RemoteArtifact>,
        /// The chunk the last read ended in, to spot sequential reads.
        last_chunk: Option<u32>,
    },
    Temporary(MemChunksFile),
}

fn read_only() -> VfsError {
    VfsError::new(
        VfsErrorCode::ReadOnly,
        "paged snapshots are read-only".into(),
    )
}

impl File {
    /// Reads `buf.len()` bytes at `offset` from the remote artifact, fetching missing chunks.
    fn read_remote(
        artifact: &Rc<RemoteArtifact>,
        last_chunk: &mut Option<u32>,
        buf: &mut [u8],
        offset: u64,
    ) -> VfsResult<usize> {
        if offset >= artifact.byte_size || buf.is_empty() {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(artifact.byte_size);
        let chunk_bytes = u64::from(artifact.chunk_bytes);
        let first = (offset / chunk_bytes) as u32;
        let last = ((end - 1) / chunk_bytes) as u32;
        let mut wanted: Vec<u32> = (first..=last).collect();
        if first > 0 && *last_chunk == Some(first - 1) {
            wanted.extend((last + 1..artifact.chunks()).take(READ_AHEAD_CHUNKS as usize));
        }
        let all_held = CACHE.with(|cache| {
            let cache = cache.borrow();
            (first..=last).all(|index| cache.contains((artifact.id, index)))
        });
        count(|counts| {
            if all_held {
                counts.memory_hits += 1;
            } else {
                counts.memory_misses += 1;
            }
        });
        if !all_held {
            fetch::ensure(artifact, &wanted).map_err(|failure| {
                VfsError::new(VfsErrorCode::IoRead, failure.to_string().into())
            })?;
        }
        let mut written = 0usize;
        for index in first..=last {
            let chunk_start = u64::from(index) * chunk_bytes;
            let from = offset.max(chunk_start);
            let to = end.min(chunk_start + chunk_bytes);
            let copied = CACHE.with(|cache| {
                cache.borrow_mut().with((artifact.id, index), |bytes| {
                    let source = &bytes[(from - chunk_start) as usize..(to - chunk_start) as usize];
                    buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(source);
                })
            });
            if copied.is_none() {
                // Evicted between fetch and copy: only if one read spans more than the budget.
                return Err(VfsError::new(
                    VfsErrorCode::IoRead,
                    "a read spans more chunks than the chunk cache holds".into(),
                ));
            }
            written += (to - from) as usize;
        }
        *last_chunk = Some(last);
        Ok(written)
    }
}

impl VfsFile for File {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<usize> {
        match self {
            File::Remote {
                artifact,
                last_chunk,
            } => File::read_remote(artifact, last_chunk, buf, offset),
            File::Temporary(file) => file.read(buf, offset),
        }
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        match self {
            File::Remote { .. } => Err(read_only()),
            File::Temporary(file) => file.write(buf, offset),
        }
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        match self {
            File::Remote { .. } => Err(read_only()),
            File::Temporary(file) => file.truncate(size),
        }
    }

    fn sync(&mut self, options: SyncOptions) -> VfsResult<()> {
        match self {
            File::Remote { .. } => Ok(()),
            File::Temporary(file) => file.sync(options),
        }
    }

    fn size(&self) -> VfsResult<u64> {
        match self {
            File::Remote { artifact, .. } => Ok(artifact.byte_size),
            File::Temporary(file) => file.size(),
        }
    }

    fn lock(&mut self, _level: LockLevel) -> VfsResult<()> {
        Ok(())
    }

    fn unlock(&mut self, _level: LockLevel) -> VfsResult<()> {
        Ok(())
    }

    fn check_reserved_lock(&self) -> VfsResult<bool> {
        Ok(false)
    }
}

/// Opens registered artifacts read-only and anonymous files in memory.
pub struct Store;

impl VfsStore for Store {
    type File = File;
    type AppData = Artifacts;

    fn open_file(_data: &Artifacts, request: OpenRequest<'_>) -> VfsResult<OpenedFile<File>> {
        let access = request.options.access();
        let Some(name) = request.filename else {
            return Ok(OpenedFile {
                file: File::Temporary(MemChunksFile::default()),
                access,
            });
        };
        let artifact = FILES
            .with(|files| files.borrow().get(name.path()).cloned())
            .ok_or_else(|| {
                VfsError::new(
                    VfsErrorCode::CantOpen,
                    format!("{} is not a registered build", name.path()).into(),
                )
            })?;
        Ok(OpenedFile {
            file: File::Remote {
                artifact,
                last_chunk: None,
            },
            access: rsqlite_vfs::OpenAccess::ReadOnly,
        })
    }

    fn close_file(
        _data: &Artifacts,
        _name: Option<&str>,
        _file: File,
        _options: rsqlite_vfs::OpenOptions,
    ) -> VfsResult<()> {
        Ok(())
    }

    fn access(_data: &Artifacts, name: &str, _mode: AccessMode) -> VfsResult<bool> {
        Ok(FILES.with(|files| files.borrow().contains_key(name)))
    }

    fn full_pathname(_data: &Artifacts, name: &str) -> VfsResult<String> {
        Ok(name.to_owned())
    }

    fn delete_file(_data: &Artifacts, _name: &str, _sync_dir: bool) -> VfsResult<()> {
        Err(read_only())
    }
}

/// The I/O methods: the crate's defaults over [`Store`].
pub struct Io;

impl SQLiteIoMethods for Io {
    type Store = Store;
}

/// The VFS: the crate's defaults, with the Workers runtime's clock and randomness.
pub struct Paged;

impl SQLiteVfs<Io> for Paged {
    type Os = Runtime;

    fn os(_data: &Artifacts) -> &Runtime {
        &Runtime
    }
}

/// Clock and randomness from the runtime. SQLite sleeps only when a lock is busy, which a
/// read-only file never is.
pub struct Runtime;

impl OsCallback for Runtime {
    fn sleep(&self, _duration: Duration) {}

    fn random(&self, buf: &mut [u8]) -> usize {
        for byte in buf.iter_mut() {
            *byte = (worker::js_sys::Math::random() * 256.0) as u8;
        }
        buf.len()
    }

    fn epoch_timestamp_in_ms(&self) -> VfsResult<i64> {
        Ok(worker::js_sys::Date::now() as i64)
    }
}
