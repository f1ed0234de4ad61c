"""``llamo data check DIR``: every problem of a HumanML3D-272 style folder at once, plus a summary per split.

:func:`check_dataset` runs the same checks as :class:`~llamo.data.humanml272.MotionCorpus` (which stops at the
first bad clip) over every split file, and also looks for ids listed twice or in two splits and for bad Mean/Std.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from llamo.data.humanml272 import (
    DataProblem,
    find_layout,
    load_features,
    load_normalizer,
    parse_captions,
    read_split,
    sub_clip_span,
    too_short,
)


@dataclass
class SplitStats:
    """Summary of one split file."""

    name: str
    entries: int = 0
    valid: int = 0
    """entries with no problem"""
    frames: int = 0
    """frames of the valid clips"""
    min_length: int | None = None
    max_length: int | None = None
    captions: int = 0
    problems: int = 0


@dataclass
class DatasetReport:
    """What :func:`scan_dataset` found."""

    root: Path
    problems: list[DataProblem] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)
    motion_dir: Path | None = None
    mean_std_dir: Path | None = None


def scan_dataset(root: str | Path, min_length: int = 40, progress: bool = False) -> DatasetReport:
    """Check a data folder: layout, Mean/Std, every split file and every clip and caption file they list."""
    report = DatasetReport(root=Path(root))
    try:
        layout = find_layout(root)
    except FileNotFoundError as exc:
        report.problems.append(DataProblem(Path(root), "missing_folder", str(exc)))
        return report
    report.motion_dir, report.mean_std_dir = layout.motion_dir, layout.mean_std_dir
    try:
        load_normalizer(layout)
    except FileNotFoundError as exc:
        report.problems.append(DataProblem(layout.root / "mean_std", "missing_mean_std", str(exc)))
    except ValueError as exc:
        report.problems.append(DataProblem(layout.mean_std_dir or layout.root, "bad_mean_std", str(exc)))

    names = layout.split_names()
    if not names:
        report.problems.append(DataProblem(layout.split_dir, "missing_split", "no split files (expected "
                                           "split/train.txt, split/val.txt, split/test.txt)"))
    checked: dict[str, tuple[int | None, int, list[DataProblem]]] = {}  # id -> (frames, captions, problems)
    membership: dict[str, dict[str, str]] = {}  # id -> split family -> split
    for name in names:
        split_path = layout.split_path(name)
        stats = report.splits[name] = SplitStats(name)
        ids = read_split(split_path)
        stats.entries = len(ids)
        for clip_id, count in Counter(ids).items():
            if count > 1:
                report.problems.append(DataProblem(split_path, "duplicate_id", f"{clip_id} is listed {count} times"))
                stats.problems += 1
        for clip_id in tqdm(dict.fromkeys(ids), desc=f"check {name}", disable=not progress, unit="clip"):
            family = membership.setdefault(clip_id, {})
            other = family.get(_family(name))
            if other is not None:
                report.problems.append(DataProblem(split_path, "split_overlap", f"{clip_id} is also in split "
                                                   f"{other!r}; train/val/test must not share clips"))
                stats.problems += 1
            elif Path(name).name != "all":
                family[_family(name)] = name
            if clip_id not in checked:
                checked[clip_id] = _check_clip(layout.motion_path(clip_id), layout.text_path(clip_id), clip_id,
                                               min_length)
                report.problems.extend(checked[clip_id][2])
            frames, captions, problems = checked[clip_id]
            if problems:
                stats.problems += len(problems)
                continue
            assert frames is not None
            stats.valid += 1
            stats.frames += frames
            stats.captions += captions
            stats.min_length = frames if stats.min_length is None else min(stats.min_length, frames)
            stats.max_length = frames if stats.max_length is None else max(stats.max_length, frames)
    return report


def _family(split: str) -> str:
    """MotionMillion keeps several split families (``version1/t2m_60_300/*``, ``version1/tokenizer_96/*``, each
    with an ``all.txt``): only the splits of one family must be disjoint."""
    return Path(split).parent.as_posix()


def _check_clip(motion_path: Path, text_path: Path, clip_id: str,
                min_length: int) -> tuple[int | None, int, list[DataProblem]]:
    problems: list[DataProblem] = []
    features, problem = load_features(motion_path)
    if problem is not None:
        problems.append(problem)
    entries, text_problems = parse_captions(text_path)
    problems.extend(text_problems)
    frames = None if features is None else len(features)
    if frames is not None:
        short = too_short(motion_path, clip_id, frames, min_length)
        if short is not None:
            problems.append(short)
        for _, start, end in entries:
            if (start, end) != (0.0, 0.0):
                first, last = sub_clip_span(start, end, frames)
                short = too_short(text_path, f"{clip_id}@{first}-{last} (tagged {start}-{end} s)", last - first,
                                  min_length)
                if short is not None:
                    problems.append(short)
    return frames, len(entries), problems


def check_dataset(root: str | Path, min_length: int = 40) -> list[DataProblem]:
    """Every problem of a data folder (empty list = the reader will load every split without error)."""
    return scan_dataset(root, min_length=min_length).problems
