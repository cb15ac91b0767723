//! `[worker.monitor]`: the reward-hacking monitors' windows, thresholds and canary candidates.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigProblem};
use crate::{Candidate, ChatMessage};

/// Reward-hacking monitors: rolling statistics per profile, and per (profile, session) for the
/// most recent sessions, over the last `window` rewards a worker produced; and the drift of each
/// judge's mean score on fixed canary candidates re-scored every `canary_interval`. Each
/// statistic crossing its threshold logs a warning (once, until it goes back under).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// Rewards per profile (and per session) in the rolling window; 0 turns the monitors off.
    pub window: usize,
    /// Rewards in a window before any warning.
    pub min_samples: usize,
    /// Sessions whose own statistics are kept, at most: the most recently active ones; the
    /// least recently active is forgotten (and its `rewardfleet_monitor_session` series
    /// removed) when another comes. 0: per profile only.
    pub sessions: usize,
    /// Pearson correlation of reward with response length above which a policy is likely
    /// buying reward with verbosity.
    pub length_correlation: f64,
    /// Share of rewards flagged as a suspected prompt injection.
    pub injection_rate: f64,
    /// Share flagged position-inconsistent by a pairwise judge.
    pub position_inconsistency_rate: f64,
    /// Share on which a judge panel disagreed.
    pub panel_disagreement_rate: f64,
    /// Share that failed a gate (got the profile's floor).
    pub gate_floor_rate: f64,
    /// Canary candidates: a JSONL file (relative to the configuration file) of
    /// `{"prompt" | "messages", "response", "reference"?, "id"?}` lines that every judge
    /// component of every profile scores again each `canary_interval`, asking the judge afresh
    /// (the verdict cache is bypassed).
    pub canaries: Option<PathBuf>,
    /// How often the canaries are scored again; 0 (the default) turns canaries off.
    #[serde(with = "humantime_serde")]
    pub canary_interval: Duration,
    /// How far a judge's mean canary score (component value, in [0, 1] for judges) may move
    /// from its first run, either way, before a warning: the judge model changed under you.
    pub canary_drift: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: 1000,
            min_samples: 200,
            sessions: 32,
            length_correlation: 0.5,
            injection_rate: 0.02,
            position_inconsistency_rate: 0.2,
            panel_disagreement_rate: 0.25,
            gate_floor_rate: 0.5,
            canaries: None,
            canary_interval: Duration::ZERO,
            canary_drift: 0.1,
        }
    }
}

/// Sessions whose statistics a worker keeps, at most (`sessions` above this is refused).
pub const MAX_MONITORED_SESSIONS: usize = 1024;

impl MonitorConfig {
    /// Problems of these settings, under `path` (`worker.monitor`); the canary file is read
    /// (resolved against `config`'s directory) and must hold at least one readable line.
    pub(crate) fn problems(&self, path: &str, config: &Config, p: &mut Vec<ConfigProblem>) {
        if self.sessions > MAX_MONITORED_SESSIONS {
            p.push(ConfigProblem::new(
                format!("{path}.sessions"),
                format!(
                    "at most {MAX_MONITORED_SESSIONS} (each session is a window and a set of series)"
                ),
            ));
        }
        for (key, value) in [
            ("length_correlation", self.length_correlation),
            ("injection_rate", self.injection_rate),
            (
                "position_inconsistency_rate",
                self.position_inconsistency_rate,
            ),
            ("panel_disagreement_rate", self.panel_disagreement_rate),
            ("gate_floor_rate", self.gate_floor_rate),
        ] {
            if !value.is_finite() {
                p.push(ConfigProblem::new(
                    format!("{path}.{key}"),
                    "must be a number",
                ));
            }
        }
        if !(self.canary_drift.is_finite() && self.canary_drift > 0.0) {
            p.push(ConfigProblem::new(
                format!("{path}.canary_drift"),
                "must be above 0",
            ));
        }
        match (&self.canaries, self.canary_interval.is_zero()) {
            (None, false) => p.push(ConfigProblem::new(
                format!("{path}.canaries"),
                "canary_interval is set: give the JSONL file of canary candidates",
            )),
            (Some(_), false) if self.canary_interval < Duration::from_millis(100) => {
                p.push(ConfigProblem::new(
                    format!("{path}.canary_interval"),
                    "must be at least 100ms (or 0: off)",
                ));
            }
            _ => {}
        }
        if let Some(file) = &self.canaries {
            let resolved = config.resolve(file);
            match std::fs::read_to_string(&resolved) {
                Err(e) => p.push(ConfigProblem::new(
                    format!("{path}.canaries"),
                    format!("cannot read {}: {e}", resolved.display()),
                )),
                Ok(text) => {
                    if let Err(e) = parse_canaries(&text) {
                        p.push(ConfigProblem::new(
                            format!("{path}.canaries"),
                            format!("{}: {e}", resolved.display()),
                        ));
                    }
                }
            }
        }
    }
}

/// One canary line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryLine {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<CanaryMessage>>,
    response: String,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryMessage {
    role: String,
    content: String,
}

/// The canary candidates of a JSONL text (blank lines skipped), all in one group `canary`;
/// a line without an `id` is `canary-<line>`.
///
/// # Errors
/// The first line that is not a canary (with its 1-based number), or a text with none.
pub fn parse_canaries(text: &str) -> Result<Vec<Candidate>, String> {
    let mut canaries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let c: CanaryLine =
            serde_json::from_str(line).map_err(|e| format!("line {n}: not a canary: {e}"))?;
        let prompt = match (c.prompt, c.messages) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "line {n}: give either `prompt` or `messages`, not both"
                ));
            }
            (Some(content), None) => vec![ChatMessage {
                role: "user".into(),
                content,
            }],
            (None, Some(m)) => m
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
            (None, None) => return Err(format!("line {n}: a canary needs `prompt` or `messages`")),
        };
        canaries.push(Candidate {
            id: c.id.unwrap_or_else(|| format!("canary-{n}")),
            group_id: "canary".into(),
            prompt,
            response: c.response,
            reference: c.reference,
            labels: Default::default(),
        });
    }
    if canaries.is_empty() {
        return Err("no canary in the file".into());
    }
    Ok(canaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_parse_with_their_line_numbers() {
        let text = "{\"prompt\": \"2+2?\", \"response\": \"4\", \"reference\": \"4\"}\n\n\
                    {\"id\": \"c\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"response\": \"hello\"}\n";
        let c = parse_canaries(text).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].id, "canary-1");
        assert_eq!(c[0].reference.as_deref(), Some("4"));
        assert_eq!(c[1].id, "c");
        assert_eq!(c[1].prompt[0].content, "hi");
        assert!(c.iter().all(|c| c.group_id == "canary"));
        let e = parse_canaries("{\"prompt\": \"x\", \"response\": \"y\"}\n{\"response\": \"y\"}")
            .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert_eq!(parse_canaries("\n").unwrap_err(), "no canary in the file");
    }

    #[test]
    fn an_interval_without_a_file_and_an_unreadable_file_are_named() {
        let mut config = Config::default();
        config.worker.monitor.canary_interval = Duration::from_secs(60);
        let mut p = Vec::new();
        config
            .worker
            .monitor
            .problems("worker.monitor", &config, &mut p);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "worker.monitor.canaries");
        config.worker.monitor.canaries = Some("no/such/canaries.jsonl".into());
        let mut p = Vec::new();
        config
            .worker
            .monitor
            .problems("worker.monitor", &config, &mut p);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("cannot read"), "{p:?}");
    }
}
