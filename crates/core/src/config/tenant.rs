//! `[[tenant]]`: who may call the gateway, with which bearer token, for which profiles, and
//! within which quotas. No tenant configured: the gateway is open (as on loopback by default).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// One caller of the gateway. The token is never in the file: `token_env` or `token_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantConfig {
    /// Its name: on metrics (`tenant` label), spans and refusals; namespaces its sessions.
    pub name: String,
    /// Environment variable that holds its bearer token.
    pub token_env: Option<String>,
    /// File that holds its bearer token.
    pub token_file: Option<PathBuf>,
    /// A name in the client certificate that identifies it (mTLS, `gateway.tls_client_ca`): the
    /// subject's common name or a DNS or URI subject alternative name. A call with no bearer
    /// token whose verified certificate carries it is this tenant's.
    pub tls_subject: Option<String>,
    /// Profiles it may use; empty: all of them.
    pub profiles: Vec<String>,
    /// Its open `Score` sessions at most, on one gateway.
    pub max_sessions: Option<u32>,
    /// Its candidates submitted and not yet rewarded at most, across its sessions on one
    /// gateway (a session's window is capped at it).
    pub max_in_flight: Option<u32>,
    /// Candidates it may submit per second on one gateway (a token bucket holding one second's
    /// worth).
    pub candidates_per_second: Option<f64>,
    /// Judge tokens (prompt + completion) its candidates may spend per hour, fleet-wide: the
    /// gateways add up what the results of its sessions report (sharing their counts through
    /// NATS), and refuse its new candidates once the last hour's spend reaches it.
    pub judge_tokens_per_hour: Option<u64>,
}

impl TenantConfig {
    /// Problems of this tenant, reported under `path` (e.g. `tenant[0]`).
    pub(crate) fn problems(&self, path: &str, profiles: &[String], p: &mut Vec<ConfigProblem>) {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || self.name.len() > 64
        {
            p.push(ConfigProblem::new(
                format!("{path}.name"),
                "use 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        match (&self.token_env, &self.token_file) {
            (None, None) if self.tls_subject.is_none() => p.push(ConfigProblem::new(
                format!("{path}.token_env"),
                "a tenant needs an identity: token_env, token_file or tls_subject",
            )),
            (Some(_), Some(_)) => p.push(ConfigProblem::new(
                format!("{path}.token_file"),
                "give token_env or token_file, not both",
            )),
            _ => {}
        }
        if self
            .tls_subject
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            p.push(ConfigProblem::new(
                format!("{path}.tls_subject"),
                "must not be empty",
            ));
        }
        for (i, name) in self.profiles.iter().enumerate() {
            if !profiles.contains(name) {
                p.push(ConfigProblem::new(
                    format!("{path}.profiles[{i}]"),
                    format!("unknown profile {name:?}; known: {}", profiles.join(", ")),
                ));
            }
        }
        for (key, value) in [
            ("max_sessions", self.max_sessions),
            ("max_in_flight", self.max_in_flight),
        ] {
            if value == Some(0) {
                p.push(ConfigProblem::new(
                    format!("{path}.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if self.judge_tokens_per_hour == Some(0) {
            p.push(ConfigProblem::new(
                format!("{path}.judge_tokens_per_hour"),
                "must be at least 1",
            ));
        }
        if let Some(rate) = self.candidates_per_second
            && !(rate.is_finite() && rate > 0.0)
        {
            p.push(ConfigProblem::new(
                format!("{path}.candidates_per_second"),
                "must be above 0",
            ));
        }
    }
}
