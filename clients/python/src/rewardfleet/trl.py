"""TRL `reward_funcs`: a rewardfleet profile as a reward function of `GRPOTrainer` (and of the
other TRL trainers that take `reward_funcs`).

    from rewardfleet.trl import reward_func
    trainer = GRPOTrainer(..., reward_funcs=[reward_func("127.0.0.1:50051", profile="math",
                                                         reference_column="answer")])

TRL calls it as `f(prompts=..., completions=..., completion_ids=..., **columns)`, with every
other dataset column as a keyword list; `reference_column` names the column that holds the
ground truth (`answer`, `solution`, …), `label_columns` columns sent as candidate labels. The
`num_generations` completions of one prompt form a group. A FAILED reward is `None`, which TRL
turns into NaN and masks, instead of training on a zero.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from rewardfleet.aio import AsyncRewardClient
from rewardfleet.client import RewardClient
from rewardfleet.types import Candidate, Reward

log = logging.getLogger(__name__)

#: TRL passes prompts and completions as text, or as chat messages (conversational datasets).
Text = str | Sequence[Mapping[str, Any]]


def _text(completion: Text) -> str:
    """A completion's text: the string, or the content of its (last) assistant message."""
    if isinstance(completion, str):
        return completion
    parts = [str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant"]
    return parts[-1] if parts else ""


def _prompt(prompt: Text) -> str | list[Mapping[str, str]]:
    if isinstance(prompt, str):
        return prompt
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in prompt]


def candidates(
    prompts: Sequence[Text],
    completions: Sequence[Text],
    columns: Mapping[str, Any],
    reference_column: str | None,
    label_columns: Sequence[str],
) -> list[Candidate]:
    """The candidates of one TRL reward call; completions of equal prompts share a group."""
    groups: dict[str, int] = {}
    out = []
    references = columns.get(reference_column) if reference_column else None
    if reference_column and references is None:
        log.warning(
            "rewardfleet.trl: the dataset has no column %r for references; known columns: %s",
            reference_column,
            ", ".join(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric")),
        )
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        key = repr(prompt)
        group = groups.setdefault(key, len(groups))
        reference = references[i] if references is not None else None
        labels = {name: str(columns[name][i]) for name in label_columns if name in columns}
        out.append(
            Candidate(
                id=str(i),
                group_id=f"g{group}",
                prompt=_prompt(prompt),
                response=_text(completion),
                reference=None if reference is None else str(reference),
                labels=labels,
            )
        )
    return out


def _values(rewards: Sequence[Reward]) -> list[float | None]:
    out: list[float | None] = []
    for r in rewards:
        if r.failed:
            log.warning("rewardfleet: candidate %s FAILED: %s (reward None, masked)", r.candidate_id, r.error)
            out.append(None)
        else:
            out.append(r.value)
    return out


def reward_func(
    target: str | RewardClient,
    *,
    profile: str | None = None,
    reference_column: str | None = "answer",
    label_columns: Sequence[str] = (),
    name: str | None = None,
    timeout: float | None = None,
) -> Callable[..., list[float | None]]:
    """A synchronous TRL reward function scoring with `profile` on the gateway at `target` (an
    address or a `RewardClient`). Its `__name__` (what TRL logs the reward under) is `name`, or
    `rewardfleet_<profile>`."""
    client = target if isinstance(target, RewardClient) else RewardClient(target, timeout=timeout)

    def rewardfleet_reward(
        prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any
    ) -> list[float | None]:
        batch = candidates(prompts, completions, kwargs, reference_column, label_columns)
        return _values(client.score(batch, profile=profile))

    rewardfleet_reward.__name__ = name or f"rewardfleet_{profile or 'default'}"
    return rewardfleet_reward


def async_reward_func(
    target: str,
    *,
    profile: str | None = None,
    reference_column: str | None = "answer",
    label_columns: Sequence[str] = (),
    name: str | None = None,
    timeout: float | None = None,
) -> Callable[..., Awaitable[list[float | None]]]:
    """The asynchronous form: TRL runs async reward functions concurrently on its own event
    loop. The client (a `grpc.aio` channel) is made on first call, on that loop."""
    holder: list[AsyncRewardClient] = []

    async def rewardfleet_reward(
        prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any
    ) -> list[float | None]:
        if not holder:
            holder.append(AsyncRewardClient(target, timeout=timeout))
        batch = candidates(prompts, completions, kwargs, reference_column, label_columns)
        return _values(await holder[0].score(batch, profile=profile))

    rewardfleet_reward.__name__ = name or f"rewardfleet_{profile or 'default'}"
    return rewardfleet_reward
