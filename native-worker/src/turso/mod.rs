//! Turso (hosted libSQL), the production source of truth when `TURSO_URL` is set.
//!
//! - [`hrana`]: the Hrana-over-HTTP wire types.
//! - [`client`]: a reqwest client with timeouts, bounded retries and typed errors.

pub mod client;
pub mod hrana;

pub use client::{Retry, TursoClient, TursoConfig, TursoError, TursoStream};
