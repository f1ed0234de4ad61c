"""One seed per run and intervals over seeds: the `seed_everything` link of `llamo fit`, the `--gen_seeds`
aggregation of `llamo eval run`, and the ablation report's mean ± interval over training seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.cli import LightningArgumentParser

from llamo.stages.cli import _cli_kwargs, _ParseOnlyCLI, explicit_seeds, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
STAGES = {
    "vae": [EXP / "base.yaml", EXP / "vae.yaml"],
    "evaluator": [EXP / "base.yaml", EXP / "evaluator.yaml"],
    "stage2": [EXP / "base.yaml", EXP / "model" / "tiny.yaml", EXP / "stage2.yaml"],
}


def _configs(stage: str) -> list[str]:
    return [a for p in STAGES[stage] for a in ("--config", str(p))]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_seed_everything_sets_the_model_and_data_seeds(stage: str) -> None:
    cfg = parse_config([*_configs(stage), "--seed_everything", "7"])
    assert (cfg["seed_everything"], cfg["model"]["init_args"]["seed"], cfg["data"]["init_args"]["seed"]) == (7, 7, 7)


class _Unlinked(_ParseOnlyCLI):
    """The parser as it was before the link: no `seed_everything` -> model/data seed."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from callbacks.handoff import StageHandoff
        from callbacks.progress import LogProgress

        parser.add_lightning_class_args(StageHandoff, "handoff")
        parser.add_lightning_class_args(LogProgress, "progress")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = parser.parse_args(args)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_default_seed_resolves_to_the_unlinked_configuration(stage: str) -> None:
    # training is a function of the resolved configuration: equal configurations train the same weights, so the
    # default seed reproduces the runs trained before the link bit for bit
    linked = parse_config(_configs(stage))
    before = _Unlinked(**_cli_kwargs(), args=_configs(stage), run=False).config.as_dict()
    assert linked == before
    assert linked["model"]["init_args"]["seed"] == linked["data"]["init_args"]["seed"] == 0


def test_a_model_seed_that_disagrees_is_an_error_naming_seed_everything(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config([*_configs("vae"), "--model.init_args.seed=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.init_args.seed=1" in err and "--seed_everything 1" in err


def test_a_stage_seed_equal_to_seed_everything_is_accepted() -> None:
    # a saved config.yaml of a run (which records the linked seeds) composes again
    cfg = parse_config([*_configs("vae"), "--seed_everything=3", "--data.init_args.seed", "3"])
    assert cfg["data"]["init_args"]["seed"] == 3


def test_explicit_seeds_reads_flags_and_config_files(tmp_path: Path) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text("data:\n  init_args:\n    seed: 5\n")
    found = explicit_seeds(["--model.seed", "2", "--config", str(overlay), "--trainer.max_steps=3"])
    assert found == [("the command line", "model.init_args.seed", 2), (str(overlay), "data.init_args.seed", 5)]


def test_no_experiment_yaml_sets_a_stage_seed_itself() -> None:
    # a YAML seed would conflict with every --seed_everything but its own value
    offenders = [str(p) for p in EXP.rglob("*.yaml") if explicit_seeds(["--config", str(p)])]
    assert offenders == []


def test_a_random_seed_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_config([*_configs("vae"), "--seed_everything=true"])
    assert "--seed_everything must be an integer" in capsys.readouterr().err
