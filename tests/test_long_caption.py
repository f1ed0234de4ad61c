"""Captioning a clip longer than the run's training motion: windows of the trained length, said out loud.

The real AMASS clip of ``../shared/data/real272`` has 1,287 frames; the LLaMo stages train on at most 75 latents =
300 frames. Captioned whole, its prompt is out of distribution (a trained SmolLM2 run answered with generic chat
text); `LLaMoRun.caption` and `llamo caption` caption it in windows of at most the trained length instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_generation import _write_run
from tiny_llamo import stage_args, stage_workspace

from llamo.cli import main as llamo_main
from llamo.inference.run import LongMotionWarning, MotionLimit, load_run, training_motion_limit
from llamo.inference.text import plan_windows
from llamo.stages.cli import cli_main

#: the real clip's windows at the default training length (75 latents): 1287 frames -> 321 latents (3 frames
#: dropped, as for any clip not a multiple of 4) -> 5 near-equal windows of 65/64/64/64/64 latents
REAL_WINDOWS = [(0, 260), (260, 516), (516, 772), (772, 1028), (1028, 1284)]


def test_plan_windows_is_near_equal_and_covers_every_latent() -> None:
    assert plan_windows(75, 75) == [(0, 75)]
    assert plan_windows(76, 75) == [(0, 38), (38, 76)]  # not 75 + 1: a one-latent window says nothing
    assert plan_windows(321, 75) == [(s // 4, e // 4) for s, e in REAL_WINDOWS]
    for n, w in [(1, 1), (7, 3), (300, 75), (301, 20)]:
        bounds = plan_windows(n, w)
        sizes = [e - s for s, e in bounds]
        assert bounds[0][0] == 0 and bounds[-1][1] == n and max(sizes) <= w and max(sizes) - min(sizes) <= 1
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert plan_windows(0, 75) == []
    with pytest.raises(ValueError, match="window_latents must be >= 1"):
        plan_windows(10, 0)


def _write_fit_config(stage_dir: Path, max_latents: int = 75, max_frames: int = 300) -> Path:
    """The part of the config.yaml `llamo fit` saves that the limit is derived from."""
    path = stage_dir / "config.yaml"
    data = {"class_path": "llamo.data.llamo_data.LLaMoDataModule"}
    data["init_args"] = {"max_latents": max_latents, "max_frames": max_frames, "batch_size": 8}
    path.write_text(yaml.safe_dump({"data": data, "trainer": {"max_steps": 5}}))
    return path


def test_training_motion_limit_sources(tmp_path: Path) -> None:
    stage = tmp_path / "stage1"
    stage.mkdir()
    assert training_motion_limit(stage, 4) is None  # records nothing: the caller says so
    config_yaml = _write_fit_config(stage, max_latents=75, max_frames=200)
    limit = training_motion_limit(stage, 4)
    assert limit == MotionLimit(50, 4, f"{config_yaml} data.init_args: max_latents=75, max_frames=200")
    assert limit.frames == 200  # the cache held only 200 frames: that, not max_latents, is the limit
    # the stage's own record (config.json, written at fit end) wins over the derived one
    (stage / "config.json").write_text(json.dumps({"training_motion": {"max_latents": 30, "max_frames": 300}}))
    assert training_motion_limit(stage, 4).latents == 30
    (stage / "config.json").write_text(json.dumps({"training_motion": {"max_latents": 0, "max_frames": 300}}))
    with pytest.raises(ValueError, match="max_latents=0 .* must be positive integers"):
        training_motion_limit(stage, 4)


@pytest.fixture(scope="module")
def real_features(real272_dir: Path) -> np.ndarray:
    features = np.load(real272_dir / "clip_000000_272.npy").astype(np.float32)
    assert features.shape == (1287, 272)
    return features


@pytest.fixture
def tiny_run(tmp_path: Path, real272_dir: Path) -> Path:
    """A tiny random run (the generation tests' one) normalised with the real clip's HumanML3D-272 Mean/Std and
    a config.yaml recording the default training length (75 latents, 300 frames)."""
    run, *_ = _write_run(tmp_path)
    for name in ("Mean.npy", "Std.npy"):
        (run / "vae" / name).write_bytes((real272_dir / name).read_bytes())
    _write_fit_config(run / "stage1")
    return run


def test_real_long_clip_is_captioned_in_trained_length_windows(
    tiny_run: Path, real_features: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    run = load_run(tiny_run)
    assert run.motion_limit is not None and run.motion_limit.frames == 300
    assert "config.yaml data.init_args" in run.motion_limit.source

    with pytest.warns(LongMotionWarning, match=r"1287-frame clip captioned in 5 windows of at most 300 frames"):
        windows = run.caption_windows(real_features, max_new_tokens=3)
    assert [(w.start_frame, w.end_frame) for w in windows] == REAL_WINDOWS
    assert [(w.start_latent, w.end_latent) for w in windows] == [(s // 4, e // 4) for s, e in REAL_WINDOWS]
    # each window is captioned from its own frames, as a clip of that length on its own
    alone = run.caption(real_features[260:516], max_new_tokens=3)
    assert windows[1].text == alone

    with pytest.warns(LongMotionWarning):
        text = run.caption(real_features, max_new_tokens=3)
    assert text.splitlines() == [f"frames {s}-{e}: {w.text}" for (s, e), w in zip(REAL_WINDOWS, windows)]

    # the first 200 frames fit: one plain caption, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", LongMotionWarning)
        short = run.caption(real_features[:200], max_new_tokens=3)
    assert "\n" not in short and not short.startswith("frames ")

    # a shorter window on request
    with pytest.warns(LongMotionWarning, match="window_frames"):
        assert len(run.caption_windows(real_features, window_frames=400, max_new_tokens=1)) == 4
    with pytest.raises(ValueError, match=r"window_frames \(--window_frames\) must be a positive multiple of 4"):
        run.caption(real_features, window_frames=301)

    # the CLI prints the same text, and says on stderr why and which windows
    clip = tiny_run.parent / "clip.npy"
    np.save(clip, real_features)
    capsys.readouterr()
    assert llamo_main(["caption", "--ckpt", str(tiny_run), str(clip), "--max_new_tokens", "3"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == text
    assert "1287-frame clip captioned in 5 windows of at most 300 frames (75 latents; from " in printed.err
    assert "0-260, 260-516, 516-772, 772-1028, 1028-1284" in printed.err
    assert llamo_main(["caption", "--ckpt", str(tiny_run), str(clip), "--window_frames", "301"]) == 2
    assert "--window_frames) must be a positive multiple of 4 frames (one latent), got 301" in capsys.readouterr().err


def test_run_without_a_recorded_length_says_so(
    tmp_path: Path, real_features: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, *_ = _write_run(tmp_path)  # no config.yaml, no training_motion: nothing to window by
    run = load_run(run_dir)
    assert run.motion_limit is None
    with pytest.warns(LongMotionWarning, match=r"records no training motion length .* pass window_frames="):
        assert len(run.caption_windows(real_features[:40], max_new_tokens=1)) == 1
    clip = tmp_path / "clip.npy"
    np.save(clip, real_features[:40])
    assert llamo_main(["caption", "--ckpt", str(run_dir), str(clip), "--max_new_tokens", "1"]) == 0
    assert "--window_frames, e.g. 300" in capsys.readouterr().err


def test_fit_records_the_training_length_and_load_run_windows_by_it(tmp_path: Path, real_features: np.ndarray) -> None:
    """A real (tiny) stage-1 `llamo fit` writes ``training_motion`` into its handoff; `load_run` windows by it."""
    ws = stage_workspace(tmp_path)
    cli_main(stage_args(ws, 1, "s1", "--data.init_args.max_latents=20", steps=1))
    handoff = ws["root"] / "s1" / "handoff"
    meta = json.loads((handoff / "config.json").read_text())
    assert meta["training_motion"] == {"max_latents": 20, "max_frames": 300}
    run = tmp_path / "run"
    run.mkdir()
    (run / "vae").symlink_to(ws["vae"])
    (run / "stage1").symlink_to(handoff)
    loaded = load_run(run, mean_std=ws["data"] / "mean_std")
    assert loaded.motion_limit is not None and loaded.motion_limit.latents == 20
    assert loaded.motion_limit.source.endswith("config.json training_motion: max_latents=20, max_frames=300")
    with pytest.warns(LongMotionWarning, match="17 windows of at most 80 frames"):
        windows = loaded.caption_windows(real_features, max_new_tokens=1)
    assert len(windows) == 17 and windows[-1].end_frame == 1284  # 321 latents / 20 -> 17 windows
