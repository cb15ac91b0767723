//! W3C trace context as a small map of header fields, so that it can cross any hop: gRPC metadata,
//! NATS message headers, or an in-process queue.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context of one span, as the header fields that the global propagator writes
/// (`traceparent`, `tracestate`). Empty when no trace is being recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext(HashMap<String, String>);

impl TraceContext {
    /// The context of the current `tracing` span.
    pub fn current() -> Self {
        Self::of(&tracing::Span::current())
    }

    /// The context of `span`; empty when it is not recorded by OpenTelemetry.
    pub fn of(span: &tracing::Span) -> Self {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return Self::default();
        }
        let mut fields = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut Fields(&mut fields));
        });
        Self(fields)
    }

    /// A context read back from header fields (names are matched case-insensitively).
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            fields
                .into_iter()
                .filter(|(k, _)| is_trace_field(k))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect(),
        )
    }

    /// The header fields, to copy into an outgoing message.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// No context: nothing is traced.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The OpenTelemetry context these fields describe (a remote parent).
    pub fn to_context(&self) -> opentelemetry::Context {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Fields(&mut self.0.clone())))
    }

    /// Makes this context the parent of `span`. Call it before the span is first entered
    /// (tracing-opentelemetry refuses a new parent afterwards). Does nothing when empty.
    pub fn set_parent_of(&self, span: &tracing::Span) {
        if !self.is_empty() {
            let _ = span.set_parent(self.to_context());
        }
    }

    /// Adds a link from `span` to this context (a batch that serves several jobs links to each).
    pub fn link_from(&self, span: &tracing::Span) {
        if self.is_empty() {
            return;
        }
        let cx = self.to_context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.add_link(sc);
        }
    }
}

/// A span's identity within one process, cheap to copy: for work that joins work of many spans
/// on another thread (a model batch), where the batch's span is parented and linked to them.
/// `None` inside when the span is not sampled, so unsampled work costs nothing downstream.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLink(Option<SpanContext>);

impl SpanLink {
    /// The identity of `span`, if it is recorded and sampled.
    pub fn of(span: &tracing::Span) -> Self {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        Self((sc.is_valid() && sc.is_sampled()).then_some(sc))
    }

    /// Whether there is a sampled span behind it.
    pub fn is_sampled(&self) -> bool {
        self.0.is_some()
    }

    /// Makes the linked span the parent of `span` (call before `span` is entered).
    pub fn set_parent_of(&self, span: &tracing::Span) {
        if let Some(sc) = &self.0 {
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            let _ = span.set_parent(cx);
        }
    }

    /// Adds a link from `span` to the linked span.
    pub fn link_from(&self, span: &tracing::Span) {
        if let Some(sc) = &self.0 {
            span.add_link(sc.clone());
        }
    }
}

/// Header fields that carry trace context (W3C Trace Context and Baggage).
fn is_trace_field(name: &str) -> bool {
    ["traceparent", "tracestate", "baggage"]
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Injector for Fields<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace id of `span` in hex, when it is recorded: logs carry it so that a line leads to
/// its trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn a_context_crosses_a_hop_and_parents_the_next_span() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("publish");
            let sent = TraceContext::of(&sender);
            assert!(sent.fields().any(|(k, _)| k == "traceparent"));
            // Header names may come back in another case.
            let received = TraceContext::from_fields(
                sent.fields()
                    .map(|(k, v)| (if k == "traceparent" { "Traceparent" } else { k }, v)),
            );
            let receiver = tracing::info_span!("process");
            received.set_parent_of(&receiver);
            assert_eq!(trace_id(&receiver), trace_id(&sender));
            drop(receiver);
            drop(sender);
        });
        let spans = exporter.get_finished_spans().expect("spans");
        let publish = spans.iter().find(|s| s.name == "publish").expect("publish");
        let process = spans.iter().find(|s| s.name == "process").expect("process");
        assert_eq!(process.parent_span_id, publish.span_context.span_id());
        assert_eq!(
            process.span_context.trace_id(),
            publish.span_context.trace_id()
        );
    }

    #[test]
    fn nothing_is_carried_when_nothing_is_traced() {
        let span = tracing::info_span!("untraced");
        assert!(TraceContext::of(&span).is_empty());
        assert_eq!(trace_id(&span), None);
        assert!(TraceContext::from_fields([("x-other", "1")]).is_empty());
    }
}
