"""Retrieval quality of a trained text-motion evaluator: real motion against its own captions.

`evaluate_retrieval` (``llamo eval evaluator``) measures a trained evaluator the way the T2M protocol measures real
motion: per repetition, every clip of the split gets a random caption and a random multiple-of-4 crop, the pairs
are shuffled into groups of 32, and R@1/2/3 and MM-Dist are averaged over 20 repetitions (mean ± 1.96·std/√N).
Chance level is k/32 for R@k.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from llamo.data.humanml272 import MotionCorpus
from llamo.data.retrieval import MotionCaptionPairs, collate_pairs
from metrics.evaluators import Evaluator
from metrics.generation import GROUP_SIZE, TOP_K, ProtocolResult, mm_dist, r_precision, repeat_protocol

__all__ = ["evaluate_retrieval"]


@torch.inference_mode()
def _embed_pairs(
    evaluator: Evaluator, pairs: MotionCaptionPairs, batch_size: int, device: str
) -> tuple[Tensor, Tensor]:
    texts, motions = [], []
    for batch in DataLoader(pairs, batch_size=batch_size, collate_fn=collate_pairs):
        motions.append(evaluator.encode_motion(batch["motion"].to(device), batch["lengths"].to(device)).cpu())
        texts.append(evaluator.encode_text(batch["texts"]).cpu())
    return torch.cat(texts), torch.cat(motions)


def evaluate_retrieval(
    evaluator: Evaluator,
    corpus: MotionCorpus,
    repeats: int = 20,
    seed: int = 0,
    group_size: int = GROUP_SIZE,
    max_frames: int = 300,
    multiple: int = 4,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, ProtocolResult]:
    """R@1..3 and MM-Dist of real motion against its own captions, repeated (see the module docstring).

    ``corpus`` must normalise with the statistics the evaluator was trained with
    (``MotionCorpus(..., mean_std=<evaluator folder>)``).
    """
    if len(corpus) < group_size:
        raise ValueError(f"the split has {len(corpus)} clips, R-precision needs at least group_size={group_size}")
    evaluator = evaluator.to(device).eval()

    def one_run(generator: torch.Generator) -> dict[str, float]:
        # new captions and crops every repetition, as the protocol's shuffled test loader draws them
        crop_seed = int(torch.randint(0, 2**31, (), generator=generator))
        pairs = MotionCaptionPairs(corpus, max_frames, multiple, seed=crop_seed)
        text, motion = _embed_pairs(evaluator, pairs, batch_size, device)
        r = r_precision(text, motion, group_size, TOP_K, generator)
        out = {f"R@{k + 1}": float(r[k]) for k in range(TOP_K)}
        out["MM-Dist"] = mm_dist(text, motion)
        return out

    return repeat_protocol(one_run, repeats=repeats, seed=seed, progress=True)
