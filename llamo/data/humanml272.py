"""Reader for HumanML3D-272 / MotionMillion style folders (and the embedded corpus written by ``llamo data synth``).

Layout (every variant the public releases use is accepted)::

    <root>/motion_data/vector_272/<id>.npy   (MotionMillion, llamo synth)  or  <root>/motion_data/<id>.npy
    <root>/texts/<id>.txt                    HumanML3D ``caption#tokens#from#to`` lines, or one caption per line
    <root>/split/<split>.txt                 one id per line; nested names work ("version1/t2m_60_300/train")
    <root>/mean_std/{Mean,Std}.npy           or mean.npy/std.npy, or mean_std/vector_272/ (MotionMillion)

MotionStreamer conventions: features are (T, 272) un-normalised at 30 fps; captions with a time tag
(``from``/``to`` seconds, not both 0) describe the sub-clip ``[int(from*30):int(to*30)]``, which becomes an item of
its own (id ``<id>@<start>-<end>``); clips are filtered by length (``min_length``; the evaluation uses
60 <= T < 300, i.e. ``min_length=60, max_length=299``) and cropped to multiples of 4 frames by
:func:`crop_to_multiple`.

Nothing is skipped silently: a bad clip raises one ``ValueError`` / ``FileNotFoundError`` naming the file and the
problem, unless ``skip_invalid=True``, which skips it and counts it in ``corpus.skipped`` (reasons in
``corpus.problems``). :func:`llamo.data.check.check_dataset` reports every problem of a folder at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM

FPS = 30
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: problem kinds whose exception is FileNotFoundError (the rest raise ValueError)
MISSING_KINDS = frozenset({"missing_folder", "missing_split", "missing_motion", "missing_text", "missing_mean_std"})
#: every problem kind, with what it means
PROBLEM_KINDS: dict[str, str] = {
    "missing_folder": "the folder or one of its required sub-folders does not exist",
    "missing_split": "no split file",
    "missing_motion": "a split entry has no motion .npy file",
    "missing_text": "a split entry has no caption .txt file",
    "empty_text": "a caption file holds no caption",
    "bad_text": "a caption line cannot be parsed",
    "unreadable": "a .npy file cannot be loaded",
    "wrong_shape": "features are not (T, 272)",
    "non_finite": "features hold NaN or Inf",
    "too_short": "a clip is shorter than the minimum length",
    "missing_mean_std": "no Mean/Std files",
    "bad_mean_std": "Mean/Std have the wrong shape or values",
    "duplicate_id": "an id is listed twice in a split",
    "split_overlap": "an id is listed in two splits",
}


@dataclass(frozen=True)
class DataProblem:
    """One problem of a data folder: the file, a kind from :data:`PROBLEM_KINDS`, and a message with the fix."""

    path: Path
    kind: str
    message: str

    def __post_init__(self) -> None:
        assert self.kind in PROBLEM_KINDS, self.kind

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def error(self) -> FileNotFoundError | ValueError:
        """The exception the reader raises for this problem."""
        return (FileNotFoundError if self.kind in MISSING_KINDS else ValueError)(str(self))


@dataclass(frozen=True)
class MotionRecord:
    """One item of a corpus."""

    id: str
    """Clip id (the .npy stem), or ``<id>@<start>-<end>`` for a time-tagged sub-clip."""
    features: np.ndarray
    """(T, 272) float32 UN-normalised features."""
    captions: list[str]
    """All captions of this clip (or sub-clip)."""


@dataclass(frozen=True)
class CorpusLayout:
    """Where the parts of a data folder are."""

    root: Path
    motion_dir: Path
    text_dir: Path
    split_dir: Path
    mean_std_dir: Path | None
    """The folder holding Mean/Std (None when there is none)."""

    def motion_path(self, clip_id: str) -> Path:
        return self.motion_dir / f"{clip_id}.npy"

    def text_path(self, clip_id: str) -> Path:
        return self.text_dir / f"{clip_id}.txt"

    def split_path(self, split: str) -> Path:
        return self.split_dir / f"{split}.txt"

    def split_names(self) -> list[str]:
        """Every split file under ``split/`` (nested ones as ``version1/t2m_60_300/train``)."""
        if not self.split_dir.is_dir():
            return []
        return sorted(p.relative_to(self.split_dir).with_suffix("").as_posix() for p in self.split_dir.rglob("*.txt"))


_MEAN_NAMES = ("Mean.npy", "mean.npy")


def find_layout(root: str | Path) -> CorpusLayout:
    """Locate the sub-folders of a HumanML3D-272 / MotionMillion / llamo-synth folder.

    Raises:
        FileNotFoundError: naming the missing folder (root, motion_data or texts).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found; write one with `llamo data synth --out {root}`")
    motion_dir = root / "motion_data" / "vector_272"
    if not motion_dir.is_dir():
        motion_dir = root / "motion_data"
    if not motion_dir.is_dir():
        raise FileNotFoundError(f"{root / 'motion_data'}: no motion folder (expected motion_data/vector_272/ or "
                                "motion_data/ with <id>.npy files)")
    text_dir = root / "texts"
    if not text_dir.is_dir():
        raise FileNotFoundError(f"{text_dir}: no caption folder (expected texts/<id>.txt)")
    candidates = (root / "mean_std" / "vector_272", root / "mean_std")
    mean_std_dir = next((d for d in candidates if any((d / n).is_file() for n in _MEAN_NAMES)), None)
    return CorpusLayout(root=root, motion_dir=motion_dir, text_dir=text_dir, split_dir=root / "split",
                        mean_std_dir=mean_std_dir)


def load_normalizer(layout: CorpusLayout, mean_std: str | Path | None = None) -> Normalizer:
    """Mean/Std of a corpus (or of the folder ``mean_std``, e.g. HumanML3D-272's for its evaluator)."""
    directory = Path(mean_std) if mean_std is not None else layout.mean_std_dir
    if directory is None:
        raise FileNotFoundError(f"{layout.root / 'mean_std' / 'Mean.npy'}: Mean/Std not found (nor mean.npy/std.npy, "
                                "nor mean_std/vector_272/); compute them with llamo.motion.normalization."
                                "compute_mean_std over the train split, or pass mean_std=DIR")
    return Normalizer.load(directory)


def parse_captions(path: Path) -> tuple[list[tuple[str, float, float]], list[DataProblem]]:
    """Captions of a text file as ``(caption, from_s, to_s)`` (0, 0 = whole clip), and the problems found.

    HumanML3D lines are ``caption#tokens#from#to`` (NaN tags mean 0); MotionMillion lines are bare captions.
    """
    if not path.is_file():
        return [], [DataProblem(path, "missing_text", "caption file not found; every split entry needs texts/<id>.txt")]
    entries: list[tuple[str, float, float]] = []
    problems: list[DataProblem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("#")
        caption = parts[0].strip()
        if not caption:
            problems.append(DataProblem(path, "bad_text", f"line {number} has an empty caption: {line[:60]!r}"))
            continue
        start = end = 0.0
        if len(parts) >= 4:
            try:
                start, end = float(parts[2]), float(parts[3])
            except ValueError:
                problems.append(DataProblem(path, "bad_text", f"line {number}: time tags {parts[2]!r}, {parts[3]!r} "
                                            "are not numbers (expected caption#tokens#from#to)"))
                continue
            start, end = (0.0 if math.isnan(start) else start), (0.0 if math.isnan(end) else end)
            if (start, end) != (0.0, 0.0) and not 0.0 <= start < end:
                problems.append(DataProblem(path, "bad_text", f"line {number}: time tags from={start} to={end} "
                                            "do not make an interval"))
                continue
        entries.append((caption, start, end))
    if not entries and not problems:
        problems.append(DataProblem(path, "empty_text", "caption file holds no caption; write at least one line"))
    return entries, problems


def _missing_motion(path: Path) -> DataProblem:
    return DataProblem(path, "missing_motion", "motion file not found; the split lists an id without its "
                       "motion_data/.../<id>.npy")


def load_features(path: Path) -> tuple[np.ndarray | None, DataProblem | None]:
    """Load a motion file as float32 (T, 272), or return the problem (missing, unreadable, shape, NaN/Inf)."""
    if not path.is_file():
        return None, _missing_motion(path)
    try:
        x = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        return None, DataProblem(path, "unreadable", f"cannot load the .npy file ({exc})")
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
        return None, DataProblem(path, "wrong_shape", f"features have shape {x.shape}, expected (T, {FEATURE_DIM}) "
                                 "272-dim frames")
    if not np.issubdtype(x.dtype, np.floating):
        return None, DataProblem(path, "wrong_shape", f"features have dtype {x.dtype}, expected floating point")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))
        return None, DataProblem(path, "non_finite", f"{len(bad)} NaN/Inf values (first at frame {bad[0][0]}, dim "
                                 f"{bad[0][1]}); regenerate or drop this clip")
    return x, None


def sub_clip_span(start_s: float, end_s: float, length: int) -> tuple[int, int]:
    """Frames ``[start, end)`` of a caption time-tagged ``start_s``-``end_s`` seconds, in a clip of ``length``."""
    return int(start_s * FPS), min(int(end_s * FPS), length)


def too_short(path: Path, clip_id: str, length: int, min_length: int) -> DataProblem | None:
    if length >= min_length:
        return None
    return DataProblem(path, "too_short", f"{clip_id} has {length} frames, fewer than min_length={min_length}; drop it "
                       "from the split or lower min_length")


def read_split(path: Path) -> list[str]:
    """Ids of a split file, in order (blank lines ignored)."""
    if not path.is_file():
        names = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"{path}: split file not found (found: {', '.join(names) or 'none'})")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class _Item:
    id: str
    path: Path
    start: int
    end: int
    captions: list[str]
    features: np.ndarray | None = field(default=None, repr=False)


class MotionCorpus:
    """The clips of one split of a HumanML3D-272 style folder, as :class:`MotionRecord` items.

    Args:
        root: the data folder.
        split: split name, a file under ``split/`` without ``.txt`` ("train", "version1/t2m_60_300/test").
        min_length: clips (and tagged sub-clips) shorter than this many frames are errors (skipped with
            ``skip_invalid``). MotionStreamer: 40 for latents, 64 for VAE windows, 60 for evaluation.
        max_length: if given, clips longer than this are left out and counted in ``too_long`` (MotionStreamer's
            evaluation keeps T < 300: ``max_length=299``).
        skip_invalid: skip bad clips (counted in ``skipped``, reasons in ``problems``) instead of raising.
        mean_std: folder with Mean/Std to use instead of the corpus's own ``mean_std/``.
        preload: load and validate every clip now (default). ``False`` reads each clip when indexed (for corpora
            that do not fit in memory): shapes and lengths are still checked now, values only when read, and a
            bad value then raises even with ``skip_invalid``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        min_length: int = 40,
        max_length: int | None = None,
        skip_invalid: bool = False,
        mean_std: str | Path | None = None,
        preload: bool = True,
    ) -> None:
        if min_length < 1:
            raise ValueError(f"min_length must be >= 1, got {min_length}")
        if max_length is not None and max_length < min_length:
            raise ValueError(f"max_length={max_length} is below min_length={min_length}")
        self.layout = find_layout(root)
        self.root = self.layout.root
        self.split = split
        self.min_length = min_length
        self.max_length = max_length
        self.normalizer = load_normalizer(self.layout, mean_std)
        self.problems: list[DataProblem] = []
        self.too_long = 0
        self._items: list[_Item] = []
        split_path = self.layout.split_path(split)
        ids = read_split(split_path)
        seen: set[str] = set()
        for clip_id in ids:
            if clip_id in seen:
                self._reject(DataProblem(split_path, "duplicate_id", f"{clip_id} is listed twice; remove one line"),
                             skip_invalid)
                continue
            seen.add(clip_id)
            for problem in self._add_clip(clip_id, preload):
                self._reject(problem, skip_invalid)

    @property
    def skipped(self) -> int:
        """Number of clips (or split lines) left out because they were invalid (``skip_invalid=True``)."""
        return len(self.problems)

    def _reject(self, problem: DataProblem, skip_invalid: bool) -> None:
        if not skip_invalid:
            raise problem.error()
        self.problems.append(problem)

    def _add_clip(self, clip_id: str, preload: bool) -> list[DataProblem]:
        """Append the items of one clip; return its problems (one per clip: the first found)."""
        motion_path, text_path = self.layout.motion_path(clip_id), self.layout.text_path(clip_id)
        if not motion_path.is_file():
            return [_missing_motion(motion_path)]
        entries, text_problems = parse_captions(text_path)
        if text_problems:
            return text_problems[:1]
        features: np.ndarray | None = None
        if preload:
            features, problem = load_features(motion_path)
            if problem is not None:
                return [problem]
            assert features is not None
            length = len(features)
        else:
            header = _npy_shape(motion_path)
            if isinstance(header, DataProblem):
                return [header]
            length = header[0]
        whole = [caption for caption, start, end in entries if (start, end) == (0.0, 0.0)]
        spans: dict[tuple[int, int], list[str]] = {}
        for caption, start, end in entries:
            if (start, end) != (0.0, 0.0):
                spans.setdefault(sub_clip_span(start, end, length), []).append(caption)
        items = []
        if whole:
            items.append(_Item(clip_id, motion_path, 0, length, whole, features))
        for (start, end), captions in spans.items():
            items.append(_Item(f"{clip_id}@{start}-{end}", motion_path, start, end, captions,
                               None if features is None else features[start:end]))
        for item in items:
            problem = too_short(motion_path, item.id, item.end - item.start, self.min_length)
            if problem is not None:
                return [problem]
        for item in items:
            if self.max_length is not None and item.end - item.start > self.max_length:
                self.too_long += 1
            else:
                self._items.append(item)
        return []

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> MotionRecord:
        item = self._items[index]
        features = item.features
        if features is None:
            loaded, problem = load_features(item.path)
            if problem is not None:
                raise problem.error()
            assert loaded is not None
            features = loaded[item.start : item.end]
        return MotionRecord(id=item.id, features=features, captions=list(item.captions))

    def __iter__(self) -> Iterator[MotionRecord]:
        return (self[i] for i in range(len(self)))

    @property
    def ids(self) -> list[str]:
        """Item ids in order."""
        return [item.id for item in self._items]

    @property
    def lengths(self) -> np.ndarray:
        """(N,) frame count of each item."""
        return np.array([item.end - item.start for item in self._items], dtype=np.int64)

    def __repr__(self) -> str:
        return (f"MotionCorpus({str(self.root)!r}, split={self.split!r}, items={len(self)}, skipped={self.skipped}, "
                f"too_long={self.too_long})")


def _npy_shape(path: Path) -> tuple[int, ...] | DataProblem:
    """Shape of a .npy file from its header (memory-mapped), or the problem."""
    try:
        x = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        return DataProblem(path, "unreadable", f"cannot load the .npy file ({exc})")
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
        return DataProblem(path, "wrong_shape", f"features have shape {x.shape}, expected (T, {FEATURE_DIM})")
    return tuple(x.shape)


def crop_to_multiple(x: ArrayT, multiple: int = 4, rng: np.random.Generator | None = None) -> ArrayT:
    """Crop a clip (T, ...) to a multiple of ``multiple`` frames, MotionStreamer style.

    Without ``rng``: the first ``T // multiple * multiple`` frames. With ``rng`` (training / evaluation sampling):
    with probability 1/3 one unit shorter (when at least 2 units remain), at a uniformly random offset.
    """
    length = x.shape[0]
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    units = length // multiple
    if units < 1:
        raise ValueError(f"a clip of {length} frames is shorter than one unit of {multiple} frames")
    if rng is None:
        return x[: units * multiple]
    if units > 1 and rng.random() < 1.0 / 3.0:
        units -= 1
    start = int(rng.integers(0, length - units * multiple + 1))
    return x[start : start + units * multiple]
