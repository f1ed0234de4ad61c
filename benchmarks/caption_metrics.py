"""Benchmark (not a test): motion-to-text metrics over synthetic captions, seconds per stage on this machine.

Run: ``python -m benchmarks.caption_metrics [--captions 4000 --refs 3 --seed 0 --no-bertscore]``.

Captions come from a small seeded template grammar (subject, action, direction, manner), so predictions share
vocabulary with their references without copying them, like a half-trained captioner. Stages timed: PTB
tokenisation (one Java call over all texts), BLEU/ROUGE-L/CIDEr scoring, BERTScore model load, BERTScore scoring.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

import torch

from metrics.captioning import (
    BERTScoreConfig,
    bertscore,
    build_bert_scorer,
    ngram_scores,
    ptb_tokenize,
)

SUBJECTS = ("a person", "a man", "someone", "the woman", "a figure", "the person")
ACTIONS = ("walks", "runs", "jumps", "waves", "kicks", "turns around", "crouches", "spins", "steps", "hops")
DIRECTIONS = ("forward", "backward", "to the left", "to the right", "in a circle", "in place", "diagonally")
MANNERS = ("slowly", "quickly", "twice", "then stops", "with the right hand", "with the left leg", "")


def synthetic_captions(num: int, num_refs: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """``num`` predicted captions and ``num_refs`` references each, from a seeded template grammar."""
    rng = random.Random(seed)

    def sentence(action: str, direction: str) -> str:
        words = [rng.choice(SUBJECTS), action, direction, rng.choice(MANNERS)]
        return " ".join(w for w in words if w) + rng.choice((".", "", "!"))

    preds, refs = [], []
    for _ in range(num):
        action, direction = rng.choice(ACTIONS), rng.choice(DIRECTIONS)
        refs.append([sentence(action, direction) for _ in range(num_refs)])
        # a prediction gets the action right 70 % of the time and the direction 50 %
        preds.append(
            sentence(
                action if rng.random() < 0.7 else rng.choice(ACTIONS),
                direction if rng.random() < 0.5 else rng.choice(DIRECTIONS),
            )
        )
    return preds, refs


def main(argv: Sequence[str] | None = None) -> int:
    """Print a table of seconds per stage; ``argv=None`` means the defaults (``benchmarks`` calls ``main()``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.caption_metrics", description=__doc__)
    parser.add_argument("--captions", type=int, default=4000)
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-bertscore", action="store_true")
    args = parser.parse_args([] if argv is None else list(argv))

    preds, refs = synthetic_captions(args.captions, args.refs, args.seed)
    rows: list[tuple[str, float, str]] = []

    t = time.perf_counter()
    tokens = ptb_tokenize(preds + [r for group in refs for r in group])
    rows.append(("PTB tokenisation (java)", time.perf_counter() - t, f"{len(tokens)} texts"))
    pred_tok = tokens[: len(preds)]
    ref_tok = [tokens[len(preds) + i * args.refs : len(preds) + (i + 1) * args.refs] for i in range(len(preds))]

    t = time.perf_counter()
    scores = ngram_scores(pred_tok, ref_tok)
    rows.append(("BLEU@1/4 + ROUGE-L + CIDEr", time.perf_counter() - t, ""))
    summary = {k: round(scores[k], 4) for k in ("bleu_1", "bleu_4", "rouge_l", "cider")}

    if not args.no_bertscore:
        config = BERTScoreConfig()
        t = time.perf_counter()
        scorer = build_bert_scorer(config)
        rows.append(("BERTScore model load", time.perf_counter() - t, "all-MiniLM-L6-v2, layer 6"))
        t = time.perf_counter()
        f1 = bertscore(preds, refs, scorer=scorer, progress=True)["f1"]
        pairs = len(preds) * args.refs
        rows.append(("BERTScore scoring", time.perf_counter() - t, f"{pairs} pairs, batch {config.batch_size}"))
        summary["bertscore_f1"] = round(float(f1.double().mean()), 4)

    print(f"captions: {args.captions} x {args.refs} references, torch threads: {torch.get_num_threads()}")
    print(f"{'stage':<30}{'seconds':>10}  note")
    for name, seconds, note in rows:
        print(f"{name:<30}{seconds:>10.2f}  {note}")
    print(f"{'total':<30}{sum(r[1] for r in rows):>10.2f}")
    print("scores:", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
