//! Spans reach a real OTLP/HTTP receiver on loopback with the expected names and parent/child
//! structure, and shutdown stays bounded when the collector is dead.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use pubsearch_native_worker::publish::objects::ObjectTarget;
use pubsearch_native_worker::publish::{self, PublishOptions};
use pubsearch_native_worker::run::store_path;
use pubsearch_native_worker::store::Store;
use pubsearch_native_worker::telemetry::{self, TraceConfig};
use tracing_subscriber::layer::SubscriberExt;

/// A received span: (name, span id, parent span id, service name).
type Received = (String, Vec<u8>, Vec<u8>, String);

async fn receive(State(spans): State<Arc<Mutex<Vec<Received>>>>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.lock().unwrap().push((
                    span.name,
                    span.span_id,
                    span.parent_span_id,
                    service.clone(),
                ));
            }
        }
    }
    ""
}

fn exporter(endpoint: &str, timeout: Duration) -> opentelemetry_otlp::SpanExporter {
    use opentelemetry_otlp::WithExportConfig;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_spans_arrive_with_their_structure() {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(Arc::clone(&spans));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = TraceConfig::default();
    let provider = telemetry::batch_provider(
        exporter(&endpoint, Duration::from_secs(5)),
        &config,
        "otlp-test",
    );
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(telemetry::otel_layer(&provider)),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    support::replay(dir.path(), &support::jetstream_events(300)).await;
    let store = Store::open(store_path(dir.path())).unwrap();
    let target = ObjectTarget::local(&dir.path().join("published")).unwrap();
    let options = PublishOptions {
        channel: "prod".into(),
        force: false,
        keep: 3,
    };
    publish::publish_once(&store, &dir.path().join("work"), &target, &options)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        telemetry::shutdown_provider(&provider, Duration::from_secs(5))
    })
    .await
    .unwrap();

    let spans = spans.lock().unwrap().clone();
    let find = |name: &str| {
        spans
            .iter()
            .find(|span| span.0 == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let root = find("publish");
    assert!(root.2.is_empty(), "publish is a root span");
    for child in [
        "snapshot.build",
        "snapshot.verify",
        "snapshot.upload",
        "snapshot.pointer",
    ] {
        assert_eq!(find(child).2, root.1, "{child} is a child of publish");
    }
    assert!(
        spans.iter().any(|span| span.0 == "ingest.commit"),
        "ingest commits are traced"
    );
    assert!(
        root.3.contains("otlp-test"),
        "service name travels with the spans: {}",
        root.3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_dead_collector_is_bounded() {
    // A collector that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16).flatten() {
            holder.lock().unwrap().push(stream);
        }
    });
    let config = TraceConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..TraceConfig::default()
    };
    let provider = telemetry::batch_provider(
        exporter(&endpoint, Duration::from_secs(30)),
        &config,
        "dead-collector",
    );
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(telemetry::otel_layer(&provider)),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..1_000 {
            drop(tracing::info_span!("work", i));
        }
    });
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        telemetry::shutdown_provider(&provider, config.shutdown_timeout)
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}
