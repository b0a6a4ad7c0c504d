//! Manifest verification refuses every kind of mismatch. Runs natively and as wasm.

mod support;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use pubsearch_shared::manifest::{self, ArtifactDigest, Manifest, VerifyError};
use pubsearch_shared::schema;
use pubsearch_shared::snapshot;

fn manifest_for(conn: &rusqlite::Connection) -> Manifest {
    Manifest {
        build_id: "b1".into(),
        channel: "prod".into(),
        schema_version: schema::SCHEMA_VERSION,
        tokenizer: schema::TOKENIZER.into(),
        scoring_version: schema::SCORING_VERSION,
        source_watermark_us: support::WATERMARK_US,
        sha256: ArtifactDigest::of(b"artifact"),
        byte_size: 8,
        page_size: 4096,
        counts: snapshot::count(conn).unwrap(),
        sentinel: manifest::choose_sentinel(conn).unwrap(),
        created_at: support::now(),
        builder_version: "test".into(),
        artifact: manifest::artifact_key("b1"),
        chunks: None,
        base_build_id: None,
        delta: None,
    }
}

#[test]
fn chunk_tables_cover_the_artifact_however_it_streams() {
    let artifact: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut streamed = manifest::ArtifactDigests::new(4096);
    // Pieces that straddle chunk boundaries.
    for piece in artifact.chunks(1_000) {
        streamed.update(piece);
    }
    let (whole, table) = streamed.finish();
    assert_eq!(whole, ArtifactDigest::of(&artifact));
    assert_eq!(table.chunk_bytes, 4096);
    let expected: Vec<String> = artifact.chunks(4096).map(ArtifactDigest::of).collect();
    assert_eq!(
        table.sha256, expected,
        "two full chunks and a short last one"
    );
    assert_eq!(table.digests(artifact.len() as u64).unwrap().len(), 3);

    // A table that does not describe the artifact's size, or is not hex, is refused.
    assert!(matches!(
        table.digests(artifact.len() as u64 + 4096),
        Err(VerifyError::ChunkTable(_))
    ));
    let mut bad = table.clone();
    bad.sha256[1] = "zz".repeat(32);
    assert!(matches!(
        bad.digests(artifact.len() as u64),
        Err(VerifyError::ChunkTable(_))
    ));

    // A changed byte is named by its chunk.
    let manifest = Manifest {
        byte_size: artifact.len() as u64,
        chunks: Some(table.clone()),
        ..manifest_for(&support::open_fixture())
    };
    let mut changed = artifact.clone();
    changed[5_000] ^= 1;
    let (_, computed) = manifest::ArtifactDigests::of_reader(&changed[..], 4096)
        .unwrap()
        .finish();
    assert!(matches!(
        manifest.check_chunks(&table, &computed),
        Err(VerifyError::Chunk { index: 1, .. })
    ));
    manifest.check_chunks(&table, &table).unwrap();
    // The pointer drops the table; everything else is the manifest's.
    assert_eq!(
        manifest.pointer(),
        Manifest {
            chunks: None,
            ..manifest.clone()
        }
    );
}

#[test]
fn a_matching_snapshot_verifies() {
    let conn = support::open_fixture();
    let manifest = manifest_for(&conn);
    let sentinel = manifest.sentinel.clone().unwrap();
    assert_eq!(
        sentinel.term, "rust",
        "first word of at least three letters of the first title"
    );
    assert!(sentinel.documents > 1);
    manifest::verify_snapshot(&conn, &manifest).unwrap();
    let round_trip = Manifest::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert_eq!(round_trip, manifest);
}

#[test]
fn mismatches_are_refused_with_reasons() {
    let conn = support::open_fixture();
    let good = manifest_for(&conn);

    // The publisher's gate and the reader's check refuse the same mismatches.
    for verify in [manifest::verify_snapshot, manifest::verify_published] {
        verify(&conn, &good).unwrap();

        let mut counts = good.clone();
        counts.counts.documents += 1;
        assert!(matches!(
            verify(&conn, &counts),
            Err(VerifyError::Counts { .. })
        ));

        let mut sentinel = good.clone();
        sentinel.sentinel.as_mut().unwrap().documents += 1;
        assert!(matches!(
            verify(&conn, &sentinel),
            Err(VerifyError::Sentinel { .. })
        ));

        let mut watermark = good.clone();
        watermark.source_watermark_us += 1;
        assert!(matches!(
            verify(&conn, &watermark),
            Err(VerifyError::Meta(_))
        ));
    }

    let mut future = good.clone();
    future.schema_version += 1;
    let error = Manifest::parse(&serde_json::to_vec(&future).unwrap()).unwrap_err();
    assert!(matches!(error, VerifyError::Unspoken { .. }), "{error}");

    assert!(matches!(
        good.check_artifact(9, &good.sha256),
        Err(VerifyError::Size { .. })
    ));
    let corrupted = ArtifactDigest::of(b"artifacT");
    assert!(matches!(
        good.check_artifact(8, &corrupted),
        Err(VerifyError::Checksum { .. })
    ));
    good.check_artifact(8, &ArtifactDigest::of(b"artifact"))
        .unwrap();
}

#[test]
fn a_row_missing_from_its_index_is_refused() {
    let conn = support::open_fixture();
    let manifest = manifest_for(&conn);
    conn.execute_batch(
        "INSERT INTO documents_fts (documents_fts, rowid, title, content)
         SELECT 'delete', id, title, content FROM document_text WHERE id = (SELECT max(id) FROM documents)",
    )
    .unwrap();
    for verify in [manifest::verify_snapshot, manifest::verify_published] {
        let error = verify(&conn, &manifest).unwrap_err();
        assert!(
            matches!(
                error,
                VerifyError::Unindexed {
                    index: "documents_fts",
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[test]
fn streaming_digest_equals_whole_digest() {
    let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut streamed = ArtifactDigest::default();
    for chunk in data.chunks(777) {
        streamed.update(chunk);
    }
    assert_eq!(streamed.bytes(), data.len() as u64);
    assert_eq!(streamed.finish(), ArtifactDigest::of(&data));
    assert_eq!(
        ArtifactDigest::of(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn a_damaged_page_is_refused_before_publishing() {
    let mut fixture = support::open_fixture();
    let manifest = manifest_for(&fixture);
    let (page_size, root): (i64, i64) = fixture
        .query_row(
            "SELECT (SELECT page_size FROM pragma_page_size()),
                    (SELECT rootpage FROM sqlite_schema WHERE name = 'document_tags')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let mut bytes = fixture.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
    // A table no check of the contents reads: its root page's b-tree type byte, made invalid.
    bytes[((root - 1) * page_size) as usize] = 0xff;
    let mut damaged = rusqlite::Connection::open_in_memory().unwrap();
    damaged
        .deserialize_read_exact(rusqlite::MAIN_DB, &bytes[..], bytes.len(), true)
        .unwrap();
    let error = manifest::verify_snapshot(&damaged, &manifest).unwrap_err();
    assert!(matches!(error, VerifyError::Integrity(_)), "{error}");
    // A reader trusts the digest instead: these bytes could only be served if the publisher's
    // gate had passed them.
    manifest::verify_published(&damaged, &manifest).unwrap();
}
