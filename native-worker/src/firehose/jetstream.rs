//! The Jetstream v1 consumer: JSON events over a websocket, resumed by a `time_us` cursor.
//!
//! On every (re)connect it asks for events from the durable cursor minus [`JetstreamConfig::rewind`]
//! so nothing between the last commit and the drop is missed; the store ignores the repeats.
//! Connections that drop without a close frame, stall, or send garbage are all routine.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Backoff, EventSink, MAX_FRAME_BYTES, Refused, WANTED_COLLECTIONS, decode_jetstream};

/// The public Jetstream endpoint used when none is configured.
pub const DEFAULT_URL: &str = "wss://jetstream2.us-east.bsky.network/subscribe";

/// Where and how to consume Jetstream.
#[derive(Debug, Clone)]
pub struct JetstreamConfig {
    /// The `/subscribe` endpoint.
    pub url: Url,
    /// How far before the durable cursor to resume.
    pub rewind: Duration,
    /// How long to wait for the websocket handshake.
    pub connect_timeout: Duration,
    /// A connection silent this long is presumed dead (Jetstream is never quiet that long).
    pub idle_timeout: Duration,
    /// Reconnect pacing.
    pub backoff: Backoff,
}

impl JetstreamConfig {
    /// Defaults for `url`: 5 s rewind, 15 s connect timeout, 60 s idle timeout.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            rewind: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }

    /// The subscribe URL for a connection resuming at `cursor`.
    pub fn subscribe_url(&self, cursor: Option<i64>) -> Url {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            for collection in WANTED_COLLECTIONS {
                query.append_pair("wantedCollections", collection);
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", &cursor.to_string());
            }
        }
        url
    }
}

/// Consumes Jetstream until `shutdown` is cancelled or the pipeline stops accepting events.
pub async fn run(mut config: JetstreamConfig, sink: impl EventSink, shutdown: CancellationToken) {
    let ws_config = super::websocket_config();
    loop {
        let rewind_us = config.rewind.as_micros() as i64;
        let cursor = sink.durable_time_us().map(|t| (t - rewind_us).max(0));
        let url = config.subscribe_url(cursor);
        tracing::info!(%url, "connecting to jetstream");
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config), false);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tokio::time::timeout(config.connect_timeout, connect) => result,
        };
        match outcome {
            Ok(Ok((stream, _response))) => {
                let (events, accepting) =
                    read_frames(stream, &sink, &shutdown, config.idle_timeout).await;
                if !accepting || shutdown.is_cancelled() {
                    return;
                }
                if events > 0 {
                    config.backoff.reset();
                }
                tracing::warn!(events, "jetstream connection ended; reconnecting");
            }
            Ok(Err(error)) => tracing::warn!(%error, "jetstream connect failed"),
            Err(_) => {
                tracing::warn!(timeout = ?config.connect_timeout, "jetstream connect timed out")
            }
        }
        sink.reconnected();
        let delay = config.backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reads one connection until it ends; returns events delivered and whether the sink still accepts.
async fn read_frames<S>(
    mut stream: tokio_tungstenite::WebSocketStream<S>,
    sink: &impl EventSink,
    shutdown: &CancellationToken,
    idle_timeout: Duration,
) -> (u64, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut events = 0;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return (events, true),
            next = tokio::time::timeout(idle_timeout, stream.next()) => next,
        };
        let message = match next {
            Err(_) => {
                tracing::warn!(?idle_timeout, "jetstream went silent");
                return (events, true);
            }
            Ok(None) => return (events, true),
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "jetstream read failed");
                return (events, true);
            }
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return (events, true),
            Message::Binary(_) => {
                sink.refused(Refused::Undecodable);
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if text.len() > MAX_FRAME_BYTES {
            sink.refused(Refused::Oversized);
            continue;
        }
        match decode_jetstream(&text) {
            Ok(event) => {
                events += 1;
                if !sink.deliver(event).await {
                    return (events, false);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "skipping undecodable jetstream frame");
                sink.refused(Refused::Undecodable);
            }
        }
    }
}
