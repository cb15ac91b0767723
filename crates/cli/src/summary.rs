//! The summary printed at the end of `rewardfleet score`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::jsonl::OutputLine;

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
    elapsed: Duration,
    judges: Vec<rewardfleet_judge::JudgeUsage>,
}

impl Summary {
    /// Counts one output line.
    pub fn add(&mut self, line: &OutputLine) {
        self.count += 1;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
