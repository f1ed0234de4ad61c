"""Table 4 (motion-to-text): greedy captions of the ground-truth test motions, scored against every reference.

Captions come from `llamo.inference.text.caption` and are scored by `metrics.captioning.caption_metrics` against
all references of the item (TM2T rule: 3 references), plus caption R-precision / MM-Dist in the evaluator space
(Tables 5/6 "Motion-to-Text" columns). Rows: a **reference** row (each item's first caption scored against its other
captions: the human-agreement ceiling), a **constant-caption** baseline (the most frequent training caption for
every motion), and LLaMo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from llamo.data.humanml272 import MotionCorpus
from llamo.eval.items import TestItems
from llamo.eval.paper import bertscore_config
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.run import LLaMoRun
from llamo.progress import progress as progress_bar
from metrics.captioning import build_bert_scorer, caption_metrics
from metrics.generation import GROUP_SIZE

__all__ = ["m2t_section", "most_frequent_caption"]


def most_frequent_caption(captions: Sequence[Sequence[str]]) -> tuple[str, int]:
    """The caption occurring most often over all clips (ties: the alphabetically first) and its count."""
    counts = Counter(c.strip() for clip in captions for c in clip if c.strip())
    if not counts:
        raise ValueError("no caption to choose the constant-caption baseline from (the training split is empty)")
    caption, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return caption, count


def m2t_section(
    run_model: LLaMoRun,
    evaluator: Any,
    real_embeddings: Tensor | None,
    items: TestItems,
    data: Path,
    settings: EvalSettings,
    section: Section,
) -> None:
    preds = [
        run_model.caption(f, max_new_tokens=settings.caption_tokens)
        for f in progress_bar(items.features, desc="caption test motions", unit="clip")
    ]
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
    rows.append({"name": f"LLaMo ({run_model.stage_dir.name})", **score(preds, items.captions, True)})
    section.data["rows"] = rows
    section.data["predictions"] = {i: p for i, p in zip(items.ids, preds)}
    empty = sum(1 for p in preds if not p.strip())
    section.notes += [
        f"{len(preds)} test motions captioned greedily (at most {settings.caption_tokens} tokens); {empty} empty "
        "caption(s), scored as wrong.",
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
