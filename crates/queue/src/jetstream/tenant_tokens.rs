//! Tenants' judge-token spend, shared by the fleet's gateways for `judge_tokens_per_hour`.
//!
//! Each gateway keeps one entry per tenant with a quota in the `<prefix>_tenant_tokens` bucket,
//! key `<tenant>.<gateway>.<pid>`, holding its own spend by minute over the last hour. It
//! rewrites its entries every `nats.heartbeat_interval` and reads the others': a tenant's spend
//! is the sum over every gateway's minutes still in the window. Entries are kept an hour after
//! their last write, so a gateway that stopped still counts for what it let through.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use rewardfleet_core::config::NatsConfig;
use serde::{Deserialize, Serialize};

use super::heartbeat::{heartbeat_key, memory_bucket};
use super::{JetStreamQueue, unavailable};
use crate::QueueError;

/// Minutes a spend counts for (the quota is per hour).
pub const WINDOW_MINUTES: u64 = 60;

/// One gateway's spend for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Spend {
    /// (minute since the Unix epoch, tokens), oldest first.
    minutes: Vec<(u64, u64)>,
}

/// This gateway's view of the shared bucket.
#[derive(Clone)]
pub struct TenantTokens {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    /// `<gateway>.<pid>`: the second half of this gateway's keys.
    own: String,
}

impl std::fmt::Debug for TenantTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTokens")
            .field("bucket", &self.bucket)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl JetStreamQueue {
    /// The shared tenant-token bucket as the gateway `name` sees it; created (in memory,
    /// `nats.replicas` replicas) if it does not exist yet.
    ///
    /// # Errors
    /// [`QueueError::Setup`] if the bucket can be neither opened nor created.
    pub async fn tenant_tokens(
        &self,
        name: &str,
        nats: &NatsConfig,
    ) -> Result<TenantTokens, QueueError> {
        let bucket = format!("{}_tenant_tokens", self.prefix);
        let store = memory_bucket(
            &self.js,
            &bucket,
            "rewardfleet: judge tokens each gateway let each tenant spend, by minute".into(),
            Duration::from_secs(WINDOW_MINUTES * 60 + 60),
            nats.replicas,
        )
        .await?;
        Ok(TenantTokens {
            js: self.js.clone(),
            store,
            bucket,
            own: heartbeat_key(name, std::process::id()),
        })
    }
}

impl TenantTokens {
    /// Writes this gateway's spend for `tenant`: (minute since the Unix epoch, tokens).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server does not take it.
    pub async fn publish(&self, tenant: &str, minutes: &[(u64, u64)]) -> Result<(), QueueError> {
        let value = serde_json::to_vec(&Spend {
            minutes: minutes.to_vec(),
        })
        .map_err(|e| unavailable("encode a tenant's spend", e))?;
        let key = format!("{tenant}.{}", self.own);
        self.store
            .put(&key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&format!("tenant spend {}/{key}", self.bucket), e))
    }

    /// What the other gateways let `tenant` spend in the hour before `now_minute`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if the server cannot be read.
    pub async fn elsewhere(&self, tenant: &str, now_minute: u64) -> Result<u64, QueueError> {
        let what = || format!("tenant spend {}/{tenant}", self.bucket);
        let stream = self
            .js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .map_err(|e| unavailable(&what(), e))?;
        let prefix = format!("$KV.{}.", self.bucket);
        // Keys from the stream's subjects: `Store::keys` can wait on entries that expire
        // meanwhile (see `read_bucket`).
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("{prefix}{tenant}.>"))
            .await
            .map_err(|e| unavailable(&what(), e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(&what(), e))?;
        let own = format!("{tenant}.{}", self.own);
        let mut total = 0;
        for (subject, _) in subjects {
            let Some(key) = subject.strip_prefix(&prefix) else {
                continue;
            };
            if key == own {
                continue;
            }
            let Some(value) = self
                .store
                .get(key)
                .await
                .map_err(|e| unavailable(&what(), e))?
            else {
                continue;
            };
            match serde_json::from_slice::<Spend>(&value) {
                Ok(spend) => total += in_window(&spend.minutes, now_minute),
                Err(e) => tracing::warn!(key, error = %e, "unreadable tenant spend skipped"),
            }
        }
        Ok(total)
    }
}

/// Tokens of the minutes within the hour ending in `now_minute`.
fn in_window(minutes: &[(u64, u64)], now_minute: u64) -> u64 {
    minutes
        .iter()
        .filter(|(m, _)| m + WINDOW_MINUTES > now_minute)
        .map(|(_, n)| n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_hours_minutes_count() {
        let minutes = [(100, 5), (130, 7), (159, 11)];
        assert_eq!(in_window(&minutes, 159), 23);
        assert_eq!(in_window(&minutes, 160), 18);
        assert_eq!(in_window(&minutes, 219), 0);
    }
}
