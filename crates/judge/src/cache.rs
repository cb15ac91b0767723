//! The verdict cache: content-addressed, in memory (embedded mode) or in a NATS KV bucket shared
//! by the fleet. A cache never fails a judgement: its errors are logged and read as misses.

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

#[derive(Serialize, Deserialize)]
struct Entry {
    /// Unix milliseconds when stored.
    stored_at: u64,
    completion: Completion,
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
        lru: Mutex<LruCache<CacheKey, (u64, Completion)>>,
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

    /// A stored answer younger than `ttl` (and the cache's own TTL).
    pub(crate) async fn get(&self, key: &CacheKey, ttl: Duration) -> Option<Completion> {
        let fresh = |stored_at: u64, ttl: Duration| {
            now_ms().saturating_sub(stored_at) < ttl.as_millis() as u64
        };
        match self {
            Self::None => None,
            Self::Memory { lru, ttl: own } => {
                let mut lru = lru.lock().ok()?;
                let (stored_at, completion) = lru.get(key)?;
                if fresh(*stored_at, ttl.min(*own)) {
                    Some(completion.clone())
                } else {
                    lru.pop(key);
                    None
                }
            }
            Self::Kv(store) => match store.get(key.hex()).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<Entry>(&bytes) {
                    Ok(e) if fresh(e.stored_at, ttl) => Some(e.completion),
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

    pub(crate) async fn put(&self, key: &CacheKey, completion: &Completion) {
        let stored_at = now_ms();
        match self {
            Self::None => {}
            Self::Memory { lru, .. } => {
                if let Ok(mut lru) = lru.lock() {
                    lru.put(*key, (stored_at, completion.clone()));
                }
            }
            Self::Kv(store) => {
                let entry = Entry {
                    stored_at,
                    completion: completion.clone(),
                };
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
