//! A circuit breaker layer: open after consecutive failed judgements, one probe when half-open.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::client::BoxError;

/// The error of a call refused because the circuit is open.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the circuit to the judge is open after {failures} failures in a row; next probe in {retry_in:?}"
)]
pub(crate) struct CircuitOpen {
    pub(crate) failures: u32,
    pub(crate) retry_in: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Calls pass; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls are refused until `until`.
    Open { until: Instant, failures: u32 },
    /// One probe is in flight; other calls are refused.
    HalfOpen { failures: u32 },
}

/// Opens the circuit after `threshold` failures in a row (0 disables it).
#[derive(Clone)]
pub(crate) struct CircuitBreakerLayer {
    /// The judge, for the `rewardfleet_judge_circuit_state` gauge (none: not exported).
    judge: Option<Arc<str>>,
    threshold: u32,
    open_for: Duration,
    is_failure: fn(&BoxError) -> bool,
}

impl CircuitBreakerLayer {
    pub(crate) fn new(
        threshold: u32,
        open_for: Duration,
        is_failure: fn(&BoxError) -> bool,
    ) -> Self {
        Self {
            judge: None,
            threshold,
            open_for,
            is_failure,
        }
    }

    /// Exports the circuit's state as judge `judge`'s.
    pub(crate) fn named(mut self, judge: &str) -> Self {
        self.judge = Some(judge.into());
        self
    }

    /// Records `state` in the gauge.
    fn export(&self, state: &State) {
        if let (Some(judge), Some(m)) = (&self.judge, rewardfleet_telemetry::metrics()) {
            let value = match state {
                State::Closed { .. } => 0,
                State::HalfOpen { .. } => 1,
                State::Open { .. } => 2,
            };
            m.judge_circuit_state.record(
                value,
                &[rewardfleet_telemetry::metrics::label(
                    "judge",
                    judge.to_string(),
                )],
            );
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
            layer: self.clone(),
        }
    }
}

/// See [`CircuitBreakerLayer`]. Clones share one state.
#[derive(Clone)]
pub(crate) struct CircuitBreaker<S> {
    inner: S,
    state: Arc<Mutex<State>>,
    layer: CircuitBreakerLayer,
}

enum Admit {
    Pass,
    Probe,
    Refuse(CircuitOpen),
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl<S, Req> Service<Req> for CircuitBreaker<S>
where
    S: Service<Req, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.layer.threshold == 0 {
            return Box::pin(self.inner.call(req));
        }
        let now = Instant::now();
        let admit = {
            let mut state = lock(&self.state);
            match *state {
                State::Closed { .. } => Admit::Pass,
                State::Open { until, failures } if now >= until => {
                    *state = State::HalfOpen { failures };
                    self.layer.export(&state);
                    Admit::Probe
                }
                State::Open { until, failures } => Admit::Refuse(CircuitOpen {
                    failures,
                    retry_in: until - now,
                }),
                State::HalfOpen { failures } => Admit::Refuse(CircuitOpen {
                    failures,
                    retry_in: Duration::ZERO,
                }),
            }
        };
        let probe = match admit {
            Admit::Refuse(e) => return Box::pin(std::future::ready(Err(e.into()))),
            Admit::Pass => false,
            Admit::Probe => true,
        };
        let fut = self.inner.call(req);
        let state = self.state.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let result = fut.await;
            let failed = matches!(&result, Err(e) if (layer.is_failure)(e));
            let mut state = lock(&state);
            let failures_before = match *state {
                State::Closed { failures }
                | State::Open { failures, .. }
                | State::HalfOpen { failures } => failures,
            };
            *state = if !failed {
                State::Closed { failures: 0 }
            } else if probe || failures_before + 1 >= layer.threshold {
                if !probe {
                    tracing::warn!(failures = failures_before + 1, "judge circuit opened");
                }
                State::Open {
                    until: Instant::now() + layer.open_for,
                    failures: failures_before + 1,
                }
            } else {
                match *state {
                    // A call admitted before the circuit opened does not close it again.
                    open @ State::Open { .. } => open,
                    _ => State::Closed {
                        failures: failures_before + 1,
                    },
                }
            };
            layer.export(&state);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn always_failure(_: &BoxError) -> bool {
        true
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, f) = (calls.clone(), fail.clone());
        let inner = tower::service_fn(move |_: ()| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let fail = f.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if fail {
                    Err::<(), BoxError>("down".into())
                } else {
                    Ok(())
                }
            }
        });
        let svc = CircuitBreakerLayer::new(3, Duration::from_secs(10), always_failure).layer(inner);
        for _ in 0..3 {
            assert!(svc.clone().oneshot(()).await.is_err());
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Open: refused without a call.
        let e = svc
            .clone()
            .oneshot(())
            .await
            .err()
            .map(|e| e.is::<CircuitOpen>());
        assert_eq!(e, Some(true));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Half-open after open_for: one probe; it fails, so open again.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(svc.clone().oneshot(()).await.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
        let e = svc
            .clone()
            .oneshot(())
            .await
            .err()
            .map(|e| e.is::<CircuitOpen>());
        assert_eq!(e, Some(true));
        // The endpoint recovers: the next probe closes the circuit.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(svc.clone().oneshot(()).await.is_ok());
        assert!(svc.clone().oneshot(()).await.is_ok());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 6);
    }
}
