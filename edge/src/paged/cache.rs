//! The isolate's chunk cache: verified chunks of paged builds, least recently used evicted first,
//! within a fixed byte budget.
//!
//! Wasm memory never shrinks, so the budget is the paged edge's memory plan: the isolate's
//! memory is this budget plus a fixed overhead (the row facts' block cache among it), whatever the
//! snapshot's size. Chunks of every build share the budget, so a build that stops being live
//! leaves the cache as new reads push its chunks out.

use std::collections::{BTreeMap, HashMap};

/// A chunk: which artifact (see [`super::RemoteArtifact::id`]) and its index in it.
pub type ChunkKey = (u32, u32);

/// Chunks kept in memory, evicted least recently used first.
pub struct ChunkCache {
    budget_bytes: usize,
    held_bytes: usize,
    tick: u64,
    chunks: HashMap<ChunkKey, (Box<[u8]>, u64)>,
    /// Last use of each chunk, oldest first.
    order: BTreeMap<u64, ChunkKey>,
}

impl ChunkCache {
    /// An empty cache that holds at most `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            held_bytes: 0,
            tick: 0,
            chunks: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The most bytes held at once.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Whether `key` is held (without counting as a use).
    pub fn contains(&self, key: ChunkKey) -> bool {
        self.chunks.contains_key(&key)
    }

    /// Calls `read` with the chunk's bytes if it is held, marking it used.
    pub fn with<R>(&mut self, key: ChunkKey, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, used) = self.chunks.get_mut(&key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key);
        Some(read(bytes))
    }

    /// Holds a verified chunk, evicting the least recently used ones to stay within the budget.
    /// A chunk larger than the whole budget is not kept.
    pub fn insert(&mut self, key: ChunkKey, bytes: Box<[u8]>) {
        if bytes.len() > self.budget_bytes {
            return;
        }
        self.remove(key);
        while self.held_bytes + bytes.len() > self.budget_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = self.chunks.remove(&oldest) {
                self.held_bytes -= evicted.len();
            }
        }
        self.tick += 1;
        self.held_bytes += bytes.len();
        self.order.insert(self.tick, key);
        self.chunks.insert(key, (bytes, self.tick));
    }

    fn remove(&mut self, key: ChunkKey) {
        if let Some((bytes, used)) = self.chunks.remove(&key) {
            self.order.remove(&used);
            self.held_bytes -= bytes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fill: u8) -> Box<[u8]> {
        vec![fill; 10].into_boxed_slice()
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first_and_the_budget_holds() {
        let mut cache = ChunkCache::new(30);
        cache.insert((0, 0), chunk(0));
        cache.insert((0, 1), chunk(1));
        cache.insert((0, 2), chunk(2));
        // Using chunk 0 makes chunk 1 the oldest.
        assert_eq!(cache.with((0, 0), |bytes| bytes[0]), Some(0));
        cache.insert((1, 0), chunk(9));
        assert!(!cache.contains((0, 1)));
        assert!(cache.contains((0, 0)) && cache.contains((0, 2)) && cache.contains((1, 0)));
        assert_eq!(cache.held_bytes(), 30);
        // Re-inserting a held chunk does not count it twice.
        cache.insert((1, 0), chunk(8));
        assert_eq!(cache.held_bytes(), 30);
        assert_eq!(cache.with((1, 0), |bytes| bytes[0]), Some(8));
        // Nothing larger than the budget is kept.
        cache.insert((2, 0), vec![0; 31].into_boxed_slice());
        assert!(!cache.contains((2, 0)));
        assert_eq!(cache.held_bytes(), 30);
    }
}
