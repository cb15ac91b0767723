//! The judges' verdict cache in a NATS KV bucket shared by the fleet: a [`VerdictCache`] store,
//! so that the judge crate needs no NATS.
//!
//! An entry is JSON: a verdict is `{"stored_at", "completion"}`, the layout that workers which
//! know no failures read; a kept failure (`{"stored_at", "unreadable"}` or
//! `{"stored_at", "refused"}`) has no `completion`, so they skip it as unreadable. Entries expire
//! with the bucket's `max_age`; a judge's own TTLs decide what is fresh within it.

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use rewardfleet_judge::{Answer, CacheKey, JudgeCache, JudgeError, StoredAnswer, VerdictCache};
use serde::{Deserialize, Serialize};

/// A KV entry.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// Unix milliseconds when stored.
    stored_at: u64,
    #[serde(flatten)]
    answer: Answer,
}

/// Verdicts in a NATS KV bucket, shared by every worker of the fleet.
#[derive(Clone)]
pub struct KvVerdictCache {
    store: jetstream::kv::Store,
}

impl std::fmt::Debug for KvVerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvVerdictCache")
    }
}

impl KvVerdictCache {
    /// Opens (or creates) the KV bucket `bucket` with entries expiring after `ttl`.
    ///
    /// # Errors
    /// [`JudgeError::Cache`] if the bucket can be neither opened nor created.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
    ) -> Result<Self, JudgeError> {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Ok(Self { store });
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
        Ok(Self { store })
    }
}

/// The judges' cache on the KV bucket `bucket` (opened or created, entries expiring after
/// `ttl`): what a fleet worker gives its [`rewardfleet_judge::JudgeSet`].
///
/// # Errors
/// [`JudgeError::Cache`] if the bucket can be neither opened nor created.
pub async fn judge_cache(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
) -> Result<JudgeCache, JudgeError> {
    let store = KvVerdictCache::open(js, bucket, ttl).await?;
    Ok(JudgeCache::Shared(std::sync::Arc::new(store)))
}

#[async_trait]
impl VerdictCache for KvVerdictCache {
    async fn get(&self, key: &CacheKey) -> Option<StoredAnswer> {
        match self.store.get(key.hex()).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Entry>(&bytes) {
                Ok(e) => Some(StoredAnswer {
                    stored_at: e.stored_at,
                    answer: e.answer,
                }),
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
        }
    }

    async fn put(&self, key: &CacheKey, stored: StoredAnswer) {
        let entry = Entry {
            stored_at: stored.stored_at,
            answer: stored.answer,
        };
        match serde_json::to_vec(&entry) {
            Ok(bytes) => {
                if let Err(e) = self.store.put(key.hex(), bytes.into()).await {
                    tracing::warn!(error = %e, "judge cache write failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "judge cache entry not serialisable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use rewardfleet_judge::Completion;

    use super::*;

    fn completion(content: &str) -> Completion {
        Completion {
            content: content.into(),
            logprobs: None,
            usage: Default::default(),
            model: None,
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
}
