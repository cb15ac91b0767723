//! A tokens-per-minute limit: a token bucket charged with each request's estimate and corrected
//! with the usage the endpoint reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::client::{BoxError, ChatRequest, Completion};

#[derive(Debug)]
struct Bucket {
    /// Tokens available now; negative after an under-estimate (a debt paid by waiting).
    available: f64,
    last: Instant,
}

/// Shared state of one endpoint's tokens-per-minute limit.
#[derive(Debug)]
pub(crate) struct TokenLimiter {
    per_minute: f64,
    bucket: Mutex<Bucket>,
}

impl TokenLimiter {
    pub(crate) fn new(per_minute: u64) -> Self {
        Self {
            per_minute: per_minute as f64,
            bucket: Mutex::new(Bucket {
                available: per_minute as f64,
                last: Instant::now(),
            }),
        }
    }

    fn with_bucket<T>(&self, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut b = match self.bucket.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let refill = (now - b.last).as_secs_f64() * self.per_minute / 60.0;
        b.available = (b.available + refill).min(self.per_minute);
        b.last = now;
        f(&mut b)
    }

    /// Waits until `tokens` (capped at one minute's worth) are available, then takes them.
    pub(crate) async fn acquire(&self, tokens: u64) {
        let want = (tokens as f64).min(self.per_minute);
        loop {
            let wait = self.with_bucket(|b| {
                if b.available >= want {
                    b.available -= want;
                    None
                } else {
                    Some(Duration::from_secs_f64(
                        (want - b.available) * 60.0 / self.per_minute,
                    ))
                }
            });
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            }
        }
    }

    /// Settles an estimate against what was used (`used` < `estimate` gives tokens back).
    pub(crate) fn settle(&self, estimate: u64, used: u64) {
        self.with_bucket(|b| {
            b.available = (b.available + estimate as f64 - used as f64).min(self.per_minute);
        });
    }
}

/// Holds each request until the endpoint's tokens-per-minute allow it (`None`: no limit).
#[derive(Clone)]
pub(crate) struct TokenRateLimitLayer {
    limiter: Option<Arc<TokenLimiter>>,
    max_completion_tokens: u64,
}

impl TokenRateLimitLayer {
    pub(crate) fn new(per_minute: u64, max_completion_tokens: u32) -> Self {
        Self {
            limiter: (per_minute > 0).then(|| Arc::new(TokenLimiter::new(per_minute))),
            max_completion_tokens: u64::from(max_completion_tokens),
        }
    }
}

impl<S> Layer<S> for TokenRateLimitLayer {
    type Service = TokenRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`TokenRateLimitLayer`].
#[derive(Clone)]
pub(crate) struct TokenRateLimit<S> {
    inner: S,
    layer: TokenRateLimitLayer,
}

impl<S> Service<ChatRequest> for TokenRateLimit<S>
where
    S: Service<ChatRequest, Response = Completion, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Completion;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Completion, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let Some(limiter) = self.layer.limiter.clone() else {
            return Box::pin(self.inner.call(req));
        };
        // Take the service that was made ready; leave a fresh clone for the next caller.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let estimate = req.estimated_prompt_tokens() + self.layer.max_completion_tokens;
        Box::pin(async move {
            limiter.acquire(estimate).await;
            let result = inner.call(req).await;
            let used = result.as_ref().map_or(0, |c| c.usage.total());
            limiter.settle(estimate, used);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_bucket_to_refill() {
        let limiter = TokenLimiter::new(600); // 10 tokens a second
        let start = Instant::now();
        limiter.acquire(600).await;
        assert!(start.elapsed() < Duration::from_millis(5));
        limiter.acquire(100).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        // Over-estimates are given back.
        limiter.settle(100, 0);
        let t = Instant::now();
        limiter.acquire(100).await;
        assert!(t.elapsed() < Duration::from_millis(5));
    }
}
