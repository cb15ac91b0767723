//! Reward-hacking monitors: rolling statistics per profile over the last rewards a worker
//! produced, that show a policy gaming its rewards rather than getting better. Each has a
//! threshold (`[worker.monitor]`); crossing it logs a warning once (and again after it went back
//! under), and every statistic is a `rewardfleet_monitor_*` gauge.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rewardfleet_core::config::MonitorConfig;
use rewardfleet_core::{Candidate, Reward, RewardStatus};
use rewardfleet_telemetry::metrics::{label, metrics};

/// Flags whose rate is watched, with the statistic's name.
const WATCHED_FLAGS: [(&str, Watch); 4] = [
    ("judge_injection_suspected", Watch::Injection),
    ("position_inconsistent", Watch::Inconsistency),
    ("judge_disagreement", Watch::Disagreement),
    ("gate_failed:", Watch::GateFloor),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Watch {
    LengthCorrelation,
    Injection,
    Inconsistency,
    Disagreement,
    GateFloor,
}

impl Watch {
    fn name(self) -> &'static str {
        match self {
            Self::LengthCorrelation => "length_correlation",
            Self::Injection => "injection_rate",
            Self::Inconsistency => "position_inconsistency_rate",
            Self::Disagreement => "panel_disagreement_rate",
            Self::GateFloor => "gate_floor_rate",
        }
    }

    fn threshold(self, c: &MonitorConfig) -> f64 {
        match self {
            Self::LengthCorrelation => c.length_correlation,
            Self::Injection => c.injection_rate,
            Self::Inconsistency => c.position_inconsistency_rate,
            Self::Disagreement => c.panel_disagreement_rate,
            Self::GateFloor => c.gate_floor_rate,
        }
    }
}

/// One reward, as the monitors see it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    reward: f64,
    length: f64,
    /// Which of [`WATCHED_FLAGS`] it carries.
    flags: [bool; 4],
}

/// The statistics of one profile's window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MonitorStats {
    /// Rewards in the window.
    pub samples: usize,
    /// Pearson correlation of reward with response length (characters); 0 when undefined.
    pub length_correlation: f64,
    /// Share flagged as a suspected prompt injection.
    pub injection_rate: f64,
    /// Share flagged position-inconsistent by a pairwise judge.
    pub position_inconsistency_rate: f64,
    /// Share on which a judge panel disagreed.
    pub panel_disagreement_rate: f64,
    /// Share that failed a gate (rewarded with the profile's floor).
    pub gate_floor_rate: f64,
}

impl MonitorStats {
    fn get(&self, w: Watch) -> f64 {
        match w {
            Watch::LengthCorrelation => self.length_correlation,
            Watch::Injection => self.injection_rate,
            Watch::Inconsistency => self.position_inconsistency_rate,
            Watch::Disagreement => self.panel_disagreement_rate,
            Watch::GateFloor => self.gate_floor_rate,
        }
    }
}

#[derive(Default)]
struct Window {
    samples: VecDeque<Sample>,
    /// Statistics over their threshold now (warned once until they go back under).
    over: Vec<Watch>,
}

/// The monitors of one worker.
pub struct Monitor {
    config: MonitorConfig,
    profiles: Mutex<HashMap<String, Window>>,
}

const ALL: [Watch; 5] = [
    Watch::LengthCorrelation,
    Watch::Injection,
    Watch::Inconsistency,
    Watch::Disagreement,
    Watch::GateFloor,
];

impl Monitor {
    /// Monitors with `config`'s window and thresholds.
    pub fn new(config: MonitorConfig) -> Self {
        Self {
            config,
            profiles: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a scored job's rewards in (FAILED ones are left out) and returns the statistics
    /// that crossed their threshold with this job.
    pub fn observe(
        &self,
        profile: &str,
        candidates: &[Candidate],
        rewards: &[Reward],
    ) -> Vec<String> {
        if self.config.window == 0 {
            return Vec::new();
        }
        let mut profiles = self
            .profiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = profiles.entry(profile.to_owned()).or_default();
        for (c, r) in candidates.iter().zip(rewards) {
            if r.status() == RewardStatus::Failed {
                continue;
            }
            let mut flags = [false; 4];
            for (i, (prefix, _)) in WATCHED_FLAGS.iter().enumerate() {
                flags[i] = r.flags.iter().any(|f| f.starts_with(prefix));
            }
            window.samples.push_back(Sample {
                reward: r.value,
                length: c.response.chars().count() as f64,
                flags,
            });
            if window.samples.len() > self.config.window {
                window.samples.pop_front();
            }
        }
        let stats = stats(&window.samples);
        if let Some(m) = metrics() {
            for w in ALL {
                m.monitor.record(
                    stats.get(w),
                    &[
                        label("profile", profile.to_owned()),
                        label("statistic", w.name()),
                    ],
                );
            }
        }
        let mut crossed = Vec::new();
        if stats.samples < self.config.min_samples {
            return crossed;
        }
        for w in ALL {
            let value = stats.get(w);
            let threshold = w.threshold(&self.config);
            let was_over = window.over.contains(&w);
            if value > threshold && !was_over {
                window.over.push(w);
                tracing::warn!(
                    profile,
                    statistic = w.name(),
                    value,
                    threshold,
                    samples = stats.samples,
                    "reward-hacking monitor over its threshold: the policy may be gaming this profile"
                );
                crossed.push(w.name().to_owned());
            } else if value <= threshold && was_over {
                window.over.retain(|&o| o != w);
            }
        }
        crossed
    }

    /// Each profile's statistics now.
    pub fn snapshot(&self) -> HashMap<String, MonitorStats> {
        let profiles = self
            .profiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        profiles
            .iter()
            .map(|(p, w)| (p.clone(), stats(&w.samples)))
            .collect()
    }
}

fn stats(samples: &VecDeque<Sample>) -> MonitorStats {
    let n = samples.len();
    if n == 0 {
        return MonitorStats::default();
    }
    let rate = |i: usize| samples.iter().filter(|s| s.flags[i]).count() as f64 / n as f64;
    MonitorStats {
        samples: n,
        length_correlation: pearson(samples.iter().map(|s| (s.length, s.reward))),
        injection_rate: rate(0),
        position_inconsistency_rate: rate(1),
        panel_disagreement_rate: rate(2),
        gate_floor_rate: rate(3),
    }
}

/// Pearson's correlation of the pairs; 0 when either side does not vary.
fn pearson(pairs: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let n = pairs.clone().count() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = pairs
        .clone()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    // A side that does not vary (up to rounding) correlates with nothing.
    let flat = |ss: f64, mean: f64| ss <= 1e-12 * n * (1.0 + mean * mean);
    if flat(sxx, mx) || flat(syy, my) {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_matches_a_hand_calculation() {
        // x = 1,2,3,4; y = 2,4,5,9: means 2.5 and 5; deviations -1.5,-.5,.5,1.5 and -3,-1,0,4;
        // sxy = 4.5 + .5 + 0 + 6 = 11, sxx = 5, syy = 26: r = 11 / sqrt(130) = 0.964764…
        let r = pearson([(1.0, 2.0), (2.0, 4.0), (3.0, 5.0), (4.0, 9.0)].into_iter());
        assert!((r - 11.0 / 130f64.sqrt()).abs() < 1e-12, "{r}");
        assert_eq!(pearson([(1.0, 1.0), (2.0, 1.0)].into_iter()), 0.0);
    }
}
