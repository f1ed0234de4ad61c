"""``llamo convert motionstreamer-tae``: released MotionStreamer weights as llamo stage outputs."""

from __future__ import annotations

from pathlib import Path

from llamo.data.latents import load_vae
from llamo.data.motionstreamer_tae import convert_motionstreamer_tae

__all__ = ["motionstreamer_tae"]


def motionstreamer_tae(ckpt: Path, /, *, out: Path, mean_std: Path, allow_pickle: bool = False) -> int:
    """Convert MotionStreamer's released Causal TAE (net_last.pth) once into a VAE stage output folder.

    The 70 tensors of ``{'net': state_dict}`` (keys ``tae.*``) are renamed onto CausalMotionVAE with latent_dim 16,
    predicted variance, width 1024, depth 3 (every key and shape checked); the folder then works wherever a VAE
    stage output does (``--data.init_args.vae_dir``, ``llamo eval vae --ckpt``, a run's ``vae/``). Prints the
    folder, the architecture and the parameter count.

    Args:
        ckpt: The released checkpoint (MotionStreamer's Causal_TAE/net_last.pth).
        out: Folder to write: handoff.safetensors + config.json (kind CausalMotionVAE) + Mean.npy/Std.npy.
        mean_std: Folder with the HumanML3D-272 Mean.npy/Std.npy the TAE was trained with
            (MotionStreamer's humanml3d_272/mean_std); checked and copied beside the weights.
        allow_pickle: Read a checkpoint that needs a full unpickle (only for a file you trust; the released
            net_last.pth does not need it).
    """
    folder = convert_motionstreamer_tae(ckpt, out, mean_std, allow_pickle=allow_pickle)
    vae = load_vae(folder)  # the strict load every consumer does: the folder is usable before we say so
    cfg = vae.config
    parameters = sum(p.numel() for p in vae.parameters())
    print(
        f"wrote {folder} (CausalMotionVAE: latent_dim {cfg.latent_dim}, variance {cfg.variance}, width {cfg.width}, "
        f"depth {cfg.depth}, {cfg.downsample}x down; {len(vae.state_dict())} tensors, {parameters:,} parameters; "
        f"Mean.npy/Std.npy from {mean_std})"
    )
    print(
        f"use it as a VAE stage output: --data.init_args.vae_dir {folder} with model.init_args.core.latent_dim "
        f"{cfg.latent_dim}, `llamo eval vae --ckpt {folder}`, or `make ablate-motionstreamer_tae MS_TAE={folder}`"
    )
    return 0
