#!/usr/bin/env python3
"""Builds the reward models of the side-by-side benchmark against OpenRLHF's `serve_rm`.

    make_models.py OUT_DIR [--size 20m|100m ...] [--check N]

For each size, a randomly initialised Llama-architecture `LlamaForSequenceClassification`
(`num_labels=1`, fixed seed) and a byte-level BPE tokenizer trained here on local text (no
download), saved with `save_pretrained` for `openrlhf.cli.serve_rm` in `OUT_DIR/llama-SIZE/`, and
the same weights traced to TorchScript for rewardfleet in `OUT_DIR/llama-SIZE/rewardfleet-f32.pt`
and `rewardfleet-bf16.pt` (a trace records dtype casts as constants: one trace per dtype).

The TorchScript module computes what OpenRLHF's reward model computes
(`openrlhf/models/model.py::_get_reward_model`): position ids from the attention mask's cumulative
sum, the `score` value head on every position, and the value at the last position whose mask is
1 (OpenRLHF's `eos_indices`), so it gives the same reward whether rewardfleet pads on the right or
OpenRLHF on the left. The tokenizer is saved the way a stock Llama `tokenizer.json` is, with
the post-processor that puts BOS (`<s>`) first; OpenRLHF's queries already begin with BOS as
text (its chat template) and serve_rm tokenizes them with `add_special_tokens=False`, so
rewardfleet's model is configured with `add_special_tokens = false` to tokenize them alike.

`--check N` (default 200) loads the saved directory with OpenRLHF's own
`get_llm_for_sequence_regression` and `get_tokenizer` in bf16, as serve_rm does, scores N queries
in serve_rm's way (left padding, batches), scores them with the bf16 TorchScript module
in rewardfleet's way (tokenizer.json without its special tokens, right padding, other batch
shapes), and fails if any reward differs by more than the bf16 tolerance. It also reports the
difference with the special tokens added (a second BOS), which the tolerance must not accept. Writes `OUT_DIR/llama-SIZE/DONE` last.
"""

import argparse
import json
import os
import random
import sys
import sysconfig
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

SEED = 1234
HERE = Path(__file__).resolve().parent

SIZES = {
    # hidden, layers, heads, intermediate; vocabulary 8192: ~20.6M and ~98.9M parameters.
    "20m": (384, 10, 6, 1024),
    "100m": (768, 12, 12, 2304),
}
VOCAB = 8192
MAX_POSITIONS = 4096

# The words of `rewardfleet bench`'s synthetic responses (crates/cli/src/bench.rs), so the
# tokenizer has seen them.
BENCH_WORDS = (
    "the answer is because we add two numbers and then divide by three so result equals seven "
    "reward model score response prompt first second step therefore value of function at point "
    "zero check again carefully which gives final boxed solution proof assume contrary integer "
    "prime square root triangle angle sum"
).split()


def corpus():
    """Local training text: the Python standard library's sources, and the bench's words."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:400]:
        try:
            yield path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
    rng = random.Random(SEED)
    for _ in range(2000):
        yield " ".join(rng.choice(BENCH_WORDS) for _ in range(64))


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    # As in a stock Llama tokenizer.json: BOS before every text when special tokens are added.
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


class OpenRLHFReward(nn.Module):
    """OpenRLHF's reward forward (packing off, no normalisation) over a HF sequence classifier."""

    def __init__(self, model):
        super().__init__()
        self.model = model.model
        self.score = model.score

    def forward(self, input_ids, attention_mask):
        eos = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(attention_mask == 0, 1)
        hidden = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        values = self.score(hidden).squeeze(-1)
        return values.gather(dim=1, index=eos).squeeze(1)


def queries(n, seed):
    """`n` queries of 3 to 400 words of the bench's vocabulary, log-normally spread."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = max(3, min(400, int(rng.lognormvariate(4.0, 0.9))))
        # BOS as text, as OpenRLHF's queries hold it (the chat template's first token).
        out.append(f"<s>Q{i}: " + " ".join(rng.choice(BENCH_WORDS) for _ in range(words)))
    return out


def trace(wrapper, vocab, out_file, tolerance):
    """Traces with padded inputs (so the mask path is the one recorded) and checks the trace
    against eager mode at other shapes, with and without padding."""
    g = torch.Generator().manual_seed(SEED)
    ex = torch.randint(3, vocab, (3, 24), generator=g)
    mask = torch.ones_like(ex)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (ex, mask), strict=False)
        for b, t, pad in [(4, 57, True), (1, 9, False), (2, 130, True), (5, 31, False)]:
            x = torch.randint(3, vocab, (b, t), generator=g)
            m = torch.ones_like(x)
            if pad:
                m[0, t // 2 :] = 0
            want, got = wrapper(x, m), traced(x, m)
            err = (want - got).abs().max().item()
            if err > tolerance:
                raise SystemExit(f"trace differs from eager at {(b, t, pad)}: max abs error {err}")
    traced.save(str(out_file))


def ensure_importable():
    """OpenRLHF's model module imports deepspeed, peft and flash_attn at start. Where a package
    is not installed, the stand-ins in benchmarks/peers/standins take its place (see
    benchmarks/peers/README.md for why each is never called while serving)."""
    import importlib.util

    missing = [m for m in ("deepspeed", "flash_attn") if importlib.util.find_spec(m) is None]
    if missing:
        sys.path.insert(0, str(HERE / "standins"))
        print(f"stand-ins for {', '.join(missing)}", file=sys.stderr)


def check(directory: Path, n: int):
    """serve_rm's rewards (OpenRLHF's loader, bf16) against the TorchScript module's (bf16)."""
    ensure_importable()
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer
    from tokenizers import Tokenizer

    model = get_llm_for_sequence_regression(
        str(directory), "reward", param_dtype="bf16", attn_implementation="sdpa"
    ).eval()
    tokenizer = get_tokenizer(str(directory), model, "left", None, use_fast=True)
    texts = queries(n, SEED + 1)
    peer = []
    with torch.no_grad():
        for i in range(0, n, 16):  # serve_rm: one forward per request batch, left padded
            batch = tokenizer(
                texts[i : i + 16],
                return_tensors="pt",
                add_special_tokens=False,
                max_length=2048,
                padding=True,
                truncation=True,
            )
            peer.extend(model(batch["input_ids"], batch["attention_mask"]).float().tolist())

    ts = torch.jit.load(str(directory / "rewardfleet-bf16.pt")).eval()
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    pad = tok.token_to_id("<pad>")

    def ours(add_special_tokens):
        out = []
        with torch.no_grad():
            for i in range(0, n, 7):  # rewardfleet: other batch shapes, right padded
                batch = tok.encode_batch(texts[i : i + 7], add_special_tokens=add_special_tokens)
                rows = [e.ids for e in batch]
                width = max(map(len, rows))
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                out.extend(ts(ids, mask).float().tolist())
        return torch.tensor(out)

    peer_t = torch.tensor(peer)
    diff = (peer_t - ours(False)).abs()
    double_bos = (peer_t - ours(True)).abs()
    scale = peer_t.abs().max().item()
    # bf16 keeps 8 bits of mantissa: ~0.4 % per rounding; through the layers and with other
    # padding, allow 2 % of the largest reward, and a floor for rewards near zero.
    tolerance = max(0.02 * scale, 1e-2)
    worst = diff.max().item()
    summary = {
        "queries": n,
        "max_abs_diff": worst,
        "mean_abs_diff": diff.mean().item(),
        "max_abs_reward": scale,
        "tolerance": tolerance,
        "reward_std": peer_t.std().item(),
        "max_abs_diff_with_special_tokens": double_bos.max().item(),
    }
    print(json.dumps(summary), file=sys.stderr)
    if worst > tolerance:
        raise SystemExit(f"{directory.name}: rewards differ by up to {worst} > {tolerance}")
    if double_bos.max().item() <= tolerance:
        raise SystemExit(f"{directory.name}: a second BOS changes no reward: the check cannot tell")
    return summary


def build(out: Path, size: str, n_check: int, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    directory = out / f"llama-{size}"
    directory.mkdir(parents=True, exist_ok=True)
    hidden, layers, heads, inter = SIZES[size]
    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    model = LlamaForSequenceClassification(cfg).float().eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    # A trace records dtypes as constants (LlamaRMSNorm's casts): one trace per dtype.
    trace(OpenRLHFReward(model), VOCAB, directory / "rewardfleet-f32.pt", 1e-4)
    bf16 = LlamaForSequenceClassification(cfg).eval()
    bf16.load_state_dict(model.state_dict())
    trace(OpenRLHFReward(bf16.to(torch.bfloat16)), VOCAB, directory / "rewardfleet-bf16.pt", 2e-2)
    info = {"size": size, "parameters": params, "seed": SEED}
    if n_check:
        info["check"] = check(directory, n_check)
    (directory / "info.json").write_text(json.dumps(info, indent=2))
    print(f"llama-{size}: {params / 1e6:.1f}M parameters in {directory}", file=sys.stderr)
    (directory / "DONE").write_text("")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), action="append")
    parser.add_argument("--check", type=int, default=200, help="queries compared (0: none)")
    args = parser.parse_args()
    tokenizer = build_tokenizer()
    for size in args.size or sorted(SIZES, key=lambda s: int(s[:-1])):
        build(args.out, size, args.check, tokenizer)


if __name__ == "__main__":
    main()
