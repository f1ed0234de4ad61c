"""Table 3 under MotionStreamer's ``eval_t2m.py`` protocol (``llamo eval run --protocol motionstreamer``).

The numbers of LLaMo's Table 3 follow MotionStreamer's protocol; this module reproduces it step by step
(``shared/reference/motionstreamer_interop.md`` §4):

1. **Test items** (`motionstreamer_test_items`, ``dataset_eval_t2m.py``): every clip of the split with
   ``60 <= T < 300`` frames (a clip outside is dropped *with all its time-tagged captions*); its untagged captions
   (``from = to = 0``) make one whole-clip item; every tagged line makes its own item with that one caption, frames
   ``[int(from·30), int(to·30))``, kept only if ``60 <= len < 300`` (two lines with the same span: two items).
2. **Crops**: each item is cropped to ``(T//4)·4`` frames, or with probability 1/3 to ``(T//4 − 1)·4``, at a
   uniformly random offset (`llamo.data.humanml272.crop_to_multiple` with an rng); one caption per item is drawn.
3. **Generation** at the ground-truth length: exactly ``m // 4`` latents per item (``--length gt``), with the
   run's generation setting (`LLaMoRun.generation`: the sweep's record or the flags; MotionStreamer: CFG 4.0).
4. **Batches** of 32, shuffled, the last incomplete batch dropped; R-precision and MM-Dist per batch, Diversity
   300 pairs (100 if N <= 300) with independent index draws (`metrics.motionstreamer_protocol`).
5. **One run** with ``--seed``: one numpy generator draws captions, crops, batches and Diversity pairs.

The evaluator should be MotionStreamer's (``--evaluator``, with the HumanML3D-272 Mean/Std, ``--mean_std``) for
numbers comparable with the paper; with the run's own evaluator the protocol runs but the numbers are the suite's
scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamo.data.humanml272 import (
    crop_to_multiple,
    find_layout,
    load_features,
    parse_captions,
    read_split,
    sub_clip_span,
)
from llamo.eval.items import TestItems
from llamo.eval.settings import EvalSettings, Section
from llamo.eval.t2m import derangement, generate_test_motions
from llamo.inference.run import LLaMoRun
from metrics.generation import embed_clips, embed_texts
from metrics.motionstreamer_protocol import BATCH_SIZE, diversity_times, drop_last_batches, motionstreamer_t2m_metrics

__all__ = ["MotionStreamerItems", "PROTOCOL_NAME", "motionstreamer_t2m_section", "motionstreamer_test_items"]

#: how the report names this protocol
PROTOCOL_NAME = "MotionStreamer `eval_t2m.py` (`--protocol motionstreamer`)"


@dataclass
class MotionStreamerItems(TestItems):
    """The items of MotionStreamer's T2M test set, cropped; ``features`` / ``prompts`` as in `TestItems`."""

    spans: list[tuple[int, int]]
    """Frames ``[start, end)`` of each item in its clip (the whole clip, or a tagged sub-clip), before the crop."""
    offsets: list[int]
    """Start of each crop inside its span."""
    clips: int
    """Clips of the split inside the frame range."""
    sub_clips_left_out: int
    """Tagged lines of kept clips whose sub-clip is outside the frame range."""


def motionstreamer_test_items(
    data: str | Path,
    split: str = "test",
    seed: int = 0,
    min_frames: int = 60,
    max_frames: int = 299,
    rng: np.random.Generator | None = None,
) -> MotionStreamerItems:
    """MotionStreamer's T2M test items of ``data`` (module docstring, steps 1-2), deterministic for ``seed``.

    Args:
        data: a HumanML3D-272 style folder (`llamo.data.humanml272` layouts).
        split: the split file (MotionStreamer: ``test``).
        seed: seed of the caption choice and the crops (ignored when ``rng`` is given).
        min_frames, max_frames: the frame range, inclusive (MotionStreamer: 60 <= T < 300).
        rng: draw from this generator instead (the caller continues with it).

    Raises:
        FileNotFoundError / ValueError: a split entry without motion or captions, an unreadable clip, a caption
            line that cannot be parsed (naming the file), or fewer than 2 items.
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    layout = find_layout(data)
    ids, captions, prompts, features, spans, offsets = [], [], [], [], [], []
    clips = clips_out = subs_out = 0
    for clip_id in read_split(layout.split_path(split)):
        motion, problem = load_features(layout.motion_path(clip_id))
        if problem is not None:
            raise problem.error()
        assert motion is not None
        length = len(motion)
        if not min_frames <= length <= max_frames:
            clips_out += 1  # MotionStreamer skips the clip before reading its captions: sub-clips go with it
            continue
        clips += 1
        entries, problems = parse_captions(layout.text_path(clip_id))
        if problems:
            raise problems[0].error()
        whole = [caption for caption, start, end in entries if (start, end) == (0.0, 0.0)]
        clip_items: list[tuple[str, list[str], int, int]] = []
        if whole:
            clip_items.append((clip_id, whole, 0, length))
        seen: dict[tuple[int, int], int] = {}
        for caption, start_s, end_s in entries:
            if (start_s, end_s) == (0.0, 0.0):
                continue
            start, end = sub_clip_span(start_s, end_s, length)
            if not min_frames <= end - start <= max_frames:
                subs_out += 1
                continue
            seen[(start, end)] = seen.get((start, end), 0) + 1
            # one item per tagged line: a repeated span gets a counter so that ids stay unique
            suffix = "" if seen[(start, end)] == 1 else f"#{seen[(start, end)]}"
            clip_items.append((f"{clip_id}@{start}-{end}{suffix}", [caption], start, end))
        for item_id, item_captions, start, end in clip_items:
            prompt = item_captions[int(rng.integers(len(item_captions)))]
            # crop the span's frame numbers: the same draws as cropping the frames, and the offset comes with it
            frames = crop_to_multiple(np.arange(end - start), 4, rng)
            offset = int(frames[0])
            ids.append(item_id)
            captions.append(item_captions)
            prompts.append(prompt)
            features.append(np.ascontiguousarray(motion[start + offset : start + offset + len(frames)]))
            spans.append((start, end))
            offsets.append(offset)
    if len(ids) < 2:
        raise ValueError(
            f"split {split!r} of {data} has {len(ids)} MotionStreamer test item(s) with {min_frames} <= T <= "
            f"{max_frames} frames; the protocol needs full batches of {BATCH_SIZE} (use --protocol suite)"
        )
    return MotionStreamerItems(
        ids=ids,
        features=features,
        captions=captions,
        prompts=prompts,
        available=len(ids),
        left_out=clips_out,
        spans=spans,
        offsets=offsets,
        clips=clips,
        sub_clips_left_out=subs_out,
    )


def motionstreamer_t2m_section(
    run_model: LLaMoRun,
    evaluator: Any,
    mean: np.ndarray,
    std: np.ndarray,
    data: Path,
    settings: EvalSettings,
    section: Section,
    evaluator_name: str = "the run's evaluator",
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Table 3 under MotionStreamer's protocol (module docstring); rows as `llamo.eval.t2m.t2m_section`'s.

    Returns ``{"generated", "items"}``: the generated motions and the items they belong to (for the samples).
    """
    rng = np.random.default_rng(settings.seed)
    items = motionstreamer_test_items(
        data, settings.split, min_frames=settings.min_frames, max_frames=settings.max_frames, rng=rng
    )
    n = len(items.ids)
    batches = drop_last_batches(n, rng, batch_size)
    kept = len(batches) * batch_size
    generated, reasons = generate_test_motions(run_model, items, settings)
    text = embed_texts(evaluator, items.prompts)
    real = embed_clips(evaluator, items.features, mean, std, device=settings.device, desc="embed real")
    gen = embed_clips(evaluator, generated, mean, std, device=settings.device, desc="embed generated")
    shuffled = real[torch.from_numpy(derangement(n, rng))]
    ours = motionstreamer_t2m_metrics(text, real, gen, batches, rng)
    baseline = motionstreamer_t2m_metrics(text, real, shuffled, batches, rng)

    def row(name: str, values: dict[str, float], side: str, fid: bool = True) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name}
        for metric in ("FID", "R@1", "R@2", "R@3", "MM-Dist", "Diversity"):
            # one run: no interval (the report prints the bare value)
            r[metric] = values[f"{side}/{metric}"] if (fid or metric != "FID") else None
            r[f"{metric}_ci95"] = None
        return r

    stage = run_model.stage_dir.name
    section.data["rows"] = [
        row("Real motion", ours, "real", fid=False),
        row("Shuffled real (wrong captions)", baseline, "gen"),
        row(f"LLaMo ({stage})", ours, "gen"),
    ]
    section.data["stop_reasons"] = reasons
    section.data["pairs"] = kept
    section.data["items"] = {
        "items": n,
        "scored": kept,
        "clips": items.clips,
        "clips_left_out": items.left_out,
        "sub_clips_left_out": items.sub_clips_left_out,
    }
    # what generate_test_motions used: the run's setting (recorded by the sweep or given as flags), not the config's
    setting = run_model.generation.describe() if run_model.generation is not None else "the model config's default"
    section.notes += [
        f"Test items as MotionStreamer's `dataset_eval_t2m.py`: {items.clips} clips of split {settings.split!r} "
        f"with {settings.min_frames} <= T <= {settings.max_frames} ({items.left_out} clips outside left out with "
        f"all their time-tagged captions) give {n} items: one per clip with untagged captions, one per time-tagged "
        f"caption line ({items.sub_clips_left_out} tagged sub-clips outside the frame range left out); each "
        "cropped to a multiple of 4 frames (one unit shorter with probability 1/3) at a random offset, one "
        "caption drawn per item.",
        f"Generation at the ground-truth length (exactly m/4 latents, exit head off); flow head: {setting} "
        f"(MotionStreamer: CFG 4.0); stop reasons: {reasons}.",
        f"Batches of {batch_size}, shuffled, last incomplete batch dropped: {kept} of {n} items scored; R-precision "
        f"and MM-Dist per batch (summed hits and paired distances / {kept}); FID over the {kept} items; Diversity "
        f"over {diversity_times(kept)} pairs (300 if N > 300, else 100) with independent index draws.",
        f"One run, seed {settings.seed} (captions, crops, batches, Diversity pairs, generation noise): no interval. "
        f"Embeddings of {evaluator_name}.",
        "Shuffled real: each real motion paired with another item's caption (a random derangement), scored in "
        "the same batches.",
    ]
    return {"generated": generated, "items": items}
