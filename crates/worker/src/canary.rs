//! Canary drift: every `worker.monitor.canary_interval`, each judge component of each profile
//! scores the same canary candidates again through the real judge path, asked afresh (no verdict
//! cache), and the [`Monitor`] compares its mean score with the first run's. A judge model that
//! changes under the fleet (a new version behind the same name, a changed system prompt, a
//! quantised deployment) shows as drift while the policy's rewards alone could not tell it from
//! a policy getting better or worse.
//!
//! The canaries are scored as one group (`canary`), so pairwise components compare them with
//! each other: their mean stays near the middle whatever the judge does, and only rubric,
//! logprob, reference and factuality judges show drift.

use std::sync::Arc;
use std::time::Duration;

use rewardfleet_core::{Candidate, ComponentKind, Pipeline, ScoreContext};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::Monitor;

/// The session every canary run is scored in (judges keep token budgets per session).
pub const CANARY_SESSION: &str = "rewardfleet-canary";

/// Scores `canaries` with every judge component every `interval` (the first run at once)
/// until `stop` fires, into `monitor`.
pub(crate) async fn run(
    pipeline: Pipeline,
    monitor: Arc<Monitor>,
    canaries: Vec<Candidate>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut run = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        run += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = score_once(&pipeline, &monitor, &canaries, run) => {}
        }
    }
}

/// One canary run: each judge component of each profile, concurrently.
async fn score_once(pipeline: &Pipeline, monitor: &Monitor, canaries: &[Candidate], run: u64) {
    let mut profiles: Vec<_> = pipeline.profiles().iter().collect();
    profiles.sort_by(|a, b| a.0.cmp(b.0));
    let runs = profiles.into_iter().flat_map(|(name, profile)| {
        profile
            .components
            .iter()
            .filter(|c| c.kind == ComponentKind::Judge)
            .map(move |c| {
                let ctx = ScoreContext {
                    session_id: CANARY_SESSION.into(),
                    job_id: format!("canary.{name}.{run}"),
                    profile: name.clone(),
                    fresh: true,
                    ..ScoreContext::default()
                };
                async move {
                    let outcomes = c.scorer.score(&ctx, canaries).await;
                    (name, &c.name, outcomes)
                }
            })
    });
    for (profile, judge, outcomes) in futures::future::join_all(runs).await {
        let values: Vec<f64> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().map(|s| s.value))
            .collect();
        let failed = outcomes.len() - values.len();
        if values.is_empty() {
            let error = outcomes
                .iter()
                .find_map(|o| o.as_ref().err().map(ToString::to_string))
                .unwrap_or_default();
            tracing::warn!(profile = %profile, judge = %judge, run, error, "no canary could be scored; this run is left out");
            continue;
        }
        if failed > 0 {
            tracing::debug!(profile = %profile, judge = %judge, run, failed, "some canaries were not scored");
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let stats = monitor.observe_canaries(profile, judge, mean);
        tracing::debug!(profile = %profile, judge = %judge, run, mean, drift = stats.drift(), "canaries scored");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use rewardfleet_core::config::{MonitorConfig, NormalizeKind, OnFailure};
    use rewardfleet_core::scorer::Outcome;
    use rewardfleet_core::{Component, Profile, Score, Scorer};

    use super::*;

    /// A judge whose scores rise by `step` at each call, and that says whether it was asked
    /// afresh; and a rule that must never be run as a canary.
    struct Drifting {
        calls: AtomicU64,
        step: f64,
        kind: ComponentKind,
    }

    #[async_trait]
    impl Scorer for Drifting {
        async fn score(&self, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
            assert!(ctx.fresh, "canaries are scored afresh");
            assert_eq!(ctx.session_id, CANARY_SESSION);
            assert_ne!(self.kind, ComponentKind::Rule, "rules have no canaries");
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as f64;
            group
                .iter()
                .map(|_| Ok(Score::new(0.5 + n * self.step)))
                .collect()
        }
    }

    fn component(name: &str, kind: ComponentKind, step: f64) -> Component {
        Component {
            name: name.into(),
            kind,
            weight: 1.0,
            gate: None,
            scorer: Arc::new(Drifting {
                calls: AtomicU64::new(0),
                step,
                kind,
            }),
            fallback: None,
        }
    }

    #[tokio::test]
    async fn each_judge_component_drifts_from_its_first_run() {
        let profile = Profile {
            name: "p".into(),
            components: vec![
                component("steady", ComponentKind::Judge, 0.0),
                component("drifting", ComponentKind::Judge, 0.1),
                component("rule", ComponentKind::Rule, 0.0),
            ],
            normalize: NormalizeKind::None,
            clip: (0.0, 1.0),
            on_component_failure: OnFailure::Fail,
            floor: 0.0,
        };
        let pipeline = Pipeline::new(HashMap::from([("p".to_owned(), Arc::new(profile))]));
        let monitor = Monitor::new(MonitorConfig {
            canary_drift: 0.15,
            ..MonitorConfig::default()
        });
        let canaries = vec![Candidate {
            id: "c".into(),
            response: "4".into(),
            ..Candidate::default()
        }];
        for run in 1..=3 {
            score_once(&pipeline, &monitor, &canaries, run).await;
        }
        let c = monitor.canaries();
        assert_eq!(c.len(), 2, "{c:?}");
        let steady = c[&("p".to_owned(), "steady".to_owned())];
        assert_eq!((steady.runs, steady.drift()), (3, 0.0));
        let drifting = c[&("p".to_owned(), "drifting".to_owned())];
        assert!((drifting.drift() - 0.2).abs() < 1e-12, "{drifting:?}");
        let over: Vec<_> = monitor
            .summary()
            .canaries
            .into_iter()
            .filter(|c| c.over)
            .collect();
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].judge, "drifting");
    }
}
