"""Table 3 (text-to-motion): one generated motion per test item, scored in the evaluator's embedding space.

Length: ``--length gt`` (default) generates exactly the ground-truth number of latents (exit head off, the T2M
protocol's GT length); ``--length exit`` lets the exit head stop earlier, capped at the GT length. Generated, real
and text embeddings come from the run's evaluator (`metrics.evaluator`), the metrics from
`metrics.generation.t2m_metrics` repeated ``--repeats`` times (mean ± 95 % interval). Rows: real motion, a
**shuffled-real** baseline (every real motion paired with another item's caption: a derangement, so R-precision is
at chance and FID is 0 by construction), and LLaMo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamo.eval.items import TestItems
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.guidance import config_default_setting
from llamo.inference.run import LLaMoRun
from llamo.inference.t2m import STOP_EXIT
from llamo.progress import progress as progress_bar
from metrics.generation import DIVERSITY_PAIRS, GROUP_SIZE, embed_clips, embed_texts, repeat_protocol, t2m_metrics

__all__ = ["derangement", "generate_test_motions", "t2m_section"]


def derangement(n: int, generator: np.random.Generator) -> np.ndarray:
    """Index array ``p`` with ``p[i] != i`` for every i (n >= 2): a random cycle through all items.

    Example:
        >>> p = derangement(5, np.random.default_rng(0))
        >>> sorted(p.tolist()), bool((p != np.arange(5)).all())
        ([0, 1, 2, 3, 4], True)
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = generator.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)  # item order[i] takes the motion of order[i + 1]
    return out


def generate_test_motions(
    run_model: LLaMoRun, items: TestItems, settings: EvalSettings
) -> tuple[list[np.ndarray], dict[str, int]]:
    """One motion per item (batched by length, cropped to each item's GT length); stop reasons counted."""
    lengths = [len(f) // 4 for f in items.features]  # latents of each GT motion
    order = sorted(range(len(items.ids)), key=lambda i: lengths[i])
    out: list[np.ndarray | None] = [None] * len(items.ids)
    reasons: Counter[str] = Counter()
    batches = [order[s : s + settings.gen_batch] for s in range(0, len(order), settings.gen_batch)]
    for b, batch in enumerate(progress_bar(batches, desc="generate test motions", unit="batch")):
        cap = max(lengths[i] for i in batch)
        generator = torch.Generator(device=settings.device).manual_seed(settings.seed * 1000 + b)
        motions = run_model.generate(
            [items.prompts[i] for i in batch],
            max_tokens=cap,
            min_tokens=min(10, cap),
            exit_threshold=1.0 if settings.length == "gt" else 0.5,
            generator=generator,
        )
        for i, motion in zip(batch, motions):
            # generation is causal: the first N latents equal a run with max_tokens=N
            features = motion.features[: 4 * lengths[i]].numpy()
            stopped_early = motion.stop_reason == STOP_EXIT and features.shape[0] < 4 * lengths[i]
            reasons["exit head" if stopped_early else "GT length"] += 1
            if features.shape[0] < 4:
                raise ValueError(f"the generated motion for {items.ids[i]!r} has no frame; check --length/--min-tokens")
            out[i] = features
    return [o for o in out if o is not None], dict(reasons)


def t2m_section(
    run_model: LLaMoRun,
    evaluator: Any,
    mean: np.ndarray,
    std: np.ndarray,
    items: TestItems,
    settings: EvalSettings,
    section: Section,
) -> dict[str, Any]:
    n = len(items.ids)
    group = min(GROUP_SIZE, n)
    div_pairs = min(DIVERSITY_PAIRS, n)
    generated, reasons = generate_test_motions(run_model, items, settings)
    text = embed_texts(evaluator, items.prompts)
    real = embed_clips(evaluator, items.features, mean, std, device=settings.device, desc="embed real")
    gen = embed_clips(evaluator, generated, mean, std, device=settings.device, desc="embed generated")
    shuffled = real[torch.from_numpy(derangement(n, np.random.default_rng(settings.seed)))]

    def protocol(motion: Tensor) -> dict[str, Any]:
        def one(g: torch.Generator) -> dict[str, float]:
            return t2m_metrics(text, real, motion, g, group_size=group, diversity_pairs=div_pairs)

        return repeat_protocol(one, repeats=settings.repeats, seed=settings.seed)

    ours, baseline = protocol(gen), protocol(shuffled)

    def row(name: str, summary: Mapping[str, Any], side: str, fid: bool = True) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name}
        for metric in ("FID", "R@1", "R@2", "R@3", "MM-Dist", "Diversity"):
            key = f"{side}/{metric}"
            if metric == "FID" and not fid:
                r[metric], r[f"{metric}_ci95"] = None, None
                continue
            r[metric], r[f"{metric}_ci95"] = summary[key].mean, summary[key].ci95
        return r

    stage = run_model.stage_dir.name
    setting = run_model.generation or config_default_setting(run_model.model)
    section.data["rows"] = [
        row("Real motion", ours, "real", fid=False),
        row("Shuffled real (wrong captions)", baseline, "gen"),
        row(f"LLaMo ({stage})", ours, "gen"),
    ]
    section.data["stop_reasons"] = reasons
    section.data["pairs"] = n
    mode = (
        "exactly the ground-truth number of latents (exit head off)"
        if settings.length == "gt"
        else "until the exit head fires (p > 0.5, at least 10 latents), capped at the ground-truth length"
    )
    section.notes += [
        f"{n} test items ({items.left_out} outside {settings.min_frames} <= T <= {settings.max_frames} left out"
        + (f", a seeded subset of {items.available}" if n < items.available else "")
        + "); one generation per item from one of its captions (seeded choice).",
        f"Generation length: {mode} (`--length {settings.length}`); stop reasons: {reasons}.",
        f"Generation setting: {setting.describe()}; from {setting.source}.",
        f"Evaluator embeddings of the run's evaluator; `metrics.generation.t2m_metrics` repeated {settings.repeats} "
        f"times (mean ± 95 % interval), R-precision groups of {group}"
        + (
            f" (fewer than {GROUP_SIZE} pairs: group size reduced, chance R@k = k/{group})"
            if group < GROUP_SIZE
            else ""
        )
        + f", Diversity over {div_pairs} pairs"
        + (" (fewer than 300 items)" if div_pairs < DIVERSITY_PAIRS else "")
        + ".",
        "Shuffled real: each real motion paired with another item's caption (a random derangement); FID is 0 by "
        "construction (the same motions), R-precision is at chance.",
    ]
    return {"generated": generated, "real_embeddings": real, "group": group}
