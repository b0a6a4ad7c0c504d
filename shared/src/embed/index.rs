//! Documents' vectors in a snapshot, and how a query finds the nearest (ARCHITECTURE.md,
//! "Embeddings").
//!
//! Each document's vector is stored packed (int8 and a scale, [`table::pack`]) in
//! `document_vectors`, grouped by leaf of a balanced binary tree: the builder splits the
//! documents in two at the median of their projection on the principal direction, and again,
//! until a leaf holds at most [`LEAF_DOCUMENTS`], so a leaf's vectors are about one 64 KiB chunk
//! of the file. Every node keeps the normalised mean of its documents in `vector_nodes`
//! (numbered as a heap: node `n`'s children are `2n` and `2n + 1`). A query walks down keeping
//! the [`PROBED_LEAVES`] best nodes of each level and reads those leaves: about
//! `2 · PROBED_LEAVES · depth` node rows and `PROBED_LEAVES` leaves, so its work grows with the
//! logarithm of the corpus (ARCHITECTURE.md invariant 1).

use rusqlite::{Connection, OptionalExtension};

use super::model::{EmbeddingModel, document_text};
use super::table;

/// Most documents in a leaf: 200 vectors of 260 bytes fit a 64 KiB chunk with room for the
/// B-tree's own bytes.
pub const LEAF_DOCUMENTS: usize = 200;
/// Leaves a query reads.
pub const PROBED_LEAVES: usize = 12;
/// Iterations of the power method finding a node's principal direction.
const POWER_ITERATIONS: usize = 6;
const META_DEPTH: &str = "vector_depth";

/// Embeds every document of the snapshot being built in `conn` with `model` and writes the
/// tree. Returns how many documents got a vector (one whose text has no known piece gets none).
pub fn write(conn: &Connection, model: &EmbeddingModel) -> rusqlite::Result<u64> {
    let mut vectors: Vec<(i64, Vec<f32>)> = Vec::new();
    {
        let mut rows = conn.prepare(&format!(
            "SELECT d.id, d.title, {text}(b.content)
             FROM documents AS d JOIN document_bodies AS b ON b.id = d.id ORDER BY d.id",
            text = crate::content::FUNCTION,
        ))?;
        let mut documents = rows.query([])?;
        let mut batch = Vec::with_capacity(EMBED_BATCH);
        while let Some(row) = documents.next()? {
            let text = document_text(&row.get::<_, String>(1)?, &row.get::<_, String>(2)?);
            batch.push((row.get::<_, i64>(0)?, text));
            if batch.len() == EMBED_BATCH {
                vectors.extend(embed_batch(model, &mut batch));
            }
        }
        vectors.extend(embed_batch(model, &mut batch));
    }
    let depth = depth_for(vectors.len());
    let mut order: Vec<usize> = (0..vectors.len()).collect();
    let mut insert_node =
        conn.prepare("INSERT INTO vector_nodes (node, centroid) VALUES (?1, ?2)")?;
    let mut insert_vector =
        conn.prepare("INSERT INTO document_vectors (leaf, id, vector) VALUES (?1, ?2, ?3)")?;
    // Each level's nodes hold contiguous ranges of `order`; splitting one sorts its range.
    let mut level: Vec<(i64, std::ops::Range<usize>)> = vec![(1, 0..vectors.len())];
    for at in 0..=depth {
        let mut next = Vec::with_capacity(level.len() * 2);
        for (node, range) in level {
            if let Some(centroid) = mean(range.clone().map(|i| &vectors[order[i]].1)) {
                insert_node.execute((node, table::pack(&centroid)))?;
            }
            if at == depth {
                for &i in &order[range] {
                    let (id, vector) = &vectors[i];
                    insert_vector.execute((node, id, table::pack(vector)))?;
                }
                continue;
            }
            let middle = split(&vectors, &mut order[range.clone()]);
            next.push((node * 2, range.start..range.start + middle));
            next.push((node * 2 + 1, range.start + middle..range.end));
        }
        level = next;
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        (META_DEPTH, depth.to_string()),
    )?;
    Ok(vectors.len() as u64)
}

/// Documents' texts read before they are embedded together.
const EMBED_BATCH: usize = 2048;

/// Embeds and empties `batch`, in order, on every core natively (documents that get no vector
/// are left out).
fn embed_batch(model: &EmbeddingModel, batch: &mut Vec<(i64, String)>) -> Vec<(i64, Vec<f32>)> {
    let embed = |part: &[(i64, String)]| -> Vec<(i64, Vec<f32>)> {
        part.iter()
            .filter_map(|(id, text)| model.embed(text).map(|vector| (*id, vector)))
            .collect()
    };
    #[cfg(not(target_arch = "wasm32"))]
    let vectors = {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = batch.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = batch
                .chunks(share)
                .map(|part| scope.spawn(move || embed(part)))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("an embedding thread panicked"))
                .collect()
        })
    };
    // Builds are made natively; a wasm caller (a test) embeds on its one thread.
    #[cfg(target_arch = "wasm32")]
    let vectors = embed(batch);
    batch.clear();
    vectors
}

/// Levels below the root so that no leaf holds more than [`LEAF_DOCUMENTS`].
fn depth_for(documents: usize) -> u32 {
    let mut depth = 0;
    while documents.div_ceil(1 << depth) > LEAF_DOCUMENTS {
        depth += 1;
    }
    depth
}

/// The normalised mean of `vectors`; `None` for none (or a mean of zero).
fn mean<'a>(vectors: impl Iterator<Item = &'a Vec<f32>>) -> Option<Vec<f32>> {
    let mut sum: Option<Vec<f32>> = None;
    for vector in vectors {
        match &mut sum {
            Some(sum) => sum.iter_mut().zip(vector).for_each(|(s, v)| *s += v),
            None => sum = Some(vector.clone()),
        }
    }
    let sum = sum?;
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    (norm > 0.0).then(|| sum.into_iter().map(|v| v / norm).collect())
}

/// Orders `part` (indexes into `vectors`) by projection on its principal direction and returns
/// where the upper half starts: the two halves differ in size by at most one.
fn split(vectors: &[(i64, Vec<f32>)], part: &mut [usize]) -> usize {
    let middle = part.len() / 2;
    let Some(first) = part.first() else {
        return 0;
    };
    let dims = vectors[*first].1.len();
    let centre: Vec<f32> = {
        let mut sum = vec![0.0f32; dims];
        for &i in part.iter() {
            sum.iter_mut().zip(&vectors[i].1).for_each(|(s, v)| *s += v);
        }
        sum.into_iter().map(|s| s / part.len() as f32).collect()
    };
    // Power iteration on the covariance, from a fixed start so builds are reproducible.
    let mut direction: Vec<f32> = (0..dims).map(|d| 1.0 / (1.0 + d as f32)).collect();
    for _ in 0..POWER_ITERATIONS {
        let mut next = vec![0.0f32; dims];
        for &i in part.iter() {
            let centred = vectors[i].1.iter().zip(&centre).map(|(v, c)| v - c);
            let along: f32 = centred.clone().zip(&direction).map(|(x, d)| x * d).sum();
            next.iter_mut()
                .zip(centred)
                .for_each(|(n, x)| *n += along * x);
        }
        let norm = next.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 {
            break;
        }
        direction = next.into_iter().map(|v| v / norm).collect();
    }
    let projection = |i: usize| -> f32 {
        vectors[i]
            .1
            .iter()
            .zip(&direction)
            .map(|(v, d)| v * d)
            .sum()
    };
    part.select_nth_unstable_by(middle, |&a, &b| {
        projection(a)
            .total_cmp(&projection(b))
            .then(vectors[a].0.cmp(&vectors[b].0))
    });
    middle
}

/// A document found near a query, by its row and the cosine similarity of the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Near {
    pub id: i64,
    pub similarity: f32,
}

fn depth(conn: &Connection, schema: &str) -> rusqlite::Result<Option<u32>> {
    let has_table: bool = conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_master WHERE name = 'vector_nodes')"
        ),
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    let depth: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {schema}.meta WHERE key = ?1"),
            [META_DEPTH],
            |row| row.get(0),
        )
        .optional()?;
    Ok(depth.and_then(|depth| depth.parse().ok()))
}

/// The documents of the [`PROBED_LEAVES`] leaves nearest `query` in the snapshot attached as
/// `schema`, most similar first (ties to the lower row); empty for a build without vectors.
pub fn nearest(conn: &Connection, schema: &str, query: &[f32]) -> rusqlite::Result<Vec<Near>> {
    let Some(depth) = depth(conn, schema)? else {
        return Ok(Vec::new());
    };
    let mut node_row = conn.prepare_cached(&format!(
        "SELECT centroid FROM {schema}.vector_nodes WHERE node = ?1"
    ))?;
    let mut beam: Vec<i64> = vec![1];
    for _ in 0..depth {
        let mut scored = Vec::with_capacity(beam.len() * 2);
        for node in beam.iter().flat_map(|&node| [node * 2, node * 2 + 1]) {
            let centroid: Option<Vec<u8>> =
                node_row.query_row([node], |row| row.get(0)).optional()?;
            if let Some(score) = centroid.and_then(|c| table::dot_packed(query, &c)) {
                scored.push((score, node));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        beam = scored
            .into_iter()
            .take(PROBED_LEAVES)
            .map(|(_, node)| node)
            .collect();
    }
    let mut leaf_rows = conn.prepare_cached(&format!(
        "SELECT id, vector FROM {schema}.document_vectors WHERE leaf = ?1"
    ))?;
    let mut found = Vec::new();
    for leaf in beam {
        let mut rows = leaf_rows.query([leaf])?;
        while let Some(row) = rows.next()? {
            let vector: Vec<u8> = row.get(1)?;
            if let Some(similarity) = table::dot_packed(query, &vector) {
                found.push(Near {
                    id: row.get(0)?,
                    similarity,
                });
            }
        }
    }
    found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.id.cmp(&b.id)));
    Ok(found)
}

/// The stored vector of document `id` in the snapshot attached as `schema`, if it has one.
pub fn vector_of(
    conn: &Connection,
    schema: &str,
    id: i64,
    dims: usize,
) -> rusqlite::Result<Option<Vec<f32>>> {
    let stored: Option<Vec<u8>> = conn
        .prepare_cached(&format!(
            "SELECT vector FROM {schema}.document_vectors WHERE id = ?1"
        ))?
        .query_row([id], |row| row.get(0))
        .optional()?;
    Ok(stored.and_then(|stored| table::unpack(&stored, dims)))
}

#[cfg(test)]
mod tests {
    use super::depth_for;

    #[test]
    fn leaves_never_hold_more_than_their_share() {
        assert_eq!(depth_for(0), 0);
        assert_eq!(depth_for(200), 0);
        assert_eq!(depth_for(201), 1);
        assert_eq!(depth_for(71_000), 9);
        assert_eq!(depth_for(1_000_000), 13);
    }
}
