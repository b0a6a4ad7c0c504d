//! The static model builds embed with (ARCHITECTURE.md, "Embeddings"): distilled once from the
//! model files and kept beside them as `static-table.bin`, so a build loads 8 MB instead of
//! running the encoder over the vocabulary; loaded once per process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pubsearch_shared::embed::model::EmbeddingModel;
use pubsearch_shared::embed::table::StaticTable;

use super::bert::ModelError;
use super::distill::{self, DistillOptions};

/// The file the table is kept in, inside the model directory.
pub const TABLE_FILE: &str = "static-table.bin";
/// The table's recipe: changing how it is distilled changes this, which both distils an old
/// table again ([`MAGIC`]) and renames the model ([`MODEL_NAME`]), so no vector made with the
/// old table (in the store or a base build) is taken as current.
macro_rules! recipe {
    () => {
        "1"
    };
}
/// Starts the file.
const MAGIC: &[u8] = concat!("PSTABLE", recipe!()).as_bytes();
/// What builds record as their model (`embed_model` in a snapshot's meta) and stored vectors
/// name.
pub const MODEL_NAME: &str = concat!("all-minilm-l6-v2/static-256/v", recipe!());

/// Whether builds embed: `PUBSEARCH_EMBED=off` turns it off, and it is off when the model is
/// not installed (`scripts/install-toolchain.sh` installs it).
pub fn for_builds() -> Option<Arc<EmbeddingModel>> {
    static LOADED: Mutex<Option<Option<Arc<EmbeddingModel>>>> = Mutex::new(None);
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(model) = &*loaded {
        return model.clone();
    }
    let dir = super::model_dir();
    let model = if std::env::var("PUBSEARCH_EMBED").is_ok_and(|value| value == "off") {
        tracing::info!("semantic search off (PUBSEARCH_EMBED=off): builds carry no vectors");
        None
    } else if !dir.join("model.safetensors").exists() {
        tracing::info!(
            model_dir = %dir.display(),
            "semantic search off: the embedding model is not installed (scripts/install-toolchain.sh \
             installs it); builds carry no vectors"
        );
        None
    } else {
        match load_or_distill(&dir) {
            Ok(model) => Some(Arc::new(model)),
            Err(error) => {
                tracing::warn!(model_dir = %dir.display(), %error, "semantic search off: the model could not be loaded");
                None
            }
        }
    };
    *loaded = Some(model.clone());
    model
}

/// The model's vocabulary and its static table, from `dir`'s [`TABLE_FILE`] if it is there
/// and current, else distilled now (a minute or so) and kept.
pub fn load_or_distill(dir: &Path) -> Result<EmbeddingModel, ModelError> {
    let path = dir.join(TABLE_FILE);
    let vocab = super::tokenizer(dir)?;
    let table = match std::fs::read(&path).ok().and_then(|bytes| decode(&bytes)) {
        Some(table) => table,
        None => {
            let started = Instant::now();
            tracing::info!(model_dir = %dir.display(), "distilling the static embedding table from the model (once)");
            let bert = super::bert::Bert::load(dir)?;
            let ids: Vec<u32> = (0..vocab.len() as u32).collect();
            let table = distill::distill(&bert, &ids, &DistillOptions::default());
            write_atomically(&path, &encode(&table))?;
            tracing::info!(
                path = %path.display(),
                seconds = started.elapsed().as_secs_f64(),
                "static embedding table kept"
            );
            table
        }
    };
    Ok(EmbeddingModel {
        vocab,
        table,
        name: MODEL_NAME.to_owned(),
    })
}

/// Where [`load_or_distill`] keeps the table for `dir`.
pub fn table_path(dir: &Path) -> PathBuf {
    dir.join(TABLE_FILE)
}

fn encode(table: &StaticTable) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + table.rows() * (table.dims() + 4));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(table.dims() as u32).to_le_bytes());
    out.extend_from_slice(&(table.rows() as u32).to_le_bytes());
    for id in 0..table.rows() as u32 {
        let (scale, values) = table.quantized(id).expect("id within the table");
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend(values.iter().map(|&v| v as u8));
    }
    out
}

fn decode(bytes: &[u8]) -> Option<StaticTable> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (dims, rest) = rest.split_first_chunk::<4>()?;
    let (rows, rest) = rest.split_first_chunk::<4>()?;
    let (dims, rows) = (
        u32::from_le_bytes(*dims) as usize,
        u32::from_le_bytes(*rows) as usize,
    );
    if dims == 0 || rest.len() != rows * (dims + 4) {
        return None;
    }
    let rows: Vec<(f32, Vec<i8>)> = rest
        .chunks_exact(dims + 4)
        .map(|row| {
            let (scale, values) = row.split_at(4);
            let scale = f32::from_le_bytes(scale.try_into().expect("4 bytes"));
            (scale, values.iter().map(|&v| v as i8).collect())
        })
        .collect();
    StaticTable::from_quantized(dims, rows.iter().map(|(s, v)| (*s, v.as_slice())))
}

/// Writes beside `path` and renames, so a reader never sees half a table.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let error = |source| ModelError::Read {
        path: path.display().to_string(),
        source,
    };
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary).map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use pubsearch_shared::embed::table::StaticTable;

    #[test]
    fn a_kept_table_reads_back_and_a_damaged_one_does_not() {
        let table = StaticTable::quantize(&[vec![1.0, -2.0], vec![0.5, 0.25]], 2);
        let bytes = encode(&table);
        assert_eq!(decode(&bytes), Some(table));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b"PSTABLE0"), None);
    }
}
