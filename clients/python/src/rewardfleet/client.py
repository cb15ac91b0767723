"""`RewardClient`: the blocking client of a rewardfleet gateway (gRPC)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from rewardfleet._common import (
    CLOSE,
    READINESS_SERVICE,
    RESUMABLE,
    SessionBook,
    batch_request,
    batches,
    channel_options,
    credentials,
    error_from_rpc,
    rpc_code,
    health_request,
    health_status,
    metadata_pairs,
    split_target,
)
from rewardfleet.errors import RewardfleetError, SessionLostError, UnavailableError
from rewardfleet.types import CandidateLike, HealthState, ProfileInfo, Reward, from_proto, profile_from_proto
from rewardfleet.v1 import reward_pb2 as pb
from rewardfleet.v1 import reward_pb2_grpc


def _identity(b: bytes) -> bytes:
    return b


class RewardClient:
    """Scores candidates on a rewardfleet gateway.

    >>> client = RewardClient("127.0.0.1:50051", profile="math")  # doctest: +SKIP
    >>> client.score([{"id": "a", "prompt": "1+1?", "response": "2", "reference": "2"}])  # doctest: +SKIP

    `target` is `host:port`, `http://host:port` or `https://host:port` (TLS). `profile` is the
    default profile (None: the gateway's default); `timeout` the default deadline of unary calls,
    in seconds. TLS: `tls=True`, or `credentials` (`grpc.ssl_channel_credentials(...)`), or
    `root_certificates` / `private_key` / `certificate_chain` (PEM bytes). `metadata` is sent
    with every call (e.g. `{"authorization": "Bearer …"}`, or `traceparent`).
    """

    def __init__(
        self,
        target: str,
        *,
        profile: str | None = None,
        timeout: float | None = None,
        tls: bool | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target, use_tls = split_target(target, tls)
        self.profile = profile
        self.timeout = timeout
        self.metadata = metadata_pairs(metadata)
        creds = _credentials(use_tls, credentials, root_certificates, private_key, certificate_chain)
        opts = channel_options(options)
        self._channel = (
            grpc.secure_channel(self.target, creds, options=opts)
            if creds is not None
            else grpc.insecure_channel(self.target, options=opts)
        )
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=_identity,
            response_deserializer=_identity,
        )

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def score(
        self,
        candidates: Iterable[CandidateLike],
        *,
        profile: str | None = None,
        timeout: float | None = None,
    ) -> list[Reward]:
        """Scores one batch (`ScoreBatch`) and returns its rewards in input order.

        A FAILED reward is returned like any other (`reward.failed`, `reward.error`).

        Raises:
            CandidateError: a candidate cannot be sent (the message names its index and field).
            InvalidRequestError: the gateway refused the batch (field and limit in the message);
                `UnknownProfileError` lists the profiles served.
            UnavailableError: the gateway is unreachable or draining (address and health state).
        """
        request = batch_request(profile or self.profile, candidates)
        try:
            response: pb.ScoreBatchResponse = self._stub.ScoreBatch(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return [from_proto(r) for r in response.rewards]

    def score_stream(
        self,
        candidates: Iterable[CandidateLike],
        *,
        profile: str | None = None,
        batch_size: int = 256,
        window: int = 0,
        session_id: str | None = None,
        max_resumes: int = 10,
    ) -> Iterator[Reward]:
        """Scores candidates over one `Score` session and yields each reward as it arrives (in
        any order: match them by `candidate_id`).

        `candidates` may be any iterable (a generator of rollouts as they finish); it is read
        as the session's `window` (unresolved candidates; 0: the gateway's default) allows,
        in batches of about `batch_size` that keep runs of one `group_id` whole. A broken stream
        is resumed with the same `session_id` (up to `max_resumes` times in a row, with
        backoff): batches the gateway had not accepted are sent again, and duplicate rewards are
        dropped, so each candidate is yielded exactly once.

        Raises:
            as `score`, and SessionLostError when the stream cannot be resumed.
        """
        book = SessionBook(batches(candidates, batch_size), profile or self.profile or "", window)
        if session_id:
            book.session_id = session_id
        failures = 0
        delay = 0.1
        while True:
            stream = book.new_stream()
            holder: list[Any] = []
            call = self._stub.Score(self._requests(book, stream, holder), metadata=self.metadata)
            holder.append(call)
            opened = closed = False
            try:
                for response in call:
                    kind = response.WhichOneof("kind")
                    if kind == "reward":
                        if book.fresh(response.reward):
                            yield from_proto(response.reward)
                    elif kind == "accepted":
                        book.accepted(response.accepted.batch_index)
                    elif kind == "opened":
                        opened = True
                        failures = 0
                        delay = 0.1
                    elif kind == "closed":
                        closed = True
                if closed:
                    return
                broken: RewardfleetError = UnavailableError(
                    f"the Score stream to {self.target} ended without `closed`"
                )
            except grpc.RpcError as e:
                if book.source_error is not None:
                    raise book.source_error from None
                code = rpc_code(e)
                if code not in RESUMABLE:
                    raise self._error(e) from None
                broken = self._error(e)
                if not opened and book.stream == 1 and not book.seen:
                    # Never connected: nothing to resume.
                    raise broken from None
            finally:
                if not closed:
                    call.cancel()
            failures += 1
            if failures > max_resumes:
                raise SessionLostError(
                    f"session {book.session_id} on {self.target}: the stream broke {failures} times in a row; "
                    f"{len(book.seen)} rewards received, {book.owed()} owed. Last error: {broken}. "
                    f"Resume later with score_stream(..., session_id={book.session_id!r}) and the candidates "
                    "not yet rewarded"
                ) from broken
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _requests(book: SessionBook, stream: int, holder: list[Any]) -> Iterator[pb.ScoreRequest]:
        yield book.open_request()
        while (request := book.next_batch(stream)) is not None:
            yield request
        if book.source_error is not None:
            if holder:
                holder[0].cancel()
            return
        if stream == book.stream:
            yield CLOSE

    def list_profiles(self, *, timeout: float | None = None) -> list[ProfileInfo]:
        """The profiles the gateway serves, with their components.

        Raises:
            UnavailableError: the gateway is unreachable.
        """
        try:
            response: pb.ListProfilesResponse = self._stub.ListProfiles(
                pb.ListProfilesRequest(), timeout=timeout or self.timeout or 10.0, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return [profile_from_proto(p) for p in response.profiles]

    def health(self, service: str = READINESS_SERVICE, *, timeout: float = 5.0) -> HealthState:
        """The gateway's `grpc.health.v1` state for `service` (readiness by default; "" for
        liveness). NOT_SERVING while it drains.

        Raises:
            UnavailableError: nothing answers at the address.
        """
        try:
            raw: bytes = self._health(health_request(service), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            code = rpc_code(e)
            if code == grpc.StatusCode.NOT_FOUND:
                return HealthState.SERVICE_UNKNOWN
            raise error_from_rpc(e, self.target, "unreachable") from None
        return HealthState(health_status(raw))

    def _error(self, e: grpc.RpcError) -> RewardfleetError:
        """The exception for a failed call; for an unavailable gateway, with its health state."""
        code = rpc_code(e)
        state = None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            try:
                state = self.health(timeout=1.0).name
            except RewardfleetError:
                state = "unreachable"
        return error_from_rpc(e, self.target, state)


def _credentials(
    use_tls: bool,
    given: grpc.ChannelCredentials | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    return credentials(use_tls, given, root_certificates, private_key, certificate_chain)
