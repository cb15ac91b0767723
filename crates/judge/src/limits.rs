//! A judge endpoint's limits as this process's share of the fleet's.
//!
//! `max_concurrency`, `requests_per_second` and `tokens_per_minute` are what the endpoint sees
//! from the whole fleet. Every worker that uses the judge applies its [`FleetShare`] of them:
//! with `n` such workers (counted from the heartbeats), the rates are divided by `n` and the
//! concurrency is split exactly by rank (`⌊c/n⌋`, one more for the first `c mod n` workers, at
//! least one each). A process alone (embedded mode, or before it has read the heartbeats) has
//! the whole of them. Shares change at run time: a smaller concurrency takes effect as judgements
//! end, never by cutting one short.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rewardfleet_core::config::JudgeConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service, ServiceExt};

use crate::client::BoxError;

/// This process's place among the workers that use one judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetShare {
    /// Workers using the judge, this one included (at least 1).
    pub workers: usize,
    /// This worker's rank among them, from 0 (by heartbeat key, the same order for all).
    pub rank: usize,
}

impl FleetShare {
    /// The whole of the limits: a process alone.
    pub const ALONE: Self = Self {
        workers: 1,
        rank: 0,
    };

    fn workers(self) -> usize {
        self.workers.max(1)
    }

    /// This worker's part of a fleet-wide concurrency `total`: the parts of all ranks add up to
    /// `total` exactly, except that each worker keeps at least one slot (so a fleet with more
    /// workers than `total` may have one judgement in flight per worker).
    pub fn concurrency(self, total: usize) -> usize {
        let n = self.workers();
        let extra = usize::from(self.rank.min(n - 1) < total % n);
        (total / n + extra).max(1)
    }

    /// This worker's part of a fleet-wide rate.
    pub fn rate(self, total: f64) -> f64 {
        total / self.workers() as f64
    }
}

/// The limits of one judge in this process, resized by [`Limits::apply`].
#[derive(Debug)]
pub(crate) struct Limits {
    max_concurrency: usize,
    requests_per_second: f64,
    tokens_per_minute: u64,
    share: Mutex<FleetShare>,
    pub(crate) slots: Arc<Slots>,
    /// Judgements inside the judge's stack (queued or in flight): `queue_capacity` permits.
    admission: Arc<Semaphore>,
    queue_capacity: usize,
    pub(crate) requests: Arc<Bucket>,
    /// `None`: no tokens-per-minute limit.
    pub(crate) tokens: Option<Arc<Bucket>>,
}

impl Limits {
    /// The whole of `config`'s limits, until a share is applied.
    pub(crate) fn new(config: &JudgeConfig) -> Self {
        let share = FleetShare::ALONE;
        Self {
            max_concurrency: config.max_concurrency,
            requests_per_second: config.requests_per_second,
            tokens_per_minute: config.tokens_per_minute,
            share: Mutex::new(share),
            slots: Arc::new(Slots::new(share.concurrency(config.max_concurrency))),
            admission: Arc::new(Semaphore::new(config.queue_capacity.max(1))),
            queue_capacity: config.queue_capacity.max(1),
            requests: Arc::new(Bucket::new(requests_rate(
                share.rate(config.requests_per_second),
            ))),
            tokens: (config.tokens_per_minute > 0).then(|| {
                Arc::new(Bucket::new(tokens_rate(
                    share.rate(config.tokens_per_minute as f64),
                )))
            }),
        }
    }

    /// Takes `share` of the limits; true if it differs from the share held so far.
    pub(crate) fn apply(&self, share: FleetShare) -> bool {
        let mut held = lock(&self.share);
        if *held == share {
            return false;
        }
        *held = share;
        self.slots.resize(share.concurrency(self.max_concurrency));
        self.requests
            .set_rate(requests_rate(share.rate(self.requests_per_second)));
        if let Some(tokens) = &self.tokens {
            tokens.set_rate(tokens_rate(share.rate(self.tokens_per_minute as f64)));
        }
        true
    }

    /// Whether another judgement would soon be sent rather than wait: fewer are inside the stack
    /// than twice this process's share of `max_concurrency` (those in flight and as many ready to
    /// follow them), and below `queue_capacity`.
    pub(crate) fn has_room(&self) -> bool {
        let inside = self.queue_capacity - self.admission.available_permits();
        let share = lock(&self.share).concurrency(self.max_concurrency);
        inside < (2 * share).min(self.queue_capacity)
    }

    /// What this process may use now: concurrency, requests per second, tokens per minute.
    pub(crate) fn current(&self) -> (usize, f64, f64) {
        let share = *lock(&self.share);
        (
            share.concurrency(self.max_concurrency),
            share.rate(self.requests_per_second),
            share.rate(self.tokens_per_minute as f64),
        )
    }
}

/// Requests per second as a bucket: a tenth of a second's worth at once (at least one request),
/// so requests are spread over the second rather than sent in one burst.
fn requests_rate(per_second: f64) -> Rate {
    let per_second = if per_second.is_finite() && per_second > 0.0 {
        per_second
    } else {
        1.0
    };
    Rate {
        per_second,
        burst: (per_second / 10.0).max(1.0),
    }
}

/// Tokens per minute as a bucket: a minute's worth at once.
fn tokens_rate(per_minute: f64) -> Rate {
    Rate {
        per_second: per_minute / 60.0,
        burst: per_minute.max(1.0),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How fast a [`Bucket`] refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

#[derive(Debug)]
struct Level {
    rate: Rate,
    /// Available now; negative after an under-estimate was settled (a debt paid by waiting).
    available: f64,
    last: Instant,
}

/// A token bucket whose rate can change while callers wait on it.
#[derive(Debug)]
pub(crate) struct Bucket {
    level: Mutex<Level>,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            level: Mutex::new(Level {
                rate,
                available: rate.burst,
                last: Instant::now(),
            }),
        }
    }

    fn with_level<T>(&self, f: impl FnOnce(&mut Level) -> T) -> T {
        let mut l = lock(&self.level);
        let now = Instant::now();
        let refill = (now - l.last).as_secs_f64() * l.rate.per_second;
        l.available = (l.available + refill).min(l.rate.burst);
        l.last = now;
        f(&mut l)
    }

    /// Changes the rate; what is available is kept, within the new burst.
    pub(crate) fn set_rate(&self, rate: Rate) {
        self.with_level(|l| {
            l.rate = rate;
            l.available = l.available.min(rate.burst);
        });
    }

    /// Waits until `amount` (capped at one burst) is available, then takes it.
    pub(crate) async fn acquire(&self, amount: f64) {
        loop {
            let wait = self.with_level(|l| {
                let want = amount.min(l.rate.burst);
                if l.available >= want {
                    l.available -= want;
                    None
                } else {
                    Some(Duration::from_secs_f64(
                        (want - l.available) / l.rate.per_second.max(1e-9),
                    ))
                }
            });
            match wait {
                None => return,
                // Woken at least every second: a rate raised meanwhile is seen soon.
                Some(d) => {
                    let d = d.clamp(Duration::from_millis(1), Duration::from_secs(1));
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Settles an `estimate` taken against what was `used` (less gives some back).
    pub(crate) fn settle(&self, estimate: f64, used: f64) {
        self.with_level(|l| l.available = (l.available + estimate - used).min(l.rate.burst));
    }
}

/// Slots for judgements in flight, whose number can shrink while they are held.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    /// The number of slots wanted, and how many held permits must be forgotten on release
    /// before the semaphore holds that many.
    size: Mutex<(usize, usize)>,
}

impl Slots {
    fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size)),
            size: Mutex::new((size, 0)),
        }
    }

    fn resize(&self, new: usize) {
        let mut size = lock(&self.size);
        let (old, owed) = *size;
        if new >= old {
            let mut grow = new - old;
            let repaid = grow.min(owed);
            grow -= repaid;
            self.semaphore.add_permits(grow);
            *size = (new, owed - repaid);
        } else {
            let shrink = old - new;
            let forgotten = self.semaphore.forget_permits(shrink);
            *size = (new, owed + shrink - forgotten);
        }
    }

    async fn acquire(self: Arc<Self>) -> Slot {
        // The semaphore is never closed.
        let permit = self.semaphore.clone().acquire_owned().await.ok();
        Slot {
            permit,
            slots: self,
        }
    }
}

/// One slot held; released (or forgotten, if the slots shrank meanwhile) when dropped.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut size = lock(&self.slots.size);
        if size.1 > 0 {
            size.1 -= 1;
            permit.forget();
        }
    }
}

/// What a request needs before it goes on: a permit of the judge's admission (taken at once or
/// refused), a slot of the share's concurrency (held until its judgement ends; the rest wait in
/// order), or its turn in the share's requests-per-second bucket.
#[derive(Clone)]
enum Gate {
    Admission(Arc<Semaphore>),
    Slots(Arc<Slots>),
    Requests(Arc<Bucket>),
}

/// See [`Gate`]; cheap to clone.
#[derive(Clone)]
pub(crate) struct GateLayer(Gate);

impl GateLayer {
    /// Admission to a judge's stack: at most `queue_capacity` judgements inside it at once (queued
    /// or in flight), one more refused at once with tower's `Overloaded` (retryable
    /// `judge_overloaded`). Shedding is decided by counting, never by readiness: a buffer below
    /// that is briefly not ready (tokio's cooperative budget spent, its worker not yet
    /// scheduled) makes callers wait a little, not fail.
    pub(crate) fn admission(limits: &Limits) -> Self {
        Self(Gate::Admission(Arc::clone(&limits.admission)))
    }

    /// At most the share's concurrency of judgements inside (above the retries: a judgement
    /// keeps its slot across its attempts).
    pub(crate) fn concurrency(limits: &Limits) -> Self {
        Self(Gate::Slots(limits.slots.clone()))
    }

    /// Each request (below the retries: every attempt, what the endpoint sees) waits for the
    /// share's requests-per-second bucket.
    pub(crate) fn requests(limits: &Limits) -> Self {
        Self(Gate::Requests(limits.requests.clone()))
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// See [`GateLayer`].
#[derive(Clone)]
pub(crate) struct Gated<S> {
    inner: S,
    gate: Gate,
}

impl<S, Req> Service<Req> for Gated<S>
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
        // Always ready: callers wait in their own future, so the buffer above keeps dispatching
        // and a shrunk share never blocks requests already admitted.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Admission is decided now, by the permits alone; the other gates are waited for.
        let admitted = match &self.gate {
            Gate::Admission(permits) => match Arc::clone(permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Box::pin(async { Err(Overloaded::new().into()) }),
            },
            Gate::Slots(_) | Gate::Requests(_) => None,
        };
        let gate = self.gate.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let slot = match gate {
                Gate::Slots(slots) => Some(slots.acquire().await),
                Gate::Requests(bucket) => {
                    bucket.acquire(1.0).await;
                    None
                }
                Gate::Admission(_) => None,
            };
            let result = inner.oneshot(req).await;
            drop((slot, admitted));
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for work while fewer judgements are inside than twice the share's concurrency.
    #[tokio::test]
    async fn room_follows_the_judgements_inside_and_the_share() {
        let limits = Limits::new(&JudgeConfig {
            max_concurrency: 2,
            queue_capacity: 100,
            ..JudgeConfig::default()
        });
        // Each judgement ends when the test hands out a permit.
        let ends = Arc::new(Semaphore::new(0));
        let svc = GateLayer::admission(&limits).layer(tower::service_fn({
            let ends = Arc::clone(&ends);
            move |()| {
                let ends = Arc::clone(&ends);
                async move {
                    ends.acquire().await.expect("open").forget();
                    Ok::<(), BoxError>(())
                }
            }
        }));
        let mut inside = Vec::new();
        for n in 0..4 {
            assert!(limits.has_room(), "room with {n} inside");
            inside.push(tokio::spawn(svc.clone().oneshot(())));
            tokio::task::yield_now().await;
        }
        assert!(!limits.has_room(), "4 inside: twice the concurrency of 2");
        // This worker's share drops to 1 slot of 2: room below 2 inside.
        limits.apply(FleetShare {
            workers: 2,
            rank: 0,
        });
        ends.add_permits(2);
        for call in inside.drain(..2) {
            call.await.expect("join").expect("judged");
        }
        assert!(!limits.has_room(), "2 inside, twice the share of 1");
        ends.add_permits(1);
        inside.remove(0).await.expect("join").expect("judged");
        assert!(limits.has_room(), "1 inside");
        ends.add_permits(1);
        inside.remove(0).await.expect("join").expect("judged");
    }

    #[test]
    fn concurrency_parts_add_up_to_the_fleet_limit() {
        for total in [1, 2, 7, 8, 64] {
            for workers in 1..=10 {
                let parts: Vec<usize> = (0..workers)
                    .map(|rank| FleetShare { workers, rank }.concurrency(total))
                    .collect();
                assert!(parts.iter().all(|&p| p >= 1), "{parts:?}");
                if workers <= total {
                    assert_eq!(parts.iter().sum::<usize>(), total, "{total} {workers}");
                } else {
                    assert_eq!(parts, vec![1; workers]);
                }
            }
        }
        assert_eq!(FleetShare::ALONE.concurrency(8), 8);
        assert_eq!(
            FleetShare {
                workers: 4,
                rank: 0
            }
            .rate(50.0),
            12.5
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slots_shrink_as_judgements_end_and_grow_at_once() {
        let slots = Arc::new(Slots::new(4));
        let held: Vec<Slot> = futures::future::join_all((0..4).map(|_| slots.clone().acquire()))
            .await
            .into_iter()
            .collect();
        slots.resize(2);
        drop(held);
        assert_eq!(slots.semaphore.available_permits(), 2, "shrunk to 2");
        let a = slots.clone().acquire().await;
        let _b = slots.clone().acquire().await;
        let third = tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire()).await;
        assert!(third.is_err(), "no third slot");
        slots.resize(3);
        let _c = tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire())
            .await
            .expect("grown to 3");
        drop(a);
        slots.resize(1);
        assert_eq!(slots.semaphore.available_permits(), 0);
        assert_eq!(*lock(&slots.size), (1, 1), "one held permit owed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_follows_its_rate_as_it_changes() {
        let bucket = Bucket::new(requests_rate(10.0)); // burst 1
        let start = Instant::now();
        for _ in 0..11 {
            bucket.acquire(1.0).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(990) && waited < Duration::from_millis(1100),
            "{waited:?}"
        );
        bucket.set_rate(requests_rate(2.5));
        let start = Instant::now();
        for _ in 0..5 {
            bucket.acquire(1.0).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_millis(2100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_wait_for_the_bucket_and_overestimates_come_back() {
        let bucket = Bucket::new(tokens_rate(600.0)); // 10 tokens a second
        let start = Instant::now();
        bucket.acquire(600.0).await;
        assert!(start.elapsed() < Duration::from_millis(5));
        bucket.acquire(100.0).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        bucket.settle(100.0, 0.0);
        let t = Instant::now();
        bucket.acquire(100.0).await;
        assert!(t.elapsed() < Duration::from_millis(5));
    }

    /// A service that is never ready until the test lets it be, like a buffer whose worker has
    /// not run yet: admission must wait on it, not shed.
    #[tokio::test(start_paused = true)]
    async fn admits_exactly_capacity_and_waits_on_an_unready_inner_service() {
        let inner = tower::service_fn(|n: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<u32, BoxError>(n)
        });
        let limits = Limits::new(&JudgeConfig {
            queue_capacity: 3,
            ..JudgeConfig::default()
        });
        let svc = GateLayer::admission(&limits).layer(tower::buffer::Buffer::new(inner, 1));
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
