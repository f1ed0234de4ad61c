"""Every text-motion evaluator kind behind FID / R-precision / MM-Dist, loaded by the ``kind`` its folder records.

- ``TextMotionEvaluator`` (`metrics.evaluator`): the suite's own retrieval model, trained by the evaluator stage;
- ``MotionStreamerEvaluator`` (`metrics.motionstreamer`): MotionStreamer's released Evaluator_272, converted once
  with ``python -m metrics convert-evaluator motionstreamer epoch=99.ckpt --out DIR``.

Both expose ``encode_motion(features, lengths)``, ``encode_text(captions)`` and ``config.feature_dim``, so
`metrics.generation.embed_clips` / `embed_texts` and every protocol use either.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metrics.evaluator import KIND as SUITE_KIND
from metrics.evaluator import TextMotionEvaluator
from metrics.motionstreamer import KIND as MOTIONSTREAMER_KIND
from metrics.motionstreamer import MotionStreamerEvaluator
from stageio import read_stage_config

__all__ = ["EVALUATOR_KINDS", "Evaluator", "load_evaluator"]

Evaluator = TextMotionEvaluator | MotionStreamerEvaluator
#: the ``kind`` recorded in an evaluator folder's config.json -> its class
EVALUATOR_KINDS: dict[str, type[TextMotionEvaluator] | type[MotionStreamerEvaluator]] = {
    SUITE_KIND: TextMotionEvaluator,
    MOTIONSTREAMER_KIND: MotionStreamerEvaluator,
}


def load_evaluator(directory: str | Path, map_location: str | torch.device = "cpu") -> Evaluator:
    """The evaluator saved in ``directory``, of whichever kind its ``config.json`` names, in eval mode."""
    kind = read_stage_config(directory)["kind"]
    if kind not in EVALUATOR_KINDS:
        raise ValueError(
            f"{directory} holds a {kind!r} stage output, not an evaluator; pass a folder of one of the kinds "
            f"{sorted(EVALUATOR_KINDS)} (the evaluator stage's output, or a converted MotionStreamer evaluator)"
        )
    return EVALUATOR_KINDS[kind].load(directory, map_location=map_location).eval()
