//! Building a delta: everything that changed in the store since a base build, as a small
//! snapshot that overlays it (ARCHITECTURE.md, "Deltas"; the format is `shared::delta`).
//!
//! A delta is cumulative: it covers every change since the base's watermark, so each one
//! supersedes the last and a reader holds only the base and the newest delta. The work is
//! proportional to what changed, found through the store's `indexed_at`/`updated_at` indexes:
//!
//! - documents stamped after the base's watermark (new, edited, deleted), documents of accounts
//!   that changed since (deactivated, reactivated), documents of publications that changed since
//!   (hidden from discovery, deleted), and every copy of a cross-posted text among them (the
//!   first eligible copy is the one served), found by the text's hash both as the store has it
//!   now and as the base served it (a delete or an edit drops the old hash from the store);
//! - of those, the ones passing policy now are written; every one's base row (by URI) is masked;
//! - after a change to the banned list, every base document and publication by a banned author
//!   is masked too. (An unbanned author's documents return with the next base.)
//!
//! The base file must be on local disk: masks name base rowids, and cross-post families and
//! tag counts are continued from the base (see `shared::delta::finish`).

use std::path::Path;
use std::time::Instant;

use pubsearch_shared::delta::{self, MASK_DOCUMENT, MASK_PUBLICATION};
use pubsearch_shared::manifest::Manifest;
use pubsearch_shared::snapshot::SnapshotWriter;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::build::{self, BuildError, BuiltSnapshot};
use crate::store::Store;
use crate::store::read::{self, ChangedRows};

/// The text hashes of the base's copies of `documents` (those it serves): their other copies
/// may be the ones to serve now.
fn served_hashes(base_file: &Path, documents: &[(i64, String)]) -> rusqlite::Result<Vec<String>> {
    let base = Connection::open_with_flags(base_file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    pubsearch_shared::content::install(&base)?;
    let text = pubsearch_shared::schema::text_source(&base, "d.id")?;
    let mut statement = base.prepare(&format!(
        "SELECT d.title, {function}({text}) FROM documents AS d WHERE d.uri = ?1",
        function = pubsearch_shared::content::FUNCTION,
    ))?;
    let mut hashes = Vec::new();
    for (_, uri) in documents {
        let served = statement
            .query_row([uri], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        if let Some((title, content)) = served {
            hashes.push(crate::extract::content_hash(&title, &content));
        }
    }
    Ok(hashes)
}

/// Builds a delta of `store` over `base` (its snapshot file at `base_file`) into `out`.
pub fn build(
    store: &Store,
    base: &Manifest,
    base_file: &Path,
    out: &Path,
    build_id: &str,
) -> Result<BuiltSnapshot, BuildError> {
    let started = Instant::now();
    let write = BuildError::write(out);
    let mut target = build::create_target(out)?;
    let mut source = store.reader()?;
    let tx = source.transaction().map_err(BuildError::Read)?;
    let watermark = read::newest_stamp(&tx).map_err(BuildError::Read)?;
    let mut changed =
        read::changed_rows(&tx, base.source_watermark_us).map_err(BuildError::Read)?;
    let base_read = |source| BuildError::Base {
        path: base_file.to_path_buf(),
        source,
    };
    let served_hashes = served_hashes(base_file, &changed.documents).map_err(base_read)?;
    read::add_copies_of(&tx, &mut changed, &served_hashes).map_err(BuildError::Read)?;

    let mut writer = SnapshotWriter::create(&mut target).map_err(&write)?;
    let publication_ids: Vec<i64> = changed.publications.iter().map(|(id, _)| *id).collect();
    let publications = build::read_publications(&tx, watermark, Some(&publication_ids))
        .map_err(BuildError::Read)?;
    for publication in &publications {
        writer.add_publication(publication).map_err(&write)?;
    }
    let document_ids: Vec<i64> = changed.documents.iter().map(|(id, _)| *id).collect();
    let mut documents =
        build::read_documents(&tx, watermark, &document_ids).map_err(BuildError::Read)?;
    // Newest first, as in a base (ARCHITECTURE.md invariant 9).
    documents.sort_by(|(_, a), (_, b)| b.created_at.cmp(&a.created_at).then(a.uri.cmp(&b.uri)));
    let written = documents.len() as u64;
    // The authors it rewrites, who include everyone renamed since the base (a handle change
    // marks the account changed): their handles here win over the base's.
    let mut authors: std::collections::BTreeSet<String> = publications
        .iter()
        .map(|publication| publication.did.clone())
        .collect();
    // Vectors by the model builds use now; `shared::delta::finish` embeds with the base's
    // model instead (and ignores these) if the base was built with another.
    let model = crate::embed::stored::for_builds();
    build::add_documents(
        &tx,
        &mut writer,
        documents,
        model.as_deref(),
        &mut authors,
        out,
    )?;
    build::add_handles(&tx, &mut writer, &authors, out)?;
    writer.finish(watermark).map_err(&write)?;
    let banned = if changed.banned_list {
        read::banned_dids(&tx).map_err(BuildError::Read)?
    } else {
        Vec::new()
    };
    drop(tx);

    mask(
        &target,
        base,
        base_file,
        &changed,
        &banned,
        model.as_deref(),
    )
    .map_err(&write)?;
    let manifest = build::seal(
        target,
        out,
        build_id,
        &base.channel,
        watermark,
        Some(base.build_id.clone()),
    )?;
    tracing::info!(
        build_id,
        base = base.build_id,
        documents = manifest.counts.documents,
        reconsidered = changed.documents.len(),
        bytes = manifest.byte_size,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "delta built"
    );
    Ok(BuiltSnapshot {
        path: out.to_path_buf(),
        manifest,
        source_documents: Some(written),
    })
}

/// Writes the delta's masks against the base file and completes it (`shared::delta::finish`).
fn mask(
    target: &Connection,
    base: &Manifest,
    base_file: &Path,
    changed: &ChangedRows,
    banned: &[String],
    model: Option<&pubsearch_shared::embed::model::EmbeddingModel>,
) -> rusqlite::Result<()> {
    delta::create_tables(target)?;
    target.execute(
        "ATTACH ?1 AS base",
        [format!("file:{}?mode=ro", base_file.display())],
    )?;
    {
        let mut insert =
            target.prepare("INSERT OR IGNORE INTO delta_masks (kind, id) VALUES (?1, ?2)")?;
        for (kind, table, rows) in [
            (MASK_DOCUMENT, "documents", &changed.documents),
            (MASK_PUBLICATION, "publications", &changed.publications),
        ] {
            let mut find =
                target.prepare(&format!("SELECT id FROM base.{table} WHERE uri = ?1"))?;
            for (_, uri) in rows {
                if let Some(id) = find
                    .query_row([uri], |row| row.get::<_, i64>(0))
                    .optional()?
                {
                    insert.execute((kind, id))?;
                }
            }
            let mut by_author = target.prepare(&format!(
                "INSERT OR IGNORE INTO delta_masks (kind, id)
                 SELECT {kind}, id FROM base.{table} WHERE did = ?1"
            ))?;
            for did in banned {
                by_author.execute([did])?;
            }
        }
    }
    delta::finish(target, "base", &base.build_id, model)?;
    target.execute_batch("DETACH base")
}
