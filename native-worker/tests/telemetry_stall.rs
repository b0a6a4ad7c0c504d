//! A slow trace collector never stalls the code that ends spans, nor the admin endpoint.
//! The negative control wires the same slow exporter synchronously and must show the stall,
//! so this test can fail.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use pubsearch_native_worker::admin;
use pubsearch_native_worker::ingest::{self, IngestConfig};
use pubsearch_native_worker::store::Store;
use pubsearch_native_worker::telemetry::{self, TraceConfig};
use tokio_util::sync::CancellationToken;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

/// An exporter that takes `delay` per batch, like a collector on a bad day.
#[derive(Debug, Clone)]
struct SlowExporter {
    delay: Duration,
    exported: Arc<AtomicUsize>,
}

impl SpanExporter for SlowExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::thread::sleep(self.delay);
        self.exported.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
}

fn dispatch(provider: &SdkTracerProvider) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(telemetry::otel_layer(provider)))
}

/// The slowest span end seen across `threads` threads each ending `spans` spans.
fn worst_span_end(dispatch: &Dispatch, threads: usize, spans: usize) -> Duration {
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let dispatch = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let mut worst = Duration::ZERO;
                    for i in 0..spans {
                        let span = tracing::info_span!("work", thread, i);
                        drop(span.enter());
                        let started = Instant::now();
                        drop(span); // the span ends here
                        worst = worst.max(started.elapsed());
                    }
                    worst
                })
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .max()
        .unwrap()
}

/// Serves the admin endpoint under `dispatch` on its own thread; returns its address.
fn admin_under(
    dispatch: Dispatch,
    stop: CancellationToken,
) -> (std::net::SocketAddr, impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let (sink, writer) =
        ingest::spawn_writer(&store, &IngestConfig::default(), None, None).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let state = support::admin_state(&sink, None);
    let server = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                admin::serve(listener, state, stop).await.unwrap();
            });
        })
    });
    let finish = move || {
        server.join().unwrap();
        drop(sink);
        writer.join().unwrap();
        drop(dir);
    };
    (addr, finish)
}

/// The slowest of `requests` sequential `/health` calls.
async fn worst_health(addr: std::net::SocketAddr, requests: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..requests {
        let started = Instant::now();
        assert_eq!(support::http_get(addr, "/health").await.0, 200);
        worst = worst.max(started.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_export_never_stalls_span_ends_or_the_admin_endpoint() {
    let exported = Arc::new(AtomicUsize::new(0));
    let exporter = SlowExporter {
        delay: Duration::from_secs(2),
        exported: Arc::clone(&exported),
    };
    let config = TraceConfig {
        max_queue_size: 512,
        shutdown_timeout: Duration::from_secs(3),
        ..TraceConfig::default()
    };
    let provider = telemetry::batch_provider(exporter, &config, "stall-test");
    let dispatch = dispatch(&provider);
    let stop = CancellationToken::new();
    let (addr, finish) = admin_under(dispatch.clone(), stop.clone());

    let idle = worst_health(addr, 20).await;
    let ender = tokio::task::spawn_blocking({
        let dispatch = dispatch.clone();
        move || worst_span_end(&dispatch, 4, 5_000)
    });
    let busy = worst_health(addr, 50).await;
    let worst_end = ender.await.unwrap();
    stop.cancel();
    tokio::task::spawn_blocking(finish).await.unwrap();

    assert!(
        worst_end < Duration::from_millis(50),
        "slowest span end {worst_end:?}"
    );
    assert!(
        busy < Duration::from_millis(250),
        "admin /health took {busy:?} while exports were stuck (idle {idle:?})"
    );
    let started = Instant::now();
    telemetry::shutdown_provider(&provider, config.shutdown_timeout);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown is bounded: {:?}",
        started.elapsed()
    );
    assert!(
        exported.load(Ordering::SeqCst) < 20_000,
        "spans past the queue were dropped, not buffered without bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_synchronous_export_stalls_everything() {
    let exporter = SlowExporter {
        delay: Duration::from_millis(300),
        exported: Arc::new(AtomicUsize::new(0)),
    };
    // The mis-wiring ARCHITECTURE.md invariant 4 forbids: export inside span.end(), under the processor's lock.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let dispatch = dispatch(&provider);
    let stop = CancellationToken::new();
    let (addr, finish) = admin_under(dispatch.clone(), stop.clone());
    let worst_end = tokio::task::spawn_blocking({
        let dispatch = dispatch.clone();
        move || worst_span_end(&dispatch, 2, 3)
    })
    .await
    .unwrap();
    let health = worst_health(addr, 2).await;
    stop.cancel();
    tokio::task::spawn_blocking(finish).await.unwrap();
    assert!(
        worst_end >= Duration::from_millis(250),
        "the control must stall: {worst_end:?}"
    );
    assert!(
        health >= Duration::from_millis(250),
        "the control must stall the endpoint: {health:?}"
    );
}
