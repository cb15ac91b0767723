//! The summary printed at the end of `rewardfleet score`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::jsonl::OutputLine;
use rewardfleet_fleet::ModelUsage;

/// Counts and statistics of a scoring run.
#[derive(Debug, Default)]
pub struct Summary {
    count: usize,
    ok: usize,
    degraded: usize,
    failed: usize,
    sum: f64,
    sum_sq: f64,
    /// FAILED rewards by reason (the error up to its first ':').
    failures: BTreeMap<String, usize>,
    /// Per component (its key in `components`): the sum of its values and how many lines had it.
    components: BTreeMap<String, (f64, usize)>,
    elapsed: Duration,
    judges: Vec<rewardfleet_judge::JudgeUsage>,
    models: Vec<ModelUsage>,
}

impl Summary {
    /// Counts one output line.
    pub fn add(&mut self, line: &OutputLine) {
        self.count += 1;
        for (name, value) in &line.components {
            let (sum, n) = self.components.entry(name.clone()).or_default();
            *sum += value;
            *n += 1;
        }
        match line.status.as_str() {
            "OK" => self.ok += 1,
            "DEGRADED" => self.degraded += 1,
            _ => {
                self.failed += 1;
                let reason = line
                    .error
                    .as_deref()
                    .map(failure_reason)
                    .unwrap_or_else(|| "unknown".into());
                *self.failures.entry(reason).or_default() += 1;
                return;
            }
        }
        self.sum += line.reward;
        self.sum_sq += line.reward * line.reward;
    }

    /// Records the judges' usage (embedded mode).
    pub fn judges(&mut self, usage: Vec<rewardfleet_judge::JudgeUsage>) {
        self.judges = usage;
    }

    /// Records the local models' usage (embedded mode).
    pub fn models(&mut self, usage: Vec<ModelUsage>) {
        self.models = usage;
    }

    /// Sets the wall time of the run.
    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
    }
}

/// The reason of an error text: `line 3: malformed JSON line: …` → `malformed JSON line`,
/// `invalid input: response: 70000 bytes; …` → `invalid input: response`.
fn failure_reason(error: &str) -> String {
    let error = match error.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map(|(_, r)| r).unwrap_or(rest),
        None => error,
    };
    let mut parts = error.splitn(3, ": ");
    match (parts.next(), parts.next()) {
        (Some(first @ "invalid input"), Some(field)) => format!("{first}: {field}"),
        (Some(first), _) => first.to_owned(),
        _ => error.to_owned(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scored = self.ok + self.degraded;
        let (mean, std) = if scored > 0 {
            let n = scored as f64;
            let mean = self.sum / n;
            (mean, (self.sum_sq / n - mean * mean).max(0.0).sqrt())
        } else {
            (f64::NAN, f64::NAN)
        };
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "scored {} candidates in {:.2}s ({:.1} candidates/s)",
            self.count,
            secs,
            if secs > 0.0 {
                self.count as f64 / secs
            } else {
                0.0
            }
        )?;
        writeln!(
            f,
            "  status: {} ok, {} degraded, {} failed",
            self.ok, self.degraded, self.failed
        )?;
        writeln!(
            f,
            "  reward: mean {mean:.4}, std {std:.4} (over ok and degraded)"
        )?;
        for (reason, n) in &self.failures {
            writeln!(f, "  failed: {n} × {reason}")?;
        }
        for (name, (sum, n)) in &self.components {
            writeln!(
                f,
                "  component {name}: mean {:.4} over {n} candidates",
                sum / *n as f64
            )?;
        }
        for u in &self.judges {
            writeln!(
                f,
                "  judge {}: {} calls ({} attempts, {} failed, {} cache hits), {} tokens ({} prompt, {} completion)",
                u.judge,
                u.calls,
                u.attempts,
                u.failed_calls,
                u.cache_hits,
                u.total_tokens(),
                u.prompt_tokens,
                u.completion_tokens
            )?;
        }
        for m in &self.models {
            writeln!(
                f,
                "  model {}: {} batches, {} sequences, {} tokens ({} padded)",
                m.model, m.batches, m.sequences, m.tokens, m.padded_tokens
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: &str, reward: f64, components: &[(&str, f64)]) -> OutputLine {
        OutputLine {
            id: Some("c".into()),
            reward,
            components: components.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
            status: status.into(),
            error: (status == "FAILED").then(|| "component \"j\" failed (timeout): slow".into()),
            flags: Vec::new(),
            line: None,
            timing: None,
        }
    }

    #[test]
    fn components_are_averaged_over_the_lines_that_have_them() {
        let mut s = Summary::default();
        s.add(&line("OK", 1.0, &[("rule", 1.0), ("sim", 0.5)]));
        s.add(&line("OK", 0.0, &[("rule", 0.0), ("sim", 0.25)]));
        s.add(&line("DEGRADED", 0.5, &[("rule", 0.5)]));
        s.add(&line("FAILED", 0.0, &[]));
        s.finish(Duration::from_secs(2));
        s.models(vec![ModelUsage {
            model: "minilm".into(),
            batches: 3,
            sequences: 12,
            tokens: 150,
            padded_tokens: 200,
        }]);
        let text = s.to_string();
        assert!(text.contains("scored 4 candidates in 2.00s"), "{text}");
        assert!(
            text.contains("  status: 2 ok, 1 degraded, 1 failed\n"),
            "{text}"
        );
        assert!(text.contains("  reward: mean 0.5000,"), "{text}");
        assert!(
            text.contains("  component rule: mean 0.5000 over 3 candidates\n"),
            "{text}"
        );
        assert!(
            text.contains("  component sim: mean 0.3750 over 2 candidates\n"),
            "{text}"
        );
        assert!(
            text.contains("  model minilm: 3 batches, 12 sequences, 150 tokens (200 padded)\n"),
            "{text}"
        );
        assert!(!text.contains("judge"), "no judges, no judge line: {text}");
    }

    #[test]
    fn reasons_group_failures() {
        assert_eq!(
            failure_reason("line 3: malformed JSON line: eof"),
            "malformed JSON line"
        );
        assert_eq!(
            failure_reason(
                "invalid input: response: 70000 bytes; limit max_response_bytes = 65536"
            ),
            "invalid input: response"
        );
        assert_eq!(
            failure_reason("component \"j\" failed (timeout): slow"),
            "component \"j\" failed (timeout)"
        );
    }
}
