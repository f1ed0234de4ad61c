"""Reconstruction quality of a trained VAE as a Table-2 row (paper §4.1); ``llamo eval vae`` runs it.

Protocol (MotionStreamer's TAE test, ``eval_causal_TAE.py``): the clips of the split with ``--min-frames`` <= T <=
``--max-frames`` (60 <= T < 300), cropped to a multiple of 4 (the first frames), normalised, passed through the full
VAE (encode, **sampled** z, decode; ``--use-mean`` decodes mu instead), de-normalised; joints and rotations are
recovered from the features. MPJPE is root-aligned and frame-weighted (mm), MPJRE the geodesic angle of local
rotations (degrees), sJPE DisCoRD's per-clip sum over feet and wrists divided by frames (range [0, 4]), averaged
over clips; Comp. = latent numbers / input numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamo.core.vae import CausalMotionVAE
from llamo.data.humanml272 import MotionCorpus
from llamo.data.motion_windows import WholeClips, collate_padded
from llamo.motion.representation import recover_joints, recover_rotations
from llamo.progress import progress as progress_bar
from metrics.reconstruction import MPJPE, MPJRE, SJPE, compression_ratio


@dataclass
class VAEEvalResult:
    """One Table-2 row."""

    name: str
    mpjpe: float
    """mm, root-aligned, frame-weighted."""
    mpjre: float
    """degrees."""
    sjpe: float
    """DisCoRD sum over the 4 end effectors / frames, mean over clips."""
    t_down: int
    comp: float
    """latent numbers / input numbers (fraction, printed as a percentage)."""
    clips: int
    frames: int

    def table(self) -> str:
        """Markdown header + row in Table 2's column order."""
        header = "| model | MPJPE ↓ | MPJRE ↓ | sJPE ↓ | T.Down | Comp. ↓ |\n| --- | --- | --- | --- | --- | --- |"
        row = (
            f"| {self.name} | {self.mpjpe:.2f} | {self.mpjre:.2f} | {self.sjpe:.3f} | {self.t_down} | "
            f"×{100 * self.comp:.2f}% |"
        )
        return f"{header}\n{row}"


@torch.no_grad()
def evaluate_vae(
    vae: CausalMotionVAE,
    corpus: MotionCorpus,
    min_frames: int = 60,
    max_frames: int = 299,
    batch_size: int = 32,
    use_mean: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    name: str | None = None,
    progress: bool = True,
) -> VAEEvalResult:
    """Reconstruct the clips of ``corpus`` with ``min_frames <= T`` (cropped to ``max_frames``) and measure them.

    See the module docstring for the protocol; the CLI also leaves out clips longer than ``max_frames``.
    """
    cfg = vae.config
    vae = vae.to(device).eval()
    dataset = WholeClips(corpus, max_frames=max_frames, multiple=cfg.downsample, min_frames=min_frames)
    if len(dataset) == 0:
        raise ValueError(f"no clip of {corpus!r} has at least {min_frames} frames; lower --min-frames")
    # sorted by length so padded batches waste little; the metrics are order-independent
    clips = sorted((dataset[i] for i in range(len(dataset))), key=len)
    generator = torch.Generator(device=device).manual_seed(seed)
    metrics = {"mpjpe": MPJPE(), "mpjre": MPJRE(), "sjpe": SJPE()}
    frames = 0
    for start in progress_bar(range(0, len(clips), batch_size), desc="eval vae", unit="batch", disable=not progress):
        batch = collate_padded(clips[start : start + batch_size])
        motion, lengths = batch["motion"].to(device), batch["lengths"].to(device)
        recon = vae(motion, lengths, sample=not use_mean, generator=generator).recon
        gt = corpus.normalizer.denormalise(motion.double())  # (B, T, 272) raw features
        pred = corpus.normalizer.denormalise(recon.double())
        gt_joints, pred_joints = recover_joints(gt), recover_joints(pred)  # (B, T, 22, 3)
        metrics["mpjpe"].update(pred_joints, gt_joints, lengths)
        metrics["sjpe"].update(pred_joints, gt_joints, lengths)
        metrics["mpjre"].update(recover_rotations(pred), recover_rotations(gt), lengths)
        frames += int(lengths.sum())
    values = {k: float(m.compute()) for k, m in metrics.items()}
    return VAEEvalResult(
        name=name or f"CausalVAE-z{cfg.latent_dim} ({cfg.variance})",
        t_down=cfg.downsample,
        comp=compression_ratio(cfg.latent_dim, cfg.downsample, cfg.feature_dim),
        clips=len(clips),
        frames=frames,
        **values,
    )
