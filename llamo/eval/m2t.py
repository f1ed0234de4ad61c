"""Table 4 (motion-to-text): captions of the ground-truth test motions, scored against every reference.

Captions come from `llamo.inference.text.caption` and are scored by `metrics.captioning.caption_metrics` against
all references of the item (TM2T rule: 3 references), plus caption R-precision / MM-Dist in the evaluator space
(Tables 5/6 "Motion-to-Text" columns). Rows: a **reference** row (each item's first caption scored against its other
captions: the human-agreement ceiling), a **constant-caption** baseline (the most frequent training caption for
every motion), and LLaMo.

**Decoding.** With ``--gen_seeds 1`` (the default) every motion gets its greedy caption, as before. With
``--gen_seeds K > 1`` every motion is captioned K times by sampling at ``--caption_temperature``; generation k of
item i draws from a CPU generator seeded ``generation_seed(seed, i, k)`` (`llamo.eval.gen_seeds`), so a caption
depends only on its item, generation and ``--seed``. Each generation is scored with the full metric set and the
LLaMo row is `aggregate_generations` over the K score sets, as Table 3's: the mean ± the t-based 95 % interval over
the K generations. The greedy caption is not one of the K: it is the mode, not a draw, and would bias the mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llamo.data.humanml272 import MotionCorpus
from llamo.eval.gen_seeds import GEN_SEED_STRIDE, aggregate_generations, generation_seed
from llamo.eval.items import TestItems
from llamo.eval.paper import bertscore_config
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.run import LLaMoRun
from llamo.progress import progress as progress_bar
from metrics.captioning import build_bert_scorer, caption_metrics
from metrics.generation import GROUP_SIZE, ProtocolResult

__all__ = ["caption_test_motions", "m2t_section", "most_frequent_caption"]


def most_frequent_caption(captions: Sequence[Sequence[str]]) -> tuple[str, int]:
    """The caption occurring most often over all clips (ties: the alphabetically first) and its count."""
    counts = Counter(c.strip() for clip in captions for c in clip if c.strip())
    if not counts:
        raise ValueError("no caption to choose the constant-caption baseline from (the training split is empty)")
    caption, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return caption, count


def caption_test_motions(
    run_model: LLaMoRun, items: TestItems, settings: EvalSettings, generation: int | None = None
) -> list[str]:
    """One caption per test motion: greedy (``generation`` None, the ``--gen_seeds 1`` captions) or sampled
    generation ``generation`` at ``--caption_temperature`` (item i from a CPU generator seeded
    ``generation_seed(settings.seed, i, generation)``)."""
    desc = "caption test motions" if generation is None else f"caption test motions (generation {generation})"
    out = []
    for i, f in enumerate(progress_bar(items.features, desc=desc, unit="clip")):
        if generation is None:
            out.append(run_model.caption(f, max_new_tokens=settings.caption_tokens))
            continue
        generator = torch.Generator().manual_seed(generation_seed(settings.seed, i, generation))
        out.append(
            run_model.caption(
                f,
                max_new_tokens=settings.caption_tokens,
                greedy=False,
                temperature=settings.caption_temperature,
                generator=generator,
            )
        )
    return out


def m2t_section(
    run_model: LLaMoRun,
    evaluator: Any,
    real_embeddings: Tensor | None,
    items: TestItems,
    data: Path,
    settings: EvalSettings,
    section: Section,
) -> None:
    gens = settings.gen_seeds
    if gens == 1:
        per_generation = [caption_test_motions(run_model, items, settings)]
    else:
        per_generation = [caption_test_motions(run_model, items, settings, k) for k in range(gens)]
    preds = per_generation[0]
    train = MotionCorpus(data, split="train", min_length=1, preload=False)
    constant, count = most_frequent_caption([train[i].captions for i in range(len(train))])
    config = bertscore_config(settings)
    scorer = build_bert_scorer(config) if config is not None else None
    group = min(GROUP_SIZE, len(items.ids))

    def score(preds_: Sequence[str], refs: Sequence[Sequence[str]], retrieval: bool) -> dict[str, float]:
        kwargs: dict[str, Any] = {}
        if retrieval and real_embeddings is not None:
            kwargs = {
                "encode_text": lambda texts: evaluator.encode_text(list(texts)),
                "motion_embeddings": real_embeddings,
                "retrieval_group_size": group,
                "seed": settings.seed,
            }
        report = caption_metrics(preds_, refs, bertscore_config=config, bert_scorer=scorer, **kwargs)
        return dict(report.scores)

    multi = [i for i, c in enumerate(items.captions) if len(c) >= 2]
    rows = []
    if multi:
        ref_scores = score([items.captions[i][0] for i in multi], [items.captions[i][1:] for i in multi], False)
        rows.append({"name": "Real (first reference vs the others)", **ref_scores})
    else:
        section.notes.append("Reference row skipped: no test item has two or more captions.")
    rows.append({"name": f'Constant caption "{constant}"', **score([constant] * len(preds), items.captions, True)})
    # a generation's score set as a one-repetition protocol (interval 0): the summaries Table 3 aggregates
    scores = [score(p, items.captions, True) for p in per_generation]
    ours = aggregate_generations([{k: ProtocolResult(v, 0.0, (v,)) for k, v in s.items()} for s in scores])
    llamo = {"name": f"LLaMo ({run_model.stage_dir.name})"}
    for metric, result in ours.items():
        llamo[metric] = result.mean
        if gens > 1:
            llamo[f"{metric}_ci95"] = result.ci95
    rows.append(llamo)
    section.data["rows"] = rows
    section.data["predictions"] = {i: p for i, p in zip(items.ids, preds)}
    empty = [sum(1 for p in g if not p.strip()) for g in per_generation]
    if gens > 1:
        section.data["gen_seeds"] = {metric: list(result.values) for metric, result in ours.items()}
        section.data["generation_predictions"] = [dict(zip(items.ids, g)) for g in per_generation]
        section.data["decoding"] = {"mode": "sampled", "generations": gens, "temperature": settings.caption_temperature}
        decoding = (
            f"{len(preds)} test motions captioned {gens} times each by sampling at temperature "
            f"{settings.caption_temperature:g} (`--gen_seeds {gens}`, `--caption_temperature`; generation k of item i "
            f"seeded {settings.seed}·1000 + i + {GEN_SEED_STRIDE}·k), at most {settings.caption_tokens} tokens; "
            f"{'/'.join(map(str, empty))} empty caption(s) per generation, scored as wrong. LLaMo row: the mean over "
            "the generations of each one's score ± the t-based 95 % interval over them, t_{0.975,K-1} · s / sqrt(K) "
            "(caption sampling noise; not training noise). Reference and constant rows do not depend on the "
            "generation. First predictions: generation 0."
        )
    else:
        decoding = (
            f"{len(preds)} test motions captioned greedily (at most {settings.caption_tokens} tokens); {empty[0]} "
            "empty caption(s), scored as wrong."
        )
    section.notes += [
        decoding,
        "LLaMo and the constant baseline are scored against all captions of each item (TM2T rule: 3 references); "
        f"the reference row scores each item's first caption against its other captions ({len(multi)} items).",
        f'Constant caption: the most frequent training caption ("{constant}", {count} times in split "train").',
        "BLEU/ROUGE-L/CIDEr via pycocoevalcap (PTB tokens), "
        + (
            "BERTScore skipped (--no-bertscore)."
            if config is None
            else f"BERTScore F1 with roberta-large (`{config.model}`, layer 17, IDF, baseline rescaling) as in TM2T; "
            "all x100."
            if settings.bertscore_model is not None
            else "BERTScore F1 with the packaged all-MiniLM-L6-v2 (layer 6, no IDF, no rescaling: comparable only "
            "within this table); all x100."
        ),
        f"R@3 / MM-D: captions retrieved against the ground-truth motions in the evaluator space (groups of {group})"
        + ("" if real_embeddings is not None else " — skipped: no evaluator")
        + ".",
    ]
