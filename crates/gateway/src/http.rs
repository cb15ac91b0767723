//! HTTP endpoints for trainers that speak HTTP rather than gRPC: OpenRLHF's `POST /get_reward`,
//! slime's remote reward (`POST /reward`), `GET /profiles` and the probes. Every request is one
//! [`Gateway::score_batch`]: the same pipeline, profiles, limits and window as `ScoreBatch`.
//!
//! Answers are JSON, errors too (`{"error", "field"?, "errors"?}`): 400 names the field and the
//! index, 429 (with `Retry-After`) when the HTTP admission budget is spent, 503 (with
//! `Retry-After`) while the gateway drains.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use rewardfleet_core::config::{Config, NormalizeKind};
use rewardfleet_core::{Candidate, ChatMessage, Reward, RewardStatus};
use rewardfleet_telemetry::TraceContext;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::Connection;
use crate::tls::ReloadingTls;
use crate::{Caller, Gateway};

/// What a client is told to wait before it tries again after a 429 or a 503, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// The HTTP endpoints over a [`Gateway`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Gateway,
    /// How each profile's rewards map to OpenRLHF's `scores` in [0, 1], and its `floor`.
    scales: HashMap<String, Scale>,
    /// Candidates admitted over HTTP and not yet answered, across requests: `budget` permits
    /// (`gateway.max_window`). A request whose candidates do not fit at once is refused with 429
    /// and `Retry-After` (admission, not buffering: nothing waits in the server for room).
    admission: Arc<Semaphore>,
    /// The permits of `admission`.
    budget: usize,
    /// Largest request body accepted, in bytes (`gateway.max_message_bytes`, as gRPC's largest
    /// message).
    max_body: usize,
    /// Fires when the drain begins: health answers 503 and new requests are refused with 503.
    draining: CancellationToken,
    /// Fires when the sessions of requests still open must end (the drain deadline passed).
    sessions: CancellationToken,
}

/// How the rewards of one profile become OpenRLHF `scores` in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scale {
    /// The reward of a candidate that fails a gate, and here also of a FAILED candidate.
    floor: f64,
    map: ScoreMap,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ScoreMap {
    /// `normalize = "none"`: the reward clamped to [0, 1] (rules and most judges already are).
    Clamp,
    /// `normalize = "clip"` with `[lo, hi]`: `(reward − lo) / (hi − lo)`.
    Linear { lo: f64, hi: f64 },
    /// `normalize = "group_zscore"`: the logistic `1 / (1 + e^−reward)` (0.5 at the group mean).
    Logistic,
    /// `normalize = "group_rank"`: already in [0, 1].
    Identity,
}

impl Scale {
    fn of(config: &rewardfleet_core::config::ProfileConfig) -> Self {
        let map = match (config.normalize, config.clip) {
            (NormalizeKind::None, _) | (NormalizeKind::Clip, None) => ScoreMap::Clamp,
            (NormalizeKind::Clip, Some([lo, hi])) => ScoreMap::Linear { lo, hi },
            (NormalizeKind::GroupZscore, _) => ScoreMap::Logistic,
            (NormalizeKind::GroupRank, _) => ScoreMap::Identity,
        };
        Self {
            floor: config.floor,
            map,
        }
    }

    /// The score in [0, 1] of `reward`.
    fn score(&self, reward: f64) -> f64 {
        let s = match self.map {
            ScoreMap::Clamp | ScoreMap::Identity => reward,
            ScoreMap::Linear { lo, hi } if hi > lo => (reward - lo) / (hi - lo),
            ScoreMap::Linear { .. } => 0.5,
            ScoreMap::Logistic => 1.0 / (1.0 + (-reward).exp()),
        };
        if s.is_finite() {
            s.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The reward a trainer trains on: the value, or the floor for a FAILED candidate.
    fn reward(&self, r: &Reward) -> f64 {
        if r.status() == RewardStatus::Failed {
            self.floor
        } else {
            r.value
        }
    }
}

impl HttpApi {
    /// The endpoints over `gateway`, with the profiles' floors and normalisation from `config`
    /// and an admission budget of `gateway.max_window` candidates.
    pub fn new(gateway: Gateway, config: &Config) -> Self {
        let budget = config.gateway.max_window as usize;
        Self {
            inner: Arc::new(Inner {
                gateway,
                scales: config
                    .profile
                    .iter()
                    .map(|(name, p)| (name.clone(), Scale::of(p)))
                    .collect(),
                admission: Arc::new(Semaphore::new(budget)),
                budget,
                max_body: config.gateway.max_message_bytes,
                draining: CancellationToken::new(),
                sessions: CancellationToken::new(),
            }),
        }
    }

    /// The routes, without a socket (tests call them directly).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/get_reward", post(get_reward))
            .route("/reward", post(slime_reward))
            .route("/profiles", get(profiles))
            .route("/health", get(health))
            .route("/readyz", get(health))
            .route("/livez", get(|| async { Json(json!({"status": "alive"})) }))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.inner.max_body))
            .with_state(self.clone())
    }

    /// Scores `candidates` with `profile` through the gateway, holding admission permits for
    /// them meanwhile.
    async fn score(
        &self,
        caller: Caller,
        profile: &str,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Reward>, Error> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        if self.inner.draining.is_cancelled() {
            return Err(Error::draining());
        }
        let n = candidates.len();
        if n > self.inner.budget {
            return Err(Error::field(
                StatusCode::BAD_REQUEST,
                "",
                format!(
                    "{n} candidates in one request exceed the gateway's HTTP admission budget \
                     (gateway.max_window = {}); send smaller requests",
                    self.inner.budget
                ),
            ));
        }
        let Ok(_permits) = Arc::clone(&self.inner.admission).try_acquire_many_owned(n as u32)
        else {
            return Err(Error {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: json!({
                    "error": format!(
                        "overloaded: {n} more candidates do not fit the {} candidates this gateway \
                         scores at once over HTTP (gateway.max_window); retry after {RETRY_AFTER_SECS}s \
                         or on another gateway",
                        self.inner.budget
                    ),
                }),
                retry_after: true,
            });
        };
        self.inner
            .gateway
            .score_batch_as(
                caller,
                profile.to_owned(),
                candidates,
                self.inner.sessions.child_token(),
            )
            .await
            .map_err(Error::from_status)
    }

    /// The caller of a request, from its `Authorization: Bearer <token>` header (never logged)
    /// or, without one, its connection's client certificate; recorded on `span`.
    fn caller(
        &self,
        headers: &HeaderMap,
        peer: &ClientNames,
        span: &tracing::Span,
    ) -> Result<Caller, Error> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = self
            .inner
            .gateway
            .authenticate(authorization, &peer.0)
            .map_err(|e| Error::from_status(e.into()))?;
        if let Some(t) = &caller {
            span.record("rewardfleet.tenant", t.name());
        }
        Ok(caller)
    }

    /// The profile asked for (query parameter first, then the body's `profile` field), resolved
    /// against the gateway's profiles and default, with its scale.
    fn profile(&self, query: &Params, body: Option<&Value>) -> Result<(String, Scale), Error> {
        let asked = match (&query.profile, body.and_then(|b| b.get("profile"))) {
            (Some(p), _) => p.clone(),
            (None, None | Some(Value::Null)) => String::new(),
            (None, Some(Value::String(p))) => p.clone(),
            (None, Some(other)) => {
                return Err(Error::field(
                    StatusCode::BAD_REQUEST,
                    "profile",
                    format!("must be a string, not {}", kind(other)),
                ));
            }
        };
        let name = self.inner.gateway.resolve_profile(&asked).map_err(|e| {
            Error::field(
                StatusCode::BAD_REQUEST,
                "profile",
                strip_field(&e.to_string()),
            )
        })?;
        let scale = self.inner.scales.get(&name).copied().unwrap_or(Scale {
            floor: 0.0,
            map: ScoreMap::Clamp,
        });
        Ok((name, scale))
    }
}

/// Query parameters every scoring endpoint takes.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    /// The profile (overrides a `profile` field of the body).
    profile: Option<String>,
    /// slime: answer an object per candidate (`reward`, `status`, …) instead of a bare number.
    #[serde(default)]
    detail: bool,
}

/// An HTTP error with a JSON body.
#[derive(Debug)]
struct Error {
    status: StatusCode,
    body: Value,
    /// Send `Retry-After` (429, 503).
    retry_after: bool,
}

impl Error {
    fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let body = if field.is_empty() {
            json!({ "error": message })
        } else {
            json!({ "error": format!("{field}: {message}"), "field": field })
        };
        Self {
            status,
            body,
            retry_after: false,
        }
    }

    fn draining() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: json!({
                "error": "the gateway is draining (shutting down); send the request to another gateway",
            }),
            retry_after: true,
        }
    }

    /// The HTTP face of a gateway status: the caller's fault (400), resume elsewhere (503),
    /// refused for good (422), or ours (500).
    fn from_status(status: tonic::Status) -> Self {
        use tonic::Code;
        let (code, retry_after) = match status.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, false),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, false),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, false),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, true),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, true),
            Code::FailedPrecondition => (StatusCode::UNPROCESSABLE_ENTITY, false),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, false),
        };
        Self {
            status: code,
            body: json!({ "error": status.message() }),
            retry_after,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// A JSON body (serde_json, with the content type set).
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0.to_string(),
        )
            .into_response()
    }
}

/// One item of a request that cannot be scored: its index, the field and why.
#[derive(Debug, Clone, PartialEq)]
struct ItemError {
    index: usize,
    field: String,
    message: String,
}

impl ItemError {
    fn new(index: usize, field: String, message: impl Into<String>) -> Self {
        Self {
            index,
            field,
            message: message.into(),
        }
    }

    fn json(&self) -> Value {
        json!({ "index": self.index, "field": self.field, "message": self.message })
    }
}

/// The server span of one request, continuing the caller's trace when its headers carry
/// `traceparent`.
fn http_span(route: &'static str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("POST {route}"),
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        rewardfleet.tenant = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    TraceContext::from_fields(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    )
    .set_parent_of(&span);
    span
}

/// Reads a JSON body, naming what is wrong with it.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, Error> {
    let bytes = body.map_err(|e| Error::field(e.status(), "body", e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::field(StatusCode::BAD_REQUEST, "body", format!("not JSON: {e}")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `profile: unknown …` → `unknown …` (the field is named separately).
fn strip_field(message: &str) -> String {
    message
        .strip_prefix("profile: ")
        .unwrap_or(message)
        .to_owned()
}

/// A reference (OpenRLHF `labels[i]`, slime `label`): a string, a number or a boolean as text,
/// or none for null.
fn reference(v: Option<&Value>, field: &str, index: usize) -> Result<Option<String>, ItemError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(other) => Err(ItemError::new(
            index,
            field.to_owned(),
            format!(
                "must be a string (or a number, or null), not {}",
                kind(other)
            ),
        )),
    }
}

/// Special tokens a decoder leaves at the end of a response (`skip_special_tokens=False`):
/// end-of-turn and end-of-text markers, stripped before scoring.
fn strip_trailing_special_tokens(mut response: &str) -> &str {
    loop {
        let trimmed = response.trim_end();
        let Some(head) = trimmed.strip_suffix('>') else {
            return response;
        };
        let open = head.rfind('<');
        let token = open.map(|i| &head[i..]);
        let is_special = match token {
            Some(t) => {
                (t.starts_with("<|") && t.ends_with('|') && !t[2..t.len() - 1].contains(['<', '>']))
                    || matches!(t, "</s" | "<eos" | "<end_of_turn" | "<eot")
            }
            None => false,
        };
        match (is_special, open) {
            (true, Some(i)) => response = &head[..i],
            _ => return response,
        }
    }
}

/// Whether `text` is only special tokens (`<s>`, `<|begin_of_text|>`, `[BOS]` …) and
/// whitespace: what a tokenizer puts before a prompt that it decodes back.
fn only_special_tokens(mut text: &str) -> bool {
    loop {
        text = text.trim_start();
        if text.is_empty() {
            return true;
        }
        let close = match text.as_bytes()[0] {
            b'<' => '>',
            b'[' => ']',
            _ => return false,
        };
        match text.find(close) {
            Some(end) if end > 1 && !text[1..end].contains(char::is_whitespace) => {
                text = &text[end + 1..];
            }
            _ => return false,
        }
    }
}

/// Splits OpenRLHF's `query` (the prompt and the response, decoded with special tokens) into
/// the response: the text after `prompt`, which must start the query (after leading special
/// tokens only), with trailing end-of-turn tokens removed.
fn split_query<'a>(query: &'a str, prompt: &str) -> Result<&'a str, String> {
    let rest = if let Some(rest) = query.strip_prefix(prompt) {
        rest
    } else {
        match query.find(prompt) {
            Some(at) if !prompt.is_empty() && only_special_tokens(&query[..at]) => {
                &query[at + prompt.len()..]
            }
            _ => {
                let common = query
                    .chars()
                    .zip(prompt.chars())
                    .take_while(|(a, b)| a == b)
                    .count();
                return Err(format!(
                    "is not a prefix of query[i] (they differ from character {common} on); \
                     send the prompt exactly as the query starts"
                ));
            }
        }
    };
    Ok(strip_trailing_special_tokens(rest))
}

/// A list field of the OpenRLHF body.
fn list<'a>(body: &'a Value, field: &str, required: bool) -> Result<Option<&'a Vec<Value>>, Error> {
    match body.get(field) {
        Some(Value::Array(items)) => Ok(Some(items)),
        None | Some(Value::Null) if !required => Ok(None),
        None => Err(Error::field(
            StatusCode::BAD_REQUEST,
            field,
            "missing; send {\"query\": [...], \"prompts\": [...], \"labels\": [...]}",
        )),
        Some(other) => Err(Error::field(
            StatusCode::BAD_REQUEST,
            field,
            format!("must be a list, not {}", kind(other)),
        )),
    }
}

/// `POST /get_reward`: OpenRLHF's remote reward. `{"query": [...], "prompts": [...],
/// "labels": [...]}` → `{"rewards", "scores", "extra_logs", "statuses", "errors", "profile"}`.
async fn get_reward(
    State(api): State<HttpApi>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    peer: ClientNames,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = http_span("/get_reward", &headers);
    let answer = match params {
        Ok(Query(params)) => match api.caller(&headers, &peer, &span) {
            Ok(caller) => {
                openrlhf(&api, caller, &params, body)
                    .instrument(span.clone())
                    .await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(query_error(&e)),
    };
    finish(&span, answer)
}

fn query_error(e: &QueryRejection) -> Error {
    Error::field(
        StatusCode::BAD_REQUEST,
        "query string",
        format!(
            "{} (known parameters: profile=NAME, detail=true|false)",
            e.body_text()
        ),
    )
}

fn finish(span: &tracing::Span, answer: Result<Response, Error>) -> Response {
    match answer {
        Ok(r) => r,
        Err(e) => {
            span.record("error.type", e.status.as_str());
            e.into_response()
        }
    }
}

async fn openrlhf(
    api: &HttpApi,
    caller: Caller,
    params: &Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let body = parse_body(body)?;
    if !body.is_object() {
        return Err(Error::field(
            StatusCode::BAD_REQUEST,
            "body",
            format!("must be an object, not {}", kind(&body)),
        ));
    }
    let (profile, scale) = api.profile(params, Some(&body))?;
    let queries = list(&body, "query", true)?.map_or(&[][..], Vec::as_slice);
    let prompts = list(&body, "prompts", true)?.map_or(&[][..], Vec::as_slice);
    let labels = list(&body, "labels", false)?;
    if prompts.len() != queries.len() {
        return Err(Error::field(
            StatusCode::BAD_REQUEST,
            "prompts",
            format!(
                "{} entries for {} queries; send one prompt per query",
                prompts.len(),
                queries.len()
            ),
        ));
    }
    if let Some(labels) = labels
        && labels.len() != queries.len()
    {
        return Err(Error::field(
            StatusCode::BAD_REQUEST,
            "labels",
            format!(
                "{} entries for {} queries; send one label per query (null for none)",
                labels.len(),
                queries.len()
            ),
        ));
    }

    // Candidates sharing a prompt form a group (GRPO's samples of one prompt).
    let mut groups: HashMap<&str, usize> = HashMap::new();
    let mut candidates = Vec::with_capacity(queries.len());
    let mut positions = Vec::with_capacity(queries.len());
    let mut errors = Vec::new();
    for (i, (query, prompt)) in queries.iter().zip(prompts).enumerate() {
        let item = (|| {
            let Value::String(query) = query else {
                return Err(ItemError::new(
                    i,
                    format!("query[{i}]"),
                    format!("must be a string, not {}", kind(query)),
                ));
            };
            let Value::String(prompt) = prompt else {
                return Err(ItemError::new(
                    i,
                    format!("prompts[{i}]"),
                    format!("must be a string, not {}", kind(prompt)),
                ));
            };
            let response = split_query(query, prompt).map_err(|m| {
                ItemError::new(
                    i,
                    format!("prompts[{i}]"),
                    m.replace("[i]", &format!("[{i}]")),
                )
            })?;
            let reference = reference(labels.and_then(|l| l.get(i)), &format!("labels[{i}]"), i)?;
            let next = groups.len();
            let group = *groups.entry(prompt.as_str()).or_insert(next);
            Ok(Candidate {
                id: i.to_string(),
                group_id: format!("p{group}"),
                prompt: vec![ChatMessage {
                    role: "user".into(),
                    content: prompt.clone(),
                }],
                response: response.to_owned(),
                reference,
                labels: HashMap::new(),
            })
        })();
        match item {
            Ok(c) => {
                candidates.push(c);
                positions.push(i);
            }
            Err(e) => errors.push(e),
        }
    }
    let rewards = api.score(caller, &profile, candidates).await?;
    let mut slots: Vec<Option<Reward>> = vec![None; queries.len()];
    for (i, r) in positions.into_iter().zip(rewards) {
        slots[i] = Some(r);
    }
    let mut answer = openrlhf_answer(&slots, &scale, &errors);
    answer.insert("profile".into(), Value::String(profile));
    if errors.is_empty() {
        return Ok(Json(Value::Object(answer)).into_response());
    }
    // The request fails whole (400), naming every bad item; the others were scored and their
    // rewards are in the same body (null at the bad indices).
    let first = &errors[0];
    answer.insert(
        "error".into(),
        Value::String(format!(
            "{} of {} items cannot be scored; first: {}: {}",
            errors.len(),
            queries.len(),
            first.field,
            first.message
        )),
    );
    answer.insert("field".into(), Value::String(first.field.clone()));
    Err(Error {
        status: StatusCode::BAD_REQUEST,
        body: Value::Object(answer),
        retry_after: false,
    })
}

/// The OpenRLHF answer for rewards by request index (`None`: an item that was not scored).
fn openrlhf_answer(
    slots: &[Option<Reward>],
    scale: &Scale,
    errors: &[ItemError],
) -> Map<String, Value> {
    let number = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
    let mut component_names: Vec<&str> = slots
        .iter()
        .flatten()
        .flat_map(|r| r.components.keys().map(String::as_str))
        .collect();
    component_names.sort_unstable();
    component_names.dedup();
    let mut rewards = Vec::with_capacity(slots.len());
    let mut scores = Vec::with_capacity(slots.len());
    let mut statuses = Vec::with_capacity(slots.len());
    let mut messages = Vec::with_capacity(slots.len());
    let mut flags = Vec::with_capacity(slots.len());
    // OpenRLHF turns every extra_logs value into a tensor: numbers only, one per item.
    let mut logs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, slot) in slots.iter().enumerate() {
        let Some(r) = slot else {
            rewards.push(Value::Null);
            scores.push(Value::Null);
            statuses.push(Value::String("INVALID".into()));
            let e = errors.iter().find(|e| e.index == i);
            messages.push(e.map_or(Value::Null, |e| {
                Value::String(format!("{}: {}", e.field, e.message))
            }));
            flags.push(json!([]));
            for name in &component_names {
                logs.entry(format!("component/{name}"))
                    .or_default()
                    .push(Value::Null);
            }
            for key in ["status/failed", "status/degraded", "timing/total_ms"] {
                logs.entry(key.into()).or_default().push(Value::Null);
            }
            continue;
        };
        let reward = scale.reward(r);
        rewards.push(number(reward));
        scores.push(number(scale.score(reward)));
        statuses.push(Value::String(r.status().as_str_name().into()));
        messages.push(if r.error.is_empty() {
            Value::Null
        } else {
            Value::String(r.error.clone())
        });
        flags.push(json!(r.flags));
        for name in &component_names {
            // A component that produced no value (failed, renormalised away) logs 0; the
            // item's status, flags and error say why.
            let v = r.components.get(*name).copied().unwrap_or(0.0);
            logs.entry(format!("component/{name}"))
                .or_default()
                .push(number(v));
        }
        let failed = r.status() == RewardStatus::Failed;
        let degraded = r.status() == RewardStatus::Degraded;
        logs.entry("status/failed".into())
            .or_default()
            .push(number(f64::from(u8::from(failed))));
        logs.entry("status/degraded".into())
            .or_default()
            .push(number(f64::from(u8::from(degraded))));
        let total = r.timing.as_ref().map_or(0.0, |t| t.total_ms);
        logs.entry("timing/total_ms".into())
            .or_default()
            .push(number(total));
    }
    let mut answer = Map::new();
    answer.insert("rewards".into(), Value::Array(rewards));
    answer.insert("scores".into(), Value::Array(scores));
    answer.insert(
        "extra_logs".into(),
        Value::Object(
            logs.into_iter()
                .map(|(k, v)| (k, Value::Array(v)))
                .collect(),
        ),
    );
    answer.insert("statuses".into(), Value::Array(statuses));
    answer.insert("errors".into(), Value::Array(messages));
    answer.insert("flags".into(), Value::Array(flags));
    answer
}

/// `POST /reward`: slime's remote reward. `{"prompt", "response", "label"}` answers the reward
/// as a bare number (what slime's `remote_rm` stores as the sample's reward); a list of such
/// objects answers a list. `?detail=true` answers an object per item instead (`reward`,
/// `score`, `components`, `status`, `error`, `flags`, `timing`), for slime's `--reward-key reward`.
async fn slime_reward(
    State(api): State<HttpApi>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    peer: ClientNames,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = http_span("/reward", &headers);
    let answer = match params {
        Ok(Query(params)) => match api.caller(&headers, &peer, &span) {
            Ok(caller) => {
                slime(&api, caller, &params, body)
                    .instrument(span.clone())
                    .await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(query_error(&e)),
    };
    finish(&span, answer)
}

async fn slime(
    api: &HttpApi,
    caller: Caller,
    params: &Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let body = parse_body(body)?;
    let (items, batched) = match &body {
        Value::Array(items) => (items.as_slice(), true),
        Value::Object(_) => (std::slice::from_ref(&body), false),
        other => {
            return Err(Error::field(
                StatusCode::BAD_REQUEST,
                "body",
                format!(
                    "must be an object {{\"prompt\", \"response\", \"label\"}} or a list of them, not {}",
                    kind(other)
                ),
            ));
        }
    };
    let profile_field = if batched { None } else { Some(&body) };
    let (profile, scale) = api.profile(params, profile_field)?;
    let mut candidates = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| {
            if batched {
                format!("[{i}].{field}")
            } else {
                field.to_owned()
            }
        };
        match slime_candidate(i, item, &at) {
            Ok(c) => candidates.push(c),
            Err(e) => errors.push(e),
        }
    }
    if let Some(first) = errors.first() {
        // Nothing is scored: slime sends one sample per request, and retries a 4xx as it
        // would any error, so a partial answer would have no reader.
        return Err(Error {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": format!("{}: {}", first.field, first.message),
                "field": first.field,
                "errors": errors.iter().map(ItemError::json).collect::<Vec<_>>(),
            }),
            retry_after: false,
        });
    }
    let rewards = api.score(caller, &profile, candidates).await?;
    let answers: Vec<Value> = rewards
        .iter()
        .map(|r| {
            let reward = scale.reward(r);
            if params.detail {
                json!({
                    "reward": reward,
                    "score": scale.score(reward),
                    "components": r.components,
                    "status": r.status().as_str_name(),
                    "error": if r.error.is_empty() { None } else { Some(&r.error) },
                    "flags": r.flags,
                    "timing": r.timing.as_ref().map(|t| json!({
                        "queue_ms": t.queue_ms, "scoring_ms": t.scoring_ms, "total_ms": t.total_ms,
                    })),
                    "profile": profile,
                })
            } else {
                json!(reward)
            }
        })
        .collect();
    let mut response = if batched {
        Json(Value::Array(answers)).into_response()
    } else {
        Json(answers.into_iter().next().unwrap_or(Value::Null)).into_response()
    };
    // A bare number cannot say FAILED: headers do (the first FAILED item's error).
    if let Some(failed) = rewards.iter().find(|r| r.status() == RewardStatus::Failed) {
        let h = response.headers_mut();
        h.insert("x-rewardfleet-status", HeaderValue::from_static("FAILED"));
        let message: String = failed
            .error
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("x-rewardfleet-error", v);
        }
    }
    Ok(response)
}

fn slime_candidate(
    i: usize,
    item: &Value,
    at: &dyn Fn(&str) -> String,
) -> Result<Candidate, ItemError> {
    let Value::Object(fields) = item else {
        return Err(ItemError::new(
            i,
            at(""),
            format!("must be an object, not {}", kind(item)),
        ));
    };
    let prompt = match fields.get("prompt") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![ChatMessage {
            role: "user".into(),
            content: s.clone(),
        }],
        Some(Value::Array(messages)) => messages
            .iter()
            .enumerate()
            .map(|(k, m)| match (m.get("role"), m.get("content")) {
                (Some(Value::String(role)), Some(Value::String(content))) => Ok(ChatMessage {
                    role: role.clone(),
                    content: content.clone(),
                }),
                _ => Err(ItemError::new(
                    i,
                    at(&format!("prompt[{k}]")),
                    "must be {\"role\": string, \"content\": string}",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ItemError::new(
                i,
                at("prompt"),
                format!(
                    "must be a string or a list of chat messages, not {}",
                    kind(other)
                ),
            ));
        }
    };
    let response = match fields.get("response") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(ItemError::new(i, at("response"), "missing")),
        Some(other) => {
            return Err(ItemError::new(
                i,
                at("response"),
                format!("must be a string, not {}", kind(other)),
            ));
        }
    };
    let reference = reference(fields.get("label"), &at("label"), i)?;
    Ok(Candidate {
        id: i.to_string(),
        group_id: String::new(),
        prompt,
        response,
        reference,
        labels: HashMap::new(),
    })
}

/// `GET /profiles`: the profiles served, their components, and the default.
async fn profiles(State(api): State<HttpApi>, headers: HeaderMap, peer: ClientNames) -> Response {
    if let Err(e) = api.caller(&headers, &peer, &tracing::Span::none()) {
        return e.into_response();
    }
    let profiles: Vec<Value> = api
        .inner
        .gateway
        .profiles()
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "normalize": p.normalize,
                "on_component_failure": p.on_component_failure,
                "components": p.components.iter().map(|c| json!({
                    "name": c.name, "kind": c.kind, "weight": c.weight, "gate": c.gate,
                    "fallback": c.fallback,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let default = api.inner.gateway.resolve_profile("").ok();
    Json(json!({ "profiles": profiles, "default": default })).into_response()
}

/// `GET /health`, `GET /readyz`: 200 while the gateway takes requests, 503 once it drains.
async fn health(State(api): State<HttpApi>) -> Response {
    if api.inner.draining.is_cancelled() {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return r;
    }
    Json(json!({ "status": "ready" })).into_response()
}

async fn not_found() -> Response {
    Error::field(
        StatusCode::NOT_FOUND,
        "",
        "no such endpoint; POST /get_reward (OpenRLHF), POST /reward (slime), GET /profiles, GET /health",
    )
    .into_response()
}

/// Serves the HTTP endpoints of `api` on `listener` until `shutdown` fires; then answers 503
/// (health and new requests) while open sessions finish for up to `drain_timeout`, ends the
/// rest (their requests answer 503), and closes the connections within 2 s more.
///
/// # Errors
/// If the listener fails.
pub async fn serve_http(
    api: HttpApi,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    tls: Option<ReloadingTls>,
) -> std::io::Result<()> {
    let drained = CancellationToken::new();
    let drain = {
        let api = api.clone();
        let drained = drained.clone();
        async move {
            shutdown.cancelled().await;
            api.inner.draining.cancel();
            let _ = tokio::time::timeout(drain_timeout, api.inner.gateway.sessions_ended()).await;
            api.inner.sessions.cancel();
            drained.cancel();
        }
    };
    tokio::spawn(drain);
    let stop = drained.clone().cancelled_owned();
    let max = api.inner.gateway.inner.transport.max_connections;
    let slots = Arc::new(Semaphore::new(max as usize));
    let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
        None => Box::pin(
            axum::serve(
                CountedListener {
                    listener,
                    slots,
                    max,
                },
                api.router()
                    .into_make_service_with_connect_info::<ClientNames>(),
            )
            .with_graceful_shutdown(stop)
            .into_future(),
        ),
        Some(tls) => Box::pin(
            axum::serve(
                TlsListener::new(listener, tls, slots),
                api.router()
                    .into_make_service_with_connect_info::<ClientNames>(),
            )
            .with_graceful_shutdown(stop)
            .into_future(),
        ),
    };
    tokio::select! {
        r = server => r,
        () = async { drained.cancelled().await; tokio::time::sleep(Duration::from_secs(2)).await } => {
            tracing::warn!("HTTP connections still open after the drain; closing");
            Ok(())
        }
    }
}

/// The names of the verified client certificate of a request's connection (none over
/// plaintext, without one, or when the router is served without connection info); they may
/// name a tenant (`tls_subject`).
#[derive(Debug, Clone, Default)]
struct ClientNames(Arc<[String]>);

impl Connected<IncomingStream<'_, CountedListener>> for ClientNames {
    fn connect_info(_: IncomingStream<'_, CountedListener>) -> Self {
        Self::default()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientNames {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(stream.io().client_names())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientNames {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ConnectInfo<ClientNames>>()
            .map(|c| c.0.clone())
            .unwrap_or_default())
    }
}

/// A slot of `gateway.max_connections` for an accepted connection; none free: the connection
/// is closed at once (and counted in `rewardfleet_refused_total`).
fn connection_slot(slots: &Arc<Semaphore>, max: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slot = Arc::clone(slots).try_acquire_owned().ok();
    if slot.is_none() {
        tracing::debug!(
            max,
            "refusing an HTTP connection: gateway.max_connections reached"
        );
        if let Some(m) = rewardfleet_telemetry::metrics() {
            m.refused.add(
                1,
                &[rewardfleet_telemetry::metrics::label(
                    "limit",
                    "gateway.max_connections",
                )],
            );
        }
    }
    slot
}

/// The plaintext HTTP listener, at most `max` connections open at once.
struct CountedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: u32,
}

impl axum::serve::Listener for CountedListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    if let Some(slot) = connection_slot(&self.slots, self.max) {
                        return (Connection::plain(stream, slot), addr);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The HTTP listener over TLS: connections are accepted and handshaken by a task of their own
/// (a slow or plaintext client holds up no other; a failed handshake closes the connection),
/// at most `gateway.max_connections` open at once.
struct TlsListener {
    /// Handshaken connections waiting for the server: at most 64.
    ready: tokio::sync::mpsc::Receiver<(Connection, std::net::SocketAddr)>,
    addr: std::io::Result<std::net::SocketAddr>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: ReloadingTls, slots: Arc<Semaphore>) -> Self {
        let max = slots.available_permits() as u32;
        let addr = listener.local_addr();
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = tx.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Some(slot) = connection_slot(&slots, max) else {
                    continue;
                };
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Connection::tls(stream, slot), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP TLS handshake failed"),
                        Err(_) => tracing::debug!("HTTP TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ended: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.addr {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_what_follows_the_prompt() {
        assert_eq!(split_query("Q: 1+1?A: 2", "Q: 1+1?"), Ok("A: 2"));
        assert_eq!(split_query("<s>Q?A", "Q?"), Ok("A"));
        assert_eq!(
            split_query("<|begin_of_text|> Q?A<|eot_id|>", "Q?"),
            Ok("A")
        );
        assert_eq!(split_query("Q?answer</s>", "Q?"), Ok("answer"));
        assert_eq!(split_query("Q?x<|im_end|>\n<|endoftext|>", "Q?"), Ok("x"));
        // Not special tokens: kept.
        assert_eq!(split_query("Q?a <b>", "Q?"), Ok("a <b>"));
        let e = split_query("hello Q?A", "Q?").unwrap_err();
        assert!(
            e.contains("not a prefix") && e.contains("character 0"),
            "{e}"
        );
        assert!(
            split_query("Q!A", "Q?")
                .unwrap_err()
                .contains("character 1")
        );
    }

    #[test]
    fn scores_stay_in_the_unit_interval() {
        let s = |map| Scale { floor: -1.0, map };
        assert_eq!(s(ScoreMap::Clamp).score(3.0), 1.0);
        assert_eq!(s(ScoreMap::Clamp).score(-1.0), 0.0);
        assert_eq!(s(ScoreMap::Clamp).score(0.25), 0.25);
        assert_eq!(s(ScoreMap::Linear { lo: -2.0, hi: 2.0 }).score(1.0), 0.75);
        assert_eq!(s(ScoreMap::Logistic).score(0.0), 0.5);
        assert!(s(ScoreMap::Logistic).score(2.0) > 0.88);
        assert_eq!(s(ScoreMap::Identity).score(f64::NAN), 0.0);
        let failed = Reward::failed("c", "x");
        assert_eq!(s(ScoreMap::Clamp).reward(&failed), -1.0);
    }

    #[test]
    fn only_tokens_before_the_prompt_are_skipped() {
        assert!(only_special_tokens("<s> [BOS]<|begin_of_text|>"));
        assert!(!only_special_tokens("<s> hi"));
        assert!(!only_special_tokens("< s>"));
    }

    #[test]
    fn http_listen_must_be_an_address() {
        let text = "[gateway]\nhttp_listen = \"localhost\"\n[profile.p]\ncomponents = [{ rule = \"exact_match\" }]\n";
        let e = Config::from_toml(text).unwrap_err().to_string();
        assert!(e.contains("gateway.http_listen"), "{e}");
    }
}
