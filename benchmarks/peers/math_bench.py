"""The rules path against math-verify: input generation, the peer's scoring loop, the comparison.

    math_bench.py gen N OUT.jsonl [--seed S]        candidates in rewardfleet's input format
    math_bench.py peer IN.jsonl OUT.jsonl --style trl|verl
                                                     math-verify over IN, one process, sequential
    math_bench.py compare IN.jsonl RF.jsonl PEER.jsonl [--examples K]
                                                     agreement of the two, as one JSON line

The peer loop scores the way trainers call math-verify today:

- `trl`: TRL's `trl.rewards.accuracy_reward`: `gold = parse(solution)`; when it parses, the
  completion is parsed with a LaTeX-only extraction (boxed first, `try_extract_without_anchor=False`,
  units normalised, `extraction_mode="first_match"`) and `reward = float(verify(gold, answer))`;
  an unparsable gold is `None` (the example is skipped; counted here, scored 0). Timeouts as TRL
  sets them in the main thread (parsing 10 s, verify 5 s). The reference is given in `$...$`, as
  the solutions of TRL's math datasets carry LaTeX.
- `verl`: veRL's `verl.utils.reward_score.math_verify.compute_score`: `math_metric` with a LaTeX
  gold extraction and expression-then-LaTeX prediction extraction, the ground truth wrapped in
  `\\boxed{...}`, any exception a 0.

Both build their extraction configs per call, as the originals do.
"""

import argparse
import json
import logging
import random
import sys
import time

# Gold answers by kind: (reference as a dataset ships it, equivalent forms a model may write).
# GSM8K's answers are integers (after `####`); MATH's are LaTeX.


def _gsm8k(rng):
    value = rng.choice([rng.randint(2, 99), rng.randint(100, 999), rng.randint(1000, 99999)])
    forms = [str(value)]
    if value >= 1000:
        forms.append(f"{value:,}")
        forms.append(f"{value:,}".replace(",", "{,}"))
    forms.append(f"{value}.00" if rng.random() < 0.5 else f"\\${value}")
    return str(value), forms, value


def _fraction(rng):
    b = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 12])
    a = rng.randint(1, b - 1)
    while _gcd(a, b) != 1:
        a = rng.randint(1, b - 1)
    sign = "-" if rng.random() < 0.2 else ""
    ref = f"{sign}\\frac{{{a}}}{{{b}}}"
    forms = [ref, f"{sign}\\dfrac{{{a}}}{{{b}}}", f"{sign}{a}/{b}"]
    if b in (2, 4, 5, 8):
        forms.append(f"{sign}{a / b:g}")
    return ref, forms, (-1 if sign else 1) * a / b


def _decimal(rng):
    value = round(rng.uniform(0.1, 99.9), rng.choice([1, 2]))
    ref = f"{value:g}"
    forms = [ref]
    if rng.random() < 0.5:
        forms.append(f"{value:.3f}")
    return ref, forms, value


def _negative(rng):
    value = -rng.randint(1, 60)
    return str(value), [str(value), f"x = {value}"], value


def _surd(rng):
    k = rng.randint(2, 9)
    n = rng.choice([2, 3, 5, 7])
    ref = f"{k}\\sqrt{{{n}}}"
    return ref, [ref, f"{k} \\sqrt{n}"], k * n**0.5


def _percent(rng):
    value = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 80])
    return str(value), [str(value), f"{value}\\%"], value


KINDS = [(_gsm8k, 0.45), (_fraction, 0.2), (_decimal, 0.1), (_negative, 0.1), (_surd, 0.1), (_percent, 0.05)]


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def _wrong(rng, ref, value):
    """A wrong answer of the same shape."""
    if "\\sqrt" in ref:
        k, n = ref.split("\\sqrt")
        return f"{int(k) + rng.choice([-1, 1])}\\sqrt{n}"
    if "\\frac" in ref:
        return ref.replace("}{", f"+{rng.randint(1, 3)}}}{{", 1)
    if isinstance(value, int):
        return str(value + rng.choice([-10, -2, -1, 1, 2, 10, value]))
    return f"{value + rng.choice([-1.5, -0.1, 0.1, 1]):g}"


def _reasoning(rng):
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    steps = [
        f"First, we compute {a} + {b} = {a + b}.",
        f"Then multiply: {a} \\times {b} = {a * b}.",
        f"So we have $x = {a}$ and $y = {b}$ from the conditions.",
        f"Subtracting gives {a * b} - {a} = {a * b - a}.",
        "We substitute back into the original equation and simplify.",
        "Let me check the units and make sure nothing was missed.",
    ]
    rng.shuffle(steps)
    return " ".join(steps[: rng.randint(2, len(steps))])


def _response(rng, ref, forms, value):
    """One sample: (response, how it was written)."""
    think = _reasoning(rng)
    r = rng.random()
    right = rng.choice(forms)
    if r < 0.35:
        return f"{think}\n\nTherefore, the final answer is $\\boxed{{{right}}}$.", "boxed_right"
    if r < 0.45:
        return f"{think}\n\nThe answer is ${right}$.", "latex_right"
    if r < 0.53:
        return f"{think} So the answer is {right}.", "plain_right"
    if r < 0.78:
        return f"{think}\n\nTherefore, the final answer is $\\boxed{{{_wrong(rng, ref, value)}}}$.", "boxed_wrong"
    if r < 0.86:
        return f"{think} So the answer is {_wrong(rng, ref, value)}.", "plain_wrong"
    if r < 0.92:
        return "I am not sure how to solve this problem without more information.", "no_answer"
    if r < 0.96:
        return f"{think}\n\nTherefore, the final answer is $\\boxed{{{right}", "truncated"
    unit = rng.choice(["\\text{ dollars}", "\\text{ cm}", "^\\circ"])
    return f"{think}\n\nThe final answer is $\\boxed{{{forms[0]}{unit}}}$.", "boxed_unit"


def gen(n, out, seed):
    rng = random.Random(seed)
    kinds, weights = zip(*KINDS)
    group = 8  # samples per prompt, as a GRPO group
    with open(out, "w") as f:
        for i in range(n):
            if i % group == 0:
                kind = rng.choices(kinds, weights)[0]
                ref, forms, value = kind(rng)
                pid = i // group
            response, how = _response(rng, ref, forms, value)
            line = {
                "id": f"p{pid}-s{i % group}",
                "group_id": f"p{pid}",
                "prompt": f"Problem {pid}: solve and put the final answer in \\boxed{{}}.",
                "response": response,
                "reference": ref,
                "labels": {"kind": kind.__name__.lstrip("_"), "style": how},
            }
            f.write(json.dumps(line) + "\n")


def _trl_scorer():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    def score(content, sol):
        # TRL's datasets carry the gold's LaTeX in `$...$` (a MATH solution); a bare `3\\sqrt{7}`
        # would parse as `3`. Plain numbers (GSM8K) parse either way.
        if "$" not in sol and "\\boxed" not in sol:
            sol = f"${sol}$"
        gold_parsed = parse(sol, parsing_timeout=10)
        if len(gold_parsed) == 0:
            return None
        answer_parsed = parse(
            content,
            extraction_config=[
                LatexExtractionConfig(
                    normalization_config=NormalizationConfig(units=True),
                    boxed_match_priority=0,
                    try_extract_without_anchor=False,
                )
            ],
            extraction_mode="first_match",
            parsing_timeout=10,
        )
        return float(verify(gold_parsed, answer_parsed, timeout_seconds=5))

    return score


def _verl_scorer():
    from math_verify.errors import TimeoutException
    from math_verify.metric import math_metric
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    def score(model_output, ground_truth, timeout_score=0.0):
        verify_func = math_metric(
            gold_extraction_target=(LatexExtractionConfig(),),
            pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()),
        )
        ret_score = 0.0
        ground_truth_boxed = "\\boxed{" + ground_truth + "}"
        try:
            ret_score, _ = verify_func([ground_truth_boxed], [model_output])
        except TimeoutException:
            ret_score = timeout_score
        except Exception:
            pass
        return ret_score

    return score


def peer(path, out, style):
    start = time.perf_counter()
    score = _trl_scorer() if style == "trl" else _verl_scorer()
    # As the trainers run it: math-verify's warnings stay quiet.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    loaded = time.perf_counter()
    rewards = []
    for line in lines:
        rewards.append(score(line["response"], line["reference"]))
    done = time.perf_counter()
    with open(out, "w") as f:
        for line, reward in zip(lines, rewards):
            f.write(json.dumps({"id": line["id"], "reward": reward}) + "\n")
    summary = {
        "style": style,
        "candidates": len(lines),
        "loop_s": round(done - loaded, 3),
        "import_and_read_s": round(loaded - start, 3),
        "candidates_per_s": round(len(lines) / (done - loaded), 1),
        "correct": sum(1 for r in rewards if r),
        "gold_unparsed": sum(1 for r in rewards if r is None),
    }
    print(json.dumps(summary))


def compare(inp, rf, peer_out, examples):
    with open(inp) as f:
        lines = {}
        for text in f:
            line = json.loads(text)
            lines[line["id"]] = line
    rf_correct = {}
    rf_status = {}
    with open(rf) as f:
        for text in f:
            out = json.loads(text)
            comps = out.get("components") or {}
            value = comps.get("math_answer")
            if isinstance(value, dict):
                value = value.get("value")
            rf_correct[out["id"]] = value == 1.0
            rf_status[out["id"]] = out.get("status")
    peer_correct = {}
    with open(peer_out) as f:
        for text in f:
            out = json.loads(text)
            peer_correct[out["id"]] = bool(out["reward"])
    ids = list(lines)
    agree = sum(1 for i in ids if rf_correct.get(i) == peer_correct.get(i))
    only_rf = [i for i in ids if rf_correct.get(i) and not peer_correct.get(i)]
    only_peer = [i for i in ids if peer_correct.get(i) and not rf_correct.get(i)]
    by_style = {}
    for i in only_rf + only_peer:
        key = ("rf_only " if i in only_rf else "peer_only ") + lines[i]["labels"]["style"] + "/" + lines[i]["labels"]["kind"]
        by_style[key] = by_style.get(key, 0) + 1

    def show(sample):
        return [{"response_end": lines[i]["response"][-70:], "reference": lines[i]["reference"]} for i in sample]

    print(
        json.dumps(
            {
                "candidates": len(ids),
                "rf_ok": sum(1 for s in rf_status.values() if s == "OK" or s == "ok"),
                "rf_correct": sum(rf_correct.values()),
                "peer_correct": sum(peer_correct.values()),
                "agree": agree,
                "agree_pct": round(100 * agree / max(1, len(ids)), 2),
                "rf_only": len(only_rf),
                "peer_only": len(only_peer),
                "disagreements_by_style": dict(sorted(by_style.items(), key=lambda kv: -kv[1])),
                "examples_rf_only": show(only_rf[:examples]),
                "examples_peer_only": show(only_peer[:examples]),
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("n", type=int)
    g.add_argument("out")
    g.add_argument("--seed", type=int, default=1234)
    r = sub.add_parser("peer")
    r.add_argument("inp")
    r.add_argument("out")
    r.add_argument("--style", choices=["trl", "verl"], default="trl")
    c = sub.add_parser("compare")
    c.add_argument("inp")
    c.add_argument("rf")
    c.add_argument("peer")
    c.add_argument("--examples", type=int, default=5)
    a = p.parse_args()
    if a.cmd == "gen":
        gen(a.n, a.out, a.seed)
    elif a.cmd == "peer":
        peer(a.inp, a.out, a.style)
    else:
        compare(a.inp, a.rf, a.peer, a.examples)


if __name__ == "__main__":
    sys.exit(main())
