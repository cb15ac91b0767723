"""TRL's GRPOTrainer computes rewards with rewardfleet's reward functions through its own code:
one real training step on CPU, offline, with a tiny randomly initialised GPT-2 and a tokenizer
built here, then `_calculate_rewards` on known completions (sync and async functions)."""

from __future__ import annotations

import logging
import math
import string
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway

from rewardfleet.trl import async_reward_func, reward_func

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
tokenizers = pytest.importorskip("tokenizers")


def tiny_tokenizer() -> Any:
    """A character-level tokenizer built locally (nothing downloaded)."""
    chars = list(string.printable)
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tok.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def trainer(tmp_path: Path, funcs: list[Any]) -> Any:
    tokenizer = tiny_tokenizer()
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    model = transformers.GPT2LMHeadModel(config)
    dataset = datasets.Dataset.from_dict(
        {"prompt": [f"{i}+0=" for i in range(4)], "answer": [str(i) for i in range(4)]}
    )
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
        max_steps=1, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", bf16=False,
    )
    return trl.GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                           processing_class=tokenizer)


def test_grpo_trains_a_step_with_rewardfleet_rewards(gateway: Gateway, tmp_path: Path) -> None:
    calls: list[int] = []
    sync = reward_func(gateway.grpc, profile="math", reference_column="answer")

    def counted(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        calls.append(len(completions))
        return sync(prompts, completions, **kwargs)

    t = trainer(tmp_path, [counted, async_reward_func(gateway.grpc, profile="math")])
    t.train()
    assert calls == [4], "TRL called the reward function once per batch of completions"
    logged = {k: v for entry in t.state.log_history for k, v in entry.items()}
    assert "rewards/counted/mean" in logged and "rewards/rewardfleet_math/mean" in logged


def test_calculate_rewards_maps_columns_and_masks_failed(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    funcs = [
        reward_func(gateway.grpc, profile="math", reference_column="solution"),
        async_reward_func(gateway.grpc, profile="strict", reference_column="solution", name="strict"),
    ]
    t = trainer(tmp_path, funcs)
    inputs: list[dict[str, str | None]] = [
        {"prompt": "1+1=", "solution": "2"},
        {"prompt": "1+1=", "solution": "2"},
        {"prompt": "2+2=", "solution": None},
    ]
    prompts = [x["prompt"] for x in inputs]
    completions = ["2", "3", "4"]
    with caplog.at_level(logging.WARNING, logger="rewardfleet.trl"):
        rewards = t._calculate_rewards(inputs, prompts, completions, [[0]] * 3)
    assert rewards[:2, 0].tolist() == [2.0, 0.0]
    assert rewards[:2, 1].tolist() == [1.0, 0.0]
    # No reference: both profiles fail the candidate; None, which TRL masks as NaN.
    assert math.isnan(rewards[2, 0].item()) and math.isnan(rewards[2, 1].item())
    assert "FAILED" in caplog.text and "missing_reference" in caplog.text


def test_conversational_prompts(gateway: Gateway) -> None:
    f = reward_func(gateway.grpc, profile="math", reference_column="answer")
    prompts = [[{"role": "user", "content": "1+1?"}]] * 2
    completions = [[{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "5"}]]
    assert f(prompts=prompts, completions=completions, answer=["2", "2"]) == [2.0, 0.0]
