"""``StageHandoff``: start a stage from the previous stage's weights, and hand this stage's weights on.

The callback is a thin wrapper over :mod:`stageio`. It loads in ``setup`` — after the stage module
built ``self.core`` and before any strategy (DDP, FSDP, DeepSpeed) wraps it — and writes in ``on_fit_end``.
The handoff records the fingerprints of the sub-trees it leaves out (the frozen base LLM), taken at fit end from
the weights the core holds then (so a run resumed from a checkpoint records the base it really trained with). A
core sharded by FSDP2 is the exception: its gathered state dict no longer shows tied weights as tied, so its
fingerprints are the ones taken in ``setup`` on the plain module, before sharding and before a resume restores
weights. Loading checks the previous stage's recorded fingerprints against this stage's rebuilt base
(`stageio.load_stage_weights`).
A resumed run (``--ckpt_path``) restores its own weights; :class:`llamo.stages.cli.LlamoCLI` switches the
handoff load off in that case (resume wins, see the README).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from stageio import excluded_fingerprints, load_stage_weights, save_stage_output

log = logging.getLogger(__name__)


class StageHandoff(L.Callback):
    """Load ``load_from``/handoff.safetensors into ``module.core`` at fit start; write ``save_to`` at fit end.

    Args:
        load_from: Stage output folder of the previous stage (None: start from the stage's own initialisation).
        save_to: Folder this stage writes ``handoff.safetensors`` + ``config.json`` to at the end of ``fit``
            (None: write nothing).
    """

    def __init__(self, load_from: str | None = None, save_to: str | None = None) -> None:
        super().__init__()
        self.load_from = load_from
        self.save_to = save_to
        self.loaded_keys = 0
        self.fingerprints: dict[str, str] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not (self.load_from or self.save_to):
            return
        core = getattr(pl_module, "core", None)
        if core is None:
            raise ValueError(f"{type(pl_module).__name__} has no `core` attribute; StageHandoff uses `core`")
        if self.save_to and trainer.is_global_zero:  # only rank 0 writes the handoff
            self.fingerprints = excluded_fingerprints(core.state_dict(), pl_module.handoff_excluded_prefixes())
        if not self.load_from:
            return
        out = load_stage_weights(
            core,
            self.load_from,
            expected_config=pl_module.core_config(),
            config_defaults=pl_module.core_config_defaults(),
            expected_kind=core_kind(core),
            rebuilt_from=pl_module.handoff_rebuilt_from(),
        )
        self.loaded_keys = len(out.state_dict)
        log.info("handoff: loaded %d tensors from %s (stage %r) into core", self.loaded_keys, self.load_from, out.stage)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.save_to:
            return
        core = pl_module.core
        state_module = _FullStateView(core) if _is_sharded(core) else core
        if trainer.is_global_zero:
            if not _is_sharded(core):  # the base the core holds now (a resume restores the checkpoint's)
                self.fingerprints = excluded_fingerprints(core.state_dict(), pl_module.handoff_excluded_prefixes())
            assert self.fingerprints is not None, "setup('fit') computes the fingerprints before fit ends"
            save_stage_output(
                self.save_to,
                state_module,
                pl_module.core_config(),
                kind=core_kind(core),
                stage=pl_module.stage_name,
                excluded_prefixes=pl_module.handoff_excluded_prefixes(),
                fingerprints=self.fingerprints,
                extra=pl_module.handoff_extra() if hasattr(pl_module, "handoff_extra") else None,
            )
            log.info("handoff: wrote %s", Path(self.save_to) / "handoff.safetensors")
        trainer.strategy.barrier("stage-handoff-saved")


def core_kind(module: torch.nn.Module) -> str:
    """Class name of the core as built, also after FSDP2 swapped in its ``FSDP<Name>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if isinstance(module, FSDPModule):
        cls = next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls.__name__


def _is_sharded(module: torch.nn.Module) -> bool:
    """True when parameters are DTensors (FSDP2 ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class _FullStateView(torch.nn.Module):
    """Presents a sharded module's full (gathered, CPU) state dict; every rank must build it (collective)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self._full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state_dict(self, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._full
