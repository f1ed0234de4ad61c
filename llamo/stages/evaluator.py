"""Evaluator stage: train the TMR-style text-motion retrieval model behind FID / R-precision / MM-Dist.

    llamo fit --config experiments/base.yaml --config experiments/evaluator.yaml --data.init_args.root=data/synth
    llamo eval evaluator --ckpt runs/default/evaluator --data data/synth --split test

The model is :class:`metrics.evaluator.TextMotionEvaluator` (kept under ``self.core``; the frozen MiniLM is not
part of its weights), trained with its symmetric InfoNCE loss on (normalised motion, random caption) pairs from
:class:`llamo.data.retrieval.RetrievalDataModule`. Validation logs the loss, R@1/2/3 in shuffled groups of 32 and
MM-Dist of real motion against its own captions. The forced ``handoff`` callback writes ``handoff.safetensors`` +
``config.json``, which ``TextMotionEvaluator.load`` and ``python -m metrics t2m --evaluator`` read; this stage
also writes the corpus ``Mean.npy``/``Std.npy`` there, so the folder says how motion must be normalised.
`llamo.eval.retrieval.evaluate_retrieval` (``llamo eval evaluator``) measures the trained evaluator.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from callbacks.handoff import StageHandoff
from llamo.data.retrieval import RetrievalBatch
from llamo.motion.normalization import Normalizer
from llamo.stages.base import StageModule
from llamo.stages.schedules import ScheduleName, lr_factor
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from metrics.generation import (
    GROUP_SIZE,
    TOP_K,
    MMDist,
    RPrecision,
)


class EvaluatorStage(StageModule):
    """LightningModule around :class:`TextMotionEvaluator`.

    Args:
        evaluator: Architecture and loss (``None``: the TMR-size defaults of :class:`EvaluatorConfig`).
        lr: Peak learning rate (TMR / Evaluator_272: 1e-4 at batch 256).
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        schedule: ``constant`` or ``cosine`` decay to ``lr * min_lr_ratio`` at ``trainer.max_steps``.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final learning rate of the cosine schedule, relative to ``lr``.
        group_size: R-precision group size in validation/test (the split needs at least this many clips).
        seed: Seed of the per-step dropout (the global RNG is reseeded from it and the step before every training
            batch, so a resumed run draws the same masks as an uninterrupted one).
    """

    stage_name = "evaluator"

    def __init__(
        self,
        evaluator: EvaluatorConfig | None = None,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        schedule: ScheduleName = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        group_size: int = GROUP_SIZE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = evaluator if evaluator is not None else EvaluatorConfig()
        self.core = TextMotionEvaluator(self.config)
        self.retrieval = torch.nn.ModuleDict(
            {f"{p}_r": RPrecision(TOP_K, group_size, seed=0) for p in ("val", "test")}
            | {f"{p}_mm": MMDist() for p in ("val", "test")}
        )
        self.normalizer: Normalizer | None = None

    def core_config(self) -> dict[str, Any]:
        return asdict(self.config)

    def setup(self, stage: str) -> None:
        self.normalizer = getattr(self.trainer.datamodule, "normalizer", None) if self.trainer else None

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> Tensor:
        out = self.core(batch["motion"], batch["lengths"], batch["texts"])
        losses = self.core.loss(out)
        self.check_finite({"loss": losses["loss"]})
        batch_size = len(batch["texts"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log("train/accuracy", losses["accuracy"], batch_size=batch_size)
        return losses["loss"]

    def _eval_step(self, batch: RetrievalBatch, prefix: str) -> None:
        out = self.core(batch["motion"], batch["lengths"], batch["texts"])
        losses = self.core.loss(out)
        batch_size = len(batch["texts"])
        self.log(f"{prefix}/loss", losses["loss"], batch_size=batch_size, sync_dist=True)
        self.retrieval[f"{prefix}_r"].update(out.text, out.motion)
        self.retrieval[f"{prefix}_mm"].update(out.text, out.motion)

    def _log_retrieval(self, prefix: str) -> None:
        r_metric, mm_metric = self.retrieval[f"{prefix}_r"], self.retrieval[f"{prefix}_mm"]
        values = r_metric.compute()  # synced across processes; raises if the split has < group_size pairs
        for k, value in enumerate(values.tolist(), start=1):
            self.log(f"{prefix}/R@{k}", value, prog_bar=k == 3)
        self.log(f"{prefix}/mm_dist", float(mm_metric.compute()))
        r_metric.reset()
        mm_metric.reset()

    def validation_step(self, batch: RetrievalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_retrieval("val")
        else:
            self.retrieval["val_r"].reset()
            self.retrieval["val_mm"].reset()

    def test_step(self, batch: RetrievalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def on_fit_end(self) -> None:
        handoff = next((cb for cb in self.trainer.callbacks if isinstance(cb, StageHandoff)), None)
        if handoff is not None and handoff.save_to and self.trainer.is_global_zero:
            if self.normalizer is None:
                raise ValueError(
                    "EvaluatorStage writes the corpus Mean/Std next to its weights and needs a DataModule with a "
                    "`normalizer`; use llamo.data.retrieval.RetrievalDataModule"
                )
            self.normalizer.save(handoff.save_to)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # parameters() holds only the trainable parts: the frozen MiniLM is not registered
        optimizer = torch.optim.AdamW(
            self.core.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        factor = lr_factor(hp.schedule, self.trainer.max_steps, hp.warmup_steps, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
