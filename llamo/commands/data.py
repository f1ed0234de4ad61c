"""``llamo data synth|check``, ``llamo render`` and ``llamo prepare-llm``: data, pictures and the packaged LLM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from llamo.core.llm import SMOLLM2, prepare_smollm2, smollm2_dir
from llamo.data.check import scan_dataset
from llamo.data.humanml272 import parse_captions
from llamo.motion.normalization import Normalizer
from llamo.motion.render import render_motion
from llamo.motion.representation import FEATURE_DIM
from llamo.motion.synthetic import FPS, synthesize

__all__ = ["check", "prepare_llm", "render", "synth"]


def synth(*, out: Path, clips: int = 2000, seed: int = 0, overwrite: bool = False, progress: bool = True) -> int:
    """Write the embedded procedural motion-caption corpus (HumanML3D-272 layout).

    Prints a summary of what was written: clips, frames, hours, splits and action families.

    Args:
        out: Output folder (HumanML3D-272 layout).
        clips: Number of clips.
        seed: Random seed; the same seed writes identical files.
        overwrite: Replace a corpus already in --out.
        progress: Show a progress bar.
    """
    torch.set_num_threads(1)  # tiny per-clip tensors: threads only add overhead
    summary = synthesize(out, clips, seed, progress=progress, overwrite=overwrite)
    print(
        f"wrote {summary.clips} clips ({summary.frames} frames, {summary.hours:.2f} h at {FPS} fps) to "
        f"{summary.out_dir} in {summary.seconds:.1f} s"
    )
    print("splits: " + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
    print("actions per family: " + ", ".join(f"{k} {v}" for k, v in summary.families.items()))
    return 0


def check(root: Path, /, *, min_length: int = 40, progress: bool = True) -> int:
    """Report every problem of a HumanML3D-272 style folder; exit status 1 when there is any.

    Args:
        root: Data folder (HumanML3D-272 / MotionMillion / llamo synth layout).
        min_length: Shortest valid clip in frames.
        progress: Show a progress bar.
    """
    report = scan_dataset(root, min_length=min_length, progress=progress)
    print(f"data folder: {report.root}")
    if report.motion_dir is not None:
        print(f"motion: {report.motion_dir}   mean/std: {report.mean_std_dir or 'MISSING'}")
    if report.splits:
        header = (
            f"{'split':<28} {'entries':>8} {'valid':>8} {'frames':>10} {'hours':>7} {'min':>5} {'max':>5} "
            f"{'captions':>9} {'problems':>9}"
        )
        print(header)
        print("-" * len(header))
        for s in report.splits.values():
            shortest = s.min_length if s.min_length is not None else "-"
            longest = s.max_length if s.max_length is not None else "-"
            print(
                f"{s.name:<28} {s.entries:>8} {s.valid:>8} {s.frames:>10} {s.frames / 30 / 3600:>7.2f} "
                f"{shortest:>5} {longest:>5} {s.captions:>9} {s.problems:>9}"
            )
    if not report.problems:
        print("no problems found")
        return 0
    kinds = Counter(p.kind for p in report.problems)
    print(f"\n{len(report.problems)} problem(s): " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    for problem in report.problems:
        print(f"  [{problem.kind}] {problem}")
    return 1


def render(
    clip: Path,
    /,
    *,
    out: Path,
    normalized: bool = False,
    mean_std: Path | None = None,
    caption: str | None = None,
    texts: Path | None = None,
    fps: float = 30.0,
    frame_step: int = 2,
    panels: int = 8,
) -> int:
    """Draw a 272-dim clip as gif/mp4/png filmstrip.

    The skeleton with the ground plane, the root trajectory and the caption as its title; prints
    ``wrote PATH (T frames, S s)``.

    Args:
        clip: A (T, 272) .npy clip.
        out: Output .gif, .mp4 (needs ffmpeg) or .png filmstrip.
        normalized: The clip is normalised (needs --mean_std).
        mean_std: Folder with Mean.npy/Std.npy for --normalized.
        caption: Title text.
        texts: HumanML3D caption file; its first caption is the title (instead of --caption).
        fps: Frame rate of the clip.
        frame_step: Draw every n-th frame.
        panels: Frames in a .png filmstrip.
    """
    if normalized != (mean_std is not None):
        raise ValueError("--normalized and --mean-std DIR go together (normalised clips need the Mean/Std folder)")
    if caption is not None and texts is not None:
        raise ValueError("pass either --caption TEXT or --texts FILE, not both")
    if not clip.is_file():
        raise FileNotFoundError(f"clip {clip} not found")
    features = np.load(clip)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"clip {clip} has shape {features.shape}, expected (T, {FEATURE_DIM})")
    if texts is not None:
        entries, problems = parse_captions(texts)
        if not entries:
            error = problems[0].error()
            raise type(error)(f"--texts {error}")
        caption = entries[0][0]
    written = render_motion(
        features,
        out,
        caption=caption,
        normalizer=Normalizer.load(mean_std) if normalized else None,
        fps=fps,
        frame_step=frame_step,
        panels=panels,
    )
    print(f"wrote {written} ({len(features)} frames, {len(features) / fps:.1f} s)")
    return 0


def prepare_llm(*, out: Path | None = None, force: bool = False) -> int:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a cached HF folder.

    Prints where the folder is; a prepared folder is reused unless --force.

    Args:
        out: Output folder (default: ``$LLAMO_CACHE/smollm2-135m-instruct``, ``$LLAMO_CACHE`` defaulting to
            ``~/.cache/llamo``).
        force: Convert again even if the folder is already prepared.
    """
    folder = prepare_smollm2(out, force=force)
    print(f"SmolLM2-135M-Instruct (HF format): {folder}")
    if out is not None and out != smollm2_dir():
        print(f"use it with `path: {folder}` in the model YAML (`path: {SMOLLM2}` reads {smollm2_dir()})")
    return 0
