"""``llamo eval run``: evaluate a finished run as the paper's tables and write ``results.json`` + ``report.md``.

    llamo eval run runs/demo --data data/synth [--out runs/demo/results.json] [--report runs/demo/report.md]
        [--samples 4] [--items N] [--length gt|exit] [--stage stage3]

A run folder holds the stage outputs of ``make pipeline`` (``vae/``, ``evaluator/``, ``stage1/`` .. ``stage3/``).
Every table is computed on the test split (T2M protocol: clips with 60 <= T <= 299 frames, first frames cropped to
a multiple of 4; ``--items`` takes a seeded subset) and states its own wall time:

- **Table 2** (reconstruction): the run's VAE through `llamo.eval.vae.evaluate_vae` (the ``llamo eval vae``
  protocol: sampled z, MPJPE mm, MPJRE degrees, sJPE, T.Down, Comp.), next to the Real Motion row.
- **Table 3** (text-to-motion): `llamo.eval.t2m` (``--protocol suite``, default) or MotionStreamer's
  ``eval_t2m.py`` protocol (``--protocol motionstreamer``, `llamo.eval.motionstreamer`); ``--evaluator`` /
  ``--mean_std`` / ``--bertscore_model`` / ``--paper`` pick the comparable inputs (`llamo.eval.paper`).
- **Table 4** (motion-to-text): `llamo.eval.m2t`.
- **Language preservation**: the base LLM and LLaMo's text path on the shipped probe (`llamo.eval.language`):
  accuracy and perplexity. With MoT (frozen text branch) the two must be identical; the report says whether
  they are, and whether the rebuilt base is the one the handoff was trained on (its fingerprint against the one
  the handoff recorded, `stageio.fingerprint_tensors`).
- **Samples**: ``samples/<k>_<id>.gif`` of the first ``--samples`` generated test motions, titled with their
  prompts (`llamo.motion.render`), each with a ``.png`` filmstrip that the report shows inline.

A part whose inputs are missing (no evaluator, no LLaMo stage, ...) is skipped and the report says why; every
reported number is checked to be finite. `llamo.eval.markdown.format_report` renders the results;
``llamo eval ablations runs`` gathers every ``runs/ablate-*/results.json`` (and ``runs/demo/results.json`` as the
reference row) into ``runs/ablations/report.md`` (`llamo.eval.ablations`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from llamo.data.humanml272 import MotionCorpus
from llamo.data.latents import load_vae
from llamo.eval.ablations import summary_row
from llamo.eval.items import TestItems, load_test_items
from llamo.eval.language import language_section
from llamo.eval.m2t import m2t_section
from llamo.eval.motionstreamer import PROTOCOL_NAME as MOTIONSTREAMER_PROTOCOL
from llamo.eval.motionstreamer import motionstreamer_t2m_section
from llamo.eval.paper import EvalInputs, resolve_eval_inputs
from llamo.eval.settings import EvalSettings, Section, check_finite, timed
from llamo.eval.t2m import t2m_section
from llamo.eval.vae import evaluate_vae
from llamo.inference.run import LLAMO_STAGES, find_llamo_stage, load_run
from llamo.motion.render import render_motion
from metrics.evaluators import load_evaluator
from metrics.generation import embed_clips, load_mean_std

__all__ = ["RUN_STAGES", "evaluate_run", "training_wall_times"]

#: stage folders of a run, in pipeline order
RUN_STAGES = ("vae", "evaluator", "stage1", "stage2", "stage3")


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def training_wall_times(run: Path) -> dict[str, dict[str, Any]]:
    """Per stage folder: fit wall time (``config.yaml`` written at fit start -> ``handoff.safetensors`` at fit end,
    i.e. without the process start-up) and ``trainer.max_steps``; stages without a handoff are left out.

    A stage folder that is a symbolic link (an ablation reusing an unchanged stage of another run, see the
    Makefile's ``REUSE``) has ``reused_from`` set to the link's target; its seconds are the target's fit time.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in RUN_STAGES:
        handoff, config = run / name / "handoff.safetensors", run / name / "config.yaml"
        if not handoff.is_file():
            continue
        entry: dict[str, Any] = {"seconds": None, "max_steps": None}
        if (run / name).is_symlink():
            entry["reused_from"] = str((run / name).resolve())
        if config.is_file():
            entry["seconds"] = max(0.0, handoff.stat().st_mtime - config.stat().st_mtime)
            steps = (_read_yaml(config).get("trainer") or {}).get("max_steps")
            entry["max_steps"] = int(steps) if isinstance(steps, int) else None
        out[name] = entry
    return out


def reconstruction_section(run: Path, data: Path, settings: EvalSettings, section: Section) -> None:
    if not (run / "vae" / "handoff.safetensors").is_file():
        section.skipped = f"{run / 'vae'} has no handoff.safetensors (the VAE stage did not finish)"
        return
    vae = load_vae(run / "vae")
    corpus = MotionCorpus(data, split=settings.split, min_length=1, max_length=settings.max_frames)
    result = evaluate_vae(
        vae,
        corpus,
        min_frames=settings.min_frames,
        max_frames=settings.max_frames,
        seed=settings.seed,
        device=settings.device,
    )
    section.data["rows"] = [
        {"name": "Real Motion", "mpjpe": 0.0, "mpjre": 0.0, "sjpe": 0.0, "t_down": 1, "comp": 1.0},
        asdict(result),
    ]
    section.notes.append(
        f"{result.clips} clips / {result.frames} frames of split {settings.split!r} "
        f"({settings.min_frames} <= T <= {settings.max_frames}); sampled z (the `llamo eval vae` protocol); "
        "MPJPE in mm (root-aligned), MPJRE in degrees, sJPE summed over feet and wrists per frame."
    )


def samples_section(
    generated: Sequence[np.ndarray], items: TestItems, out_dir: Path, count: int, section: Section
) -> None:
    rendered = []
    for k in range(min(count, len(generated))):
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in items.ids[k])
        path = out_dir / "samples" / f"{k:02d}_{safe_id}.gif"
        render_motion(generated[k], path, caption=items.prompts[k], progress=False)
        # a filmstrip beside the gif: the report shows it inline, so a reader sees the motion without opening files
        strip = render_motion(generated[k], path.with_suffix(".png"), caption=items.prompts[k], progress=False)
        rendered.append(
            {
                "file": str(path.relative_to(out_dir)),
                "png": str(strip.relative_to(out_dir)),
                "prompt": items.prompts[k],
                "id": items.ids[k],
                "frames": int(generated[k].shape[0]),
            }
        )
    section.data["rows"] = rendered


def _name_protocols(sections: dict[str, Section], inputs: EvalInputs, settings: EvalSettings) -> None:
    """Every table says which protocol it follows (``protocol`` of its section, printed under its title)."""
    sections["reconstruction"].data["protocol"] = (
        "`llamo eval vae` (MotionStreamer's `eval_causal_TAE.py` test clips: 60 <= T < 300, multiple-of-4 crops, "
        "sampled z)"
    )
    evaluator = inputs.describe_evaluator()
    if inputs.protocol == "motionstreamer":
        sections["t2m"].data["protocol"] = f"{MOTIONSTREAMER_PROTOCOL}; {evaluator}"
    else:
        sections["t2m"].data["protocol"] = (
            f"suite (`--protocol suite`: shuffled groups of 32, {settings.repeats} runs, mean ± 95 % interval); "
            f"{evaluator}"
        )
    bert = inputs.bertscore
    decoding = (
        "greedy captions of the test clips"
        if settings.gen_seeds == 1
        else f"{settings.gen_seeds} captions of each test clip sampled at temperature "
        f"{settings.caption_temperature:g}, mean ± t-based 95 % interval over them"
    )
    sections["m2t"].data["protocol"] = f"TM2T ({decoding}, every reference); BERTScore " + (
        "off"
        if bert is None
        else f"TM2T roberta-large (layer {bert.num_layers}, IDF, rescaled)"
        if bert.model is not None
        else "packaged MiniLM (not comparable with the paper)"
    )


def evaluate_run(
    run_dir: str | Path, data_dir: str | Path, settings: EvalSettings | None = None, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on ``data_dir`` (see the module docstring); samples go under ``out_dir`` (default the
    run folder). Returns the JSON-ready results (`format_report` turns them into markdown)."""
    settings = settings or EvalSettings()
    run, data = Path(run_dir), Path(data_dir)
    out = Path(out_dir) if out_dir is not None else run
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train it first (`make pipeline EXP=...`)")
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist; pass the corpus the run was trained on (--data)")
    # before any table: a wrong --evaluator / --mean_std / --paper input fails now, not after Table 2
    inputs = resolve_eval_inputs(run, settings)
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    sections = {
        "reconstruction": Section("reconstruction", "Table 2 — motion tokenization (VAE reconstruction)"),
        "t2m": Section("t2m", "Table 3 — text-to-motion"),
        "m2t": Section("m2t", "Table 4 — motion-to-text"),
        "language": Section("language", "Language preservation (base LLM vs LLaMo text path)"),
        "samples": Section("samples", "Samples (generated test motions)"),
    }

    with timed(sections["reconstruction"]) as s:
        reconstruction_section(run, data, settings, s)

    stage_dir = find_llamo_stage(run, settings.stage)
    run_model = evaluator = mean = std = None
    items: TestItems | None = None
    if stage_dir is None:
        reason = f"{run} has no finished LLaMo stage ({settings.stage or ', '.join(LLAMO_STAGES)} with handoff)"
        for key in ("t2m", "m2t", "language", "samples"):
            sections[key].skipped = reason
    else:
        run_model = load_run(run, stage_dir.name, device=settings.device)
        # explicit --steps/--guidance_scale/--cfg/--temperature win over the sweep's record (RUN/generation.json)
        run_model = run_model.with_generation(
            settings.steps,
            settings.guidance_scale,
            settings.cfg,
            settings.temperature,
            flags="--steps/--guidance_scale/--cfg/--temperature",
        )
        items = load_test_items(data, settings)
        if inputs.evaluator_dir is not None and inputs.mean_std_dir is not None:
            evaluator = load_evaluator(inputs.evaluator_dir, map_location=settings.device)
            mean, std = load_mean_std(inputs.mean_std_dir)
        else:
            missing = run / "evaluator" / "handoff.safetensors"
            sections["t2m"].skipped = f"{missing} does not exist (the evaluator stage did not run)"

    _name_protocols(sections, inputs, settings)
    t2m_out: dict[str, Any] = {}
    if run_model is not None and items is not None:
        if evaluator is not None:
            with timed(sections["t2m"]) as s:
                if inputs.protocol == "motionstreamer":
                    t2m_out = motionstreamer_t2m_section(
                        run_model, evaluator, mean, std, data, settings, s, inputs.describe_evaluator()
                    )
                else:
                    t2m_out = t2m_section(run_model, evaluator, mean, std, items, settings, s)
        real_embeddings = t2m_out.get("real_embeddings")
        if real_embeddings is None and evaluator is not None:
            # Table 4 scores the suite's items; Table 3's MotionStreamer items (sub-clips, random crops) differ
            real_embeddings = embed_clips(evaluator, items.features, mean, std, device=settings.device)
        with timed(sections["m2t"]) as s:
            m2t_section(run_model, evaluator, real_embeddings, items, data, settings, s)
        with timed(sections["language"]) as s:
            language_section(run_model, settings, s)
        if "generated" not in t2m_out:
            sections["samples"].skipped = "no generated motions (Table 3 was skipped)"
        elif settings.samples == 0:
            sections["samples"].skipped = "--samples 0"
        else:
            with timed(sections["samples"]) as s:
                samples_section(t2m_out["generated"], t2m_out.get("items", items), out, settings.samples, s)

    results: dict[str, Any] = {
        "run": str(run),
        "data": str(data),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "llamo_stage": None if stage_dir is None else stage_dir.name,
        "generation": None if run_model is None or run_model.generation is None else run_model.generation.to_dict(),
        "settings": asdict(settings),
        "training": training_wall_times(run),
        "tables": {k: s.to_dict() for k, s in sections.items()},
    }
    results["seconds"] = time.perf_counter() - start
    results["row"] = summary_row(results)
    check_finite(results)
    return results
