"""Loading a trained run folder for inference: `load_run` -> `LLaMoRun`.

A run folder ``runs/<exp>/`` holds the stage outputs of the pipeline (``vae/``, ``evaluator/``, ``stage1/`` ..
``stage3/``); `load_run` assembles the newest LLaMo stage (or a chosen one), the run's VAE and the corpus Mean/Std
into an object with ``.stream(prompts)``, ``.generate(prompts)``, ``.caption(features)`` and ``.chat(messages)``.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamo.core.format import SequenceFormatter
from llamo.core.llm import describe_llm_source
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.core.vae import CausalMotionVAE
from llamo.data.latents import load_vae
from llamo.inference.prompts import model_formatter
from llamo.inference.t2m import GeneratedMotion, MotionChunk, generate_motion, stream_motion
from llamo.inference.text import caption, chat
from llamo.motion.normalization import Normalizer
from stageio import WEIGHTS_FILE, load_stage_output, load_stage_weights, record_excluded_fingerprints

__all__ = ["LLAMO_STAGES", "MEAN_STD_STAGES", "LLaMoRun", "find_llamo_stage", "load_run", "record_base_fingerprint"]

#: LLaMo stage folders of a run, newest first (`load_run` picks the first that exists)
LLAMO_STAGES = ("stage3", "stage2", "stage1")
#: stage folders of a run searched (in order) for the corpus ``Mean.npy``/``Std.npy`` when none is given
MEAN_STD_STAGES = ("vae", "evaluator")


@dataclass
class LLaMoRun:
    """A trained run ready for inference; the methods forward to the module-level functions."""

    model: LLaMo
    """The LLaMo of the loaded stage (eval mode)."""
    vae: CausalMotionVAE | None
    """The run's VAE (None when loaded with ``motion=False``)."""
    normalizer: Normalizer | None
    """The corpus Mean/Std (None when loaded with ``motion=False``)."""
    formatter: SequenceFormatter
    """Tokenizer + chat template + [BOM]/[EOM] ids of the model."""
    stage_dir: Path
    """The stage folder the LLaMo weights came from."""
    mean_std_dir: Path | None
    """The folder Mean.npy/Std.npy were read from."""

    def _motion_parts(self) -> tuple[CausalMotionVAE, Normalizer]:
        if self.vae is None or self.normalizer is None:
            raise ValueError("this run was loaded with motion=False (no VAE, no Mean/Std); load_run(..., motion=True)")
        return self.vae, self.normalizer

    def stream(self, prompts: str | Sequence[str], **kwargs: Any) -> Generator[MotionChunk, None, list[str]]:
        """`stream_motion` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return stream_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def generate(self, prompts: str | Sequence[str], **kwargs: Any) -> list[GeneratedMotion]:
        """`generate_motion` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return generate_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def caption(self, motion: Tensor | np.ndarray, **kwargs: Any) -> str:
        """`caption` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return caption(self.model, vae, motion, formatter=self.formatter, normalizer=normalizer, **kwargs)

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> str:
        """`chat` with this run's model."""
        return chat(self.model, messages, formatter=self.formatter, **kwargs)


def _stage_name(stage: str) -> str:
    name = f"stage{stage}" if str(stage).isdigit() else str(stage)
    if name not in LLAMO_STAGES:
        raise ValueError(f"stage must be one of {list(LLAMO_STAGES)} (or 1/2/3), got {stage!r}")
    return name


def find_llamo_stage(run: str | Path, stage: str | None = None) -> Path | None:
    """The LLaMo stage folder of ``run`` that holds a finished handoff: ``stage`` (``stage1|stage2|stage3`` or
    ``1|2|3``), or by default the newest of stage3, stage2, stage1; None when there is none."""
    names = LLAMO_STAGES if stage is None else (_stage_name(stage),)
    return next((Path(run) / s for s in names if (Path(run) / s / WEIGHTS_FILE).is_file()), None)


def _resolve_stage(run: Path, stage: str | None) -> Path:
    if stage is None:
        found = find_llamo_stage(run)
        if found is None:
            raise FileNotFoundError(
                f"run {run} has no finished LLaMo stage ({', '.join(f'{s}/{WEIGHTS_FILE}' for s in LLAMO_STAGES)}); "
                "train one (`make stage-1 EXP=...`) or pass the run folder that holds it"
            )
        return found
    name = _stage_name(stage)
    if not (run / name).is_dir():
        raise FileNotFoundError(f"run {run} has no {name}/ folder; available: {sorted(p.name for p in run.iterdir())}")
    return run / name


def _resolve_mean_std(run: Path, mean_std: str | Path | None) -> Path:
    if mean_std is not None:
        return Path(mean_std)
    tried = [run / name for name in MEAN_STD_STAGES]
    for folder in tried:
        if (folder / "Mean.npy").is_file() and (folder / "Std.npy").is_file():
            return folder
    raise FileNotFoundError(
        "no corpus Mean.npy/Std.npy found in " + ", ".join(str(t) for t in tried) + "; pass the corpus statistics "
        "folder explicitly (mean_std= / --mean-std DATA/mean_std, the folder the VAE was trained with)"
    )


def load_run(
    run_dir: str | Path,
    stage: str | None = None,
    *,
    mean_std: str | Path | None = None,
    device: str | torch.device | None = None,
    motion: bool = True,
    formatter: SequenceFormatter | None = None,
) -> LLaMoRun:
    """Load a trained run folder ``runs/<exp>/`` for inference.

    - LLaMo: ``stage`` (``stage1|stage2|stage3`` or ``1|2|3``), default the newest of stage3, stage2, stage1 that
      holds a ``handoff.safetensors``. The frozen base LLM (left out of the handoff) is rebuilt from the saved
      config's ``llm`` entry (its ``path``, or the seeded random ``config``), then the handoff is loaded strictly:
      the rebuilt base must have the fingerprint the handoff recorded (ValueError naming both otherwise; a handoff
      written before fingerprints existed loads with a warning, see `record_base_fingerprint`).
    - VAE: ``<run>/vae``.
    - Mean/Std (the corpus statistics that normalised the VAE's training data): ``mean_std`` when given (a folder
      with ``Mean.npy``/``Std.npy``, e.g. ``data/synth/mean_std``), else the first of ``<run>/vae`` and
      ``<run>/evaluator`` (the evaluator stage writes them there) that has both files; FileNotFoundError otherwise.
      The folder used is recorded in ``LLaMoRun.mean_std_dir``.
    - ``motion=False`` skips the VAE and Mean/Std (text chat only). ``formatter`` overrides `model_formatter`.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass runs/<exp> written by the training pipeline")
    stage_dir = _resolve_stage(run, stage)
    out = load_stage_output(stage_dir)
    if out.kind != LLaMo.__name__:
        raise ValueError(f"{stage_dir} holds a {out.kind!r} stage output, not a LLaMo; pass a LLaMo stage folder")
    config = LLaMoConfig.from_dict(out.config)
    model = LLaMo(config, device=device)
    load_stage_weights(model, out, expected_kind=LLaMo.__name__, rebuilt_from=describe_llm_source(config.llm))
    model.eval().requires_grad_(False)
    vae = normalizer = mean_std_dir = None
    if motion:
        if not (run / "vae").is_dir():
            raise FileNotFoundError(
                f"run {run} has no vae/ folder (the VAE stage output); train it with `make stage-vae`"
            )
        vae = load_vae(run / "vae").to(device or "cpu")
        mean_std_dir = _resolve_mean_std(run, mean_std)
        normalizer = Normalizer.load(mean_std_dir)
    return LLaMoRun(
        model=model,
        vae=vae,
        normalizer=normalizer,
        formatter=model_formatter(model) if formatter is None else formatter,
        stage_dir=stage_dir,
        mean_std_dir=mean_std_dir,
    )


def record_base_fingerprint(stage_dir: str | Path) -> dict[str, str]:
    """Record the base LLM's fingerprint in a LLaMo stage folder written before handoffs recorded it.

    Rebuilds the base from the folder's saved ``llm`` config (``llm.path`` or the seeded random config) and writes
    `stageio.excluded_fingerprints` of it into ``config.json`` (`stageio.record_excluded_fingerprints`). Run it
    only when that base is the one the stage was trained with: later loads then refuse any other. A folder that
    already records a fingerprint is left as it is (ValueError when the rebuilt base differs from it).
    """
    folder = Path(stage_dir)
    out = load_stage_output(folder)
    if out.kind != LLaMo.__name__:
        raise ValueError(f"{folder} holds a {out.kind!r} stage output, not a LLaMo; pass a LLaMo stage folder")
    model = LLaMo(LLaMoConfig.from_dict(out.config))
    return record_excluded_fingerprints(folder, model)
