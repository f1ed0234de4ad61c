"""Motion latents for the LLaMo stages: each clip encoded once by the frozen VAE, cached on disk.

The cache key is a fingerprint of the VAE stage output (its weights and config bytes), the data folder, the
split and the cropping settings, so a new VAE checkpoint or a different corpus never reuses stale latents.
Latents are the encoder means ``mu`` (deterministic); the stages add their own teacher-forcing noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llamo.progress import progress as progress_bar
from stageio import CONFIG_FILE, WEIGHTS_FILE, load_stage_output, load_stage_weights, read_stage_config
from llamo.core.vae import CausalMotionVAE, VAEConfig
from llamo.data.humanml272 import MotionCorpus
from llamo.motion.filters import check_expressive
from llamo.motion.representation import recover_joints

CACHE_VERSION = 1


def load_vae(stage_dir: str | Path) -> CausalMotionVAE:
    """Build the VAE a stage output describes and load its weights strictly (eval mode, no grad)."""
    out = load_stage_output(stage_dir)
    if out.kind != CausalMotionVAE.__name__:
        raise ValueError(f"{stage_dir} holds a {out.kind!r} stage output, not a CausalMotionVAE; pass the VAE run")
    vae = CausalMotionVAE(VAEConfig(**out.config))
    load_stage_weights(vae, out, expected_kind=CausalMotionVAE.__name__)
    return vae.eval().requires_grad_(False)


def check_vae_latent_dim(vae_dir: str | Path, latent_dim: int) -> None:
    """Raise a ValueError naming both widths and the YAML keys when the VAE at ``vae_dir`` does not make
    ``latent_dim``-wide latents (the LLaMo model's ``core.latent_dim``). Reads only ``config.json``."""
    meta = read_stage_config(vae_dir)
    if meta["kind"] != CausalMotionVAE.__name__:
        raise ValueError(f"{vae_dir} holds a {meta['kind']!r} stage output, not a CausalMotionVAE; pass the VAE run")
    vae_width = meta["config"].get("latent_dim")
    if vae_width != latent_dim:
        raise ValueError(
            f"latent width mismatch: the VAE at data.init_args.vae_dir={str(vae_dir)!r} makes latent_dim={vae_width} "
            f"latents, but the LLaMo model has latent_dim={latent_dim} (model.init_args.core.latent_dim). Set "
            f"`model: init_args: core: latent_dim: {vae_width}` in the stage YAMLs (as experiments/ablations/"
            f"latent16 and motionstreamer_tae do), or point data.init_args.vae_dir at a VAE with latent_dim="
            f"{latent_dim}"
        )


def vae_fingerprint(stage_dir: str | Path) -> str:
    """Hash of the VAE stage output's files (weights + config), hex, 16 chars."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = Path(stage_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; train the VAE first (`make stage-vae`)")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@dataclass
class LatentSet:
    """Encoded clips of one split: ``latents[i]`` is (N_i, latent_dim) for clip ``ids[i]``."""

    ids: list[str]
    latents: list[torch.Tensor]
    captions: list[list[str]]
    expressive: list[bool]
    latent_dim: int

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: list[bool]) -> LatentSet:
        idx = [i for i, k in enumerate(keep) if k]
        return LatentSet(
            [self.ids[i] for i in idx],
            [self.latents[i] for i in idx],
            [self.captions[i] for i in idx],
            [self.expressive[i] for i in idx],
            self.latent_dim,
        )


def build_latents(
    vae_dir: str | Path,
    data_root: str | Path,
    split: str,
    cache_dir: str | Path | None = None,
    max_frames: int = 300,
    min_frames: int = 40,
    batch_size: int = 32,
    expressive_threshold: float = 0.05,
    progress: bool = True,
) -> LatentSet:
    """Encode (or load from the cache) every clip of ``split``: the first ``max_frames`` frames, cropped to a
    multiple of the VAE's 4x downsampling. ``expressive`` flags use the paper's end-effector speed filter."""
    key_src = json.dumps(
        {
            "vae": vae_fingerprint(vae_dir),
            "data": str(Path(data_root).resolve()),
            "split": split,
            "max": max_frames,
            "min": min_frames,
            "thr": expressive_threshold,
            "v": CACHE_VERSION,
        }
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else Path(vae_dir) / "latent_cache"
    tensors_path, meta_path = cache / f"{split}-{key}.safetensors", cache / f"{split}-{key}.json"
    if tensors_path.is_file() and meta_path.is_file():
        return _read_cache(tensors_path, meta_path)

    vae = load_vae(vae_dir)
    corpus = MotionCorpus(data_root, split=split, min_length=min_frames)
    down = 4
    ids, latents, captions, expressive = [], [], [], []
    records = [corpus[i] for i in range(len(corpus))]
    order = sorted(range(len(records)), key=lambda i: len(records[i].features))  # similar lengths batch together
    encoded: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for start in progress_bar(
            range(0, len(order), batch_size), desc=f"encode {split} latents", disable=not progress
        ):
            chunk = order[start : start + batch_size]
            feats = [records[i].features[: min(max_frames, len(records[i].features)) // down * down] for i in chunk]
            lengths = torch.tensor([len(f) for f in feats])
            x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[-1])
            for b, f in enumerate(feats):
                x[b, : len(f)] = torch.as_tensor(corpus.normalizer.normalise(f), dtype=torch.float32)
            mu = vae.encode(x, lengths).mu  # (B, N_max, D)
            for b, i in enumerate(chunk):
                encoded[i] = mu[b, : int(lengths[b]) // down].clone()
    for i, rec in enumerate(records):
        ids.append(rec.id)
        latents.append(encoded[i])
        captions.append(list(rec.captions))
        joints = recover_joints(torch.as_tensor(rec.features[:max_frames], dtype=torch.float64))
        expressive.append(bool(check_expressive(joints.numpy(), threshold=expressive_threshold).expressive))
    result = LatentSet(ids, latents, captions, expressive, latent_dim=int(encoded[0].shape[-1]) if encoded else 0)
    _write_cache(result, tensors_path, meta_path)
    return result


def _write_cache(s: LatentSet, tensors_path: Path, meta_path: Path) -> None:
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    lengths = [len(z) for z in s.latents]
    flat = torch.cat(s.latents) if s.latents else torch.zeros(0, s.latent_dim)
    save_file({"latents": flat.contiguous(), "lengths": torch.tensor(lengths, dtype=torch.int64)}, str(tensors_path))
    meta_path.write_text(
        json.dumps({"ids": s.ids, "captions": s.captions, "expressive": s.expressive, "latent_dim": s.latent_dim})
    )


def _read_cache(tensors_path: Path, meta_path: Path) -> LatentSet:
    t = load_file(str(tensors_path))
    meta = json.loads(meta_path.read_text())
    latents = list(torch.split(t["latents"], t["lengths"].tolist()))
    assert len(latents) == len(meta["ids"])
    return LatentSet(
        meta["ids"], latents, meta["captions"], [bool(e) for e in meta["expressive"]], int(meta["latent_dim"])
    )


def expressive_fraction(s: LatentSet) -> float:
    """Share of clips that pass the expressiveness filter."""
    return float(np.mean(s.expressive)) if len(s) else 0.0
