"""Intervals over seeds: the t-based 95 % interval of a few values (training seeds, generation seeds), grouping the
run folders of one ablation's seeds, and the separation rule that calls a direction.

Formula: for K values x_1..x_K (one per seed), mean m = (1/K) sum x_k, sample standard deviation
s = sqrt(sum (x_k - m)^2 / (K - 1)), and the 95 % interval m ± t_{0.975, K-1} · s / sqrt(K) (Student's t: with
K = 3 seeds the factor is 4.30, not 1.96, because s itself is estimated from 3 values). One value has no interval.
Two intervals *separate* when |m_a - m_b| > h_a + h_b (half-widths): only then is a difference called a direction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

__all__ = ["SeedInterval", "seed_interval", "seed_of_run", "separated"]

_SEED_SUFFIX = re.compile(r"^(?P<base>.+)-seed(?P<seed>[1-9][0-9]*)$")


@dataclass(frozen=True)
class SeedInterval:
    """Mean and 95 % interval of one metric over K seeds."""

    mean: float
    """mean over the seeds"""
    ci95: float | None
    """half-width t_{0.975, K-1} · s / sqrt(K) (sample std s); None for K = 1"""
    values: tuple[float, ...]
    """the value of every seed, in seed order"""


def seed_interval(values: Sequence[float]) -> SeedInterval:
    """Mean ± t-based 95 % interval of ``values`` (one per seed); see the module docstring.

    Example:
        >>> r = seed_interval([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.303
        >>> r.mean, round(r.ci95, 3)
        (2.0, 2.484)
    """
    if not values:
        raise ValueError("seed_interval needs at least one value")
    xs = [float(v) for v in values]
    k = len(xs)
    mean = sum(xs) / k
    if k == 1:
        return SeedInterval(mean, None, tuple(xs))
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (k - 1))
    return SeedInterval(mean, float(student_t.ppf(0.975, k - 1)) * s / math.sqrt(k), tuple(xs))


def separated(a: float, a_ci: float | None, b: float, b_ci: float | None) -> bool | None:
    """Whether the intervals a ± a_ci and b ± b_ci separate (|a - b| > a_ci + b_ci); None when either has none."""
    if a_ci is None or b_ci is None:
        return None
    return abs(a - b) > a_ci + b_ci


def seed_of_run(name: str) -> tuple[str, int]:
    """``(base name, training seed)`` of a run folder name: ``ablate-x-seed2`` -> ``("ablate-x", 2)``, and a name
    without the suffix is seed 0 (the Makefile's ``seed_suffix``: seed 0 keeps the folder names of earlier runs)."""
    match = _SEED_SUFFIX.match(name)
    return (match["base"], int(match["seed"])) if match else (name, 0)
