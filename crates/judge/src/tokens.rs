//! A tokens-per-minute limit: a token bucket charged with each request's estimate and corrected
//! with the usage the endpoint reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::client::{BoxError, ChatRequest, Completion};
use crate::limits::{Bucket, Limits};

/// Holds each request until the endpoint's tokens-per-minute allow it (`None`: no limit).
#[derive(Clone)]
pub(crate) struct TokenRateLimitLayer {
    limiter: Option<Arc<Bucket>>,
    max_completion_tokens: u64,
}

impl TokenRateLimitLayer {
    /// The tokens-per-minute bucket of `limits` (none: no limit).
    pub(crate) fn new(limits: &Limits, max_completion_tokens: u32) -> Self {
        Self {
            limiter: limits.tokens.clone(),
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
            limiter.acquire(estimate as f64).await;
            let result = inner.call(req).await;
            let used = result.as_ref().map_or(0, |c| c.usage.total());
            limiter.settle(estimate as f64, used as f64);
            result
        })
    }
}
