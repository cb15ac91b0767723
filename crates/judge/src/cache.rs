//! The verdict cache: content-addressed, so a repeated (judge, prompt, response, reference)
//! skips the call. Judges keep answers through the [`VerdictCache`] trait: an in-memory LRU here
//! ([`MemoryCache`], embedded mode), a store shared by the fleet elsewhere (the NATS KV bucket of
//! `rewardfleet-scorers`). A cache never fails a judgement: a store logs its errors and reads
//! them as misses.
//!
//! It keeps what the endpoint answered to one request ([`Answer`]): readable verdicts for the
//! judge's `cache_ttl`, and permanent failures — a request refused for what it contains, an
//! answer the method could not read — for the shorter `failure_cache_ttl`. A job is scored again
//! whole when it is redelivered (another of its candidates failed for a passing reason, or its
//! worker died), on whichever worker pulls it; the failures kept here make that redelivery fail
//! those candidates the same way without asking the judge again, exactly as kept verdicts make it
//! succeed without a call. Keyed like verdicts, so only the same judgement (judge, template,
//! prompt, response, reference) is answered from them.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::{ChatRequest, Completion};

/// Where judges keep the answers they already paid for; one per process, shared by every judge.
///
/// Freshness is the judges' to decide (each judge has its own `cache_ttl` and
/// `failure_cache_ttl`, compared with [`StoredAnswer::stored_at`]); a store may forget entries
/// earlier (capacity, its own expiry), never keep them as other answers.
#[async_trait]
pub trait VerdictCache: Send + Sync {
    /// The answer stored under `key`, if any. A store that cannot read logs why and answers
    /// `None`: a cache never fails a judgement.
    async fn get(&self, key: &CacheKey) -> Option<StoredAnswer>;

    /// Keeps `stored` under `key`, replacing what was there. A store that cannot write logs why.
    async fn put(&self, key: &CacheKey, stored: StoredAnswer);
}

/// Which cache the judges of a [`crate::JudgeSet`] use.
#[derive(Clone)]
pub enum JudgeCache {
    /// No cache: every judgement calls the endpoint.
    None,
    /// An in-process LRU ([`MemoryCache`], embedded mode).
    Memory {
        /// Entries kept, at most (least recently used go first); 0: no cache.
        capacity: usize,
        /// Entries older than this are misses.
        ttl: Duration,
    },
    /// A store shared beyond this process (the fleet's NATS KV bucket).
    Shared(Arc<dyn VerdictCache>),
}

impl std::fmt::Debug for JudgeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Memory { capacity, ttl } => f
                .debug_struct("Memory")
                .field("capacity", capacity)
                .field("ttl", ttl)
                .finish(),
            Self::Shared(_) => f.write_str("Shared"),
        }
    }
}

/// A cache key: SHA-256 over everything that decides the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// `judge`: the endpoint's identity and sampling; `template`: the method's prompt version;
    /// the request carries the prompt, the response and the reference.
    pub(crate) fn new(judge: &str, template: &str, req: &ChatRequest) -> Self {
        let mut h = Sha256::new();
        for part in [judge, template] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for m in &req.messages {
            for part in [&m.role, &m.content] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.update([u8::from(req.logprobs)]);
        if let Some(f) = &req.response_format {
            h.update(f.to_string().as_bytes());
        }
        Self(h.finalize().into())
    }

    /// The key as 64 lowercase hex digits (a valid NATS KV key).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What the endpoint answered to one request, as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A verdict the method could read; kept for the judge's `cache_ttl`.
    #[serde(rename = "completion")]
    Verdict(Completion),
    /// An answer the method could not read; kept for `failure_cache_ttl`. Replayed, it takes the
    /// method through the same repairs to the same `judge_parse_error`.
    Unreadable(Completion),
    /// The endpoint refused the request for what it contains (HTTP 400, 413, 422); kept for
    /// `failure_cache_ttl` and replayed as the same permanent error.
    Refused {
        /// The error's reason (`judge_rejected`).
        reason: String,
        /// The error's message.
        message: String,
    },
}

impl Answer {
    /// Whether this is a kept failure (kept for `failure_cache_ttl`, not `cache_ttl`).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Verdict(_))
    }
}

/// An answer as a store keeps it: with when it was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    /// Unix milliseconds when it was stored.
    pub stored_at: u64,
    /// What the endpoint answered.
    pub answer: Answer,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The in-process LRU of embedded mode: at most `capacity` entries, each a miss once older than
/// the cache's own `ttl`.
pub struct MemoryCache {
    lru: Mutex<LruCache<CacheKey, StoredAnswer>>,
    ttl: Duration,
}

impl MemoryCache {
    /// A cache of `capacity` entries that expire after `ttl`.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        Self {
            lru: Mutex::new(LruCache::new(capacity)),
            ttl,
        }
    }
}

#[async_trait]
impl VerdictCache for MemoryCache {
    async fn get(&self, key: &CacheKey) -> Option<StoredAnswer> {
        let mut lru = self.lru.lock().ok()?;
        let stored = lru.get(key)?;
        if now_ms().saturating_sub(stored.stored_at) < self.ttl.as_millis() as u64 {
            Some(stored.clone())
        } else {
            lru.pop(key);
            None
        }
    }

    async fn put(&self, key: &CacheKey, stored: StoredAnswer) {
        if let Ok(mut lru) = self.lru.lock() {
            lru.put(*key, stored);
        }
    }
}

/// The cache as judges use it (one per process, behind an `Arc`).
pub(crate) struct Cache(Option<Arc<dyn VerdictCache>>);

impl Cache {
    pub(crate) fn new(cache: JudgeCache) -> Self {
        Self(match cache {
            JudgeCache::None => None,
            JudgeCache::Memory { capacity, ttl } => NonZeroUsize::new(capacity)
                .map(|c| Arc::new(MemoryCache::new(c, ttl)) as Arc<dyn VerdictCache>),
            JudgeCache::Shared(store) => Some(store),
        })
    }

    /// A stored answer still fresh: a verdict younger than `verdict_ttl`, a failure younger than
    /// `failure_ttl` (and younger than what the store itself keeps).
    pub(crate) async fn get(
        &self,
        key: &CacheKey,
        verdict_ttl: Duration,
        failure_ttl: Duration,
    ) -> Option<Answer> {
        let stored = self.0.as_ref()?.get(key).await?;
        let ttl = if stored.answer.is_failure() {
            failure_ttl
        } else {
            verdict_ttl
        };
        (now_ms().saturating_sub(stored.stored_at) < ttl.as_millis() as u64)
            .then_some(stored.answer)
    }

    /// Keeps `answer` under `key` (replacing what was there).
    pub(crate) async fn put(&self, key: &CacheKey, answer: Answer) {
        if let Some(store) = &self.0 {
            let stored = StoredAnswer {
                stored_at: now_ms(),
                answer,
            };
            store.put(key, stored).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str) -> Completion {
        Completion {
            content: content.into(),
            logprobs: None,
            usage: Default::default(),
            model: None,
        }
    }

    #[tokio::test]
    async fn failures_expire_with_their_own_ttl() {
        let cache = Cache::new(JudgeCache::Memory {
            capacity: 8,
            ttl: Duration::from_secs(60),
        });
        let req = ChatRequest {
            messages: Vec::new(),
            logprobs: false,
            response_format: None,
            deadline: tokio::time::Instant::now(),
        };
        let (verdict, failure) = (CacheKey::new("j", "a", &req), CacheKey::new("j", "b", &req));
        cache.put(&verdict, Answer::Verdict(completion("7"))).await;
        cache
            .put(&failure, Answer::Unreadable(completion("no idea")))
            .await;
        let (long, short) = (Duration::from_secs(60), Duration::from_millis(50));
        assert!(cache.get(&verdict, long, short).await.is_some());
        assert!(cache.get(&failure, long, short).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.get(&verdict, long, short).await.is_some());
        assert!(cache.get(&failure, long, short).await.is_none());
        // A zero TTL reads nothing of that kind.
        assert!(cache.get(&verdict, Duration::ZERO, long).await.is_none());
    }

    #[tokio::test]
    async fn memory_entries_expire_with_the_caches_own_ttl() {
        let cache = Cache::new(JudgeCache::Memory {
            capacity: 8,
            ttl: Duration::from_millis(50),
        });
        let req = ChatRequest {
            messages: Vec::new(),
            logprobs: false,
            response_format: None,
            deadline: tokio::time::Instant::now(),
        };
        let key = CacheKey::new("j", "a", &req);
        cache.put(&key, Answer::Verdict(completion("7"))).await;
        let long = Duration::from_secs(60);
        assert!(cache.get(&key, long, long).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.get(&key, long, long).await.is_none());
        // A capacity of 0 is no cache at all.
        let none = Cache::new(JudgeCache::Memory {
            capacity: 0,
            ttl: long,
        });
        none.put(&key, Answer::Verdict(completion("7"))).await;
        assert!(none.get(&key, long, long).await.is_none());
    }
}
