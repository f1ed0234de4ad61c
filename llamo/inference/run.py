"""Loading a trained run folder for inference: `load_run` -> `LLaMoRun`.

A run folder ``runs/<exp>/`` holds the stage outputs of the pipeline (``vae/``, ``evaluator/``, ``stage1/`` ..
``stage3/``); `load_run` assembles the newest LLaMo stage (or a chosen one), the run's VAE and the corpus Mean/Std
into an object with ``.stream(prompts)``, ``.generate(prompts)``, ``.caption(features)`` and ``.chat(messages)``.

Long clips: a LLaMo stage trains on motion spans of at most ``max_latents`` tokens of a clip's first ``max_frames``
frames (`llamo.data.llamo_data.LLaMoDataModule`, 75 tokens = 300 frames by default). A longer span in the prompt
is out of distribution, and its "caption" is typically the base model's generic chat text, not about motion. So
`LLaMoRun.caption` captions a longer clip in windows of at most that length and says so (`MotionLimit`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from llamo.core.format import SequenceFormatter
from llamo.core.llm import describe_llm_source
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.core.vae import CausalMotionVAE
from llamo.data.latents import load_vae
from llamo.inference.guidance import GenerationSetting, config_default_setting, resolve_generation
from llamo.inference.prompts import model_formatter
from llamo.inference.t2m import GeneratedMotion, MotionChunk, generate_motion, stream_motion
from llamo.inference.text import WindowCaption, caption_windows, chat
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM
from stageio import CONFIG_FILE, WEIGHTS_FILE, load_stage_output, load_stage_weights, record_excluded_fingerprints

__all__ = [
    "LLAMO_STAGES",
    "MEAN_STD_STAGES",
    "LLaMoRun",
    "LongMotionWarning",
    "MotionLimit",
    "find_llamo_stage",
    "load_run",
    "record_base_fingerprint",
    "training_motion_limit",
]

#: LLaMo stage folders of a run, newest first (`load_run` picks the first that exists)
LLAMO_STAGES = ("stage3", "stage2", "stage1")
#: stage folders of a run searched (in order) for the corpus ``Mean.npy``/``Std.npy`` when none is given
MEAN_STD_STAGES = ("vae", "evaluator")


#: the LightningCLI config a stage's `llamo fit` saved beside its handoff (``runs/<exp>/<stage>/config.yaml``)
RUN_CONFIG_FILE = "config.yaml"


class LongMotionWarning(UserWarning):
    """A clip was captioned in windows (longer than the run's training motion), or the run records no limit."""


@dataclass(frozen=True)
class MotionLimit:
    """The longest motion span a LLaMo stage was trained on, and where that was read."""

    latents: int
    """Latent tokens: ``min(data.max_latents, data.max_frames // frames_per_latent)``."""
    frames_per_latent: int
    """The VAE's temporal downsampling (4)."""
    source: str
    """The file and entries it was read from."""

    @property
    def frames(self) -> int:
        """The limit in frames."""
        return self.latents * self.frames_per_latent

    def describe(self) -> str:
        """``300 frames (75 latents; from <source>)``."""
        return f"{self.frames} frames ({self.latents} latents; from {self.source})"


def training_motion_limit(stage_dir: str | Path, frames_per_latent: int) -> MotionLimit | None:
    """The training motion length of a LLaMo stage folder, or None when it records none.

    Read from ``training_motion`` in the stage's ``config.json`` (written at the end of fit since this entry
    exists), else derived from ``data.init_args.max_latents``/``max_frames`` of the ``config.yaml`` that
    ``llamo fit`` saved in the same folder (runs trained before). The limit is ``min(max_latents, max_frames //
    frames_per_latent)`` tokens: the latent cache holds the first ``max_frames`` frames, the dataset crops to
    ``max_latents`` tokens.
    """
    folder = Path(stage_dir)
    found: tuple[Any, Any, str] | None = None
    meta_path = folder / CONFIG_FILE
    if meta_path.is_file():
        record = json.loads(meta_path.read_text()).get("training_motion")
        if isinstance(record, Mapping):
            found = (record.get("max_latents"), record.get("max_frames"), f"{meta_path} training_motion")
    run_config = folder / RUN_CONFIG_FILE
    if found is None and run_config.is_file():
        data = (yaml.safe_load(run_config.read_text()) or {}).get("data") or {}
        args = data.get("init_args") or {}
        if "max_latents" in args and "max_frames" in args:
            found = (args["max_latents"], args["max_frames"], f"{run_config} data.init_args")
    if found is None:
        return None
    max_latents, max_frames, where = found
    if not isinstance(max_latents, int) or not isinstance(max_frames, int) or min(max_latents, max_frames) < 1:
        raise ValueError(
            f"{where}: max_latents={max_latents!r} and max_frames={max_frames!r} must be positive integers; "
            "re-run the stage or fix the file"
        )
    latents = min(max_latents, max_frames // frames_per_latent)
    return MotionLimit(latents, frames_per_latent, f"{where}: max_latents={max_latents}, max_frames={max_frames}")


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
    motion_limit: MotionLimit | None = None
    """The longest motion the stage was trained on (`training_motion_limit`); None when the run records none."""
    generation: GenerationSetting | None = None
    """Default steps / guidance scale / unconditional source / noise temperature of `stream` and `generate`, and why
    (`llamo.inference.guidance.resolve_generation`: the run's ``generation.json`` or the model config); None:
    `stream_motion`'s own defaults."""

    def _motion_parts(self) -> tuple[CausalMotionVAE, Normalizer]:
        if self.vae is None or self.normalizer is None:
            raise ValueError("this run was loaded with motion=False (no VAE, no Mean/Std); load_run(..., motion=True)")
        return self.vae, self.normalizer

    def _with_setting(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if self.generation is None else self.generation.fill(kwargs)

    def with_generation(
        self,
        steps: int | None = None,
        guidance_scale: float | None = None,
        cfg: str | None = None,
        temperature: float | None = None,
        flags: str = "",
    ) -> LLaMoRun:
        """A copy of this run whose default generation setting has the given values (None keeps one); ``flags``
        names where they came from in `GenerationSetting.source` (e.g. ``--steps/--guidance_scale``)."""
        base = self.generation if self.generation is not None else config_default_setting(self.model)
        return replace(self, generation=base.override(steps, guidance_scale, cfg, temperature, flags=flags))

    def stream(self, prompts: str | Sequence[str], **kwargs: Any) -> Generator[MotionChunk, None, list[str]]:
        """`stream_motion` with this run's parts; ``steps``/``guidance_scale``/``cfg``/``temperature`` left unset (or
        None) take the run's `generation` setting."""
        vae, normalizer = self._motion_parts()
        kwargs = self._with_setting(kwargs)
        return stream_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def generate(self, prompts: str | Sequence[str], **kwargs: Any) -> list[GeneratedMotion]:
        """`generate_motion` with this run's parts; ``steps``/``guidance_scale``/``cfg``/``temperature`` left unset (or
        None) take the run's `generation` setting."""
        vae, normalizer = self._motion_parts()
        kwargs = self._with_setting(kwargs)
        return generate_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def window_plan(self, window_frames: int | None = None) -> tuple[int | None, str]:
        """Window length in latents for captioning (None: the whole clip) and a sentence saying where it comes
        from: ``window_frames`` when given (a positive multiple of the VAE's downsampling), else the training
        limit `motion_limit`, else None (the run records no limit)."""
        vae, _ = self._motion_parts()
        per = vae.config.downsample
        if window_frames is not None:
            if not isinstance(window_frames, int) or window_frames < per or window_frames % per:
                raise ValueError(
                    f"window_frames (--window_frames) must be a positive multiple of {per} frames (one latent), got "
                    f"{window_frames!r}"
                    + (f"; this run was trained on at most {self.motion_limit.describe()}" if self.motion_limit else "")
                )
            trained = f"; trained on {self.motion_limit.describe()}" if self.motion_limit else ""
            return window_frames // per, f"windows of at most {window_frames} frames (window_frames{trained})"
        if self.motion_limit is None:
            return None, (
                f"{self.stage_dir} records no training motion length (no training_motion in {CONFIG_FILE}, no "
                f"data.init_args.max_latents/max_frames in {RUN_CONFIG_FILE}): the clip is captioned whole; pass "
                "window_frames= (--window_frames, e.g. 300) to caption a long clip in windows"
            )
        return self.motion_limit.latents, f"windows of at most {self.motion_limit.describe()}"

    def caption_windows(
        self, motion: Tensor | np.ndarray, *, window_frames: int | None = None, **kwargs: Any
    ) -> list[WindowCaption]:
        """Caption ``motion`` (features ``(T, 272)`` or latents) in windows no longer than the stage trained on
        (or ``window_frames``; see `window_plan`), one `WindowCaption` each; a clip that fits is one window.
        Warns (`LongMotionWarning`) when it windows the clip or when the run records no limit."""
        vae, normalizer = self._motion_parts()
        window, why = self.window_plan(window_frames)
        if window is None:
            warnings.warn(why, LongMotionWarning, stacklevel=2)
            window = max(len(motion), 1)  # one window: the whole clip
        out = caption_windows(
            self.model, vae, motion, window_latents=window, formatter=self.formatter, normalizer=normalizer, **kwargs
        )
        if len(out) > 1:
            unit = "frame" if np.shape(motion)[-1] == FEATURE_DIM else "latent"
            warnings.warn(
                f"{len(motion)}-{unit} clip captioned in {len(out)} {why}: "
                + ", ".join(f"{w.start_frame}-{w.end_frame}" for w in out),
                LongMotionWarning,
                stacklevel=2,
            )
        return out

    def caption(self, motion: Tensor | np.ndarray, *, window_frames: int | None = None, **kwargs: Any) -> str:
        """The caption of ``motion``; see `caption` (`llamo.inference.text`) for ``kwargs``.

        A clip no longer than the stage's training motion (`motion_limit`, or ``window_frames``) gets one caption.
        A longer one is captioned in windows (`caption_windows`, with a `LongMotionWarning` naming them) and the
        result is one line per window, ``frames START-END: caption`` (END exclusive): what `llamo caption`
        prints. Use `caption_windows` for the windows as objects.
        """
        windows = self.caption_windows(motion, window_frames=window_frames, **kwargs)
        if len(windows) == 1:
            return windows[0].text
        return "\n".join(w.line() for w in windows)

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
    - The stage's training motion length (`training_motion_limit`) goes to ``LLaMoRun.motion_limit``: captions
      of longer clips are made per window of that length.
    - The default generation setting (`llamo.inference.guidance.resolve_generation`): the steps, guidance scale,
      unconditional source and noise temperature ``llamo eval sweep`` recorded in ``<run>/generation.json`` for
      this stage, else the model config's defaults; in ``LLaMoRun.generation``.
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
        motion_limit=None if vae is None else training_motion_limit(stage_dir, vae.config.downsample),
        generation=resolve_generation(model, run, stage_dir.name),
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
