"""veRL `compute_score`: a rewardfleet profile as veRL's custom reward function.

Per sample (veRL's `naive` reward manager):

    # my_reward.py, named by custom_reward_function.path=my_reward.py, .name=compute_score
    from rewardfleet.verl import make_compute_score
    compute_score = make_compute_score("127.0.0.1:50051", profile="math")

Batched (`reward_model.reward_manager=batch`, one call per training batch):

    from rewardfleet.verl import make_batch_compute_score
    compute_score = make_batch_compute_score("127.0.0.1:50051", profile="math")

Or point `custom_reward_function.path` at this module itself (`name=compute_score` or
`compute_score_batch`) and pass `target` and `profile` through
`custom_reward_function.reward_kwargs`.

veRL gives the response (`solution_str`), the ground truth and `extra_info`; the prompt is read
from `extra_info[prompt_key]` when the dataset put it there (`prompt`, then `question`). A FAILED
reward becomes NaN, with its reason logged, so that the trainer can mask it rather than train on
a zero.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rewardfleet.client import RewardClient
from rewardfleet.types import Candidate, Reward

log = logging.getLogger(__name__)

_clients: dict[str, RewardClient] = {}
_clients_lock = threading.Lock()


def _client(target: str | RewardClient) -> RewardClient:
    if isinstance(target, RewardClient):
        return target
    with _clients_lock:
        if target not in _clients:
            _clients[target] = RewardClient(target)
        return _clients[target]


def _prompt(extra_info: Mapping[str, Any] | None, prompt_key: str | None) -> str:
    if not isinstance(extra_info, Mapping):
        return ""
    keys = [prompt_key] if prompt_key else ["prompt", "question"]
    for key in keys:
        value = extra_info.get(key)
        if isinstance(value, str):
            return value
    return ""


def _value(r: Reward, data_source: object) -> float:
    if r.failed:
        log.warning(
            "rewardfleet: sample %s (data_source %s) FAILED: %s; its score is NaN (mask it)",
            r.candidate_id,
            data_source,
            r.error,
        )
        return math.nan
    return r.value


def _candidate(
    i: int, solution_str: str, ground_truth: object, extra_info: Mapping[str, Any] | None, prompt_key: str | None
) -> Candidate:
    group = ""
    if isinstance(extra_info, Mapping) and extra_info.get("index") is not None:
        group = f"i{extra_info['index']}"
    return Candidate(
        id=str(i),
        group_id=group,
        prompt=_prompt(extra_info, prompt_key),
        response=solution_str,
        reference=None if ground_truth is None else str(ground_truth),
    )


def make_compute_score(
    target: str | RewardClient,
    *,
    profile: str | None = None,
    prompt_key: str | None = None,
) -> Callable[..., float]:
    """veRL's per-sample `compute_score(data_source, solution_str, ground_truth, extra_info)`
    for the gateway at `target`, scoring with `profile`."""
    client = _client(target)

    def compute_score(
        data_source: object,
        solution_str: str,
        ground_truth: object,
        extra_info: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> float:
        (reward,) = client.score([_candidate(0, solution_str, ground_truth, extra_info, prompt_key)], profile=profile)
        return _value(reward, data_source)

    return compute_score


def make_batch_compute_score(
    target: str | RewardClient,
    *,
    profile: str | None = None,
    prompt_key: str | None = None,
) -> Callable[..., list[float]]:
    """veRL's batched `compute_score(data_sources, solution_strs, ground_truths, extra_infos)`
    (the `batch` reward manager): one `ScoreBatch` per call. Samples whose `extra_info` carry
    the same `index` (GRPO's samples of one prompt) form a group."""
    client = _client(target)

    def compute_score(
        data_sources: Sequence[object],
        solution_strs: Sequence[str],
        ground_truths: Sequence[object],
        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
        **_: Any,
    ) -> list[float]:
        infos: Sequence[Mapping[str, Any] | None] = (
            extra_infos if extra_infos is not None else [None] * len(solution_strs)
        )
        batch = [
            _candidate(i, s, g, e, prompt_key)
            for i, (s, g, e) in enumerate(zip(solution_strs, ground_truths, infos, strict=True))
        ]
        rewards = client.score(batch, profile=profile)
        return [_value(r, d) for r, d in zip(rewards, data_sources, strict=True)]

    return compute_score


def compute_score(
    data_source: object,
    solution_str: str,
    ground_truth: object,
    extra_info: Mapping[str, Any] | None = None,
    *,
    target: str = "127.0.0.1:50051",
    profile: str | None = None,
    prompt_key: str | None = None,
    **_: Any,
) -> float:
    """Per-sample form for `custom_reward_function.name=compute_score` (`target`, `profile`
    from `custom_reward_function.reward_kwargs`)."""
    return make_compute_score(target, profile=profile, prompt_key=prompt_key)(
        data_source, solution_str, ground_truth, extra_info
    )


def compute_score_batch(
    data_sources: Sequence[object],
    solution_strs: Sequence[str],
    ground_truths: Sequence[object],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    target: str = "127.0.0.1:50051",
    profile: str | None = None,
    prompt_key: str | None = None,
    **_: Any,
) -> list[float]:
    """Batched form for `custom_reward_function.name=compute_score_batch` with the `batch`
    reward manager."""
    return make_batch_compute_score(target, profile=profile, prompt_key=prompt_key)(
        data_sources, solution_strs, ground_truths, extra_infos
    )
