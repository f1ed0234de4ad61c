"""MotionStreamer's text-to-motion scoring (``eval_t2m.py`` / ``utils/eval_trans.py``) on evaluator embeddings.

What differs from the suite's `metrics.generation.t2m_metrics` (and is reproduced here):

- **batches**: the items are shuffled once and cut into batches of 32; the last incomplete batch is dropped
  (``drop_last=True``), so only N = 32·⌊items/32⌋ items are scored at all (FID and Diversity included);
- **R-precision and MM-Dist per batch**: each batch's 32 × 32 text × motion distance matrix gives top-k hits and
  the sum of its 32 paired distances; R@k = Σ hits / N and MM-Dist = Σ paired distances / N;
- **Diversity**: ``300`` pairs if N > 300 else ``100``; the first and the second index of the pairs are two
  *independent* draws without replacement (a pair may be (i, i)), one draw for the real and one for the generated
  embeddings;
- **one run** (no repetitions, no confidence interval): every random choice comes from one seeded generator.

FID is `metrics.generation.fid` (equal to MotionStreamer's scipy version to ~1e-8 relative) over the N kept items.
Nothing here imports llamo.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metrics.generation import TOP_K, fid, retrieval_hits

__all__ = [
    "BATCH_SIZE",
    "diversity_independent",
    "diversity_times",
    "drop_last_batches",
    "motionstreamer_t2m_metrics",
]

#: MotionStreamer's evaluation batch (``dataset_eval_t2m.py``): the R-precision group
BATCH_SIZE = 32


def diversity_times(n: int) -> int:
    """Number of Diversity pairs MotionStreamer draws from ``n`` embeddings: 300 if n > 300, else 100.

    Example:
        >>> diversity_times(301), diversity_times(300), diversity_times(128)
        (300, 100, 100)
    """
    return 300 if n > 300 else 100


def drop_last_batches(n: int, rng: np.random.Generator, batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
    """A shuffled order of ``n`` items cut into full batches of ``batch_size``; the incomplete rest is dropped.

    Example:
        >>> batches = drop_last_batches(70, np.random.default_rng(0), batch_size=32)
        >>> [len(b) for b in batches]
        [32, 32]
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (R-precision ranks within a batch), got {batch_size}")
    if n < batch_size:
        raise ValueError(
            f"MotionStreamer's protocol scores full batches of {batch_size} items and drops the rest; {n} items "
            f"make no full batch (use a larger test split, or the suite protocol: --protocol suite)"
        )
    order = rng.permutation(n)
    return [order[s : s + batch_size] for s in range(0, (n // batch_size) * batch_size, batch_size)]


def diversity_independent(embeddings: Tensor | np.ndarray, times: int, rng: np.random.Generator) -> float:
    """Mean distance of ``times`` pairs whose two index sets are independent draws without replacement.

    A pair may join an embedding with itself (distance 0), as in MotionStreamer's ``calculate_diversity``.
    """
    x = torch.as_tensor(embeddings).double()
    n = x.shape[0]
    if x.ndim != 2 or n == 0:
        raise ValueError(f"embeddings must be (N, E) with N >= 1, got {tuple(x.shape)}")
    if times < 1 or n < times:
        raise ValueError(
            f"Diversity draws {times} indices without replacement and needs at least {times} embeddings, got {n} "
            "(MotionStreamer's rule: 300 pairs if N > 300, else 100; the test split is too small for it)"
        )
    first = torch.from_numpy(rng.choice(n, times, replace=False))
    second = torch.from_numpy(rng.choice(n, times, replace=False))
    return float((x[first] - x[second]).norm(dim=1).mean())


def _batch_scores(text: Tensor, motion: Tensor, batches: list[np.ndarray], top_k: int) -> tuple[Tensor, float]:
    """Summed top-k hits and summed paired distances over the batches (each ranked inside itself)."""
    hits = torch.zeros(top_k, dtype=torch.int64)
    paired = 0.0
    for batch in batches:
        idx = torch.from_numpy(np.asarray(batch))
        # the direct formula: no |a|^2 + |b|^2 - 2ab cancellation on near-duplicates
        d = torch.cdist(text[idx], motion[idx], compute_mode="donot_use_mm_for_euclid_dist")
        hits += retrieval_hits(d, top_k)
        paired += float(torch.diagonal(d).sum())  # MotionStreamer's matching score: the trace
    return hits, paired


def motionstreamer_t2m_metrics(
    text: Tensor,
    real: Tensor,
    generated: Tensor,
    batches: list[np.ndarray],
    rng: np.random.Generator,
    top_k: int = TOP_K,
    times: int | None = None,
) -> dict[str, float]:
    """One run of MotionStreamer's T2M scoring on paired (N, E) embeddings and its batches.

    Args:
        text: caption embeddings; row i is the caption of ``real[i]`` and the prompt of ``generated[i]``.
        real: ground-truth motion embeddings.
        generated: generated motion embeddings.
        batches: index arrays of the scored batches (`drop_last_batches`); items in no batch are not scored.
        rng: the Diversity index draws (one per side).
        top_k: R@1..R@top_k.
        times: Diversity pairs; None = MotionStreamer's rule `diversity_times` (N = the scored items).

    Returns:
        ``{"gen/FID", "gen/R@1".., "gen/MM-Dist", "gen/Diversity", "real/R@1".., "real/MM-Dist",
        "real/Diversity"}`` (the keys of `metrics.generation.t2m_metrics` without MultiModality).
    """
    text, real, generated = (torch.as_tensor(x).double().cpu() for x in (text, real, generated))
    if not (text.shape == real.shape == generated.shape) or text.ndim != 2:
        raise ValueError(
            f"text, real and generated embeddings must be paired (N, E) arrays, got {tuple(text.shape)}, "
            f"{tuple(real.shape)}, {tuple(generated.shape)}"
        )
    if not batches:
        raise ValueError("no batch to score: pass the batches of drop_last_batches")
    kept = torch.from_numpy(np.concatenate(batches))
    if len(set(kept.tolist())) != len(kept) or int(kept.max()) >= text.shape[0] or int(kept.min()) < 0:
        raise ValueError(f"batches must hold distinct indices in [0, {text.shape[0]}), got {len(kept)} indices")
    n = len(kept)
    times = diversity_times(n) if times is None else times
    out: dict[str, float] = {"gen/FID": fid(real[kept], generated[kept])}
    for side, motion in (("gen", generated), ("real", real)):
        hits, paired = _batch_scores(text, motion, batches, top_k)
        out.update({f"{side}/R@{k + 1}": float(hits[k]) / n for k in range(top_k)})
        out[f"{side}/MM-Dist"] = paired / n
    # one independent draw per side, as MotionStreamer calls calculate_diversity once for each
    out["real/Diversity"] = diversity_independent(real[kept], times, rng)
    out["gen/Diversity"] = diversity_independent(generated[kept], times, rng)
    return out
