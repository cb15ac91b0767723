//! Admission to a judge's stack: at most `queue_capacity` judgements inside it at once, the rest
//! refused at once with tower's `Overloaded` (retryable `judge_overloaded`).
//!
//! Shedding is decided by counting, never by readiness: a buffer that is not ready for a moment
//! (tokio's cooperative budget spent, its worker not yet scheduled) makes callers wait a little,
//! not fail. `load_shed` above `buffer` turned such moments into overload.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service, ServiceExt};

use crate::client::BoxError;

/// Admits at most `capacity` judgements at once; see the module documentation.
#[derive(Clone)]
pub(crate) struct AdmissionLayer {
    /// One permit per judgement inside the stack (queued or in flight); shared by every clone.
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    /// A layer admitting `capacity` judgements at once (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity.max(1))),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`]. The inner service must be cheap to clone (a `Buffer`):
/// each admitted judgement drives its own clone to readiness, holding its permit until it ends.
#[derive(Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    /// Shared with every clone of the stack; a permit lives as long as its judgement.
    permits: Arc<Semaphore>,
}

impl<S, Req> Service<Req> for Admission<S>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Always ready: whether there is room is decided in `call`, by the permits alone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit: OwnedSemaphorePermit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => return Box::pin(async { Err(Overloaded::new().into()) }),
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let result = inner.oneshot(req).await;
            drop(permit);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A service that is never ready until the test lets it be, like a buffer whose worker has
    /// not run yet: admission must wait on it, not shed.
    #[tokio::test(start_paused = true)]
    async fn admits_exactly_capacity_and_waits_on_an_unready_inner_service() {
        let inner = tower::service_fn(|n: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<u32, BoxError>(n)
        });
        let svc = AdmissionLayer::new(3).layer(tower::buffer::Buffer::new(inner, 1));
        let calls: Vec<_> = (0..5).map(|n| svc.clone().oneshot(n)).collect();
        let out = futures::future::join_all(calls).await;
        let shed = out
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.is::<Overloaded>()))
            .count();
        assert_eq!(shed, 2, "{} admitted", out.len() - shed);
        assert!(out[..3].iter().all(Result::is_ok));
        // Once they end, their permits are free again.
        assert!(svc.clone().oneshot(9).await.is_ok());
    }
}
