//! Reward-hacking monitors: rolling statistics over the last rewards a worker produced, per
//! profile and per (profile, session) for the most recently active sessions, that show a policy
//! gaming its rewards rather than getting better; and the drift of each judge's mean score on
//! fixed canary candidates (see `canary.rs`). Each has a threshold (`[worker.monitor]`);
//! crossing it logs a warning once (and again after it went back under).
//!
//! Metrics: `rewardfleet_monitor{profile,statistic}` per profile (and
//! `{profile,statistic,judge}` for canaries); `rewardfleet_monitor_session{profile,session,
//! statistic}` for the sessions kept, read at each collection, so that a forgotten session's
//! series leave the endpoint and the series stay bounded by `worker.monitor.sessions`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;
use rewardfleet_core::config::MonitorConfig;
use rewardfleet_core::{Candidate, Reward, RewardStatus};
use rewardfleet_queue::jetstream::{
    CanaryDrift, MonitorScope, MonitorStatistic, MonitorSummary, SUMMARY_SESSIONS,
};
use rewardfleet_telemetry::metrics::{KeyValue, SessionMonitors, label, metrics};

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

const ALL: [Watch; 5] = [
    Watch::LengthCorrelation,
    Watch::Injection,
    Watch::Inconsistency,
    Watch::Disagreement,
    Watch::GateFloor,
];

/// One reward, as the monitors see it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    reward: f64,
    length: f64,
    /// Which of [`WATCHED_FLAGS`] it carries.
    flags: [bool; 4],
}

/// The statistics of one window (a profile's or a session's).
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

/// One session's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStats {
    /// The profile its rewards were scored with.
    pub profile: String,
    /// The trainer session.
    pub session: String,
    /// Its window's statistics.
    pub stats: MonitorStats,
}

/// One judge component's canary runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CanaryStats {
    /// Mean canary score of the first run.
    pub baseline: f64,
    /// Mean canary score of the latest run.
    pub mean: f64,
    /// Runs so far.
    pub runs: u64,
}

impl CanaryStats {
    /// The latest mean less the first.
    pub fn drift(&self) -> f64 {
        self.mean - self.baseline
    }
}

/// A statistic that went over its threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// The session whose own window crossed; `None` for the profile's window.
    pub session: Option<String>,
    /// The statistic.
    pub statistic: &'static str,
    /// Its value.
    pub value: f64,
    /// Its threshold.
    pub threshold: f64,
}

#[derive(Default)]
struct Window {
    samples: VecDeque<Sample>,
    /// Statistics over their threshold now (warned once until they go back under).
    over: Vec<Watch>,
}

impl Window {
    /// Takes `samples` in (the oldest leave past `cap`) and returns the window's statistics.
    fn push(&mut self, samples: &[Sample], cap: usize) -> MonitorStats {
        for s in samples {
            self.samples.push_back(*s);
            if self.samples.len() > cap {
                self.samples.pop_front();
            }
        }
        stats(&self.samples)
    }

    /// Which statistics crossed their threshold now (and forgets those back under).
    fn crossings(&mut self, stats: &MonitorStats, config: &MonitorConfig) -> Vec<Watch> {
        let mut crossed = Vec::new();
        if stats.samples < config.min_samples {
            return crossed;
        }
        for w in ALL {
            let over = stats.get(w) > w.threshold(config);
            let was_over = self.over.contains(&w);
            if over && !was_over {
                self.over.push(w);
                crossed.push(w);
            } else if !over && was_over {
                self.over.retain(|&o| o != w);
            }
        }
        crossed
    }
}

/// A judge component's canary state.
#[derive(Default)]
struct Canary {
    stats: CanaryStats,
    over: bool,
}

struct State {
    profiles: HashMap<String, Window>,
    /// By (profile, session), most recently active first.
    sessions: Option<LruCache<(String, String), Window>>,
    /// By (profile, judge component).
    canaries: BTreeMap<(String, String), Canary>,
}

/// The monitors of one worker.
pub struct Monitor {
    config: MonitorConfig,
    state: Mutex<State>,
}

impl Monitor {
    /// Monitors with `config`'s windows and thresholds; their sessions are exported as
    /// `rewardfleet_monitor_session` for as long as they live.
    pub fn new(config: MonitorConfig) -> Arc<Self> {
        let sessions = (config.window > 0)
            .then(|| NonZeroUsize::new(config.sessions).map(LruCache::new))
            .flatten();
        let monitor = Arc::new(Self {
            config,
            state: Mutex::new(State {
                profiles: HashMap::new(),
                sessions,
                canaries: BTreeMap::new(),
            }),
        });
        let weak = Arc::downgrade(&monitor);
        rewardfleet_telemetry::metrics::add_session_monitors(weak);
        monitor
    }

    /// Its settings.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a scored job's rewards in (FAILED ones are left out), into its profile's window
    /// and its session's, and returns the statistics that crossed their threshold with them
    /// (each also logged as a warning).
    pub fn observe(
        &self,
        profile: &str,
        session: &str,
        candidates: &[Candidate],
        rewards: &[Reward],
    ) -> Vec<Crossing> {
        if self.config.window == 0 {
            return Vec::new();
        }
        let samples: Vec<Sample> = candidates
            .iter()
            .zip(rewards)
            .filter(|(_, r)| r.status() != RewardStatus::Failed)
            .map(|(c, r)| {
                let mut flags = [false; 4];
                for (i, (prefix, _)) in WATCHED_FLAGS.iter().enumerate() {
                    flags[i] = r.flags.iter().any(|f| f.starts_with(prefix));
                }
                Sample {
                    reward: r.value,
                    length: c.response.chars().count() as f64,
                    flags,
                }
            })
            .collect();
        let mut state = self.state();
        let window = state.profiles.entry(profile.to_owned()).or_default();
        let stats = window.push(&samples, self.config.window);
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
        for w in window.crossings(&stats, &self.config) {
            let (value, threshold) = (stats.get(w), w.threshold(&self.config));
            tracing::warn!(
                profile,
                statistic = w.name(),
                value,
                threshold,
                samples = stats.samples,
                "reward-hacking monitor over its threshold: the policy may be gaming this profile"
            );
            crossed.push(Crossing {
                session: None,
                statistic: w.name(),
                value,
                threshold,
            });
        }
        let Some(sessions) = state.sessions.as_mut() else {
            return crossed;
        };
        let key = (profile.to_owned(), session.to_owned());
        if !sessions.contains(&key)
            && sessions.len() == sessions.cap().get()
            && let Some(((p, s), _)) = sessions.pop_lru()
        {
            tracing::debug!(profile = %p, session = %s, "session monitors forgotten (worker.monitor.sessions)");
        }
        let window = sessions.get_or_insert_mut(key, Window::default);
        let stats = window.push(&samples, self.config.window);
        for w in window.crossings(&stats, &self.config) {
            let (value, threshold) = (stats.get(w), w.threshold(&self.config));
            tracing::warn!(
                profile,
                session,
                statistic = w.name(),
                value,
                threshold,
                samples = stats.samples,
                "reward-hacking monitor over its threshold in one session: its policy may be gaming this profile"
            );
            crossed.push(Crossing {
                session: Some(session.to_owned()),
                statistic: w.name(),
                value,
                threshold,
            });
        }
        crossed
    }

    /// Records a canary run of `judge` (a judge component of `profile`): the mean score of the
    /// canaries it scored. The first run is the baseline; a drift past `canary_drift` either way
    /// logs a warning. Returns the component's canary statistics now.
    pub fn observe_canaries(&self, profile: &str, judge: &str, mean: f64) -> CanaryStats {
        let mut state = self.state();
        let canary = state
            .canaries
            .entry((profile.to_owned(), judge.to_owned()))
            .or_default();
        if canary.stats.runs == 0 {
            canary.stats.baseline = mean;
        }
        canary.stats.mean = mean;
        canary.stats.runs += 1;
        let stats = canary.stats;
        let drift = stats.drift();
        let threshold = self.config.canary_drift;
        if let Some(m) = metrics() {
            for (statistic, value) in [("canary_mean", mean), ("canary_drift", drift)] {
                m.monitor.record(
                    value,
                    &[
                        label("profile", profile.to_owned()),
                        label("statistic", statistic),
                        label("judge", judge.to_owned()),
                    ],
                );
            }
        }
        let over = drift.abs() > threshold;
        if over && !canary.over {
            tracing::warn!(
                profile,
                judge,
                baseline = stats.baseline,
                mean,
                drift,
                threshold,
                runs = stats.runs,
                "canary drift over its threshold: the judge scores the same canaries differently \
                 than at its first run (its model or endpoint may have changed)"
            );
        }
        canary.over = over;
        stats
    }

    /// Each profile's statistics now.
    pub fn snapshot(&self) -> HashMap<String, MonitorStats> {
        self.state()
            .profiles
            .iter()
            .map(|(p, w)| (p.clone(), stats(&w.samples)))
            .collect()
    }

    /// The statistics of the sessions kept, most recently active first.
    pub fn sessions(&self) -> Vec<SessionStats> {
        let state = self.state();
        let Some(sessions) = &state.sessions else {
            return Vec::new();
        };
        sessions
            .iter()
            .map(|((profile, session), w)| SessionStats {
                profile: profile.clone(),
                session: session.clone(),
                stats: stats(&w.samples),
            })
            .collect()
    }

    /// Each judge component's canary statistics, by (profile, component).
    pub fn canaries(&self) -> BTreeMap<(String, String), CanaryStats> {
        self.state()
            .canaries
            .iter()
            .map(|(k, c)| (k.clone(), c.stats))
            .collect()
    }

    /// Everything, compact, for the worker's heartbeat (`rewardfleet status`): profiles by
    /// name, the [`SUMMARY_SESSIONS`] most recently active sessions, and the canaries.
    pub fn summary(&self) -> MonitorSummary {
        let scope = |profile: &str, session: Option<&str>, s: &MonitorStats| MonitorScope {
            profile: profile.to_owned(),
            session: session.map(str::to_owned),
            samples: s.samples,
            statistics: ALL
                .iter()
                .map(|&w| MonitorStatistic {
                    name: w.name().to_owned(),
                    value: s.get(w),
                    threshold: w.threshold(&self.config),
                    over: s.samples >= self.config.min_samples
                        && s.get(w) > w.threshold(&self.config),
                })
                .collect(),
        };
        let mut profiles: Vec<(String, MonitorStats)> = self.snapshot().into_iter().collect();
        profiles.sort_by(|a, b| a.0.cmp(&b.0));
        MonitorSummary {
            profiles: profiles.iter().map(|(p, s)| scope(p, None, s)).collect(),
            sessions: self
                .sessions()
                .iter()
                .take(SUMMARY_SESSIONS)
                .map(|s| scope(&s.profile, Some(&s.session), &s.stats))
                .collect(),
            canaries: self
                .canaries()
                .into_iter()
                .map(|((profile, judge), c)| CanaryDrift {
                    profile,
                    judge,
                    baseline: c.baseline,
                    mean: c.mean,
                    drift: c.drift(),
                    threshold: self.config.canary_drift,
                    over: c.drift().abs() > self.config.canary_drift,
                    runs: c.runs,
                })
                .collect(),
        }
    }
}

impl SessionMonitors for Monitor {
    fn observe_sessions(&self, record: &mut dyn FnMut(f64, &[KeyValue])) {
        for s in self.sessions() {
            for w in ALL {
                record(
                    s.stats.get(w),
                    &[
                        label("profile", s.profile.clone()),
                        label("session", s.session.clone()),
                        label("statistic", w.name()),
                    ],
                );
            }
        }
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

    fn scored(response: &str, value: f64) -> (Candidate, Reward) {
        (
            Candidate {
                response: response.into(),
                ..Candidate::default()
            },
            Reward {
                value,
                status: RewardStatus::Ok as i32,
                ..Reward::default()
            },
        )
    }

    /// Two sessions on one profile: the one whose rewards follow its lengths crosses in its
    /// own window, the other does not; the third session pushes out the least recently
    /// active one.
    #[test]
    fn sessions_have_windows_of_their_own_and_the_oldest_is_forgotten() {
        let monitor = Monitor::new(MonitorConfig {
            window: 50,
            min_samples: 20,
            sessions: 2,
            ..MonitorConfig::default()
        });
        let mut crossed = Vec::new();
        for i in 0..30 {
            let (c, r) = scored(&"x".repeat(10 + i), i as f64);
            crossed.extend(monitor.observe("p", "gaming", &[c], &[r]));
            // Lengths vary; rewards do not follow them.
            let (c, r) = scored(&"y".repeat(10 + (i * 7) % 13), (i % 2) as f64);
            crossed.extend(monitor.observe("p", "honest", &[c], &[r]));
        }
        let gaming: Vec<&Crossing> = crossed
            .iter()
            .filter(|c| c.session.as_deref() == Some("gaming"))
            .collect();
        assert_eq!(gaming.len(), 1, "{crossed:?}");
        assert_eq!(gaming[0].statistic, "length_correlation");
        assert!(
            crossed
                .iter()
                .all(|c| c.session.as_deref() != Some("honest")),
            "{crossed:?}"
        );
        let sessions = monitor.sessions();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].session, "honest", "most recently active first");
        assert!(sessions[1].stats.length_correlation > 0.99, "{sessions:?}");
        assert!(
            sessions[0].stats.length_correlation.abs() < 0.5,
            "{sessions:?}"
        );

        let (c, r) = scored("z", 1.0);
        monitor.observe("p", "third", &[c], &[r]);
        let kept: Vec<String> = monitor.sessions().into_iter().map(|s| s.session).collect();
        assert_eq!(kept, ["third", "honest"]);
        let summary = monitor.summary();
        assert_eq!(summary.profiles.len(), 1);
        assert_eq!(summary.sessions.len(), 2);
        assert_eq!(
            summary.profiles[0].samples, 50,
            "the window keeps the last 50"
        );
    }

    #[test]
    fn canary_drift_is_measured_from_the_first_run_and_warns_either_way() {
        let monitor = Monitor::new(MonitorConfig {
            canary_drift: 0.1,
            ..MonitorConfig::default()
        });
        assert_eq!(monitor.observe_canaries("p", "j", 0.5).drift(), 0.0);
        assert_eq!(monitor.observe_canaries("p", "j", 0.55).drift(), 0.55 - 0.5);
        let s = monitor.observe_canaries("p", "j", 0.3);
        assert_eq!((s.baseline, s.mean, s.runs), (0.5, 0.3, 3));
        let summary = monitor.summary();
        assert_eq!(summary.canaries.len(), 1);
        assert!(summary.canaries[0].over, "{summary:?}");
        assert_eq!(
            summary.over(),
            [("p".to_owned(), None, "canary_drift:j".to_owned())]
        );
    }
}
