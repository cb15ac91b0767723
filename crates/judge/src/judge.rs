//! One judge endpoint at run time: its stack, its cache access, its usage and session budgets.

use rewardfleet_core::FailureReason;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use rewardfleet_core::config::JudgeConfig;
use rewardfleet_core::{ScoreContext, ScoreError};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use rewardfleet_telemetry::metrics::{label, metrics};
use tower::load_shed::error::Overloaded;

use crate::JudgeError;
use crate::breaker::CircuitOpen;
use crate::cache::{Answer, Cache, CacheKey};
use crate::client::{AttemptError, BoxError, ChatRequest, Completion, HttpJudge};
use crate::limits::Limits;
use crate::stack::{self, JudgeService};

/// Token usage and calls of one judge since the process started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JudgeUsage {
    /// The judge's name.
    pub judge: String,
    /// Judgements sent through the stack (each may take several attempts).
    pub calls: u64,
    /// HTTP attempts made (first attempts and retries).
    pub attempts: u64,
    /// Judgements that ended in an error.
    pub failed_calls: u64,
    /// Judgements answered from the cache, with no call.
    pub cache_hits: u64,
    /// Prompt tokens, as the endpoint reported them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the endpoint reported them.
    pub completion_tokens: u64,
}

impl JudgeUsage {
    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Sessions whose token spend is remembered per judge, at most (least recently used forgotten).
const SESSIONS_TRACKED: usize = 65_536;

/// A judge endpoint: shared by every component and profile that names it.
pub(crate) struct Judge {
    pub(crate) config: JudgeConfig,
    service: JudgeService,
    http: HttpJudge,
    /// This process's share of the endpoint's limits.
    pub(crate) limits: Limits,
    cache: Arc<Cache>,
    /// Identity of the endpoint and its sampling, part of every cache key.
    fingerprint: String,
    calls: AtomicU64,
    failed_calls: AtomicU64,
    cache_hits: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Tokens spent per trainer session (only kept when `session_token_budget > 0`).
    sessions: Mutex<LruCache<String, u64>>,
}

impl Judge {
    pub(crate) fn new(
        config: &JudgeConfig,
        api_key: Option<&str>,
        cache: Arc<Cache>,
    ) -> Result<Self, JudgeError> {
        let limits = Limits::new(config);
        let (service, http) = stack::build(config, api_key, &limits)?;
        let s = &config.sampling;
        let identity = format!(
            "{}\n{}\n{}\n{:?}\n{:?}\n{}\n{:?}",
            config.name,
            config.base_url,
            config.model,
            s.temperature,
            s.top_p,
            s.max_tokens,
            s.seed
        );
        let sessions =
            NonZeroUsize::new(SESSIONS_TRACKED).map_or_else(LruCache::unbounded, LruCache::new);
        Ok(Self {
            config: config.clone(),
            service,
            http,
            limits,
            cache,
            fingerprint: hex::encode(Sha256::digest(identity.as_bytes())),
            calls: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            sessions: Mutex::new(sessions),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn usage(&self) -> JudgeUsage {
        JudgeUsage {
            judge: self.config.name.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            attempts: self.http.attempts.load(Ordering::Relaxed),
            failed_calls: self.failed_calls.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }

    fn spent(&self, session: &str) -> u64 {
        self.sessions
            .lock()
            .ok()
            .and_then(|mut s| s.get(session).copied())
            .unwrap_or(0)
    }

    fn charge(&self, session: &str, tokens: u64) {
        if let Ok(mut s) = self.sessions.lock() {
            match s.get_mut(session) {
                Some(spent) => *spent += tokens,
                None => {
                    s.put(session.to_owned(), tokens);
                }
            }
        }
    }

    /// Asks the judge, from the cache when it can (never for a [`ScoreContext::fresh`] one). `template` names the method's prompt (part of
    /// the cache key). Answers that `accept` takes are kept for `cache_ttl`; answers it does not
    /// take, and requests the endpoint refuses for what they contain, are kept for
    /// `failure_cache_ttl`, so that the same judgement asked again (a redelivered job) fails the
    /// same way without a call (see `cache.rs`).
    ///
    /// # Errors
    /// A [`ScoreError`] saying what happens next: transient for timeouts, overload, an open
    /// circuit or server errors after retries; permanent for a refused request (also when
    /// remembered) or a spent session token budget.
    pub(crate) async fn ask(
        &self,
        ctx: &ScoreContext,
        template: &str,
        req: ChatRequest,
        accept: impl Fn(&Completion) -> bool,
    ) -> Result<Completion, ScoreError> {
        let ttl = self.config.cache_ttl;
        let failure_ttl = self.config.failure_cache_ttl;
        // No key, no cache: a fresh judgement (a canary) is neither read nor kept.
        let key = (!ctx.fresh && (!ttl.is_zero() || !failure_ttl.is_zero()))
            .then(|| CacheKey::new(&self.fingerprint, template, &req));
        let cached = match &key {
            Some(key) => self.cache.get(key, ttl, failure_ttl).await,
            None => None,
        };
        if key.is_some()
            && let Some(m) = metrics()
        {
            let result = if cached.is_some() { "hit" } else { "miss" };
            m.cache_lookups.add(
                1,
                &[
                    label("judge", self.name().to_owned()),
                    label("result", result),
                ],
            );
        }
        if let Some(hit) = cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return match hit {
                Answer::Verdict(c) | Answer::Unreadable(c) => Ok(Completion {
                    usage: Default::default(),
                    ..c
                }),
                // The cache keeps the code; one this build does not know reads as a refusal.
                Answer::Refused { reason, message } => Err(ScoreError::permanent(
                    reason.parse().unwrap_or(FailureReason::JudgeRejected),
                    message,
                )),
            };
        }
        let budget = self.config.session_token_budget;
        if budget > 0 {
            let spent = self.spent(&ctx.session_id);
            if spent >= budget {
                return Err(ScoreError::permanent(
                    FailureReason::JudgeTokenBudgetSpent,
                    format!(
                        "session {:?} has spent {spent} of its {budget} tokens on judge {:?} (session_token_budget)",
                        ctx.session_id,
                        self.name()
                    ),
                ));
            }
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.service.clone().oneshot(req).await;
        let completion = match result {
            Ok(c) => c,
            Err(e) => {
                self.failed_calls.fetch_add(1, Ordering::Relaxed);
                // Attempts that reached the endpoint are counted by their own layer; these
                // never left the worker.
                let refused = if e.is::<Overloaded>() {
                    Some("shed")
                } else if e.is::<CircuitOpen>() {
                    Some("circuit_open")
                } else {
                    None
                };
                if let (Some(outcome), Some(m)) = (refused, metrics()) {
                    m.judge_requests.add(
                        1,
                        &[
                            label("judge", self.name().to_owned()),
                            label("outcome", outcome),
                        ],
                    );
                }
                let error = stack::score_error(self.name(), &e);
                tracing::debug!(judge = self.name(), reason = %error.reason, "judge call failed");
                if let Some(key) = &key
                    && !failure_ttl.is_zero()
                    && refused_for_its_content(&e)
                {
                    let refused = Answer::Refused {
                        reason: error.reason.as_str().to_owned(),
                        message: error.message.clone(),
                    };
                    self.cache.put(key, refused).await;
                }
                return Err(error);
            }
        };
        self.prompt_tokens
            .fetch_add(completion.usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion.usage.completion_tokens, Ordering::Relaxed);
        ctx.judge_tokens
            .fetch_add(completion.usage.total(), Ordering::Relaxed);
        if budget > 0 {
            self.charge(&ctx.session_id, completion.usage.total());
        }
        if let Some(key) = &key {
            if accept(&completion) {
                if !ttl.is_zero() {
                    self.cache
                        .put(key, Answer::Verdict(completion.clone()))
                        .await;
                }
            } else if !failure_ttl.is_zero() {
                self.cache
                    .put(key, Answer::Unreadable(completion.clone()))
                    .await;
            }
        }
        Ok(completion)
    }
}

/// A refusal that the same request would get again, whoever sends it and whenever: the request
/// itself is at fault (malformed, too long, unprocessable). Refusals about the endpoint or the
/// credentials (401, 403, 404, …) are not remembered: once an operator fixes those, every
/// judgement must be asked again at once.
fn refused_for_its_content(e: &BoxError) -> bool {
    matches!(
        e.downcast_ref::<AttemptError>(),
        Some(AttemptError::Status {
            status: 400 | 413 | 422,
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_request_itself_are_remembered() {
        let status = |status: u16| -> BoxError {
            Box::new(AttemptError::Status {
                status,
                retry_after: None,
                body: String::new(),
            })
        };
        for s in [400, 413, 422] {
            assert!(refused_for_its_content(&status(s)), "{s}");
        }
        for s in [401, 403, 404, 429, 500, 503] {
            assert!(!refused_for_its_content(&status(s)), "{s}");
        }
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(!refused_for_its_content(&elapsed));
    }
}
