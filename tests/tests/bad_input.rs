//! Bad input gets a clear error naming the field and the limit, and loses nothing: the rest of
//! the batch is scored, the gateway keeps serving.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use rewardfleet_core::ChatMessage;
use rewardfleet_proto::v1::{ScoreBatchRequest, ScoreRequest, score_request};
use rewardfleet_testkit::NatsServer;
use support::*;
use tonic::Code;

const LIMITS: &str =
    "[limits]\nmax_batch_candidates = 16\nmax_response_bytes = 1000\nmax_prompt_messages = 4\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_named_and_the_rest_is_scored() {
    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 1, LIMITS).await;
    let mut client = fleet.client().await;
    let batch = |candidates, profile: &str| ScoreBatchRequest {
        profile: profile.into(),
        candidates,
    };

    // Too many candidates in one batch.
    let err = client
        .score_batch(batch((0..17).map(candidate).collect(), "e2e"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_candidates = 16"),
        "{}",
        err.message()
    );

    // Empty id.
    let mut cands: Vec<_> = (0..3).map(candidate).collect();
    cands[1].id.clear();
    let err = client.score_batch(batch(cands, "e2e")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("candidates[1].id: must not be empty"),
        "{}",
        err.message()
    );

    // Duplicate id.
    let mut cands: Vec<_> = (0..3).map(candidate).collect();
    cands[2].id = cands[0].id.clone();
    let err = client.score_batch(batch(cands, "e2e")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("candidates[2].id"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("unique"), "{}", err.message());

    // Unknown profile: the error lists the known ones.
    let err = client
        .score_batch(batch(vec![candidate(0)], "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("unknown profile \"nope\"; known: e2e, ranked"),
        "{}",
        err.message()
    );

    // Per-candidate limits: the offenders fail alone, the rest is scored.
    let mut cands: Vec<_> = (0..6).map(candidate).collect();
    cands[1].response = "y".repeat(1001);
    cands[3].prompt = vec![
        ChatMessage {
            role: "user".into(),
            content: "q".into()
        };
        5
    ];
    cands[4].prompt[0].role = "grader".into();
    let rewards = client
        .score_batch(batch(cands, "e2e"))
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(rewards.len(), 6);
    assert_eq!(rewards[1].status, 3);
    assert!(
        rewards[1]
            .error
            .contains("response: 1001 bytes; limit max_response_bytes = 1000"),
        "{}",
        rewards[1].error
    );
    assert_eq!(rewards[3].status, 3);
    assert!(
        rewards[3]
            .error
            .contains("prompt: 5 messages; limit max_prompt_messages = 4"),
        "{}",
        rewards[3].error
    );
    assert_eq!(rewards[4].status, 3);
    assert!(
        rewards[4].error.contains("prompt[0].role"),
        "{}",
        rewards[4].error
    );
    for i in [0, 2, 5] {
        assert_eq!(rewards[i].status, 1, "{:?}", rewards[i]);
        assert_eq!(rewards[i].value, expected(i));
    }

    // A stream that does not open first; a window above the gateway's limit.
    let err = score_all(
        &mut client,
        vec![ScoreRequest {
            kind: Some(score_request::Kind::Close(Default::default())),
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("must be `open`"),
        "{}",
        err.message()
    );
    let err = score_all(
        &mut client,
        session_requests("w", "e2e", 1_000_000, &[candidate(0)], 1),
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("gateway.max_window = 65536"),
        "{}",
        err.message()
    );

    // Invalid UTF-8 on the wire: a decode error naming the field; the gateway keeps serving.
    let err = raw_score_batch(&fleet).await;
    assert!(err.message().contains("UTF-8"), "{}", err.message());
    let ok = client
        .score_batch(batch(vec![candidate(0)], "e2e"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.rewards[0].value, expected(0));

    fleet.stop().await;
}

/// Sends a ScoreBatchRequest whose candidate response holds invalid UTF-8, bytes as they are.
async fn raw_score_batch(fleet: &Fleet) -> tonic::Status {
    // ScoreBatchRequest { profile: "e2e", candidates: [Candidate { id: "u", response: 0xff 0xfe }] }
    let candidate: Vec<u8> = [&[0x0a, 1, b'u'][..], &[0x22, 2, 0xff, 0xfe][..]].concat();
    let mut message = vec![0x0a, 3, b'e', b'2', b'e', 0x12, candidate.len() as u8];
    message.extend(candidate);
    raw::unary_error(
        &fleet.channel().await,
        "/rewardfleet.v1.RewardService/ScoreBatch",
        message,
    )
    .await
}

/// Bytes that are not a `ScoreRequest`, sent as the first message of a `Score` stream, end it
/// with `INVALID_ARGUMENT` naming what could not be read, never with `OK`; and so does a batch
/// whose candidate id is not UTF-8, after a proper `open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_end_the_stream_with_invalid_argument() {
    use prost::Message as _;

    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 1, "").await;
    let channel = fleet.channel().await;

    // Random first messages, drawn from a fixed seed (xorshift).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut undecodable = 0;
    for _ in 0..300 {
        let len = (next() % 64) as usize + 1;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let decoded = ScoreRequest::decode(bytes.as_slice());
        let (_, status) = raw::score_stream(&channel, vec![bytes.clone()]).await;
        match decoded {
            Err(_) => {
                undecodable += 1;
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{bytes:?}: {status:?}"
                );
                assert!(
                    status
                        .message()
                        .contains("cannot read the request: the first request"),
                    "{}",
                    status.message()
                );
            }
            // Bytes that happen to decode: a session opens (and ends when the stream does) or
            // a request that is not `open` is refused.
            Ok(ScoreRequest {
                kind: Some(score_request::Kind::Open(_)),
            }) => {}
            Ok(_) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
        }
    }
    assert!(
        undecodable > 200,
        "the seed must give mostly undecodable bytes: {undecodable}"
    );

    // A proper open, then a batch whose candidate id is the bytes 0xff 0xfe.
    let open = ScoreRequest {
        kind: Some(score_request::Kind::Open(
            rewardfleet_proto::v1::SessionOpen {
                session_id: "utf8".into(),
                profile: "e2e".into(),
                max_in_flight: 0,
            },
        )),
    }
    .encode_to_vec();
    let bad_id: Vec<u8> = [&[0x0a, 2, 0xff, 0xfe][..], &[0x22, 1, b'x'][..]].concat();
    let mut batch = vec![0x0a, bad_id.len() as u8];
    batch.extend(bad_id);
    let mut request = vec![0x12, batch.len() as u8];
    request.extend(batch);
    let (responses, status) = raw::score_stream(&channel, vec![open, request]).await;
    assert_eq!(responses.len(), 1, "only `opened` before the error");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("request 1 of the stream")
            && status.message().contains("Candidate.id")
            && status.message().contains("UTF-8"),
        "{}",
        status.message()
    );

    // The gateway keeps serving.
    let ok = fleet
        .client()
        .await
        .score_batch(rewardfleet_proto::v1::ScoreBatchRequest {
            profile: "e2e".into(),
            candidates: vec![candidate(0)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.rewards[0].value, expected(0));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_profiles_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let nats = NatsServer::start().await.unwrap();
    let fleet = Fleet::start(&nats, 0, "").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fleet.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "rewardfleet.v1.RewardService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let profiles = fleet
        .client()
        .await
        .list_profiles(rewardfleet_proto::v1::ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles;
    let e2e = profiles.iter().find(|p| p.name == "e2e").unwrap();
    let names: Vec<&str> = e2e.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["exact_match", "regex", "max_chars"]);
    assert!(e2e.components[2].gate);
    assert_eq!(e2e.components[0].kind, "rule");
    fleet.stop().await;
}
