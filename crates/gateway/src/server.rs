//! The tonic service: `RewardService` plus health and reflection, served until shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use futures::{Stream, StreamExt};
use rewardfleet_core::config::GatewayConfig;
use rewardfleet_proto::v1::reward_service_server::{RewardService, RewardServiceServer};
use rewardfleet_proto::v1::{
    ListProfilesRequest, ListProfilesResponse, ScoreBatchRequest, ScoreBatchResponse, ScoreRequest,
};
use rewardfleet_telemetry::TraceContext;
use rewardfleet_telemetry::metrics::{label, metrics};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::tls::ReloadingTls;
use crate::{Caller, Gateway, ScoreStream};

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

impl RewardApi {
    /// The caller of `request`, from its `authorization: Bearer <token>` metadata (the token is
    /// never logged); recorded on `span`.
    #[allow(clippy::result_large_err)]
    fn caller<T>(&self, request: &Request<T>, span: &tracing::Span) -> Result<Caller, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let client_names = request
            .extensions()
            .get::<PeerInfo>()
            .map_or_else(|| Arc::from([]), |p| Arc::clone(&p.client_names));
        match self.gateway.authenticate(authorization, &client_names) {
            Ok(caller) => {
                if let Some(t) = &caller {
                    span.record("rewardfleet.tenant", t.name());
                }
                Ok(caller)
            }
            Err(e) => {
                span.record("error.type", "UNAUTHENTICATED");
                Err(e.into())
            }
        }
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
        let caller = self.caller(&request, &span)?;
        let requests = request.into_inner();
        let responses = span.in_scope(|| {
            self.gateway
                .score_as(caller, requests, self.sessions.child_token())
        });
        Ok(Response::new(responses))
    }

    async fn score_batch(
        &self,
        request: Request<ScoreBatchRequest>,
    ) -> Result<Response<ScoreBatchResponse>, Status> {
        let span = rpc_span("ScoreBatch", request.metadata());
        let caller = self.caller(&request, &span)?;
        let request = request.into_inner();
        let rewards = self
            .gateway
            .score_batch_as(
                caller,
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
        request: Request<ListProfilesRequest>,
    ) -> Result<Response<ListProfilesResponse>, Status> {
        self.caller(&request, &tracing::Span::none())?;
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
        rewardfleet.tenant = tracing::field::Empty,
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

/// Serves `RewardService`, `grpc.health.v1.Health` and reflection on `listener` (over `tls`
/// when given: plaintext connections are then closed at the handshake) until `shutdown` fires; then reports NOT_SERVING, stops taking new streams, lets open sessions finish for up
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
    tls: Option<ReloadingTls>,
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
    let bounds = gateway.inner.transport.clone();
    let api = RewardServiceServer::new(RewardApi::new(gateway.clone(), sessions.clone()))
        .max_decoding_message_size(bounds.max_message_bytes);

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
        // A peer that stops answering PINGs is dropped: silent connections do not pile up.
        .http2_keepalive_interval(Some(bounds.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(bounds.http2_keepalive_timeout))
        // Advertised in SETTINGS: the client queues its extra streams, the server holds none.
        .max_concurrent_streams(bounds.max_concurrent_streams)
        // tonic answers a unary request it cannot decode before the service sees it, with its
        // own codes: answered here as a `Score` stream's are, the caller's `INVALID_ARGUMENT`.
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument as fn(_) -> _,
        ))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(api)
        .serve_with_incoming_shutdown(
            match tls {
                None => Either::Left(incoming(listener, &bounds)),
                Some(tls) => Either::Right(tls_incoming(incoming(listener, &bounds), tls)),
            },
            stop_accepting.cancelled_owned(),
        );
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

/// `response`, or the gateway's `INVALID_ARGUMENT` ("cannot read the request: ...", naming
/// `gateway.max_message_bytes` when the message was too large) when it is tonic's answer to a
/// request message it could not decode (a trailers-only response: the status is in its headers).
fn undecodable_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let why = Status::from_header_map(response.headers())
        .as_ref()
        .and_then(crate::error::undecodable);
    if let Some(why) = why {
        let status = Status::from(crate::GatewayError::Unreadable(why));
        if let Err(e) = status.add_header(response.headers_mut()) {
            tracing::warn!(error = %e, "cannot rewrite the status of an undecodable request");
        }
    }
    response
}

/// The connections accepted on `listener`, each with `TCP_NODELAY` set (a reward is a small
/// message that must leave at once, not wait for Nagle's algorithm to meet the client's delayed
/// ACK: 40 ms a response on a reused channel) and TCP keep-alive after `tcp_keepalive`; tonic's
/// own settings for both apply only to the listeners it binds itself. At most
/// `max_connections` are open at once: one past it is closed as soon as it is accepted. Each
/// must send the HTTP/2 preface within `handshake_timeout` of being accepted (see [`Preface`]).
fn incoming(
    listener: TcpListener,
    bounds: &GatewayConfig,
) -> impl Stream<Item = std::io::Result<Connection>> + use<> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections as usize));
    let keepalive = TcpKeepalive::new().with_time(bounds.tcp_keepalive);
    let max_connections = bounds.max_connections;
    let handshake_timeout = bounds.handshake_timeout;
    TcpListenerStream::new(listener).filter_map(move |accepted| {
        let result = match accepted {
            Err(e) => Some(Err(e)),
            Ok(stream) => match Arc::clone(&slots).try_acquire_owned() {
                Err(_) => {
                    tracing::debug!(max_connections, "refusing a connection: gateway.max_connections reached");
                    if let Some(m) = metrics() {
                        m.refused
                            .add(1, &[label("limit", "gateway.max_connections")]);
                    }
                    None
                }
                Ok(slot) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY on a trainer connection");
                    }
                    if let Err(e) = SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                        tracing::warn!(error = %e, "cannot set TCP keep-alive on a trainer connection");
                    }
                    Some(Ok(Connection {
                        io: Io::Plain(stream),
                        _slot: slot,
                        preface: Some(Preface::new(handshake_timeout)),
                    }))
                }
            },
        };
        std::future::ready(result)
    })
}

/// The connections of `plain` after a TLS handshake each, run concurrently (a slow client
/// holds up no other) and ended, with the HTTP/2 preface that follows, by the connection's
/// `gateway.handshake_timeout`; a failed handshake (a plaintext client, an untrusted client
/// certificate) closes the connection. At most `HANDSHAKES` handshaken connections wait for the
/// server to take them.
fn tls_incoming(
    plain: impl Stream<Item = std::io::Result<Connection>> + Send + 'static,
    tls: ReloadingTls,
) -> impl Stream<Item = std::io::Result<Connection>> {
    const HANDSHAKES: usize = 64;
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKES);
    tokio::spawn(async move {
        let mut plain = Box::pin(plain);
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = plain.next() => next,
            };
            let connection = match next {
                None => break,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(c)) => c,
            };
            let Connection {
                io: Io::Plain(stream),
                _slot: slot,
                preface,
            } = connection
            else {
                continue;
            };
            let deadline = preface.as_ref().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(10),
                Preface::deadline,
            );
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Ok(Connection {
                                io: Io::Tls(Box::new(stream)),
                                _slot: slot,
                                preface,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A trainer's connection, holding one of the `gateway.max_connections` slots until it closes.
pub(crate) struct Connection {
    io: Io,
    _slot: OwnedSemaphorePermit,
    /// Until the HTTP/2 preface has been read (gRPC connections only).
    preface: Option<Preface>,
}

/// The deadline of a gRPC connection's HTTP/2 connection preface (`gateway.handshake_timeout`
/// from its accept): hyper waits for it without limit, so a client that connects and stays
/// silent would hold its `max_connections` slot for as long as it likes. A read that finds the
/// deadline passed before the preface's 24 bytes fails with `TimedOut`, and hyper closes the
/// connection.
struct Preface {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Bytes of the preface still to come.
    remaining: usize,
}

impl Preface {
    /// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, the first bytes of every HTTP/2 connection.
    const LEN: usize = 24;

    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            remaining: Self::LEN,
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.deadline.deadline()
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connection {
    /// A plaintext connection holding `slot`.
    pub(crate) fn plain(stream: TcpStream, slot: OwnedSemaphorePermit) -> Self {
        Self {
            io: Io::Plain(stream),
            _slot: slot,
            preface: None,
        }
    }

    /// A TLS connection holding `slot`.
    pub(crate) fn tls(
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            io: Io::Tls(Box::new(stream)),
            _slot: slot,
            preface: None,
        }
    }
}

#[cfg(test)]
impl Connection {
    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

/// What a request knows of its connection: the names of its verified client certificate (none
/// over plaintext or without one), which may name a tenant (`tls_subject`).
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub(crate) client_names: Arc<[String]>,
}

impl Connection {
    /// The names of the client certificate this connection presented (none over plaintext).
    pub(crate) fn client_names(&self) -> Arc<[String]> {
        match &self.io {
            Io::Plain(_) => Arc::from([]),
            Io::Tls(s) => crate::tls::client_names(s.get_ref().1),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo {
            client_names: self.client_names(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(preface) = &mut this.preface
            && preface.deadline.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(
                "closing a connection: no HTTP/2 preface within gateway.handshake_timeout"
            );
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no HTTP/2 preface within gateway.handshake_timeout",
            )));
        }
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let (Poll::Ready(Ok(())), Some(preface)) = (&read, &mut this.preface) {
            preface.remaining = preface
                .remaining
                .saturating_sub(buf.filled().len() - before);
            if preface.remaining == 0 {
                this.preface = None;
            }
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, &GatewayConfig::default()));
        let _client = TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(server_side.tcp().nodelay().expect("read TCP_NODELAY"));
        assert!(
            SockRef::from(server_side.tcp())
                .keepalive()
                .expect("read SO_KEEPALIVE")
        );
    }

    #[tokio::test]
    async fn a_connection_without_the_http2_preface_in_time_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bounds = GatewayConfig {
            handshake_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let mut accepted = Box::pin(incoming(listener, &bounds));
        let mut buf = [0u8; 64];

        // Silent: the read fails once the deadline passes.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let mut server_side = accepted.next().await.expect("a connection").expect("ok");
        let started = std::time::Instant::now();
        let err = server_side.read(&mut buf).await.expect_err("timed out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));

        // The preface in two pieces, in time: later reads wait as long as they like.
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut server_side = accepted.next().await.expect("a connection").expect("ok");
        client
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        let mut got = server_side.read(&mut buf).await.expect("read");
        client.write_all(b"\r\nSM\r\n\r\n").await.expect("write");
        while got < 24 {
            got += server_side.read(&mut buf).await.expect("read");
        }
        assert!(server_side.preface.is_none(), "the deadline is gone");
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"x").await.expect("write");
        assert_eq!(server_side.read(&mut buf).await.expect("no deadline"), 1);
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_their_slot_comes_back() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bounds = GatewayConfig {
            max_connections: 1,
            ..Default::default()
        };
        let mut accepted = Box::pin(incoming(listener, &bounds));
        let _first = TcpStream::connect(addr).await.expect("connect");
        let held = accepted.next().await.expect("a connection").expect("ok");
        // The second is accepted and closed at once: its reads see the end.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let refused = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(refused.is_err(), "no second connection is handed on");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "the refused connection is closed");
        drop(held);
        let _third = TcpStream::connect(addr).await.expect("connect");
        let again = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(
            matches!(again, Ok(Some(Ok(_)))),
            "a closed connection frees its slot"
        );
    }
}
