use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::scorer::Score;

/// A scorer that reads its value from the candidate's response (a number), or fails.
struct FromResponse;

#[async_trait]
impl Scorer for FromResponse {
    async fn score(&self, _: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        group
            .iter()
            .map(|c| match c.response.parse::<f64>() {
                Ok(v) => Ok(Score::new(v)),
                Err(_) => Err(ScoreError::transient(
                    FailureReason::JudgeUnavailable,
                    "not a number",
                )),
            })
            .collect()
    }
}

/// A gate that passes when the response is shorter than 4 bytes.
struct Short;

#[async_trait]
impl Scorer for Short {
    async fn score(&self, _: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        group
            .iter()
            .map(|c| Ok(Score::pass_fail(c.response.len() < 4)))
            .collect()
    }
}

struct Constant(f64);

#[async_trait]
impl Scorer for Constant {
    async fn score(&self, _: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        group.iter().map(|_| Ok(Score::new(self.0))).collect()
    }
}

fn component(name: &str, weight: f64, scorer: Arc<dyn Scorer>) -> Component {
    Component {
        name: name.into(),
        kind: ComponentKind::Rule,
        weight,
        gate: None,
        scorer,
        fallback: None,
    }
}

fn profile(components: Vec<Component>, normalize: NormalizeKind, on_fail: OnFailure) -> Profile {
    Profile {
        name: "p".into(),
        components,
        normalize,
        clip: (-1.0, 1.0),
        on_component_failure: on_fail,
        floor: -5.0,
    }
}

fn group(responses: &[&str]) -> Vec<Candidate> {
    responses
        .iter()
        .enumerate()
        .map(|(i, r)| Candidate {
            id: format!("c{i}"),
            group_id: "g".into(),
            response: (*r).into(),
            ..Default::default()
        })
        .collect()
}

async fn run(p: &Profile, responses: &[&str]) -> Vec<Reward> {
    p.score_group(&ScoreContext::default(), &group(responses))
        .await
        .rewards
}

#[tokio::test]
async fn weighted_sum_and_components() {
    let p = profile(
        vec![
            component("a", 0.25, Arc::new(FromResponse)),
            component("b", 0.75, Arc::new(Constant(0.5))),
        ],
        NormalizeKind::None,
        OnFailure::Renormalize,
    );
    let r = run(&p, &["1"]).await;
    assert_eq!(r[0].value, 0.25 * 1.0 + 0.75 * 0.5);
    assert_eq!(r[0].components["a"], 1.0);
    assert_eq!(r[0].components["b"], 0.5);
    assert_eq!(r[0].status, RewardStatus::Ok as i32);
}

#[tokio::test]
async fn renormalize_scales_up_what_is_left_and_degrades() {
    let p = profile(
        vec![
            component("a", 1.0, Arc::new(FromResponse)),
            component("b", 1.0, Arc::new(Constant(0.5))),
        ],
        NormalizeKind::None,
        OnFailure::Renormalize,
    );
    let r = run(&p, &["x"]).await;
    assert_eq!(r[0].status, RewardStatus::Degraded as i32);
    assert_eq!(r[0].value, 1.0, "0.5 × (2 / 1)");
    assert!(
        r[0].flags
            .contains(&"component_failed:a:judge_unavailable".to_string())
    );
}

#[tokio::test]
async fn fail_policy_fails_the_reward_and_names_the_component() {
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse))],
        NormalizeKind::None,
        OnFailure::Fail,
    );
    let r = run(&p, &["x", "0.5"]).await;
    assert_eq!(r[0].status, RewardStatus::Failed as i32);
    assert!(
        r[0].error.contains("\"a\"") && r[0].error.contains("unavailable"),
        "{}",
        r[0].error
    );
    assert_eq!(
        r[1].status,
        RewardStatus::Ok as i32,
        "a bad candidate fails alone"
    );
}

#[tokio::test]
async fn failing_gate_sets_floor_and_flag_and_skips_normalisation() {
    let mut gate = component("short", 0.0, Arc::new(Short));
    gate.gate = Some(1.0);
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse)), gate],
        NormalizeKind::GroupZscore,
        OnFailure::Renormalize,
    );
    let r = run(&p, &["1", "3", "1000"]).await;
    assert_eq!(r[2].value, -5.0);
    assert!(r[2].flags.contains(&"gate_failed:short".to_string()));
    assert_eq!(r[2].components["short"], 0.0);
    // z-scores of 1 and 3 only.
    assert_eq!(r[0].value, -1.0);
    assert_eq!(r[1].value, 1.0);
}

#[tokio::test]
async fn group_rank_with_ties() {
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse))],
        NormalizeKind::GroupRank,
        OnFailure::Renormalize,
    );
    let r = run(&p, &["1", "5", "5", "9"]).await;
    let v: Vec<f64> = r.iter().map(|r| r.value).collect();
    assert_eq!(v, [0.0, 0.5, 0.5, 1.0]);
}

#[tokio::test]
async fn zscore_without_spread_is_zero_and_clip_clamps() {
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse))],
        NormalizeKind::GroupZscore,
        OnFailure::Renormalize,
    );
    assert!(run(&p, &["2", "2"]).await.iter().all(|r| r.value == 0.0));
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse))],
        NormalizeKind::Clip,
        OnFailure::Renormalize,
    );
    let v: Vec<f64> = run(&p, &["-3", "0.5", "7"])
        .await
        .iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(v, [-1.0, 0.5, 1.0]);
}

#[tokio::test]
async fn fallback_fills_failures_and_degrades() {
    let mut c = component("a", 1.0, Arc::new(FromResponse));
    c.fallback = Some(("backup".into(), Arc::new(Constant(0.25))));
    let p = profile(vec![c], NormalizeKind::None, OnFailure::Fail);
    let r = run(&p, &["x", "0.75"]).await;
    assert_eq!(r[0].status, RewardStatus::Degraded as i32);
    assert_eq!(r[0].value, 0.25);
    assert!(
        r[0].flags
            .iter()
            .any(|f| f == "fallback:a:backup:judge_unavailable"),
        "{:?}",
        r[0].flags
    );
    assert_eq!(r[1].status, RewardStatus::Ok as i32);
    assert_eq!(r[1].value, 0.75);
}

#[tokio::test]
async fn non_finite_values_are_failures() {
    let p = profile(
        vec![component("a", 1.0, Arc::new(FromResponse))],
        NormalizeKind::None,
        OnFailure::Fail,
    );
    let r = run(&p, &["NaN"]).await;
    assert_eq!(r[0].status, RewardStatus::Failed as i32);
    assert!(r[0].error.contains("non_finite"));
}
