"""The Makefile's ablation plumbing: which stages an ablation reuses from the demo run, and the linking itself; the
demo's sweep grid.

`make` runs with ``-o install`` (the environment is already set up) and ``LLAMO="echo FIT"`` so that a stage that
would train prints its command instead of training.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from make_args import NO_INSTALL

from llamo.eval.ablations import summary_row
from llamo.eval.report import training_wall_times
from llamo.eval.sweep import SweepSettings, sweep_grid

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make(*args: str) -> str:
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", *NO_INSTALL, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _reused(ablation: str, stages: str = "vae evaluator 1 2 3") -> set[str]:
    probe = f"probe: ; @echo $(foreach s,{stages},$(if $(call reusable,$(s)),$(s)))"
    out = _make("--eval", probe, "probe", f"ABLATION={ablation}", "REUSE=runs/demo")
    return set(out.split())


@pytest.mark.parametrize(
    ("ablation", "expected"),
    [
        ("only_stage1", {"vae", "evaluator", "1"}),  # stages 2 and 3 have overlays (max_steps 0)
        ("stages12", {"vae", "evaluator", "1", "2"}),
        ("no_mot", {"vae", "evaluator"}),  # every LLaMo stage changes
        ("vae_predicted", {"evaluator"}),  # the VAE changes, so everything downstream of it does
        ("latent16", {"evaluator"}),
        ("latent64", {"evaluator"}),
    ],
)
def test_ablation_reuses_exactly_the_unchanged_stages(ablation: str, expected: set[str]) -> None:
    assert _reused(ablation) == expected


def test_no_reuse_without_a_reference_run() -> None:
    probe = "probe: ; @echo [$(strip $(foreach s,vae evaluator 1 2 3,$(call reusable,$(s))))]"
    assert _make("--eval", probe, "probe", "ABLATION=only_stage1", "REUSE=").strip() == "[]"


def test_stage_links_the_reference_output_or_trains(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for stage in ("vae", "evaluator", "stage1"):
        (runs / "demo" / stage).mkdir(parents=True)
        (runs / "demo" / stage / "config.yaml").write_text("seed_everything: 0\ntrainer:\n  max_steps: 5\n")
        (runs / "demo" / stage / "handoff.safetensors").write_bytes(b"")
    common = [f"RUNS={runs}", "EXP=ablate-t", "ABLATION=stages12", f"REUSE={runs}/demo", "LLAMO=echo FIT"]

    out = _make("stage-vae", *common)
    link = runs / "ablate-t" / "vae"
    assert "FIT" not in out and "linked" in out
    assert link.is_symlink() and Path(link.readlink()) == Path("../demo/vae")
    _make("stage-1", *common)
    times = training_wall_times(runs / "ablate-t")
    assert set(times) == {"vae", "stage1"} and all("reused_from" in v for v in times.values())

    # stage 2 is reusable for stages12, but the reference has no stage2 output: it trains
    out = _make("stage-2", *common)
    assert out.startswith("FIT fit ") and f"--handoff.save_to={runs}/ablate-t/stage2" in out
    # stage 3 has an overlay in stages12: it trains even though it could be linked
    out = _make("stage-3", *common)
    assert "FIT fit " in out and "experiments/ablations/stages12/stage3.yaml" in out

    # a reused stage that is later trained again loses its link first (training never writes into the reference)
    out = _make("stage-vae", *common[:-2], "REUSE=", "LLAMO=echo FIT")
    assert "FIT fit " in out and not link.exists() and (runs / "demo" / "vae" / "handoff.safetensors").is_file()

    # the reference is never linked to itself
    out = _make("stage-vae", f"RUNS={runs}", "EXP=demo", f"REUSE={runs}/demo", "LLAMO=echo FIT")
    assert "FIT fit " in out and not (runs / "demo" / "vae").is_symlink()


def test_summary_row_counts_only_trained_stages(tmp_path: Path) -> None:
    import os

    for stage, seconds in (("vae", 40.0), ("stage1", 10.0)):
        (tmp_path / "ref" / stage).mkdir(parents=True)
        for name, stamp in (("config.yaml", 1000.0), ("handoff.safetensors", 1000.0 + seconds)):
            (tmp_path / "ref" / stage / name).write_text("trainer:\n  max_steps: 3\n")
            os.utime(tmp_path / "ref" / stage / name, (stamp, stamp))
    run = tmp_path / "run"
    run.mkdir()
    (run / "vae").symlink_to("../ref/vae")
    shutil.copytree(tmp_path / "ref" / "stage1", run / "stage1")
    for name, stamp in (("config.yaml", 1000.0), ("handoff.safetensors", 1010.0)):
        os.utime(run / "stage1" / name, (stamp, stamp))
    training = training_wall_times(run)
    assert training["vae"] == {"seconds": 40.0, "max_steps": 3, "reused_from": str(tmp_path / "ref" / "vae")}
    assert "reused_from" not in training["stage1"]
    tables = {k: {"skipped": "x", "rows": []} for k in ("reconstruction", "t2m", "m2t", "language", "samples")}
    row = summary_row({"run": str(run), "tables": tables, "training": training, "seconds": 1.0})
    assert row["train s"] == 10.0 and row["reused"] == ["vae"]


def test_llamo_stages_preview_with_the_runs_evaluator_once_it_exists(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    common = [f"RUNS={runs}", "EXP=mine", "LLAMO=echo FIT"]
    flag = f"--previews.evaluator={runs}/mine/evaluator"
    assert flag not in _make("stage-2", *common)  # no evaluator trained yet: no R@3 previews
    (runs / "mine" / "evaluator").mkdir(parents=True)
    (runs / "mine" / "evaluator" / "handoff.safetensors").write_bytes(b"")
    assert flag in _make("stage-2", *common)
    assert "--previews.evaluator" not in _make("stage-evaluator", *common)  # only the LLaMo stages preview
    assert "--previews.evaluator" not in _make("stage-2", *common, "PREVIEW_EVALUATOR=")
    # the demo's budget leaves it off; an explicit folder still wins
    assert "--previews.evaluator" not in _make("stage-2", *common, "OVERLAYS=experiments/demo")
    # (even one without a handoff: the callback then names the bad folder instead of R@3 silently going missing)
    out = _make("stage-2", *common, "OVERLAYS=experiments/demo", f"PREVIEW_EVALUATOR={tmp_path}/ms")
    assert f"--previews.evaluator={tmp_path}/ms" in out


@pytest.mark.parametrize(("scale", "settings"), [("full", 8), ("smoke", 2)])
def test_demo_sweep_arguments_are_a_valid_grid(scale: str, settings: int) -> None:
    # the shell drops the quotes as it does in the recipe; every flag takes one YAML value
    words = shlex.split(_make("--eval", f"probe: ; @echo $(demo_sweep_{scale})", "probe"))
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), words
    flags = {k[2:]: yaml.safe_load(v) for k, v in zip(words[::2], words[1::2])}
    grid = sweep_grid(SweepSettings(**flags))
    assert len(grid) == settings and grid[0] == (1.0, "null", flags["steps"][0], 1.0)
    if scale == "full":  # the demo also sweeps a lower noise temperature at every scale
        assert {t for *_, t in grid} == {1.0, 0.5}
