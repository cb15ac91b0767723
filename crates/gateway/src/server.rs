//! The tonic service: `RewardService` plus health and reflection, served until shutdown.

use std::time::Duration;

use futures::{Stream, StreamExt};
use rewardfleet_proto::v1::reward_service_server::{RewardService, RewardServiceServer};
use rewardfleet_proto::v1::{
    ListProfilesRequest, ListProfilesResponse, ScoreBatchRequest, ScoreBatchResponse, ScoreRequest,
};
use rewardfleet_telemetry::TraceContext;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::{Gateway, ScoreStream};

/// `RewardService` over a [`Gateway`].
#[derive(Clone)]
pub struct RewardApi {
    gateway: Gateway,
    /// Fires when open sessions must end (after the drain deadline).
    sessions: CancellationToken,
}

impl RewardApi {
    /// The service; sessions end with `UNAVAILABLE` when `sessions` fires.
    pub fn new(gateway: Gateway, sessions: CancellationToken) -> Self {
        Self { gateway, sessions }
    }
}

#[tonic::async_trait]
impl RewardService for RewardApi {
    type ScoreStream = ScoreStream;

    async fn score(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStream>, Status> {
        // The session (a child) keeps this span open until the stream ends.
        let span = rpc_span("Score", request.metadata());
        let requests = request.into_inner();
        let responses = span.in_scope(|| self.gateway.score(requests, self.sessions.child_token()));
        Ok(Response::new(responses))
    }

    async fn score_batch(
        &self,
        request: Request<ScoreBatchRequest>,
    ) -> Result<Response<ScoreBatchResponse>, Status> {
        let span = rpc_span("ScoreBatch", request.metadata());
        let request = request.into_inner();
        let rewards = self
            .gateway
            .score_batch(
                request.profile,
                request.candidates,
                self.sessions.child_token(),
            )
            .instrument(span.clone())
            .await;
        if let Err(status) = &rewards {
            span.record("error.type", format!("{:?}", status.code()));
        }
        Ok(Response::new(ScoreBatchResponse { rewards: rewards? }))
    }

    async fn list_profiles(
        &self,
        _: Request<ListProfilesRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        Ok(Response::new(ListProfilesResponse {
            profiles: self.gateway.profiles().to_vec(),
        }))
    }
}

/// The server span of one call, continuing the trainer's trace when its metadata carries
/// `traceparent`.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("rewardfleet.v1.RewardService/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "rewardfleet.v1.RewardService",
        rpc.method = method,
        error.type = tracing::field::Empty,
    );
    let headers = metadata.clone().into_headers();
    TraceContext::from_fields(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    )
    .set_parent_of(&span);
    span
}

/// Largest gRPC message accepted from a trainer (a batch), in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Serves `RewardService`, `grpc.health.v1.Health` and reflection on `listener` until `shutdown`
/// fires; then reports NOT_SERVING, stops taking new streams, lets open sessions finish for up
/// to `drain_timeout`, and ends the rest with `UNAVAILABLE` (their results stay retained for
/// resume).
///
/// # Errors
/// If the transport fails.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RewardServiceServer<RewardApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rewardfleet_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let sessions = CancellationToken::new();
    let api = RewardServiceServer::new(RewardApi::new(gateway.clone(), sessions.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let stop_accepting = CancellationToken::new();
    let drain = {
        let stop_accepting = stop_accepting.clone();
        let sessions = sessions.clone();
        let shutdown = shutdown.clone();
        let gateway = gateway.clone();
        async move {
            shutdown.cancelled().await;
            health_reporter
                .set_not_serving::<RewardServiceServer<RewardApi>>()
                .await;
            stop_accepting.cancel();
            if tokio::time::timeout(drain_timeout, gateway.sessions_ended())
                .await
                .is_err()
            {
                tracing::info!(
                    open = gateway.stats().sessions,
                    "drain deadline: ending open sessions"
                );
            }
            sessions.cancel();
        }
    };
    tokio::spawn(drain);

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(api)
        .serve_with_incoming_shutdown(incoming(listener), stop_accepting.cancelled_owned());
    // hyper waits without limit for connections to close: bound the wait.
    let grace = drain_timeout + Duration::from_secs(2);
    tokio::select! {
        r = server => r,
        () = async { sessions.cancelled().await; tokio::time::sleep(Duration::from_secs(2)).await } => {
            tracing::warn!(?grace, "connections still open after the drain; closing");
            Ok(())
        }
    }
}

/// The connections accepted on `listener`, each with `TCP_NODELAY` set: a reward is a small
/// message that must leave at once, not wait for Nagle's algorithm to meet the client's delayed
/// ACK (40 ms a response on a reused channel). tonic's own `tcp_nodelay` applies only to the
/// listeners it binds itself.
fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on a trainer connection");
        }
        Ok(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener));
        let _client = TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(server_side.nodelay().expect("read TCP_NODELAY"));
    }
}
