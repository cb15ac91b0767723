"""veRL's own reward managers (`naive`: per sample; `batch`: one call per batch) from the
`verl` package call rewardfleet's `compute_score` on a `DataProto` of token ids, decoded by a
tokenizer built here. verl is installed without its training dependencies (ray and tensordict
import; nothing starts)."""

from __future__ import annotations

import logging
import math
import string
from typing import Any

import pytest
from conftest import Gateway

from rewardfleet.verl import compute_score, make_batch_compute_score, make_compute_score

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
reward_manager = pytest.importorskip("verl.workers.reward_manager")
verl = pytest.importorskip("verl")


class CharTokenizer:
    """Decodes ids to characters (0 is padding), as veRL's managers need of a tokenizer."""

    chars = "\0" + string.printable

    def encode(self, text: str) -> list[int]:
        return [self.chars.index(c) for c in text]

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(self.chars[int(i)] for i in ids if int(i) != 0)


def batch(samples: list[tuple[str, str, str | None]]) -> Any:
    """A DataProto as veRL's rollout makes it: left-padded prompts, right-padded responses."""
    tok = CharTokenizer()
    plen = max(len(p) for p, _, _ in samples)
    rlen = max(len(r) for _, r, _ in samples)
    prompts, responses, masks = [], [], []
    for p, r, _ in samples:
        pi, ri = tok.encode(p), tok.encode(r)
        prompts.append([0] * (plen - len(pi)) + pi)
        responses.append(ri + [0] * (rlen - len(ri)))
        masks.append([0] * (plen - len(pi)) + [1] * len(pi) + [1] * len(ri) + [0] * (rlen - len(ri)))
    return verl.DataProto.from_dict(
        tensors={
            "prompts": torch.tensor(prompts),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array(["gsm8k"] * len(samples), dtype=object),
            "reward_model": np.array([{"ground_truth": g} for _, _, g in samples], dtype=object),
            "extra_info": np.array([{"index": k // 2, "question": p} for k, (p, _, _) in enumerate(samples)],
                                   dtype=object),
        },
    )


SAMPLES: list[tuple[str, str, str | None]] = [("1+1=", "2", "2"), ("1+1=", "3", "2"), ("2+2=", "4", None)]


def last_rewards(t: Any, data: Any) -> list[float]:
    """The reward veRL put on each sample's last response token."""
    lengths = data.batch["attention_mask"][:, data.batch["prompts"].shape[-1]:].sum(-1)
    return [float(t[i, int(lengths[i]) - 1]) for i in range(len(lengths))]


def test_naive_manager_calls_the_per_sample_form(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    manager = reward_manager.NaiveRewardManager(
        tokenizer=CharTokenizer(), num_examine=0, compute_score=make_compute_score(gateway.grpc, profile="math")
    )
    data = batch(SAMPLES)
    with caplog.at_level(logging.WARNING, logger="rewardfleet.verl"):
        rewards = last_rewards(manager(data), data)
    assert rewards[:2] == [2.0, 0.0]
    assert math.isnan(rewards[2]), "a FAILED reward is NaN"
    assert "FAILED" in caplog.text and "gsm8k" in caplog.text


def test_batch_manager_calls_the_batched_form(gateway: Gateway) -> None:
    calls: list[int] = []
    inner = make_batch_compute_score(gateway.grpc, profile="ranked")

    def counted(**kwargs: Any) -> list[float]:
        calls.append(len(kwargs["solution_strs"]))
        return inner(**kwargs)

    manager = reward_manager.BatchRewardManager(tokenizer=CharTokenizer(), num_examine=0, compute_score=counted)
    data = batch(SAMPLES[:2] + [("2+2=", "4", "4"), ("2+2=", "5", "4")])
    rewards = last_rewards(manager(data), data)
    assert calls == [4], "one call for the whole batch"
    # group_zscore within each extra_info index: the right answer of each pair is +1, the wrong -1.
    assert rewards == [1.0, -1.0, 1.0, -1.0]


def test_module_level_functions_take_target_from_reward_kwargs(gateway: Gateway) -> None:
    assert compute_score("src", "2", "2", {"question": "1+1="}, target=gateway.grpc, profile="math") == 2.0
    scores = compute_score_batch_call(gateway)
    assert scores[0] == 2.0 and math.isnan(scores[1])


def compute_score_batch_call(gateway: Gateway) -> list[float]:
    from rewardfleet.verl import compute_score_batch

    return compute_score_batch(["a", "b"], ["2", "2"], ["2", None], [None, None], target=gateway.grpc, profile="math")
