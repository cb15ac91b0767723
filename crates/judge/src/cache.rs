//! The verdict cache: content-addressed, in memory (embedded mode) or in a NATS KV bucket shared
//! by the fleet. A cache never fails a judgement: its errors are logged and read as misses.
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
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::JudgeError;
use crate::client::{ChatRequest, Completion};

/// Where judges keep verdicts they already paid for.
// Built once per process; boxing the store would only make the variant awkward to construct.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum JudgeCache {
    /// No cache: every judgement calls the endpoint.
    None,
    /// An in-process LRU (embedded mode).
    Memory {
        /// Entries kept, at most (least recently used go first).
        capacity: usize,
        /// Entries older than this are misses.
        ttl: Duration,
    },
    /// A NATS KV bucket shared by the fleet; entries expire with the bucket's `max_age`.
    Kv(jetstream::kv::Store),
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
            Self::Kv(_) => f.write_str("Kv"),
        }
    }
}

impl JudgeCache {
    /// Opens (or creates) the KV bucket `bucket` with entries expiring after `ttl`.
    ///
    /// # Errors
    /// [`JudgeError::Cache`] if the bucket can be neither opened nor created.
    pub async fn kv(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
    ) -> Result<Self, JudgeError> {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Ok(Self::Kv(store));
        }
        // The KV stream is created directly: `create_key_value` first queries the account
        // info, whose reply from nats-server 2.9 async-nats 0.51 cannot read. Same layout as
        // async-nats' own KV buckets.
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("rewardfleet judge verdicts, content-addressed".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: if ttl.is_zero() {
                Duration::from_secs(120)
            } else {
                ttl.min(Duration::from_secs(120))
            },
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| JudgeError::Cache(format!("cannot create KV bucket {bucket:?}: {e}")))?;
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|e| JudgeError::Cache(format!("cannot open KV bucket {bucket:?}: {e}")))?;
        Ok(Self::Kv(store))
    }
}

/// A cache key: SHA-256 over everything that decides the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey([u8; 32]);

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

    fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// What the endpoint answered to one request, as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
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
    fn is_failure(&self) -> bool {
        !matches!(self, Self::Verdict(_))
    }
}

/// A KV entry. A verdict is stored as `{"stored_at", "completion"}`, the layout that workers
/// which know no failures read; they skip the failure entries as unreadable.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// Unix milliseconds when stored.
    stored_at: u64,
    #[serde(flatten)]
    answer: Answer,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cache as judges use it (one per process, behind an `Arc`).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Cache {
    None,
    Memory {
        lru: Mutex<LruCache<CacheKey, (u64, Answer)>>,
        ttl: Duration,
    },
    Kv(jetstream::kv::Store),
}

impl Cache {
    pub(crate) fn new(cache: JudgeCache) -> Self {
        match cache {
            JudgeCache::None => Self::None,
            JudgeCache::Memory { capacity, ttl } => match NonZeroUsize::new(capacity) {
                Some(c) => Self::Memory {
                    lru: Mutex::new(LruCache::new(c)),
                    ttl,
                },
                None => Self::None,
            },
            JudgeCache::Kv(store) => Self::Kv(store),
        }
    }

    /// A stored answer still fresh: a verdict younger than `verdict_ttl`, a failure younger than
    /// `failure_ttl` (and, in memory, either younger than the cache's own TTL).
    pub(crate) async fn get(
        &self,
        key: &CacheKey,
        verdict_ttl: Duration,
        failure_ttl: Duration,
    ) -> Option<Answer> {
        let fresh = |stored_at: u64, answer: &Answer, cap: Duration| {
            let ttl = if answer.is_failure() {
                failure_ttl
            } else {
                verdict_ttl
            };
            now_ms().saturating_sub(stored_at) < ttl.min(cap).as_millis() as u64
        };
        match self {
            Self::None => None,
            Self::Memory { lru, ttl: own } => {
                let mut lru = lru.lock().ok()?;
                let (stored_at, answer) = lru.get(key)?;
                if fresh(*stored_at, answer, *own) {
                    Some(answer.clone())
                } else {
                    lru.pop(key);
                    None
                }
            }
            Self::Kv(store) => match store.get(key.hex()).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<Entry>(&bytes) {
                    Ok(e) if fresh(e.stored_at, &e.answer, Duration::MAX) => Some(e.answer),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable judge cache entry; treated as a miss");
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "judge cache read failed; treated as a miss");
                    None
                }
            },
        }
    }

    /// Keeps `answer` under `key` (replacing what was there).
    pub(crate) async fn put(&self, key: &CacheKey, answer: Answer) {
        let stored_at = now_ms();
        match self {
            Self::None => {}
            Self::Memory { lru, .. } => {
                if let Ok(mut lru) = lru.lock() {
                    lru.put(*key, (stored_at, answer));
                }
            }
            Self::Kv(store) => {
                let entry = Entry { stored_at, answer };
                match serde_json::to_vec(&entry) {
                    Ok(bytes) => {
                        if let Err(e) = store.put(key.hex(), bytes.into()).await {
                            tracing::warn!(error = %e, "judge cache write failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "judge cache entry not serialisable"),
                }
            }
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
        }
    }

    #[test]
    fn verdict_entries_keep_the_layout_older_workers_read() {
        let entry = Entry {
            stored_at: 7,
            answer: Answer::Verdict(completion("{\"score\": 3}")),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&entry).unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(json["stored_at"], 7);
        assert_eq!(json["completion"]["content"], "{\"score\": 3}");
        // A failure has no `completion`: a worker that knows only verdicts reads it as a miss.
        let refused = Entry {
            stored_at: 7,
            answer: Answer::Refused {
                reason: "judge_rejected".into(),
                message: "HTTP 400".into(),
            },
        };
        let bytes = serde_json::to_vec(&refused).unwrap_or_default();
        let back: Option<Entry> = serde_json::from_slice(&bytes).ok();
        assert_eq!(back.map(|e| e.answer), Some(refused.answer));
        assert!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()["completion"]
                .is_null()
        );
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
}
