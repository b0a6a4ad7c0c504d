//! Turso (hosted libSQL), the production source of truth when `TURSO_URL` is set.
//!
//! - [`hrana`]: the Hrana-over-HTTP wire types.
//! - [`client`]: a reqwest client with timeouts, bounded retries and typed errors.
//! - [`upstream`]: write-through, draining the store's durable upstream queue in order.
//! - [`sync`]: sync down by watermark, a full paced copy on first start.
//!
//! Replicated rows and their upserts are defined by [`crate::store::replica`].

pub mod client;
pub mod hrana;
pub mod sync;
pub mod upstream;

pub use client::{Retry, TursoClient, TursoConfig, TursoError, TursoStream};

/// Everything `run` needs to replicate with Turso.
#[derive(Debug, Clone)]
pub struct Replication {
    pub config: TursoConfig,
    pub upstream: upstream::UpstreamConfig,
    pub sync: sync::SyncConfig,
    /// Write-through progress, shared with whoever reports it.
    pub stats: std::sync::Arc<upstream::UpstreamStats>,
}

impl Replication {
    /// Replication with `config` and default tuning.
    pub fn new(config: TursoConfig) -> Self {
        Replication {
            config,
            upstream: upstream::UpstreamConfig::default(),
            sync: sync::SyncConfig::default(),
            stats: Default::default(),
        }
    }
}
