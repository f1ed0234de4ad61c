"""VAE stage (paper §3.2, §7.1): train the causal motion VAE on random motion windows.

    llamo fit --config experiments/base.yaml --config experiments/vae.yaml

AdamW with linear warm-up then cosine decay (per step), loss of Eq. 2 (:meth:`CausalMotionVAE.loss`), validation
loss plus MPJPE / MPJRE / sJPE of whole validation clips (joints and rotations recovered from de-normalised
features). The forced ``handoff`` callback writes ``handoff.safetensors`` + ``config.json`` (the VAEConfig) at the
end, which later stages and ``llamo eval vae`` load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from llamo.core.vae import CausalMotionVAE, VAEConfig, VAEOutput
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import recover_joints, recover_rotations
from llamo.stages.base import StageModule
from llamo.stages.schedules import lr_factor
from metrics.reconstruction import MPJPE, MPJRE, SJPE


class VAEStage(StageModule):
    """LightningModule around :class:`CausalMotionVAE` (kept under ``self.core``).

    Args:
        vae: Architecture (``None``: the paper-size defaults of :class:`VAEConfig`).
        lr: Peak learning rate (paper §7.1: 5e-5 at batch 256).
        betas: AdamW betas (paper §7.1: 0.9, 0.95).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps from ~0 to ``lr`` (paper: 1,000).
        min_lr_ratio: Cosine decay ends at ``lr * min_lr_ratio`` at ``trainer.max_steps`` (paper: 0).
        lambda_root: Weight of the root reconstruction term (MotionStreamer: 7).
        kl_weight: Weight of the KL term (see :meth:`CausalMotionVAE.loss`).
        val_sample: Decode a sampled ``z`` in validation like MotionStreamer's protocol (False: decode ``mu``).
        seed: Seed of the per-step latent noise (the global RNG is reseeded from it and the step before every
            training batch, so a resumed run draws the same noise as an uninterrupted one).
    """

    stage_name = "vae"

    def __init__(
        self,
        vae: VAEConfig | None = None,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.0,
        lambda_root: float = 7.0,
        kl_weight: float = 1.0,
        val_sample: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = vae if vae is not None else VAEConfig()
        self.core = CausalMotionVAE(self.config)
        self.val_mpjpe = MPJPE()
        self.val_mpjre = MPJRE()
        self.val_sjpe = SJPE()
        self.normalizer: Normalizer | None = None

    def core_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def setup(self, stage: str) -> None:
        normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if normalizer is None:
            raise ValueError(
                "VAEStage needs a DataModule with a `normalizer` (Mean/Std) to recover joints for the validation "
                "metrics; use llamo.data.motion_windows.MotionWindowDataModule"
            )
        self.normalizer = normalizer

    def _step(self, batch: dict[str, Tensor], sample: bool) -> tuple[VAEOutput, dict[str, Tensor], Tensor]:
        motion, lengths = batch["motion"], batch["lengths"]
        mask = torch.arange(motion.shape[1], device=motion.device) < lengths[:, None]  # (B, T)
        out = self.core(motion, lengths, sample=sample)
        hp = self.hparams
        losses = self.core.loss(motion, out, mask, lambda_root=hp.lambda_root, kl_weight=hp.kl_weight)
        return out, losses, mask

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        _, losses, _ = self._step(batch, sample=True)
        self.check_finite(losses)
        batch_size = batch["motion"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "mse"}, batch_size=batch_size)
        self.log("train/mse", losses["mse"], prog_bar=True, batch_size=batch_size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out, losses, _ = self._step(batch, sample=self.hparams.val_sample)
        batch_size = batch["motion"].shape[0]
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=batch_size, sync_dist=True)
        assert self.normalizer is not None, "setup() sets the normalizer"
        lengths = batch["lengths"]
        gt = self.normalizer.denormalise(batch["motion"].double())  # (B, T, 272) raw features
        recon = self.normalizer.denormalise(out.recon.double())
        gt_joints, recon_joints = recover_joints(gt), recover_joints(recon)  # (B, T, 22, 3)
        self.val_mpjpe.update(recon_joints, gt_joints, lengths)
        self.val_sjpe.update(recon_joints, gt_joints, lengths)
        self.val_mpjre.update(recover_rotations(recon), recover_rotations(gt), lengths)
        self.log("val/mpjpe", self.val_mpjpe, prog_bar=True, batch_size=batch_size)
        self.log("val/mpjre", self.val_mpjre, batch_size=batch_size)
        self.log("val/sjpe", self.val_sjpe, batch_size=batch_size)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.core.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        factor = lr_factor("cosine", self.trainer.max_steps, hp.warmup_steps, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
