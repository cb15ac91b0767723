//! One attempt of one chat completion over HTTP: the innermost service of a judge's stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use rewardfleet_core::config::JudgeConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::JudgeError;

/// The error type that flows through the tower stack.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One turn of the conversation sent to the judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatTurn {
    /// A turn with this role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// One judgement request: what to send, and by when it must be answered.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The messages.
    pub messages: Vec<ChatTurn>,
    /// Ask for the top logprobs of every output token.
    pub logprobs: bool,
    /// `response_format` (a JSON schema), where the endpoint supports structured output.
    pub response_format: Option<Value>,
    /// The overall deadline: retries that could not finish before it are not started.
    pub deadline: Instant,
}

impl ChatRequest {
    /// Prompt tokens, estimated at four bytes a token (for the tokens-per-minute limit).
    pub(crate) fn estimated_prompt_tokens(&self) -> u64 {
        let bytes: usize = self.messages.iter().map(|m| m.content.len() + 4).sum();
        bytes.div_ceil(4) as u64
    }
}

/// The alternatives the model weighed for one output token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token produced.
    pub token: String,
    /// `(token, logprob)` of the most likely alternatives, the produced one included.
    pub top: Vec<(String, f64)>,
}

/// Token usage of one call, as the endpoint reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl TokenUsage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What the judge answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The message content.
    pub content: String,
    /// Per output token, when logprobs were asked for and returned.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Tokens used (zero for a cached answer).
    pub usage: TokenUsage,
    /// The model that answered, as the endpoint names it (may differ from the one asked for).
    #[serde(default)]
    pub model: Option<String>,
}

/// Why one attempt failed (before any retry).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The endpoint answered with an error status.
    #[error("the judge endpoint answered HTTP {status}: {body}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// The request did not reach the endpoint, or the answer did not arrive whole.
    #[error("cannot reach the judge endpoint: {0}")]
    Transport(String),
    /// HTTP 2xx, but not a chat completion.
    #[error("the judge endpoint's answer is not a chat completion: {0}")]
    Malformed(String),
}

impl AttemptError {
    /// Worth another attempt: overload, server errors, transport failures.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || *status >= 500
            }
            Self::Transport(_) | Self::Malformed(_) => true,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status {
                status: 429 | 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }
}

/// Sends one chat completion per call; no retries, no limits (the layers around it do that).
#[derive(Clone)]
pub(crate) struct HttpJudge {
    client: reqwest::Client,
    url: Arc<str>,
    model: Arc<str>,
    headers: HeaderMap,
    sampling: Value,
    top_logprobs: u8,
    /// Attempts sent, counted for usage.
    pub(crate) attempts: Arc<AtomicU64>,
}

impl HttpJudge {
    pub(crate) fn new(config: &JudgeConfig, api_key: Option<&str>) -> Result<Self, JudgeError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| JudgeError::Config {
                judge: config.name.clone(),
                message: format!("header name {name:?} is not valid"),
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| JudgeError::Config {
                judge: config.name.clone(),
                message: format!("the value of header {name} is not valid"),
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(key) = api_key {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                    JudgeError::Config {
                        judge: config.name.clone(),
                        message: "the API key has characters an HTTP header cannot carry".into(),
                    }
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .tcp_nodelay(true);
        if let Some(file) = &config.ca_file {
            let fail = |message: String| JudgeError::Config {
                judge: config.name.clone(),
                message: format!("ca_file {}: {message}", file.display()),
            };
            let pem = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("not a PEM CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(fail("no certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| JudgeError::Config {
            judge: config.name.clone(),
            message: format!("cannot build the HTTP client: {e}"),
        })?;
        let s = &config.sampling;
        let mut sampling = json!({"temperature": s.temperature, "max_tokens": s.max_tokens});
        if let Some(top_p) = s.top_p {
            sampling["top_p"] = json!(top_p);
        }
        if let Some(seed) = s.seed {
            sampling["seed"] = json!(seed);
        }
        Ok(Self {
            client,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')).into(),
            model: config.model.as_str().into(),
            headers,
            sampling,
            top_logprobs: config.top_logprobs,
            attempts: Arc::new(AtomicU64::new(0)),
        })
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let mut body = self.sampling.clone();
        body["model"] = json!(&*self.model);
        body["messages"] = json!(req.messages);
        if req.logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(self.top_logprobs);
        }
        if let Some(format) = &req.response_format {
            body["response_format"] = format.clone();
        }
        body
    }
}

/// Adds W3C `traceparent` (and whatever else the global propagator writes) for the current
/// OpenTelemetry context, if one is current and valid.
fn inject_trace_context(headers: &mut HeaderMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // The current `tracing` span (the attempt's), else whatever OpenTelemetry context is active.
    let span_cx = tracing::Span::current().context();
    let cx = if span_cx.span().span_context().is_valid() {
        span_cx
    } else {
        opentelemetry::Context::current()
    };
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    });
    if !headers.contains_key("traceparent") {
        // No propagator installed: write the W3C header ourselves.
        let value = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("traceparent", v);
        }
    }
}

fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // Only delta-seconds; an HTTP date is rare from model endpoints and falls back to backoff.
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The OpenAI chat completion fields a judge needs.
#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireToken>>,
}

#[derive(Deserialize)]
struct WireToken {
    token: String,
    logprob: f64,
    #[serde(default)]
    top_logprobs: Vec<WireTop>,
}

#[derive(Deserialize)]
struct WireTop {
    token: String,
    logprob: f64,
}

pub(crate) fn parse_completion(bytes: &[u8]) -> Result<Completion, AttemptError> {
    let wire: WireCompletion =
        serde_json::from_slice(bytes).map_err(|e| AttemptError::Malformed(e.to_string()))?;
    let model = wire.model;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| AttemptError::Malformed("no choices".into()))?;
    let logprobs = choice.logprobs.and_then(|l| l.content).map(|tokens| {
        tokens
            .into_iter()
            .map(|t| {
                let mut top: Vec<(String, f64)> = t
                    .top_logprobs
                    .into_iter()
                    .map(|a| (a.token, a.logprob))
                    .collect();
                if top.is_empty() {
                    top.push((t.token.clone(), t.logprob));
                }
                TokenLogprobs {
                    token: t.token,
                    top,
                }
            })
            .collect()
    });
    Ok(Completion {
        content: choice.message.content.unwrap_or_default(),
        logprobs,
        usage: wire.usage.unwrap_or_default(),
        model,
    })
}

impl tower::Service<ChatRequest> for HttpJudge {
    type Response = Completion;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Completion, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let mut headers = self.headers.clone();
        inject_trace_context(&mut headers);
        let request = self
            .client
            .post(&*self.url)
            .headers(headers)
            .json(&self.body(&req));
        Box::pin(async move {
            let response = request
                .send()
                .await
                .map_err(|e| AttemptError::Transport(without_url(&e)))?;
            let status = response.status();
            let retry_after = parse_retry_after(response.headers());
            let bytes = response
                .bytes()
                .await
                .map_err(|e| AttemptError::Transport(without_url(&e)))?;
            if !status.is_success() {
                let body: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                return Err(AttemptError::Status {
                    status: status.as_u16(),
                    retry_after,
                    body,
                }
                .into());
            }
            Ok(parse_completion(&bytes)?)
        })
    }
}

/// reqwest errors carry the URL; keep messages short and free of query strings.
fn without_url(e: &reqwest::Error) -> String {
    let mut e2 = String::new();
    if e.is_timeout() {
        e2.push_str("timed out");
    } else if e.is_connect() {
        e2.push_str("connection failed");
    } else if e.is_body() || e.is_decode() {
        e2.push_str("the answer was cut off");
    } else {
        e2.push_str("request failed");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        e2.push_str(": ");
        e2.push_str(&s.to_string());
        source = s.source();
    }
    e2
}
