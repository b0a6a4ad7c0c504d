//! Plumbing for FTS5's C extension API, which rusqlite does not wrap: finding a connection's
//! `fts5_api`, registering auxiliary functions with data they own, and turning SQLite return
//! codes into `Result`s. [`crate::rank`] and [`crate::snippet`] build their functions on it.

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr::null_mut;

use rusqlite::Connection;
use rusqlite::ffi::{
    self, Fts5Context, Fts5ExtensionApi, fts5_api, sqlite3_context, sqlite3_value,
};

/// An FTS5 auxiliary function, as FTS5 calls it.
pub(crate) type AuxFunction = unsafe extern "C" fn(
    *const Fts5ExtensionApi,
    *mut Fts5Context,
    *mut sqlite3_context,
    c_int,
    *mut *mut sqlite3_value,
);

/// The connection's `fts5_api`, which FTS5 hands out through `SELECT fts5(?1)` with a bound
/// pointer (the documented way; there is no C function for it). Valid while `conn` is open.
pub(crate) fn api(conn: &Connection) -> rusqlite::Result<*mut fts5_api> {
    const QUERY: &CStr = c"SELECT fts5(?1)";
    const POINTER_TYPE: &CStr = c"fts5_api_ptr";
    let mut api: *mut fts5_api = null_mut();
    // SAFETY: the handle is the connection's open database; the statement is finalized before
    // returning, and `api` outlives it.
    let rc = unsafe {
        let db = conn.handle();
        let mut statement = null_mut();
        let mut rc = ffi::sqlite3_prepare_v2(db, QUERY.as_ptr(), -1, &mut statement, null_mut());
        if rc == ffi::SQLITE_OK {
            rc = ffi::sqlite3_bind_pointer(
                statement,
                1,
                (&raw mut api).cast(),
                POINTER_TYPE.as_ptr(),
                None,
            );
            if rc == ffi::SQLITE_OK {
                ffi::sqlite3_step(statement);
            }
        }
        ffi::sqlite3_finalize(statement);
        rc
    };
    check(rc).map_err(sqlite_error)?;
    if api.is_null() {
        return Err(misuse("fts5_api (is FTS5 compiled in?)"));
    }
    Ok(api)
}

/// Registers `function` as `name` on the connection `api` belongs to, handing it `data`, which
/// the function reads back with [`user_data`] and FTS5 drops when the connection closes.
pub(crate) fn register<T>(
    api: *mut fts5_api,
    name: &str,
    function: AuxFunction,
    data: T,
) -> rusqlite::Result<()> {
    let name = CString::new(name).expect("function names have no NUL");
    // SAFETY: `api` is a live connection's fts5_api (see `api`). FTS5 copies the name and owns
    // the boxed data from here on: it hands the pointer back to `function` as user data and
    // frees it with `drop_boxed::<T>` when the connection closes.
    let rc = unsafe {
        let create = (*api)
            .xCreateFunction
            .ok_or_else(|| misuse("xCreateFunction"))?;
        create(
            api,
            name.as_ptr(),
            Box::into_raw(Box::new(data)).cast(),
            Some(function),
            Some(drop_boxed::<T>),
        )
    };
    check(rc).map_err(sqlite_error)
}

/// The data [`register`] gave the running function.
///
/// # Safety
/// `api` and `fts` are the pair FTS5 passed to a function that [`register`] registered with data
/// of type `T`; that data lives as long as the connection.
pub(crate) unsafe fn user_data<'a, T>(
    api: &Fts5ExtensionApi,
    fts: *mut Fts5Context,
) -> Result<&'a T, c_int> {
    // SAFETY: the caller's contract.
    unsafe { Ok(&*call(api.xUserData)?(fts).cast::<T>()) }
}

/// Frees a `Box<T>` that was handed to SQLite as a raw pointer.
pub(crate) unsafe extern "C" fn drop_boxed<T>(pointer: *mut c_void) {
    // SAFETY: SQLite calls this once, with a pointer made by `Box::<T>::into_raw`.
    drop(unsafe { Box::from_raw(pointer.cast::<T>()) });
}

/// A function pointer FTS5's API table must provide, or SQLITE_MISUSE.
pub(crate) fn call<F>(function: Option<F>) -> Result<F, c_int> {
    function.ok_or(ffi::SQLITE_MISUSE)
}

/// SQLITE_OK as `Ok`, any other code as `Err`.
pub(crate) fn check(rc: c_int) -> Result<(), c_int> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

fn sqlite_error(rc: c_int) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None)
}

fn misuse(what: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_MISUSE),
        Some(format!("FTS5 does not provide {what}")),
    )
}
