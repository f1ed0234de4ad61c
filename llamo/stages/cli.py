"""``llamo fit|validate|test``: one LightningCLI for every stage, composed from repeated ``--config`` YAMLs.

    llamo fit --config experiments/base.yaml --config experiments/model/tiny.yaml --config experiments/stage2.yaml

``model.class_path`` picks the stage (a :class:`~llamo.stages.base.StageModule`), ``data.class_path`` its
DataModule. The ``handoff`` arguments (a forced :class:`~callbacks.handoff.StageHandoff`, so an overlay that
replaces ``trainer.callbacks`` cannot drop it) say where the stage starts from and where it writes its output.
The ``progress`` arguments configure the forced :class:`~callbacks.progress.LogProgress` (plain progress lines
when stdout is a log, not a terminal; defaults in ``experiments/base.yaml``), forced for the same reason, and so are
the ``previews`` arguments of :class:`~callbacks.llamo_previews.GenerationPreviews` (the LLaMo stages' generated
motions, captions and R@3 in TensorBoard; the demo overlays set ``trainer.callbacks: []`` and still get them).

**One seed per run.** ``seed_everything`` (``experiments/base.yaml``: 0) is the run's only seed knob: it seeds
Lightning's global RNG and is linked to ``model.init_args.seed`` (the stage's per-step noise) and
``data.init_args.seed`` (the DataModule's stream of clips, crops, captions and tasks), so ``--seed_everything 1``
trains another seed of the whole stage and the model's and data's hparams can never disagree. The default 0 gives
the same seeds as before the link (every stage and DataModule defaulted to 0), so it reproduces earlier training.
Setting ``model.init_args.seed`` or ``data.init_args.seed`` itself to another value is an error naming
``--seed_everything``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.handoff import StageHandoff
from callbacks.llamo_previews import GenerationPreviews
from callbacks.progress import LogProgress
from llamo.stages.base import StageModule

log = logging.getLogger(__name__)

#: the init args that ``seed_everything`` sets (both stage modules and DataModules take a ``seed``)
SEED_TARGETS = ("model.init_args.seed", "data.init_args.seed")


def run_seed(seed_everything: Any) -> int:
    """The integer seed of a run from ``seed_everything``: what `LlamoCLI` links to the model's and data's ``seed``.

    ``true`` (Lightning's "draw a random seed") and ``false`` (no seeding) are refused: the stage's noise and the
    data stream need one reproducible integer, and a random one drawn after parsing could not be linked.
    """
    if isinstance(seed_everything, bool) or not isinstance(seed_everything, int):
        raise ValueError(
            f"--seed_everything must be an integer (it also sets {' and '.join(SEED_TARGETS)}), got "
            f"{seed_everything!r}; pass e.g. --seed_everything 0 (experiments/base.yaml's default)"
        )
    return seed_everything


def _nested(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def explicit_seeds(args: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(where, key, value)`` for every ``model``/``data`` seed set directly in ``args`` (a command-line flag or a
    ``--config`` YAML), i.e. besides ``seed_everything``; `LlamoCLI` refuses those that disagree with it."""
    found: list[tuple[str, str, int]] = []
    flags = {f"--{k}": k for k in SEED_TARGETS} | {f"--{k.replace('.init_args', '')}": k for k in SEED_TARGETS}
    items = list(args)
    for i, arg in enumerate(items):
        name, eq, value = arg.partition("=")
        if not eq and i + 1 < len(items):
            value = items[i + 1]
        if name in flags:
            try:
                found.append(("the command line", flags[name], int(value)))
            except ValueError:
                pass  # not an int: the parser reports it
        elif name == "--config" and value and Path(value).is_file():
            try:
                data = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                continue  # the parser reports it
            for key in SEED_TARGETS:
                seed = _nested(data, key)
                if isinstance(seed, int) and not isinstance(seed, bool):
                    found.append((value, key, seed))
    return found


class LlamoCLI(LightningCLI):
    """LightningCLI with the forced stage handoff, log progress and generation previews, and the resume-vs-handoff
    rule (resume wins)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(StageHandoff, "handoff")
        # forced like the handoff: stage files replace `trainer.callbacks` whole, which would drop it from there
        parser.add_lightning_class_args(LogProgress, "progress")
        # forced for the same reason; the VAE and evaluator stages ignore it (it needs a LLaMo core)
        parser.add_lightning_class_args(GenerationPreviews, "previews")
        # one seed per run (module docstring): the linked targets always equal seed_everything
        for target in SEED_TARGETS:
            parser.link_arguments("seed_everything", target, compute_fn=run_seed)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        argv = list(args) if isinstance(args, Sequence) and not isinstance(args, str) else sys.argv[1:]
        # subcommand mode (`llamo fit ...`) nests the config under the subcommand's name; parse_config has none
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        seed = config.get("seed_everything")
        conflicts = [(where, key, value) for where, key, value in explicit_seeds(argv) if value != seed]
        if conflicts:
            listed = "; ".join(f"{key}={value} in {where}" for where, key, value in conflicts)
            parser.error(
                f"{listed} differs from seed_everything={seed}: a run has one seed, and seed_everything sets "
                f"{' and '.join(SEED_TARGETS)}. Drop {', '.join(sorted({k for _, k, _ in conflicts}))} and pass "
                f"--seed_everything {conflicts[0][2]} instead"
            )

    def before_fit(self) -> None:
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        handoff = next(cb for cb in self.trainer.callbacks if isinstance(cb, StageHandoff))
        if ckpt_path and handoff.load_from:
            # a resumed run restores its own weights, optimiser and step counters; loading the previous stage's
            # weights first would be overwritten anyway and only waste I/O
            log.warning("resuming from %s: the handoff from %s is skipped (resume wins)", ckpt_path, handoff.load_from)
            handoff.load_from = None


def _cli_kwargs() -> dict[str, Any]:
    return {
        "model_class": StageModule,
        "datamodule_class": L.LightningDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {"parser_mode": "yaml"},
    }


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> LlamoCLI:
    """Build (and by default run) the CLI; ``args`` is the command line after ``llamo``."""
    return LlamoCLI(**_cli_kwargs(), args=list(args) if args is not None else None, run=run)


class _ParseOnlyCLI(LlamoCLI):
    """Parses and validates the composed configuration but instantiates nothing (no model, no trainer)."""

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # nothing random runs, and LightningCLI's "Seed set to 0" line would only clutter the output


def parse_config(args: Sequence[str]) -> dict[str, Any]:
    """The resolved configuration of ``args`` (``--config`` files and overrides, no sub-command) as a plain dict,
    checked by the same parser as ``llamo fit`` but without building the model: `llamo plan` reads an 8B
    configuration this way on any machine. A parse error exits as LightningCLI does (message, status 2)."""
    with warnings.catch_warnings():
        # run from another command (`llamo plan ...`), sys.argv is not this parser's: the args are, on purpose
        warnings.filterwarnings("ignore", message=".*not recommended to provide both args and command line")
        cli = _ParseOnlyCLI(**_cli_kwargs(), args=list(args), run=False)
    return cli.config.as_dict()
