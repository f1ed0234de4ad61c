"""What `llamo.eval.report.evaluate_run` measures and how (`EvalSettings`), and the container of one report part.

`EvalSettings` is the one source of the ``llamo eval run`` flags and their defaults: the command layer builds its
options from the dataclass fields and their docstrings.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["MAX_FRAMES", "MIN_FRAMES", "SUITE_REPEATS", "EvalSettings", "Section", "check_finite", "timed"]

#: T2M test protocol: clips with MIN_FRAMES <= T <= MAX_FRAMES (MotionStreamer: 60 <= T < 300)
MIN_FRAMES = 60

MAX_FRAMES = 299

#: repetitions of the suite's T2M protocol (MotionStreamer's is one run)
SUITE_REPEATS = 20


@dataclass
class EvalSettings:
    """What `evaluate_run` measures and how (the CLI flags)."""

    split: str = "test"
    """Corpus split evaluated."""
    items: int | None = None
    """Test items used by Tables 3/4 (a seeded subset); None = every item of the split in the frame range."""
    samples: int = 4
    """Generated test motions rendered to ``samples/*.gif``."""
    length: Literal["gt", "exit"] = "gt"
    """``gt``: generate exactly the ground-truth number of latents (exit head off); ``exit``: the exit head may
    stop earlier, capped at the ground-truth length."""
    stage: str | None = None
    """LLaMo stage folder evaluated (None: the newest of stage3, stage2, stage1)."""
    repeats: int = SUITE_REPEATS
    """Repetitions of the T2M protocol (R-precision groups, Diversity pairs)."""
    seed: int = 0
    """Seed of the item subset, the caption choice, the generation noise and the protocol."""
    gen_batch: int = 16
    """Prompts generated together."""
    steps: int | None = None
    """Euler steps of the flow head (None: RUN/generation.json of `llamo eval sweep`, else the model config)."""
    guidance_scale: float | None = None
    """CFG scale (None: as --steps)."""
    cfg: Literal["null", "prompt"] | None = None
    """Unconditional source of CFG (None: as --steps; null without a recorded setting)."""
    temperature: float | None = None
    """Noise temperature of the flow head, x_0 ~ N(0, t^2 I) (None: as --steps; 1 without a recorded setting)."""
    probe_items: int | None = None
    """Language-probe prompts used (None: all of the shipped probe)."""
    caption_tokens: int = 48
    """Longest generated caption in tokens."""
    min_frames: int = MIN_FRAMES
    """Shortest test clip kept (T2M protocol: 60)."""
    max_frames: int = MAX_FRAMES
    """Longest test clip kept (T2M protocol: T < 300)."""
    device: str | None = None
    """Torch device of every model (None: cuda when available, else cpu)."""
    bertscore: bool = True
    """Compute BERTScore (packaged MiniLM, offline; roberta-large as in TM2T with --bertscore_model)."""
    protocol: Literal["suite", "motionstreamer"] = "suite"
    """Table 3 protocol: ``suite`` (shuffled groups of 32 over every item, --repeats runs, mean ± 95 % interval)
    or ``motionstreamer`` (MotionStreamer's eval_t2m.py: its test items and crops, shuffled batches of 32 with the
    last incomplete one dropped, GT-length generation, one run with --seed; `llamo.eval.motionstreamer`)."""
    evaluator: str | None = None
    """Evaluator folder of Tables 3/4 (None: the run's evaluator/). A converted MotionStreamer evaluator
    (``python -m metrics convert-evaluator motionstreamer ...``) gives numbers comparable with the paper."""
    mean_std: str | None = None
    """Folder with the Mean.npy/Std.npy the evaluator normalises motion with (None: the evaluator folder's). A
    MotionStreamer evaluator needs the HumanML3D-272 Mean/Std it was trained with, not the run's corpus statistics."""
    bertscore_model: str | None = None
    """Local roberta-large folder: Table 4's BERTScore as in TM2T (layer 17, IDF, baseline rescaling) instead of
    the packaged MiniLM."""
    paper: bool = False
    """Everything comparable with the paper: the MotionStreamer evaluator (--evaluator, --mean_std), its protocol
    (implies --protocol motionstreamer) and the TM2T BERTScore (--bertscore_model); one error lists what is missing."""
    gen_seeds: int = 1
    """Generations of every test motion (Table 3) and of every test caption (Table 4) with different seeds; K > 1
    reports each LLaMo row as the mean ± t-based 95 % interval over the K generations (`llamo.eval.gen_seeds`), the
    captions sampled at --caption_temperature. 1 = today's: one generation, greedy captions."""
    caption_temperature: float = 0.7
    """Sampling temperature of Table 4's captions with --gen_seeds K > 1 (K = 1: greedy). Below 1 on purpose: it
    keeps the samples near the captions the model ranks highest, so the interval measures how much the captions
    vary between seeds rather than how far the unlikely tail of the vocabulary (fully weighted at 1) drags every
    metric down."""
    mm_texts: int = 0
    """MultiModality: test texts generated --mm_gens times each (0: no MultiModality column)."""
    mm_gens: int = 10
    """MultiModality: generations per text (>= 2; pairs drawn: min(10, mm_gens))."""

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.length not in ("gt", "exit"):
            raise ValueError(f"--length must be 'gt' or 'exit', got {self.length!r}")
        for name in ("samples", "repeats", "gen_batch", "caption_tokens", "min_frames", "max_frames"):
            value = getattr(self, name)
            if value < (0 if name == "samples" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'samples' else 1}, got {value}")
        for name, least in (("gen_seeds", 1), ("mm_texts", 0), ("mm_gens", 2)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name} must be >= {least}, got {getattr(self, name)}")
        for name in ("items", "probe_items"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 2 (or omitted for all), got {value}")
        if self.min_frames > self.max_frames or self.min_frames < 4:
            raise ValueError(f"--min-frames ({self.min_frames}) must be >= 4 and <= --max-frames ({self.max_frames})")
        self._check_caption_temperature()
        self._check_protocol()

    def _check_caption_temperature(self) -> None:
        """A finite temperature > 0 (greedy captions are ``--gen_seeds 1``); one that nothing reads is a warning."""
        value = self.caption_temperature
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"--caption_temperature must be a finite number > 0, got {value!r}; it samples Table 4's captions "
                "with --gen_seeds K > 1 (for greedy captions use --gen_seeds 1)"
            )
        default = EvalSettings.__dataclass_fields__["caption_temperature"].default
        if self.gen_seeds == 1 and value != default:
            warnings.warn(
                f"--caption_temperature {value:g} has no effect with --gen_seeds 1 (greedy captions); pass "
                "--gen_seeds K > 1 to sample the captions",
                UserWarning,
                stacklevel=4,  # the caller of EvalSettings(...)
            )

    def _check_protocol(self) -> None:
        """``--paper`` implies MotionStreamer's protocol, which is one run of every item at the GT length."""
        if self.protocol not in ("suite", "motionstreamer"):
            raise ValueError(f"--protocol must be 'suite' or 'motionstreamer', got {self.protocol!r}")
        if self.paper:
            self.protocol = "motionstreamer"
        if self.bertscore_model is not None and not self.bertscore:
            raise ValueError(
                "--bertscore_model selects the BERTScore model, --no_bertscore turns BERTScore off; pass one of them"
            )
        if self.protocol != "motionstreamer":
            return
        why = "--paper implies --protocol motionstreamer" if self.paper else "--protocol motionstreamer"
        if self.length != "gt":
            raise ValueError(f"{why}, which generates at the ground-truth length; drop --length {self.length}")
        if self.items is not None:
            raise ValueError(f"{why}, which scores every test item; drop --items {self.items}")
        if self.repeats != SUITE_REPEATS:
            raise ValueError(
                f"{why}, which is one run with --seed; --repeats ({self.repeats}) applies to "
                "--protocol suite only, drop it"
            )


class Section:
    """One part of the report: its wall time, its rows/notes, or why it was skipped."""

    def __init__(self, key: str, title: str) -> None:
        self.key, self.title = key, title
        self.seconds = 0.0
        self.skipped: str | None = None
        self.data: dict[str, Any] = {}
        self.notes: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "seconds": self.seconds, "skipped": self.skipped, "notes": self.notes, **self.data}


@contextmanager
def timed(section: Section) -> Iterator[Section]:
    """Time ``section`` (``section.seconds``) and print one line when it starts and one with its wall time when it
    ends, flushed: a log of ``llamo eval run`` (no terminal) shows which table runs and how long each took."""
    print(f"eval: {section.title} ...", flush=True)
    start = time.perf_counter()
    try:
        yield section
    finally:
        section.seconds = time.perf_counter() - start
        state = f"skipped ({section.skipped})" if section.skipped else "done"
        print(f"eval: {section.title}: {state} in {section.seconds:.1f} s", flush=True)


def check_finite(value: Any, where: str = "results") -> None:
    """Every float in a nested results structure must be finite (ValueError naming its key otherwise)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: a metric came out non-finite; the run or the evaluation is broken")
