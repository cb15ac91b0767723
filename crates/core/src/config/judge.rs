//! `[[judge]]`: a remote LLM judge behind an OpenAI-compatible chat completions API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// A remote judge endpoint. The API key is never in the file: `api_key_env` or `api_key_file`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeConfig {
    /// Name used by profile components (`scorer = "judge"`).
    pub name: String,
    /// Base URL up to `/v1`; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model the endpoint serves.
    pub model: String,
    /// Environment variable that holds the API key.
    pub api_key_env: Option<String>,
    /// File that holds the API key.
    pub api_key_file: Option<PathBuf>,
    /// PEM CA bundle trusted for the endpoint's certificate, besides the system roots (a
    /// private CA).
    pub ca_file: Option<PathBuf>,
    /// Extra HTTP headers sent with every request.
    pub headers: BTreeMap<String, String>,
    /// Judgements in flight to this endpoint, at most, from the whole fleet (each worker takes
    /// its share; see the judge crate's `FleetShare`).
    pub max_concurrency: usize,
    /// Requests (attempts) sent per second, at most, from the whole fleet.
    pub requests_per_second: f64,
    /// Tokens (prompt + completion) per minute, at most, from the whole fleet; 0: no limit.
    pub tokens_per_minute: u64,
    /// Per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline for one judgement, all retries included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Retries after the first attempt, at most.
    pub max_retries: usize,
    /// Judgements inside the judge's stack at once (queued or in flight), at most; more are
    /// shed with the retryable `judge_overloaded`.
    pub queue_capacity: usize,
    /// Sampling parameters sent with every request.
    pub sampling: SamplingConfig,
    /// Ask for structured output (`response_format` with a JSON schema).
    pub structured_output: bool,
    /// The endpoint returns top logprobs: the `logprob` method asks for them (endpoints that do not
    /// support them may reject the request, so this is opt-in).
    pub logprobs: bool,
    /// How many top logprobs to ask for per token (1 to 20).
    pub top_logprobs: u8,
    /// First retry waits this long (then doubles, plus jitter), unless `Retry-After` says longer.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// A retry waits at most this long (a longer `Retry-After` is still honoured within `deadline`).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Random extra wait, as a fraction of the backoff (0 to 1).
    pub backoff_jitter: f64,
    /// Retry budget: retries may add at most this fraction of first attempts (0.2 = 20 %).
    pub retry_budget_ratio: f32,
    /// Retry budget: retries per second allowed regardless of the ratio.
    pub retry_budget_min_per_second: u32,
    /// Circuit breaker: this many judgements failing in a row open the circuit; 0 disables it.
    pub circuit_breaker_failures: u32,
    /// Circuit breaker: how long the circuit stays open before one probe is let through.
    #[serde(with = "humantime_serde")]
    pub circuit_breaker_open_for: Duration,
    /// Tokens (prompt + completion) one trainer session may spend on this judge; 0: no budget.
    /// When spent, the judge's components fail with reason `judge_token_budget_spent`
    /// (the profile's `fallback` or `on_component_failure` then degrades or fails the reward).
    pub session_token_budget: u64,
    /// How long a verdict stays in the cache; 0 disables caching for this judge.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a permanent failure stays in the cache: a request the endpoint refused as
    /// malformed (HTTP 400, 413, 422) or an answer the method could not read. Within it, the same
    /// judgement (a redelivered job, another worker) fails again without a call. Keep it above the
    /// redelivery horizon (`worker.ack_wait × worker.max_deliver`); 0: failures are not kept.
    #[serde(with = "humantime_serde")]
    pub failure_cache_ttl: Duration,
}

impl std::fmt::Debug for JudgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JudgeConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_file", &self.api_key_file)
            .field("ca_file", &self.ca_file)
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(|k| (k, "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_second", &self.requests_per_second)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("max_retries", &self.max_retries)
            .field("queue_capacity", &self.queue_capacity)
            .field("sampling", &self.sampling)
            .field("structured_output", &self.structured_output)
            .field("logprobs", &self.logprobs)
            .field("top_logprobs", &self.top_logprobs)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("backoff_jitter", &self.backoff_jitter)
            .field("retry_budget_ratio", &self.retry_budget_ratio)
            .field(
                "retry_budget_min_per_second",
                &self.retry_budget_min_per_second,
            )
            .field("circuit_breaker_failures", &self.circuit_breaker_failures)
            .field("circuit_breaker_open_for", &self.circuit_breaker_open_for)
            .field("session_token_budget", &self.session_token_budget)
            .field("cache_ttl", &self.cache_ttl)
            .field("failure_cache_ttl", &self.failure_cache_ttl)
            .finish()
    }
}

/// Sampling parameters for judge requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Temperature (0 for the most repeatable verdicts).
    pub temperature: f64,
    /// Top-p.
    pub top_p: Option<f64>,
    /// Most completion tokens.
    pub max_tokens: u32,
    /// Seed, where the endpoint supports it.
    pub seed: Option<i64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            max_tokens: 512,
            seed: Some(0),
        }
    }
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            api_key_file: None,
            ca_file: None,
            headers: BTreeMap::new(),
            max_concurrency: 64,
            requests_per_second: 50.0,
            tokens_per_minute: 0,
            timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            max_retries: 3,
            queue_capacity: 1024,
            sampling: SamplingConfig::default(),
            structured_output: false,
            logprobs: false,
            top_logprobs: 20,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            backoff_jitter: 0.5,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_second: 10,
            circuit_breaker_failures: 5,
            circuit_breaker_open_for: Duration::from_secs(10),
            session_token_budget: 0,
            cache_ttl: Duration::from_secs(24 * 3600),
            failure_cache_ttl: Duration::from_secs(600),
        }
    }
}

impl JudgeConfig {
    pub(crate) fn problems(&self, path: &str, p: &mut Vec<ConfigProblem>) {
        if self.name.is_empty() {
            p.push(ConfigProblem::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            p.push(ConfigProblem::new(
                format!("{path}.base_url"),
                format!("{:?} is not an http(s) URL", self.base_url),
            ));
        }
        if self.model.is_empty() {
            p.push(ConfigProblem::new(
                format!("{path}.model"),
                "must not be empty",
            ));
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            p.push(ConfigProblem::new(
                format!("{path}.api_key_file"),
                "give api_key_env or api_key_file, not both",
            ));
        }
        if self.max_concurrency == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.max_concurrency"),
                "must be at least 1",
            ));
        }
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            p.push(ConfigProblem::new(
                format!("{path}.requests_per_second"),
                "must be a number > 0",
            ));
        }
        if self.timeout.is_zero() {
            p.push(ConfigProblem::new(format!("{path}.timeout"), "must be > 0"));
        }
        if self.deadline < self.timeout {
            p.push(ConfigProblem::new(
                format!("{path}.deadline"),
                "must be at least the per-attempt timeout",
            ));
        }
        if self.queue_capacity == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.queue_capacity"),
                "must be at least 1",
            ));
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                p.push(ConfigProblem::new(
                    format!("{path}.headers"),
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            } else if name.eq_ignore_ascii_case("authorization") {
                p.push(ConfigProblem::new(
                    format!("{path}.headers.{name}"),
                    "secrets never live in the file; use api_key_env or api_key_file",
                ));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                p.push(ConfigProblem::new(
                    format!("{path}.headers.{name}"),
                    "the value has control characters",
                ));
            }
        }
        let t = &self.sampling;
        if !(t.temperature.is_finite() && (0.0..=2.0).contains(&t.temperature)) {
            p.push(ConfigProblem::new(
                format!("{path}.sampling.temperature"),
                "must be 0 to 2",
            ));
        }
        if let Some(top_p) = t.top_p
            && !(top_p > 0.0 && top_p <= 1.0)
        {
            p.push(ConfigProblem::new(
                format!("{path}.sampling.top_p"),
                "must be in (0, 1]",
            ));
        }
        if t.max_tokens == 0 {
            p.push(ConfigProblem::new(
                format!("{path}.sampling.max_tokens"),
                "must be at least 1",
            ));
        }
        if !(1..=20).contains(&self.top_logprobs) {
            p.push(ConfigProblem::new(
                format!("{path}.top_logprobs"),
                "must be 1 to 20",
            ));
        }
        if self.backoff_base.is_zero() {
            p.push(ConfigProblem::new(
                format!("{path}.backoff_base"),
                "must be > 0",
            ));
        }
        if self.backoff_max < self.backoff_base {
            p.push(ConfigProblem::new(
                format!("{path}.backoff_max"),
                "must be at least backoff_base",
            ));
        }
        if !(self.backoff_jitter.is_finite() && (0.0..=1.0).contains(&self.backoff_jitter)) {
            p.push(ConfigProblem::new(
                format!("{path}.backoff_jitter"),
                "must be 0 to 1",
            ));
        }
        if !(self.retry_budget_ratio.is_finite()
            && (0.0..=1000.0).contains(&self.retry_budget_ratio))
        {
            p.push(ConfigProblem::new(
                format!("{path}.retry_budget_ratio"),
                "must be 0 to 1000 (a fraction of first attempts)",
            ));
        }
        if self.circuit_breaker_failures > 0 && self.circuit_breaker_open_for.is_zero() {
            p.push(ConfigProblem::new(
                format!("{path}.circuit_breaker_open_for"),
                "must be > 0 when circuit_breaker_failures > 0",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> JudgeConfig {
        JudgeConfig {
            name: "j".into(),
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "m".into(),
            ..JudgeConfig::default()
        }
    }

    fn paths(c: &JudgeConfig) -> Vec<String> {
        let mut p = Vec::new();
        c.problems("judge[0]", &mut p);
        p.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn debug_never_shows_header_values() {
        let mut c = valid();
        c.headers
            .insert("X-Api-Token".into(), "s3cret-value".into());
        let shown = format!("{c:?}");
        assert!(shown.contains("X-Api-Token") && shown.contains("<redacted>"));
        assert!(!shown.contains("s3cret-value"));
    }

    #[test]
    fn every_new_field_is_checked_with_its_key_path() {
        assert!(paths(&valid()).is_empty());
        let mut c = valid();
        c.headers.insert("Authorization".into(), "Bearer x".into());
        c.headers.insert("bad header".into(), "v".into());
        c.sampling.temperature = 3.0;
        c.sampling.top_p = Some(0.0);
        c.sampling.max_tokens = 0;
        c.top_logprobs = 0;
        c.backoff_base = Duration::ZERO;
        c.backoff_jitter = 2.0;
        c.retry_budget_ratio = -1.0;
        c.circuit_breaker_open_for = Duration::ZERO;
        assert_eq!(
            paths(&c),
            vec![
                "judge[0].headers.Authorization",
                "judge[0].headers",
                "judge[0].sampling.temperature",
                "judge[0].sampling.top_p",
                "judge[0].sampling.max_tokens",
                "judge[0].top_logprobs",
                "judge[0].backoff_base",
                "judge[0].backoff_jitter",
                "judge[0].retry_budget_ratio",
                "judge[0].circuit_breaker_open_for",
            ]
        );
    }
}
