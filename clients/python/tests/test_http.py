"""The gateway's HTTP endpoints as OpenRLHF and slime call them.

OpenRLHF: its own `SingleTurnAgentExecutor._fetch_rewards_via_http` (openrlhf 0.11.2 from PyPI,
installed without its training dependencies) posts to `/get_reward`; the rewards must equal
`ScoreBatch`'s. slime is not on PyPI (the PyPI name `slime` is another project), so its
`remote_rm` is called exactly as slime's `slime/rollout/rm_hub/__init__.py` does it: an aiohttp
POST of `{"prompt", "response", "label"}`, `raise_for_status()`, `await resp.json()` as the
sample's reward.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
import torch
from conftest import Gateway
from openrlhf.utils.agent import SingleTurnAgentExecutor

from rewardfleet import Candidate, RewardClient

TEMPLATE = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


def rollouts(n: int) -> tuple[list[str], list[str], list[str]]:
    """OpenRLHF's view of `n` rollouts: the query decoded with special tokens (a BOS before the
    prompt, an end-of-turn token after the response), the prompt, the label."""
    queries, prompts, labels = [], [], []
    for i in range(n):
        prompt = TEMPLATE.format(q=f"what is {i % 5} + 0?")
        answer = str(i % 5)
        response = [answer, str(i % 5 + 1), answer + " since " + "z" * 50][i % 3]
        queries.append("<s>" + prompt + response + "<|im_end|>")
        prompts.append(prompt)
        labels.append(answer)
    return queries, prompts, labels


def score_batch(gateway: Gateway, profile: str, prompts: list[str], queries: list[str],
                labels: list[str]) -> list[float]:
    groups: dict[str, int] = {}
    candidates = []
    for i, (p, q, label) in enumerate(zip(prompts, queries, labels, strict=True)):
        response = q[len("<s>") + len(p) :].removesuffix("<|im_end|>")
        g = groups.setdefault(p, len(groups))
        candidates.append(Candidate(id=str(i), group_id=f"p{g}", prompt=p, response=response, reference=label))
    with RewardClient(gateway.grpc) as client:
        return [r.value for r in client.score(candidates, profile=profile)]


def post(url: str, body: object) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


@pytest.mark.parametrize("profile", ["math", "ranked"])
def test_openrlhf_fetches_the_same_rewards_as_score_batch(gateway: Gateway, profile: str) -> None:
    queries, prompts, labels = rollouts(24)
    url = f"{gateway.http}/get_reward" + ("" if profile == "math" else f"?profile={profile}")
    # Two endpoints: OpenRLHF shards the queries across them (both are this gateway).
    executor = SingleTurnAgentExecutor(remote_rm_url=[url, url])
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, labels))
    assert len(answers) == 2
    rewards = [r for a in answers for r in a["rewards"]]
    # Each request is one batch (groups are normalised within it): compare shard by shard.
    expected = [
        v
        for shard in (slice(0, 12), slice(12, 24))
        for v in score_batch(gateway, profile, prompts[shard], queries[shard], labels[shard])
    ]
    assert rewards == expected
    for a in answers:
        assert all(0.0 <= s <= 1.0 for s in a["scores"])
        assert a["profile"] == profile and set(a["statuses"]) == {"OK"}
    if profile == "math":
        assert rewards[:3] == [2.0, 0.0, -1.0]
        assert answers[0]["scores"][:3] == [1.0, 0.0, 0.0]
        assert answers[0]["extra_logs"]["component/exact_match"][:3] == [1.0, 0.0, 0.0]
    else:
        zscores = answers[0]["rewards"]
        assert answers[0]["scores"] == [pytest.approx(1 / (1 + math.exp(-z))) for z in zscores]


def test_openrlhf_single_turn_reads_rewards_scores_and_extra_logs(gateway: Gateway) -> None:
    # What SingleTurnAgentExecutor.execute does with one rollout's answer, and what
    # _process_response_into_experience then does with extra_logs (a tensor per value).
    queries, prompts, labels = rollouts(1)
    executor = SingleTurnAgentExecutor(remote_rm_url=f"{gateway.http}/get_reward")
    (info,) = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, labels))
    score = info.get("scores") if info.get("scores") is not None else info.get("rewards")
    assert info["rewards"] == [2.0] and score == [1.0]
    torch.tensor([info["rewards"]])
    torch.tensor([score])
    for key, value in info["extra_logs"].items():
        assert torch.tensor([value]).numel() == 1, key
    assert set(info["extra_logs"]) >= {"component/exact_match", "status/failed", "status/degraded"}


def test_failed_items_get_the_floor_and_say_why(gateway: Gateway) -> None:
    # `strict` fails a candidate without a reference; its floor is -0.5.
    status, _, body = post(f"{gateway.http}/get_reward?profile=strict",
                           {"query": ["Q?4", "Q?4"], "prompts": ["Q?", "Q?"], "labels": ["4", None]})
    assert status == 200
    assert body["rewards"] == [1.0, -0.5]
    assert body["statuses"] == ["OK", "FAILED"]
    assert body["errors"][0] is None and "missing_reference" in body["errors"][1]
    assert body["extra_logs"]["status/failed"] == [0.0, 1.0]


def test_empty_lists_answer_empty_lists(gateway: Gateway) -> None:
    status, _, body = post(f"{gateway.http}/get_reward", {"query": [], "prompts": [], "labels": []})
    assert status == 200
    assert (body["rewards"], body["scores"], body["extra_logs"]) == ([], [], {})


def test_bad_bodies_answer_400_naming_field_and_index(gateway: Gateway) -> None:
    url = f"{gateway.http}/get_reward"
    status, _, body = post(url, {"query": ["a", "b"], "prompts": ["a"], "labels": ["x", "y"]})
    assert status == 400 and body["field"] == "prompts" and "1 entries for 2 queries" in body["error"]
    status, _, body = post(url, {"query": ["a"], "prompts": ["a"], "labels": []})
    assert status == 400 and body["field"] == "labels"
    status, _, body = post(url, {"prompts": []})
    assert status == 400 and body["field"] == "query"
    # Per item: the whole request fails (400), the valid items are scored and answered in it.
    status, _, body = post(url, {"query": ["Q?4", 7, "other Q?4"], "prompts": ["Q?", "Q?", "Q?"], "labels": ["4"] * 3})
    assert status == 400 and body["field"] == "query[1]"
    assert body["rewards"] == [2.0, None, None]
    assert body["errors"][1] == "query[1]: must be a string, not a number"
    assert body["errors"][2].startswith("prompts[2]: is not a prefix of query[2]")
    assert body["statuses"] == ["OK", "INVALID", "INVALID"]
    status, _, body = post(url + "?profile=helpful", {"query": [], "prompts": []})
    assert status == 400 and body["field"] == "profile" and "known: math, ranked, strict" in body["error"]


def test_health_and_profiles(gateway: Gateway) -> None:
    with urllib.request.urlopen(f"{gateway.http}/health") as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "ready"}
    with urllib.request.urlopen(f"{gateway.http}/profiles") as r:
        body = json.loads(r.read())
    assert body["default"] == "math" and [p["name"] for p in body["profiles"]] == ["math", "ranked", "strict"]


async def slime_remote_rm(url: str, sample: dict[str, Any]) -> Any:
    """slime's `remote_rm`, as written in slime/rollout/rm_hub/__init__.py (one attempt)."""
    payload = {"prompt": sample["prompt"], "response": sample["response"], "label": sample["label"]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(url, json=payload) as resp:
            resp.raise_for_status()
            return await resp.json()


def test_slime_remote_rm_gets_the_reward(gateway: Gateway) -> None:
    url = f"{gateway.http}/reward"
    samples: list[dict[str, Any]] = [
        {"prompt": "what is 3?", "response": "3", "label": "3"},
        {"prompt": [{"role": "user", "content": "what is 3?"}], "response": "4", "label": "3"},
        {"prompt": "what is 3?", "response": "3" + " x" * 40, "label": "3"},
    ]

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(slime_remote_rm(url, s) for s in samples)))

    # slime's Sample.get_reward_value: the reward as stored (no --reward-key).
    assert asyncio.run(main()) == [2.0, 0.0, -1.0]
    # --reward-key reward: ?detail=true answers an object per sample.
    detailed = asyncio.run(slime_remote_rm(url + "?detail=true", samples[0]))
    assert detailed["reward"] == 2.0 and detailed["status"] == "OK"
    assert detailed["components"] == {"exact_match": 1.0, "max_chars": 1.0} and detailed["timing"]["total_ms"] > 0


def test_slime_failed_and_batched_and_bad(gateway: Gateway) -> None:
    status, headers, body = post(f"{gateway.http}/reward?profile=strict", {"prompt": "q", "response": "4", "label": None})
    assert status == 200 and body == -0.5
    assert headers["x-rewardfleet-status"] == "FAILED" and "missing_reference" in headers["x-rewardfleet-error"]
    status, _, body = post(f"{gateway.http}/reward", [{"prompt": "q", "response": "4", "label": "4"},
                                                        {"prompt": "q", "response": "5", "label": 4}])
    assert status == 200 and body == [2.0, 0.0]
    status, _, body = post(f"{gateway.http}/reward", {"prompt": "q", "response": 4})
    assert status == 400 and body["field"] == "response"
    status, _, body = post(f"{gateway.http}/reward", [{"prompt": "q", "response": "4"}, {"prompt": 3, "response": ""}])
    assert status == 400 and body["field"] == "[1].prompt"
