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

/// Writes the tree of every document of the snapshot being built in `conn`: each with the
/// vector given for it by `model` ([`give`]), else embedded with `model` now. Returns how many
/// documents have a vector (one whose text has no known piece gets none). A given vector and
/// one computed here are the same bytes ([`table::pack`] of [`EmbeddingModel::embed`]), and the
/// tree is built from those bytes, so a build is the same whichever way its vectors came.
pub fn write(conn: &Connection, model: &EmbeddingModel) -> rusqlite::Result<u64> {
    let mut vectors = Packed::new(model.table.dims());
    prepare_given(conn)?;
    {
        let mut rows = conn.prepare(&format!(
            "SELECT id, given, CASE WHEN given IS NULL THEN title END,
                    CASE WHEN given IS NULL THEN {text}(content) END
             FROM (SELECT d.id, d.title, b.content,
                          (SELECT g.vector FROM temp.given_vectors AS g
                           WHERE g.id = d.id AND g.model = ?1) AS given
                   FROM documents AS d JOIN document_bodies AS b ON b.id = d.id ORDER BY d.id)",
            text = crate::content::FUNCTION,
        ))?;
        let mut documents = rows.query([&model.name])?;
        let mut batch = Vec::with_capacity(EMBED_BATCH);
        while let Some(row) = documents.next()? {
            let id = row.get::<_, i64>(0)?;
            let vector = match row.get::<_, Option<Vec<u8>>>(1)? {
                Some(given) if given.len() == vectors.width() => Source::Given(given),
                _ => {
                    let title = row.get::<_, Option<String>>(2)?.unwrap_or_default();
                    let content = row.get::<_, Option<String>>(3)?.unwrap_or_default();
                    Source::Text(document_text(&title, &content))
                }
            };
            batch.push((id, vector));
            if batch.len() == EMBED_BATCH {
                embed_batch(model, &mut batch, &mut vectors);
            }
        }
        embed_batch(model, &mut batch, &mut vectors);
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
            if let Some(centroid) = vectors.mean(&order[range.clone()]) {
                insert_node.execute((node, table::pack(&centroid)))?;
            }
            if at == depth {
                for &i in &order[range] {
                    insert_vector.execute((node, vectors.ids[i], vectors.packed(i)))?;
                }
                continue;
            }
            let middle = vectors.split(&mut order[range.clone()]);
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

/// Creates where [`give`]n vectors wait for [`write`] in `conn`, if it is not there yet: a
/// temporary table, living with the connection and never in the file.
pub fn prepare_given(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS given_vectors (
             id INTEGER PRIMARY KEY, model TEXT NOT NULL, vector BLOB NOT NULL)",
    )
}

/// Gives [`write`] the vector, by `model`, of the document in row `id` of the snapshot being
/// built in `conn` (after [`prepare_given`]): one computed before (the store keeps them), so
/// the build need not embed it.
pub fn give(conn: &Connection, id: i64, model: &str, packed: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO temp.given_vectors (id, model, vector) VALUES (?1, ?2, ?3)",
    )?
    .execute((id, model, packed))?;
    Ok(())
}

/// Documents' texts read before they are embedded together.
const EMBED_BATCH: usize = 2048;

/// Where a document's vector comes from.
enum Source {
    Given(Vec<u8>),
    Text(String),
}

/// Adds `batch`'s vectors to `vectors` in order, embedding the texts on every core natively
/// (documents that get no vector are left out), and empties it.
fn embed_batch(model: &EmbeddingModel, batch: &mut Vec<(i64, Source)>, vectors: &mut Packed) {
    let embed = |part: &[(i64, Source)]| -> Vec<Option<Vec<u8>>> {
        part.iter()
            .map(|(_, source)| match source {
                Source::Given(_) => None,
                Source::Text(text) => model.embed(text).map(|vector| table::pack(&vector)),
            })
            .collect()
    };
    // Builds are made natively, on every core; a wasm caller (a test) has its one thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let embedded = super::in_parallel(batch, threads, embed);
    for ((id, source), computed) in batch.drain(..).zip(embedded) {
        match source {
            Source::Given(packed) => vectors.push(id, &packed),
            Source::Text(_) => {
                if let Some(packed) = computed {
                    vectors.push(id, &packed);
                }
            }
        }
    }
}

/// Levels below the root so that no leaf holds more than [`LEAF_DOCUMENTS`].
fn depth_for(documents: usize) -> u32 {
    let mut depth = 0;
    while documents.div_ceil(1 << depth) > LEAF_DOCUMENTS {
        depth += 1;
    }
    depth
}

/// Documents' packed vectors side by side in one buffer, as the tree is built from them: 268
/// bytes a document with its id (260 MB for a million, a quarter of them as floats).
struct Packed {
    dims: usize,
    ids: Vec<i64>,
    bytes: Vec<u8>,
}

impl Packed {
    fn new(dims: usize) -> Self {
        Packed {
            dims,
            ids: Vec::new(),
            bytes: Vec::new(),
        }
    }

    fn width(&self) -> usize {
        self.dims + 4
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn push(&mut self, id: i64, packed: &[u8]) {
        self.ids.push(id);
        self.bytes.extend_from_slice(packed);
    }

    fn packed(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.width()..(i + 1) * self.width()]
    }

    /// Vector `i`'s values, as [`table::unpack`] gives them.
    fn values(&self, i: usize) -> impl Iterator<Item = f32> + Clone + '_ {
        let (scale, values) =
            table::unpack_quantized(self.packed(i), self.dims).expect("pushed at the width");
        values.map(move |v| f32::from(v) * scale)
    }

    /// The normalised mean of the vectors `part`; `None` for none (or a mean of zero).
    fn mean(&self, part: &[usize]) -> Option<Vec<f32>> {
        let mut sum = vec![0.0f32; self.dims];
        for &i in part {
            sum.iter_mut()
                .zip(self.values(i))
                .for_each(|(s, v)| *s += v);
        }
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
        (!part.is_empty() && norm > 0.0).then(|| sum.into_iter().map(|v| v / norm).collect())
    }

    /// Orders `part` by projection on its principal direction and returns where the upper half
    /// starts: the two halves differ in size by at most one.
    fn split(&self, part: &mut [usize]) -> usize {
        let middle = part.len() / 2;
        if part.is_empty() {
            return 0;
        }
        let dims = self.dims;
        let centre: Vec<f32> = {
            let mut sum = vec![0.0f32; dims];
            for &i in part.iter() {
                sum.iter_mut()
                    .zip(self.values(i))
                    .for_each(|(s, v)| *s += v);
            }
            sum.into_iter().map(|s| s / part.len() as f32).collect()
        };
        // Power iteration on the covariance, from a fixed start so builds are reproducible.
        let mut direction: Vec<f32> = (0..dims).map(|d| 1.0 / (1.0 + d as f32)).collect();
        for _ in 0..POWER_ITERATIONS {
            let mut next = vec![0.0f32; dims];
            for &i in part.iter() {
                let centred = self.values(i).zip(&centre).map(|(v, c)| v - c);
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
        let projection =
            |i: usize| -> f32 { self.values(i).zip(&direction).map(|(v, d)| v * d).sum() };
        part.select_nth_unstable_by(middle, |&a, &b| {
            projection(a)
                .total_cmp(&projection(b))
                .then(self.ids[a].cmp(&self.ids[b]))
        });
        middle
    }
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
