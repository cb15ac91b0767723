//! A rule's time goes into `rewardfleet_rule_duration_seconds` (its span is the component's,
//! made once per job by the profile).

use std::sync::Arc;
use std::time::Instant;

use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ComponentKind, ScoreContext, Scorer};
use rewardfleet_telemetry::metrics::{KeyValue, label, metrics};

/// A rule's scorer, timed.
pub(crate) struct Observed {
    rule: [KeyValue; 1],
    inner: Arc<dyn Scorer>,
}

impl Observed {
    /// Times the scorer of `component` when it is a rule and metrics are on; any other scorer
    /// is returned as it is.
    pub(crate) fn wrap(
        component: String,
        kind: ComponentKind,
        inner: Arc<dyn Scorer>,
    ) -> Arc<dyn Scorer> {
        if kind != ComponentKind::Rule || metrics().is_none() {
            return inner;
        }
        Arc::new(Self {
            rule: [label("rule", component)],
            inner,
        })
    }
}

#[async_trait::async_trait]
impl Scorer for Observed {
    async fn score(&self, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        let started = Instant::now();
        let outcomes = self.inner.score(ctx, group).await;
        if let Some(m) = metrics() {
            m.rule_duration
                .record(started.elapsed().as_secs_f64(), &self.rule);
        }
        outcomes
    }

    fn has_room(&self) -> bool {
        self.inner.has_room()
    }
}
