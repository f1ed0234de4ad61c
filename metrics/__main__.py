"""``python -m metrics captions|t2m``: the metrics as standalone commands (no ``llamo`` import).

Examples::

    python -m metrics captions --pred pred.json --refs refs.json --out metrics.json
    python -m metrics captions --pred pred.json --refs refs.json --bertscore_model /models/roberta-large
    python -m metrics captions --pred pred.json --refs refs.json --evaluator runs/x/evaluator --motions clips/
    python -m metrics t2m --help
    python -m metrics convert-evaluator motionstreamer Evaluator_272/epoch=99.ckpt --out evaluators/ms272 \
        --mean_std humanml3d_272/mean_std
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from metrics.command import Command, run_commands

#: command words -> the typed function that runs it (`metrics.command` builds the options)
COMMANDS: list[Command] = [
    (("captions",), "metrics.commands:captions"),
    (("t2m",), "metrics.commands:t2m"),
    (("convert-evaluator",), "metrics.commands:convert_evaluator"),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one metrics command and return its exit status."""
    return run_commands(COMMANDS, sys.argv[1:] if argv is None else argv, "python -m metrics")


if __name__ == "__main__":
    sys.exit(main())
