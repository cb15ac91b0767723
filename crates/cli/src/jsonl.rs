//! JSONL in and out: one candidate per input line, one reward per output line.

use std::collections::BTreeMap;

use rewardfleet_core::{Reward, RewardStatus};
use serde::{Deserialize, Serialize};

pub use rewardfleet_core::jsonl::{LineError, parse_line};

/// One output line.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputLine {
    /// The candidate's id (`null` for a line whose id could not be read).
    pub id: Option<String>,
    /// The final reward.
    pub reward: f64,
    /// Per-component values.
    pub components: BTreeMap<String, f64>,
    /// `OK`, `DEGRADED` or `FAILED`.
    pub status: String,
    /// Why it FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Flags (fallbacks, gates, suspicions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The input line (1-based), for lines that could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Where the reward's time went, in milliseconds (absent when it was not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<TimingMs>,
}

/// A reward's timing, in milliseconds (the `Reward.timing` field of the gRPC API).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingMs {
    /// Outside scoring: queued and in transit.
    pub queue_ms: f64,
    /// Its job's scoring on a worker.
    pub scoring_ms: f64,
    /// From its batch's arrival at the gateway to its reward's send.
    pub total_ms: f64,
}

/// The output line that reports a line that could not be read.
pub fn failed_line(e: &LineError) -> OutputLine {
    OutputLine {
        id: e.id.clone(),
        reward: 0.0,
        components: BTreeMap::new(),
        status: "FAILED".into(),
        error: Some(e.to_string()),
        flags: Vec::new(),
        line: Some(e.line),
        timing: None,
    }
}

/// The output line of a candidate that got no reward at all (a broken promise of the gateway;
/// the run fails).
pub fn missing_reward(id: &str) -> OutputLine {
    OutputLine {
        id: Some(id.to_owned()),
        reward: 0.0,
        components: BTreeMap::new(),
        status: "FAILED".into(),
        error: Some("no reward was received for this candidate".into()),
        flags: Vec::new(),
        line: None,
        timing: None,
    }
}

/// The output line of a reward.
pub fn output(reward: &Reward) -> OutputLine {
    let status = match RewardStatus::try_from(reward.status) {
        Ok(RewardStatus::Ok) => "OK",
        Ok(RewardStatus::Degraded) => "DEGRADED",
        _ => "FAILED",
    };
    OutputLine {
        id: Some(reward.candidate_id.clone()),
        reward: reward.value,
        components: reward
            .components
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        status: status.into(),
        error: (!reward.error.is_empty()).then(|| reward.error.clone()),
        flags: reward.flags.clone(),
        line: None,
        timing: reward.timing.map(|t| TimingMs {
            queue_ms: round_ms(t.queue_ms),
            scoring_ms: round_ms(t.scoring_ms),
            total_ms: round_ms(t.total_ms),
        }),
    }
}

/// Milliseconds to microsecond precision: enough to read, short to write.
fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}
