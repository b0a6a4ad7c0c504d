//! In-process stand-ins for Jetstream and tap on loopback, written from their protocols
//! (Jetstream's `/subscribe` JSON events, tap's acknowledged `/channel`) and faithful in the
//! failure modes a consumer must survive: connections dropped without a close frame, garbage
//! frames, oversized frames, cursor replay (Jetstream) and redelivery of unacknowledged events
//! (tap).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Failure injection shared by both stand-ins.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Drop the TCP connection (no close frame) after this many events on each connection.
    pub drop_after: Option<usize>,
    /// Send a garbage text frame before every Nth event.
    pub garbage_every: Option<usize>,
    /// Send one frame larger than the consumer's limit on each connection.
    pub oversized_frame: bool,
}

fn garbage(n: usize) -> Message {
    match n % 3 {
        0 => Message::text("{not json"),
        1 => Message::text(r#"{"did":"did:plc:x","time_us":1,"kind":"mystery"}"#),
        _ => Message::binary(vec![0xde, 0xad, 0xbe, 0xef]),
    }
}

/// A Jetstream v1 server replaying a fixed list of event lines, honouring `?cursor=` (events
/// with `time_us >= cursor`), then idling like a live tail with nothing new.
pub struct JetstreamServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<Option<i64>>>>,
}

impl JetstreamServer {
    pub async fn start(events: Vec<String>, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let events: Arc<Vec<(i64, String)>> = Arc::new(
            events
                .into_iter()
                .map(|line| {
                    let time_us =
                        serde_json::from_str::<serde_json::Value>(&line).unwrap()["time_us"]
                            .as_i64()
                            .unwrap();
                    (time_us, line)
                })
                .collect(),
        );
        let seen = Arc::clone(&connections);
        tokio::spawn(async move {
            let mut stopped_outer = stopped.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stopped_outer.changed() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let events = Arc::clone(&events);
                let faults = faults.clone();
                let seen = Arc::clone(&seen);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut cursor = None;
                    // The handshake callback's signature is tungstenite's, large error and all.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &Request, response: Response| {
                        cursor = request.uri().query().and_then(|query| {
                            query
                                .split('&')
                                .find_map(|pair| pair.strip_prefix("cursor=")?.parse::<i64>().ok())
                        });
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    seen.lock().unwrap().push(cursor);
                    let mut sent = 0usize;
                    if faults.oversized_frame {
                        let _ = ws.send(Message::text("x".repeat(3 * 1024 * 1024))).await;
                    }
                    for (time_us, line) in events.iter() {
                        if cursor.is_some_and(|cursor| *time_us < cursor) {
                            continue;
                        }
                        if let Some(every) = faults.garbage_every
                            && sent % every == every - 1
                        {
                            let _ = ws.send(garbage(sent)).await;
                        }
                        if faults.drop_after == Some(sent) {
                            return; // dropping the socket: no close frame
                        }
                        if ws.send(Message::text(line.clone())).await.is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    // Live tail with nothing new: hold the connection until told to stop.
                    let _ = stopped.changed().await;
                });
            }
        });
        Self {
            addr,
            stop,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/subscribe", self.addr)
    }

    /// The cursor each connection asked for, in connection order.
    pub fn cursors(&self) -> Vec<Option<i64>> {
        self.connections.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for JetstreamServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tap `/channel` server: numbers events from 1, sends every unacknowledged one on connect,
/// and redelivers any still unacknowledged after `redeliver_after` (tap uses ~10 s).
pub struct TapServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    deliveries: Arc<Mutex<u64>>,
    connections: Arc<Mutex<u64>>,
    total: u64,
}

impl TapServer {
    /// `frames` are tap frame bodies without the id: `{"type":"record","record":{…}}`.
    pub async fn start(
        frames: Vec<serde_json::Value>,
        redeliver_after: Duration,
        faults: Faults,
    ) -> Self {
        Self::start_observed(frames, redeliver_after, faults, Arc::new(|_| {})).await
    }

    /// Like [`TapServer::start`], calling `on_ack` with each newly acknowledged id as it arrives.
    pub async fn start_observed(
        frames: Vec<serde_json::Value>,
        redeliver_after: Duration,
        faults: Faults,
        on_ack: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let total = frames.len() as u64;
        let frames: Arc<Vec<(u64, String)>> = Arc::new(
            frames
                .into_iter()
                .enumerate()
                .map(|(index, mut frame)| {
                    let id = index as u64 + 1;
                    frame["id"] = id.into();
                    (id, frame.to_string())
                })
                .collect(),
        );
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let deliveries = Arc::new(Mutex::new(0));
        let connections = Arc::new(Mutex::new(0));
        let (acked_outer, deliveries_outer, connections_outer) = (
            Arc::clone(&acked),
            Arc::clone(&deliveries),
            Arc::clone(&connections),
        );
        tokio::spawn(async move {
            let mut stopped_outer = stopped.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stopped_outer.changed() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                *connections_outer.lock().unwrap() += 1;
                let (frames, acked, deliveries, faults, on_ack) = (
                    Arc::clone(&frames),
                    Arc::clone(&acked_outer),
                    Arc::clone(&deliveries_outer),
                    faults.clone(),
                    Arc::clone(&on_ack),
                );
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let (mut write, mut read) = ws.split();
                    let mut sent_here = 0usize;
                    loop {
                        // One delivery round: everything not yet acknowledged, in id order.
                        let pending: Vec<&(u64, String)> = {
                            let acked = acked.lock().unwrap();
                            frames
                                .iter()
                                .filter(|(id, _)| !acked.contains(id))
                                .collect()
                        };
                        for (id, frame) in pending {
                            if acked.lock().unwrap().contains(id) {
                                continue;
                            }
                            if let Some(every) = faults.garbage_every
                                && sent_here % every == every - 1
                            {
                                let _ = write.send(garbage(sent_here)).await;
                            }
                            if write.send(Message::text(frame.clone())).await.is_err() {
                                return;
                            }
                            sent_here += 1;
                            *deliveries.lock().unwrap() += 1;
                            if faults.drop_after == Some(sent_here) {
                                // Gone right after a send, without a close frame: that event's ack
                                // cannot have arrived, so it is always redelivered.
                                return;
                            }
                            // Read acks as they come so a slow round does not starve them.
                            while let Ok(Some(Ok(message))) =
                                tokio::time::timeout(Duration::from_millis(0), read.next()).await
                            {
                                record_ack(&acked, &message, &*on_ack);
                            }
                        }
                        // Wait for acks until the redelivery deadline, then go round again.
                        let deadline = tokio::time::sleep(redeliver_after);
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                _ = stopped.changed() => return,
                                _ = &mut deadline => break,
                                message = read.next() => match message {
                                    Some(Ok(message)) => record_ack(&acked, &message, &*on_ack),
                                    _ => return,
                                },
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            stop,
            acked,
            deliveries,
            connections,
            total,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/channel", self.addr)
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn all_acked(&self) -> bool {
        self.acked() as u64 == self.total
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        *self.connections.lock().unwrap()
    }

    /// Frames sent, redeliveries included.
    pub fn deliveries(&self) -> u64 {
        *self.deliveries.lock().unwrap()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for TapServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record_ack(
    acked: &Mutex<BTreeSet<u64>>,
    message: &Message,
    on_ack: &(dyn Fn(u64) + Send + Sync),
) {
    if let Message::Text(text) = message
        && let Ok(ack) = serde_json::from_str::<serde_json::Value>(text)
        && ack["type"] == "ack"
        && let Some(id) = ack["id"].as_u64()
        && acked.lock().unwrap().insert(id)
    {
        on_ack(id);
    }
}
