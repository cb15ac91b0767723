//! Every component's scorer runs inside a span of its own (a child of the job's), and a rule's
//! time goes into `rewardfleet_rule_duration_seconds`.

use std::sync::Arc;
use std::time::Instant;

use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ComponentKind, ScoreContext, Scorer};
use rewardfleet_telemetry::metrics::{label, metrics};
use tracing::Instrument;

/// A scorer, observed.
pub(crate) struct Observed {
    component: String,
    kind: ComponentKind,
    inner: Arc<dyn Scorer>,
}

impl Observed {
    /// Wraps the scorer of `component`.
    pub(crate) fn wrap(
        component: String,
        kind: ComponentKind,
        inner: Arc<dyn Scorer>,
    ) -> Arc<dyn Scorer> {
        Arc::new(Self {
            component,
            kind,
            inner,
        })
    }
}

#[async_trait::async_trait]
impl Scorer for Observed {
    async fn score(&self, ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        let span = tracing::info_span!(
            "score",
            otel.name = %format_args!("score {}", self.component),
            rewardfleet.component = %self.component,
            rewardfleet.scorer.kind = self.kind.as_str(),
            rewardfleet.candidates = group.len(),
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let outcomes = self.inner.score(ctx, group).instrument(span.clone()).await;
        if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
            span.record("error.type", e.reason.as_str());
        }
        if self.kind == ComponentKind::Rule
            && let Some(m) = metrics()
        {
            m.rule_duration.record(
                started.elapsed().as_secs_f64(),
                &[label("rule", self.component.clone())],
            );
        }
        outcomes
    }
}
