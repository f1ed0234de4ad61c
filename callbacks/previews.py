"""``ReconstructionPreviews``: a few validation clips, ground truth above reconstruction, as TensorBoard images.

Rendered on rank 0 after each validation epoch (every ``every_n_epochs``) with :func:`filmstrip`, the png filmstrip
of :func:`llamo.motion.render.render_motion` as an image array (the LLaMo stages'
:class:`~callbacks.llamo_previews.GenerationPreviews` draw with it too). The clips are the first ``num_clips`` of the
first validation batch, so the same clips are shown every epoch (the VAE DataModule does not shuffle validation).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread

from llamo.motion.normalization import Normalizer
from llamo.motion.render import render_motion

log = logging.getLogger(__name__)


class ReconstructionPreviews(L.Callback):
    """Log ``num_clips`` ground-truth vs reconstruction filmstrips per validation epoch.

    Needs a stage module with ``core`` (a :class:`~llamo.core.vae.CausalMotionVAE`) and ``normalizer``, and
    validation batches ``{"motion": (B, T, 272) normalised, "lengths": (B,)}``.

    Args:
        num_clips: Clips shown (from the start of the first validation batch).
        every_n_epochs: Render on every n-th validation epoch (rendering costs ~1 s per clip on a CPU).
        panels: Frames per filmstrip.
        max_frames: Only the first ``max_frames`` frames of each clip are drawn.
    """

    def __init__(self, num_clips: int = 2, every_n_epochs: int = 1, panels: int = 6, max_frames: int = 120) -> None:
        super().__init__()
        if num_clips < 1 or every_n_epochs < 1 or panels < 1 or max_frames < 1:
            raise ValueError(
                "ReconstructionPreviews: num_clips, every_n_epochs, panels and max_frames must be >= 1, got "
                f"{num_clips}, {every_n_epochs}, {panels}, {max_frames}"
            )
        self.num_clips = num_clips
        self.every_n_epochs = every_n_epochs
        self.panels = panels
        self.max_frames = max_frames
        self._batch: dict[str, torch.Tensor] | None = None
        self._warned = False

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._active(trainer):
            self._batch = {k: v[: self.num_clips].detach() for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            if not self._warned:
                log.warning("ReconstructionPreviews: no TensorBoardLogger configured, previews are not logged")
                self._warned = True
            return
        for b, image in enumerate(self.render(pl_module, batch)):
            logger.experiment.add_image(f"val_previews/clip{b}", image, trainer.global_step, dataformats="HWC")

    @torch.no_grad()
    def render(self, pl_module: L.LightningModule, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """(H, W, 3) uint8 images: ground truth filmstrip stacked above the reconstruction's."""
        motion, lengths = batch["motion"], batch["lengths"]
        recon = pl_module.core(motion, lengths, sample=False).recon
        images = []
        for b in range(motion.shape[0]):
            frames = min(int(lengths[b]), self.max_frames)
            strips = [
                filmstrip(clip.float().cpu(), caption=name, normalizer=pl_module.normalizer, panels=self.panels)
                for name, clip in (("ground truth", motion[b, :frames]), ("reconstruction", recon[b, :frames]))
            ]
            width = max(s.shape[1] for s in strips)
            strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
            images.append(np.concatenate(strips, axis=0))
        return images


def filmstrip(
    features: np.ndarray | torch.Tensor, *, caption: str | None, normalizer: Normalizer | None = None, panels: int = 6
) -> np.ndarray:
    """One clip as an (H, W, 3) uint8 image for ``add_image(..., dataformats="HWC")``: the png filmstrip of
    :func:`~llamo.motion.render.render_motion` (``panels`` evenly spaced frames, ``caption`` as its title), read back.

    ``features`` are (T, 272), un-normalised unless ``normalizer`` is given (then they are de-normalised first).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "filmstrip.png"
        render_motion(features, path, caption=caption, normalizer=normalizer, panels=panels, progress=False)
        return _rgb_uint8(imread(path))


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    """matplotlib's png read (float RGBA in [0, 1]) -> uint8 RGB."""
    rgb = image[..., :3]
    if rgb.dtype != np.uint8:
        rgb = (rgb * 255).round().astype(np.uint8)
    return rgb
