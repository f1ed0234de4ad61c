"""Mean/Std normalisation of 272-dim features, as in HumanML3D-272 / MotionStreamer: ``(x - Mean) / Std``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from llamo.motion.representation import FEATURE_DIM, GROUPS

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

#: file names tried in order: HumanML3D-272 (capitalised) first, then MotionMillion (lower case)
_MEAN_NAMES = ("Mean.npy", "mean.npy")
_STD_NAMES = ("Std.npy", "std.npy")


class Normalizer:
    """Per-dimension ``(x - mean) / std`` for numpy arrays or torch tensors of shape (..., D).

    Args:
        mean: (D,) per-dimension mean.
        std: (D,) per-dimension std, all > 0 (use :func:`compute_mean_std` so constant dims get their group's std).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be 1-D of the same length, got shapes {mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("mean and std must be finite; recompute them with compute_mean_std")
        if (std <= 0).any():
            bad = np.flatnonzero(std <= 0)[:5].tolist()
            raise ValueError(f"std must be > 0 in every dim, got std <= 0 at dims {bad}; group-average it")
        self.mean = mean
        self.std = std

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    def _stats_like(self, x: ArrayT) -> tuple[ArrayT, ArrayT]:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected features with last dimension {self.dim}, got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.std, dtype=x.dtype, device=x.device),
            )
        return self.mean.astype(x.dtype, copy=False), self.std.astype(x.dtype, copy=False)

    def normalise(self, x: ArrayT) -> ArrayT:
        """Raw features (..., D) -> normalised features, same type and dtype."""
        mean, std = self._stats_like(x)
        return (x - mean) / std

    def denormalise(self, x: ArrayT) -> ArrayT:
        """Normalised features (..., D) -> raw features, same type and dtype."""
        mean, std = self._stats_like(x)
        return x * std + mean

    @classmethod
    def load(cls, directory: str | Path) -> Normalizer:
        """Read ``Mean.npy`` / ``Std.npy`` (or MotionMillion's ``mean.npy`` / ``std.npy``) from ``directory``."""
        directory = Path(directory)
        arrays = []
        for names in (_MEAN_NAMES, _STD_NAMES):
            path = next((directory / n for n in names if (directory / n).is_file()), None)
            if path is None:
                raise FileNotFoundError(
                    f"{directory / names[0]} not found (nor {names[1]}): point to a mean_std folder, or write one "
                    "with Normalizer.save / compute_mean_std"
                )
            array = np.load(path)
            if array.shape != (FEATURE_DIM,):
                raise ValueError(f"{path} has shape {array.shape}, expected ({FEATURE_DIM},) for 272-dim features")
            arrays.append(array)
        return cls(arrays[0], arrays[1])

    def save(self, directory: str | Path) -> None:
        """Write ``Mean.npy`` and ``Std.npy`` (float64) into ``directory`` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _MEAN_NAMES[0], self.mean)
        np.save(directory / _STD_NAMES[0], self.std)


def compute_mean_std(clips: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and group-averaged std over all frames of all clips (each (T, 272)), as ``cal_mean_std.py`` does.

    The per-dim population std is replaced by its average inside each of :data:`GROUPS`, so dims that are
    constant (heading-6D zeros, pelvis xz) get a usable scale. Statistics are merged clip by clip (Chan et al.),
    so the corpus never has to fit in memory.
    """
    count = 0
    mean = np.zeros(FEATURE_DIM, dtype=np.float64)
    m2 = np.zeros(FEATURE_DIM, dtype=np.float64)  # sum of squared deviations from the mean
    for index, clip in enumerate(clips):
        clip = np.asarray(clip, dtype=np.float64)
        if clip.ndim != 2 or clip.shape[1] != FEATURE_DIM:
            raise ValueError(f"clip {index} has shape {clip.shape}, expected (T, {FEATURE_DIM})")
        n = clip.shape[0]
        if n == 0:
            continue
        clip_mean = clip.mean(axis=0)
        clip_m2 = ((clip - clip_mean) ** 2).sum(axis=0)
        delta = clip_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + clip_m2 + delta**2 * (count * n / total)
        count = total
    if count == 0:
        raise ValueError("compute_mean_std got no frames: pass at least one non-empty (T, 272) clip")
    std = np.sqrt(m2 / count)
    for group in GROUPS:
        std[group] = std[group].mean()
    return mean, std
