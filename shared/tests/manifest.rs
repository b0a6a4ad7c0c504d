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
    }
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

    let mut counts = good.clone();
    counts.counts.documents += 1;
    assert!(matches!(
        manifest::verify_snapshot(&conn, &counts),
        Err(VerifyError::Counts { .. })
    ));

    let mut sentinel = good.clone();
    sentinel.sentinel.as_mut().unwrap().documents += 1;
    assert!(matches!(
        manifest::verify_snapshot(&conn, &sentinel),
        Err(VerifyError::Sentinel { .. })
    ));

    let mut watermark = good.clone();
    watermark.source_watermark_us += 1;
    assert!(matches!(
        manifest::verify_snapshot(&conn, &watermark),
        Err(VerifyError::Meta(_))
    ));

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
