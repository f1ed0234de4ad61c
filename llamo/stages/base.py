"""The small base every stage LightningModule shares: the ``core`` attribute, handoff hooks, finite-loss guard."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class NonFiniteLossError(RuntimeError):
    """Raised instead of taking an optimiser step on a NaN/Inf loss."""


class StageModule(L.LightningModule):
    """Base of every stage.

    Subclasses build their model under ``self.core`` (the same attribute name in every stage so state-dict
    prefixes line up), implement :meth:`core_config` and may narrow :meth:`handoff_excluded_prefixes`.
    """

    #: short name written into stage outputs ("vae", "align", ...)
    stage_name: str = "stage"
    core: nn.Module

    def core_config(self) -> dict[str, Any]:
        """JSON-able config that rebuilds ``self.core``; saved next to the handoff weights and checked on load."""
        raise NotImplementedError

    def handoff_excluded_prefixes(self) -> list[str]:
        """State-dict prefixes of ``self.core`` not written to the handoff (e.g. the frozen base LLM)."""
        return []

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Stop training with a clear message when any loss term is NaN/Inf (instead of training on it)."""
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        if bad:
            raise NonFiniteLossError(
                f"{self.stage_name}: non-finite loss at global step {self.global_step}: {bad}. "
                "Lower the learning rate, check the input data (`llamo data check`), or use fp32 precision."
            )
