"""MotionStreamer's released Causal TAE (``net_last.pth``) as a VAE stage output of :class:`CausalMotionVAE`.

Facts: ``shared/reference/motionstreamer_interop.md`` §2. The TAE is layer for layer the project's VAE with
``VAEConfig(latent_dim=16, variance="predicted")`` (width 1024, depth 3, dilation growth 3, down_t 2: the
defaults), including the logvar clamp [-30, 20], so conversion is a pure rename of its 70 tensors; no module of
its own is needed. The checkpoint is ``{'net': state_dict}`` with keys ``tae.*`` (no ``module.`` prefix).

Key map (upstream -> :class:`CausalMotionVAE`; ``k`` = down stage 0..down_t-1, ``b`` = residual block, index 0 is
the largest dilation in both; ``D`` = down_t). Upstream nests each down/up stage in a ``Sequential`` and wraps
every causal conv as ``.conv``; the project flattens the stages and subclasses ``Conv1d``:

=================================================  ==========================================
``tae.decode_proj.*``                              ``from_latent.*``
``tae.encoder.proj.*``                             ``to_latent.*`` (mu = first half, logvar = second)
``tae.encoder.model.0.conv.*``                     ``encoder.0.*``
``tae.encoder.model.{2+k}.0.conv.*``               ``encoder.{2+2k}.*`` (stride-2 conv)
``tae.encoder.model.{2+k}.1.model.{b}.conv1.*``    ``encoder.{3+2k}.{b}.conv.*``
``tae.encoder.model.{2+k}.1.model.{b}.conv2.*``    ``encoder.{3+2k}.{b}.proj.*``
``tae.encoder.model.{2+D}.conv.*``                 ``encoder.{2+2D}.*``
``tae.decoder.model.0.conv.*``                     ``decoder.0.*``
``tae.decoder.model.{2+k}.0.model.{b}.conv1.*``    ``decoder.{2+3k}.{b}.conv.*``
``tae.decoder.model.{2+k}.0.model.{b}.conv2.*``    ``decoder.{2+3k}.{b}.proj.*``
``tae.decoder.model.{2+k}.2.conv.*``               ``decoder.{4+3k}.*`` (conv after the x2 upsample)
``tae.decoder.model.{2+D}.conv.*``                 ``decoder.{2+3D}.*``
``tae.decoder.model.{4+D}.conv.*``                 ``decoder.{4+3D}.*`` (output conv to 272)
=================================================  ==========================================

Shapes are the same on both sides (Conv1d ``(out, in, k)``, Linear ``(out, in)``), so the expected upstream shape
of a key is the shape of the project tensor it maps to.

Normalisation: the TAE works in HumanML3D-272 normalised feature space (``humanml3d_272/mean_std``). The VAE stage
itself writes no Mean/Std, but :func:`llamo.inference.run.load_run` looks for them in ``<run>/vae`` first, so the
converter copies the checked ``Mean.npy``/``Std.npy`` beside the weights. The latent cache and ``llamo eval vae``
normalise with the *corpus's* ``mean_std/``, so use the TAE with a corpus whose statistics are these (real
HumanML3D-272, or a corpus view whose ``mean_std/`` points at them, as ``make ablate-motionstreamer_tae`` builds).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llamo.core.vae import CausalMotionVAE, VAEConfig
from llamo.motion.normalization import Normalizer
from stageio import read_torch_checkpoint, save_stage_output

__all__ = ["TAE_CONFIG", "UPSTREAM_PREFIX", "convert_motionstreamer_tae", "map_tae_state_dict", "tae_key_map"]

#: the released Causal TAE (``net_last.pth``): 16-dim latents, predicted variance, width 1024, depth 3, 4x down
TAE_CONFIG = VAEConfig(latent_dim=16, variance="predicted")
#: ``Causal_HumanTAE`` keeps the network as attribute ``tae``
UPSTREAM_PREFIX = "tae."
#: what the released file is called, for messages
RELEASED_NAME = "MotionStreamer's Causal_TAE/net_last.pth"


def tae_key_map(config: VAEConfig = TAE_CONFIG) -> dict[str, str]:
    """Upstream TAE state-dict key -> :class:`CausalMotionVAE` key, for every tensor of ``config`` (pure).

    Derived from ``depth`` and ``down_t`` (module docstring table); the feature/latent widths do not change names.
    """
    if config.variance != "predicted":
        raise ValueError(
            f"the Causal TAE predicts mu and logvar (variance='predicted'), got variance={config.variance!r}"
        )
    down = config.down_t
    pairs: dict[str, str] = {"decode_proj": "from_latent", "encoder.proj": "to_latent"}

    def blocks(upstream: str, project: str) -> None:
        for b in range(config.depth):
            pairs[f"{upstream}.model.{b}.conv1"] = f"{project}.{b}.conv"
            pairs[f"{upstream}.model.{b}.conv2"] = f"{project}.{b}.proj"

    pairs["encoder.model.0.conv"] = "encoder.0"
    for k in range(down):
        pairs[f"encoder.model.{2 + k}.0.conv"] = f"encoder.{2 + 2 * k}"
        blocks(f"encoder.model.{2 + k}.1", f"encoder.{3 + 2 * k}")
    pairs[f"encoder.model.{2 + down}.conv"] = f"encoder.{2 + 2 * down}"
    pairs["decoder.model.0.conv"] = "decoder.0"
    for k in range(down):
        blocks(f"decoder.model.{2 + k}.0", f"decoder.{2 + 3 * k}")
        pairs[f"decoder.model.{2 + k}.2.conv"] = f"decoder.{4 + 3 * k}"
    pairs[f"decoder.model.{2 + down}.conv"] = f"decoder.{2 + 3 * down}"
    pairs[f"decoder.model.{4 + down}.conv"] = f"decoder.{4 + 3 * down}"
    return {
        f"{UPSTREAM_PREFIX}{up}.{param}": f"{ours}.{param}" for up, ours in pairs.items() for param in ("weight", "bias")
    }


def _project_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no random init
        return {k: tuple(v.shape) for k, v in CausalMotionVAE(config).state_dict().items()}


def map_tae_state_dict(
    state_dict: Mapping[str, Any], config: VAEConfig = TAE_CONFIG, source: str | Path = "<state_dict>"
) -> dict[str, Tensor]:
    """Rename an upstream TAE ``state_dict`` (keys ``tae.*``) to :class:`CausalMotionVAE` keys, checking it all.

    Every upstream key must be a tensor of a known name with the shape ``config`` implies, and every tensor of
    the VAE must be present; otherwise ONE ValueError naming ``source`` lists every missing, unexpected,
    mis-shaped and non-tensor entry. Works on meta tensors (names and shapes only).
    """
    key_map = tae_key_map(config)
    shapes = _project_shapes(config)
    # the map must cover the VAE exactly; a mismatch here is a bug in tae_key_map, not in the file
    assert set(key_map.values()) == set(shapes), sorted(set(key_map.values()) ^ set(shapes))
    mapped: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, value in state_dict.items():
        if key not in key_map:
            problems.append(f"unexpected key {key}")
        elif not isinstance(value, Tensor) or not value.is_floating_point():
            what = f"{value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            problems.append(f"{key}: a {what}, expected floating-point weights")
        elif tuple(value.shape) != shapes[key_map[key]]:
            problems.append(f"shape {key}: file {tuple(value.shape)} != expected {shapes[key_map[key]]}")
        else:
            mapped[key_map[key]] = value
    problems += [f"missing key {k}" for k in key_map if k not in state_dict]
    if problems:
        listing = "\n  ".join(problems)
        found = state_dict.get(f"{UPSTREAM_PREFIX}decode_proj.weight")
        looks = ""  # decode_proj is Linear(latent_dim -> width): it tells a different-size TAE at a glance
        if isinstance(found, Tensor) and found.ndim == 2 and tuple(found.shape) != (config.width, config.latent_dim):
            looks = f" (its decode_proj suggests width={found.shape[0]}, latent_dim={found.shape[1]})"
        raise ValueError(
            f"{source} is not a MotionStreamer Causal TAE of latent_dim={config.latent_dim}, width={config.width}, "
            f"depth={config.depth}, down_t={config.down_t}{looks}: {len(problems)} problem(s)\n  {listing}\n"
            f"Convert {RELEASED_NAME} (a dict {{'net': state_dict}} with keys 'tae.*')."
        )
    return mapped


def _upstream_state(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    """``checkpoint['net']``, or one ValueError saying what the file is instead."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("net"), Mapping):
        return checkpoint["net"]
    if isinstance(checkpoint, Mapping):
        top = sorted(map(str, checkpoint))[:10]
        known = ""
        if "state_dict" in checkpoint:
            known = " (a Lightning checkpoint, e.g. a llamo stage checkpoint or Evaluator_272/epoch=99.ckpt)"
        elif "trans" in checkpoint:
            known = " (MotionStreamer's text-to-motion transformer, not the TAE)"
        raise ValueError(
            f"{path} has no 'net' state dict at its top level (it holds {top}){known}; pass {RELEASED_NAME}"
        )
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a dict {{'net': ...}}; pass {RELEASED_NAME}")


def convert_motionstreamer_tae(
    ckpt_path: str | Path,
    out_dir: str | Path,
    mean_std_dir: str | Path,
    *,
    config: VAEConfig = TAE_CONFIG,
    allow_pickle: bool = False,
) -> Path:
    """Convert the released Causal TAE checkpoint once into a VAE stage output that :func:`load_vae` reads.

    Args:
        ckpt_path: ``{'net': state_dict}`` saved by MotionStreamer (``Causal_TAE/net_last.pth``).
        out_dir: Folder to write ``handoff.safetensors`` + ``config.json`` (kind ``CausalMotionVAE``, stage
            ``vae``) and ``Mean.npy``/``Std.npy``.
        mean_std_dir: Folder with the HumanML3D-272 ``Mean.npy``/``Std.npy`` the TAE was trained with
            (``humanml3d_272/mean_std``); checked (272 finite values, std > 0) and copied beside the weights.
        config: Architecture of the checkpoint; the default is the released TAE.
        allow_pickle: Read a checkpoint that needs a full unpickle (trusted files only; the released one does not).

    Returns:
        ``out_dir``.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; download {RELEASED_NAME} first")
    mean_std_dir = Path(mean_std_dir)
    normalizer = Normalizer.load(mean_std_dir)  # validated before the slow read; raises naming the file
    if config.feature_dim != normalizer.dim:
        raise ValueError(f"{mean_std_dir}: Mean/Std have {normalizer.dim} dims, the TAE has {config.feature_dim}")
    checkpoint = read_torch_checkpoint(path, allow_pickle, trusted=RELEASED_NAME)
    mapped = map_tae_state_dict(_upstream_state(checkpoint, path), config, path)
    vae = CausalMotionVAE(config)
    vae.load_state_dict(mapped, strict=True)
    out = save_stage_output(
        out_dir,
        vae,
        config.to_dict(),
        kind=CausalMotionVAE.__name__,
        stage="vae",
        extra={"source": path.name, "converted_from": "MotionStreamer Causal TAE", "mean_std": str(mean_std_dir)},
    )
    # copied byte for byte under the canonical names (MotionMillion's lower-case names are read too)
    for names, dst in ((("Mean.npy", "mean.npy"), "Mean.npy"), (("Std.npy", "std.npy"), "Std.npy")):
        src = next(mean_std_dir / n for n in names if (mean_std_dir / n).is_file())
        shutil.copyfile(src, out / dst)
    return out
