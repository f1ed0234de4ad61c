"""The dependency rule of the code base (README "Layout"): every package imports only the layers before it.

    stageio  <-  metrics            (standalone: no llamo import); llamo.progress: a leaf utility of every layer
    llamo.motion  <-  llamo.core  <-  llamo.data  <-  llamo.inference  <-  llamo.eval  <-  llamo.stages, callbacks
                                                                            <-  llamo.commands, llamo.cli (the top)

Imports inside functions count too. Benchmarks may import every layer, but only public names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("llamo", "metrics", "stageio", "callbacks", "benchmarks")
BASE = {"stageio", "metrics"}  # the standalone packages every llamo layer may use
MOTION, CORE, DATA = "llamo.motion", "llamo.core", "llamo.data"
INFERENCE, EVAL = "llamo.inference", "llamo.eval"

PROGRESS = "llamo.progress"  # log-friendly progress bars: a leaf utility every llamo layer may use

#: layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "stageio": set(),
    "metrics": {"stageio"},
    PROGRESS: set(),
    MOTION: {PROGRESS},
    CORE: {MOTION, PROGRESS},
    DATA: {MOTION, CORE, PROGRESS, "stageio"},
    INFERENCE: {MOTION, CORE, DATA, PROGRESS, "stageio"},
    EVAL: {MOTION, CORE, DATA, INFERENCE, PROGRESS} | BASE,
    "llamo.stages": {MOTION, CORE, DATA, INFERENCE, EVAL, PROGRESS, "callbacks"} | BASE,
    "callbacks": {MOTION, CORE, DATA, INFERENCE, EVAL, PROGRESS} | BASE,
    "llamo.commands": {MOTION, CORE, DATA, INFERENCE, EVAL, PROGRESS, "llamo.stages", "callbacks"} | BASE,
    "llamo.cli": {"llamo.stages", "llamo.commands"} | BASE,
    "llamo.__main__": {"llamo.cli"},
    "llamo": set(),  # the package's __init__
    "benchmarks": {MOTION, CORE, DATA, INFERENCE, EVAL, "llamo.stages"} | BASE,
}


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to (the longest `ALLOWED` key that is a prefix of it)."""
    # "llamo" is the package's own __init__, not a prefix: every other llamo module belongs to a named layer
    matches = [key for key in ALLOWED if module == key or (key != "llamo" and module.startswith(key + "."))]
    assert matches, f"{module} belongs to no layer; add it to ALLOWED in tests/test_layers.py"
    return max(matches, key=len)


def project_imports(source: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` of every absolute import of a project package in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PROJECT:
                out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in PROJECT]
    return out


def violations(module: str, source: str) -> list[str]:
    """Every import of ``module`` (its ``source``) against the dependency rule, as readable lines."""
    own = layer_of(module)
    found = []
    for imported, names, line in project_imports(source):
        target = layer_of(imported)
        if target != own and target not in ALLOWED[own]:
            found.append(f"{module}:{line} imports {imported} ({own} may import {sorted(ALLOWED[own])})")
        if own == "benchmarks" and target != "benchmarks":
            found += [f"{module}:{line} imports the private name {n} from {imported}" for n in names if n[0] == "_"]
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def test_every_module_imports_along_the_arrow() -> None:
    modules = _modules()
    assert len(modules) > 60, "the module walk found too few files"
    problems = [v for name, path in modules for v in violations(name, path.read_text(encoding="utf-8"))]
    assert not problems, "imports against the dependency rule:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("llamo.core.model", "from llamo.data.humanml272 import crop_to_multiple", "llamo.core may import"),
        ("llamo.core.model", "def f():\n    import llamo.inference.t2m", "imports llamo.inference.t2m"),
        ("metrics.generation", "from llamo.motion.representation import FEATURE_DIM", "metrics may import"),
        ("llamo.inference.run", "from llamo.eval.report import evaluate_run", "llamo.inference may import"),
        ("llamo.eval.t2m", "from llamo.stages.vae import VAEStage", "llamo.eval may import"),
        ("benchmarks.vae", "from llamo.inference.fast import _motion_heads", "private name _motion_heads"),
    ],
)
def test_the_rule_catches_an_import_against_the_arrow(module: str, source: str, expected: str) -> None:
    found = violations(module, source)
    assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_pass_and_unknown_modules_are_named() -> None:
    assert violations("llamo.eval.t2m", "from llamo.inference.t2m import stream_motion\nimport metrics") == []
    assert violations("llamo.data.latents", "from stageio import load_stage_output") == []
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("llamo.newpackage.thing")
