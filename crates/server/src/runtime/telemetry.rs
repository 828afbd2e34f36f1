//! Structured logs (text or JSON) through tracing, and OpenTelemetry traces exported over
//! OTLP/gRPC when an endpoint is configured (`[telemetry] otlp_endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`). Incoming W3C `traceparent` headers are continued
//! ([`extract_trace_context`]); span attributes never carry a secret.

use crate::runtime::config::{LogConfig, LogFormat, TelemetryConfig};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::codegen::http;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans still buffered.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports the buffered spans and stops the exporter (blocks up to a few seconds). Call it
    /// from outside the async runtime, while the runtime is still alive (the exporter's gRPC
    /// channel runs on it).
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("credential-broker: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber (logs to stderr, plus spans to OTLP when `traces` is given
/// and names an endpoint). With an endpoint, call it inside the tokio runtime: the exporter's
/// channel is created on it.
pub fn init(log: &LogConfig, traces: Option<&TelemetryConfig>) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_new(&log.filter).map_err(|e| format!("log.filter {:?}: {e}", log.filter))?;
    let provider = match traces {
        Some(t) => match &t.otlp_endpoint {
            Some(endpoint) => Some(tracer_provider(endpoint, t.service_name())?),
            None => None,
        },
        None => None,
    };
    // Spans are exported at INFO whatever the log filter says: quieter logs keep their traces.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("credential-broker"))
            .with_filter(LevelFilter::INFO)
    });
    // Below `debug` the log shows events only: formatting every request's span fields (the
    // `rpc` span and its children, which traces still get) cost ~9% of the hot path's CPU while
    // nothing was logged. At `debug` and `trace` log lines carry their spans again.
    let max_level = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let spans_in_log = max_level >= LevelFilter::DEBUG;
    SPANS_WANTED.store(spans_in_log || provider.is_some(), Ordering::Relaxed);
    // The hint keeps callsites above the filter's level disabled at the macro (no per-call check).
    let filter = filter.and(
        tracing_subscriber::filter::filter_fn(move |meta| spans_in_log || meta.is_event())
            .with_max_level_hint(max_level),
    );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(otel);
    let result = match log.format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    if let (Some(t), Some(endpoint)) = (traces, traces.and_then(|t| t.otlp_endpoint.as_ref())) {
        tracing::info!(endpoint = %endpoint, service_name = %t.service_name(), "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry { traces: provider })
}

fn tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether anything consumes spans: set by [`init`] (traces exported, or a log at `debug` or
/// finer); true until then (tests install their own subscribers).
static SPANS_WANTED: AtomicBool = AtomicBool::new(true);

/// Whether request spans have a consumer (see [`init`]).
pub fn spans_wanted() -> bool {
    SPANS_WANTED.load(Ordering::Relaxed)
}

/// The W3C trace context (`traceparent`, `tracestate`) a caller sent in its gRPC metadata.
pub fn extract_trace_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}
