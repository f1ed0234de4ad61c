"""Text-to-motion metrics: FID, R-precision, MM-Dist, Diversity, MultiModality, and the repeated protocol.

Every metric works on *embeddings* from a text-motion evaluator (see :mod:`metrics.evaluator`): a pure function
for standalone use plus a thin :class:`torchmetrics.Metric` whose states reduce across DDP processes. Nothing here
imports ``llamo``.

Protocol (MotionStreamer / Guo et al., facts in ``shared/reference/motionstreamer_272_vae_eval.md`` §4):

* **FID**: Fréchet distance between Gaussian fits (mean, unbiased covariance) of real and generated motion
  embeddings, in float64. The metric keeps feature sums and outer-product sums, never the samples.
* **R-precision R@1/2/3**: pairs are shuffled and cut into groups of 32; inside a group, the Euclidean
  distance matrix text x motion ranks the motions for every text; R@k is the fraction of texts whose own motion
  is among the k nearest. Incomplete groups are dropped (``drop_last``). Ties count against the match, so an
  evaluator that maps everything to one point scores 0, not 1.
* **MM-Dist**: mean Euclidean distance between paired text and motion embeddings (over all pairs; MotionStreamer
  averages over the ⌊N/32⌋·32 pairs that R-precision kept, which is equal in expectation).
* **Diversity**: mean distance of 300 random pairs of motion embeddings (seeded).
* **MultiModality**: for texts with several generations each, mean distance of 10 random pairs of generations of
  the same text.
* The **protocol runner** :func:`repeat_protocol` repeats the stochastic parts N times (default 20) with seeds
  ``seed, seed+1, ...`` and reports ``mean`` and ``1.96 * std / sqrt(N)`` (population std, as in the
  Guo/MotionGPT code).

Random pairs (Diversity, MultiModality) never pair an item with itself: the first index set is drawn without
replacement and each partner uniformly among the *other* items. The Guo et al. code draws two independent index
sets, so a pair can be an item with itself (probability 1/N per pair), which biases the value down by about 1/N
(0.3 % for Diversity with N = 300; 3 % for MultiModality with 30 generations).

Standalone command (``python -m metrics t2m``), folder format::

    GEN/<id>.npy                     (T, 272) float, one generated clip per test item, UN-normalised
    GEN/texts/<id>.txt               the caption the clip was generated from: its first non-empty line; text
                                     after a '#' is ignored, so HumanML3D "caption#tokens#from#to" lines work
    GEN/multimodality/<id>/<k>.npy   optional: >= 2 generations of the same caption (enables MultiModality)
    REAL/<id>.npy                    (T, 272) float, the ground-truth clip of the same item, UN-normalised

REAL and GEN must hold exactly the same ids. Clips are normalised with ``Mean.npy``/``Std.npy`` from
``--mean-std DIR`` (default: the evaluator folder, where ``llamo fit`` of the evaluator stage writes them).
The real-motion columns (R-precision, MM-Dist, Diversity of REAL against the same captions) are the ceiling the
generated columns are compared to.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> real, gen = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g) + 1.0
    >>> round(fid(real, real), 6)
    0.0
    >>> fid(real, gen) > 7.0
    True
    >>> text = real + 0.01 * torch.randn(500, 8, generator=g)
    >>> r_precision(text, real, generator=torch.Generator().manual_seed(0)).tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from tqdm import tqdm

__all__ = [
    "FID",
    "MMDist",
    "Diversity",
    "MultiModality",
    "RPrecision",
    "ProtocolResult",
    "diversity",
    "fid",
    "fid_from_sums",
    "frechet_distance",
    "feature_sums",
    "mm_dist",
    "multimodality",
    "r_precision",
    "repeat_protocol",
    "retrieval_hits",
    "t2m_metrics",
    "ClipSet",
    "read_clip_dir",
    "read_mm_dir",
    "load_mean_std",
    "embed_clips",
    "embed_texts",
    "format_table",
]

#: R-precision group size of the T2M protocol (Guo et al.; MotionStreamer)
GROUP_SIZE = 32
#: R@1..R@TOP_K are reported
TOP_K = 3
#: random pairs for Diversity
DIVERSITY_PAIRS = 300
#: random pairs of generations per text for MultiModality
MM_PAIRS = 10


# ----------------------------------------------------------------------------------------------- validation helpers


def _as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.double()
    return x


def _check_embeddings(x: Tensor | np.ndarray, name: str, ndim: int = 2) -> Tensor:
    """Validate an embedding batch: ``ndim`` dims, at least one row, finite values."""
    x = _as_tensor(x, name)
    if x.ndim != ndim:
        want = "(N, E)" if ndim == 2 else "(N, R, E)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): pass at least one embedding")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN/Inf in {bad} of {x.shape[0]} rows; check the evaluator input")
    return x


def _check_pairs(text: Tensor | np.ndarray, motion: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    text = _check_embeddings(text, "text embeddings")
    motion = _check_embeddings(motion, "motion embeddings")
    if text.shape != motion.shape:
        raise ValueError(
            f"text and motion embeddings must be paired row by row with the same shape, got text "
            f"{tuple(text.shape)} vs motion {tuple(motion.shape)}"
        )
    return text, motion


def _distinct_pairs(n: int, num_pairs: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``num_pairs`` index pairs (i, j), i != j: i without replacement, j uniform among the others."""
    first = torch.randperm(n, generator=generator)[:num_pairs]
    # an offset in [1, n-1] can never map an index onto itself
    offset = torch.randint(1, n, (num_pairs,), generator=generator)
    return first, (first + offset) % n


# ----------------------------------------------------------------------------------------------------------- FID


def feature_sums(features: Tensor | np.ndarray) -> tuple[Tensor, Tensor, int]:
    """Sufficient statistics of a feature set in float64: (sum (E,), sum of outer products (E, E), count)."""
    x = _check_embeddings(features, "features").double()
    return x.sum(dim=0), x.T @ x, x.shape[0]


def _mean_cov(total: Tensor, outer: Tensor, n: int | float | Tensor, name: str) -> tuple[Tensor, Tensor]:
    n = float(n)
    if n < 2:
        raise ValueError(f"FID needs at least 2 {name} samples to estimate a covariance, got {n:g}")
    mu = total / n
    # unbiased (N-1) covariance, as np.cov(rowvar=False) in the reference protocol
    cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu, cov


def _psd_sqrt(matrix: Tensor) -> Tensor:
    eigval, eigvec = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvec * eigval.clamp_min(0).sqrt()) @ eigvec.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians, in float64.

    ``tr((S1 S2)^(1/2))`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``), so no complex ``sqrtm`` and no eps fallback are needed.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    # the distance is >= 0; identical sets can round to -1e-15
    return max(float(value), 0.0)


def fid_from_sums(
    real_sum: Tensor,
    real_outer: Tensor,
    real_n: int | float | Tensor,
    gen_sum: Tensor,
    gen_outer: Tensor,
    gen_n: int | float | Tensor,
) -> float:
    """FID from the sufficient statistics of :func:`feature_sums` (what :class:`FID` keeps as states)."""
    mu_r, cov_r = _mean_cov(real_sum.double(), real_outer.double(), real_n, "real")
    mu_g, cov_g = _mean_cov(gen_sum.double(), gen_outer.double(), gen_n, "generated")
    return frechet_distance(mu_r, cov_r, mu_g, cov_g)


def fid(real: Tensor | np.ndarray, generated: Tensor | np.ndarray) -> float:
    """FID between two embedding sets (N, E) and (M, E), float64.

    Example:
        >>> import torch
        >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        >>> round(fid(x, x + 2.0), 6)  # a pure shift by 2 in 4 dims: |mu1 - mu2|^2 = 16
        16.0
    """
    real = _check_embeddings(real, "real embeddings")
    generated = _check_embeddings(generated, "generated embeddings")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real and generated embeddings differ in width: {real.shape[1]} vs {generated.shape[1]}")
    return fid_from_sums(*feature_sums(real), *feature_sums(generated))


# ------------------------------------------------------------------------------------------- R-precision, MM-Dist


def retrieval_hits(distances: Tensor | np.ndarray, top_k: int = TOP_K) -> Tensor:
    """Top-k hit counts from text x motion distance matrices whose matching pairs lie on the diagonal.

    Args:
        distances: (G, G) or (num_groups, G, G); row i is text i, column j motion j, (i, i) the true pair.
        top_k: hits are counted for k = 1..top_k.

    Returns:
        (top_k,) int64: entry k-1 counts the rows whose own motion ranks within the k nearest. The rank of a
        match is the number of *other* motions at a distance <= its own (ties count against the match).

    Example:
        >>> import torch
        >>> d = torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.0, 3.0], [1.0, 2.0, 3.0]])
        >>> retrieval_hits(d).tolist()  # ranks 0, 1, 2
        [1, 2, 3]
    """
    d = _as_tensor(distances, "distances")
    if d.ndim == 2:
        d = d.unsqueeze(0)
    if d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise ValueError(f"distances must be (G, G) or (num_groups, G, G), got {tuple(d.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    matched = torch.diagonal(d, dim1=1, dim2=2).unsqueeze(-1)  # (num_groups, G, 1)
    # the diagonal entry itself always satisfies <=, hence the -1
    rank = (d <= matched).sum(dim=-1) - 1  # (num_groups, G)
    ks = torch.arange(1, top_k + 1, device=rank.device)
    return (rank.flatten().unsqueeze(0) < ks.unsqueeze(1)).sum(dim=1).to(torch.int64).cpu()


def _group_distances(text: Tensor, motion: Tensor, group_size: int) -> Tensor:
    """(num_groups, G, G) Euclidean distances inside consecutive groups; rows beyond the last full group dropped."""
    num_groups = text.shape[0] // group_size
    used = num_groups * group_size
    t = text[:used].double().reshape(num_groups, group_size, -1)  # (num_groups, G, E)
    m = motion[:used].double().reshape(num_groups, group_size, -1)
    # the direct formula avoids the cancellation of |a|^2 + |b|^2 - 2ab on near-duplicates
    return torch.cdist(t, m, compute_mode="donot_use_mm_for_euclid_dist")


def r_precision(
    text: Tensor | np.ndarray,
    motion: Tensor | np.ndarray,
    group_size: int = GROUP_SIZE,
    top_k: int = TOP_K,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Tensor:
    """R@1..R@top_k of paired text/motion embeddings (N, E) in shuffled groups of ``group_size``.

    The pairs are permuted with ``generator`` (unless ``shuffle=False``), cut into ⌊N/group_size⌋ groups, and the
    hits of :func:`retrieval_hits` are divided by the number of pairs used.

    Returns:
        (top_k,) float64 tensor of R@k.
    """
    text, motion = _check_pairs(text, motion)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    n = text.shape[0]
    if n < group_size:
        raise ValueError(f"R-precision needs at least group_size={group_size} pairs, got {n}")
    if shuffle:
        perm = torch.randperm(n, generator=generator).to(text.device)
        text, motion = text[perm], motion[perm]
    hits = retrieval_hits(_group_distances(text, motion, group_size), top_k)
    return hits.double() / ((n // group_size) * group_size)


def mm_dist(text: Tensor | np.ndarray, motion: Tensor | np.ndarray) -> float:
    """MM-Dist: mean Euclidean distance between paired text and motion embeddings (N, E).

    Example:
        >>> import torch
        >>> mm_dist(torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        3.0
    """
    text, motion = _check_pairs(text, motion)
    return float((text.double() - motion.double()).norm(dim=1).mean())


# ----------------------------------------------------------------------------------- Diversity, MultiModality


def diversity(
    embeddings: Tensor | np.ndarray, num_pairs: int = DIVERSITY_PAIRS, generator: torch.Generator | None = None
) -> float:
    """Diversity: mean distance of ``num_pairs`` random pairs of distinct rows of ``embeddings`` (N, E).

    Example:
        >>> import torch
        >>> points = 2.0**0.5 * torch.eye(300)  # every two distinct points are 2 apart
        >>> round(diversity(points, generator=torch.Generator().manual_seed(0)), 6)
        2.0
    """
    x = _check_embeddings(embeddings, "embeddings")
    n = x.shape[0]
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if n < max(num_pairs, 2):
        raise ValueError(
            f"Diversity draws {num_pairs} pairs without replacement and needs at least that many embeddings, "
            f"got {n}; pass a smaller num_pairs (CLI: --diversity-pairs)"
        )
    first, second = _distinct_pairs(n, num_pairs, generator)
    x = x.double()
    return float((x[first.to(x.device)] - x[second.to(x.device)]).norm(dim=1).mean())


def _mm_distance_sum(x: Tensor, num_pairs: int, generator: torch.Generator | None) -> Tensor:
    repeats = x.shape[1]
    if repeats < 2 or repeats < num_pairs:
        raise ValueError(
            f"MultiModality draws {num_pairs} pairs of generations per text and needs at least "
            f"max(2, num_pairs) generations per text, got {repeats}; pass a smaller num_pairs (CLI: --mm-pairs)"
        )
    # one set of index pairs shared by all texts, as in Guo et al.
    first, second = _distinct_pairs(repeats, num_pairs, generator)
    x = x.double()
    return (x[:, first.to(x.device)] - x[:, second.to(x.device)]).norm(dim=-1).sum()


def multimodality(
    embeddings: Tensor | np.ndarray, num_pairs: int = MM_PAIRS, generator: torch.Generator | None = None
) -> float:
    """MultiModality of ``embeddings`` (K texts, R generations each, E): mean distance of random generation pairs.

    Example:
        >>> import torch
        >>> gens = torch.stack([torch.eye(10), 3 * torch.eye(10)])  # text 0: pairs sqrt(2) apart, text 1: 3 sqrt(2)
        >>> round(multimodality(gens, generator=torch.Generator().manual_seed(0)), 6) == round(2 * 2**0.5, 6)
        True
    """
    x = _check_embeddings(embeddings, "embeddings", ndim=3)
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    return float(_mm_distance_sum(x, num_pairs, generator) / (x.shape[0] * num_pairs))


# ------------------------------------------------------------------------------------------- torchmetrics classes


def _cat_state(state: list[Tensor] | Tensor) -> Tensor | None:
    """A ``cat`` list state as one tensor (it is a list before DDP sync and a tensor after); None when empty."""
    if isinstance(state, Tensor):
        return state if state.numel() else None
    parts = [p for p in state if p.numel()]
    return torch.cat(parts) if parts else None


class FID(Metric):
    """Streaming FID over evaluator embeddings; states are float64 sums (no samples are stored).

    Args:
        num_features: embedding width E.

    Example:
        >>> import torch
        >>> metric = FID(num_features=4)
        >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
        >>> metric.update(x, real=True)
        >>> metric.update(x + 2.0, real=False)
        >>> round(float(metric.compute()), 6)
        16.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    real_sum: Tensor
    real_outer: Tensor
    real_n: Tensor
    gen_sum: Tensor
    gen_outer: Tensor
    gen_n: Tensor

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        for side in ("real", "gen"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, embeddings: Tensor, real: bool) -> None:
        """Add a batch (B, E) of real (``real=True``) or generated motion embeddings."""
        x = _check_embeddings(embeddings, "embeddings")
        if x.shape[1] != self.num_features:
            raise ValueError(f"embeddings have width {x.shape[1]}, this FID was built with {self.num_features}")
        x = x.detach().to(device=self.real_sum.device, dtype=torch.float64)
        side = "real" if real else "gen"
        # in place: no (E, E) temporaries per batch
        getattr(self, f"{side}_sum").add_(x.sum(dim=0))
        getattr(self, f"{side}_outer").addmm_(x.T, x)
        getattr(self, f"{side}_n").add_(x.shape[0])

    def compute(self) -> Tensor:
        """FID of everything seen so far (states are kept; call ``reset()`` to start over)."""
        return torch.tensor(
            fid_from_sums(self.real_sum, self.real_outer, self.real_n, self.gen_sum, self.gen_outer, self.gen_n),
            dtype=torch.float64,
        )


class RPrecision(Metric):
    """Streaming R@1..R@top_k over shuffled groups of ``group_size`` pairs.

    Each ``update`` shuffles the new pairs together with the ones left over from earlier updates (seeded,
    metric-local generator) and scores every complete group; hit counts per k and the number of scored pairs are
    sum states. Left-over pairs (fewer than a group) are a ``cat`` state: ``compute`` pools the left-overs of all
    processes and scores their complete groups too, without changing the states. Feed pairs in random order (as
    the protocol's shuffled loader does): groups are cut from consecutive updates.

    Example:
        >>> import torch
        >>> metric = RPrecision()
        >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        >>> metric.update(x, x)
        >>> metric.compute().tolist()
        [1.0, 1.0, 1.0]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: Tensor
    num_pairs: Tensor
    pending_text: list[Tensor]
    pending_motion: list[Tensor]

    def __init__(self, top_k: int = TOP_K, group_size: int = GROUP_SIZE, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if top_k < 1 or group_size < 2 or top_k > group_size:
            raise ValueError(f"need 1 <= top_k <= group_size and group_size >= 2, got top_k={top_k}, {group_size=}")
        self.top_k, self.group_size, self.seed = top_k, group_size, seed
        self.add_state("hits", torch.zeros(top_k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_pairs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pending_text", [], dist_reduce_fx="cat")
        self.add_state("pending_motion", [], dist_reduce_fx="cat")
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, text_embeddings: Tensor, motion_embeddings: Tensor) -> None:
        """Add paired embeddings (B, E): row i of ``text_embeddings`` describes row i of ``motion_embeddings``."""
        text, motion = _check_pairs(text_embeddings, motion_embeddings)
        left_text, left_motion = _cat_state(self.pending_text), _cat_state(self.pending_motion)
        if left_text is not None:
            if left_text.shape[1] != text.shape[1]:
                raise ValueError(f"embedding width changed between updates: {left_text.shape[1]} -> {text.shape[1]}")
            text, motion = torch.cat([left_text, text.to(left_text)]), torch.cat([left_motion, motion.to(left_text)])
        # shuffle first: the left-overs must not always be the tail of the latest batch
        perm = torch.randperm(text.shape[0], generator=self._generator).to(text.device)
        text, motion = text[perm], motion[perm]
        used = (text.shape[0] // self.group_size) * self.group_size
        if used:
            hits = retrieval_hits(_group_distances(text, motion, self.group_size), self.top_k)
            self.hits = self.hits + hits.to(self.hits)
            self.num_pairs = self.num_pairs + used
        self.pending_text = [text[used:]]
        self.pending_motion = [motion[used:]]

    def compute(self) -> Tensor:
        """(top_k,) float64 R@k over all complete groups, including those formed from pooled left-overs."""
        hits, used = self.hits.double().cpu(), float(self.num_pairs)
        left_text, left_motion = _cat_state(self.pending_text), _cat_state(self.pending_motion)
        if left_text is not None and left_text.shape[0] >= self.group_size:
            generator = torch.Generator().manual_seed(self.seed + 1)
            perm = torch.randperm(left_text.shape[0], generator=generator).to(left_text.device)
            extra = (left_text.shape[0] // self.group_size) * self.group_size
            dist = _group_distances(left_text[perm], left_motion[perm], self.group_size)
            hits = hits + retrieval_hits(dist, self.top_k).double()
            used += extra
        if used == 0:
            pending = 0 if left_text is None else left_text.shape[0]
            raise ValueError(
                f"R-precision needs at least group_size={self.group_size} pairs, got {pending}; feed more pairs"
            )
        return hits / used

    def reset(self) -> None:
        """Clear the states and restart the shuffling generator from ``seed`` (replications are reproducible)."""
        super().reset()
        self._generator = torch.Generator().manual_seed(self.seed)


class MMDist(Metric):
    """Streaming MM-Dist: mean Euclidean distance between paired text and motion embeddings (sum states).

    Example:
        >>> import torch
        >>> metric = MMDist()
        >>> metric.update(torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        >>> float(metric.compute())
        3.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    dist_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("dist_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, text_embeddings: Tensor, motion_embeddings: Tensor) -> None:
        """Add paired embeddings (B, E)."""
        text, motion = _check_pairs(text_embeddings, motion_embeddings)
        self.dist_sum = self.dist_sum + (text.double() - motion.double()).norm(dim=1).sum().to(self.dist_sum)
        self.count = self.count + text.shape[0]

    def compute(self) -> Tensor:
        """Mean paired distance so far."""
        if float(self.count) == 0:
            raise ValueError("MM-Dist has no pairs yet: call update() first")
        return self.dist_sum / self.count


class Diversity(Metric):
    """Diversity over all embeddings seen (``num_pairs`` random pairs, seeded).

    Random pairs over the *whole* set are not a sum, so this metric keeps the embeddings as a ``cat`` state
    (gathered across processes in rank order); ``compute`` draws the pairs with a generator seeded from ``seed``,
    so it is repeatable and identical on every process.

    Example:
        >>> import torch
        >>> metric = Diversity(num_pairs=300)
        >>> metric.update(2.0**0.5 * torch.eye(300))
        >>> round(float(metric.compute()), 6)
        2.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    embeddings: list[Tensor]

    def __init__(self, num_pairs: int = DIVERSITY_PAIRS, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        self.num_pairs, self.seed = num_pairs, seed
        self.add_state("embeddings", [], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor) -> None:
        """Add motion embeddings (B, E)."""
        self.embeddings.append(_check_embeddings(embeddings, "embeddings").detach())

    def compute(self) -> Tensor:
        """Diversity of everything seen so far."""
        x = _cat_state(self.embeddings)
        if x is None:
            raise ValueError("Diversity has no embeddings yet: call update() first")
        value = diversity(x, self.num_pairs, torch.Generator().manual_seed(self.seed))
        return torch.tensor(value, dtype=torch.float64)


class MultiModality(Metric):
    """Streaming MultiModality: ``update`` takes (K texts, R generations, E) and adds ``num_pairs`` distances per text.

    The pairs of each update are drawn with a metric-local generator (seeded from ``seed``, restarted by
    ``reset``); distance sum and pair count are sum states.

    Example:
        >>> import torch
        >>> metric = MultiModality(num_pairs=5)
        >>> metric.update(torch.eye(5).unsqueeze(0))  # 5 generations, every two sqrt(2) apart
        >>> round(float(metric.compute()), 6) == round(2**0.5, 6)
        True
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    dist_sum: Tensor
    count: Tensor

    def __init__(self, num_pairs: int = MM_PAIRS, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        self.num_pairs, self.seed = num_pairs, seed
        self.add_state("dist_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, embeddings: Tensor) -> None:
        """Add the generations of K texts: (K, R, E)."""
        x = _check_embeddings(embeddings, "embeddings", ndim=3)
        self.dist_sum = self.dist_sum + _mm_distance_sum(x, self.num_pairs, self._generator).to(self.dist_sum)
        self.count = self.count + x.shape[0] * self.num_pairs

    def compute(self) -> Tensor:
        """Mean distance over all drawn pairs."""
        if float(self.count) == 0:
            raise ValueError("MultiModality has no generations yet: call update() first")
        return self.dist_sum / self.count

    def reset(self) -> None:
        """Clear the states and restart the pair generator from ``seed``."""
        super().reset()
        self._generator = torch.Generator().manual_seed(self.seed)


# ------------------------------------------------------------------------------------------------ protocol runner


@dataclass(frozen=True)
class ProtocolResult:
    """One metric over the repetitions of a protocol."""

    mean: float
    """mean over the repetitions"""
    ci95: float
    """half-width of the 95 % interval, 1.96 * std / sqrt(N) (population std, as Guo et al. / MotionGPT)"""
    values: tuple[float, ...]
    """the value of every repetition, in order"""


def repeat_protocol(
    fn: Callable[[torch.Generator], Mapping[str, float]],
    repeats: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, ProtocolResult]:
    """Run ``fn`` ``repeats`` times with generators seeded ``seed, seed+1, ...`` and summarise every metric.

    Args:
        fn: one evaluation; draws all its randomness from the generator it receives and returns ``{name: value}``
            with the same names every time.
        repeats: number of repetitions N (20 in the T2M protocol).
        seed: seed of the first repetition.
        progress: show a tqdm bar.

    Returns:
        ``{name: ProtocolResult(mean, ci95=1.96*std/sqrt(N), values)}`` in the order ``fn`` returned them.

    Example:
        >>> import torch
        >>> out = repeat_protocol(lambda g: {"x": float(torch.rand((), generator=g))}, repeats=4, seed=0)
        >>> len(out["x"].values), out["x"].ci95 > 0
        (4, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs: list[Mapping[str, float]] = []
    for i in tqdm(range(repeats), desc="protocol", disable=not progress):
        result = fn(torch.Generator().manual_seed(seed + i))
        if runs and list(result) != list(runs[0]):
            raise ValueError(f"repetition {i} returned metrics {list(result)}, the first one returned {list(runs[0])}")
        runs.append(result)
    summary: dict[str, ProtocolResult] = {}
    for name in runs[0]:
        values = np.array([float(r[name]) for r in runs], dtype=np.float64)
        ci = 1.96 * float(values.std()) / math.sqrt(repeats)
        summary[name] = ProtocolResult(float(values.mean()), ci, tuple(float(v) for v in values))
    return summary


def t2m_metrics(
    text: Tensor,
    real: Tensor,
    generated: Tensor,
    generator: torch.Generator | None = None,
    mm_generations: Tensor | None = None,
    group_size: int = GROUP_SIZE,
    top_k: int = TOP_K,
    diversity_pairs: int = DIVERSITY_PAIRS,
    mm_pairs: int = MM_PAIRS,
) -> dict[str, float]:
    """One evaluation of the T2M protocol on embeddings; the unit that :func:`repeat_protocol` repeats.

    Args:
        text: (N, E) caption embeddings; row i is the caption of ``real[i]`` and the prompt of ``generated[i]``.
        real: (N, E) ground-truth motion embeddings.
        generated: (N, E) generated motion embeddings.
        generator: randomness of the shuffled groups and the random pairs.
        mm_generations: optional (K, R, E) embeddings of R generations for K captions (MultiModality).

    Returns:
        ``{"gen/FID", "gen/R@1".., "gen/MM-Dist", "gen/Diversity", ["gen/MultiModality"], "real/R@1"..,
        "real/MM-Dist", "real/Diversity"}``; R-precision of real and generated motion use the same groups.
    """
    text, real = _check_pairs(text, real)
    text, generated = _check_pairs(text, generated)
    n = text.shape[0]
    if n < group_size:
        raise ValueError(f"R-precision needs at least group_size={group_size} pairs, got {n}")
    perm = torch.randperm(n, generator=generator).to(text.device)
    # the same Diversity pairs for both sides, as the same R-precision groups: real and generated differ only by
    # their embeddings
    diversity_seed = int(torch.randint(0, 2**62, (), generator=generator))
    out: dict[str, float] = {"gen/FID": fid(real, generated)}
    for side, motion in (("gen", generated), ("real", real)):
        r = r_precision(text[perm], motion[perm], group_size, top_k, shuffle=False)
        out.update({f"{side}/R@{k + 1}": float(r[k]) for k in range(top_k)})
        out[f"{side}/MM-Dist"] = mm_dist(text, motion)
        out[f"{side}/Diversity"] = diversity(motion, diversity_pairs, torch.Generator().manual_seed(diversity_seed))
        if side == "gen" and mm_generations is not None:
            out["gen/MultiModality"] = multimodality(mm_generations, mm_pairs, generator)
    return out


# ------------------------------------------------------------------------------------------------ the t2m command


@dataclass
class ClipSet:
    """Clips of one folder, in id order."""

    ids: list[str]
    clips: list[np.ndarray]
    """(T, 272) float32, UN-normalised"""
    texts: list[str] | None = None


def _read_caption(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} is missing: every generated clip needs texts/<id>.txt")
    for line in path.read_text(encoding="utf-8").splitlines():
        caption = line.split("#", 1)[0].strip()
        if caption:
            return caption
    raise ValueError(f"caption file {path} has no caption (empty, or every line starts with '#')")


def _read_clip(path: Path, feature_dim: int) -> np.ndarray:
    clip = np.load(path)
    if clip.ndim != 2 or clip.shape[1] != feature_dim or clip.shape[0] < 1:
        raise ValueError(f"{path}: expected a ({feature_dim}-dim) clip of shape (T, {feature_dim}), got {clip.shape}")
    if not np.isfinite(clip).all():
        raise ValueError(f"{path}: clip contains NaN/Inf values")
    return clip.astype(np.float32)


def read_clip_dir(root: str | Path, feature_dim: int = 272, with_texts: bool = False) -> ClipSet:
    """Read ``root/<id>.npy`` (and ``root/texts/<id>.txt`` when ``with_texts``), sorted by id; see module docs."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clip folder {root} does not exist")
    paths = sorted(root.glob("*.npy"))
    if not paths:
        raise FileNotFoundError(f"clip folder {root} holds no <id>.npy clips")
    ids = [p.stem for p in paths]
    clips = [_read_clip(p, feature_dim) for p in tqdm(paths, desc=f"read {root.name}", leave=False)]
    texts = [_read_caption(root / "texts" / f"{i}.txt") for i in ids] if with_texts else None
    return ClipSet(ids, clips, texts)


def read_mm_dir(root: Path, ids: Sequence[str], feature_dim: int = 272) -> dict[str, list[np.ndarray]]:
    """``root/<id>/<k>.npy`` generations per id (MultiModality); every id must exist in ``ids``."""
    groups: dict[str, list[np.ndarray]] = {}
    known = set(ids)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name not in known:
            raise ValueError(f"{sub}: MultiModality folder for id {sub.name!r}, which has no generated clip")
        paths = sorted(sub.glob("*.npy"))
        if len(paths) < 2:
            raise ValueError(f"{sub}: MultiModality needs >= 2 generations per caption, found {len(paths)}")
        groups[sub.name] = [_read_clip(p, feature_dim) for p in paths]
    if not groups:
        raise FileNotFoundError(f"{root} holds no <id>/<k>.npy generations; remove the folder or fill it")
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        raise ValueError(f"{root}: every caption needs the same number of generations, found counts {sorted(counts)}")
    return groups


def load_mean_std(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``Mean.npy``/``Std.npy`` (or lower-case ``mean.npy``/``std.npy``, the MotionMillion names) of ``root``."""
    root = Path(root)
    for mean_name, std_name in (("Mean.npy", "Std.npy"), ("mean.npy", "std.npy")):
        if (root / mean_name).is_file() and (root / std_name).is_file():
            mean, std = np.load(root / mean_name), np.load(root / std_name)
            if mean.shape != std.shape or mean.ndim != 1:
                raise ValueError(f"{root}: Mean {mean.shape} and Std {std.shape} must be equal 1-D shapes")
            if not (np.isfinite(std).all() and (std > 0).all()):
                raise ValueError(f"{root}/{std_name}: Std must be finite and > 0 everywhere")
            return mean.astype(np.float32), std.astype(np.float32)
    raise FileNotFoundError(f"{root} holds no Mean.npy/Std.npy (nor mean.npy/std.npy); pass --mean-std DIR")


@torch.inference_mode()
def embed_clips(
    evaluator: Any,
    clips: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    desc: str = "embed motion",
) -> Tensor:
    """Motion embeddings (N, E) of UN-normalised clips: normalise, batch by length, ``evaluator.encode_motion``."""
    if mean.shape[0] != evaluator.config.feature_dim:
        raise ValueError(f"Mean/Std have {mean.shape[0]} dims, the evaluator expects {evaluator.config.feature_dim}")
    order = sorted(range(len(clips)), key=lambda i: clips[i].shape[0])
    mean_t, std_t = torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device)
    out: list[Tensor | None] = [None] * len(clips)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[start : start + batch_size]
        lengths = torch.tensor([clips[i].shape[0] for i in idx])
        batch = torch.zeros(len(idx), int(lengths.max()), mean.shape[0])
        for row, i in enumerate(idx):
            batch[row, : clips[i].shape[0]] = torch.from_numpy(clips[i])
        batch = batch.to(device)
        # padded frames become -mean/std here; the evaluator masks them, so their value is irrelevant
        emb = evaluator.encode_motion((batch - mean_t) / std_t, lengths.to(device)).double().cpu()
        for row, i in enumerate(idx):
            out[i] = emb[row]
    return torch.stack(out)  # type: ignore[arg-type]


@torch.inference_mode()
def embed_texts(evaluator: Any, texts: Sequence[str], batch_size: int = 64, desc: str = "embed text") -> Tensor:
    """Text embeddings (N, E) via ``evaluator.encode_text``."""
    parts = [
        evaluator.encode_text(list(texts[s : s + batch_size])).double().cpu()
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False)
    ]
    return torch.cat(parts)


def format_table(summary: Mapping[str, ProtocolResult], repeats: int) -> str:
    """Rows = metrics, columns = real / generated, cells ``mean ± ci95``."""
    names: list[str] = []
    for key in summary:
        name = key.split("/", 1)[1]
        if name not in names:
            names.append(name)
    width = max(len(n) for n in names) + 2
    lines = [f"{'metric':<{width}}{'real':>22}{'generated':>22}", "-" * (width + 44)]
    for name in names:
        cells = []
        for side in ("real", "gen"):
            r = summary.get(f"{side}/{name}")
            cells.append("-" if r is None else f"{r.mean:.4f} ± {r.ci95:.4f}")
        lines.append(f"{name:<{width}}{cells[0]:>22}{cells[1]:>22}")
    lines.append(f"(mean ± 1.96·std/sqrt(N) over N={repeats} repetitions)")
    return "\n".join(lines)
