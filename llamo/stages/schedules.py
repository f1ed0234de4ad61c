"""Learning-rate schedules as multiplicative factors, one per parameter group (paper Table 1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

ScheduleName = Literal["constant", "cosine"]


def lr_factor(
    schedule: ScheduleName, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """Return ``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Linear warm-up from ~0 to 1 over ``warmup_steps`` (MotionStreamer: ``(step+1)/(warmup+1)``), then either
    constant 1 or a cosine decay from 1 to ``min_ratio`` at ``total_steps``.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'constant' or 'cosine'")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}; set trainer.max_steps")
    if not 0 <= warmup_steps < max(total_steps, 1) + 1:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
