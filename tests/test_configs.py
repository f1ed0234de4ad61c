"""Every YAML in experiments/ parses through LlamoCLI (`--print_config`), alone where it is a full stage file
and composed the way the Makefile composes it: base + model + stage [+ ablation] [+ strategy]."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from llamo.stages.cli import cli_main

EXP = Path(__file__).resolve().parents[1] / "experiments"
STRATEGIES = sorted((EXP / "strategies").glob("*.yaml"))
MODELS = sorted((EXP / "model").glob("*.yaml"))
LLAMO_STAGES = ["stage1", "stage2", "stage3"]
OTHER_STAGES = ["vae", "evaluator"]


def print_config(*configs: Path, extra: tuple[str, ...] = ()) -> dict:
    """Parse ``configs`` in order and return the resolved config printed by ``fit --print_config``."""
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], *extra, "--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        cli_main(args)
    assert stop.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


def stage_files(stage: str) -> list[Path]:
    return [EXP / "base.yaml", *([EXP / "model" / "tiny.yaml"] if stage in LLAMO_STAGES else []), EXP / f"{stage}.yaml"]


def test_every_yaml_is_covered() -> None:
    covered = {EXP / "base.yaml", *STRATEGIES, *MODELS, *[EXP / f"{s}.yaml" for s in LLAMO_STAGES + OTHER_STAGES]}
    covered |= set((EXP / "ablations").glob("*/*.yaml")) | set((EXP / "demo").glob("**/*.yaml"))
    covered |= set((EXP / "paper").glob("*.yaml"))  # parsed, composed, in tests/test_paper_recipe.py
    assert set(EXP.glob("**/*.yaml")) <= covered, sorted(set(EXP.glob("**/*.yaml")) - covered)


@pytest.mark.parametrize("strategy", [None, *STRATEGIES], ids=lambda p: "single" if p is None else p.stem)
@pytest.mark.parametrize("stage", LLAMO_STAGES + OTHER_STAGES)
def test_stage_times_strategy_parses(stage: str, strategy: Path | None) -> None:
    cfg = print_config(*stage_files(stage), *([strategy] if strategy else []))
    assert cfg["model"]["class_path"].startswith("llamo.stages.")
    if strategy is not None:
        wanted = yaml.safe_load(strategy.read_text())["trainer"]["strategy"]["class_path"]
        assert cfg["trainer"]["strategy"]["class_path"] == wanted


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.stem)
def test_every_model_size_composes_with_a_stage(model: Path) -> None:
    cfg = print_config(EXP / "base.yaml", model, EXP / "stage2.yaml")
    assert cfg["model"]["class_path"] == "llamo.stages.joint.JointStage"  # the stage file picks the class
    assert (
        cfg["model"]["init_args"]["core"]["llm"]
        == yaml.safe_load(model.read_text())["model"]["init_args"]["core"]["llm"]
        | cfg["model"]["init_args"]["core"]["llm"]
    )


def test_table1_defaults() -> None:
    rows = {s: print_config(*stage_files(s)) for s in LLAMO_STAGES}
    args = {s: rows[s]["model"]["init_args"] for s in LLAMO_STAGES}
    data = {s: rows[s]["data"]["init_args"] for s in LLAMO_STAGES}
    assert [args[s]["lr"] for s in LLAMO_STAGES] == [1e-4, 1e-4, 1e-5]
    assert [args[s]["backbone_schedule"] for s in LLAMO_STAGES[:2]] == ["constant", "cosine"]
    assert [args[s]["head_schedule"] for s in LLAMO_STAGES] == ["constant", "constant", "cosine"]
    assert [args[s]["lambda_ntp"] for s in LLAMO_STAGES] == [0.05, 0.05, 0.0]
    assert [args[s]["lambda_end"] for s in LLAMO_STAGES] == [1e-3, 1e-3, 1e-2]
    assert [data[s]["t2m_ratio"] for s in LLAMO_STAGES] == [0.5, 0.8, 1.0]
    assert [data[s]["expressive_only"] for s in LLAMO_STAGES] == [False, False, True]
    assert [rows[s]["trainer"]["max_steps"] for s in LLAMO_STAGES] == [100_000, 200_000, 50_000]


@pytest.mark.parametrize(
    "overlay", sorted((EXP / "ablations").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}-{p.stem}"
)
def test_ablation_overlays_parse_on_their_stage(overlay: Path) -> None:
    cfg = print_config(*stage_files(overlay.stem), overlay)
    assert cfg["model"]["class_path"].startswith("llamo.stages.")


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lr_typo: 1.0\n")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        cli_main(
            [
                "fit",
                "--config",
                str(EXP / "base.yaml"),
                "--config",
                str(EXP / "stage1.yaml"),
                "--config",
                str(EXP / "model" / "tiny.yaml"),
                "--config",
                str(bad),
                "--print_config",
            ]
        )
    assert "lr_typo" in err.getvalue()
