"""The `llamo` command line.

Every sub-command lives next to the code it drives: the module named in :data:`COMMANDS` exposes
``add_cli_arguments(parser)`` and ``cli_run(args) -> int``. Modules are imported only when their command
runs, so ``llamo --help`` stays fast. ``llamo fit|validate|test`` hand the rest of the command line to the
LightningCLI in :mod:`llamo.stages.cli`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command words -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "synth"): ("llamo.motion.synthetic", "write the embedded procedural motion-caption corpus"),
    ("data", "check"): ("llamo.data.check", "report every problem of a HumanML3D-272 style folder"),
    ("render",): ("llamo.motion.render", "draw a 272-dim clip as gif/mp4/png filmstrip"),
    ("prepare-llm",): ("llamo.core.llm", "convert the packaged SmolLM2-135M-Instruct GGUF into a cached HF folder"),
    ("eval", "vae"): ("llamo.stages.vae_eval", "print a Table-2 row (MPJPE, MPJRE, sJPE, T.Down, Comp.) for a VAE"),
    ("eval", "run"): ("llamo.eval.report", "evaluate a finished run: Tables 2-4, language probe, samples -> report.md"),
    ("eval", "language"): ("llamo.eval.language", "language-preservation probe (accuracy + perplexity) of a model"),
    ("eval", "evaluator"): ("llamo.stages.evaluator", "retrieval R@1/2/3 + MM-Dist of a trained evaluator"),
    ("generate",): ("llamo.generate_cli", "stream text-to-motion from a trained run (gif/mp4/png/npy, frames/s)"),
    ("caption",): ("llamo.caption_cli", "describe a motion clip with a trained run (motion-to-text)"),
    ("chat",): ("llamo.chat_cli", "text chat with a trained run (the frozen base model's answers)"),
}

#: commands handled by LightningCLI (training stages)
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _usage() -> str:
    lines = ["usage: llamo <command> [options]", "", "commands:"]
    for words in LIGHTNING_COMMANDS:
        lines.append(f"  {words:<14} LightningCLI: train/evaluate a stage from --config YAML files")
    for words, (_, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<14} {text}")
    lines += ["", "`llamo <command> --help` documents each command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `llamo` sub-command and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in LIGHTNING_COMMANDS:
        from llamo.stages.cli import cli_main

        # from the console LightningCLI reads sys.argv itself (passing both makes it warn)
        cli_main(args if argv is not None else None)
        return 0
    for words, (module_name, text) in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(args[: len(words)]) == words:
            module = importlib.import_module(module_name)
            parser = argparse.ArgumentParser(prog="llamo " + " ".join(words), description=text)
            module.add_cli_arguments(parser)
            return int(module.cli_run(parser.parse_args(args[len(words) :])) or 0)
    print(f"llamo: unknown command {' '.join(args[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2
