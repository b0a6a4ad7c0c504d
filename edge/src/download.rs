//! Streams a build's artifact from R2 into memory SQLite owns, checking its size and digest.
//!
//! Two facilities of the Workers runtime do the heavy lifting, through bindings of our own
//! (workers-rs wraps neither):
//! - A BYOB reader's `readAtLeast` fills [`READ_BYTES`] per read. The body's own chunks can be
//!   small: Miniflare's R2 delivers 4 KiB at a time, and waiting on each of the 16,399 chunks of
//!   the bench's 67 MB build took 0.54 s.
//! - `crypto.DigestStream` computes SHA-256 in the runtime's native code; the `sha2` crate took
//!   0.32 s for the same build in wasm.
//!
//! Each read lands in a fresh JavaScript buffer and is copied once into SQLite's memory, so the
//! artifact is never held twice in wasm memory, which never shrinks.

use std::ptr::NonNull;

use pubsearch_shared::manifest::{ArtifactDigest, Manifest, VerifyError};
use rusqlite::serialize::OwnedData;
use wasm_bindgen::prelude::*;
use worker::js_sys::{self, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{Bucket, ResponseBody};

use crate::snapshot::LoadError;

/// Bytes asked of each read: few reads, and a small transient buffer outside wasm memory.
const READ_BYTES: u32 = 1 << 20;

#[wasm_bindgen]
extern "C" {
    /// A `ReadableStream`, for the `getReader` overload web-sys leaves to a feature flag.
    type RawStream;
    #[wasm_bindgen(method, catch, js_name = getReader)]
    fn get_reader(this: &RawStream, options: &Object) -> Result<ByobReader, JsValue>;

    /// `ReadableStreamBYOBReader`, with workerd's `readAtLeast`.
    type ByobReader;
    #[wasm_bindgen(method, js_name = readAtLeast)]
    fn read_at_least(this: &ByobReader, min_bytes: u32, view: Uint8Array) -> Promise;

    /// workerd's `crypto.DigestStream`: a `WritableStream` whose `digest` settles on close.
    #[wasm_bindgen(js_namespace = crypto)]
    type DigestStream;
    #[wasm_bindgen(constructor, catch, js_namespace = crypto)]
    fn new(algorithm: &str) -> Result<DigestStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn digest(this: &DigestStream) -> Promise;
    #[wasm_bindgen(method, js_name = getWriter)]
    fn get_writer(this: &DigestStream) -> StreamWriter;

    /// `WritableStreamDefaultWriter`.
    type StreamWriter;
    #[wasm_bindgen(method)]
    fn write(this: &StreamWriter, chunk: &Uint8Array) -> Promise;
    #[wasm_bindgen(method)]
    fn close(this: &StreamWriter) -> Promise;
}

/// Downloads `manifest`'s artifact into a buffer SQLite can adopt with `sqlite3_deserialize`,
/// refusing it unless its size and SHA-256 are the manifest's.
pub async fn artifact(bucket: &Bucket, manifest: &Manifest) -> Result<OwnedData, LoadError> {
    let missing = || LoadError::MissingArtifact(manifest.artifact.clone());
    let object = bucket
        .get(&manifest.artifact)
        .execute()
        .await?
        .ok_or_else(missing)?;
    let size = manifest.byte_size;
    if object.size() != size {
        return Err(VerifyError::Size {
            expected: size,
            actual: object.size(),
        }
        .into());
    }
    let ResponseBody::Stream(stream) = object.body().ok_or_else(missing)?.response_body()? else {
        return Err(missing());
    };
    let options = Object::new();
    Reflect::set(&options, &"mode".into(), &"byob".into()).map_err(js)?;
    let reader = stream
        .unchecked_into::<RawStream>()
        .get_reader(&options)
        .map_err(js)?;
    let hasher = DigestStream::new("SHA-256").map_err(js)?;
    let writer = hasher.get_writer();

    let mut data = allocate(size)?;
    let mut offset = 0usize;
    loop {
        let view = Uint8Array::new_with_length(READ_BYTES);
        let read = JsFuture::from(reader.read_at_least(READ_BYTES, view))
            .await
            .map_err(js)?;
        let chunk = Reflect::get(&read, &"value".into()).map_err(js)?;
        if let Some(chunk) = chunk.dyn_ref::<Uint8Array>() {
            let end = offset + chunk.length() as usize;
            if end as u64 > size {
                return Err(VerifyError::Size {
                    expected: size,
                    actual: end as u64,
                }
                .into());
            }
            chunk.copy_to(&mut data[offset..end]);
            JsFuture::from(writer.write(chunk)).await.map_err(js)?;
            offset = end;
        }
        if Reflect::get(&read, &"done".into()).map_err(js)?.is_truthy() {
            break;
        }
    }
    JsFuture::from(writer.close()).await.map_err(js)?;
    let digest = JsFuture::from(hasher.digest()).await.map_err(js)?;
    let digest = js_sys::Uint8Array::new(&digest).to_vec();
    manifest.check_artifact(offset as u64, &ArtifactDigest::hex(&digest))?;
    Ok(data)
}

/// A failure of the runtime's stream or digest machinery.
fn js(error: JsValue) -> LoadError {
    LoadError::Stream(worker::Error::from(error))
}

/// A zeroed buffer of `size` bytes allocated by SQLite, which frees it when the connection closes.
fn allocate(size: u64) -> Result<OwnedData, LoadError> {
    if size == 0 {
        return Err(VerifyError::Integrity("empty artifact".into()).into());
    }
    // SAFETY: sqlite3_malloc64 returns null or a block of at least `size` bytes; we check null,
    // and hand ownership to OwnedData, whose contract is exactly "allocated by sqlite3_malloc64".
    let pointer = unsafe { rusqlite::ffi::sqlite3_malloc64(size) }.cast::<u8>();
    let pointer = NonNull::new(pointer).ok_or(LoadError::OutOfMemory(size))?;
    // SAFETY: the block is `size` bytes long; zeroing it makes every byte initialised before any
    // slice over it exists, and a short download then leaves zeros, which the digest rejects.
    unsafe { std::ptr::write_bytes(pointer.as_ptr(), 0, size as usize) };
    Ok(unsafe { OwnedData::from_raw_nonnull(pointer, size as usize) })
}
