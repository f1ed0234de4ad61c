"""Evaluator stage: train the TMR-style text-motion retrieval model behind FID / R-precision / MM-Dist.

    llamo fit --config experiments/base.yaml --config experiments/evaluator.yaml --data.init_args.root=data/synth
    llamo eval evaluator --ckpt runs/default/evaluator --data data/synth --split test

The model is :class:`metrics.evaluator.TextMotionEvaluator` (kept under ``self.core``; the frozen MiniLM is not
part of its weights), trained with its symmetric InfoNCE loss on (normalised motion, random caption) pairs from
:class:`llamo.data.retrieval.RetrievalDataModule`. Validation logs the loss, R@1/2/3 in shuffled groups of 32 and
MM-Dist of real motion against its own captions. The forced ``handoff`` callback writes ``handoff.safetensors`` +
``config.json``, which ``TextMotionEvaluator.load`` and ``python -m metrics t2m --evaluator`` read; this stage
also writes the corpus ``Mean.npy``/``Std.npy`` there, so the folder says how motion must be normalised.

:func:`evaluate_retrieval` (``llamo eval evaluator``) measures a trained evaluator the way the T2M protocol
measures real motion: per repetition, every clip of the split gets a random caption and a random multiple-of-4
crop, the pairs are shuffled into groups of 32, and R@1/2/3 and MM-Dist are averaged over 20 repetitions
(mean ± 1.96·std/√N). Chance level is k/32 for R@k.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from callbacks.handoff import StageHandoff
from llamo.data.humanml272 import MotionCorpus
from llamo.data.retrieval import MotionCaptionPairs, RetrievalBatch, collate_pairs
from llamo.motion.normalization import Normalizer
from llamo.stages.base import StageModule
from llamo.stages.schedules import ScheduleName, lr_factor
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from metrics.generation import (
    GROUP_SIZE,
    TOP_K,
    MMDist,
    ProtocolResult,
    RPrecision,
    mm_dist,
    r_precision,
    repeat_protocol,
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


# ------------------------------------------------------------------------------------- `llamo eval evaluator`


@torch.inference_mode()
def _embed_pairs(
    evaluator: TextMotionEvaluator, pairs: MotionCaptionPairs, batch_size: int, device: str
) -> tuple[Tensor, Tensor]:
    texts, motions = [], []
    for batch in DataLoader(pairs, batch_size=batch_size, collate_fn=collate_pairs):
        motions.append(evaluator.encode_motion(batch["motion"].to(device), batch["lengths"].to(device)).cpu())
        texts.append(evaluator.encode_text(batch["texts"]).cpu())
    return torch.cat(texts), torch.cat(motions)


def evaluate_retrieval(
    evaluator: TextMotionEvaluator,
    corpus: MotionCorpus,
    repeats: int = 20,
    seed: int = 0,
    group_size: int = GROUP_SIZE,
    max_frames: int = 300,
    multiple: int = 4,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, ProtocolResult]:
    """R@1..3 and MM-Dist of real motion against its own captions, repeated (see the module docstring).

    ``corpus`` must normalise with the statistics the evaluator was trained with
    (``MotionCorpus(..., mean_std=<evaluator folder>)``).
    """
    if len(corpus) < group_size:
        raise ValueError(f"the split has {len(corpus)} clips, R-precision needs at least group_size={group_size}")
    evaluator = evaluator.to(device).eval()

    def one_run(generator: torch.Generator) -> dict[str, float]:
        # new captions and crops every repetition, as the protocol's shuffled test loader draws them
        crop_seed = int(torch.randint(0, 2**31, (), generator=generator))
        pairs = MotionCaptionPairs(corpus, max_frames, multiple, seed=crop_seed)
        text, motion = _embed_pairs(evaluator, pairs, batch_size, device)
        r = r_precision(text, motion, group_size, TOP_K, generator)
        out = {f"R@{k + 1}": float(r[k]) for k in range(TOP_K)}
        out["MM-Dist"] = mm_dist(text, motion)
        return out

    return repeat_protocol(one_run, repeats=repeats, seed=seed, progress=True)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``llamo eval evaluator``."""
    parser.add_argument("--ckpt", type=Path, required=True, help="evaluator folder (handoff.safetensors + config.json)")
    parser.add_argument("--data", type=Path, required=True, help="HumanML3D-272 style corpus folder")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--mean-std", type=Path, default=None, help="folder with Mean.npy/Std.npy (default: the --ckpt folder)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="protocol repetitions (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-frames", type=int, default=60, help="shorter clips are left out (T2M test: 60)")
    parser.add_argument("--max-frames", type=int, default=300, help="longer clips are cropped (T2M test: 300)")
    parser.add_argument(
        "--skip-invalid", action="store_true", help="leave out clips that are too short or broken (counted)"
    )
    parser.add_argument("--group-size", type=int, default=GROUP_SIZE, help="R-precision group size (default 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


def cli_run(args: argparse.Namespace) -> int:
    """Print R@1/2/3 and MM-Dist (mean ± 95 % interval) of real motion vs its captions, and the chance level."""
    evaluator = TextMotionEvaluator.load(args.ckpt)
    # the T2M test protocol keeps min_frames <= T < max_frames: longer clips are left out (counted), shorter ones
    # are errors unless --skip-invalid
    corpus = MotionCorpus(
        args.data,
        split=args.split,
        min_length=args.min_frames,
        max_length=args.max_frames - 1,
        skip_invalid=args.skip_invalid,
        mean_std=args.mean_std if args.mean_std is not None else args.ckpt,
    )
    summary = evaluate_retrieval(
        evaluator,
        corpus,
        args.repeats,
        args.seed,
        group_size=args.group_size,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"evaluator {args.ckpt} on {args.data} split {args.split!r}: {len(corpus)} clips "
        f"({corpus.too_long} longer than {args.max_frames - 1} frames and {corpus.skipped} invalid left out), "
        f"{args.repeats} repetitions"
    )
    for name, result in summary.items():
        chance = f"   (chance {int(name[2:]) / args.group_size:.4f})" if name.startswith("R@") else ""
        print(f"  {name:<8} {result.mean:.4f} ± {result.ci95:.4f}{chance}")
    if args.out is not None:
        report = {
            "metrics": {k: asdict(v) for k, v in summary.items()},
            "chance": {f"R@{k}": k / args.group_size for k in range(1, TOP_K + 1)},
            "group_size": args.group_size,
            "clips": len(corpus),
            "too_long": corpus.too_long,
            "skipped": corpus.skipped,
            "split": args.split,
            "repeats": args.repeats,
            "seed": args.seed,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
