//! Telemetry set-up for one process: logs (text or JSON), traces over OTLP, metrics over OTLP and
//! on a Prometheus scrape endpoint. Everything but logs is off unless configured.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use rewardfleet_core::config::TelemetryConfig;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How long an export may take before it is given up (never a hang at shutdown).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans held for export at most (each is about a kilobyte), and spans per export request.
const SPAN_QUEUE: usize = 16_384;
const SPAN_BATCH: usize = 2_048;

/// The providers to flush at exit.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// Sets up logging alone (commands that score nothing themselves, and before a config is read).
pub fn logs_only(filter: EnvFilter, format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(format).with_filter(events_only(filter)))
        .try_init();
}

/// Sets up logs, traces and metrics for a process whose telemetry is `config` (`None`: logs
/// only). Must run inside the Tokio runtime (the exporters and the endpoint live on it).
///
/// # Errors
/// An exporter that cannot be built, or a Prometheus address that cannot be bound (in use, not
/// this machine's): a clear start-up error rather than a process that runs unobserved. An
/// unreachable collector is only a warning: exports are retried while the fleet works.
pub async fn init(
    filter: EnvFilter,
    format: LogFormat,
    config: &TelemetryConfig,
    default_service: &str,
) -> anyhow::Result<Telemetry> {
    let resource = resource(config, default_service);
    let tracer = if traces_wanted(config) {
        Some(tracer_provider(config, resource.clone())?)
    } else {
        None
    };
    let otel_layer = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rewardfleet"))
            // No busy/idle clocks on every poll, no thread attributes: less work per span.
            .with_tracked_inactivity(false)
            .with_threads(false)
            // Only the fleet's own spans: transport crates' spans would flood the exporter.
            .with_filter(Targets::new().with_target("rewardfleet", tracing::Level::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(log_layer(format).with_filter(events_only(filter)))
        .with(otel_layer)
        .try_init();
    if let Some(provider) = &tracer {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        warn_if_unreachable(otlp_endpoint(config, "TRACES"));
    }
    let meter = meter_provider(config, resource).await?;
    if let Some(provider) = &meter {
        opentelemetry::global::set_meter_provider(provider.clone());
        rewardfleet_telemetry::metrics::install(&opentelemetry::global::meter("rewardfleet"));
    }
    Ok(Telemetry { tracer, meter })
}

impl Telemetry {
    /// Flushes what is buffered (bounded by the export timeout).
    pub async fn shutdown(self) {
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = self.tracer
                && let Err(e) = t.shutdown()
            {
                eprintln!("warning: traces not all exported at exit: {e}");
            }
            if let Some(m) = self.meter {
                let _ = m.shutdown();
            }
        })
        .await;
    }
}

/// The log filter, for events only: spans exist for traces, so with tracing off no span is ever
/// built (instrumented code costs nothing), and log lines carry their own fields.
fn events_only<S>(filter: EnvFilter) -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt;
    filter.and(tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_event()
    }))
}

fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json().with_current_span(false).with_span_list(false)),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP endpoint for `signal` (`TRACES` or `METRICS`): the variables first, then the config.
fn otlp_endpoint(config: &TelemetryConfig, signal: &str) -> Option<String> {
    env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or_else(|| config.otlp_endpoint.clone())
}

fn exporter_disabled(signal: &str) -> bool {
    env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env(&format!("OTEL_{signal}_EXPORTER")).is_some_and(|v| v == "none")
}

fn traces_wanted(config: &TelemetryConfig) -> bool {
    otlp_endpoint(config, "TRACES").is_some() && !exporter_disabled("TRACES")
}

fn resource(config: &TelemetryConfig, default_service: &str) -> Resource {
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // OTEL_SERVICE_NAME (read by the builder's detectors) wins over the file.
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(
            config
                .service_name
                .clone()
                .unwrap_or_else(|| default_service.to_owned()),
        );
    }
    builder.build()
}

/// An exporter with the export timeout, and the file's endpoint unless a variable names one for
/// `signal` (then the exporter reads the variables itself).
fn with_file_endpoint<B: WithExportConfig>(
    exporter: B,
    config: &TelemetryConfig,
    signal: &str,
) -> B {
    let exporter = exporter.with_timeout(EXPORT_TIMEOUT);
    let set_by_env = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    match &config.otlp_endpoint {
        Some(endpoint) if !set_by_env => exporter.with_endpoint(endpoint),
        _ => exporter,
    }
}

fn tracer_provider(
    config: &TelemetryConfig,
    resource: Resource,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let exporter = with_file_endpoint(exporter, config, "TRACES")
        .build()
        .context("telemetry: cannot build the OTLP trace exporter")?;
    // A larger queue and batches than the SDK's defaults (2048 / 512): a busy worker ends tens
    // of thousands of spans a second, and a full queue drops them. Bounded all the same; the
    // OTEL_BSP_* variables win.
    let mut batch = BatchConfigBuilder::default();
    if env("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(SPAN_QUEUE);
    }
    if env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batch = batch.with_max_export_batch_size(SPAN_BATCH);
    }
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.build())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource);
    // OTEL_TRACES_SAMPLER (read by the SDK's defaults) wins over the file.
    if env("OTEL_TRACES_SAMPLER").is_none() {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))));
    }
    Ok(builder.build())
}

async fn meter_provider(
    config: &TelemetryConfig,
    resource: Resource,
) -> anyhow::Result<Option<SdkMeterProvider>> {
    let otlp = otlp_endpoint(config, "METRICS").filter(|_| !exporter_disabled("METRICS"));
    if otlp.is_none() && config.prometheus_listen.is_none() {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    if otlp.is_some() {
        let exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
        let exporter = with_file_endpoint(exporter, config, "METRICS")
            .build()
            .context("telemetry: cannot build the OTLP metric exporter")?;
        builder = builder.with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(config.metrics_interval)
                .build(),
        );
        warn_if_unreachable(otlp);
    }
    if let Some(addr) = &config.prometheus_listen {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Names carry their unit already (`_seconds`), the same over OTLP and here.
            .without_units()
            .scope_info_enabled(false)
            .build()
            .context("telemetry: cannot build the Prometheus exporter")?;
        builder = builder.with_reader(exporter);
        serve_prometheus(addr, registry).await?;
    }
    Ok(Some(builder.build()))
}

/// Binds the scrape endpoint now (a taken port is a start-up error), then serves it.
async fn serve_prometheus(addr: &str, registry: prometheus::Registry) -> anyhow::Result<()> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("telemetry.prometheus_listen: {addr:?} is not an address"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("telemetry.prometheus_listen: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { scrape(&registry) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the Prometheus endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "Prometheus metrics on /metrics");
    println!("rewardfleet metrics on http://{bound}/metrics");
    Ok(())
}

fn scrape(registry: &prometheus::Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, encoder.format_type())],
            body,
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}

/// Says once, at start, when the collector cannot be reached: its spans and metrics are dropped
/// until it comes up (it may start after the fleet; the exporters keep trying).
fn warn_if_unreachable(endpoint: Option<String>) {
    let Some(endpoint) = endpoint else { return };
    let Some(authority) = endpoint
        .split("://")
        .nth(1)
        .or(Some(endpoint.as_str()))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
    else {
        return;
    };
    tokio::spawn(async move {
        let reachable = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(authority.as_str()),
        )
        .await;
        if !matches!(reachable, Ok(Ok(_))) {
            tracing::warn!(
                endpoint = %endpoint,
                "telemetry: the OTLP collector is not reachable; spans and metrics are dropped until it is"
            );
        }
    });
}
