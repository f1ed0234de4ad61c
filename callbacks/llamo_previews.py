"""``GenerationPreviews``: what a researcher watching a long LLaMo run needs in TensorBoard, at a set interval.

Every ``every_n_steps`` optimizer steps (and/or once at the end of fit, ``at_end``), on global rank 0, with the
model in eval mode and without gradients (train mode and the RNG state are restored afterwards):

- **text-to-motion**: the prompts of the first ``num_prompts`` preview items are generated at their ground-truth
  length with fixed noise, decoded by the run's VAE and drawn as filmstrips: images ``previews/t2m_<i>`` (the prompt
  is the filmstrip's title; the text ``previews/t2m_prompts`` lists them all);
- **motion-to-text**: the ground-truth motions of the first ``num_captions`` items are captioned greedily (at most
  ``caption_tokens`` tokens): text ``previews/m2t_<i>``, the caption above the item's reference captions;
- with an ``evaluator`` folder: R@3 and FID of the first ``num_r3_items`` items, generated at ground-truth length and
  embedded by the evaluator: scalars ``val/preview_r3`` and ``val/preview_fid`` (R-precision in one group of
  min(32, items): chance is 3 / that).

The preview items are the validation split's items of the Table-3 protocol (60 <= T <= 299 frames): a seeded subset
of max(``num_prompts``, ``num_captions``, ``num_r3_items`` with an evaluator) of them, each with a seeded caption
(`llamo.eval.items.load_test_items` with ``split="val"``, as ``llamo eval sweep`` picks them; ``seed``). The items,
prompts and noise are the same at every preview of a run, and independent of the training seed, so each tag is a
series over training steps, comparable across runs. Generation, captions and metrics are the functions of ``llamo
eval run`` (`generate_test_motions`, `LLaMoRun.caption`, `t2m_metrics`), run on the stage's live model.

Configured by the top-level ``previews:`` key (`llamo.stages.cli.LlamoCLI` adds the callback to every stage, as it
does the handoff, so an overlay that replaces ``trainer.callbacks`` cannot drop it; defaults in
``experiments/base.yaml``, smaller ones in ``experiments/demo/``). The VAE and evaluator stages ignore it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from callbacks.previews import filmstrip
from llamo.core.model import LLaMo
from llamo.core.vae import CausalMotionVAE
from llamo.data.humanml272 import find_layout, load_normalizer
from llamo.data.latents import load_vae
from llamo.eval.items import TestItems, load_test_items
from llamo.eval.settings import EvalSettings
from llamo.eval.t2m import generate_test_motions
from llamo.inference.prompts import model_formatter
from llamo.inference.run import LLaMoRun, LongMotionWarning, MotionLimit
from llamo.motion.normalization import Normalizer
from metrics.evaluators import EVALUATOR_KINDS, Evaluator, load_evaluator
from metrics.generation import DIVERSITY_PAIRS, GROUP_SIZE, embed_clips, embed_texts, load_mean_std, t2m_metrics
from stageio import read_stage_config

__all__ = ["GenerationPreviews", "PreviewResult"]

log = logging.getLogger(__name__)

#: R@3 needs more candidates than 3 to say anything (with 3 every match is within the top 3)
MIN_R3_ITEMS = 4
#: the DataModule settings the previews read (`llamo.data.llamo_data.LLaMoDataModule`)
DATA_KEYS = ("root", "vae_dir", "max_latents", "max_frames")


@dataclass
class PreviewResult:
    """What one preview computed (what `GenerationPreviews` logs)."""

    step: int
    """The optimizer step it was made at."""
    ids: list[str]
    """Clip ids of the generated motions (the first ``num_prompts`` preview items)."""
    prompts: list[str]
    """The prompt of each generated motion."""
    motions: list[np.ndarray]
    """(T, 272) float32 un-normalised generated features, T the item's ground-truth length."""
    images: list[np.ndarray]
    """(H, W, 3) uint8 filmstrip of each generated motion."""
    caption_ids: list[str]
    """Clip ids of the captioned motions (the first ``num_captions`` preview items)."""
    captions: list[str]
    """The model's greedy caption of each of them."""
    references: list[list[str]]
    """Every reference caption of each of them."""
    retrieval: dict[str, float] | None
    """``{"R@3", "FID", "real R@3", "items"}`` of the evaluator's protocol; None without an evaluator."""
    seconds: float
    """Wall time of the preview."""


class GenerationPreviews(L.Callback):
    """Log generated motions, captions and (with an evaluator) R@3 of fixed validation items (module docstring).

    Args:
        every_n_steps: Preview every this many optimizer steps (None: never during training).
        at_end: Also preview once at the end of fit (unless the last step just had one).
        num_prompts: Generated motions logged as filmstrips (0: none).
        num_captions: Captioned validation motions logged as text (0: none).
        evaluator: An evaluator folder (the evaluator stage's output, ``runs/<exp>/evaluator``, or a converted
            MotionStreamer evaluator, with the Mean/Std it normalises with beside it); None: no R@3/FID.
        num_r3_items: Items generated and scored for R@3/FID when ``evaluator`` is given (>= 4; R-precision in groups
            of min(32, items)).
        caption_tokens: Longest caption in tokens.
        panels: Frames per filmstrip.
        seed: Seed of the item subset, the caption choice and the generation noise (fixed: every preview of a run,
            and of runs with other training seeds, shows the same items with the same noise).
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        at_end: bool = False,
        num_prompts: int = 4,
        num_captions: int = 4,
        evaluator: str | None = None,
        num_r3_items: int = 32,
        caption_tokens: int = 32,
        panels: int = 6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        problems = []

        def check(key: str, value: Any, least: int, fix: str, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"previews.{key} must be an integer >= {least}{fix}, got {value!r}")

        check("every_n_steps", every_n_steps, 1, " (or null: none during training)", allow_none=True)
        check("num_prompts", num_prompts, 0, " (0: no generated motions)")
        check("num_captions", num_captions, 0, " (0: no captions)")
        check("num_r3_items", num_r3_items, MIN_R3_ITEMS, " (with 3 or fewer, R@3 is always 1; 32 is one full group)")
        check("caption_tokens", caption_tokens, 1, "")
        check("panels", panels, 1, "")
        check("seed", seed, 0, "")
        if not isinstance(at_end, bool):
            problems.append(f"previews.at_end must be true or false, got {at_end!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if evaluator is not None and not Path(evaluator).is_dir():
            raise FileNotFoundError(
                f"previews.evaluator={evaluator!r} is not a folder; pass the evaluator stage's output "
                "(--previews.evaluator=runs/<exp>/evaluator) or null for no R@3"
            )
        self.every_n_steps, self.at_end = every_n_steps, at_end
        self.num_prompts, self.num_captions = num_prompts, num_captions
        self.evaluator, self.num_r3_items = evaluator, num_r3_items
        self.caption_tokens, self.panels, self.seed = caption_tokens, panels, seed
        self._reset()

    def _reset(self) -> None:
        self._active = False  # a LLaMo stage whose model this process can run alone
        self._last_step = -1
        self._warned = False
        self._data: dict[str, Any] = {}
        self._items: TestItems | None = None
        self._vae: CausalMotionVAE | None = None
        self._normalizer: Normalizer | None = None
        self._evaluator: Evaluator | None = None
        self._mean_std: tuple[np.ndarray, np.ndarray] | None = None
        self._embedded: tuple[torch.Tensor, torch.Tensor] | None = None  # text and real motion: fixed per run

    @property
    def enabled(self) -> bool:
        """Whether any preview is scheduled (``every_n_steps`` or ``at_end``)."""
        return self.every_n_steps is not None or self.at_end

    @property
    def num_items(self) -> int:
        """Preview items needed: max(num_prompts, num_captions, num_r3_items with an evaluator)."""
        return max(self.num_prompts, self.num_captions, self.num_r3_items if self.evaluator else 0)

    # -- set-up ----------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._reset()
        if stage != "fit" or not self.enabled or not isinstance(getattr(pl_module, "core", None), LLaMo):
            return  # the VAE stage has its own previews; the evaluator stage has none
        strategy = trainer.strategy
        sharded = isinstance(strategy, FSDPStrategy | ModelParallelStrategy) or (
            isinstance(strategy, DeepSpeedStrategy) and getattr(strategy, "zero_stage_3", False)
        )
        if sharded and trainer.world_size > 1:
            # every forward of a sharded model gathers from all processes: rank 0 cannot generate alone
            log.warning(
                "previews are off under %s with %d processes (the model is sharded, rank 0 cannot run it alone); "
                "use DDP or DeepSpeed ZeRO-2, or generate from the stage's handoff (`llamo generate`, `eval run`)",
                type(strategy).__name__,
                trainer.world_size,
            )
            return
        hparams = getattr(trainer.datamodule, "hparams", {})
        missing = [k for k in DATA_KEYS if k not in hparams]
        if missing:
            raise ValueError(
                f"previews need the LLaMo DataModule's {', '.join(f'data.init_args.{k}' for k in DATA_KEYS)}; "
                f"{type(trainer.datamodule).__name__} has no {', '.join(missing)}. Use "
                "llamo.data.llamo_data.LLaMoDataModule, or switch previews off (previews.every_n_steps: null, "
                "previews.at_end: false)"
            )
        self._data = {k: hparams[k] for k in DATA_KEYS}
        if self.evaluator is not None:
            self._check_evaluator(Path(self.evaluator))
        self._active = True
        if trainer.is_global_zero and _tensorboard(trainer) is not None:
            # read the items and load the VAE now: a bad split or folder fails before training, not at step N
            self._load_parts()

    @staticmethod
    def _check_evaluator(folder: Path) -> None:
        kind = read_stage_config(folder)["kind"]
        if kind not in EVALUATOR_KINDS:
            raise ValueError(
                f"previews.evaluator={str(folder)!r} holds a {kind!r} stage output, not an evaluator "
                f"({', '.join(sorted(EVALUATOR_KINDS))}); pass the evaluator stage's output, runs/<exp>/evaluator"
            )
        try:
            load_mean_std(folder)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"previews.evaluator={str(folder)!r}: {err}. The evaluator normalises motion with the Mean/Std beside "
                "it (the evaluator stage writes them; `python -m metrics convert-evaluator ... --mean_std DIR` copies "
                "them for a MotionStreamer evaluator)"
            ) from err

    def _load_parts(self) -> None:
        """The preview items, the run's VAE and the corpus Mean/Std (and the evaluator), loaded once per fit."""
        if self._items is not None:
            return
        root = Path(self._data["root"])
        settings = EvalSettings(split="val", items=max(self.num_items, 2), seed=self.seed, device="cpu")
        self._items = load_test_items(root, settings)
        if len(self._items.ids) < self.num_items:
            log.warning(
                "previews: the validation split of %s has %d items with %d <= T <= %d frames, fewer than the %d asked "
                "(previews.num_prompts / num_captions / num_r3_items); previewing those",
                root,
                len(self._items.ids),
                settings.min_frames,
                settings.max_frames,
                self.num_items,
            )
        self._vae = load_vae(self._data["vae_dir"])
        # the statistics the latent cache normalised the training clips with (`build_latents`)
        self._normalizer = load_normalizer(find_layout(root))
        if self.evaluator is not None:
            self._evaluator = load_evaluator(self.evaluator)
            self._mean_std = load_mean_std(self.evaluator)

    # -- when ------------------------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps: with gradient accumulation several batches end on the same step
        if self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._preview_and_log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and trainer.global_step != self._last_step:
            self._preview_and_log(trainer, pl_module)

    def _preview_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        if not self._active or not trainer.is_global_zero:
            return
        logger = _tensorboard(trainer)
        if logger is None:
            if not self._warned:
                log.warning(
                    "previews: no TensorBoardLogger (trainer.logger), so generated motions, captions and R@3 are not "
                    "logged; set trainer.logger (experiments/base.yaml has one), or switch previews off "
                    "(previews.every_n_steps: null, previews.at_end: false)"
                )
                self._warned = True
            return
        result = self.preview(trainer, pl_module)
        self.log_result(logger, result)
        done = [f"{len(result.images)} motions", f"{len(result.captions)} captions"]
        if result.retrieval is not None:
            r = result.retrieval
            done.append(f"R@3 {r['R@3']:.3f} (real {r['real R@3']:.3f}, {r['items']:.0f} items), FID {r['FID']:.4f}")
        name = getattr(pl_module, "stage_name", type(pl_module).__name__)
        rank_zero_info(f"[{name}] previews at step {result.step}: {', '.join(done)} in {result.seconds:.1f} s")

    # -- what ------------------------------------------------------------------------------------------------

    def preview(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PreviewResult:
        """Generate, caption and score the preview items with the stage's model as it is now (nothing logged).

        The model runs in eval mode without gradients; every module's train/eval mode and the global RNG state
        are restored afterwards, and no weight changes.
        """
        if not self._active:
            raise ValueError(
                "previews are inactive for this fit (not a LLaMo stage, no previews scheduled, or a sharded model): "
                "nothing to preview"
            )
        self._load_parts()
        assert self._items is not None and self._vae is not None
        start = time.perf_counter()
        core: LLaMo = pl_module.core
        device = pl_module.device
        modes = {module: module.training for module in pl_module.modules()}
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        pl_module.eval()
        try:
            # the trainer's forward context: autocast under `bf16-mixed`, as in the training step
            with (
                torch.random.fork_rng(devices=rng_devices),
                torch.no_grad(),
                trainer.precision_plugin.forward_context(),
            ):
                result = self._compute(trainer, core, device)
        finally:
            for module, training in modes.items():
                module.train(training)
        result.seconds = time.perf_counter() - start
        return result

    def _compute(self, trainer: L.Trainer, core: LLaMo, device: torch.device) -> PreviewResult:
        items = self._items
        assert items is not None and self._vae is not None and self._normalizer is not None
        per = self._vae.config.downsample
        limit = MotionLimit(
            min(int(self._data["max_latents"]), int(self._data["max_frames"]) // per),
            per,
            f"data.init_args.max_latents={self._data['max_latents']}, max_frames={self._data['max_frames']}",
        )
        run = LLaMoRun(
            model=core,
            vae=self._vae.to(device),
            normalizer=self._normalizer,
            formatter=model_formatter(core),
            stage_dir=Path(trainer.log_dir or trainer.default_root_dir),
            mean_std_dir=None,
            motion_limit=limit,
        )
        scored = self.num_r3_items if self._evaluator is not None else 0
        generate = _first(items, max(self.num_prompts, scored))
        settings = EvalSettings(split="val", seed=self.seed, gen_batch=max(len(generate.ids), 1), device=str(device))
        motions = generate_test_motions(run, generate, settings)[0] if generate.ids else []
        shown = min(self.num_prompts, len(motions))
        images = [filmstrip(motions[i], caption=generate.prompts[i], panels=self.panels) for i in range(shown)]
        captioned = _first(items, self.num_captions)
        with warnings.catch_warnings():
            # a clip longer than the stage's training span is captioned per window; the text shows the windows
            warnings.simplefilter("ignore", LongMotionWarning)
            captions = [run.caption(f, max_new_tokens=self.caption_tokens) for f in captioned.features]
        retrieval = self._retrieval(_first(items, scored), motions, device) if scored else None
        return PreviewResult(
            step=trainer.global_step,
            ids=generate.ids[:shown],
            prompts=generate.prompts[:shown],
            motions=motions[:shown],
            images=images,
            caption_ids=captioned.ids,
            captions=captions,
            references=captioned.captions,
            retrieval=retrieval,
            seconds=0.0,
        )

    def _retrieval(self, items: TestItems, motions: list[np.ndarray], device: torch.device) -> dict[str, float] | None:
        """R@3 / FID of the generated ``motions`` of ``items`` with `t2m_metrics` (one run, groups of min(32, N))."""
        n = len(items.ids)
        if n < MIN_R3_ITEMS:
            log.warning("previews: %d validation items, R@3 needs at least %d; not scored", n, MIN_R3_ITEMS)
            return None
        assert self._evaluator is not None and self._mean_std is not None
        evaluator = self._evaluator.to(device)
        mean, std = self._mean_std
        if self._embedded is None:
            text = embed_texts(evaluator, items.prompts, desc="previews: embed text")
            real = embed_clips(evaluator, items.features, mean, std, device=device, desc="previews: embed real")
            self._embedded = (text, real)
        text, real = self._embedded
        gen = embed_clips(evaluator, motions[:n], mean, std, device=device, desc="previews: embed generated")
        out = t2m_metrics(
            text,
            real,
            gen,
            torch.Generator().manual_seed(self.seed),
            group_size=min(GROUP_SIZE, n),
            diversity_pairs=min(DIVERSITY_PAIRS, n),
        )
        return {"R@3": out["gen/R@3"], "FID": out["gen/FID"], "real R@3": out["real/R@3"], "items": float(n)}

    # -- logging ---------------------------------------------------------------------------------------------

    @staticmethod
    def log_result(logger: TensorBoardLogger, result: PreviewResult) -> None:
        """Write a preview to TensorBoard (tags in the module docstring) and flush, so it shows at once."""
        writer, step = logger.experiment, result.step
        for i, image in enumerate(result.images):
            writer.add_image(f"previews/t2m_{i}", image, step, dataformats="HWC")
        if result.prompts:
            listed = "\n".join(f"{i}. {p} (`{c}`)" for i, (p, c) in enumerate(zip(result.prompts, result.ids)))
            writer.add_text("previews/t2m_prompts", listed, step)
        for i, (clip_id, caption, refs) in enumerate(zip(result.caption_ids, result.captions, result.references)):
            # markdown: TensorBoard's text tab renders it (a blank line separates paragraphs)
            text = caption.replace("\n", "  \n") or "(empty)"
            lines = [f"**LLaMo:** {text}", "", f"**references** (`{clip_id}`):", ""] + [f"- {r}" for r in refs]
            writer.add_text(f"previews/m2t_{i}", "\n".join(lines), step)
        if result.retrieval is not None:
            writer.add_scalar("val/preview_r3", result.retrieval["R@3"], step)
            writer.add_scalar("val/preview_fid", result.retrieval["FID"], step)
        writer.flush()


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _first(items: TestItems, count: int) -> TestItems:
    """The first ``count`` items (all fields cut alike)."""
    return replace(items, **{k: getattr(items, k)[:count] for k in ("ids", "features", "captions", "prompts")})
