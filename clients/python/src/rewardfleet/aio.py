"""`AsyncRewardClient`: the asyncio client of a rewardfleet gateway (`grpc.aio`), with the same
surface as `RewardClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from rewardfleet._common import (
    CLOSE,
    READINESS_SERVICE,
    RESUMABLE,
    SessionBook,
    batch_request,
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
from rewardfleet.types import CandidateLike, HealthState, ProfileInfo, Reward, from_proto, profile_from_proto, to_proto
from rewardfleet.v1 import reward_pb2 as pb
from rewardfleet.v1 import reward_pb2_grpc


def _identity(b: bytes) -> bytes:
    return b


async def _abatches(
    candidates: Iterable[CandidateLike] | AsyncIterable[CandidateLike], batch_size: int
) -> AsyncIterator[list[pb.Candidate]]:
    """As `rewardfleet._common.batches`, over a sync or an async iterable."""
    batch: list[pb.Candidate] = []
    i = 0

    async def items() -> AsyncIterator[CandidateLike]:
        if isinstance(candidates, AsyncIterable):
            async for c in candidates:
                yield c
        else:
            for c in candidates:
                yield c

    async for c in items():
        msg = to_proto(c, i)
        i += 1
        if len(batch) >= batch_size and (not msg.group_id or msg.group_id != batch[-1].group_id):
            yield batch
            batch = []
        batch.append(msg)
    if batch:
        yield batch


class AsyncRewardClient:
    """Scores candidates on a rewardfleet gateway from asyncio code. Arguments as
    `RewardClient`; every method is a coroutine (`score_stream` an async generator)."""

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
            grpc.aio.secure_channel(self.target, creds, options=opts)
            if creds is not None
            else grpc.aio.insecure_channel(self.target, options=opts)
        )
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=_identity,
            response_deserializer=_identity,
        )

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close(None)

    async def score(
        self,
        candidates: Iterable[CandidateLike],
        *,
        profile: str | None = None,
        timeout: float | None = None,
    ) -> list[Reward]:
        """As `RewardClient.score`."""
        request = batch_request(profile or self.profile, candidates)
        try:
            response: pb.ScoreBatchResponse = await self._stub.ScoreBatch(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise await self._error(e) from None
        return [from_proto(r) for r in response.rewards]

    async def score_stream(
        self,
        candidates: Iterable[CandidateLike] | AsyncIterable[CandidateLike],
        *,
        profile: str | None = None,
        batch_size: int = 256,
        window: int = 0,
        session_id: str | None = None,
        max_resumes: int = 10,
    ) -> AsyncIterator[Reward]:
        """As `RewardClient.score_stream`; `candidates` may also be an async iterable."""
        source = _abatches(candidates, batch_size)
        book = SessionBook(iter(()), profile or self.profile or "", window)
        if session_id:
            book.session_id = session_id
        failures = 0
        delay = 0.1
        while True:
            stream = book.new_stream()
            call = self._stub.Score(metadata=self.metadata)
            writer = asyncio.ensure_future(self._write(call, book, source, stream))
            opened = closed = False
            broken: RewardfleetError
            try:
                async for response in call:
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
                broken = UnavailableError(f"the Score stream to {self.target} ended without `closed`")
            except (grpc.RpcError, asyncio.CancelledError) as e:
                if book.source_error is not None:
                    raise book.source_error from None
                if isinstance(e, asyncio.CancelledError):
                    raise
                code = rpc_code(e)
                if code not in RESUMABLE:
                    raise await self._error(e) from None
                broken = await self._error(e)
                if not opened and book.stream == 1 and not book.seen:
                    raise broken from None
            finally:
                if not closed:
                    call.cancel()
                writer.cancel()
                try:
                    await writer
                except (asyncio.CancelledError, grpc.RpcError):
                    pass
            failures += 1
            if failures > max_resumes:
                raise SessionLostError(
                    f"session {book.session_id} on {self.target}: the stream broke {failures} times in a row; "
                    f"{len(book.seen)} rewards received, {book.owed()} owed. Last error: {broken}. "
                    f"Resume later with score_stream(..., session_id={book.session_id!r}) and the candidates "
                    "not yet rewarded"
                ) from broken
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    async def _next_batch(
        book: SessionBook, source: AsyncIterator[list[pb.Candidate]], stream: int
    ) -> pb.ScoreRequest | None:
        """As `SessionBook.next_batch`, reading an async source (one event loop: no locks)."""
        if stream != book.stream:
            return None
        if book.resend:
            batch = book.resend.pop(0)
        else:
            if book.source_done:
                return None
            try:
                batch = await source.__anext__()
            except StopAsyncIteration:
                book.source_done = True
                return None
            except Exception as e:  # the caller's iterable failed: end the session with it
                book.source_done = True
                book.source_error = e
                return None
            book.submitted += len(batch)
            if stream != book.stream:
                book.resend.append(batch)
                return None
        book.sent.append((batch, False))
        return pb.ScoreRequest(batch=pb.Batch(candidates=batch))

    async def _write(
        self,
        call: Any,
        book: SessionBook,
        source: AsyncIterator[list[pb.Candidate]],
        stream: int,
    ) -> None:
        await call.write(book.open_request())
        while (request := await self._next_batch(book, source, stream)) is not None:
            await call.write(request)
        if book.source_error is not None:
            call.cancel()
            return
        if stream == book.stream:
            await call.write(CLOSE)
            await call.done_writing()

    async def list_profiles(self, *, timeout: float | None = None) -> list[ProfileInfo]:
        """As `RewardClient.list_profiles`."""
        try:
            response: pb.ListProfilesResponse = await self._stub.ListProfiles(
                pb.ListProfilesRequest(), timeout=timeout or self.timeout or 10.0, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise await self._error(e) from None
        return [profile_from_proto(p) for p in response.profiles]

    async def health(self, service: str = READINESS_SERVICE, *, timeout: float = 5.0) -> HealthState:
        """As `RewardClient.health`."""
        try:
            raw: bytes = await self._health(health_request(service), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            code = rpc_code(e)
            if code == grpc.StatusCode.NOT_FOUND:
                return HealthState.SERVICE_UNKNOWN
            raise error_from_rpc(e, self.target, "unreachable") from None
        return HealthState(health_status(raw))

    async def _error(self, e: grpc.RpcError) -> RewardfleetError:
        code = rpc_code(e)
        state = None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            try:
                state = (await self.health(timeout=1.0)).name
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
