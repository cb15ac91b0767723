//! The trainer-facing gRPC gateway: sessions, jobs of whole groups, the window that holds fast
//! senders back, and rewards streamed back as each job's result arrives.

mod error;
mod http;
mod server;
mod session;
mod tenant;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rewardfleet_core::config::{Config, GatewayConfig};
use rewardfleet_core::{JobBounds, Limits};
use rewardfleet_proto::v1::{ComponentInfo, ProfileInfo};
use rewardfleet_queue::Queue;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use error::GatewayError;
pub use http::{HttpApi, serve_http};
pub use server::{RewardApi, serve};
pub use session::ScoreStream;
pub use tenant::{Caller, Tenant};
pub use tls::{ReloadingTls, TlsError, TlsFiles};

/// The gateway's logic, independent of the transport: the gRPC service and the embedded
/// `rewardfleet score` both drive sessions through it. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn Queue>,
    profiles: Vec<ProfileInfo>,
    default_profile: Option<String>,
    limits: Limits,
    bounds: JobBounds,
    default_window: u32,
    max_window: u32,
    stats: Stats,
    /// Every session's task, so that a drain can wait for them.
    sessions: TaskTracker,
    /// One permit per open `Score` stream (`gateway.max_sessions`); a stream that finds none is
    /// refused with `RESOURCE_EXHAUSTED`, nothing waits for a permit.
    session_slots: Arc<Semaphore>,
    /// `gateway.max_sessions`, for the refusal's message.
    max_sessions: usize,
    /// `gateway.max_queued_candidates` (0: none): see [`Gateway::fair_room`].
    max_queued: usize,
    /// Woken whenever candidates are resolved: sessions waiting for their fair share look again.
    room: tokio::sync::Notify,
    /// `gateway.session_idle_timeout`.
    idle_timeout: Duration,
    /// The transport's bounds (connections, streams, message size, keep-alive).
    transport: GatewayConfig,
    /// Who may call, and their quotas; none: anyone.
    tenants: tenant::Tenants,
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Default)]
struct Stats {
    /// Candidates submitted and not yet resolved, across sessions.
    in_flight: AtomicUsize,
    /// The most candidates one session ever had unresolved.
    max_session_in_flight: AtomicUsize,
    /// Sessions open now.
    sessions: AtomicUsize,
}

/// A snapshot of the gateway's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayStats {
    /// Candidates submitted and not yet resolved, across sessions.
    pub in_flight: usize,
    /// The most candidates one session ever had unresolved.
    pub max_session_in_flight: usize,
    /// Sessions open now.
    pub sessions: usize,
}

impl Gateway {
    /// A gateway over `queue`, serving the profiles of `config` with its limits. Its tenants
    /// (if `config` has any) have no token here, so no caller can authenticate: use
    /// [`Gateway::with_tenants`] to serve them.
    pub fn new(config: &Config, queue: Arc<dyn Queue>) -> Self {
        Self::with_tenants(config, queue, &HashMap::new())
    }

    /// As [`Gateway::new`], with each `[[tenant]]`'s bearer token by tenant name (read by the
    /// binary from `token_env` / `token_file`).
    pub fn with_tenants(
        config: &Config,
        queue: Arc<dyn Queue>,
        tokens: &HashMap<String, String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue,
                profiles: profile_infos(config),
                default_profile: config.gateway.default_profile.clone(),
                limits: config.limits.clone(),
                bounds: config.jobs.clone(),
                default_window: config.gateway.max_in_flight,
                max_window: config.gateway.max_window,
                stats: Stats::default(),
                sessions: TaskTracker::new(),
                session_slots: Arc::new(Semaphore::new(config.gateway.max_sessions as usize)),
                max_sessions: config.gateway.max_sessions as usize,
                max_queued: config.gateway.max_queued_candidates as usize,
                room: tokio::sync::Notify::new(),
                idle_timeout: config.gateway.session_idle_timeout,
                transport: config.gateway.clone(),
                tenants: tenant::Tenants::new(&config.tenant, tokens),
            }),
        }
    }

    /// The caller presenting `authorization` (the value of that header or metadata, if any);
    /// without a token, the tenant whose `tls_subject` is among `client_names` (the names of
    /// the connection's verified client certificate).
    ///
    /// # Errors
    /// `Unauthenticated` when tenants are configured and neither names one.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        client_names: &[String],
    ) -> Result<Caller, GatewayError> {
        self.inner.tenants.authenticate(authorization, client_names)
    }

    /// The tenants with a `judge_tokens_per_hour` quota, whose spend the fleet's gateways share.
    pub fn judge_token_tenants(&self) -> Vec<Arc<Tenant>> {
        self.inner.tenants.with_judge_token_quota()
    }

    /// Whether callers must authenticate (tenants are configured).
    pub fn requires_auth(&self) -> bool {
        self.inner.tenants.required()
    }

    /// The profiles served, with their components.
    pub fn profiles(&self) -> &[ProfileInfo] {
        &self.inner.profiles
    }

    /// The counters now.
    pub fn stats(&self) -> GatewayStats {
        let s = &self.inner.stats;
        GatewayStats {
            in_flight: s.in_flight.load(Ordering::Relaxed),
            max_session_in_flight: s.max_session_in_flight.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
        }
    }

    /// Waits until every session has ended (new sessions may still start meanwhile; they are
    /// waited for too).
    pub async fn sessions_ended(&self) {
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
        self.inner.sessions.reopen();
    }

    /// The profile a batch asking for `asked` is scored with (empty: the gateway's default, or
    /// its only profile).
    ///
    /// # Errors
    /// `InvalidArgument` on field `profile` for an unknown profile (listing the known ones), or
    /// when none is asked for and the gateway has no default.
    pub fn resolve_profile(&self, asked: &str) -> Result<String, GatewayError> {
        self.profile_for(asked, "")
    }

    /// Resolves the profile a batch asks for.
    fn profile_for(&self, asked: &str, session_default: &str) -> Result<String, GatewayError> {
        let name = if !asked.is_empty() {
            asked
        } else if !session_default.is_empty() {
            session_default
        } else if let Some(d) = &self.inner.default_profile {
            d.as_str()
        } else if self.inner.profiles.len() == 1 {
            self.inner.profiles[0].name.as_str()
        } else {
            return Err(GatewayError::InvalidArgument {
                field: "profile".into(),
                message: format!(
                    "no profile given and the gateway has no default; known: {}",
                    self.known_profiles()
                ),
            });
        };
        if self.inner.profiles.iter().any(|p| p.name == name) {
            Ok(name.to_owned())
        } else {
            Err(GatewayError::InvalidArgument {
                field: "profile".into(),
                message: format!("unknown profile {name:?}; known: {}", self.known_profiles()),
            })
        }
    }

    fn known_profiles(&self) -> String {
        self.inner
            .profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn profile_infos(config: &Config) -> Vec<ProfileInfo> {
    config
        .profile
        .iter()
        .map(|(name, p)| ProfileInfo {
            name: name.clone(),
            normalize: p.normalize.as_str().into(),
            on_component_failure: p.on_component_failure.as_str().into(),
            components: p
                .components
                .iter()
                .map(|c| ComponentInfo {
                    name: c.display_name(),
                    kind: config.component_kind(c).as_str().into(),
                    weight: c.effective_weight(),
                    gate: c.gate,
                    fallback: c.fallback.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect()
}
