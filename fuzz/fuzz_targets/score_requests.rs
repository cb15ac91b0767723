//! The gateway's validation of `Score` streams: arbitrary sequences of `ScoreRequest`s, on one
//! or more streams (a later stream may resume an earlier one's session), run through the real
//! session state machine over the in-process queue, with a worker that answers every job.
//!
//! Checked against a model of the contract (README, "The trainer API"): `opened` first; one
//! `accepted` per valid batch, in order; every reward is for a candidate accepted in the
//! session, at most once per stream, FAILED exactly when the candidate breaks a `[limits]`
//! check; a stream with a contract breach (bad `open`, a second `open`, an empty request, an
//! invalid batch, an undecodable message) ends with `INVALID_ARGUMENT` and nothing else, one
//! naming a profile its tenant may not use with `PERMISSION_DENIED`; `closed` comes only once
//! every candidate ever accepted in the session has had its reward (on this stream or an earlier
//! one), and carries the count sent on this stream; once a stream has ended, the gateway counts
//! no session open and no candidate in flight; nothing hangs. Streams run anonymously, or as a
//! tenant that may use profile `a` only.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use rewardfleet_core::config::Config;
use rewardfleet_core::{Candidate, ChatMessage, JobResult, Reward, RewardStatus};
use rewardfleet_gateway::Gateway;
use rewardfleet_proto::v1::{
    Batch, Close, ScoreRequest, ScoreResponse, SessionOpen, score_request, score_response,
};
use rewardfleet_queue::{InProcessQueue, Queue};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Small limits, so that the fuzzer reaches each of them.
const CONFIG: &str = r#"
[gateway]
default_profile = "a"
max_in_flight = 4
max_window = 8

[limits]
max_batch_candidates = 8
max_group_size = 3
max_response_bytes = 32
max_prompt_messages = 2
max_prompt_bytes = 64
max_reference_bytes = 16
max_id_bytes = 8

[jobs]
max_candidates = 4
max_bytes = 4096

[profile.a]
components = [{ rule = "exact_match" }]

[profile.b]
components = [{ rule = "max_chars", limit = 10 }]
"#;

/// The tenant of the streams that run as one: profile `a` only.
const TENANT: &str = r#"
[[tenant]]
name = "t"
token_env = "RF_FUZZ_TENANT_TOKEN"
profiles = ["a"]
"#;

/// Candidate ids: few, so that they repeat; no more than the ids a session remembers as
/// rewarded with the smallest window (4 × 1 + max_batch_candidates), so that every repeat on a
/// stream is one the gateway must refuse. Then an empty one and one over `max_id_bytes`.
const IDS: &[&str] = &[
    "c0",
    "c1",
    "c2",
    "c3",
    "c4",
    "c5",
    "c6",
    "c7",
    "c8",
    "c9",
    "c10",
    "c11",
    "",
    "c-too-long",
];
const GROUPS: &[&str] = &["", "", "g0", "g1", "g2", "g-too-long"];
const SESSIONS: &[&str] = &["", "s1", "s2", "bad id!"];
const PROFILES: &[&str] = &["", "a", "b", "unknown"];
const ROLES: &[&str] = &["user", "assistant", "system", "robot"];

#[derive(Debug, Arbitrary)]
struct Message {
    role: u8,
    content: String,
}

#[derive(Debug, Arbitrary)]
struct Cand {
    id: u8,
    group: u8,
    prompt: Vec<Message>,
    response: String,
    reference: Option<String>,
}

#[derive(Debug, Arbitrary)]
enum Req {
    Open {
        session: u8,
        profile: u8,
        max_in_flight: u8,
    },
    Batch {
        profile: u8,
        candidates: Vec<Cand>,
    },
    Close,
    Empty,
    /// The transport failed to read a message: undecodable (the caller's fault) or a broken
    /// stream (the caller left).
    Broken {
        undecodable: bool,
    },
}

fn pick<'a>(names: &[&'a str], i: u8) -> &'a str {
    names[usize::from(i) % names.len()]
}

fn candidate(c: &Cand) -> Candidate {
    Candidate {
        id: pick(IDS, c.id).to_owned(),
        group_id: pick(GROUPS, c.group).to_owned(),
        prompt: c
            .prompt
            .iter()
            .map(|m| ChatMessage {
                role: pick(ROLES, m.role).to_owned(),
                content: m.content.clone(),
            })
            .collect(),
        response: c.response.clone(),
        reference: c.reference.clone(),
        labels: HashMap::new(),
    }
}

fn request(r: &Req) -> Result<ScoreRequest, Status> {
    let kind = match r {
        Req::Open {
            session,
            profile,
            max_in_flight,
        } => Some(score_request::Kind::Open(SessionOpen {
            session_id: pick(SESSIONS, *session).to_owned(),
            profile: pick(PROFILES, *profile).to_owned(),
            max_in_flight: u32::from(*max_in_flight % 10),
        })),
        Req::Batch {
            profile,
            candidates,
        } => Some(score_request::Kind::Batch(Batch {
            candidates: candidates.iter().map(candidate).collect(),
            profile: pick(PROFILES, *profile).to_owned(),
        })),
        Req::Close => Some(score_request::Kind::Close(Close {})),
        Req::Empty => None,
        Req::Broken { undecodable: true } => {
            return Err(Status::internal(
                "failed to decode Protobuf message: Candidate.id: invalid string value",
            ));
        }
        Req::Broken { undecodable: false } => return Err(Status::cancelled("stream reset")),
    };
    Ok(ScoreRequest { kind })
}

/// How the model says a stream ends.
#[derive(Debug, PartialEq)]
enum End {
    Closed,
    Invalid,
    Denied,
    Left,
}

/// What the model expects of one stream.
struct Expected {
    /// The session's id and window, when `open` is valid.
    opened: Option<(String, String, u32)>,
    /// The sizes of the batches to be accepted, in order.
    batches: Vec<Vec<Candidate>>,
    end: End,
}

/// Whether a batch passes the gateway's batch checks, given the ids submitted on this stream.
fn valid_batch(candidates: &[Candidate], submitted: &HashSet<String>) -> bool {
    if candidates.is_empty() || candidates.len() > 8 {
        return false;
    }
    let mut ids = HashSet::new();
    let mut groups: HashMap<&str, usize> = HashMap::new();
    for c in candidates {
        if c.id.is_empty() || c.id.len() > 8 || c.group_id.len() > 8 {
            return false;
        }
        if !ids.insert(c.id.as_str()) || submitted.contains(&c.id) {
            return false;
        }
        if !c.group_id.is_empty() {
            let n = groups.entry(c.group_id.as_str()).or_default();
            *n += 1;
            if *n > 3 {
                return false;
            }
        }
    }
    true
}

/// Whether a candidate breaks a per-candidate limit (and gets a FAILED reward).
fn rejected(c: &Candidate) -> bool {
    let prompt_bytes: usize = c
        .prompt
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    c.response.len() > 32
        || c.prompt.len() > 2
        || prompt_bytes > 64
        || c.prompt.iter().any(|m| m.role == "robot")
        || c.reference.as_ref().is_some_and(|r| r.len() > 16)
}

/// Whether `profile` (as resolved) is refused to the caller.
fn denied(tenant: bool, profile: &str) -> bool {
    tenant && profile == "b"
}

fn expect(requests: &[Req], tenant: bool) -> Expected {
    let refused = |end| Expected {
        opened: None,
        batches: Vec::new(),
        end,
    };
    let invalid = || refused(End::Invalid);
    let (session, profile, window) = match requests.first() {
        None | Some(Req::Broken { undecodable: false }) => {
            return Expected {
                opened: None,
                batches: Vec::new(),
                end: End::Left,
            };
        }
        Some(Req::Open {
            session,
            profile,
            max_in_flight,
        }) => {
            let session = pick(SESSIONS, *session);
            let profile = match pick(PROFILES, *profile) {
                "" => "a",
                p => p,
            };
            let window = u32::from(*max_in_flight % 10);
            if session.contains(' ') || profile == "unknown" || window > 8 {
                return invalid();
            }
            if denied(tenant, profile) {
                return refused(End::Denied);
            }
            (session, profile, if window == 0 { 4 } else { window })
        }
        Some(_) => return invalid(),
    };
    let mut expected = Expected {
        opened: Some((session.to_owned(), profile.to_owned(), window)),
        batches: Vec::new(),
        end: End::Closed,
    };
    let mut submitted = HashSet::new();
    for r in &requests[1..] {
        match r {
            Req::Close => break,
            Req::Open { .. } | Req::Empty | Req::Broken { undecodable: true } => {
                expected.end = End::Invalid;
                break;
            }
            Req::Broken { undecodable: false } => {
                expected.end = End::Left;
                break;
            }
            Req::Batch {
                profile,
                candidates,
            } => {
                let candidates: Vec<Candidate> = candidates.iter().map(candidate).collect();
                let batch_profile = match pick(PROFILES, *profile) {
                    "" => profile_name(&expected),
                    p => p,
                };
                if batch_profile == "unknown" {
                    expected.end = End::Invalid;
                    break;
                }
                if denied(tenant, batch_profile) {
                    expected.end = End::Denied;
                    break;
                }
                if !valid_batch(&candidates, &submitted) {
                    expected.end = End::Invalid;
                    break;
                }
                submitted.extend(candidates.iter().map(|c| c.id.clone()));
                expected.batches.push(candidates);
            }
        }
    }
    expected
}

/// The session's profile, once opened.
fn profile_name(expected: &Expected) -> &'static str {
    match expected.opened.as_ref().map(|(_, p, _)| p.as_str()) {
        Some("b") => "b",
        _ => "a",
    }
}

/// A worker that answers every job at once: OK rewards for all its candidates.
async fn worker(queue: Arc<InProcessQueue>) {
    let Ok(mut jobs) = queue.jobs("default", 4).await else {
        return;
    };
    while let Some(delivery) = jobs.next(4).await {
        let Ok(delivery) = delivery else {
            continue;
        };
        let job = &delivery.job;
        let result = JobResult {
            job_id: job.job_id.clone(),
            session_id: job.session_id.clone(),
            rewards: job
                .candidates
                .iter()
                .map(|c| Reward {
                    candidate_id: c.id.clone(),
                    value: 0.5,
                    status: RewardStatus::Ok as i32,
                    ..Default::default()
                })
                .collect(),
            worker: "fuzz".into(),
            ..Default::default()
        };
        if queue.publish_result(&result).await.is_err() {
            return;
        }
        let _ = delivery.acker.ack().await;
    }
}

/// What the model remembers of a session across its streams (until it closes).
#[derive(Default)]
struct SessionModel {
    accepted: HashSet<String>,
    rewarded: HashSet<String>,
}

/// Runs one stream and checks it against the model.
async fn stream(
    gateway: &Gateway,
    tenant: bool,
    requests: &[Req],
    sessions: &mut HashMap<String, SessionModel>,
) {
    let expected = expect(requests, tenant);
    let items: Vec<Result<ScoreRequest, Status>> = requests.iter().map(request).collect();
    let caller = if tenant {
        gateway
            .authenticate(Some("Bearer fuzz-token"), &[])
            .expect("the tenant's token")
    } else {
        None
    };
    let responses = gateway.score_as(
        caller,
        futures::stream::iter(items),
        CancellationToken::new(),
    );
    let responses: Vec<Result<ScoreResponse, Status>> =
        tokio::time::timeout(Duration::from_secs(24 * 3600), responses.collect())
            .await
            .expect("the session ends");

    let stats = gateway.stats();
    assert_eq!(
        (stats.sessions, stats.in_flight),
        (0, 0),
        "a stream that ended leaves nothing counted"
    );

    let mut responses = responses.into_iter();
    let Some((session, profile, window)) = expected.opened else {
        match (expected.end, responses.next()) {
            (End::Invalid, Some(Err(status))) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}")
            }
            (End::Denied, Some(Err(status))) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}")
            }
            (End::Left, None) => {}
            (end, got) => panic!("expected {end:?} before `opened`, got {got:?}"),
        }
        assert!(responses.next().is_none(), "nothing after the end");
        return;
    };
    let opened = match responses.next() {
        Some(Ok(ScoreResponse {
            kind: Some(score_response::Kind::Opened(opened)),
        })) => opened,
        other => panic!("expected `opened`, got {other:?}"),
    };
    if !session.is_empty() {
        assert_eq!(opened.session_id, session);
    }
    assert_eq!(
        (opened.profile.as_str(), opened.max_in_flight),
        (profile.as_str(), window)
    );
    let model = sessions.entry(opened.session_id.clone()).or_default();
    let batch_ids: Vec<HashSet<&str>> = expected
        .batches
        .iter()
        .map(|b| b.iter().map(|c| c.id.as_str()).collect())
        .collect();
    let this_stream: HashMap<&str, &Candidate> = expected
        .batches
        .iter()
        .flatten()
        .map(|c| (c.id.as_str(), c))
        .collect();
    // Ids accepted on an earlier stream of the session may be sent again on this one (a resume
    // sends again the batches it was not told were accepted); their reward may be either's.
    let earlier = model.accepted.clone();
    model
        .accepted
        .extend(this_stream.keys().map(|id| (*id).to_owned()));

    let mut accepted = 0;
    let mut rewarded_here = HashSet::new();
    let mut end = End::Left;
    for response in responses.by_ref() {
        match response {
            Ok(ScoreResponse {
                kind: Some(score_response::Kind::Accepted(a)),
            }) => {
                assert_eq!(
                    a.batch_index, accepted as u64,
                    "batches are accepted in order"
                );
                let batch = batch_ids
                    .get(accepted)
                    .expect("only valid batches are accepted");
                assert_eq!(a.candidates as usize, batch.len());
                accepted += 1;
            }
            Ok(ScoreResponse {
                kind: Some(score_response::Kind::Reward(r)),
            }) => {
                let id = r.candidate_id.as_str();
                assert!(
                    model.accepted.contains(id),
                    "reward for {id:?}, never accepted"
                );
                assert!(rewarded_here.insert(id.to_owned()), "{id:?} rewarded twice");
                let status = r.status();
                assert!(
                    matches!(status, RewardStatus::Ok | RewardStatus::Failed),
                    "{r:?}"
                );
                if let Some(c) = this_stream.get(id)
                    && !earlier.contains(id)
                {
                    let failed = status == RewardStatus::Failed;
                    assert_eq!(
                        failed,
                        rejected(c),
                        "FAILED exactly for invalid input: {r:?}"
                    );
                }
                if status == RewardStatus::Failed {
                    assert!(r.error.starts_with("invalid input: "), "{r:?}");
                }
            }
            Ok(ScoreResponse {
                kind: Some(score_response::Kind::Closed(c)),
            }) => {
                assert_eq!(
                    c.rewards as usize,
                    rewarded_here.len(),
                    "`closed` counts the rewards"
                );
                end = End::Closed;
                break;
            }
            Err(status) => {
                end = match status.code() {
                    Code::InvalidArgument => End::Invalid,
                    Code::PermissionDenied => End::Denied,
                    _ => panic!("unexpected status {status:?}"),
                };
                break;
            }
            other => panic!("unexpected response {other:?}"),
        }
    }
    assert!(responses.next().is_none(), "nothing after the end");
    assert_eq!(end, expected.end, "how the stream ends");
    // A batch is accepted before the next request is read, so before any error too.
    assert_eq!(
        accepted,
        expected.batches.len(),
        "every valid batch is accepted"
    );
    model.rewarded.extend(rewarded_here);
    if end == End::Closed {
        let missing: Vec<_> = model.accepted.difference(&model.rewarded).collect();
        assert!(missing.is_empty(), "closed while owing {missing:?}");
        sessions.remove(&opened.session_id);
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Every stream runs as the tenant (else anonymously, on a gateway without tenants).
    tenant: bool,
    streams: Vec<Vec<Req>>,
}

fuzz_target!(|input: Input| {
    let Input { tenant, streams } = input;
    if streams.len() > 4 || streams.iter().any(|s| s.len() > 12) {
        return;
    }
    let text = if tenant {
        format!("{CONFIG}{TENANT}")
    } else {
        CONFIG.to_owned()
    };
    let config = Config::from_toml(&text).expect("the fuzz configuration is valid");
    let tokens = HashMap::from([("t".to_owned(), "fuzz-token".to_owned())]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        // Every entry of a session's record retained, as JetStream does for `results_max_age`.
        let queue = Arc::new(InProcessQueue::new(&config.worker, 1 << 16));
        let gateway = Gateway::with_tenants(&config, Arc::clone(&queue) as Arc<dyn Queue>, &tokens);
        let worker = tokio::spawn(worker(Arc::clone(&queue)));
        let mut sessions = HashMap::new();
        for requests in &streams {
            stream(&gateway, tenant, requests, &mut sessions).await;
        }
        queue.close();
        let _ = worker.await;
    });
});
