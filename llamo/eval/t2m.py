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
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamo.eval.gen_seeds import aggregate_generations, generation_seed
from llamo.eval.items import TestItems
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.guidance import config_default_setting
from llamo.inference.run import LLaMoRun
from llamo.inference.t2m import STOP_EXIT
from llamo.progress import progress as progress_bar
from metrics.generation import (
    DIVERSITY_PAIRS,
    GROUP_SIZE,
    MM_PAIRS,
    embed_clips,
    embed_texts,
    repeat_protocol,
    t2m_metrics,
)

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
    run_model: LLaMoRun, items: TestItems, settings: EvalSettings, generation: int = 0
) -> tuple[list[np.ndarray], dict[str, int]]:
    """One motion per item (batched by length, cropped to each item's GT length); stop reasons counted.
    ``generation`` picks the noise (`llamo.eval.gen_seeds.generation_seed`; 0: the single generation of K = 1)."""
    lengths = [len(f) // 4 for f in items.features]  # latents of each GT motion
    order = sorted(range(len(items.ids)), key=lambda i: lengths[i])
    out: list[np.ndarray | None] = [None] * len(items.ids)
    reasons: Counter[str] = Counter()
    batches = [order[s : s + settings.gen_batch] for s in range(0, len(order), settings.gen_batch)]
    for b, batch in enumerate(progress_bar(batches, desc="generate test motions", unit="batch")):
        cap = max(lengths[i] for i in batch)
        generator = torch.Generator(device=settings.device).manual_seed(generation_seed(settings.seed, b, generation))
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
    mm = multimodality_embeddings(run_model, evaluator, mean, std, items, settings)

    def protocol(motion: Tensor, mm_gens: Tensor | None = None) -> dict[str, Any]:
        def one(g: torch.Generator) -> dict[str, float]:
            return t2m_metrics(
                text, real, motion, g, mm_generations=mm_gens, group_size=group, diversity_pairs=div_pairs,
                mm_pairs=min(MM_PAIRS, settings.mm_gens),
            )  # fmt: skip

        return repeat_protocol(one, repeats=settings.repeats, seed=settings.seed)

    ours, baseline = protocol(gen, mm), protocol(shuffled)
    # generations 1 .. K-1 (`--gen_seeds`): the real rows and generation 0 stay those of K = 1
    per_generation = [ours]
    for k in range(1, settings.gen_seeds):
        more, _ = generate_test_motions(run_model, items, settings, generation=k)
        emb = embed_clips(evaluator, more, mean, std, device=settings.device, desc=f"embed generation {k}")
        per_generation.append(protocol(emb, mm))
    ours_gen = aggregate_generations(per_generation)

    def row(name: str, summary: Mapping[str, Any], side: str, fid: bool = True) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name}
        extra = ("MultiModality",) if side == "gen" and "gen/MultiModality" in summary else ()
        for metric in ("FID", "R@1", "R@2", "R@3", "MM-Dist", "Diversity", *extra):
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
        row(f"LLaMo ({stage})", ours_gen, "gen"),
    ]
    if settings.gen_seeds > 1:
        section.data["gen_seeds"] = {
            metric.removeprefix("gen/"): list(result.values) for metric, result in ours_gen.items()
            if metric.startswith("gen/")
        }  # fmt: skip
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
        f"Generation setting: {setting.describe()} — {setting.source}.",
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
    if settings.gen_seeds > 1:
        section.notes.append(
            f"LLaMo row: {settings.gen_seeds} generations of every test motion with different seeds (`--gen_seeds`); "
            "mean over the generations of each one's protocol mean ± the t-based 95 % interval over them, "
            "t_{0.975,K-1} · s / sqrt(K) (generation noise; not training noise). Real and shuffled rows: one "
            "protocol. Table 4 samples its captions K times in the same way."
        )
    if mm is not None:
        section.notes.append(
            f"MultiModality: {mm.shape[0]} test texts x {settings.mm_gens} generations each (`--mm_texts`, "
            f"`--mm_gens`), mean distance of {min(MM_PAIRS, settings.mm_gens)} random pairs per text."
        )
    return {"generated": generated, "real_embeddings": real, "group": group}


def multimodality_embeddings(
    run_model: LLaMoRun, evaluator: Any, mean: np.ndarray, std: np.ndarray, items: TestItems, settings: EvalSettings
) -> Tensor | None:
    """(N, M, E) evaluator embeddings of ``--mm_gens`` M generations of the first ``--mm_texts`` N test items
    (generation seeds 0 .. M-1 of `generate_test_motions`), or None when ``--mm_texts`` is 0."""
    if settings.mm_texts == 0:
        return None
    count = min(settings.mm_texts, len(items.ids))
    subset = replace(items, **{k: getattr(items, k)[:count] for k in ("ids", "prompts", "features", "captions")})
    gens = [
        embed_clips(
            evaluator, generate_test_motions(run_model, subset, settings, generation=k)[0], mean, std,
            device=settings.device, desc=f"embed MultiModality generation {k}",
        )
        for k in range(settings.mm_gens)
    ]  # fmt: skip
    return torch.stack(gens, dim=1)
