"""``python -m metrics captions|t2m``: the metrics as standalone commands (no ``llamo`` import).

Each command word maps to a module exposing ``add_cli_arguments(parser)`` and ``cli_run(args) -> int`` (the same
protocol as ``llamo/cli.py``); the module is imported only when its command runs.

Examples::

    python -m metrics captions --pred pred.json --refs refs.json --out metrics.json
    python -m metrics captions --pred pred.json --refs refs.json --bertscore-model /models/roberta-large
    python -m metrics captions --pred pred.json --refs refs.json --evaluator runs/evaluator --motions data/test_clips
    python -m metrics t2m --help
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command word -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "captions": (
        "metrics.captioning",
        "motion-to-text: BLEU@1/@4, ROUGE-L, CIDEr, BERTScore of pred.json vs refs.json",
    ),
    "t2m": ("metrics.generation", "text-to-motion: FID, R-precision, MM-Dist, Diversity, MultiModality"),
}


def _usage() -> str:
    lines = ["usage: python -m metrics <command> [options]", "", "commands:"]
    lines += [f"  {word:<10} {text}" for word, (_, text) in COMMANDS.items()]
    lines += ["", "`python -m metrics <command> --help` documents each command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one metrics command and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"python -m metrics: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[args[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m metrics {args[0]}", description=text)
    module.add_cli_arguments(parser)
    return int(module.cli_run(parser.parse_args(args[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
