"""``llamo fit|validate|test``: one LightningCLI for every stage, composed from repeated ``--config`` YAMLs.

    llamo fit --config experiments/base.yaml --config experiments/model/tiny.yaml --config experiments/stage2.yaml

``model.class_path`` picks the stage (a :class:`~llamo.stages.base.StageModule`), ``data.class_path`` its
DataModule. The ``handoff`` arguments (a forced :class:`~callbacks.handoff.StageHandoff`, so an overlay that
replaces ``trainer.callbacks`` cannot drop it) say where the stage starts from and where it writes its output.
The ``progress`` arguments configure the forced :class:`~callbacks.progress.LogProgress` (plain progress lines
when stdout is a log, not a terminal; defaults in ``experiments/base.yaml``), forced for the same reason.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.handoff import StageHandoff
from callbacks.progress import LogProgress
from llamo.stages.base import StageModule

log = logging.getLogger(__name__)


class LlamoCLI(LightningCLI):
    """LightningCLI with the forced stage handoff and log progress, and the resume-vs-handoff rule (resume wins)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(StageHandoff, "handoff")
        # forced like the handoff: stage files replace `trainer.callbacks` whole, which would drop it from there
        parser.add_lightning_class_args(LogProgress, "progress")

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
