//! The outbound stack of one judge endpoint: every cross-cutting behaviour as a tower layer, built
//! in one `ServiceBuilder` chain; and how its errors become [`ScoreError`]s.

use rewardfleet_core::FailureReason;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rewardfleet_core::ScoreError;
use rewardfleet_core::config::JudgeConfig;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, RetryLayer};
use tower::util::BoxCloneSyncService;
use tower::util::rng::HasherRng;

use crate::JudgeError;
use crate::attempts::AttemptsLayer;
use crate::breaker::{CircuitBreakerLayer, CircuitOpen};
use crate::client::{AttemptError, BoxError, ChatRequest, Completion, HttpJudge};
use crate::limits::{GateLayer, Limits};
use crate::tokens::TokenRateLimitLayer;

/// The whole stack of one endpoint, cheap to clone (clones share limits, budget and breaker).
pub(crate) type JudgeService = BoxCloneSyncService<ChatRequest, Completion, BoxError>;

/// Builds the stack of one endpoint. Must run inside a Tokio runtime (the buffer spawns its worker).
pub(crate) fn build(
    config: &JudgeConfig,
    api_key: Option<&str>,
    limits: &Limits,
) -> Result<(JudgeService, HttpJudge), JudgeError> {
    let http = HttpJudge::new(config, api_key)?;
    let invalid = |message: String| JudgeError::Config {
        judge: config.name.clone(),
        message,
    };
    let backoff = ExponentialBackoffMaker::new(
        config.backoff_base,
        config.backoff_max,
        config.backoff_jitter,
        HasherRng::default(),
    )
    .map_err(|e| invalid(format!("backoff: {e}")))?;
    let retry = RetryPolicy {
        retries_left: config.max_retries,
        // Retries may add `retry_budget_ratio` of the first attempts over a 10 s window, plus
        // `retry_budget_min_per_second`: a failing endpoint is not hammered by every caller at once.
        budget: Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            config.retry_budget_min_per_second,
            config.retry_budget_ratio,
        )),
        backoff: backoff.clone().make_backoff(),
        deposited: false,
    };
    if !config.deadline.is_zero() && config.deadline < config.timeout {
        return Err(invalid(
            "deadline is shorter than the per-attempt timeout".into(),
        ));
    }

    let stack = ServiceBuilder::new()
        // The overall deadline of one judgement: queueing, every attempt and every backoff.
        // Outermost, so nothing below can make a caller wait longer.
        .timeout(config.deadline)
        // Admission: at most `queue_capacity` judgements inside the stack (queued or in flight),
        // counted by a semaphore; one more fails at once with a retryable overload and the worker
        // nacks. Shedding by count, not by the buffer's readiness: a buffer that is briefly not
        // ready (cooperative budget, its worker not yet run) is not full.
        .layer(GateLayer::admission(limits))
        // The local queue. RateLimit is not Clone; the buffer makes the stack cloneable and lets
        // every profile component share one set of limits. Admission above keeps it from ever
        // holding more than `queue_capacity`, so callers only wait here for the worker's turn.
        .buffer(config.queue_capacity)
        // This worker's share of `max_concurrency` judgements in flight to the endpoint (see
        // `limits.rs`). Above the retry layer, so a judgement's retries reuse its slot and the
        // endpoint never sees more than the fleet's limit.
        .layer(GateLayer::concurrency(limits))
        // This worker's share of `tokens_per_minute`: charged with an estimate, corrected by
        // the reported usage.
        .layer(TokenRateLimitLayer::new(limits, config.sampling.max_tokens))
        // Circuit breaker: after `circuit_breaker_failures` failed judgements in a row, refuse
        // calls for `circuit_breaker_open_for`, then let one probe through. Above retry, so it
        // counts judgements that failed after their retries, not single attempts.
        .layer(
            CircuitBreakerLayer::new(
                config.circuit_breaker_failures,
                config.circuit_breaker_open_for,
                is_endpoint_failure,
            )
            .named(&config.name),
        )
        // Retries of transient failures (429, 5xx, timeouts, transport): exponential backoff
        // with jitter, at least `Retry-After` for 429/503, at most `max_retries`, within the
        // retry budget, and never past the request's deadline.
        .layer(RetryLayer::new(retry))
        // This worker's share of `requests_per_second`, for every attempt (what the endpoint
        // sees), spread over the second rather than sent in one burst.
        .layer(GateLayer::requests(limits))
        // Each attempt's span, outcome, latency and tokens (timeouts included).
        .layer(AttemptsLayer::new(
            &config.name,
            &config.model,
            &config.base_url,
        ))
        // The per-attempt timeout: a hung attempt is cut and retried.
        .timeout(config.timeout)
        .service(http.clone());
    Ok((BoxCloneSyncService::new(stack), http))
}

/// The retry policy; one clone per judgement (tower clones it per request).
#[derive(Clone)]
struct RetryPolicy {
    retries_left: usize,
    budget: Arc<TpsBudget>,
    backoff: ExponentialBackoff<HasherRng>,
    deposited: bool,
}

/// What to do after a failed attempt.
fn retry_hint(e: &BoxError) -> Option<Option<Duration>> {
    if let Some(a) = e.downcast_ref::<AttemptError>() {
        return a.is_transient().then(|| a.retry_after());
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return Some(None);
    }
    None
}

/// Failures that say the endpoint is unwell (they count towards opening the circuit).
fn is_endpoint_failure(e: &BoxError) -> bool {
    if let Some(a) = e.downcast_ref::<AttemptError>() {
        return match a {
            AttemptError::Status { status, .. } => *status >= 500,
            AttemptError::Transport(_) | AttemptError::Malformed(_) => true,
        };
    }
    e.is::<tower::timeout::error::Elapsed>()
}

impl Policy<ChatRequest, Completion, BoxError> for RetryPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut ChatRequest,
        result: &mut Result<Completion, BoxError>,
    ) -> Option<Self::Future> {
        if !self.deposited {
            // Each judgement earns the budget once, on its first outcome.
            self.deposited = true;
            self.budget.deposit();
        }
        let Err(e) = result else {
            return None;
        };
        let retry_after = retry_hint(e)?;
        if self.retries_left == 0 {
            return None;
        }
        if !self.budget.withdraw() {
            tracing::debug!("judge retry budget spent; giving up");
            return None;
        }
        self.retries_left -= 1;
        let mut sleep = Box::pin(self.backoff.next_backoff());
        if let Some(after) = retry_after {
            let at = Instant::now() + after;
            if at > sleep.deadline() {
                sleep.as_mut().reset(at);
            }
        }
        if sleep.deadline() >= req.deadline {
            // The wait alone would pass the deadline: give the error now.
            return None;
        }
        Some(Box::pin(sleep))
    }

    fn clone_request(&mut self, req: &ChatRequest) -> Option<ChatRequest> {
        Some(req.clone())
    }
}

/// Maps what the stack returned to a scorer error, by what should happen next.
pub(crate) fn score_error(judge: &str, e: &BoxError) -> ScoreError {
    if let Some(a) = e.downcast_ref::<AttemptError>() {
        return match a {
            AttemptError::Status { status: 429, .. } => ScoreError::transient(
                FailureReason::JudgeRateLimited,
                format!("judge {judge:?} kept answering 429 (rate limited) after retries"),
            ),
            AttemptError::Status { status, .. } if a.is_transient() => ScoreError::transient(
                FailureReason::JudgeUnavailable,
                format!("judge {judge:?} answered HTTP {status} after retries"),
            ),
            AttemptError::Status { status, body, .. } => ScoreError::permanent(
                FailureReason::JudgeRejected,
                format!("judge {judge:?} refused the request with HTTP {status}: {body}"),
            ),
            AttemptError::Transport(m) | AttemptError::Malformed(m) => ScoreError::transient(
                FailureReason::JudgeUnavailable,
                format!("judge {judge:?} could not be reached after retries: {m}"),
            ),
        };
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return ScoreError::transient(
            FailureReason::JudgeTimeout,
            format!("judge {judge:?} did not answer in time"),
        );
    }
    if let Some(c) = e.downcast_ref::<CircuitOpen>() {
        return ScoreError::transient(
            FailureReason::JudgeCircuitOpen,
            format!("judge {judge:?}: {c}"),
        );
    }
    if e.is::<tower::load_shed::error::Overloaded>() {
        return ScoreError::transient(
            FailureReason::JudgeOverloaded,
            format!("judge {judge:?}: the local queue is full (queue_capacity); try again later"),
        );
    }
    ScoreError::transient(
        FailureReason::JudgeUnavailable,
        format!("judge {judge:?}: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: usize) -> RetryPolicy {
        RetryPolicy {
            retries_left: retries,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 100, 1.0)),
            backoff: ExponentialBackoffMaker::new(
                Duration::from_millis(100),
                Duration::from_secs(1),
                0.5,
                HasherRng::default(),
            )
            .map(|mut m| m.make_backoff())
            .unwrap_or_else(|e| panic!("{e}")),
            deposited: false,
        }
    }

    fn request(deadline: Duration) -> ChatRequest {
        ChatRequest {
            messages: Vec::new(),
            logprobs: false,
            response_format: None,
            deadline: Instant::now() + deadline,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_honour_retry_after_max_retries_and_the_deadline() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::{Layer, ServiceExt};
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let inner = tower::service_fn(move |_: ChatRequest| {
            a.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<Completion, BoxError>(Box::new(AttemptError::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(5)),
                    body: String::new(),
                }))
            }
        });
        let svc = RetryLayer::new(policy(2)).layer(inner);
        let start = Instant::now();
        let e = svc
            .clone()
            .oneshot(request(Duration::from_secs(60)))
            .await
            .err();
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "1 + max_retries");
        assert!(
            start.elapsed() >= Duration::from_secs(10),
            "two Retry-After waits"
        );
        assert_eq!(
            e.map(|e| score_error("j", &e).reason),
            Some(FailureReason::JudgeRateLimited)
        );
        // A Retry-After past the deadline: no retry, the error comes back at once.
        attempts.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let _ = svc.oneshot(request(Duration::from_secs(3))).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(start.elapsed() < Duration::from_millis(1));
    }
}
