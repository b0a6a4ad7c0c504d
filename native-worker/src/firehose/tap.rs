//! The tap consumer: events over `WS /channel`, each acknowledged only once durable.
//!
//! The writer reports the tap ids each commit made durable; this task sends `{"type":"ack"}` for
//! them on whatever connection is current. Anything unacked when a connection drops is
//! redelivered by tap, and the store's revision check makes the repeat harmless.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Backoff, EventSink, MAX_FRAME_BYTES, Position, Refused, decode_tap, tap_id};

/// Where and how to consume tap.
#[derive(Debug, Clone)]
pub struct TapConfig {
    /// The `/channel` websocket endpoint.
    pub url: Url,
    /// How long to wait for the websocket handshake.
    pub connect_timeout: Duration,
    /// Reconnect pacing.
    pub backoff: Backoff,
}

impl TapConfig {
    /// Defaults for `url`: 15 s connect timeout.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            connect_timeout: Duration::from_secs(15),
            backoff: Backoff::default(),
        }
    }
}

/// Consumes tap until `shutdown` is cancelled or the pipeline stops accepting events. `acks`
/// delivers the ids the writer has made durable.
pub async fn run(
    mut config: TapConfig,
    sink: impl EventSink,
    mut acks: mpsc::UnboundedReceiver<Vec<u64>>,
    shutdown: CancellationToken,
) {
    loop {
        tracing::info!(url = %config.url, "connecting to tap");
        let connect = tokio_tungstenite::connect_async_with_config(
            config.url.as_str(),
            Some(super::websocket_config()),
            false,
        );
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tokio::time::timeout(config.connect_timeout, connect) => result,
        };
        match outcome {
            Ok(Ok((stream, _))) => {
                let (mut write, mut read) = stream.split();
                let mut events = 0u64;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            // Flush acks for whatever the writer already made durable.
                            while let Ok(ids) = acks.try_recv() {
                                let _ = send_acks(&mut write, &ids).await;
                            }
                            return;
                        }
                        Some(ids) = acks.recv() => {
                            if let Err(error) = send_acks(&mut write, &ids).await {
                                tracing::warn!(%error, "tap ack failed; tap will redeliver");
                                break;
                            }
                        }
                        next = read.next() => {
                            let text = match next {
                                Some(Ok(Message::Text(text))) => text,
                                Some(Ok(Message::Close(_))) | None => break,
                                Some(Ok(_)) => continue,
                                Some(Err(error)) => {
                                    tracing::warn!(%error, "tap read failed");
                                    break;
                                }
                            };
                            let accepted = if text.len() > MAX_FRAME_BYTES {
                                let id = tap_id(&text);
                                tracing::warn!(?id, bytes = text.len(), "skipping oversized tap frame");
                                sink.refused(Refused::Oversized);
                                retire(&sink, id).await
                            } else {
                                match decode_tap(&text) {
                                    Ok(event) => {
                                        events += 1;
                                        sink.deliver(event).await
                                    }
                                    Err((id, error)) => {
                                        tracing::debug!(%error, "skipping undecodable tap frame");
                                        sink.refused(Refused::Undecodable);
                                        retire(&sink, id).await
                                    }
                                }
                            };
                            if !accepted {
                                return;
                            }
                        }
                    }
                }
                if events > 0 {
                    config.backoff.reset();
                }
                tracing::warn!(events, "tap connection ended; reconnecting");
            }
            Ok(Err(error)) => tracing::warn!(%error, "tap connect failed"),
            Err(_) => tracing::warn!(timeout = ?config.connect_timeout, "tap connect timed out"),
        }
        sink.reconnected();
        let delay = config.backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Queues a frame that will never be processed for acknowledgement, in order with the rest,
/// so tap stops redelivering it. Without an id there is nothing to ack. Returns whether the
/// pipeline still accepts.
async fn retire(sink: &impl EventSink, id: Option<u64>) -> bool {
    match id {
        Some(id) => sink.pass(Position::TapId(id)).await,
        None => true,
    }
}

async fn send_acks<W>(write: &mut W, ids: &[u64]) -> Result<(), W::Error>
where
    W: futures_util::Sink<Message> + Unpin,
{
    for id in ids {
        write
            .feed(Message::text(format!(r#"{{"type":"ack","id":{id}}}"#)))
            .await?;
    }
    write.flush().await
}
