//! A fake OpenAI-compatible judge server: deterministic verdicts, scripted faults, call counting.
//!
//! Tests and benchmarks start it on an ephemeral port ([`FakeJudge::start`]) and point a
//! `[[judge]]` at [`FakeJudge::base_url`]. It answers `POST /v1/chat/completions` the way a judge
//! model would, but its verdicts are a pure function of the request, so tests can assert exact
//! rewards:
//!
//! - **rubric** (the last user message has a `<response>` block and a `Score range: MIN to MAX`
//!   line): `{"reasoning": .., "score": q}` with `q = `[`quality`]`(response, MIN, MAX)`.
//! - **logprob** (the request asks for `logprobs`): the content is `q` alone and the token's top
//!   logprobs follow [`logprob_distribution`].
//! - **pairwise** (`<candidate_a>` and `<candidate_b>` blocks): `{"winner": "A" | "B" | "tie"}` by
//!   comparing the two qualities.
//! - **reference-guided** (a `<reference>` block): `{"correct": bool}`, true when the response
//!   contains the reference (case and whitespace folded).
//!
//! - **factuality, claim splitting** (the task asks to split the response `into atomic claims`):
//!   `{"claims": [..], "abstained": bool}` by [`atomic_claims`]: one claim per sentence,
//!   `quality:N` markers left out; abstained when the response says it is not sure or does not know.
//! - **factuality, claim verification** (`<claim>` and `<reference>` blocks): `{"supported": bool}`,
//!   true when the reference contains the claim (case, whitespace and the final stop folded).
//!
//! Rubric and reference verdicts also carry `"manipulation_attempt"`: true when the response
//! holds the marker [`MANIPULATION_MARKER`], as a judge that saw through an injection would say.
//!
//! A **sycophantic** judge ([`FakeJudgeConfig::flattery`]) adds points to a rubric or logprob
//! quality for each [`FLATTERY_PHRASES`] phrase in the response, as judges that reward flattery
//! and length do; and [`FakeJudge::shift_bias`] moves every later rubric and logprob score, as
//! a judge model replaced under the fleet would (canary drift).
//!
//! Faults ([`Fault`]) are served from a per-call script, then at random with `fault_rate`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the fake judge takes to answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Answer at once.
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Log-normal with this median and shape `sigma` (long tail, like real endpoints).
    LogNormal {
        /// The median latency.
        median: Duration,
        /// Shape: 0 is fixed, 0.5 a moderate tail, 1 a heavy one.
        sigma: f64,
    },
}

/// What the fake judge does with one call instead of (or on top of) a normal verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// A normal verdict.
    None,
    /// HTTP 429 with `Retry-After` (whole seconds, rounded up).
    RateLimited {
        /// The value of `Retry-After`.
        retry_after: Duration,
    },
    /// HTTP 503 with an optional `Retry-After`.
    Unavailable {
        /// The value of `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// HTTP 500.
    ServerError,
    /// HTTP 400 (a request the endpoint refuses; never worth retrying).
    BadRequest,
    /// Never answers (until the client gives up).
    Hang,
    /// A verdict whose JSON is cut in the middle.
    TruncatedJson,
    /// The verdict wrapped in a markdown code fence, with prose around it.
    MarkdownJson,
    /// Text with no verdict in it.
    Garbage,
    /// The score as prose: `Score: 7/10`.
    ProseScore,
    /// Pairwise: always prefers the first candidate shown (a position-biased judge).
    PositionBias,
    /// Logprob requests are answered without logprobs.
    NoLogprobs,
}

/// The fake judge's behaviour.
#[derive(Debug, Clone)]
pub struct FakeJudgeConfig {
    /// Latency of every answer (hangs excepted).
    pub latency: Latency,
    /// Fault of call `i` (0-based, in arrival order); calls past the end use `fault_rate`.
    pub script: Vec<Fault>,
    /// Probability that an unscripted call gets `random_fault`.
    pub fault_rate: f64,
    /// The fault served at random.
    pub random_fault: Fault,
    /// Seed of the latency and fault draws.
    pub seed: u64,
    /// Added to every quality before clamping (a lenient or a harsh judge, for panels).
    pub bias: i64,
    /// Added to a rubric or logprob quality (before clamping) per [`FLATTERY_PHRASES`] phrase
    /// found in the response: a sycophantic judge. 0: none.
    pub flattery: i64,
}

impl Default for FakeJudgeConfig {
    fn default() -> Self {
        Self {
            latency: Latency::None,
            script: Vec::new(),
            fault_rate: 0.0,
            random_fault: Fault::ServerError,
            seed: 0,
            bias: 0,
            flattery: 0,
        }
    }
}

/// One request as the fake judge received it (the last [`RECORDED_REQUESTS`] are kept).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP headers (names lowercase).
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: Value,
}

/// How many requests [`FakeJudge::requests`] keeps.
pub const RECORDED_REQUESTS: usize = 256;

/// Counters of the fake judge.
#[derive(Debug, Default)]
pub struct Stats {
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    faults: AtomicU64,
    recent: Mutex<VecDeque<RecordedRequest>>,
    /// Added to `bias` from now on ([`FakeJudge::shift_bias`]).
    bias_shift: std::sync::atomic::AtomicI64,
    /// When the last [`ARRIVALS_KEPT`] calls arrived.
    arrivals: Mutex<VecDeque<std::time::Instant>>,
}

/// How many arrival times [`FakeJudge::peak_calls_within`] looks at.
pub const ARRIVALS_KEPT: usize = 100_000;

struct AppState {
    config: FakeJudgeConfig,
    stats: Arc<Stats>,
    rng: Mutex<rand::rngs::StdRng>,
}

/// A running fake judge on a loopback port; stops when dropped.
pub struct FakeJudge {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Why the fake judge could not start.
#[derive(Debug, thiserror::Error)]
pub enum FakeJudgeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The IO error.
        source: std::io::Error,
    },
}

impl FakeJudge {
    /// Starts a fake judge on `127.0.0.1:0`.
    ///
    /// # Errors
    /// [`FakeJudgeError::Bind`] if no loopback port can be bound.
    pub async fn start(config: FakeJudgeConfig) -> Result<Self, FakeJudgeError> {
        Self::start_on("127.0.0.1:0", config).await
    }

    /// Starts a fake judge on `addr`.
    ///
    /// # Errors
    /// [`FakeJudgeError::Bind`] if `addr` cannot be bound.
    pub async fn start_on(addr: &str, config: FakeJudgeConfig) -> Result<Self, FakeJudgeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| FakeJudgeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| FakeJudgeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = oneshot::channel::<()>();
        let app = app(config, stats.clone());
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "fake judge stopped");
            }
        });
        Ok(Self {
            addr: local,
            stats,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to put in `[[judge]] base_url` (ends in `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat completion calls received so far.
    pub fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::SeqCst)
    }

    /// The most calls it was answering at once.
    pub fn max_concurrent(&self) -> u64 {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// Calls it is answering now.
    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Ordering::SeqCst)
    }

    /// Calls that were served a fault.
    pub fn faults(&self) -> u64 {
        self.stats.faults.load(Ordering::SeqCst)
    }

    /// The most recent requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.stats
            .recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The most calls that arrived within any `window` (sliding over the last
    /// [`ARRIVALS_KEPT`] arrivals): the peak request rate an endpoint's rate limit would see.
    pub fn peak_calls_within(&self, window: Duration) -> usize {
        let Ok(arrivals) = self.stats.arrivals.lock() else {
            return 0;
        };
        let mut peak = 0;
        let mut first = 0;
        for (last, at) in arrivals.iter().enumerate() {
            while at.duration_since(arrivals[first]) >= window {
                first += 1;
            }
            peak = peak.max(last + 1 - first);
        }
        peak
    }

    /// Scores every later rubric and logprob verdict `points` higher (lower when negative) than
    /// its configuration says, on top of earlier shifts: a judge whose model changed.
    pub fn shift_bias(&self, points: i64) {
        self.stats.bias_shift.fetch_add(points, Ordering::SeqCst);
    }

    /// When the last [`ARRIVALS_KEPT`] calls arrived, oldest first.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.stats
            .arrivals
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Sets every counter back to zero (the script keeps counting from where it was).
    pub fn reset_counters(&self) {
        if let Ok(mut a) = self.stats.arrivals.lock() {
            a.clear();
        }
        self.stats
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
        self.stats.faults.store(0, Ordering::SeqCst);
        if let Ok(mut r) = self.stats.recent.lock() {
            r.clear();
        }
    }

    /// Stops the server and waits for it (open hangs are cut).
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeJudge {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The fake judge as an axum app (for tests that serve it themselves).
pub fn app(config: FakeJudgeConfig, stats: Arc<Stats>) -> Router {
    let rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let state = Arc::new(AppState {
        config,
        stats,
        rng: Mutex::new(rng),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .with_state(state)
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]}))
}

/// Decrements the in-flight count when the call ends, however it ends (hangs are dropped).
struct InFlight(Arc<Stats>);

impl InFlight {
    fn enter(stats: &Arc<Stats>) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let call = state.stats.calls.fetch_add(1, Ordering::SeqCst) as usize;
    if let Ok(mut a) = state.stats.arrivals.lock() {
        if a.len() == ARRIVALS_KEPT {
            a.pop_front();
        }
        a.push_back(std::time::Instant::now());
    }
    let _guard = InFlight::enter(&state.stats);
    let (fault, delay) = {
        let mut rng = match state.rng.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let fault = match state.config.script.get(call) {
            Some(f) => *f,
            None if state.config.fault_rate > 0.0
                && rng.random::<f64>() < state.config.fault_rate =>
            {
                state.config.random_fault
            }
            None => Fault::None,
        };
        (fault, sample_latency(state.config.latency, &mut *rng))
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("invalid JSON body: {e}")}})),
            )
                .into_response();
        }
    };
    if let Ok(mut recent) = state.stats.recent.lock() {
        if recent.len() == RECORDED_REQUESTS {
            recent.pop_front();
        }
        recent.push_back(RecordedRequest {
            headers,
            body: body.clone(),
        });
    }
    if fault != Fault::None {
        state.stats.faults.fetch_add(1, Ordering::SeqCst);
    }
    if fault == Fault::Hang {
        std::future::pending::<()>().await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Fault::RateLimited { retry_after } => {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                Some(retry_after),
                "rate limited",
            );
        }
        Fault::Unavailable { retry_after } => {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, retry_after, "overloaded");
        }
        Fault::ServerError => {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error");
        }
        Fault::BadRequest => {
            return error_response(StatusCode::BAD_REQUEST, None, "bad request");
        }
        _ => {}
    }
    let bias = state.config.bias + state.stats.bias_shift.load(Ordering::SeqCst);
    Json(completion(&body, fault, bias, state.config.flattery)).into_response()
}

fn error_response(status: StatusCode, retry_after: Option<Duration>, message: &str) -> Response {
    let mut response = (status, Json(json!({"error": {"message": message}}))).into_response();
    if let Some(d) = retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

fn sample_latency(latency: Latency, rng: &mut impl Rng) -> Duration {
    match latency {
        Latency::None => Duration::ZERO,
        Latency::Fixed(d) => d,
        Latency::Uniform(lo, hi) if hi > lo => lo + (hi - lo).mul_f64(rng.random::<f64>()),
        Latency::Uniform(lo, _) => lo,
        Latency::LogNormal { median, sigma } => {
            // Box–Muller for one standard normal draw.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            median.mul_f64((sigma * z).exp().min(1000.0))
        }
    }
}

/// The quality the fake judge sees in a response, in `[min, max]`: the `N` of a `quality:N`
/// marker in the response if there is one (clamped), else a value derived from its SHA-256.
pub fn quality(response: &str, min: i64, max: i64) -> i64 {
    let (min, max) = if min <= max { (min, max) } else { (max, min) };
    if let Some(n) = marker(response) {
        return n.clamp(min, max);
    }
    let digest = Sha256::digest(response.as_bytes());
    let span = (max - min + 1) as u64;
    min + (u64::from(digest[0]) % span) as i64
}

fn marker(response: &str) -> Option<i64> {
    let at = response.find("quality:")?;
    let digits: String = response[at + "quality:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// The top logprobs the fake judge gives for score `q` in `[min, max]`: 0.5 on `q`, 0.3 on
/// `q + 1`, 0.2 on `q − 1`; mass that would fall outside the range stays on `q`. Also a non-score
/// token (`"The"`) with a tiny probability, which a scorer must ignore.
pub fn logprob_distribution(q: i64, min: i64, max: i64) -> Vec<(String, f64)> {
    let mut p_q = 0.5;
    let mut out = Vec::new();
    if q < max {
        out.push(((q + 1).to_string(), 0.3));
    } else {
        p_q += 0.3;
    }
    if q > min {
        out.push(((q - 1).to_string(), 0.2));
    } else {
        p_q += 0.2;
    }
    out.insert(0, (q.to_string(), p_q));
    out.push(("The".to_string(), 1e-4));
    out
}

/// The expected score under [`logprob_distribution`] (the non-score token excluded).
pub fn expected_score(q: i64, min: i64, max: i64) -> f64 {
    let dist = logprob_distribution(q, min, max);
    let valid: Vec<(f64, f64)> = dist
        .iter()
        .filter_map(|(t, p)| t.parse::<f64>().ok().map(|s| (s, *p)))
        .collect();
    let total: f64 = valid.iter().map(|(_, p)| p).sum();
    valid.iter().map(|(s, p)| s * p).sum::<f64>() / total
}

/// Phrases by which a response abstains, as the fake judge's claim splitting sees them.
pub const ABSTENTION_PHRASES: &[&str] = &["not sure", "don't know", "do not know", "cannot answer"];

/// The atomic claims the fake judge finds in `response`, and whether it abstains: one claim per
/// sentence (ended by `.`, `!` or `?`), with `quality:N` markers (and their brackets) left out; no
/// claims when it abstains ([`ABSTENTION_PHRASES`]).
pub fn atomic_claims(response: &str) -> (Vec<String>, bool) {
    let text: String = response
        .split_whitespace()
        .filter(|w| !w.trim_matches(['[', ']', '(', ')']).starts_with("quality:"))
        .collect::<Vec<_>>()
        .join(" ");
    let folded = fold(&text);
    if ABSTENTION_PHRASES.iter().any(|p| folded.contains(p)) {
        return (Vec::new(), true);
    }
    let claims = text
        .split_inclusive(['.', '!', '?'])
        .map(str::trim)
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .map(str::to_owned)
        .collect();
    (claims, false)
}

/// Whether the fake judge finds `claim` supported by `reference`: the reference contains it,
/// case, whitespace and the final stop folded.
pub fn claim_supported(claim: &str, reference: &str) -> bool {
    let claim = fold(claim);
    let claim = claim.trim_end_matches(['.', '!', '?']);
    !claim.is_empty() && fold(reference).contains(claim)
}

/// Phrases a sycophantic fake judge pays for ([`FakeJudgeConfig::flattery`]), case folded.
pub const FLATTERY_PHRASES: &[&str] = &[
    "great question",
    "brilliant",
    "you are absolutely right",
    "what a wonderful",
];

/// How many [`FLATTERY_PHRASES`] occurrences `response` holds.
pub fn flattery(response: &str) -> i64 {
    let folded = fold(response);
    FLATTERY_PHRASES
        .iter()
        .map(|p| folded.matches(p).count() as i64)
        .sum()
}

/// A response holding this text is reported as a manipulation attempt in rubric and reference
/// verdicts (`"manipulation_attempt": true`).
pub const MANIPULATION_MARKER: &str = "manipulation:yes";

/// Text between `<tag>` and `</tag>` (the first such block).
pub fn block<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim_matches('\n'))
}

fn score_range(text: &str) -> (i64, i64) {
    let Some(at) = text.find("Score range: ") else {
        return (1, 10);
    };
    let rest = &text[at + "Score range: ".len()..];
    let mut nums = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse::<i64>().ok());
    match (nums.next(), nums.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => (1, 10),
    }
}

fn fold(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn completion(body: &Value, fault: Fault, bias: i64, flattery_points: i64) -> Value {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt_chars: usize = messages
        .iter()
        .map(|m| m["content"].as_str().map_or(0, str::len))
        .sum();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let (min, max) = score_range(&last_user);
    let wants_logprobs = body["logprobs"].as_bool().unwrap_or(false);
    let mut logprobs = Value::Null;
    let content = if let (Some(claim), Some(reference)) =
        (block(&last_user, "claim"), block(&last_user, "reference"))
    {
        let supported = claim_supported(claim, reference);
        json!({"reasoning": "Looked for the claim in the reference.", "supported": supported})
            .to_string()
    } else if last_user.contains("into atomic claims") {
        let (claims, abstained) = atomic_claims(block(&last_user, "response").unwrap_or_default());
        json!({"claims": claims, "abstained": abstained}).to_string()
    } else if let (Some(a), Some(b)) = (
        block(&last_user, "candidate_a"),
        block(&last_user, "candidate_b"),
    ) {
        let (qa, qb) = (quality(a, min, max), quality(b, min, max));
        // A position-biased judge always prefers what it is shown first.
        let winner = if fault == Fault::PositionBias || qa > qb {
            "A"
        } else if qb > qa {
            "B"
        } else {
            "tie"
        };
        json!({"reasoning": format!("A is worth {qa}, B is worth {qb}."), "winner": winner})
            .to_string()
    } else if let Some(reference) = block(&last_user, "reference") {
        let response = block(&last_user, "response").unwrap_or_default();
        let correct = fold(response).contains(&fold(reference));
        let manipulation = response.contains(MANIPULATION_MARKER);
        json!({"reasoning": "Compared with the reference.", "correct": correct, "manipulation_attempt": manipulation})
            .to_string()
    } else {
        let response = block(&last_user, "response").unwrap_or_default();
        let q = (quality(response, min, max) + bias + flattery_points * flattery(response))
            .clamp(min.min(max), max.max(min));
        if wants_logprobs {
            if fault != Fault::NoLogprobs {
                let top: Vec<Value> = logprob_distribution(q, min, max)
                    .into_iter()
                    .map(|(token, p)| json!({"token": token, "logprob": p.ln(), "bytes": null}))
                    .collect();
                logprobs = json!({"content": [
                    {"token": q.to_string(), "logprob": top[0]["logprob"], "bytes": null, "top_logprobs": top}
                ]});
            }
            q.to_string()
        } else {
            let manipulation = response.contains(MANIPULATION_MARKER);
            json!({"reasoning": format!("The response is worth {q}."), "score": q, "manipulation_attempt": manipulation})
                .to_string()
        }
    };
    let content = match fault {
        Fault::TruncatedJson => content[..content.len() / 2].to_owned(),
        Fault::MarkdownJson => format!("Here is my verdict:\n```json\n{content}\n```\nThanks."),
        Fault::Garbage => "I am unable to grade this response at the moment.".to_owned(),
        Fault::ProseScore => match serde_json::from_str::<Value>(&content)
            .ok()
            .and_then(|v| v["score"].as_i64())
        {
            Some(s) => format!("Reasoning: fine.\nScore: {s}/{max}"),
            None => content,
        },
        _ => content,
    };
    let prompt_tokens = prompt_chars.div_ceil(4);
    let completion_tokens = content.len().div_ceil(4);
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": logprobs,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sycophantic_judge_pays_for_flattery() {
        let body = |response: &str| {
            json!({"messages": [
                {"role": "user", "content": format!("Score range: 1 to 10\n<response>\n{response}\n</response>")}
            ]})
        };
        let score = |c: Value| {
            let content = c["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            serde_json::from_str::<Value>(&content).unwrap()["score"]
                .as_i64()
                .unwrap()
        };
        let plain = "4. quality:3";
        let fawning = "Great question! 4. You are absolutely right to ask. quality:3";
        assert_eq!(flattery(fawning), 2);
        assert_eq!(score(completion(&body(plain), Fault::None, 0, 2)), 3);
        assert_eq!(score(completion(&body(fawning), Fault::None, 0, 2)), 7);
        assert_eq!(score(completion(&body(fawning), Fault::None, 0, 0)), 3);
        assert_eq!(
            score(completion(&body(fawning), Fault::None, 5, 2)),
            10,
            "clamped"
        );
    }

    #[test]
    fn quality_uses_the_marker_then_the_hash() {
        assert_eq!(quality("fine quality:7 answer", 1, 10), 7);
        assert_eq!(quality("quality:99", 1, 10), 10);
        let q = quality("no marker", 1, 10);
        assert!((1..=10).contains(&q));
        assert_eq!(q, quality("no marker", 1, 10));
    }

    #[test]
    fn claims_are_sentences_without_markers_and_abstentions_have_none() {
        let (claims, abstained) =
            atomic_claims("Paris is the capital of France. It lies on the Seine! [quality:8]");
        assert_eq!(
            claims,
            ["Paris is the capital of France.", "It lies on the Seine!"]
        );
        assert!(!abstained);
        assert_eq!(
            atomic_claims("I am not sure. quality:2"),
            (Vec::new(), true)
        );
        assert!(claim_supported(
            "Paris is the  capital of France.",
            "PARIS is the capital of France, on the Seine."
        ));
        assert!(!claim_supported(
            "Paris is in Spain.",
            "Paris is the capital of France."
        ));
    }

    #[test]
    fn expected_score_is_skewed_upwards_inside_the_range() {
        assert!((expected_score(7, 1, 10) - 7.1).abs() < 1e-12);
        assert!((expected_score(10, 1, 10) - 9.8).abs() < 1e-12);
        assert!((expected_score(1, 1, 10) - 1.3).abs() < 1e-12);
    }

    #[test]
    fn rubric_completion_carries_the_quality_and_usage() {
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "grade"},
            {"role": "user", "content": "Score range: 0 to 5\n<response>\nquality:3\n</response>"}
        ]});
        let c = completion(&body, Fault::None, 0, 0);
        let content: Value =
            serde_json::from_str(c["choices"][0]["message"]["content"].as_str().unwrap_or(""))
                .unwrap_or_default();
        assert_eq!(content["score"], 3);
        assert_eq!(content["manipulation_attempt"], false);
        assert!(c["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);
    }
}
