//! Fetching chunks a paged read needs: the Cache API first, then an R2 range GET; each chunk
//! checked against its digest before it is cached or read.
//!
//! The chunks one read needs are fetched concurrently and waited on once, so they cost one
//! dependent round trip however many there are.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{Either, join_all, select};
use sha2::{Digest, Sha256};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::future_to_promise;
use worker::{Cache, Headers, Range, Response};

use super::{CACHE, Failure, RemoteArtifact, count, record_failure};

/// The longest one chunk fetch may take (ARCHITECTURE.md invariant 6).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Cache API lifetime of a chunk: builds never change once published.
const CHUNK_CACHE_CONTROL: &str = "public, max-age=604800, immutable";

/// A Cache API write still to be made.
pub type CacheWrite = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    static CACHE_WRITES: RefCell<Vec<CacheWrite>> = const { RefCell::new(Vec::new()) };
}

/// The Cache API writes of the chunks fetched from R2 so far, for the request to hand to
/// `ctx.waitUntil` so they finish after it answers.
pub fn take_cache_writes() -> Vec<CacheWrite> {
    CACHE_WRITES.with(|writes| writes.take())
}

/// A chunk's index and what fetching it gave.
type Fetched = (u32, Result<Box<[u8]>, Failure>);

/// Makes sure every chunk in `wanted` is in the isolate's chunk cache, fetching the missing ones
/// in one round trip. Must run inside a JSPI job: it suspends the job while fetching.
pub fn ensure(artifact: &Rc<RemoteArtifact>, wanted: &[u32]) -> Result<(), Failure> {
    let missing: Vec<u32> = CACHE.with(|cache| {
        let cache = cache.borrow();
        wanted
            .iter()
            .copied()
            .filter(|&index| !cache.contains((artifact.id, index)))
            .collect()
    });
    if missing.is_empty() {
        return Ok(());
    }
    let fetched: Rc<RefCell<Vec<Fetched>>> = Rc::default();
    let results = fetched.clone();
    let source = artifact.clone();
    let promise = future_to_promise(async move {
        let fetches = missing.iter().map(|&index| {
            let source = source.clone();
            async move { (index, chunk(&source, index).await) }
        });
        *results.borrow_mut() = join_all(fetches).await;
        Ok(JsValue::UNDEFINED)
    });
    count(|counts| counts.round_trips += 1);
    if let Err(error) = crate::jspi::block_on(&promise) {
        let failure = Failure::Unavailable {
            build_id: artifact.build_id.clone(),
            reason: format!("{error:?}"),
        };
        record_failure(failure.clone());
        return Err(failure);
    }
    let mut first_failure = None;
    for (index, result) in fetched.take() {
        match result {
            Ok(bytes) => CACHE.with(|cache| cache.borrow_mut().insert((artifact.id, index), bytes)),
            Err(failure) => {
                record_failure(failure.clone());
                first_failure.get_or_insert(failure);
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// The Cache API key of a chunk. Any URL will do; this host never resolves.
fn cache_url(artifact: &RemoteArtifact, index: u32) -> String {
    format!(
        "https://chunks.pubsearch.invalid/{}/{index}",
        artifact.build_id
    )
}

fn checks_out(artifact: &RemoteArtifact, index: u32, bytes: &[u8]) -> bool {
    let (_, length) = artifact.range(index);
    bytes.len() as u64 == length
        && Sha256::digest(bytes).as_slice() == artifact.digests[index as usize].as_slice()
}

/// One verified chunk, from the Cache API or else R2.
async fn chunk(artifact: &RemoteArtifact, index: u32) -> Result<Box<[u8]>, Failure> {
    let unavailable = |reason: String| Failure::Unavailable {
        build_id: artifact.build_id.clone(),
        reason,
    };
    let url = cache_url(artifact, index);
    let cache = Cache::default();
    // A Cache API miss or failure only means going to R2; a cached copy that fails its digest
    // is ignored the same way, and R2's copy replaces it.
    if let Ok(Some(mut cached)) = cache.get(url.as_str(), false).await
        && let Ok(bytes) = cached.bytes().await
        && checks_out(artifact, index, &bytes)
    {
        count(|counts| {
            counts.cache_api_chunks += 1;
            counts.cache_api_bytes += bytes.len() as u64;
        });
        return Ok(bytes.into_boxed_slice());
    }
    let (offset, length) = artifact.range(index);
    let get = async {
        let object = artifact
            .bucket
            .get(&artifact.key)
            .range(Range::OffsetWithLength { offset, length })
            .execute()
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("{} is not in the bucket", artifact.key))?;
        let body = object
            .body()
            .ok_or_else(|| format!("{} has no body", artifact.key))?;
        body.bytes().await.map_err(|error| error.to_string())
    };
    let timeout = worker::Delay::from(FETCH_TIMEOUT);
    let bytes = match select(Box::pin(get), timeout).await {
        Either::Left((result, _)) => result.map_err(unavailable)?,
        Either::Right(_) => return Err(unavailable(format!("no answer in {FETCH_TIMEOUT:?}"))),
    };
    if !checks_out(artifact, index, &bytes) {
        return Err(Failure::Corrupt {
            build_id: artifact.build_id.clone(),
            index,
        });
    }
    count(|counts| {
        counts.r2_chunks += 1;
        counts.r2_bytes += bytes.len() as u64;
    });
    // Shared with the colo's other isolates. Written after the response, not waited for (see
    // `take_cache_writes`); a failure costs only a later miss.
    if let Ok(response) = Response::from_bytes(bytes.clone()) {
        let headers = Headers::new();
        if headers.set("Cache-Control", CHUNK_CACHE_CONTROL).is_ok() {
            let response = response.with_headers(headers);
            CACHE_WRITES.with(|writes| {
                writes.borrow_mut().push(Box::pin(async move {
                    let _ = cache.put(url.as_str(), response).await;
                }))
            });
        }
    }
    Ok(bytes.into_boxed_slice())
}
