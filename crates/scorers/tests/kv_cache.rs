//! The judges' verdict cache in a NATS KV bucket, against a real nats-server and the fake judge:
//! shared by the judge sets of several workers, and keeping the failures that a redelivered job
//! must not send again.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rewardfleet_core::config::{ComponentConfig, JudgeConfig};
use rewardfleet_core::profile::{Component, ComponentKind, OnComponentFailure, Profile};
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, ChatMessage, Reward, RewardStatus, ScoreContext, Scorer};
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig, Fault};
use rewardfleet_judge::{JudgeCache, JudgeSet};
use rewardfleet_scorers::kv_cache::judge_cache;

const BUCKET: &str = "RF_JUDGE_CACHE";

fn judge_config(name: &str, fake: &FakeJudge) -> JudgeConfig {
    JudgeConfig {
        name: name.into(),
        base_url: fake.base_url(),
        model: "fake-judge".into(),
        requests_per_second: 10_000.0,
        timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(5),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        cache_ttl: Duration::from_secs(60),
        ..JudgeConfig::default()
    }
}

/// One worker's judges, with a rubric in a temporary directory.
struct Rig {
    _dir: tempfile::TempDir,
    base: std::path::PathBuf,
    set: JudgeSet,
}

fn rig(judges: &[JudgeConfig], cache: JudgeCache) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("helpful.md"),
        "Score how helpful, correct and clear the response is.",
    )
    .unwrap();
    let set = JudgeSet::new(judges, HashMap::new(), cache).unwrap();
    Rig {
        base: dir.path().to_owned(),
        _dir: dir,
        set,
    }
}

impl Rig {
    fn scorer(&self, toml_text: &str) -> Arc<dyn Scorer> {
        let component: ComponentConfig = toml::from_str(toml_text).unwrap();
        self.set
            .component(&component, &self.base)
            .unwrap_or_else(|p| panic!("{p:?}"))
    }
}

fn candidate(id: &str, response: &str) -> Candidate {
    Candidate {
        id: id.into(),
        group_id: "g".into(),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: "What is 6 × 7?".into(),
        }],
        response: response.into(),
        ..Candidate::default()
    }
}

fn ctx() -> ScoreContext {
    ScoreContext {
        session_id: "s".into(),
        ..ScoreContext::default()
    }
}

fn value(o: &Outcome) -> f64 {
    o.as_ref().unwrap_or_else(|e| panic!("{e}")).value
}

const COMPONENT: &str = r#"scorer = "j"
method = "rubric"
rubric = "helpful.md""#;

#[tokio::test]
async fn nats_kv_cache_is_shared_by_judge_sets_and_hits_make_no_call() {
    let nats = rewardfleet_testkit::NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let fake = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
    let config = judge_config("j", &fake);
    // Two workers: two judge sets over one bucket.
    let cache = judge_cache(&js, BUCKET, Duration::from_secs(3600))
        .await
        .unwrap();
    let worker_a = rig(std::slice::from_ref(&config), cache);
    let worker_b = rig(
        std::slice::from_ref(&config),
        judge_cache(&js, BUCKET, Duration::from_secs(3600))
            .await
            .unwrap(),
    );
    let a = worker_a
        .scorer(COMPONENT)
        .score(&ctx(), &[candidate("a", "quality:4")])
        .await;
    let b = worker_b
        .scorer(COMPONENT)
        .score(&ctx(), &[candidate("a", "quality:4")])
        .await;
    assert!((value(&a[0]) - 3.0 / 9.0).abs() < 1e-9);
    assert_eq!(a, b);
    assert_eq!(fake.calls(), 1);
    assert_eq!(worker_b.set.usage()[0].cache_hits, 1);
    drop(nats);
}

/// One delivery of a job as a worker scores it: the rewards, and whether the job goes back to
/// the queue (a FAILED reward whose failure may pass).
async fn deliver(scorer: Arc<dyn Scorer>, group: &[Candidate]) -> (Vec<Reward>, bool) {
    let profile = Profile {
        name: "p".into(),
        components: vec![Component {
            name: "judge".into(),
            kind: ComponentKind::Judge,
            weight: 1.0,
            gate: None,
            scorer,
            fallback: None,
        }],
        normalize: Default::default(),
        clip: (0.0, 1.0),
        on_component_failure: OnComponentFailure::Fail,
        floor: 0.0,
    };
    let outcome = profile.score_group(&ctx(), group).await;
    (outcome.rewards, outcome.retry)
}

#[tokio::test]
async fn a_job_redelivered_to_another_worker_does_not_send_the_judge_what_it_refused() {
    let nats = rewardfleet_testkit::NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let fake = FakeJudge::start(FakeJudgeConfig {
        script: vec![Fault::BadRequest, Fault::Unavailable { retry_after: None }],
        ..FakeJudgeConfig::default()
    })
    .await
    .unwrap();
    let mut config = judge_config("j", &fake);
    // No retry in the stack: the 503 fails this delivery, as retries that ran out would.
    config.max_retries = 0;
    let cache = || judge_cache(&js, BUCKET, Duration::from_secs(3600));
    let first = rig(std::slice::from_ref(&config), cache().await.unwrap());
    let second = rig(std::slice::from_ref(&config), cache().await.unwrap());

    let group = [
        candidate("a", "quality:3 first of the group"),
        candidate("b", "quality:8 second of the group"),
    ];
    let (rewards, redeliver) = deliver(first.scorer(COMPONENT), &group).await;
    assert!(
        redeliver,
        "a 503 after retries sends the job back: {rewards:?}"
    );
    // The fake answers its calls in arrival order: find which candidate got the 400.
    let refused = rewards
        .iter()
        .position(|r| r.error.contains("judge_rejected"))
        .unwrap_or_else(|| panic!("no candidate was refused: {rewards:?}"));
    let flaky = 1 - refused;
    assert!(
        rewards[flaky].error.contains("judge_unavailable"),
        "{rewards:?}"
    );
    assert_eq!(fake.calls(), 2);

    let (again, redeliver) = deliver(second.scorer(COMPONENT), &group).await;
    assert!(!redeliver, "{again:?}");
    assert_eq!(
        again[refused], rewards[refused],
        "the same permanent failure"
    );
    assert_eq!(again[refused].status, RewardStatus::Failed as i32);
    assert_eq!(again[flaky].status, RewardStatus::Ok as i32, "{again:?}");
    assert_eq!(
        fake.calls(),
        3,
        "only the candidate that failed for a passing reason"
    );
    let sent = |response: &str| {
        fake.requests()
            .iter()
            .filter(|r| {
                r.body["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .contains(response)
            })
            .count()
    };
    assert_eq!(sent(&group[refused].response), 1);
    assert_eq!(sent(&group[flaky].response), 2);
    assert_eq!(second.set.usage()[0].cache_hits, 1);
    drop(nats);
}
