"""Progress in logs: `LogProgress` lines during fit (step, loss, steps/s, ETA) and its summary, `progress` (tqdm
as plain lines off a terminal) and the per-table lines of `llamo eval run`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ProgressBar
from tiny_llamo import stage_args, stage_workspace

from callbacks.progress import LogProgress, format_duration
from llamo.eval.settings import Section, timed
from llamo.progress import progress
from llamo.stages.cli import cli_main

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(
    r"^\[toy\] step (\d+)/6 \(\d+%\)  loss (\d+\.\d{4})  \d+\.\d\d steps/s  elapsed \S+  ETA (\S+)$", re.M
)


def _toy_args(tmp: Path, *extra: str) -> list[str]:
    """`llamo fit` of the toy stage of test_stage_cli: 6 steps of a linear regression, no logger."""
    return [
        "fit",
        "--model=test_stage_cli.ToyStage",
        "--data=test_stage_cli.ToyData",
        "--trainer.max_steps=6",
        "--trainer.logger=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp}",
        "--seed_everything=0",
        *extra,
    ]


def _progress(cli) -> LogProgress:  # noqa: ANN001
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, LogProgress))


def test_every_n_steps_lines_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--progress.every_n_steps=2", "--progress.interval_s=null", "--progress.when=always"]
    cli = cli_main(_toy_args(tmp_path, *args))
    out = capsys.readouterr().out
    lines = LINE.findall(out)
    assert [int(step) for step, _, _ in lines] == [2, 4, 6], out
    assert all(re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm", eta) for _, _, eta in lines[:2]), lines
    assert lines[-1][2] == "0s"  # nothing left at the last step
    # the printed loss is the step's loss: the toy regression's loss falls under SGD
    losses = [float(loss) for _, loss, _ in lines]
    assert losses[0] > losses[-1] > 0
    assert "[toy] fit: from step 0/6" in out
    summary = re.search(
        r"^\[toy\] fit done: 6 steps in \S+ \((\d+\.\d) s, \d+\.\d\d steps/s\), last loss (\S+)$", out, re.M
    )
    assert summary is not None, out
    assert summary.group(2) == lines[-1][1]
    assert _progress(cli).every_n_steps == 2


def test_interval_lines_and_never(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # an interval shorter than any step: one line per step
    cli_main(_toy_args(tmp_path / "a", "--progress.interval_s=1e-9", "--progress.when=always"))
    assert [int(s) for s, _, _ in LINE.findall(capsys.readouterr().out)] == [1, 2, 3, 4, 5, 6]
    # a long interval: no step line in a 6-step run, only the start and the summary
    cli_main(_toy_args(tmp_path / "b", "--progress.interval_s=3600", "--progress.when=always"))
    out = capsys.readouterr().out
    assert not LINE.findall(out) and "[toy] fit done: 6 steps" in out
    cli_main(_toy_args(tmp_path / "c", "--progress.every_n_steps=1", "--progress.when=never"))
    assert "[toy]" not in capsys.readouterr().out


def test_auto_follows_stdout_and_hides_the_bar_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest's captured stdout/stderr are not terminals: `auto` prints and the Lightning bar is switched off
    cli = cli_main(_toy_args(tmp_path / "a", "--progress.every_n_steps=3", "--trainer.enable_progress_bar=true"))
    assert [int(s) for s, _, _ in LINE.findall(capsys.readouterr().out)] == [3, 6]
    bar = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressBar))
    assert bar.is_disabled
    # on a terminal `auto` stays quiet and the bar stays on
    monkeypatch.setattr("callbacks.progress.is_tty", lambda stream: True)
    cli = cli_main(_toy_args(tmp_path / "b", "--progress.every_n_steps=3", "--trainer.enable_progress_bar=true"))
    assert "[toy]" not in capsys.readouterr().out
    assert not next(cb for cb in cli.trainer.callbacks if isinstance(cb, ProgressBar)).is_disabled


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"progress.interval_s must be > 0 seconds"):
        LogProgress(interval_s=0)
    with pytest.raises(ValueError, match=r"progress.every_n_steps must be a positive integer"):
        LogProgress(every_n_steps=0)
    assert [format_duration(s) for s in (4.4, 292, 3720)] == ["4s", "4m52s", "1h02m"]


def test_llamo_fit_subprocess_writes_progress_lines_to_a_log(tmp_path: Path) -> None:
    """A tiny LLaMo stage-1 `llamo fit` with experiments/base.yaml, stdout and stderr captured (not a terminal)."""
    ws = stage_workspace(tmp_path)
    args = stage_args(ws, 1, "s1", "--progress.every_n_steps=2", "--trainer.enable_progress_bar=true", steps=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "llamo", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"^\[stage1\] step (\d)/4 \(\d+%\)  loss \d+\.\d{4}  .* ETA \S+$", proc.stdout, re.M)
    assert steps == ["2", "4"], proc.stdout
    assert re.search(r"^\[stage1\] fit done: 4 steps in \S+ \(\d+\.\d s", proc.stdout, re.M), proc.stdout
    # the bar was switched off: no carriage-return redraws in the log
    assert "\r" not in proc.stdout + proc.stderr


def test_progress_writes_plain_lines_off_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMO_PROGRESS_INTERVAL", "1e-9")  # every update is due
    for _ in progress(range(3), desc="caption test motions", unit="clip"):
        pass
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "\r" not in captured.out and captured.err == ""
    assert lines[0].startswith("caption test motions:   0%") and len(lines) >= 2
    assert re.match(r"caption test motions: 100%\|#+\| 3/3 \[\d\d:\d\d<00:00, ", lines[-1]), lines
    monkeypatch.setenv("LLAMO_PROGRESS_INTERVAL", "3600")  # only the first and the final state
    for _ in progress(range(50), desc="x"):
        pass
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setenv("LLAMO_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match=r"\$LLAMO_PROGRESS_INTERVAL must be a number of seconds > 0, got 'soon'"):
        progress(range(2))


def test_eval_tables_print_their_wall_time(capsys: pytest.CaptureFixture[str]) -> None:
    section = Section("t2m", "Table 3 — text-to-motion")
    with timed(section):
        pass
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "eval: Table 3 — text-to-motion ...",
        f"eval: Table 3 — text-to-motion: done in {section.seconds:.1f} s",
    ]
