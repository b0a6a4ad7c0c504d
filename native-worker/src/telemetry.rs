//! Telemetry that never blocks the work it observes (ARCHITECTURE.md invariant 4).
//!
//! Logs are human-readable on stderr, filtered by `RUST_LOG` (default `info`). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, `tracing` spans are also exported as OpenTelemetry traces
//! over OTLP/HTTP, named by `OTEL_SERVICE_NAME` (default `pubsearch-native-worker`) and filtered by
//! `PUBSEARCH_TRACE_FILTER` (default `info`).
//!
//! Spans end into the SDK's `BatchSpanProcessor`: a bounded queue drained by its own thread, so
//! `span.end()` is a non-blocking enqueue; when the queue is full the span is dropped and counted,
//! and the SDK reports the total at shutdown. A synchronous processor (export inside `end()`
//! under a lock) is never used: it stalls every caller behind a slow collector.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanExporter,
};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "pubsearch-native-worker";

/// Span pipeline tuning.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// Spans buffered before new ones are dropped.
    pub max_queue_size: usize,
    /// How long shutdown waits for the last export.
    pub shutdown_timeout: Duration,
    /// How long one OTLP export request may take before it is abandoned.
    pub export_timeout: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            max_queue_size: 8_192,
            shutdown_timeout: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it with a bounded wait.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    shutdown_timeout: Duration,
}

/// A tracer provider exporting through a bounded, non-blocking batch processor.
pub fn batch_provider<E: SpanExporter + 'static>(
    exporter: E,
    config: &TraceConfig,
    service: &str,
) -> SdkTracerProvider {
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queue_size)
        .build();
    SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build()
}

/// A `tracing` layer sending spans to `provider`.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(DEFAULT_SERVICE_NAME))
}

/// Installs logging, and trace export if `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(config: &TraceConfig) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry {
            provider: None,
            shutdown_timeout: config.shutdown_timeout,
        });
    };
    let service =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| DEFAULT_SERVICE_NAME.into());
    // The exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_timeout(config.export_timeout)
        .build()?;
    let provider = batch_provider(exporter, config, &service);
    let filter = std::env::var("PUBSEARCH_TRACE_FILTER").unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(logs)
        .with(otel_layer(&provider).with_filter(EnvFilter::new(filter)))
        .try_init()?;
    tracing::info!(endpoint, service, "exporting traces over OTLP/HTTP");
    Ok(Telemetry {
        provider: Some(provider),
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// Flushes and stops `provider`, waiting at most `timeout`; logs the outcome. Spans dropped for
/// a full queue are reported by the SDK's own shutdown log line.
pub fn shutdown_provider(provider: &SdkTracerProvider, timeout: Duration) {
    match provider.shutdown_with_timeout(timeout) {
        Ok(()) => tracing::info!("trace export flushed and stopped"),
        Err(error) => {
            tracing::warn!(%error, ?timeout, "trace export did not finish; unexported spans are lost")
        }
    }
}

impl Telemetry {
    /// Flushes pending spans with a bounded wait and stops exporting.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(&provider, self.shutdown_timeout);
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(&provider, self.shutdown_timeout);
        }
    }
}

/// The current span's trace context as a W3C `traceparent`, so work that runs later or in
/// another task — a durable workflow's activities, possibly after a restart — joins the trace of
/// whoever asked for it. `None` when tracing is off.
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span a [`current_traceparent`] string names.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if let Err(error) = span.set_parent(parent) {
        tracing::debug!(?error, "span not linked to its workflow's trace");
    }
}
