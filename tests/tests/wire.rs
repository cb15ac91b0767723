//! The gateway on the wire: HTTP/2 frames (the `h2` crate) and raw TCP bytes against the real
//! `rewardfleet gateway` binary. A truncated message, bytes that are not protobuf, fields of the
//! wrong wire type and a 100 MB message each get `INVALID_ARGUMENT` naming what could not be
//! read (and the limit); a `Score` stream that sends a batch first is refused, one that sends
//! nothing ends at `gateway.session_idle_timeout`; a frame the protocol forbids gets a GOAWAY;
//! a client that stops reading holds only its own flow-control window and gets everything when
//! it reads again, one that stops reading its socket is dropped by the HTTP/2 keep-alive;
//! 10,000 silent connections are closed (past `gateway.max_connections` at once, the rest at
//! `gateway.handshake_timeout`). Throughout, a well-behaved client's `ScoreBatch` calls are all
//! answered (latency printed) and the gateway's RSS stays under a bound derived from the config.
//!
//! `RF_WIRE_STALL_SECS` sets how long the slow reader stops reading (default 30).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;
use rewardfleet_proto::v1::{ScoreBatchRequest, ScoreResponse, score_response};
use rewardfleet_testkit::free_port;
use support::process::Process;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codegen::http;

const MAX_CONNECTIONS: usize = 1000;
const MAX_SESSIONS: usize = 64;
const MAX_MESSAGE_BYTES: usize = 1 << 20;
const IDLE: Duration = Duration::from_secs(3);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE: Duration = Duration::from_secs(2);
/// Silent connections opened at once.
const SILENT: usize = 10_000;
/// The window of the slow reader's session: its rewards overflow the 64 KiB HTTP/2 window.
const SLOW_WINDOW: usize = 4096;

/// The gateway's `[gateway]` keys: every bound of the wire, short enough to watch.
fn keys() -> String {
    format!(
        "max_connections = {MAX_CONNECTIONS}\nmax_sessions = {MAX_SESSIONS}\n\
         max_concurrent_streams = 32\nmax_message_bytes = {MAX_MESSAGE_BYTES}\n\
         session_idle_timeout = \"{}s\"\nhttp2_keepalive_interval = \"{}s\"\n\
         http2_keepalive_timeout = \"{}s\"\nhandshake_timeout = \"{}s\"\nmax_window = {SLOW_WINDOW}\n",
        IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_TIMEOUT.as_secs(),
        HANDSHAKE.as_secs(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_level_abuse_is_answered_and_bounded_while_others_are_served() {
    // Before the gateway starts: it inherits the limit.
    raise_fd_limit(SILENT as u64 + 2048);
    let stall = Duration::from_secs(
        std::env::var("RF_WIRE_STALL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let text = config_text(None, "").replace(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[gateway]\nlisten = \"127.0.0.1:{port}\"\n{}", keys()),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let gw = Process::start("gateway", &["gateway"], &path, "listening on");
    let pid = gw.pid();

    let stop = CancellationToken::new();
    let probe = tokio::spawn(probe(port, stop.clone()));
    let sampler = tokio::spawn(sample(pid, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(pid);

    let conn = h2_connect(port).await;
    unary_abuse(&conn, port).await;
    score_abuse(&conn, port).await;
    frame_abuse(port).await;

    // A 100 MB message, really sent, on ScoreBatch and on a Score stream: refused at its
    // length prefix, never buffered.
    let before = rss_kib(pid);
    let mut peak = before;
    for method in ["ScoreBatch", "Score"] {
        let (sent, answer) = hundred_megabytes(&conn, port, method).await;
        let status = answer
            .status
            .as_ref()
            .unwrap_or_else(|| panic!("{answer:?}"));
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert!(
            status.message().contains("104857600 bytes")
                && status.message().contains("gateway.max_message_bytes"),
            "{method}: {}",
            status.message()
        );
        assert!(
            sent < 16 << 20,
            "{method}: the gateway read {sent} bytes of it"
        );
        peak = peak.max(rss_kib(pid));
        eprintln!("100 MB message on {method}: refused after {sent} bytes sent");
    }
    eprintln!("gateway RSS around the 100 MB messages: {before} KiB before, {peak} KiB peak");
    assert!(
        peak < before + 32 * 1024,
        "the gateway buffered the 100 MB message: {before} KiB -> {peak} KiB"
    );

    // Meanwhile: a reader that stops reading, one that stops reading its socket, and 10,000
    // connections that never say a word.
    let slow = tokio::spawn(slow_reader(port, stall));
    let frozen = tokio::spawn(frozen_reader(port));
    silent_connections(port).await;
    preface_then_silence(port).await;
    frozen.await.unwrap();
    slow.await.unwrap();

    // Slots came back: a new connection is served.
    let mut fresh = rewardfleet_client::connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let rewards = fresh
        .score_batch(ScoreBatchRequest {
            profile: "e2e".into(),
            candidates: (0..8).map(candidate).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .rewards;
    assert_eq!(rewards[0].value, expected(0));

    stop.cancel();
    let latencies = probe.await.unwrap();
    let samples = sampler.await.unwrap();
    report(&latencies, &samples, baseline);
}

/// The well-behaved client: a `ScoreBatch` of 8 candidates every 100 ms on its own connection
/// until `stop`; the latency of each. A call that fails or takes 10 s fails the test.
async fn probe(port: u16, stop: CancellationToken) -> Vec<Duration> {
    let mut client = rewardfleet_client::connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut latencies = Vec::new();
    while !stop.is_cancelled() {
        let started = Instant::now();
        let call = client.score_batch(ScoreBatchRequest {
            profile: "e2e".into(),
            candidates: (0..8).map(candidate).collect(),
        });
        let rewards = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("call {} unanswered after 10 s", latencies.len()))
            .unwrap_or_else(|s| panic!("call {} failed: {s:?}", latencies.len()))
            .into_inner()
            .rewards;
        latencies.push(started.elapsed());
        assert_eq!(rewards.len(), 8);
        assert_eq!(rewards[3].value, expected(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies
}

/// The gateway's RSS (KiB) and open file descriptors, every 200 ms until `stop`.
async fn sample(pid: u32, stop: CancellationToken) -> Vec<(u64, usize)> {
    let mut samples = Vec::new();
    while !stop.is_cancelled() {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        samples.push((rss_kib(pid), fds));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples
}

/// Prints the probe's latencies and the gateway's peaks; asserts every call was answered in a
/// few seconds and the RSS stayed under the bound the config allows.
fn report(latencies: &[Duration], samples: &[(u64, usize)], baseline: u64) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let max = *sorted.last().unwrap();
    eprintln!(
        "well-behaved client: {} ScoreBatch calls, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(max)
    );
    assert!(sorted.len() > 50, "the probe ran: {} calls", sorted.len());
    assert!(
        max < Duration::from_secs(5),
        "a call waited {max:?}: the gateway stopped serving others"
    );
    // A connection waiting for its preface, or in HTTP/2, costs well under 64 KiB; a stream
    // holds at most one partial message; the slow reader's session holds its window; and
    // the allocator keeps some of what it freed.
    let bound = baseline
        + (MAX_CONNECTIONS as u64 * 64)
        + (8 * MAX_MESSAGE_BYTES as u64 / 1024)
        + 64 * 1024;
    let peak_rss = samples.iter().map(|s| s.0).max().unwrap();
    let peak_fds = samples.iter().map(|s| s.1).max().unwrap();
    let end = samples.last().unwrap().0;
    eprintln!(
        "gateway RSS: baseline {baseline} KiB, peak {peak_rss} KiB, end {end} KiB (bound {bound} KiB); \
         open fds peak {peak_fds} (max_connections {MAX_CONNECTIONS})"
    );
    assert!(
        peak_rss < bound,
        "gateway RSS {peak_rss} KiB over {bound} KiB"
    );
    let first_fds = samples[0].1;
    assert!(
        peak_fds <= first_fds + MAX_CONNECTIONS + 8,
        "the gateway held {peak_fds} fds, {first_fds} at start: more connections than max_connections"
    );
}

/// ScoreBatch with bodies that are not a `ScoreBatchRequest`.
async fn unary_abuse(conn: &h2::client::SendRequest<Bytes>, port: u16) {
    let cases: [(&str, Vec<Bytes>, &str); 5] = [
        (
            "a length prefix of 100 bytes, 10 bytes, the end of the stream",
            vec![truncated(100, 10)],
            "truncated message",
        ),
        (
            "bytes that are not protobuf",
            vec![framed(&[0xff; 16])],
            "failed to decode Protobuf message",
        ),
        (
            "ScoreBatchRequest.profile (a string) sent as a varint",
            vec![framed(&[0x08, 0x05])],
            "wire type",
        ),
        (
            "a candidate whose id (a string) is a fixed64",
            vec![framed(&[0x12, 9, 0x09, 1, 2, 3, 4, 5, 6, 7, 8])],
            "wire type",
        ),
        (
            "no message at all",
            vec![Bytes::new()],
            "no request message",
        ),
    ];
    for (what, body, says) in cases {
        let (response, mut send) = call(conn, port, "ScoreBatch").await;
        let last = body.len() - 1;
        for (i, chunk) in body.into_iter().enumerate() {
            send.send_data(chunk, i == last).unwrap();
        }
        let answer = read_answer(response).await;
        let status = answer
            .status
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: {answer:?}"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().starts_with("cannot read the request: ")
                && status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }
}

/// Score streams that break the framing or never open.
async fn score_abuse(conn: &h2::client::SendRequest<Bytes>, port: u16) {
    let open = framed(&rewardfleet_client::open("", "e2e", 0).encode_to_vec());
    let batch = framed(&rewardfleet_client::batch(vec![candidate(0)], "").encode_to_vec());
    let cases: [(&str, Vec<Bytes>, bool, usize, &str); 5] = [
        (
            "a truncated first message",
            vec![truncated(40, 3)],
            true,
            0,
            "the first request (open): truncated message",
        ),
        (
            "`open`, then a truncated batch",
            vec![open.clone(), truncated(4000, 100)],
            true,
            1,
            "request 1 of the stream: truncated message",
        ),
        (
            "ScoreRequest.open (a message) sent as a varint",
            vec![framed(&[0x08, 0x01])],
            false,
            0,
            "the first request (open): failed to decode Protobuf message",
        ),
        (
            "a batch before `open`, the stream left open",
            vec![batch],
            false,
            0,
            "the first request of a Score stream must be `open`",
        ),
        (
            "bytes that are not protobuf after `open`",
            vec![open, framed(&[0xff; 16])],
            false,
            1,
            "request 1 of the stream: failed to decode Protobuf message",
        ),
    ];
    for (what, messages, end, responses, says) in cases {
        let (response, mut send) = call(conn, port, "Score").await;
        let last = messages.len() - 1;
        for (i, m) in messages.into_iter().enumerate() {
            send.send_data(m, end && i == last).unwrap();
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(response))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 5 s"));
        let status = answer
            .status
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: {answer:?}"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
        assert_eq!(answer.messages.len(), responses, "{what}: {answer:?}");
    }

    // Nothing at all on a stream left open: ended at the idle timeout, naming it.
    let started = Instant::now();
    let (response, _send) = call(conn, port, "Score").await;
    let answer = tokio::time::timeout(IDLE + Duration::from_secs(5), read_answer(response))
        .await
        .expect("a silent stream ends");
    let status = answer.status.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("gateway.session_idle_timeout"),
        "{status:?}"
    );
    assert!(started.elapsed() >= IDLE - Duration::from_millis(200));
    eprintln!(
        "a Score stream that sends nothing: DEADLINE_EXCEEDED after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Nothing at all, then the end of the stream: nothing was asked, nothing is answered.
    let (response, mut send) = call(conn, port, "Score").await;
    send.send_data(Bytes::new(), true).unwrap();
    let answer = read_answer(response).await;
    assert_eq!(
        answer.status.as_ref().map(|s| s.code()),
        Some(Code::Ok),
        "{answer:?}"
    );
    assert!(answer.messages.is_empty());
}

/// Frames no client may send: the connection is closed with a GOAWAY naming the error.
async fn frame_abuse(port: u16) {
    // A HEADERS frame on stream 2: streams a client opens are odd.
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x1, 0x4 | 0x1, 2, &[0x82]));
    assert_eq!(goaway(port, &bytes).await, Some(0x1), "PROTOCOL_ERROR");
    // A DATA frame on a stream never opened.
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x0, 0x1, 1, b"hello"));
    assert!(goaway(port, &bytes).await.is_some());
    // A frame larger than SETTINGS_MAX_FRAME_SIZE (16 KiB): FRAME_SIZE_ERROR.
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x0, 0, 1, &vec![0u8; 20_000]));
    assert_eq!(goaway(port, &bytes).await, Some(0x6), "FRAME_SIZE_ERROR");
}

/// Writes `bytes` on a new connection and reads the gateway's frames to the end; the error
/// code of its GOAWAY, if it sent one.
async fn goaway(port: u16, bytes: &[u8]) -> Option<u32> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closes the connection");
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let kind = rest[3];
        let payload = &rest[9..(9 + len).min(rest.len())];
        if kind == 0x7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        rest = &rest[(9 + len).min(rest.len())..];
    }
    None
}

/// Declares a 100 MB message on `method` (after `open` on `Score`) and sends it as fast as flow
/// control lets it; the bytes sent when the gateway answered, and its answer.
async fn hundred_megabytes(
    conn: &h2::client::SendRequest<Bytes>,
    port: u16,
    method: &str,
) -> (usize, Answer) {
    const LEN: usize = 100 << 20;
    let (response, mut send) = call(conn, port, method).await;
    if method == "Score" {
        send.send_data(
            framed(&rewardfleet_client::open("", "e2e", 0).encode_to_vec()),
            false,
        )
        .unwrap();
    }
    let mut prefix = vec![0u8];
    prefix.extend((LEN as u32).to_be_bytes());
    send.send_data(prefix.into(), false).unwrap();
    let answered = CancellationToken::new();
    let sender = tokio::spawn({
        let answered = answered.clone();
        async move {
            let chunk = Bytes::from(vec![0x5au8; 64 << 10]);
            let mut sent = 0;
            while sent < LEN && !answered.is_cancelled() {
                send.reserve_capacity(chunk.len());
                let capacity = tokio::select! {
                    c = poll_fn(|cx| send.poll_capacity(cx)) => c,
                    () = answered.cancelled() => break,
                };
                let Some(Ok(capacity)) = capacity else { break };
                let n = capacity.min(chunk.len()).min(LEN - sent);
                if n == 0 {
                    continue;
                }
                if send.send_data(chunk.slice(..n), sent + n == LEN).is_err() {
                    break;
                }
                sent += n;
            }
            sent
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(response))
        .await
        .expect("the gateway answers a 100 MB message");
    answered.cancel();
    (sender.await.unwrap(), answer)
}

/// Opens a session with a window of `SLOW_WINDOW`, submits that many candidates, reads nothing
/// for `stall` (the HTTP/2 window fills; the connection still answers PINGs), then reads: every
/// reward arrives, once, and `close` ends the session cleanly.
async fn slow_reader(port: u16, stall: Duration) {
    let conn = h2_connect(port).await;
    let (response, mut send) = call(&conn, port, "Score").await;
    send.send_data(
        framed(&rewardfleet_client::open("slow", "e2e", SLOW_WINDOW as u32).encode_to_vec()),
        false,
    )
    .unwrap();
    for b in 0..SLOW_WINDOW / 512 {
        let candidates = (b * 512..(b + 1) * 512).map(candidate).collect();
        let message = rewardfleet_client::batch(candidates, "").encode_to_vec();
        send_all(&mut send, framed(&message)).await;
    }
    let mut response = response.await.unwrap().into_body();
    eprintln!(
        "slow reader: {SLOW_WINDOW} candidates submitted, not reading for {:.0} s",
        stall.as_secs_f64()
    );
    tokio::time::sleep(stall).await;
    let mut buf = BytesMut::new();
    let mut rewards = std::collections::HashSet::new();
    let mut closed = None;
    let mut close_sent = false;
    let read = async {
        while let Some(chunk) = response.data().await {
            let chunk = chunk.unwrap();
            response
                .flow_control()
                .release_capacity(chunk.len())
                .unwrap();
            buf.extend_from_slice(&chunk);
            for m in messages(&mut buf) {
                match ScoreResponse::decode(m).unwrap().kind {
                    Some(score_response::Kind::Reward(r)) => {
                        assert!(rewards.insert(r.candidate_id.clone()), "twice: {r:?}");
                    }
                    Some(score_response::Kind::Closed(c)) => closed = Some(c.rewards),
                    _ => {}
                }
            }
            if rewards.len() == SLOW_WINDOW && !close_sent {
                send.send_data(framed(&rewardfleet_client::close().encode_to_vec()), true)
                    .unwrap();
                close_sent = true;
            }
        }
        response.trailers().await.unwrap()
    };
    let trailers = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the slow reader gets everything once it reads");
    let status = tonic::Status::from_header_map(&trailers.unwrap()).unwrap();
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(rewards.len(), SLOW_WINDOW);
    assert_eq!(closed, Some(SLOW_WINDOW as u64));
    eprintln!("slow reader: all {SLOW_WINDOW} rewards once it read again, then `closed`");
}

/// Opens a session, submits, then stops reading its socket: its HTTP/2 stack answers no PING,
/// and the gateway closes the connection within the keep-alive interval and timeout.
async fn frozen_reader(port: u16) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let local = tcp.local_addr().unwrap().port();
    let valve = Arc::new(Valve::default());
    let (conn, driver) = h2::client::handshake(Freezable {
        inner: tcp,
        valve: Arc::clone(&valve),
    })
    .await
    .unwrap();
    tokio::spawn(driver);
    let (response, mut send) = call(&conn, port, "Score").await;
    send.send_data(
        framed(&rewardfleet_client::open("frozen", "e2e", 2048).encode_to_vec()),
        false,
    )
    .unwrap();
    // Rewards for more than the 64 KiB window: the session cannot finish while frozen.
    for b in 0..4 {
        let candidates = (b * 512..(b + 1) * 512).map(candidate).collect();
        let message = rewardfleet_client::batch(candidates, "").encode_to_vec();
        send_all(&mut send, framed(&message)).await;
    }
    let response = response.await.unwrap();
    valve.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    // The gateway's close shows as CLOSE_WAIT on this side, unread bytes and all.
    let limit = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(6);
    while tcp_state(local) != Some(0x08) {
        assert!(
            frozen_at.elapsed() < limit,
            "a client that stopped reading its socket was still connected after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = frozen_at.elapsed();
    eprintln!(
        "a client that stops reading its socket: disconnected after {:.1} s",
        closed_after.as_secs_f64()
    );
    assert!(closed_after >= KEEPALIVE_INTERVAL - Duration::from_millis(500));
    valve.open();
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => {
                    buf.extend_from_slice(&chunk);
                    for m in messages(&mut buf) {
                        let kind = ScoreResponse::decode(m).unwrap().kind;
                        assert!(
                            !matches!(kind, Some(score_response::Kind::Closed(_))),
                            "the session closed cleanly"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        body.trailers().await
    })
    .await
    .expect("the broken stream ends once reads resume");
    assert!(
        ended.is_err(),
        "the stream of a dropped connection ends in error: {ended:?}"
    );
}

/// `SILENT` connections that never send a byte, opened as fast as the gateway takes them (at
/// most 64 waiting for it: the listener's accept queue is short): those past `max_connections`
/// are closed at once, the rest at `handshake_timeout`; none is held longer.
async fn silent_connections(port: u16) {
    let started = Instant::now();
    let queue = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let permit = Arc::clone(&queue).acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            // The gateway's first bytes (its SETTINGS) or the end say that it took the
            // connection.
            let mut buf = [0u8; 256];
            let first = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("the gateway takes the connection");
            drop(permit);
            let taken = Instant::now();
            if !matches!(first, Ok(n) if n > 0) {
                return Some(Duration::ZERO);
            }
            tokio::time::timeout(HANDSHAKE + Duration::from_secs(5), async {
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await
            .ok()
            .map(|()| taken.elapsed())
        }));
    }
    let mut held = Vec::with_capacity(SILENT);
    let mut open = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(d) => held.push(d),
            None => open += 1,
        }
    }
    let took = started.elapsed();
    let refused = held.iter().filter(|d| d.is_zero()).count();
    let timed_out = held
        .iter()
        .filter(|d| **d >= HANDSHAKE - Duration::from_millis(300))
        .count();
    let longest = held.iter().max().unwrap();
    eprintln!(
        "{SILENT} silent connections in {:.1} s: {refused} closed at once (past max_connections), \
         {timed_out} at the handshake timeout, {open} still open; longest held {:.2} s",
        took.as_secs_f64(),
        longest.as_secs_f64()
    );
    assert_eq!(
        open, 0,
        "silent connections held past the handshake timeout"
    );
    assert!(
        *longest < HANDSHAKE + Duration::from_secs(2),
        "a silent connection was held for {longest:?}"
    );
    assert!(timed_out > 0, "some were held until the handshake timeout");
    assert!(refused > 0, "past max_connections they are closed at once");
    assert_eq!(
        refused + timed_out,
        SILENT,
        "each closed at once or at the timeout"
    );
}

/// Connections that send the preface and SETTINGS, then nothing (no PING answered): closed by
/// the keep-alive.
async fn preface_then_silence(port: u16) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    tcp.write_all(&bytes).await.unwrap();
    let limit = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(6);
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("a connection that answers no PING is closed");
    eprintln!(
        "a connection silent after its preface: closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// `message` with its gRPC length prefix.
fn framed(message: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend((message.len() as u32).to_be_bytes());
    b.extend(message);
    b.into()
}

/// A gRPC length prefix announcing `declared` bytes, followed by only `sent` of them.
fn truncated(declared: u32, sent: usize) -> Bytes {
    let mut b = vec![0u8];
    b.extend(declared.to_be_bytes());
    b.extend(std::iter::repeat_n(0x0a, sent));
    b.into()
}

/// The whole gRPC messages at the front of `buf`, taken out of it.
fn messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// An HTTP/2 connection to the gateway, driven in the background.
async fn h2_connect(port: u16) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (conn, driver) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(driver);
    conn
}

/// Starts a call of `RewardService/<method>`: its answer to come, and its request stream.
async fn call(
    conn: &h2::client::SendRequest<Bytes>,
    port: u16,
    method: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut conn = conn.clone().ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://127.0.0.1:{port}/rewardfleet.v1.RewardService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    conn.send_request(request, false).unwrap()
}

/// Sends `data` as flow control allows.
async fn send_all(send: &mut h2::SendStream<Bytes>, mut data: Bytes) {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
        let chunk = data.split_to(capacity.min(data.len()));
        send.send_data(chunk, false).unwrap();
    }
}

/// What the gateway answered on one stream.
#[derive(Debug)]
struct Answer {
    messages: Vec<Bytes>,
    /// The gRPC status (from the trailers, or the headers of a trailers-only answer).
    status: Option<tonic::Status>,
    /// What ended the stream instead of a status.
    broken: Option<h2::Error>,
}

async fn read_answer(response: h2::client::ResponseFuture) -> Answer {
    let mut answer = Answer {
        messages: Vec::new(),
        status: None,
        broken: None,
    };
    let response = match response.await {
        Ok(r) => r,
        Err(e) => {
            answer.broken = Some(e);
            return answer;
        }
    };
    assert_eq!(response.status(), 200);
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        answer.status = Some(status);
        return answer;
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                answer.messages.extend(messages(&mut buf));
            }
            Err(e) => {
                answer.broken = Some(e);
                return answer;
            }
        }
    }
    match body.trailers().await {
        Ok(trailers) => answer.status = trailers.as_ref().and_then(tonic::Status::from_header_map),
        Err(e) => answer.broken = Some(e),
    }
    answer
}

/// Stops and resumes the reads of a [`Freezable`].
#[derive(Default)]
struct Valve {
    frozen: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Valve {
    fn open(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// A TCP stream whose reads stop while its valve is shut: the kernel keeps receiving, the
/// HTTP/2 stack above sees nothing.
struct Freezable {
    inner: TcpStream,
    valve: Arc<Valve>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.valve.frozen.load(Ordering::SeqCst) {
            *self.valve.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.valve.frozen.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The state (`/proc/net/tcp`'s `st`) of this process's loopback socket on `local_port`.
fn tcp_state(local_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{local_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()))
            .then(|| u8::from_str_radix(fields.get(3)?, 16).ok())
            .flatten()
    })
}

/// The resident set of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Raises this process's soft limit on open files to `needed` (with `prlimit`, up to the hard
/// limit); the gateway started afterwards inherits it.
fn raise_fd_limit(needed: u64) {
    let soft = || {
        std::fs::read_to_string("/proc/self/limits")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    if soft() >= needed {
        return;
    }
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={needed}:"))
        .status();
    assert!(
        soft() >= needed,
        "{needed} open files are needed (ulimit -n is {}; the hard limit must allow it)",
        soft()
    );
}
