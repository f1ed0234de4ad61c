"""`make demo`: the demo overlays parse as the Makefile composes them, and `make demo DEMO_SCALE=smoke` runs the
whole pipeline (synth -> vae -> evaluator -> stage 1 -> 2 -> 3 -> `llamo eval run`) into a report with every table.

The smoke run calls make with ``STAMP=<a fresh file>`` (so the ``install`` prerequisite never reinstalls the
venv from inside a test) and ``PY=<this interpreter>``; everything it writes lives under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from llamo.stages.cli import cli_main

REPO = Path(__file__).resolve().parents[1]
STAGE_DIRS = ["vae", "evaluator", "stage1", "stage2", "stage3"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(tmp_path: Path, *args: str, dry_run: bool = False, timeout: float = 600) -> str:
    stamp = tmp_path / "installed.stamp"
    stamp.touch()  # newer than pyproject.toml: `install` has nothing to do
    cmd = [
        "make",
        "--no-print-directory",
        *(["-n"] if dry_run else []),
        *args,
        f"PY={sys.executable}",
        f"STAMP={stamp}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{shlex.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _fit_commands(make_output: str) -> dict[str, list[str]]:
    """``{stage folder: llamo fit arguments}`` of the ``llamo fit`` lines in a ``make -n`` transcript."""
    text = make_output.replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        # the stage recipe is one shell line: the reuse check, then `set -x; PY -m llamo fit ...` at its end
        words = line.split()
        at = next((i for i in range(1, len(words)) if words[i : i + 3] == ["-m", "llamo", "fit"]), None)
        if at is not None:
            fit = shlex.split(" ".join(words[at:]))
            version = next(w.split("=", 1)[1] for w in fit if w.startswith("--trainer.logger.init_args.version="))
            out[version] = fit[2:]
    return out


def _print_config(fit_args: list[str]) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        cli_main([*fit_args, "--print_config"])
    assert stop.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_demo_stage_commands_compose_the_overlays_and_parse(tmp_path: Path, scale: str) -> None:
    transcript = _make(tmp_path, "demo", f"DEMO_SCALE={scale}", f"RUNS={tmp_path}/runs", dry_run=True)
    commands = _fit_commands(transcript)
    assert list(commands) == STAGE_DIRS
    overlay = REPO / "experiments" / "demo" / ("smoke" if scale == "smoke" else "")
    exp = "demo" if scale == "full" else "demo-smoke"
    assert f"eval run {tmp_path}/runs/{exp} --data" in transcript
    for stage, args in commands.items():
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        assert str((overlay / f"{stage}.yaml").relative_to(REPO)) in configs
        cfg = _print_config(args)
        wanted = yaml.safe_load((overlay / f"{stage}.yaml").read_text())
        assert cfg["trainer"]["max_steps"] == wanted["trainer"]["max_steps"]
        if stage.startswith("stage"):
            llm = cfg["model"]["init_args"]["core"]["llm"]
            assert (llm["path"] == "smollm2") == (scale == "full")
            # head configs are plain mappings: the overlay must restate them whole (it replaces, not merges)
            heads = yaml.safe_load((overlay / "model.yaml").read_text())["model"]["init_args"]["core"]
            assert cfg["model"]["init_args"]["core"]["flow_head"] == heads["flow_head"]
            assert cfg["trainer"]["callbacks"] in ([], None)  # no multi-GB resume checkpoints
            assert cfg["handoff"]["save_to"] == f"{tmp_path}/runs/{exp}/{stage}"


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_make_demo_smoke_writes_every_table(tmp_path: Path) -> None:
    runs, data = tmp_path / "runs", tmp_path / "data"
    _make(tmp_path, "demo", "DEMO_SCALE=smoke", f"RUNS={runs}", f"DEMO_DATA={data}")
    run = runs / "demo-smoke"
    for stage in STAGE_DIRS:
        assert (run / stage / "handoff.safetensors").is_file(), stage
    assert list((run / "stage1").glob("events.out.tfevents.*")), "TensorBoard logs under runs/<exp>/<stage>/"

    results = json.loads((run / "results.json").read_text())
    report = (run / "report.md").read_text()
    tables = results["tables"]
    assert list(tables) == ["reconstruction", "t2m", "m2t", "language", "samples"]
    for key, table in tables.items():
        assert table["skipped"] is None, (key, table["skipped"])
        assert table["rows"], key
        assert f"## {table['title']}" in report
        assert table["seconds"] > 0
    numbers = _numbers(results)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert [r["name"].split(" ")[0] for r in tables["t2m"]["rows"]] == ["Real", "Shuffled", "LLaMo"]
    assert [r["name"].split(" ")[0] for r in tables["m2t"]["rows"]] == ["Real", "Constant", "LLaMo"]
    assert tables["language"]["identical"] is True  # MoT: the text path is the frozen base model
    gif = run / tables["samples"]["rows"][0]["file"]
    assert gif.is_file() and gif.read_bytes()[:3] == b"GIF"
    assert "Wall time:" in report and "## Checks" in report
    # the generation setting was chosen on the validation split by the demo's sweep and used by `eval run`
    record = json.loads((run / "generation.json").read_text())
    chosen = record["chosen"]
    assert record["split"] == "val" and chosen["steps"] == 4
    # the grid is scales 1, 2 with the prompt source; scale 1 (no guidance) is run and recorded as `null`
    assert (chosen["guidance_scale"], chosen["cfg"]) in ((1.0, "null"), (2.0, "prompt"))
    assert [(r["guidance_scale"], r["cfg"]) for r in record["rows"]] == [(1.0, "null"), (2.0, "prompt")]
    generation = results["generation"]
    assert (generation["guidance_scale"], generation["cfg"], generation["steps"]) == (
        chosen["guidance_scale"],
        chosen["cfg"],
        chosen["steps"],
    )
    assert generation["temperature"] == chosen["temperature"] == 1.0  # the smoke grid sweeps temperature 1 only
    assert "llamo eval sweep" in generation["source"] and (run / "sweep.png").is_file()

    # trainer.max_steps 0 (the stage-skipping ablations) hands the previous stage's weights on unchanged
    _make(
        tmp_path,
        "stage-3",
        "EXP=demo-smoke",
        "MODEL=tiny",
        "OVERLAYS=experiments/demo/smoke",
        "ABLATION=stages12",
        f"RUNS={runs}",
        f"DATA={data}",
        f"ARGS=--handoff.save_to={tmp_path}/skipped3",
    )
    before, after = (
        load_file(run / "stage2" / "handoff.safetensors"),
        load_file(tmp_path / "skipped3" / "handoff.safetensors"),
    )
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    assert (
        json.loads((run / "stage2" / "config.json").read_text())["config"]
        == json.loads((tmp_path / "skipped3" / "config.json").read_text())["config"]
    )
