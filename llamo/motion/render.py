"""Draw a 272-dim clip: skeleton, ground plane, root trajectory and caption, as gif / mp4 / png filmstrip.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display needed). ``llamo render`` is the CLI.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D
from tqdm.auto import tqdm

from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM, recover_joints
from llamo.motion.skeleton import KINEMATIC_CHAINS

SUFFIXES = (".gif", ".mp4", ".png")
#: chain colours in KINEMATIC_CHAINS order: right leg, left leg, spine, right arm, left arm (right = red)
_CHAIN_COLOURS = ("#d62728", "#1f77b4", "#333333", "#ff7f0e", "#17becf")
#: half-width (m) of the box around the pelvis that each view shows
_VIEW_RADIUS = 1.0
#: ground grid spacing (m)
_GRID = 0.5


def _to_plot(points: np.ndarray) -> np.ndarray:
    """Motion coordinates (x left, y up, z forward) -> matplotlib 3D (X, Y, Z=up) by a proper rotation (x, -z, y).

    A rotation, not an axis swap, so left and right are not mirrored on screen; matplotlib's default camera
    (azimuth -60) then sees the front of a body that faces +z.
    """
    return np.stack((points[..., 0], -points[..., 2], points[..., 1]), axis=-1)


def _joints_from_features(features: np.ndarray | torch.Tensor, normalizer: Normalizer | None) -> np.ndarray:
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM or x.shape[0] < 1:
        raise ValueError(f"render_motion expects one clip of features (T, {FEATURE_DIM}), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("render_motion got NaN/Inf features; check the clip (llamo data check)")
    x = x.astype(np.float64)
    if normalizer is not None:
        x = normalizer.denormalise(x)
    return recover_joints(x)  # (T, 22, 3)


class _SkeletonView:
    """One 3D axes following the pelvis: skeleton, a ground grid fixed in the world, the root trajectory."""

    def __init__(self, ax: Axes3D, joints: np.ndarray) -> None:
        self.ax = ax
        self.joints = _to_plot(joints)  # (T, 22, 3) plot coordinates
        self.height = max(float(self.joints[..., 2].max()), 1.0) + 0.1
        num_lines = int(2 * _VIEW_RADIUS / _GRID) + 2
        grid_style = {"color": "#bbbbbb", "linewidth": 0.6}
        self.grid_x = [ax.plot([], [], [], **grid_style)[0] for _ in range(num_lines)]
        self.grid_y = [ax.plot([], [], [], **grid_style)[0] for _ in range(num_lines)]
        self.trajectory = ax.plot([], [], [], color="#2ca02c", linewidth=1.2, alpha=0.8)[0]
        self.marker = ax.plot([], [], [], "o", color="#2ca02c", markersize=3)[0]
        self.bones = [
            ax.plot([], [], [], color=colour, linewidth=2.2, marker="o", markersize=1.5)[0]
            for colour in _CHAIN_COLOURS[: len(KINEMATIC_CHAINS)]
        ]
        ax.set_box_aspect((1.0, 1.0, self.height / (2 * _VIEW_RADIUS)), zoom=1.25)
        ax.view_init(elev=15, azim=-60)
        ax.set_axis_off()

    def show(self, frame: int) -> list:
        pose = self.joints[frame]
        for line, chain in zip(self.bones, KINEMATIC_CHAINS):
            line.set_data_3d(pose[list(chain), 0], pose[list(chain), 1], pose[list(chain), 2])
        # follow the pelvis so long walks keep the body large; 3D axes do not clip, so the ground grid and the
        # trajectory are cut to the view box by hand (grid lines snap to world multiples of _GRID)
        centre = pose[0, :2]
        lo, hi = centre - _VIEW_RADIUS, centre + _VIEW_RADIUS
        xs = np.arange(np.ceil(lo[0] / _GRID), np.floor(hi[0] / _GRID) + 1) * _GRID
        ys = np.arange(np.ceil(lo[1] / _GRID), np.floor(hi[1] / _GRID) + 1) * _GRID
        for i, line in enumerate(self.grid_x):
            line.set_data_3d(*(([xs[i]] * 2, [lo[1], hi[1]], [0, 0]) if i < len(xs) else ([], [], [])))
        for i, line in enumerate(self.grid_y):
            line.set_data_3d(*(([lo[0], hi[0]], [ys[i]] * 2, [0, 0]) if i < len(ys) else ([], [], [])))
        root = self.joints[:, 0, :2].copy()
        root[(np.abs(root - centre) > _VIEW_RADIUS).any(axis=-1)] = np.nan
        self.trajectory.set_data_3d(root[:, 0], root[:, 1], np.zeros(len(root)))
        self.marker.set_data_3d([pose[0, 0]], [pose[0, 1]], [0.0])
        self.ax.set_xlim(lo[0], hi[0])
        self.ax.set_ylim(lo[1], hi[1])
        self.ax.set_zlim(0.0, self.height)
        return [*self.bones, self.marker, self.trajectory, *self.grid_x, *self.grid_y]


def render_motion(
    features: np.ndarray | torch.Tensor,
    out: str | Path,
    caption: str | None = None,
    normalizer: Normalizer | None = None,
    fps: float = 30.0,
    *,
    frame_step: int = 2,
    panels: int = 8,
    progress: bool = True,
) -> Path:
    """Render one clip and return the written path.

    Args:
        features: (T, 272) features, UN-normalised unless ``normalizer`` is given.
        out: ``.gif`` or ``.mp4`` (animation; mp4 needs ffmpeg) or ``.png`` (a filmstrip of ``panels`` frames).
        caption: title text (wrapped).
        normalizer: when given, ``features`` are normalised and are de-normalised with it first.
        fps: frame rate of the clip.
        frame_step: draw every n-th frame (the animation keeps real-time speed; 2 = 15 fps, half the cost).
        panels: number of evenly spaced frames in a png filmstrip.
        progress: show a progress bar while encoding an animation.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot render to {out}: the extension must be one of {', '.join(SUFFIXES)}")
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise ValueError(f"cannot write {out}: .mp4 needs ffmpeg on PATH; write a .gif or .png instead")
    if frame_step < 1 or panels < 1 or fps <= 0:
        raise ValueError(f"frame_step and panels must be >= 1 and fps > 0, got {frame_step}, {panels}, {fps}")
    joints = _joints_from_features(features, normalizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        _render_filmstrip(joints, out, caption, fps, panels)
    else:
        _render_animation(joints, out, caption, fps, frame_step, progress)
    return out


def _title_height(title: str | None) -> float:
    """Figure inches to reserve above the axes for a (wrapped) title."""
    return 0.0 if not title else 0.1 + 0.2 * (title.count("\n") + 1)


def _render_filmstrip(joints: np.ndarray, out: Path, caption: str | None, fps: float, panels: int) -> None:
    frames = np.unique(np.linspace(0, len(joints) - 1, panels).round().astype(int))
    title = textwrap.fill(caption, 30 * len(frames)) if caption else None
    title_height = _title_height(title)
    fig = Figure(figsize=(2.2 * len(frames), 2.8 + title_height), dpi=80)
    FigureCanvasAgg(fig)
    for i, frame in enumerate(frames):
        ax = fig.add_subplot(1, len(frames), i + 1, projection="3d")
        _SkeletonView(ax, joints).show(int(frame))
        ax.set_title(f"{frame / fps:.1f} s", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - (title_height + 0.2) / (2.8 + title_height), wspace=0)
    fig.savefig(out)


def _render_animation(
    joints: np.ndarray, out: Path, caption: str | None, fps: float, frame_step: int, progress: bool
) -> None:
    frames = list(range(0, len(joints), frame_step))
    title = textwrap.fill(caption, 48) if caption else None
    title_height = _title_height(title)
    fig = Figure(figsize=(4.0, 4.0 + title_height), dpi=72)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    view = _SkeletonView(ax, joints)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - title_height / (4.0 + title_height))
    animation = FuncAnimation(fig, view.show, frames=frames, blit=False)
    rate = fps / frame_step
    writer = PillowWriter(fps=rate) if out.suffix.lower() == ".gif" else FFMpegWriter(fps=rate)
    with tqdm(total=len(frames), desc=f"render {out.name}", unit="frame", disable=not progress) as bar:
        animation.save(str(out), writer=writer, progress_callback=lambda i, n: bar.update(1))
