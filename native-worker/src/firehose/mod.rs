//! Firehose consumers: Jetstream (JSON over websocket, resumed by cursor), tap (acked websocket)
//! and NDJSON replay files. Each decodes frames into [`Event`]s and hands them to an
//! [`EventSink`], the source interface the ingest pipeline implements; none of them touches the
//! store, and nothing here depends on ingest (ARCHITECTURE.md, "Stages").

mod backoff;
mod event;
pub mod jetstream;
pub mod replay;
pub mod tap;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use backoff::Backoff;
pub use event::{
    Commit, Event, FIRST_TIME_VERSION, FrameError, Operation, Payload, Position, decode_jetstream,
    decode_tap, tap_id,
};

/// Where a consumer delivers what it reads: implemented by the ingest pipeline
/// (`crate::ingest::Sink`).
pub trait EventSink: Clone + Send + Sync + 'static {
    /// Delivers one decoded event, waiting while the receiver is full; `false` once it has
    /// stopped (shutdown or a fatal store error), so the consumer should stop too.
    fn deliver(&self, event: Event) -> impl Future<Output = bool> + Send;
    /// Delivers a position that carried nothing, so it is acknowledged (tap) once everything
    /// before it is durable; `false` as for [`EventSink::deliver`].
    fn pass(&self, position: Position) -> impl Future<Output = bool> + Send;
    /// Counts a frame that was skipped: undecodable, or over [`MAX_FRAME_BYTES`].
    fn refused(&self, frame: Refused);
    /// Counts a reconnect to the source.
    fn reconnected(&self);
    /// The newest event time the receiver has made durable, to resume a time-cursored source
    /// (Jetstream) from after a reconnect.
    fn durable_time_us(&self) -> Option<i64>;
}

/// Why a frame was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Undecodable,
    Oversized,
}

/// Collections pubsearch indexes; Jetstream filters by them, tap and replays are checked against them.
pub const WANTED_COLLECTIONS: &[&str] =
    &["pub.leaflet.*", "site.standard.*", "com.whtwnd.blog.entry"];

/// Frames larger than this are counted and skipped: no record we index is anywhere near it
/// (whitewind caps content at 100k characters), so it is garbage or abuse.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// Websocket limits for both consumers: room for frames over [`MAX_FRAME_BYTES`] to arrive
/// and be counted (and, on tap, acked), without tungstenite's 64 MiB default buffering.
pub(crate) fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(4 * MAX_FRAME_BYTES))
        .max_frame_size(Some(4 * MAX_FRAME_BYTES))
}

/// Whether `collection` matches [`WANTED_COLLECTIONS`] (a trailing `.*` matches a namespace).
pub fn is_wanted(collection: &str) -> bool {
    WANTED_COLLECTIONS
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => collection.starts_with(prefix),
            None => collection == *pattern,
        })
}
