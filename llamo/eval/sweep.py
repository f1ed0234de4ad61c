"""``llamo eval sweep``: choose a run's generation setting (guidance scale, unconditional source, Euler steps, noise
temperature) by measurement on the validation split, and record it in the run (``RUN/generation.json``).

    llamo eval sweep runs/demo --data data/synth [--scales [1,1.5,2,3,4]] [--sources '["null","prompt"]']
        [--steps [5,10,25,50]] [--temperatures [1]] [--gen_seeds 2] [--items N] [--fid_factor 2.0] [--no_record]

For every setting of the grid the validation items (the Table-3 protocol: ``min_frames <= T <= max_frames``, one
seeded caption each, ground-truth length) are generated with ``--gen_seeds`` noise seeds and scored with the run's
evaluator (`metrics.generation.t2m_metrics`, ``--repeats`` times per seed): FID, R@3, MM-Dist and the wall time per
generated token. A scale of 1 is no guidance, where both sources give the same motion: it is run once, as
``null``. ``--temperatures`` scales each latent's initial noise (MAR's sampling temperature: below 1 the Euler ODE
starts nearer the mean and lands on more typical motions, trading diversity for text adherence as guidance does;
the default grid is 1 only, the noise training used). The table is printed, the curves are drawn to
``RUN/sweep.png``, and the setting picked by `choose_setting` is written to ``RUN/generation.json``
(`llamo.inference.guidance`), which `load_run` — and so ``llamo generate`` and ``llamo eval run`` — use by default.

The choice never sees the test split: ``--split test`` is refused (`SweepSettings`), so Table 3 of ``llamo eval
run`` stays an unbiased measurement of the chosen setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamo.eval.items import TestItems, load_test_items
from llamo.eval.settings import MAX_FRAMES, MIN_FRAMES, EvalSettings
from llamo.eval.t2m import generate_test_motions
from llamo.inference.guidance import CFG_SOURCES, write_generation_record
from llamo.inference.run import LLaMoRun, find_llamo_stage, load_run
from metrics.evaluators import load_evaluator
from metrics.generation import (
    DIVERSITY_PAIRS,
    GROUP_SIZE,
    embed_clips,
    embed_texts,
    load_mean_std,
    repeat_protocol,
    t2m_metrics,
)

__all__ = [
    "PLOT_FILE",
    "RULE",
    "SweepSettings",
    "choose_setting",
    "format_sweep_table",
    "plot_sweep",
    "record_sweep",
    "run_sweep",
    "sweep_grid",
]

#: the curves of the sweep, written in the run folder
PLOT_FILE = "sweep.png"

#: the choice rule, as recorded in generation.json and written in the README ({factor}: ``--fid_factor``)
RULE = (
    "Eligible: settings whose FID is at most {factor:g} x the lowest FID of the grid (guidance trades distribution "
    "quality for text adherence; this bounds the trade). Among them, the highest mean R@3 wins; every eligible "
    "setting whose R@3 lies within the winner's 95 % interval counts as tied, and a tie goes to fewer Euler steps "
    "(cheaper per token), then source 'null' over 'prompt' (no extra LLM rows, the condition training taught), "
    "then the lower guidance scale (less distortion), then the noise temperature nearer 1 (the noise training used)."
)


@dataclass
class SweepSettings:
    """What ``llamo eval sweep`` measures and how (its flags)."""

    split: str = "val"
    """Corpus split the setting is chosen on; ``test`` is refused (the choice must not see the test split)."""
    scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0, 4.0])
    """Guidance scales of the grid (1 = no guidance)."""
    # `str | None`: YAML reads an unquoted `[null,prompt]` as [None, "prompt"]; __post_init__ says to quote it
    sources: list[str | None] = field(default_factory=lambda: ["null", "prompt"])
    """Unconditional sources of the grid: null (learned null condition), prompt (empty-caption rows); quote
    null in the list: '["null","prompt"]'."""
    steps: list[int] = field(default_factory=lambda: [5, 10, 25, 50])
    """Euler step counts of the grid."""
    temperatures: list[float] = field(default_factory=lambda: [1.0])
    """Noise temperatures of the grid: each latent's initial noise is N(0, t^2 I) (1 = the training noise)."""
    gen_seeds: int = 2
    """Noise seeds each setting is generated with (metrics pooled over them: one seed proves little)."""
    items: int | None = None
    """Validation items used (a seeded subset); None = every item of the split in the frame range."""
    repeats: int = 20
    """Repetitions of the T2M protocol per seed (R-precision groups, Diversity pairs)."""
    seed: int = 0
    """Seed of the item subset, the caption choice, the first noise seed and the protocol."""
    gen_batch: int = 16
    """Prompts generated together."""
    fid_factor: float = 2.0
    """Choice rule: only settings with FID <= fid_factor x the grid's lowest FID are eligible."""
    stage: str | None = None
    """LLaMo stage folder swept (None: the newest of stage3, stage2, stage1)."""
    min_frames: int = MIN_FRAMES
    """Shortest clip kept (T2M protocol: 60)."""
    max_frames: int = MAX_FRAMES
    """Longest clip kept (T2M protocol: T < 300)."""
    device: str | None = None
    """Torch device (None: cuda when available, else cpu)."""

    def __post_init__(self) -> None:
        if self.split == "test":
            raise ValueError(
                "--split test is refused: the generation setting is chosen on a split the report does not score, "
                "so that Table 3 of `llamo eval run` (test split) measures the chosen setting without having "
                "tuned it on test; use --split val (the default)"
            )
        if not self.scales or any(not math.isfinite(s) or s < 0 for s in self.scales):
            raise ValueError(f"--scales must be a non-empty list of finite numbers >= 0, got {self.scales}")
        if None in self.sources:
            raise ValueError(
                f"--sources got {self.sources}: YAML reads an unquoted null as nothing; quote the source names, "
                'e.g. --sources \'["null","prompt"]\''
            )
        if not self.sources or any(s not in CFG_SOURCES for s in self.sources):
            raise ValueError(f"--sources must be a non-empty list of {list(CFG_SOURCES)}, got {self.sources}")
        if not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.steps):
            raise ValueError(f"--steps must be a non-empty list of positive integers, got {self.steps}")
        if not self.temperatures or any(
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0
            for t in self.temperatures
        ):
            raise ValueError(
                f"--temperatures must be a non-empty list of finite numbers > 0 (1 = the training noise), got "
                f"{self.temperatures}"
            )
        for name in ("gen_seeds", "repeats", "gen_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.items is not None and self.items < 2:
            raise ValueError(f"--items must be >= 2 (or omitted for all), got {self.items}")
        if not self.fid_factor >= 1.0:
            raise ValueError(f"--fid_factor must be >= 1 (1: only the lowest FID is eligible), got {self.fid_factor}")

    def eval_settings(self) -> EvalSettings:
        """The `EvalSettings` of the shared Table-3 helpers (items, generation) on this split."""
        return EvalSettings(
            split=self.split,
            items=self.items,
            samples=0,
            length="gt",
            stage=self.stage,
            repeats=self.repeats,
            seed=self.seed,
            gen_batch=self.gen_batch,
            min_frames=self.min_frames,
            max_frames=self.max_frames,
            device=self.device,
        )


def sweep_grid(settings: SweepSettings) -> list[tuple[float, str, int, float]]:
    """``(guidance_scale, cfg, steps, temperature)`` of every setting, scales then sources then steps then
    temperatures (highest first); a scale of 1 (no guidance: the unconditional source is never used) appears once
    per step count and temperature, with ``null``."""
    out: list[tuple[float, str, int, float]] = []
    temperatures = sorted(set(float(t) for t in settings.temperatures), reverse=True)
    for scale in sorted(set(float(s) for s in settings.scales)):
        sources = ["null"] if scale == 1.0 else [s for s in CFG_SOURCES if s in settings.sources]
        for source in sources:
            out += [(scale, source, steps, t) for steps in sorted(set(settings.steps)) for t in temperatures]
    return out


def _temperature(row: Mapping[str, Any]) -> float:
    """A row's noise temperature; a table written before temperatures were swept has none: 1."""
    return float(row.get("temperature", 1.0))


def _is_chosen(row: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    return all((_temperature(row) if k == "temperature" else row[k]) == chosen[k] for k in chosen)


def _describe(row: Mapping[str, Any]) -> str:
    """``scale 5, prompt, 25 steps, temperature 0.5`` (the temperature only when it is not 1)."""
    text = f"scale {float(row['guidance_scale']):g}, {row['cfg']}, {int(row['steps'])} steps"
    return text + (f", temperature {_temperature(row):g}" if _temperature(row) != 1.0 else "")


def choose_setting(rows: Sequence[Mapping[str, Any]], fid_factor: float = 2.0) -> tuple[Mapping[str, Any], str]:
    """The row the choice rule (`RULE`) picks from a score table, and a sentence saying why.

    Args:
        rows: one mapping per setting with ``guidance_scale``, ``cfg``, ``steps``, ``FID``, ``R@3`` and optionally
            ``temperature`` (1 when absent) and ``R@3_ci95`` (half-width of its 95 % interval; 0 when absent: only
            exact ties are ties).
        fid_factor: eligible settings have FID <= fid_factor x the lowest FID.

    Example:
        >>> rows = [dict(guidance_scale=1.0, cfg="null", steps=25, FID=0.10, **{"R@3": 0.28}),
        ...         dict(guidance_scale=2.0, cfg="null", steps=25, FID=0.15, **{"R@3": 0.44}),
        ...         dict(guidance_scale=6.0, cfg="null", steps=25, FID=0.90, **{"R@3": 0.50})]
        >>> choose_setting(rows)[0]["guidance_scale"]
        2.0
    """
    if not rows:
        raise ValueError("choose_setting needs at least one scored setting")
    if not fid_factor >= 1.0:
        raise ValueError(f"fid_factor must be >= 1, got {fid_factor}")
    lowest = min(float(r["FID"]) for r in rows)
    limit = fid_factor * lowest
    eligible = [r for r in rows if float(r["FID"]) <= limit]
    top = max(eligible, key=lambda r: float(r["R@3"]))
    margin = float(top.get("R@3_ci95") or 0.0)
    tied = [r for r in eligible if float(r["R@3"]) >= float(top["R@3"]) - margin]
    chosen = min(
        tied,
        key=lambda r: (
            int(r["steps"]),
            CFG_SOURCES.index(r["cfg"]),
            float(r["guidance_scale"]),
            abs(math.log(_temperature(r))),
        ),
    )
    why = (
        f"{len(eligible)} of {len(rows)} settings have FID <= {fid_factor:g} x {lowest:.4f} = {limit:.4f}; the "
        f"highest R@3 among them is {float(top['R@3']):.3f} ± {margin:.3f} ({_describe(top)}); {len(tied)} within "
        f"that interval; the tie-break (fewer steps, null over prompt, lower scale, temperature nearer 1) picks "
        f"{_describe(chosen)} (R@3 {float(chosen['R@3']):.3f}, FID {float(chosen['FID']):.4f})"
    )
    largest = max(float(r["guidance_scale"]) for r in rows)
    if float(chosen["guidance_scale"]) == largest > 1.0:
        # the optimum may lie beyond the grid: say so rather than let the edge pass for a maximum
        why += f"; scale {largest:g} is the grid's largest, so a wider grid (--scales) may score higher"
    return chosen, why


def _pooled(summaries: Sequence[Mapping[str, Any]], key: str) -> tuple[float, float]:
    values = np.array([v for s in summaries for v in s[key].values], dtype=np.float64)
    return float(values.mean()), 1.96 * float(values.std()) / math.sqrt(len(values))


def _decode_steps(items: TestItems, gen_batch: int) -> int:
    """Decode steps of `generate_test_motions` (one per latent of the longest item of each length-sorted batch)."""
    lengths = sorted(len(f) // 4 for f in items.features)
    return sum(max(lengths[s : s + gen_batch]) for s in range(0, len(lengths), gen_batch))


def run_sweep(run_dir: str | Path, data_dir: str | Path, settings: SweepSettings) -> dict[str, Any]:
    """Score every setting of `sweep_grid` on ``settings.split`` and choose one (`choose_setting`); returns the
    JSON-ready sweep (``rows``, ``chosen``, ``why``, ...). Writes nothing (see `record_sweep`)."""
    if settings.split == "test":  # SweepSettings refuses it; a caller may have changed the field since
        raise ValueError("the sweep must not run on the test split; use split='val'")
    run, data = Path(run_dir), Path(data_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train it first (`make pipeline EXP=...`)")
    stage_dir = find_llamo_stage(run, settings.stage)
    if stage_dir is None:
        raise FileNotFoundError(f"run {run} has no finished LLaMo stage to sweep (stage1..3 with a handoff)")
    evaluator_dir = run / "evaluator"
    if not (evaluator_dir / "handoff.safetensors").is_file():
        raise FileNotFoundError(f"{evaluator_dir / 'handoff.safetensors'} does not exist: the sweep scores with "
                                "the run's evaluator; train it (`make stage-evaluator EXP=...`)")  # fmt: skip
    base = settings.eval_settings()
    run_model: LLaMoRun = load_run(run, stage_dir.name, device=base.device)
    evaluator = load_evaluator(evaluator_dir, map_location=base.device)
    mean, std = load_mean_std(evaluator_dir)
    items = load_test_items(data, base)
    n = len(items.ids)
    group, pairs = min(GROUP_SIZE, n), min(DIVERSITY_PAIRS, n)
    text = embed_texts(evaluator, items.prompts)
    real = embed_clips(evaluator, items.features, mean, std, device=base.device, desc="embed real")
    steps_per_pass = _decode_steps(items, base.gen_batch)
    grid = sweep_grid(settings)
    rows: list[dict[str, Any]] = []
    for k, (scale, source, steps, temperature) in enumerate(grid):
        label = _describe({"guidance_scale": scale, "cfg": source, "steps": steps, "temperature": temperature})
        print(f"sweep: setting {k + 1}/{len(grid)}: {label} ...", flush=True)
        model = run_model.with_generation(steps, scale, source, temperature, flags="sweep grid")
        summaries, seconds = [], 0.0
        for s in range(settings.gen_seeds):
            start = time.perf_counter()
            generated, _ = generate_test_motions(model, items, replace(base, seed=settings.seed + s))
            seconds += time.perf_counter() - start
            gen = embed_clips(evaluator, generated, mean, std, device=base.device, desc="embed generated")

            def one(g: torch.Generator, gen: torch.Tensor = gen) -> dict[str, float]:
                return t2m_metrics(text, real, gen, g, group_size=group, diversity_pairs=pairs)

            summaries.append(repeat_protocol(one, repeats=settings.repeats, seed=settings.seed))
        row: dict[str, Any] = {"guidance_scale": scale, "cfg": source, "steps": steps, "temperature": temperature}
        for metric in ("FID", "R@1", "R@3", "MM-Dist", "Diversity"):
            row[metric], row[f"{metric}_ci95"] = _pooled(summaries, f"gen/{metric}")
        row["seconds"] = seconds
        row["ms_per_token"] = 1000.0 * seconds / (steps_per_pass * settings.gen_seeds)
        rows.append(row)
        print(f"sweep: {_row_line(row)}", flush=True)
    chosen, why = choose_setting(rows, settings.fid_factor)
    real_r3 = _pooled([repeat_protocol(lambda g: t2m_metrics(text, real, real, g, group_size=group,
                                                             diversity_pairs=pairs), repeats=settings.repeats,
                                       seed=settings.seed)], "real/R@3")  # fmt: skip
    return {
        "run": str(run),
        "data": str(data),
        "stage": stage_dir.name,
        "split": settings.split,
        "items": n,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "decode_steps_per_pass": steps_per_pass,
        "real_R@3": real_r3[0],
        "group": group,
        "rows": rows,
        "chosen": {**{k: chosen[k] for k in ("guidance_scale", "cfg", "steps")}, "temperature": _temperature(chosen)},
        "rule_name": (
            f"highest R@3 with FID <= {settings.fid_factor:g} x lowest; ties: fewer steps, null, lower scale, "
            "temperature nearer 1"
        ),
        "rule": RULE.format(factor=settings.fid_factor),
        "why": why,
    }


def _row_line(row: Mapping[str, Any]) -> str:
    return (
        f"scale {row['guidance_scale']:g} {row['cfg']:>6} {row['steps']:>3} steps T {_temperature(row):g}: "
        f"FID {row['FID']:.4f}, R@3 "
        f"{row['R@3']:.3f} ± {row['R@3_ci95']:.3f}, MM-Dist {row['MM-Dist']:.3f}, {row['ms_per_token']:.1f} ms/token"
    )


def format_sweep_table(sweep: Mapping[str, Any]) -> str:
    """Markdown table of a `run_sweep` result (the chosen row marked), with the rule and why it chose."""
    chosen = sweep["chosen"]
    lines = [
        f"Sweep of `{sweep['run']}` ({sweep['stage']}) on split `{sweep['split']}` of `{sweep['data']}`: "
        f"{sweep['items']} items, {sweep['settings']['gen_seeds']} noise seed(s) x {sweep['settings']['repeats']} "
        f"protocol repetitions per setting (mean ± 95 % interval); real motion R@3 {sweep['real_R@3']:.3f}.",
        "",
        "| scale | source | steps | temperature | FID ↓ | R@3 ↑ | MM-Dist ↓ | ms/token | chosen |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sweep["rows"]:
        mark = "**←**" if _is_chosen(r, chosen) else ""
        lines.append(
            f"| {r['guidance_scale']:g} | {r['cfg']} | {r['steps']} | {_temperature(r):g} | "
            f"{r['FID']:.4f} ± {r['FID_ci95']:.4f} | "
            f"{r['R@3']:.3f} ± {r['R@3_ci95']:.3f} | {r['MM-Dist']:.3f} | {r['ms_per_token']:.1f} | {mark} |"
        )
    lines += [
        "",
        "ms/token: generation wall time / decode steps (one latent per running stream per step, batches of "
        f"{sweep['settings']['gen_batch']} prompts).",
        f"Rule: {sweep['rule']}",
        f"Chosen: scale {chosen['guidance_scale']:g}, source {chosen['cfg']}, {chosen['steps']} steps, temperature "
        f"{_temperature(chosen):g} — {sweep['why']}.",
    ]
    return "\n".join(lines)


def plot_sweep(sweep: Mapping[str, Any], path: str | Path) -> Path:
    """Draw R@3, FID and ms/token against the guidance scale, one line per (source, steps, temperature), the chosen
    setting starred; a PNG (matplotlib, headless Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, chosen = sweep["rows"], sweep["chosen"]
    # one colour per (steps, temperature) curve
    curves = sorted({(r["steps"], _temperature(r)) for r in rows}, key=lambda c: (c[0], -c[1]))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(curves), 1)))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("R@3", "R@3 ↑"), ("FID", "FID ↓"), ("ms_per_token", "ms per token"))
    for ax, (key, label) in zip(axes, panels):
        for source in sorted({r["cfg"] for r in rows}, key=CFG_SOURCES.index):
            style = "-" if source == "null" else "--"
            for color, (steps, temperature) in zip(colors, curves):
                # scale 1 is run once (as null) and starts both sources' curves
                pts = sorted(
                    (r["guidance_scale"], r[key])
                    for r in rows
                    if r["steps"] == steps
                    and _temperature(r) == temperature
                    and (r["cfg"] == source or r["guidance_scale"] == 1.0)
                )
                if not pts:
                    continue
                xs, ys = zip(*pts)
                label = f"{source}, {steps} steps" + (
                    f", T {temperature:g}" if len(curves) > len({c[0] for c in curves}) else ""
                )
                ax.plot(xs, ys, style, marker="o", color=color, label=label)
        best = next(r for r in rows if _is_chosen(r, chosen))
        ax.plot([best["guidance_scale"]], [best[key]], marker="*", markersize=16, color="red", linestyle="none")
        ax.set_xlabel("guidance scale")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{sweep['run']} ({sweep['stage']}), split {sweep['split']}, {sweep['items']} items; "
        f"chosen (red star): {_describe(chosen)}"
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def record_sweep(run_dir: str | Path, sweep: Mapping[str, Any]) -> Path:
    """Write the chosen setting with the rule, the split, the date and the table to ``RUN/generation.json``."""
    keys = ("chosen", "stage", "split", "data", "items", "created", "rule_name", "rule", "why", "settings", "rows")
    return write_generation_record(run_dir, {k: sweep[k] for k in keys})
