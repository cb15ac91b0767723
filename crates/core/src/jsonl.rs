//! Candidates read from JSONL: one JSON object per line, the input of `rewardfleet score` and
//! `rewardfleet arena`.
//!
//! A line holds `id` and `response`, optionally `group_id`, `prompt` (a string, sent as one user
//! message) or `messages` (a list of `{role, content}`), `reference` and `labels`; any other key
//! is an error, so a typo cannot silently drop a field.

use std::collections::HashMap;

use serde::Deserialize;

use crate::{Candidate, ChatMessage};

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

/// A line that could not be turned into a candidate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The id, when it could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Parses one line (1-based number `line`) of raw bytes into a candidate.
///
/// # Errors
/// A [`LineError`] naming the line, and the id when it could be read: bytes that are not UTF-8,
/// malformed JSON or a missing, unknown or ill-typed field, both `prompt` and `messages`, or an
/// empty `id`.
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
        assert_eq!(e.to_string(), "line 7: `id` must not be empty");
    }
}
