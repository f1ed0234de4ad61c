"""The test items of Tables 3/4: the split's clips inside the T2M frame range, a seeded subset, one caption each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamo.data.humanml272 import MotionCorpus, crop_to_multiple
from llamo.eval.settings import EvalSettings

__all__ = ["TestItems", "load_test_items"]


@dataclass
class TestItems:
    """The test clips of Tables 3/4: ids, ground-truth features cropped to a multiple of 4, captions."""

    ids: list[str]
    features: list[np.ndarray]
    """(T, 272) float32 UN-normalised, T a multiple of 4."""
    captions: list[list[str]]
    prompts: list[str]
    """The caption each motion is generated from (seeded choice among the item's captions)."""
    available: int
    """Items of the split inside the frame range (before ``--items``)."""
    left_out: int
    """Items of the split outside the frame range."""


def load_test_items(data: Path, settings: EvalSettings) -> TestItems:
    """The split's items with ``min_frames <= T <= max_frames``, a seeded subset of ``settings.items`` of them."""
    corpus = MotionCorpus(data, split=settings.split, min_length=1, max_length=settings.max_frames)
    keep = [i for i, n in enumerate(corpus.lengths) if n >= settings.min_frames]
    available, left_out = len(keep), len(corpus) - len(keep) + corpus.too_long
    rng = np.random.default_rng(settings.seed)
    if settings.items is not None and settings.items < len(keep):
        keep = sorted(rng.choice(keep, size=settings.items, replace=False).tolist())
    if len(keep) < 2:
        raise ValueError(
            f"split {settings.split!r} of {data} has {len(keep)} clip(s) with {settings.min_frames} <= T <= "
            f"{settings.max_frames} frames; Tables 3/4 need at least 2 (lower --min-frames or use a larger corpus)"
        )
    records = [corpus[i] for i in keep]
    prompts = [r.captions[int(rng.integers(len(r.captions)))] for r in records]
    return TestItems(
        ids=[r.id for r in records],
        features=[crop_to_multiple(r.features, 4) for r in records],
        captions=[list(r.captions) for r in records],
        prompts=prompts,
        available=available,
        left_out=left_out,
    )
