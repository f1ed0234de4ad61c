"""Benchmark (not a test): text-to-motion metrics over 30,000 embedded pairs, seconds per step on this machine.

Run: ``python -m benchmarks.t2m_metrics [--pairs 30000 --dim 256 --seed 0 --encoder-items 256 --no-encoder]``.

The embeddings are random (text = real motion + noise, generated = shifted and rescaled), the size of the paper's test
split (~30K) at the Evaluator_272 width (256). Timed: FID from the arrays (float64 sums + eigen square roots),
FID streamed through the :class:`~metrics.generation.FID` metric in batches of 32, R-precision in shuffled
groups of 32 (function and streamed metric), MM-Dist, Diversity and one full T2M protocol repetition; and, unless
``--no-encoder``, the evaluator's encoding throughput (default-size config, MiniLM text side) extrapolated to
``--pairs`` items, which is what a real evaluation adds on top of the metrics.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from metrics.generation import FID, RPrecision, diversity, fid, mm_dist, r_precision, t2m_metrics


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _stream_fid(real: torch.Tensor, gen: torch.Tensor, batch: int) -> float:
    metric = FID(num_features=real.shape[1])
    for start in range(0, real.shape[0], batch):
        metric.update(real[start : start + batch], real=True)
        metric.update(gen[start : start + batch], real=False)
    return float(metric.compute())


def _stream_r_precision(text: torch.Tensor, motion: torch.Tensor, batch: int) -> torch.Tensor:
    metric = RPrecision(seed=0)
    for start in range(0, text.shape[0], batch):
        metric.update(text[start : start + batch], motion[start : start + batch])
    return metric.compute()


def _encoder_rates(items: int, frames: int = 120) -> dict[str, float]:
    """Items per second of the default-size evaluator (eval mode, batch 64) on random clips and captions."""
    from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator

    model = TextMotionEvaluator(EvaluatorConfig()).eval()
    motion = torch.randn(64, frames, 272)
    lengths = torch.full((64,), frames)
    captions = [f"a person walks forward {i} steps, turns left and waves with the right hand" for i in range(64)]
    with torch.inference_mode():
        model.encode_motion(motion[:2], lengths[:2])  # warm-up
        model.encode_text(captions[:2])
        batches = max(1, items // 64)
        t_motion, _ = _timed(lambda: [model.encode_motion(motion, lengths) for _ in range(batches)])
        t_text, _ = _timed(lambda: [model.encode_text(captions) for _ in range(batches)])
    return {"motion": batches * 64 / t_motion, "text": batches * 64 / t_text}


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per timed step: seconds and the value computed (as a sanity check).

    ``argv`` None means defaults (``benchmarks`` calls ``main()`` with its own command line in ``sys.argv``).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.t2m_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30_000, help="number of (text, motion) pairs")
    parser.add_argument("--dim", type=int, default=256, help="embedding width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-items", type=int, default=256, help="items used to time the evaluator encoders")
    parser.add_argument("--no-encoder", action="store_true", help="skip the evaluator throughput measurement")
    args = parser.parse_args(list(argv) if argv is not None else [])

    g = torch.Generator().manual_seed(args.seed)
    n, e = args.pairs, args.dim
    real = torch.randn(n, e, generator=g)
    text = real + 7.0 * torch.randn(n, e, generator=g)  # noise level that gives R@1 around 0.6
    gen = 1.1 * torch.randn(n, e, generator=g) + 0.1
    mm = torch.randn(100, 30, e, generator=g)

    rows: list[tuple[str, float, str]] = []

    def add(name: str, fn: Callable[[], Any], fmt: Callable[[Any], str]) -> None:
        seconds, value = _timed(fn)
        rows.append((name, seconds, fmt(value)))

    add("FID (arrays, float64)", lambda: fid(real, gen), lambda v: f"FID={v:.3f}")
    add("FID (metric, batches of 32)", lambda: _stream_fid(real, gen, 32), lambda v: f"FID={v:.3f}")
    add(
        "R-precision (function, groups of 32)",
        lambda: r_precision(text, real, generator=torch.Generator().manual_seed(0)),
        lambda v: "R@1/2/3=" + "/".join(f"{x:.3f}" for x in v.tolist()),
    )
    add(
        "R-precision (metric, batches of 32)",
        lambda: _stream_r_precision(text, real, 32),
        lambda v: "R@1/2/3=" + "/".join(f"{x:.3f}" for x in v.tolist()),
    )
    add("MM-Dist", lambda: mm_dist(text, real), lambda v: f"{v:.3f}")
    add("Diversity (300 pairs)", lambda: diversity(gen, 300, torch.Generator().manual_seed(0)), lambda v: f"{v:.3f}")
    add(
        "one T2M repetition (all metrics, real + gen, MM 100x30)",
        lambda: t2m_metrics(text, real, gen, torch.Generator().manual_seed(0), mm),
        lambda v: f"{len(v)} values",
    )
    print(f"T2M metrics over {n:,} embedded pairs, E={e}, torch threads={torch.get_num_threads()}")
    width = max(len(r[0]) for r in rows) + 2
    for name, seconds, value in rows:
        print(f"  {name:<{width}}{seconds:8.3f} s   {value}")
    if not args.no_encoder:
        rates = _encoder_rates(args.encoder_items)
        print(f"evaluator encoders (default config, 120-frame clips, batch 64, {args.encoder_items} items timed):")
        for side, rate in rates.items():
            print(f"  {side:<8}{rate:8.1f} items/s  -> {n / rate:8.1f} s for {n:,} items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
