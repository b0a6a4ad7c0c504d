//! Running synchronous code that waits on I/O: SQLite reading a paged snapshot from R2.
//!
//! SQLite calls its VFS's `read` synchronously, from C. For a read to wait on R2, the code that
//! calls SQLite runs as a *job*: [`pubsearch_jspi_job`], a `#[wasm_bindgen(jspi)]` export,
//! entered through `WebAssembly.promising`. Inside it, [`block_on`] suspends the whole wasm stack
//! on a promise (`WebAssembly.Suspending`) and the isolate goes on serving other requests;
//! wasm-bindgen moves the suspended job's shadow stack aside so nothing that runs meanwhile can
//! overwrite it. Each request enters at most one job (ARCHITECTURE.md, "Paged snapshots").
//!
//! Jobs run one at a time. SQLite is compiled single-threaded (THREADSAFE=0) and one connection
//! serves every request, so a second job entering SQLite while the first is suspended inside it
//! would corrupt that connection. [`run`] queues them. A waiting request polls on its own timer
//! rather than awaiting a promise the running job settles: the Workers runtime cancels a request
//! that waits on another request's I/O.
//!
//! Without JSPI (an engine that lacks `WebAssembly.promising`), [`available`] says so and the
//! edge serves only snapshots that fit in memory.

// wasm-bindgen marks `jspi` and `jspi_block_on_promise` experimental with a deprecation warning,
// including on the items its macro generates here.
#![allow(deprecated)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use wasm_bindgen::prelude::*;
use worker::js_sys::{Function, Promise, Reflect};
use worker::wasm_bindgen_futures::JsFuture;

/// How often a queued job checks whether its turn has come.
const QUEUE_POLL: Duration = Duration::from_millis(1);
/// A job running longer than this was abandoned with its request (the runtime never resumes a
/// cancelled request's I/O): the queue moves on and the job's owner is told to drop what it held.
const ABANDONED_AFTER_MS: f64 = 30_000.0;
/// Name of the job export in the wasm module's exports.
const JOB_EXPORT: &str = "pubsearch_jspi_job";

/// Why a job did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("this runtime has no JSPI (WebAssembly.promising)")]
    Unavailable,
    #[error("the running job was abandoned after {0} ms; its connection is no longer safe to use")]
    Abandoned(f64),
    #[error("the job failed: {0}")]
    Failed(String),
}

type Job = Box<dyn FnOnce()>;

thread_local! {
    /// The job the export runs next.
    static NEXT: RefCell<Option<Job>> = const { RefCell::new(None) };
    /// When the running job started, if one is running.
    static RUNNING_SINCE: Cell<Option<f64>> = const { Cell::new(None) };
    /// Jobs given up on since the isolate started (see [`ABANDONED_AFTER_MS`]).
    static ABANDONED: Cell<u64> = const { Cell::new(0) };
    /// `WebAssembly.promising(<the job export>)`, made once.
    static ENTRY: RefCell<Option<Function>> = const { RefCell::new(None) };
}

fn now_ms() -> f64 {
    worker::js_sys::Date::now()
}

/// Whether this runtime has JSPI, which paged snapshots need.
pub fn available() -> bool {
    let global = worker::js_sys::global();
    let Ok(wasm) = Reflect::get(&global, &"WebAssembly".into()) else {
        return false;
    };
    ["promising", "Suspending"]
        .iter()
        .all(|name| Reflect::get(&wasm, &(*name).into()).is_ok_and(|value| value.is_function()))
}

/// Jobs abandoned so far, for `/stats`.
pub fn abandoned() -> u64 {
    ABANDONED.with(Cell::get)
}

/// The job entry: runs the queued job. Entered through [`run`]'s promising wrapper. worker-build
/// also offers every export as an RPC method; called that way it finds no job queued (a job is
/// queued and entered in one synchronous step) and does nothing.
#[wasm_bindgen(jspi)]
pub fn pubsearch_jspi_job() {
    let Some(job) = NEXT.with(|next| next.borrow_mut().take()) else {
        return;
    };
    job();
    RUNNING_SINCE.with(|since| since.set(None));
}

/// Suspends the running job until `promise` settles. Only valid inside a job.
pub fn block_on(promise: &Promise) -> Result<JsValue, JsValue> {
    worker::js_sys::futures::jspi_block_on_promise(promise)
}

fn entry() -> Result<Function, JobError> {
    ENTRY.with(|entry| {
        if let Some(function) = entry.borrow().as_ref() {
            return Ok(function.clone());
        }
        let failed = |error: JsValue| JobError::Failed(format!("{error:?}"));
        let wasm =
            Reflect::get(&worker::js_sys::global(), &"WebAssembly".into()).map_err(failed)?;
        let promising: Function = Reflect::get(&wasm, &"promising".into())
            .map_err(failed)?
            .dyn_into()
            .map_err(|_| JobError::Unavailable)?;
        let export = Reflect::get(&wasm_bindgen::exports(), &JOB_EXPORT.into()).map_err(failed)?;
        let function: Function = promising
            .call1(&wasm, &export)
            .map_err(failed)?
            .dyn_into()
            .map_err(|_| JobError::Failed("WebAssembly.promising returned no function".into()))?;
        *entry.borrow_mut() = Some(function.clone());
        Ok(function)
    })
}

/// Runs `job` as a JSPI job once the jobs queued before it have finished, and returns its result.
pub async fn run<R: 'static>(job: impl FnOnce() -> R + 'static) -> Result<R, JobError> {
    if !available() {
        return Err(JobError::Unavailable);
    }
    let entry = entry()?;
    loop {
        match RUNNING_SINCE.with(Cell::get) {
            None => break,
            Some(since) if now_ms() - since > ABANDONED_AFTER_MS => {
                ABANDONED.with(|count| count.set(count.get() + 1));
                RUNNING_SINCE.with(|running| running.set(None));
                return Err(JobError::Abandoned(now_ms() - since));
            }
            Some(_) => worker::Delay::from(QUEUE_POLL).await,
        }
    }
    let result: Rc<RefCell<Option<R>>> = Rc::default();
    let slot = result.clone();
    NEXT.with(|next| {
        *next.borrow_mut() = Some(Box::new(move || {
            *slot.borrow_mut() = Some(job());
        }))
    });
    RUNNING_SINCE.with(|since| since.set(Some(now_ms())));
    let settled = match entry.call0(&JsValue::UNDEFINED) {
        Ok(promise) => JsFuture::from(Promise::from(promise)).await,
        Err(error) => Err(error),
    };
    if let Err(error) = settled {
        // The job trapped or threw: it will not clear the flag itself.
        RUNNING_SINCE.with(|since| since.set(None));
        NEXT.with(|next| next.borrow_mut().take());
        return Err(JobError::Failed(format!("{error:?}")));
    }
    let output = result.borrow_mut().take();
    output.ok_or_else(|| JobError::Failed("the job ended without a result".into()))
}
