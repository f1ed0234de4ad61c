"""Rendering a 272-dim clip to gif / png filmstrip / mp4, and the `llamo render` command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llamo.cli import main
from llamo.motion.normalization import Normalizer
from llamo.motion.render import _joints_from_features, render_motion
from llamo.motion.representation import recover_joints


@pytest.fixture(scope="module")
def short_clip(real_clip: dict[str, np.ndarray]) -> np.ndarray:
    """12 frames of the real clip: enough to animate, cheap to draw."""
    return real_clip["features"][:12]


def test_render_gif(short_clip: np.ndarray, tmp_path: Path) -> None:
    out = render_motion(short_clip, tmp_path / "sub" / "clip.gif", caption="a person walks", frame_step=2)
    assert out == tmp_path / "sub" / "clip.gif" and out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "GIF" and image.n_frames == 6  # 12 frames, every 2nd
        assert image.size == (288, 288 + int(0.3 * 72))  # 4 in square at 72 dpi + one title line


def test_render_png_filmstrip(short_clip: np.ndarray, tmp_path: Path) -> None:
    out = render_motion(short_clip, tmp_path / "strip.png", caption=None, panels=4)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (int(2.2 * 4 * 80), int(2.8 * 80))
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 < pixels.max()  # something is drawn on the white background


def test_render_normalised_input(real_clip: dict[str, np.ndarray], short_clip: np.ndarray, tmp_path: Path) -> None:
    normalizer = Normalizer(real_clip["mean"], real_clip["std"])
    joints = _joints_from_features(normalizer.normalise(short_clip.astype(np.float64)), normalizer)
    np.testing.assert_allclose(joints, recover_joints(short_clip.astype(np.float64)), atol=1e-10)
    out = render_motion(normalizer.normalise(short_clip), tmp_path / "n.png", normalizer=normalizer, panels=2)
    assert out.stat().st_size > 0


def test_render_bad_inputs(short_clip: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"clip\.jpg: the extension must be one of \.gif, \.mp4, \.png"):
        render_motion(short_clip, tmp_path / "clip.jpg")
    with pytest.raises(ValueError, match=r"\(T, 272\), got shape \(12, 263\)"):
        render_motion(np.zeros((12, 263)), tmp_path / "clip.gif")
    bad = short_clip.copy()
    bad[3, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render_motion(bad, tmp_path / "clip.gif")
    with pytest.raises(ValueError, match="frame_step"):
        render_motion(short_clip, tmp_path / "clip.gif", frame_step=0)
    assert not list(tmp_path.iterdir())


def test_render_mp4_needs_ffmpeg(short_clip: np.ndarray, tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        with pytest.raises(ValueError, match="ffmpeg"):
            render_motion(short_clip, tmp_path / "clip.mp4")
    else:
        assert render_motion(short_clip, tmp_path / "clip.mp4", progress=False).stat().st_size > 0


def test_render_cli(real272_dir: Path, short_clip: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, short_clip)
    texts = tmp_path / "clip.txt"
    texts.write_text("\na man walks forward#a/DET man/NOUN#0.0#0.0\nsecond caption#x#0.0#0.0\n", encoding="utf-8")
    out = tmp_path / "clip.png"
    assert main(["render", str(clip), "--out", str(out), "--texts", str(texts), "--panels", "3"]) == 0
    assert out.is_file() and f"wrote {out} (12 frames, 0.4 s)" in capsys.readouterr().out

    normalizer = Normalizer.load(real272_dir)
    normalised = tmp_path / "normalised.npy"
    np.save(normalised, normalizer.normalise(short_clip))
    gif = tmp_path / "n.gif"
    args = ["render", str(normalised), "--out", str(gif), "--normalized", "--mean-std", str(real272_dir)]
    assert main([*args, "--caption", "walks", "--frame-step", "4"]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 3

    assert main(["render", str(normalised), "--out", str(gif), "--normalized"]) == 2
    assert "--normalized and --mean-std DIR go together" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "missing.npy"), "--out", str(gif)]) == 2
    assert "missing.npy not found" in capsys.readouterr().err
    assert main(["render", str(clip), "--out", str(gif), "--texts", str(tmp_path / "none.txt")]) == 2
    assert "--texts" in capsys.readouterr().err
