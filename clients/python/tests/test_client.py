"""RewardClient and AsyncRewardClient against a real gateway, and against a scripted server
that answers out of order, repeats itself and breaks its streams."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from conftest import Gateway, Proxy, free_port, math_candidate, math_expected

from rewardfleet import (
    AsyncRewardClient,
    Candidate,
    CandidateError,
    ChatMessage,
    HealthState,
    InvalidRequestError,
    RewardClient,
    Status,
    UnavailableError,
    UnknownProfileError,
)
from rewardfleet.v1 import reward_pb2 as pb
from rewardfleet.v1 import reward_pb2_grpc


def test_round_trip_in_input_order(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client:
        rewards = client.score([math_candidate(i) for i in range(30)])
    assert [r.candidate_id for r in rewards] == [f"c{i}" for i in range(30)]
    assert [r.value for r in rewards] == [math_expected(i) for i in range(30)]
    assert rewards[0].components == {"exact_match": 1.0, "max_chars": 1.0}
    assert rewards[2].flags == ("too_long", "gate_failed:max_chars")
    assert all(r.status is Status.OK and r.timing is not None for r in rewards)
    timing = rewards[0].timing
    assert timing is not None and timing.total_ms >= timing.scoring_ms >= 0


def test_dataclass_candidates_and_chat_prompts(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc, profile="math") as client:
        rewards = client.score(
            [
                Candidate(id="a", prompt=[ChatMessage("user", "2+2?")], response="4", reference="4"),
                {"id": "b", "messages": [{"role": "user", "content": "2+2?"}], "response": "5", "reference": 4},
                {"prompt": "no id: takes its index", "response": "x", "reference": "x"},
            ]
        )
    assert [(r.candidate_id, r.value) for r in rewards] == [("a", 2.0), ("b", 0.0), ("2", 2.0)]


def test_a_failed_reward_is_data_not_an_exception(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client:
        (ok, failed) = client.score(
            [{"id": "a", "response": "1", "reference": "1"}, {"id": "b", "response": "1"}], profile="strict"
        )
    assert ok.status is Status.OK and not ok.failed
    assert failed.failed and "missing_reference" in failed.error and "reference" in failed.error


def test_stream_every_reward_once(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client:
        rewards = list(client.score_stream((math_candidate(i) for i in range(2000)), batch_size=100, window=256))
    by_id = {r.candidate_id: r.value for r in rewards}
    assert len(rewards) == 2000 == len(by_id)
    assert all(by_id[f"c{i}"] == math_expected(i) for i in range(2000))


def test_stream_resumes_the_same_session_after_the_connection_is_cut(gateway: Gateway, proxy: Proxy) -> None:
    seen: list[str] = []
    with RewardClient(proxy.address) as client:
        for reward in client.score_stream((math_candidate(i) for i in range(3000)), batch_size=50, window=100):
            seen.append(reward.candidate_id)
            if len(seen) == 300:
                proxy.cut()
    assert proxy.connections >= 2, "the stream was resumed"
    assert sorted(seen) == sorted(f"c{i}" for i in range(3000)), "every candidate exactly once"


def test_async_client_same_surface(gateway: Gateway, proxy: Proxy) -> None:
    async def main() -> None:
        async with AsyncRewardClient(gateway.grpc, profile="math") as client:
            assert await client.health() is HealthState.SERVING
            assert {p.name for p in await client.list_profiles()} == {"math", "ranked", "strict"}
            rewards = await client.score([math_candidate(i) for i in range(9)])
            assert [r.value for r in rewards] == [math_expected(i) for i in range(9)]
            with pytest.raises(UnknownProfileError):
                await client.score([math_candidate(0)], profile="nope")

        async def rollouts() -> AsyncIterator[dict[str, object]]:
            for i in range(1500):
                yield math_candidate(i)
                if i % 100 == 0:
                    await asyncio.sleep(0)

        seen: list[str] = []
        async with AsyncRewardClient(proxy.address) as client:
            async for r in client.score_stream(rollouts(), batch_size=50, window=100):
                seen.append(r.candidate_id)
                if len(seen) == 400:
                    proxy.cut()
        assert sorted(seen) == sorted(f"c{i}" for i in range(1500))
        assert proxy.connections >= 2

    asyncio.run(main())


def test_profiles_and_health(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client:
        profiles = {p.name: p for p in client.list_profiles()}
        assert client.health() is HealthState.SERVING
        assert client.health("") is HealthState.SERVING
        assert client.health("no.such.Service") is HealthState.SERVICE_UNKNOWN
    assert [c.name for c in profiles["math"].components] == ["exact_match", "max_chars"]
    assert profiles["math"].components[1].gate
    assert profiles["ranked"].normalize == "group_zscore"


def test_unknown_profile_lists_the_known_ones(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client, pytest.raises(UnknownProfileError) as e:
        client.score([math_candidate(0)], profile="helpful")
    assert e.value.profile == "helpful" and e.value.known == ["math", "ranked", "strict"]
    assert "pass profile= one of: math, ranked, strict" in str(e.value)


def test_a_bad_batch_names_the_field(gateway: Gateway) -> None:
    with RewardClient(gateway.grpc) as client:
        with pytest.raises(InvalidRequestError, match=r"candidates\[1\]\.id"):
            client.score([math_candidate(0), math_candidate(0)])
        with pytest.raises(CandidateError, match=r"candidates\[1\]\.response"):
            client.score([math_candidate(0), {"id": "x"}])
        with pytest.raises(CandidateError, match=r"candidates\[0\]\.prompt\[0\]"):
            client.score([{"id": "x", "response": "y", "prompt": [{"role": "user"}]}])


def test_unreachable_names_the_address_and_health() -> None:
    address = f"127.0.0.1:{free_port()}"
    with RewardClient(address, timeout=3) as client:
        with pytest.raises(UnavailableError) as e:
            client.score([math_candidate(0)])
        assert address in str(e.value) and "health: unreachable" in str(e.value)
        with pytest.raises(UnavailableError):
            list(client.score_stream([math_candidate(0)]))
        with pytest.raises(UnavailableError, match=address):
            client.health(timeout=1)


def test_an_iterable_that_raises_ends_the_stream_with_its_error(gateway: Gateway) -> None:
    def rollouts() -> Iterator[dict[str, object]]:
        yield from (math_candidate(i) for i in range(10))
        raise RuntimeError("rollout worker died")

    with RewardClient(gateway.grpc) as client, pytest.raises(RuntimeError, match="rollout worker died"):
        list(client.score_stream(rollouts(), batch_size=5))


class Scripted(reward_pb2_grpc.RewardServiceServicer):  # type: ignore[misc]
    """Answers each batch's rewards in reverse order, repeats every reward, and breaks the first
    stream after accepting its first batch (its second batch is never accepted)."""

    def __init__(self) -> None:
        self.streams: list[list[str]] = []
        self.session_ids: list[str] = []
        self.lock = threading.Lock()

    def Score(self, requests: Iterator[pb.ScoreRequest], context: Any) -> Iterator[pb.ScoreResponse]:
        with self.lock:
            n = len(self.streams)
            batches: list[str] = []
            self.streams.append(batches)
        for index, request in enumerate(requests):
            kind = request.WhichOneof("kind")
            if kind == "open":
                self.session_ids.append(request.open.session_id)
                yield pb.ScoreResponse(opened=pb.SessionOpened(session_id=request.open.session_id))
            elif kind == "batch":
                ids = [c.id for c in request.batch.candidates]
                batches.append(",".join(ids))
                if n == 0 and len(batches) == 2:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "scripted break")
                yield pb.ScoreResponse(accepted=pb.BatchAccepted(batch_index=len(batches) - 1))
                for cid in reversed(ids):
                    reward = pb.Reward(candidate_id=cid, value=float(cid[1:]), status=pb.Reward.OK)
                    yield pb.ScoreResponse(reward=reward)
                    yield pb.ScoreResponse(reward=reward)
            elif kind == "close":
                yield pb.ScoreResponse(closed=pb.SessionClosed())
                return


def test_out_of_order_duplicates_and_resend_of_unaccepted_batches() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    scripted = Scripted()
    reward_pb2_grpc.add_RewardServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RewardClient(f"127.0.0.1:{port}") as client:
            candidates = [{"id": f"c{i}", "response": "r"} for i in range(12)]
            rewards = list(client.score_stream(candidates, batch_size=4))
    finally:
        server.stop(None)
    assert [r.candidate_id for r in rewards][:4] == ["c3", "c2", "c1", "c0"], "out of order, as sent"
    assert sorted(r.candidate_id for r in rewards) == sorted(f"c{i}" for i in range(12)), "no duplicates"
    assert len(set(scripted.session_ids)) == 1 and len(scripted.streams) == 2, "resumed the same session"
    assert scripted.streams[1][0] == "c4,c5,c6,c7", "the unaccepted batch goes first on the new stream"
