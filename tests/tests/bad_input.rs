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
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct Raw;
    struct RawEncoder;
    struct RawDecoder;
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let n = bytes::Buf::remaining(src);
            Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    // ScoreBatchRequest { profile: "e2e", candidates: [Candidate { id: "u", response: 0xff 0xfe }] }
    let candidate: Vec<u8> = [&[0x0a, 1, b'u'][..], &[0x22, 2, 0xff, 0xfe][..]].concat();
    let mut message = vec![0x0a, 3, b'e', b'2', b'e', 0x12, candidate.len() as u8];
    message.extend(candidate);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fleet.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/rewardfleet.v1.RewardService/ScoreBatch",
    );
    grpc.unary(tonic::Request::new(message), path, Raw)
        .await
        .unwrap_err()
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
