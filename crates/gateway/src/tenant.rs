//! Tenants: bearer-token authentication (compared in constant time), the profiles each may use,
//! its sessions' namespace and its quotas (open sessions, candidates in flight, candidates per
//! second, judge tokens per hour). No tenant configured: every caller is served, as one anonymous caller.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rewardfleet_core::config::TenantConfig;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::GatewayError;

/// One authenticated caller, with its quotas' state on this gateway.
pub struct Tenant {
    name: String,
    /// SHA-256 of its token: every comparison has the same length and takes the same time.
    token_digest: Option<[u8; 32]>,
    /// The client-certificate name that identifies it, if any (`tls_subject`).
    tls_subject: Option<String>,
    /// Profiles it may use; empty: all.
    profiles: Vec<String>,
    /// Its open sessions (`max_sessions`), when limited.
    sessions: Option<(Arc<Semaphore>, u32)>,
    /// Its candidates in flight, across its sessions.
    in_flight: AtomicUsize,
    max_in_flight: Option<usize>,
    /// Candidates per second: a token bucket holding one second's worth.
    rate: Option<Mutex<Bucket>>,
    /// Judge tokens spent in the last hour, against `judge_tokens_per_hour`.
    judge_tokens: Option<JudgeTokens>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The tenants of a gateway.
#[derive(Debug, Default)]
pub(crate) struct Tenants {
    list: Vec<Arc<Tenant>>,
}

/// The caller of a session or call: a tenant, or anyone when no tenant is configured.
pub type Caller = Option<Arc<Tenant>>;

impl Tenants {
    /// The tenants of `configs`, with their tokens by tenant name (a tenant whose token is
    /// missing can never authenticate).
    pub(crate) fn new(configs: &[TenantConfig], tokens: &HashMap<String, String>) -> Self {
        let list = configs
            .iter()
            .map(|c| {
                Arc::new(Tenant {
                    name: c.name.clone(),
                    token_digest: tokens.get(&c.name).map(|t| digest(t)),
                    tls_subject: c.tls_subject.clone(),
                    profiles: c.profiles.clone(),
                    sessions: c
                        .max_sessions
                        .map(|n| (Arc::new(Semaphore::new(n as usize)), n)),
                    in_flight: AtomicUsize::new(0),
                    max_in_flight: c.max_in_flight.map(|n| n as usize),
                    rate: c.candidates_per_second.map(|rate| {
                        Mutex::new(Bucket {
                            rate,
                            tokens: rate,
                            at: Instant::now(),
                        })
                    }),
                    judge_tokens: c.judge_tokens_per_hour.map(JudgeTokens::new),
                })
            })
            .collect();
        Self { list }
    }

    /// The tenants with a `judge_tokens_per_hour` quota.
    pub(crate) fn with_judge_token_quota(&self) -> Vec<Arc<Tenant>> {
        self.list
            .iter()
            .filter(|t| t.judge_tokens.is_some())
            .cloned()
            .collect()
    }

    /// Whether callers must present a token.
    pub(crate) fn required(&self) -> bool {
        !self.list.is_empty()
    }

    /// The caller: the tenant whose token is in `authorization` (an `authorization: Bearer
    /// <token>` value) or, without one, the tenant whose `tls_subject` is among `client_names`
    /// (the names of the verified client certificate, if any).
    ///
    /// # Errors
    /// `Unauthenticated` when tenants are configured and neither names one.
    pub(crate) fn authenticate(
        &self,
        authorization: Option<&str>,
        client_names: &[String],
    ) -> Result<Caller, GatewayError> {
        if !self.required() {
            return Ok(None);
        }
        let token = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return self
                .list
                .iter()
                .find(|t| {
                    t.tls_subject
                        .as_ref()
                        .is_some_and(|s| client_names.contains(s))
                })
                .map(|t| Some(Arc::clone(t)))
                .ok_or_else(|| {
                    GatewayError::Unauthenticated(
                        "send `authorization: Bearer <token>` or a client certificate of a tenant \
                         (this gateway has tenants)"
                            .into(),
                    )
                });
        };
        let presented = digest(token);
        // Every tenant is compared, whatever matches: the time taken says nothing.
        let mut found = None;
        for tenant in &self.list {
            if let Some(expected) = &tenant.token_digest
                && constant_time_eq(expected, &presented)
            {
                found = Some(Arc::clone(tenant));
            }
        }
        found
            .map(Some)
            .ok_or_else(|| GatewayError::Unauthenticated("the token matches no tenant".into()))
    }
}

impl Tenant {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id under which the session `id` of this tenant is kept: tenants never share one.
    /// The length prefix makes the name's end unambiguous.
    pub(crate) fn session_key(&self, id: &str) -> String {
        format!("t{}-{}-{id}", self.name.len(), self.name)
    }

    /// # Errors
    /// `PermissionDenied` when the tenant may not use `profile`.
    pub(crate) fn check_profile(&self, profile: &str) -> Result<(), GatewayError> {
        if self.profiles.is_empty() || self.profiles.iter().any(|p| p == profile) {
            Ok(())
        } else {
            Err(GatewayError::PermissionDenied(format!(
                "tenant {:?} may not use profile {profile:?}; its profiles: {}",
                self.name,
                self.profiles.join(", ")
            )))
        }
    }

    /// A session slot of this tenant, when its sessions are limited.
    ///
    /// # Errors
    /// `ResourceExhausted` naming `tenant.<name>.max_sessions` when none is free.
    pub(crate) fn session_slot(&self) -> Result<Option<OwnedSemaphorePermit>, GatewayError> {
        let Some((slots, max)) = &self.sessions else {
            return Ok(None);
        };
        Arc::clone(slots)
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| GatewayError::ResourceExhausted {
                limit: format!("tenant.{}.max_sessions", self.name),
                message: format!("tenant {:?} has {max} sessions open", self.name),
                retry_after_secs: 1,
            })
    }

    /// The window of a session of this tenant asking for `window`.
    pub(crate) fn cap_window(&self, window: u32) -> u32 {
        match self.max_in_flight {
            Some(max) => window.min(max as u32),
            None => window,
        }
    }

    /// Admits `n` more candidates: within its rate, its in-flight quota and its judge tokens.
    ///
    /// # Errors
    /// `ResourceExhausted` naming the quota, with the seconds to wait.
    pub(crate) fn admit(&self, n: usize) -> Result<(), GatewayError> {
        if let Some(tokens) = &self.judge_tokens {
            let now = unix_secs();
            let spent = tokens.spent(now);
            if spent >= tokens.per_hour {
                return Err(GatewayError::ResourceExhausted {
                    limit: format!("tenant.{}.judge_tokens_per_hour", self.name),
                    message: format!(
                        "tenant {:?} spent {spent} judge tokens in the last hour, of its {}",
                        self.name, tokens.per_hour
                    ),
                    retry_after_secs: tokens.retry_after(now),
                });
            }
        }
        if let Some(max) = self.max_in_flight
            && self.in_flight.load(Ordering::Relaxed) + n > max
        {
            return Err(GatewayError::ResourceExhausted {
                limit: format!("tenant.{}.max_in_flight", self.name),
                message: format!(
                    "tenant {:?} has {} candidates in flight; {n} more would pass {max}",
                    self.name,
                    self.in_flight.load(Ordering::Relaxed)
                ),
                retry_after_secs: 1,
            });
        }
        if let Some(bucket) = &self.rate {
            let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(wait) = bucket.take(n as f64, Instant::now()) {
                return Err(GatewayError::ResourceExhausted {
                    limit: format!("tenant.{}.candidates_per_second", self.name),
                    message: format!(
                        "tenant {:?} may submit {} candidates per second",
                        self.name, bucket.rate
                    ),
                    retry_after_secs: wait.ceil().max(1.0) as u64,
                });
            }
        }
        Ok(())
    }

    /// Its candidates' scoring spent `tokens` judge tokens (reported by a job's result).
    pub(crate) fn spent_judge_tokens(&self, tokens: u64) {
        if let Some(t) = &self.judge_tokens
            && tokens > 0
        {
            t.add(unix_secs(), tokens);
        }
    }

    /// Its judge tokens spent through this gateway in the last hour, by minute (minutes since
    /// the Unix epoch, oldest first); `None` without a `judge_tokens_per_hour` quota.
    pub fn judge_tokens_by_minute(&self) -> Option<Vec<(u64, u64)>> {
        let t = self.judge_tokens.as_ref()?;
        let mut own = lock(&t.own);
        prune(&mut own, unix_secs() / 60);
        Some(own.iter().copied().collect())
    }

    /// What the fleet's other gateways report it spent in the last hour.
    pub fn set_judge_tokens_elsewhere(&self, tokens: u64) {
        if let Some(t) = &self.judge_tokens {
            t.elsewhere.store(tokens, Ordering::Relaxed);
        }
    }

    /// `n` more of its candidates are owed a reward.
    pub(crate) fn owe(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` of its candidates were rewarded (or their session ended).
    pub(crate) fn resolved(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// A tenant's judge tokens over the last hour, counted by minute: this gateway's own, and what
/// the other gateways last reported (they share their counts through NATS).
#[derive(Debug)]
struct JudgeTokens {
    per_hour: u64,
    /// (minute since the Unix epoch, tokens) of the last 60 minutes, oldest first.
    own: Mutex<VecDeque<(u64, u64)>>,
    elsewhere: AtomicU64,
}

/// Minutes in the quota's window.
const WINDOW_MINUTES: u64 = 60;

impl JudgeTokens {
    fn new(per_hour: u64) -> Self {
        Self {
            per_hour,
            own: Mutex::new(VecDeque::new()),
            elsewhere: AtomicU64::new(0),
        }
    }

    fn add(&self, now_secs: u64, tokens: u64) {
        let minute = now_secs / 60;
        let mut own = lock(&self.own);
        prune(&mut own, minute);
        match own.back_mut() {
            Some((m, n)) if *m == minute => *n += tokens,
            _ => own.push_back((minute, tokens)),
        }
    }

    /// Spent fleet-wide in the window ending at `now_secs`.
    fn spent(&self, now_secs: u64) -> u64 {
        let mut own = lock(&self.own);
        prune(&mut own, now_secs / 60);
        own.iter().map(|(_, n)| n).sum::<u64>() + self.elsewhere.load(Ordering::Relaxed)
    }

    /// Seconds until this gateway's oldest counted minute leaves the window (a minute when it
    /// counted none: the other gateways' minutes age the same way).
    fn retry_after(&self, now_secs: u64) -> u64 {
        let own = lock(&self.own);
        own.front().map_or(60, |(m, _)| {
            ((m + WINDOW_MINUTES) * 60).saturating_sub(now_secs).max(1)
        })
    }
}

/// Drops the minutes that left the window ending in `minute`.
fn prune(own: &mut VecDeque<(u64, u64)>, minute: u64) {
    while own
        .front()
        .is_some_and(|(m, _)| m + WINDOW_MINUTES <= minute)
    {
        own.pop_front();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the Unix epoch: the gateways' minutes must agree, so the wall clock.
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth. Candidates are
/// counted per batch as they arrive, which a tower `RateLimit` (per request, not per item, and
/// waiting rather than refusing) does not do.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `n` tokens, or says how many seconds until there are enough. A batch larger than
    /// the bucket goes when the bucket is full (and leaves it in debt).
    fn take(&mut self, n: f64, now: Instant) -> Result<(), f64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        let need = n.min(self.rate);
        if self.tokens >= need {
            self.tokens -= n;
            Ok(())
        } else {
            Err((need - self.tokens) / self.rate)
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tenants() -> Tenants {
        let configs = [
            TenantConfig {
                name: "alice".into(),
                token_env: Some("A".into()),
                profiles: vec!["math".into()],
                max_in_flight: Some(10),
                ..Default::default()
            },
            TenantConfig {
                name: "bob".into(),
                token_env: Some("B".into()),
                candidates_per_second: Some(100.0),
                ..Default::default()
            },
        ];
        let tokens = HashMap::from([
            ("alice".to_owned(), "token-a".to_owned()),
            ("bob".to_owned(), "token-b".to_owned()),
        ]);
        Tenants::new(&configs, &tokens)
    }

    #[test]
    fn tokens_pick_their_tenant_and_nothing_else_passes() {
        let t = tenants();
        let alice = t
            .authenticate(Some("Bearer token-a"), &[])
            .unwrap()
            .unwrap();
        assert_eq!(alice.name(), "alice");
        assert_eq!(
            t.authenticate(Some("Bearer token-b"), &[])
                .unwrap()
                .unwrap()
                .name(),
            "bob"
        );
        for bad in [
            None,
            Some("token-a"),
            Some("Bearer "),
            Some("Bearer token-c"),
        ] {
            assert!(
                matches!(
                    t.authenticate(bad, &[]),
                    Err(GatewayError::Unauthenticated(_))
                ),
                "{bad:?}"
            );
        }
        assert!(
            Tenants::default()
                .authenticate(None, &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn profiles_sessions_and_quotas_are_the_tenants_own() {
        let t = tenants();
        let alice = t
            .authenticate(Some("Bearer token-a"), &[])
            .unwrap()
            .unwrap();
        assert!(alice.check_profile("math").is_ok());
        assert!(matches!(
            alice.check_profile("code"),
            Err(GatewayError::PermissionDenied(_))
        ));
        assert_ne!(alice.session_key("run"), "run");
        assert_eq!(alice.cap_window(1024), 10);
        alice.admit(6).unwrap();
        alice.owe(6);
        match alice.admit(5) {
            Err(GatewayError::ResourceExhausted { limit, .. }) => {
                assert_eq!(limit, "tenant.alice.max_in_flight");
            }
            other => panic!("{other:?}"),
        }
        alice.resolved(6);
        alice.admit(10).unwrap();
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = Bucket {
            rate: 100.0,
            tokens: 100.0,
            at: start,
        };
        b.take(80.0, start).unwrap();
        let wait = b.take(50.0, start).unwrap_err();
        assert!((wait - 0.3).abs() < 1e-9, "{wait}");
        b.take(50.0, start + Duration::from_millis(300)).unwrap();
        assert!(constant_time_eq(&digest("x"), &digest("x")));
        assert!(!constant_time_eq(&digest("x"), &digest("y")));
    }

    #[test]
    fn judge_tokens_count_over_a_sliding_hour_with_other_gateways() {
        let t = JudgeTokens::new(1_000);
        let start = 1_000_000 * 60; // a minute boundary
        t.add(start, 300);
        t.add(start + 30, 200);
        t.add(start + 600, 400);
        assert_eq!(t.spent(start + 600), 900);
        t.elsewhere.store(100, Ordering::Relaxed);
        assert_eq!(t.spent(start + 601), 1_000, "the other gateways count too");
        // The first minute (500 tokens) leaves the window an hour after it began.
        assert_eq!(t.retry_after(start + 601), 3_600 - 601);
        assert_eq!(t.spent(start + 3_599), 1_000);
        assert_eq!(t.spent(start + 3_600), 500);
        assert_eq!(t.spent(start + 600 + 3_600), 100, "all own minutes gone");
        assert_eq!(t.retry_after(start + 600 + 3_600), 60);
    }

    #[test]
    fn a_tenant_past_its_judge_tokens_is_refused_naming_the_quota() {
        let tenants = Tenants::new(
            &[TenantConfig {
                name: "carol".into(),
                token_env: Some("C".into()),
                judge_tokens_per_hour: Some(500),
                ..Default::default()
            }],
            &HashMap::from([("carol".to_owned(), "token-c".to_owned())]),
        );
        let carol = tenants
            .authenticate(Some("Bearer token-c"), &[])
            .unwrap()
            .unwrap();
        carol.admit(8).unwrap();
        carol.spent_judge_tokens(499);
        carol.admit(8).unwrap();
        carol.spent_judge_tokens(1);
        match carol.admit(8) {
            Err(GatewayError::ResourceExhausted {
                limit,
                retry_after_secs,
                ..
            }) => {
                assert_eq!(limit, "tenant.carol.judge_tokens_per_hour");
                assert!(
                    (1..=3_600).contains(&retry_after_secs),
                    "{retry_after_secs}"
                );
            }
            other => panic!("{other:?}"),
        }
        let minutes = carol.judge_tokens_by_minute().unwrap();
        assert_eq!(minutes.iter().map(|(_, n)| n).sum::<u64>(), 500);
    }
}
