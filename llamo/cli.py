"""The `llamo` command line.

``llamo fit|validate|test`` hand the rest of the command line to the LightningCLI in :mod:`llamo.stages.cli`
(training stages from ``--config`` YAMLs). Every other sub-command is a typed function in :mod:`llamo.commands`;
`metrics.command` builds its options from the signature and docstring, so ``llamo <command> --help`` documents
it. Command modules are imported only when their command runs, so ``llamo --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from metrics.command import Command, run_commands

#: command words -> the typed function that runs it
COMMANDS: list[Command] = [
    (("data", "synth"), "llamo.commands.data:synth"),
    (("data", "check"), "llamo.commands.data:check"),
    (("render",), "llamo.commands.data:render"),
    (("prepare-llm",), "llamo.commands.data:prepare_llm"),
    (("convert", "motionstreamer-tae"), "llamo.commands.convert:motionstreamer_tae"),
    (("eval", "vae"), "llamo.commands.evaluation:vae"),
    (("eval", "evaluator"), "llamo.commands.evaluation:evaluator"),
    (("eval", "language"), "llamo.commands.evaluation:language"),
    (("eval", "run"), "llamo.commands.evaluation:run"),
    (("eval", "sweep"), "llamo.commands.evaluation:sweep"),
    (("eval", "ablations"), "llamo.commands.evaluation:ablations"),
    (("generate",), "llamo.commands.inference:generate"),
    (("caption",), "llamo.commands.inference:caption"),
    (("chat",), "llamo.commands.inference:chat"),
    (("plan",), "llamo.commands.plan:plan"),
    (("record-fingerprint",), "llamo.commands.inference:record_fingerprint"),
]

#: commands handled by LightningCLI (training stages)
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `llamo` sub-command and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LIGHTNING_COMMANDS:
        from llamo.stages.cli import cli_main

        # from the console LightningCLI reads sys.argv itself (passing both makes it warn)
        cli_main(args if argv is not None else None)
        return 0
    lightning = {word: "LightningCLI: train/evaluate a stage from --config YAML files" for word in LIGHTNING_COMMANDS}
    return run_commands(COMMANDS, args, "llamo", extra=lightning)
