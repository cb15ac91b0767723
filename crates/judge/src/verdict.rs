//! Tolerant reading of a judge's answer: the last JSON object (after common repairs), else the
//! score written as prose ("Score: 7/10").

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// Why an answer could not be read as a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerdictError(pub String);

/// A pairwise verdict, in terms of the labels shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// The first candidate shown (label A).
    First,
    /// The second candidate shown (label B).
    Second,
    /// Neither.
    Tie,
}

fn regex(pattern: &str) -> Regex {
    // The patterns are constants, checked by the tests below.
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("verdict pattern compiles")
}

static TRAILING_COMMA: LazyLock<Regex> = LazyLock::new(|| regex(r",\s*([}\]])"));
static SCORE_FIELD: LazyLock<Regex> =
    LazyLock::new(|| regex(r#"(?i)"?score"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)"#));
static SCORE_FRACTION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)"));
static SCORE_WORD: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(?:score|rating|grade)\b\s*(?:is|of|:|=)?\s*(-?\d+(?:\.\d+)?)"));
static WINNER_FIELD: LazyLock<Regex> =
    LazyLock::new(|| regex(r#"(?i)"?(?:winner|better|preferred)"?\s*[:=]\s*"?(A|B|tie)\b"#));
static CORRECT_FIELD: LazyLock<Regex> =
    LazyLock::new(|| regex(r#"(?i)"?correct"?\s*[:=]\s*"?(true|false|yes|no)\b"#));

/// Repairs that make near-JSON parse: smart quotes, trailing commas, Python literals.
fn repair(text: &str) -> String {
    let s = text
        .replace(['\u{201C}', '\u{201D}'], "\"")
        .replace(['\u{2018}', '\u{2019}'], "'")
        .replace("True", "true")
        .replace("False", "false")
        .replace("None", "null");
    TRAILING_COMMA.replace_all(&s, "$1").into_owned()
}

/// The last JSON object in `text` (code fences and prose around it are ignored).
pub fn last_json_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    let mut last = None;
    for candidate in [text.to_owned(), repair(text)] {
        let bytes = candidate.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'{' {
                let mut stream =
                    serde_json::Deserializer::from_str(&candidate[i..]).into_iter::<Value>();
                if let Some(Ok(Value::Object(map))) = stream.next() {
                    i += stream.byte_offset();
                    last = Some(map);
                    continue;
                }
            }
            i += 1;
        }
        if last.is_some() {
            return last;
        }
    }
    None
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a score in `[min, max]`.
///
/// # Errors
/// [`VerdictError`] when no score can be found or it is outside the range.
pub fn parse_score(text: &str, min: f64, max: f64) -> Result<f64, VerdictError> {
    let found = last_json_object(text)
        .and_then(|o| o.get("score").and_then(number))
        .or_else(|| {
            SCORE_FIELD
                .captures_iter(text)
                .last()
                .and_then(|c| c[1].parse().ok())
        })
        .or_else(|| {
            SCORE_FRACTION.captures_iter(text).last().and_then(|c| {
                let s: f64 = c[1].parse().ok()?;
                let out_of: f64 = c[2].parse().ok()?;
                // "7/10" on a 1–10 scale is 7; "4/5" on a 1–10 scale is rescaled.
                if (out_of - max).abs() < 1e-9 || out_of <= 0.0 {
                    Some(s)
                } else {
                    Some(s / out_of * max)
                }
            })
        })
        .or_else(|| {
            SCORE_WORD
                .captures_iter(text)
                .last()
                .and_then(|c| c[1].parse().ok())
        })
        .or_else(|| text.trim().trim_matches(['"', '.', '*']).parse().ok());
    match found {
        Some(s) if s.is_finite() && s >= min && s <= max => Ok(s),
        Some(s) => Err(VerdictError(format!(
            "the judge gave score {s}, outside the range {min} to {max}"
        ))),
        None => Err(VerdictError(format!(
            "no score in the judge's answer: {:?}",
            excerpt(text)
        ))),
    }
}

/// Reads a pairwise verdict (`{"winner": "A" | "B" | "tie"}`).
///
/// # Errors
/// [`VerdictError`] when no verdict can be found.
pub fn parse_preference(text: &str) -> Result<Preference, VerdictError> {
    let label = last_json_object(text)
        .and_then(|o| {
            ["winner", "better", "preferred"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_owned))
        })
        .or_else(|| {
            WINNER_FIELD
                .captures_iter(text)
                .last()
                .map(|c| c[1].to_owned())
        })
        .or_else(|| Some(text.trim().trim_matches(['"', '.', '*']).to_owned()));
    match label
        .as_deref()
        .map(str::trim)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("a") => Ok(Preference::First),
        Some("b") => Ok(Preference::Second),
        Some("tie" | "equal" | "none") => Ok(Preference::Tie),
        _ => Err(VerdictError(format!(
            "no winner (A, B or tie) in the judge's answer: {:?}",
            excerpt(text)
        ))),
    }
}

/// Reads a correctness verdict (`{"correct": true | false}`).
///
/// # Errors
/// [`VerdictError`] when no verdict can be found.
pub fn parse_correct(text: &str) -> Result<bool, VerdictError> {
    if let Some(v) = last_json_object(text).and_then(|o| o.get("correct").cloned()) {
        match v {
            Value::Bool(b) => return Ok(b),
            Value::String(s)
                if matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "correct") =>
            {
                return Ok(true);
            }
            Value::String(s)
                if matches!(
                    s.to_ascii_lowercase().as_str(),
                    "false" | "no" | "incorrect"
                ) =>
            {
                return Ok(false);
            }
            _ => {}
        }
    }
    if let Some(c) = CORRECT_FIELD.captures_iter(text).last() {
        return Ok(matches!(c[1].to_ascii_lowercase().as_str(), "true" | "yes"));
    }
    match text
        .trim()
        .trim_matches(['"', '.', '*'])
        .to_ascii_lowercase()
        .as_str()
    {
        "correct" | "true" | "yes" => Ok(true),
        "incorrect" | "false" | "no" => Ok(false),
        _ => Err(VerdictError(format!(
            "no verdict (correct or incorrect) in the judge's answer: {:?}",
            excerpt(text)
        ))),
    }
}

/// Whether the verdict reports a manipulation attempt (`"manipulation_attempt": true`); false
/// when the field is missing or unreadable.
pub fn parse_manipulation_attempt(text: &str) -> bool {
    match last_json_object(text).and_then(|o| o.get("manipulation_attempt").cloned()) {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes"),
        _ => false,
    }
}

fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_from_json_prose_and_fences() {
        let ok = |t: &str| parse_score(t, 1.0, 10.0);
        assert_eq!(ok(r#"{"reasoning": "ok", "score": 7}"#), Ok(7.0));
        assert_eq!(
            ok("```json\n{\"reasoning\": \"ok\", \"score\": 8,}\n```"),
            Ok(8.0)
        );
        assert_eq!(
            ok(r#"{"score": 2} then later {"reasoning": "x", "score": 6}"#),
            Ok(6.0)
        );
        assert_eq!(ok("Reasoning: fine.\nScore: 7/10"), Ok(7.0));
        assert_eq!(ok("I'd say 4 out of 5"), Ok(8.0));
        assert_eq!(ok(r#"{"reasoning": "cut", "score": 9"#), Ok(9.0));
        assert_eq!(ok("  5 "), Ok(5.0));
        assert!(ok(r#"{"reasoning": "The respo"#).is_err());
        assert!(ok("I cannot grade this.").is_err());
        assert!(ok(r#"{"score": 11}"#).is_err());
    }

    #[test]
    fn preferences_and_correctness_are_read() {
        assert_eq!(
            parse_preference(r#"{"reasoning": "x", "winner": "B"}"#),
            Ok(Preference::Second)
        );
        assert_eq!(parse_preference("winner: tie"), Ok(Preference::Tie));
        assert_eq!(parse_preference("A"), Ok(Preference::First));
        assert!(parse_preference("both are fine").is_err());
        assert_eq!(parse_correct(r#"{"correct": false}"#), Ok(false));
        assert_eq!(parse_correct("```{\"correct\": True}```"), Ok(true));
        assert_eq!(parse_correct("Incorrect."), Ok(false));
        assert!(parse_correct("hmm").is_err());
        assert!(parse_manipulation_attempt(
            r#"{"reasoning": "x", "score": 2, "manipulation_attempt": true}"#
        ));
        assert!(!parse_manipulation_attempt(
            r#"{"score": 2, "manipulation_attempt": false}"#
        ));
        assert!(!parse_manipulation_attempt(r#"{"score": 2}"#));
    }
}
