//! The live build's delta (ARCHITECTURE.md, "Deltas"): what changed since the build, published
//! every few seconds, downloaded whole (a delta is small), checked, and searched together with
//! the build through `pubsearch_shared::delta`.

use pubsearch_shared::delta::Delta;
use pubsearch_shared::manifest::{self, Manifest};
use worker::Bucket;

use crate::download;
use crate::snapshot::{self, LoadError};

/// A verified delta, open for queries beside its base.
pub struct LiveDelta {
    pub delta: Delta,
    pub manifest: Manifest,
    pub loaded_at_ms: f64,
    /// From the start of its download to a verified delta.
    pub load_ms: f64,
}

/// Downloads the delta `manifest` names and checks it whole: size, digest, contents, and that
/// it overlays `base_build_id`.
pub async fn load(
    bucket: &Bucket,
    manifest: &Manifest,
    base_build_id: &str,
) -> Result<LiveDelta, LoadError> {
    let started = now_ms();
    manifest.check_spoken()?;
    if manifest.base_build_id.as_deref() != Some(base_build_id) {
        return Err(pubsearch_shared::delta::DeltaError::OtherBase {
            base: base_build_id.to_owned(),
            delta_base: manifest.base_build_id.clone().unwrap_or_default(),
        }
        .into());
    }
    let data = download::artifact(bucket, manifest).await?;
    let conn = snapshot::deserialize(data)?;
    manifest::verify_published(&conn, manifest)?;
    let delta = Delta::open(conn)?;
    delta.check_base(base_build_id)?;
    let loaded_at_ms = now_ms();
    Ok(LiveDelta {
        delta,
        manifest: manifest.clone(),
        loaded_at_ms,
        load_ms: loaded_at_ms - started,
    })
}

fn now_ms() -> f64 {
    worker::Date::now().as_millis() as f64
}
