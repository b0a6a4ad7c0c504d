//! Embeddings for semantic search (ARCHITECTURE.md, "Embeddings"): text to the model's tokens,
//! on both sides, so a query is embedded at the edge exactly as documents were natively.
//!
//! - [`wordpiece`]: BERT's WordPiece tokenizer, read from the model's `tokenizer.json`.
//! - [`table`]: the static token table, and texts embedded with it.
//! - [`model`]: the vocabulary and table a snapshot carries, read as a query needs them.
//! - [`index`]: documents' vectors in a snapshot, and the tree that finds the nearest.

pub mod index;
pub mod model;
pub mod table;
pub mod wordpiece;

/// `work` over `items`, split into up to `threads` runs on scoped threads natively (the one
/// thread a wasm caller has), with the results in `items`' order: embedding is the CPU-bound
/// part of builds and of the native embedder.
pub fn in_parallel<I: Sync, T: Send>(
    items: &[I],
    threads: usize,
    work: impl Fn(&[I]) -> Vec<T> + Sync,
) -> Vec<T> {
    let share = items.len().div_ceil(threads.max(1)).max(1);
    if cfg!(target_arch = "wasm32") || share >= items.len() {
        return work(items);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(share)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("an embedding thread panicked"))
            .collect()
    })
}
