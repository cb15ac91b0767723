//! JSONL in and out: one candidate per input line, one reward per output line.

use std::collections::BTreeMap;
use std::collections::HashMap;

use rewardfleet_core::{Candidate, ChatMessage, Reward, RewardStatus};
use serde::{Deserialize, Serialize};

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    id: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    response: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
}

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

/// A line that could not be turned into a candidate.
#[derive(Debug)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The id, when it could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl LineError {
    /// The output line that reports it.
    pub fn to_output(&self) -> OutputLine {
        OutputLine {
            id: self.id.clone(),
            reward: 0.0,
            components: BTreeMap::new(),
            status: "FAILED".into(),
            error: Some(format!("line {}: {}", self.line, self.message)),
            flags: Vec::new(),
            line: Some(self.line),
            timing: None,
        }
    }
}

/// Parses one line (1-based number `line`) of raw bytes.
pub fn parse_line(line: usize, bytes: &[u8]) -> Result<Candidate, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| LineError {
        line,
        id: None,
        message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
    })?;
    let input: InputLine = serde_json::from_str(text).map_err(|e| LineError {
        line,
        id: serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned)),
        message: format!("malformed JSON line: {e}"),
    })?;
    let prompt = match (input.prompt, input.messages) {
        (Some(_), Some(_)) => {
            return Err(LineError {
                line,
                id: Some(input.id),
                message: "give either `prompt` or `messages`, not both".into(),
            });
        }
        (Some(p), None) => vec![ChatMessage {
            role: "user".into(),
            content: p,
        }],
        (None, Some(m)) => m
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    if input.id.is_empty() {
        return Err(LineError {
            line,
            id: None,
            message: "`id` must not be empty".into(),
        });
    }
    Ok(Candidate {
        id: input.id,
        group_id: input.group_id.unwrap_or_default(),
        prompt,
        response: input.response,
        reference: input.reference,
        labels: input.labels,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_string_becomes_a_user_message() {
        let c = parse_line(
            1,
            br#"{"id":"a","prompt":"2+2?","response":"4","reference":"4"}"#,
        )
        .unwrap();
        assert_eq!(c.prompt.len(), 1);
        assert_eq!(c.prompt[0].role, "user");
        assert_eq!(c.reference.as_deref(), Some("4"));
    }

    #[test]
    fn bad_lines_say_what_and_where() {
        let e = parse_line(3, b"{\"id\":\"a\",\"response\":\"\xff\"}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("invalid UTF-8"), "{}", e.message);
        let e = parse_line(4, br#"{"id":"b"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("b"));
        assert!(
            e.message.contains("missing field `response`"),
            "{}",
            e.message
        );
        let e = parse_line(5, br#"{"id":"c","response":"x","extra":1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
        let e = parse_line(6, b"not json").unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{}", e.message);
        let e = parse_line(7, br#"{"id":"","response":"x"}"#).unwrap_err();
        assert!(e.message.contains("`id` must not be empty"));
    }
}
