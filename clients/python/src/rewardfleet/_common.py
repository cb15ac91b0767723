"""What the sync and the asyncio clients share: targets and channels, error mapping, health
messages, and the bookkeeping of a resumable `Score` session."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from rewardfleet.errors import (
    RefusedError,
    RewardfleetError,
    UnavailableError,
    invalid_request,
)
from rewardfleet.types import CandidateLike, to_proto
from rewardfleet.v1 import reward_pb2 as pb

#: The gRPC service whose health says whether the gateway takes work.
READINESS_SERVICE = "rewardfleet.v1.RewardService"

#: Largest message in either direction (as the gateway's own limit).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Codes after which a broken `Score` stream is resumed (the session's record survives them).
RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)


def split_target(target: str, tls: bool | None) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `host:port`, `http://…` or `https://…`."""
    use_tls = bool(tls)
    for scheme, secure in (("https://", True), ("http://", False), ("grpcs://", True), ("grpc://", False)):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            use_tls = secure if tls is None else bool(tls)
            break
    return target.rstrip("/"), use_tls


def channel_options(extra: Sequence[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    """Channel options: large messages, and quick reconnects (a resumed session waits on them)."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        *extra,
    ]


def credentials(
    use_tls: bool,
    given: grpc.ChannelCredentials | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    """The channel credentials asked for; None for a plaintext channel."""
    if given is not None:
        return given
    if use_tls or root_certificates or certificate_chain:
        return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    return None


def error_from_rpc(e: grpc.RpcError, target: str, health: str | None = None) -> RewardfleetError:
    """The client exception for a failed call, with what to do about it."""
    code = rpc_code(e) or grpc.StatusCode.UNKNOWN
    details_of = getattr(e, "details", None)
    details = (details_of() if callable(details_of) else None) or str(e)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return invalid_request(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return RefusedError(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        state = f"; health: {health}" if health else ""
        return UnavailableError(
            f"rewardfleet gateway at {target} is unavailable ({code.name}: {details}){state}; "
            "check that `rewardfleet gateway` runs there and listens on that port"
        )
    return RewardfleetError(f"rewardfleet gateway at {target}: {code.name}: {details}")


def rpc_code(e: BaseException) -> grpc.StatusCode | None:
    """The status code of a failed call (sync `grpc.Call` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(e, "code", None)
    code = code_of() if callable(code_of) else None
    return code if isinstance(code, grpc.StatusCode) else None


def health_request(service: str) -> bytes:
    """`grpc.health.v1.HealthCheckRequest{service}`, encoded by hand (no extra dependency)."""
    data = service.encode()
    return b"\n" + _varint(len(data)) + data if data else b""


def health_status(message: bytes) -> int:
    """The `status` (field 1, an enum) of an encoded `HealthCheckResponse`."""
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        if key == 0x08:
            value, _ = _read_varint(message, i)
            return value
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(message, i)
        elif wire == 2:
            length, i = _read_varint(message, i)
            i += length
        else:
            break
    return 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while i < len(data):
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return value, i


def batch_request(profile: str | None, candidates: Iterable[CandidateLike]) -> pb.ScoreBatchRequest:
    """A `ScoreBatch` request for `candidates`."""
    return pb.ScoreBatchRequest(
        profile=profile or "",
        candidates=[to_proto(c, i) for i, c in enumerate(candidates)],
    )


def batches(candidates: Iterable[CandidateLike], batch_size: int) -> Iterator[list[pb.Candidate]]:
    """`candidates` cut into batches of about `batch_size`, never splitting a run of candidates
    that share a non-empty `group_id` (a group is normalised and judged within one batch)."""
    batch: list[pb.Candidate] = []
    for i, c in enumerate(candidates):
        msg = to_proto(c, i)
        if len(batch) >= batch_size and (not msg.group_id or msg.group_id != batch[-1].group_id):
            yield batch
            batch = []
        batch.append(msg)
    if batch:
        yield batch


@dataclass
class SessionBook:
    """What a resumable `Score` session has sent, had accepted and received, shared between the
    thread (or task) that writes requests and the one that reads responses.

    A batch is *accepted* once the gateway said so (`accepted{batch_index}` counts the batches
    of one stream): from then on the session owes its rewards across broken streams. On a new
    stream, batches sent but not accepted are sent again first. Rewards are deduplicated by
    candidate id.
    """

    source: Iterator[list[pb.Candidate]]
    profile: str
    window: int
    session_id: str = field(default_factory=lambda: f"py-{uuid.uuid4().hex}")
    #: Rewards received, by candidate id (duplicates after a resume are dropped).
    seen: set[str] = field(default_factory=set)
    #: Candidates submitted (accepted or not).
    submitted: int = 0
    #: Batches to send (again) before the next one of `source`.
    resend: list[list[pb.Candidate]] = field(default_factory=list)
    #: Batches sent on the current stream, in order, with whether each was accepted.
    sent: list[tuple[list[pb.Candidate], bool]] = field(default_factory=list)
    #: The current stream; a writer of an older stream stops.
    stream: int = 0
    source_done: bool = False
    #: What the candidates' iterable raised, if it did (the stream is then cancelled).
    source_error: BaseException | None = None
    #: Guards everything above but `source`.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Guards `source` alone, so that a slow iterable never holds up the reading of rewards.
    source_lock: threading.Lock = field(default_factory=threading.Lock)

    def new_stream(self) -> int:
        """Starts a stream: batches sent on the last one and not accepted go again."""
        with self.lock:
            self.stream += 1
            unaccepted = [b for b, ok in self.sent if not ok]
            self.resend = unaccepted + self.resend
            self.sent = []
            return self.stream

    def open_request(self) -> pb.ScoreRequest:
        return pb.ScoreRequest(
            open=pb.SessionOpen(session_id=self.session_id, profile=self.profile, max_in_flight=self.window)
        )

    def next_batch(self, stream: int) -> pb.ScoreRequest | None:
        """The next batch request of `stream`; None once there is nothing more (or the stream is
        not the current one)."""
        with self.lock:
            if stream != self.stream:
                return None
            if self.resend:
                batch = self.resend.pop(0)
                self.sent.append((batch, False))
                return pb.ScoreRequest(batch=pb.Batch(candidates=batch))
            if self.source_done:
                return None
        with self.source_lock:
            try:
                batch = next(self.source)
            except StopIteration:
                with self.lock:
                    self.source_done = True
                return None
            except Exception as e:  # the caller's iterable failed: end the session with it
                with self.lock:
                    self.source_done = True
                    self.source_error = e
                return None
        with self.lock:
            self.submitted += len(batch)
            if stream != self.stream:
                self.resend.append(batch)
                return None
            self.sent.append((batch, False))
        return pb.ScoreRequest(batch=pb.Batch(candidates=batch))

    def owed(self) -> int:
        """Candidates submitted whose reward has not arrived."""
        return self.submitted - len(self.seen)

    def accepted(self, index: int) -> None:
        with self.lock:
            if 0 <= index < len(self.sent):
                batch, _ = self.sent[index]
                self.sent[index] = (batch, True)

    def fresh(self, reward: pb.Reward) -> bool:
        """Whether `reward` is new (not a duplicate from an earlier stream)."""
        if reward.candidate_id in self.seen:
            return False
        self.seen.add(reward.candidate_id)
        return True


CLOSE = pb.ScoreRequest(close=pb.Close())


def metadata_pairs(
    metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None,
) -> tuple[tuple[str, str | bytes], ...]:
    """Call metadata as gRPC wants it (lower-case keys)."""
    if metadata is None:
        return ()
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    return tuple((k.lower(), v) for k, v in pairs)
