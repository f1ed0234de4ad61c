"""The small base every stage LightningModule shares: the ``core`` attribute, handoff hooks, finite-loss guard,
and the per-step reseeding of the global RNG that makes a resumed run draw the same noise as an uninterrupted one."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from llamo.data.stream import uniform


class NonFiniteLossError(RuntimeError):
    """Raised instead of taking an optimiser step on a NaN/Inf loss."""


class StageModule(L.LightningModule):
    """Base of every stage.

    Subclasses build their model under ``self.core`` (the same attribute name in every stage so state-dict
    prefixes line up), implement :meth:`core_config` and may narrow :meth:`handoff_excluded_prefixes`.

    Before every training batch the global torch RNG (CPU and CUDA) is reseeded from ``(hparams.seed, global step,
    batch index, rank)``: dropout and any noise drawn without an explicit generator (the VAE's latent noise) are then
    a function of the step, like the data stream (:mod:`llamo.data.stream`). The RNG state is not in Lightning's
    checkpoint, so without this a run resumed from ``last.ckpt`` would continue from ``seed_everything``'s state
    instead of where the killed run was.
    """

    #: short name written into stage outputs ("vae", "align", ...)
    stage_name: str = "stage"
    core: nn.Module

    def core_config(self) -> dict[str, Any]:
        """JSON-able config that rebuilds ``self.core``; saved next to the handoff weights and checked on load."""
        raise NotImplementedError

    def core_config_defaults(self) -> dict[str, Any]:
        """Values of `core_config` fields that a handoff written before they existed counts as holding (dotted
        names). Default: none, every field must be recorded."""
        return {}

    def handoff_excluded_prefixes(self) -> list[str]:
        """State-dict prefixes of ``self.core`` not written to the handoff (e.g. the frozen base LLM)."""
        return []

    def handoff_rebuilt_from(self) -> str:
        """Where ``self.core`` took the excluded sub-trees from, named in a fingerprint mismatch/warning."""
        return f"{type(self).__name__}'s own initialisation"

    def handoff_extra(self) -> dict[str, Any]:
        """Informational entries written into the handoff's ``config.json`` beside the config (not checked on
        load), e.g. what the stage was trained with that inference needs to know. Default: none."""
        return {}

    def step_seed(self, batch_idx: int) -> int:
        """Seed of the global RNG for this training batch (63 bits, from ``hparams.seed``, step, batch, rank)."""
        seed = int(self.hparams.get("seed", 0))
        return int(uniform(seed, self.global_step, batch_idx, self.global_rank, "global-rng") * 2**63)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(self.step_seed(batch_idx))

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Stop training with a clear message when any loss term is NaN/Inf (instead of training on it)."""
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        if bad:
            raise NonFiniteLossError(
                f"{self.stage_name}: non-finite loss at global step {self.global_step}: {bad}. "
                "Lower the learning rate, check the input data (`llamo data check`), or use fp32 precision."
            )
