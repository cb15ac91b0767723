//! One span and one count per HTTP attempt to a judge: the `chat` client span with the
//! OpenTelemetry `gen_ai.*` attributes (its context is what `traceparent` carries to the
//! endpoint), the attempt's outcome (`ok` or the reason it will be retried), its latency and the
//! tokens it was billed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use rewardfleet_telemetry::keys;
use rewardfleet_telemetry::metrics::{label, metrics};
use tower::{BoxError, Layer, Service};
use tracing::Instrument;

use crate::client::{AttemptError, ChatRequest, Completion};

/// Observes each attempt of judge `judge` (below the retry layer, above the timeout).
#[derive(Clone)]
pub(crate) struct AttemptsLayer {
    judge: Arc<str>,
    model: Arc<str>,
    server: Arc<str>,
}

impl AttemptsLayer {
    pub(crate) fn new(judge: &str, model: &str, base_url: &str) -> Self {
        let server = base_url
            .split("://")
            .nth(1)
            .unwrap_or(base_url)
            .split('/')
            .next()
            .unwrap_or_default();
        Self {
            judge: judge.into(),
            model: model.into(),
            server: server.into(),
        }
    }
}

impl<S> Layer<S> for AttemptsLayer {
    type Service = Attempts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Attempts {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AttemptsLayer`].
#[derive(Clone)]
pub(crate) struct Attempts<S> {
    inner: S,
    layer: AttemptsLayer,
}

impl<S> Service<ChatRequest> for Attempts<S>
where
    S: Service<ChatRequest, Response = Completion, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Completion;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Completion, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let l = &self.layer;
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {}", l.model),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "openai",
            gen_ai.request.model = %l.model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            server.address = %l.server,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            rewardfleet.judge = %l.judge,
        );
        // Inside the span, so that the request's `traceparent` names this attempt.
        let attempt = span.in_scope(|| self.inner.call(req));
        let judge = Arc::clone(&l.judge);
        let started = Instant::now();
        Box::pin(async move {
            let result = attempt.instrument(span.clone()).await;
            let outcome = match &result {
                Ok(c) => {
                    if let Some(model) = &c.model {
                        span.record(keys::GEN_AI_RESPONSE_MODEL, model.as_str());
                    }
                    span.record(keys::GEN_AI_INPUT_TOKENS, c.usage.prompt_tokens);
                    span.record(keys::GEN_AI_OUTPUT_TOKENS, c.usage.completion_tokens);
                    span.record("http.response.status_code", 200);
                    "ok"
                }
                Err(e) => {
                    let outcome = outcome_of(e);
                    if let Some(AttemptError::Status { status, .. }) = e.downcast_ref() {
                        span.record("http.response.status_code", status);
                    }
                    span.record(keys::ERROR_TYPE, outcome);
                    outcome
                }
            };
            if let Some(m) = metrics() {
                let judge = label("judge", judge.to_string());
                m.judge_duration.record(
                    started.elapsed().as_secs_f64(),
                    std::slice::from_ref(&judge),
                );
                m.judge_requests
                    .add(1, &[judge.clone(), label("outcome", outcome)]);
                if let Ok(c) = &result {
                    m.judge_tokens.add(
                        c.usage.prompt_tokens,
                        &[judge.clone(), label("direction", "input")],
                    );
                    m.judge_tokens.add(
                        c.usage.completion_tokens,
                        &[judge, label("direction", "output")],
                    );
                }
            }
            result
        })
    }
}

/// The outcome label of a failed attempt: why it failed, in a closed list.
pub(crate) fn outcome_of(e: &BoxError) -> &'static str {
    if e.is::<tower::timeout::error::Elapsed>() {
        return "timeout";
    }
    match e.downcast_ref::<AttemptError>() {
        Some(AttemptError::Status { status: 429, .. }) => "http_429",
        Some(AttemptError::Status { status, .. }) if *status >= 500 => "http_5xx",
        Some(AttemptError::Status { .. }) => "http_4xx",
        Some(AttemptError::Transport(_)) => "transport",
        Some(AttemptError::Malformed(_)) => "malformed",
        None => "error",
    }
}
