"""Shared plumbing of the three LLaMo stages (paper §3.4, Table 1); each stage only names what it trains.

A stage declares its trainable parameter groups (``backbone``: motion branch, adapter, projector, [BOM]/[EOM]
rows; ``heads``: flow head, exit head) via :meth:`LLaMoStage.trainable_groups`; everything else is frozen.
Each group gets its own learning-rate schedule (Table 1 has distinct AR and head schedulers) through one
``LambdaLR`` with a factor per group. Loss weights lambda1 (NTP) and lambda2 (End) are stage arguments.

Precision: every trainable tensor must reach the optimizer in float32 (or under a strategy with float32
masters); `llamo.stages.precision.check_fp32_master` refuses anything else, first in ``setup`` (before any
conversion or wrapping) and again in ``configure_optimizers`` on the dtypes the optimizer actually gets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from llamo.core.format import MotionTextBatch, SequenceFormatter
from llamo.core.llm import describe_llm_source
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.stages.base import StageModule
from llamo.stages.precision import HALF_TRUE_PRECISIONS, check_fp32_master, check_fsdp1_uniform_dtype
from llamo.stages.schedules import ScheduleName, lr_factor

#: paper §7.2: AdamW with betas (0.9, 0.95)
DEFAULT_BETAS = (0.9, 0.95)


class LLaMoStage(StageModule):
    """Base of :class:`~llamo.stages.align.AlignStage`, :class:`~llamo.stages.joint.JointStage`,
    :class:`~llamo.stages.anneal.AnnealStage`.

    Args:
        core: Model configuration (base LLM, MoT on/off, head sizes); ``experiments/model/<size>.yaml``.
        lr: Base learning rate of every trainable group (Table 1: 1e-4 / 1e-4 / 1e-5).
        backbone_schedule: LR schedule of the backbone group (motion branch, adapter, projector, [BOM]/[EOM]).
        head_schedule: LR schedule of the heads group (flow head, exit head).
        warmup_steps: Linear warm-up steps of every group.
        min_lr_ratio: Final LR of a cosine schedule as a fraction of ``lr``.
        lambda_ntp: Weight lambda1 of the next-token (caption) cross-entropy.
        lambda_end: Weight lambda2 of the exit-head binary cross-entropy.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        seed: Seed of the per-step noise (teacher forcing, flow timesteps, condition dropout); combined with
            the global step so a resumed run draws the same noise as an uninterrupted one.
        adamw_fused: ``torch.optim.AdamW(fused=...)``: one fused kernel over all parameters instead of a loop of
            per-tensor updates (on a 2-core CPU 0.07 s instead of 0.20 s per step for SmolLM2's 106M motion
            twins; the same update up to float rounding). ``None``: PyTorch's own choice (the paper recipe).
    """

    def __init__(
        self,
        core: LLaMoConfig,
        lr: float = 1e-4,
        backbone_schedule: ScheduleName = "constant",
        head_schedule: ScheduleName = "constant",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        lambda_ntp: float = 0.05,
        lambda_end: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = DEFAULT_BETAS,
        seed: int = 0,
        adamw_fused: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.core = LLaMo(core)
        self._apply_trainable()

    # -- what trains -------------------------------------------------------------------------------------

    def motion_branch(self) -> list[nn.Parameter]:
        """The motion branch: MoT twins, or (w/o MoT) the whole shared LLM that is then fine-tuned."""
        return self.motion_branch_of(self.core)

    @staticmethod
    def motion_branch_of(core: LLaMo) -> list[nn.Parameter]:
        """`motion_branch` of any ``core`` (also one on the meta device, for ``llamo plan``)."""
        if core.config.mot:
            return list(core.mot.motion_parameters())
        return list(core.llm.parameters())

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": [...], "heads": [...]}``: parameters this stage trains (others are frozen)."""
        return self.groups_of(self.core)

    @classmethod
    def groups_of(cls, core: LLaMo) -> dict[str, list[nn.Parameter]]:
        """The parameter groups this stage class trains in ``core`` (each stage overrides it). A classmethod so
        that ``llamo plan`` can ask a stage what it trains on a meta-device `LLaMo` without building the stage."""
        raise ValueError(
            "LLaMoStage is the shared base of the LLaMo stages and trains nothing by itself; compose a stage file "
            "after the model file: --config experiments/model/<size>.yaml --config experiments/stage{1,2,3}.yaml"
        )

    def _apply_trainable(self) -> None:
        self.core.requires_grad_(False)
        for params in self.trainable_groups().values():
            for p in params:
                p.requires_grad_(True)

    def _trainable_dtypes(self, cast_to: torch.dtype | None = None) -> list[tuple[str, torch.dtype]]:
        """``(name, dtype)`` of every trainable parameter of ``core`` (``cast_to``: the dtype a precision
        plugin is about to cast it to)."""
        ids = {id(p) for ps in self.trainable_groups().values() for p in ps if p.requires_grad}
        return [(n, cast_to or p.dtype) for n, p in self.core.named_parameters() if id(p) in ids]

    def _check_precision(self, cast_to: torch.dtype | None = None) -> None:
        cfg = self.core.config
        check_fp32_master(
            self._trainable_dtypes(cast_to), str(self.trainer.precision), self.trainer.strategy, cfg.mot, cfg.llm.dtype
        )

    def setup(self, stage: str) -> None:
        """Refuse a precision setup without float32 masters before any conversion, sharding or handoff load."""
        if stage == "fit":
            # `*-true` half precisions cast the whole module after this hook (Strategy.setup -> convert_module)
            self._check_precision(HALF_TRUE_PRECISIONS.get(str(self.trainer.precision)))
            check_fsdp1_uniform_dtype((p.dtype for p in self.core.parameters()), self.trainer.strategy)
            self._fit_latent_norm()

    def _fit_latent_norm(self) -> None:
        """``latent_norm: standardise``: fit the statistics on the training latents unless a handoff brought them.

        The DataModule's ``setup`` and the handoff callback's ``setup`` both run before this hook, so a later stage
        keeps stage 1's statistics. Every process computes them from the whole training split, so ranks agree."""
        norm = self.core.latent_norm
        if norm is None or norm.fitted:
            return
        train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        latents = getattr(getattr(train_set, "latents", None), "latents", None)
        if latents is None:
            raise ValueError(
                "model.init_args.core.latent_norm=standardise fits its statistics on the DataModule's "
                "train_set.latents (llamo.data.llamo_data.LLaMoDataModule); this DataModule has none: use "
                "LLaMoDataModule or set latent_norm: none"
            )
        norm.fit(latents)

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        self._check_precision()  # the dtypes the optimizer really gets (after Lightning's conversion/wrapping)
        groups = {name: [p for p in ps if p.requires_grad] for name, ps in self.trainable_groups().items()}
        groups = {name: ps for name, ps in groups.items() if ps}
        schedules = {"backbone": h.backbone_schedule, "heads": h.head_schedule}
        total = int(self.trainer.estimated_stepping_batches) if self.trainer.max_steps != 0 else 1
        optimizer = torch.optim.AdamW(
            [{"params": ps, "name": name} for name, ps in groups.items()],
            lr=h.lr,
            betas=tuple(h.betas),
            weight_decay=h.weight_decay,
            fused=h.adamw_fused,
        )
        factors = [lr_factor(schedules[name], max(total, 1), h.warmup_steps, h.min_lr_ratio) for name in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- handoff -------------------------------------------------------------------------------------------

    def core_config(self) -> dict[str, Any]:
        cfg = self.core.config.to_dict()
        # loss settings are training choices of a stage, not part of the architecture handed on
        cfg.pop("loss", None)
        return cfg

    def core_config_defaults(self) -> dict[str, Any]:
        # a handoff written before a field existed reads as holding its default, as `LLaMoConfig.from_dict` reads it
        return {f.name: f.default for f in dataclasses.fields(LLaMoConfig) if f.default is not dataclasses.MISSING}

    def handoff_excluded_prefixes(self) -> list[str]:
        return self.core.frozen_prefixes()

    def handoff_rebuilt_from(self) -> str:
        return describe_llm_source(self.core.config.llm)

    def handoff_extra(self) -> dict[str, Any]:
        """``training_motion``: the longest motion span this stage trained on, as the DataModule cropped it
        (``max_latents`` tokens of the first ``max_frames`` frames). Inference (`llamo.inference.run`) windows
        longer clips to it: the model never saw a longer span, and its captions of one are not about motion."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hparams = getattr(datamodule, "hparams", {})
        if "max_latents" not in hparams or "max_frames" not in hparams:
            return {}  # a DataModule without these settings: load_run falls back to the stage's config.yaml
        return {
            "training_motion": {"max_latents": int(hparams["max_latents"]), "max_frames": int(hparams["max_frames"])}
        }

    def sequence_formatter(self) -> SequenceFormatter:
        """The formatter the DataModule uses (tokenizer + [BOM]/[EOM] ids of this core)."""
        return self.core.sequence_formatter()

    # -- steps ---------------------------------------------------------------------------------------------

    def _generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.hparams.seed * 1_000_003 + self.global_step * 101 + offset)
        return g

    def _losses(self, batch: MotionTextBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.core.loss(
            batch, generator=generator, lambda_ntp=self.hparams.lambda_ntp, lambda_end=self.hparams.lambda_end
        )

    def training_step(self, batch: MotionTextBatch, batch_idx: int) -> torch.Tensor:
        terms = self._losses(batch, self._generator(self.global_rank))
        self.check_finite(terms)
        size = batch.input_ids.shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=True, batch_size=size)
        if self.trainer.optimizers:  # per-group learning rates (Table 1 schedules differ by group)
            for group in self.trainer.optimizers[0].param_groups:
                self.log(f"lr/{group['name']}", group["lr"], batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: MotionTextBatch, batch_idx: int) -> None:
        terms = self._losses(batch, self._generator(10_000 + batch_idx))
        size = batch.input_ids.shape[0]
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=size, sync_dist=True)

    # -- sharding (experiments/strategies/fsdp2.yaml) -------------------------------------------------------

    def configure_model(self) -> None:
        """FSDP2 under ``ModelParallelStrategy``: shard every MLP (text and motion twins) and the root.

        MoT calls each layer's norms, projections and MLP directly (per modality) instead of the layer's own
        ``forward``, so the shard unit is a module whose ``forward`` runs: the MLPs (most of the weights),
        with everything else in the root unit.
        """
        mesh = getattr(self, "device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"]
        for module in self.core.modules():
            if type(module).__name__ == "LlamaMLP":
                fully_shard(module, mesh=dp)
        fully_shard(self.core, mesh=dp)
