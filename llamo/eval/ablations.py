"""The ablation summary: every ``runs/ablate-*/results.json`` next to the reference run, directions vs the paper.

``llamo eval ablations RUNS`` (``make ablations``) writes ``RUNS/ablations/report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamo.eval.markdown import format_value
from llamo.eval.seeds import seed_interval, seed_of_run, separated

__all__ = [
    "PAPER_DIRECTIONS",
    "ablation_report",
    "aggregate_seeds",
    "direction_verdict",
    "paired_difference",
    "summary_row",
]

#: what the paper reports for each ablation, as (metric, direction vs the full model, paper numbers)
PAPER_DIRECTIONS: dict[str, list[tuple[str, str, str]]] = {
    "no_mot": [
        ("probe acc", "lower", "Table 5: MMLU 63.4 -> 24.9, IFEval 77.4 -> 22.3 (3B)"),
        ("T2M FID", "higher", "Table 5: FID 19.9 -> 46.2 (3B)"),
        ("T2M R@3", "lower", "Table 5: R@3 0.959 -> 0.831 (3B)"),
    ],
    "vae_predicted": [
        ("T2M FID", "higher", "Table 6: FID 19.9 -> 34.0"),
        ("T2M R@3", "lower", "Table 6: R@3 0.959 -> 0.894"),
        ("M2T R@3", "lower", "Table 6: M2T R@3 0.942 -> 0.922"),
    ],
    "only_stage1": [
        ("T2M FID", "higher", "Table 6: FID 19.9 -> 80.9"),
        ("T2M R@3", "lower", "Table 6: R@3 0.959 -> 0.762"),
        ("M2T R@3", "lower", "Table 6: M2T R@3 0.942 -> 0.911"),
    ],
    "stages12": [
        ("T2M FID", "higher", "Table 6: FID 19.9 -> 22.5"),
        ("T2M R@3", "lower", "Table 6: R@3 0.959 -> 0.952"),
    ],
    "latent16": [("MPJPE", "higher", "Table 2: MPJPE 10.1 (z32) -> 32.3 (z16)")],
    "latent64": [("MPJPE", "lower", "Table 2: MPJPE 10.1 (z32) -> 3.86 (z64)")],
}


_SUMMARY_COLUMNS = (
    ("MPJPE", 2),
    ("T2M FID", 3),
    ("T2M R@3", 3),
    ("shuffled R@3", 3),
    ("M2T R@3", 3),
    ("M2T MM-D", 3),
    ("BLEU@4", 4),
    ("probe acc", 3),
    ("probe ppl", 3),
    ("train s", 0),
    ("eval s", 0),
)


def summary_row(results: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row of the ablation report: headline numbers and wall times of one run."""
    tables = results["tables"]
    row: dict[str, Any] = {"run": Path(results["run"]).name}

    def last(key: str) -> Mapping[str, Any] | None:
        rows = tables[key].get("rows") if not tables[key]["skipped"] else None
        return rows[-1] if rows else None

    rec = last("reconstruction")
    row["MPJPE"] = rec["mpjpe"] if rec else None
    t2m = last("t2m")
    row["T2M FID"] = t2m["FID"] if t2m else None
    row["T2M R@3"] = t2m["R@3"] if t2m else None
    row["T2M R@3 ci95"] = t2m.get("R@3_ci95") if t2m else None
    if not tables["t2m"]["skipped"] and tables["t2m"].get("rows"):
        row["shuffled R@3"] = tables["t2m"]["rows"][1]["R@3"]
    m2t = last("m2t")
    row["M2T R@3"] = m2t.get("R@3") if m2t else None
    row["M2T MM-D"] = m2t.get("MM-Dist") if m2t else None
    row["BLEU@4"] = m2t["bleu_4"] if m2t else None
    lang = tables["language"]
    if not lang["skipped"]:
        row["base probe acc"] = lang["rows"][0]["accuracy"]
        row["probe acc"] = lang["rows"][1]["accuracy"]
        row["probe ppl"] = lang["rows"][1]["perplexity"]
    train = results.get("training", {})
    trained = [v for v in train.values() if "reused_from" not in v]
    row["train s"] = sum(v["seconds"] for v in trained if v.get("seconds") is not None)
    row["eval s"] = results.get("seconds")
    row["reused"] = [name for name, v in train.items() if "reused_from" in v]
    return row


def _seed_rows(paths: list[Path]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Summary rows grouped by run name without its ``-seed<k>`` suffix, each group in seed order."""
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for path in paths:
        base, seed = seed_of_run(path.parent.name)
        # rows are recomputed from the stored tables, so results written by an older llamo get today's columns
        groups.setdefault(base, []).append((seed, summary_row(json.loads(path.read_text()))))
    return {k: sorted(v, key=lambda sr: sr[0]) for k, v in groups.items()}


def aggregate_seeds(rows: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One row of the ablation report from the summary rows of one run's seeds: every column's mean, its t-based
    95 % interval over the seeds that measured it (``<col> ci95``; `llamo.eval.seeds.seed_interval`) and that count
    (``<col> n``). With one seed, T2M R@3 keeps the interval of the protocol's repetitions (``T2M R@3 ci95 kind``
    says which)."""
    out: dict[str, Any] = {
        "seeds": [seed for seed, _ in rows],
        "reused": sorted({r for _, row in rows for r in row["reused"]}),
    }
    for column, _ in _SUMMARY_COLUMNS:
        values = [row[column] for _, row in rows if row.get(column) is not None]
        if not values:
            out[column], out[f"{column} ci95"], out[f"{column} n"] = None, None, 0
            continue
        interval = seed_interval(values)
        out[column], out[f"{column} ci95"], out[f"{column} n"] = interval.mean, interval.ci95, len(values)
        out[f"{column} ci95 kind"] = "seeds" if interval.ci95 is not None else None
    if out["T2M R@3 n"] == 1:
        protocol = next(row.get("T2M R@3 ci95") for _, row in rows if row.get("T2M R@3") is not None)
        out["T2M R@3 ci95"], out["T2M R@3 ci95 kind"] = protocol, "protocol" if protocol is not None else None
    return out


def _cell(row: Mapping[str, Any], column: str, digits: int) -> str:
    value, ci = row.get(column), row.get(f"{column} ci95")
    if value is None or ci is None or row.get(f"{column} ci95 kind") != "seeds":
        return format_value(value, digits)
    return f"{format_value(value, digits)} ± {format_value(ci, digits)}"


def direction_verdict(name: str, row: Mapping[str, Any], ref: Mapping[str, Any], metric: str, direction: str) -> str:
    """The verdict on one paper direction: "reproduces" / "does NOT reproduce" only when the two 95 % intervals
    separate (`llamo.eval.seeds.separated`), "inconclusive" when they overlap or either row has no interval."""
    ours, theirs = row[metric], ref[metric]
    went = "higher" if ours > theirs else "lower" if ours < theirs else "equal"
    ci, ref_ci = row.get(f"{metric} ci95"), ref.get(f"{metric} ci95")
    apart = separated(ours, ci, theirs, ref_ci)
    if apart is None:
        return (
            f"inconclusive: no 95 % interval ({row.get(f'{metric} n', 0)} seed(s) here, {ref.get(f'{metric} n', 0)} in "
            "the reference); train more seeds (`make ablations SEEDS=3`)"
        )
    if not apart:
        return f"inconclusive: the difference is within the 95 % intervals (±{ci:.3g}, ±{ref_ci:.3g})"
    return "reproduces" if went == direction else "does NOT reproduce"


def paired_difference(
    group: list[tuple[int, Mapping[str, Any]]], ref_group: list[tuple[int, Mapping[str, Any]]], metric: str
) -> str | None:
    """``metric`` of an ablation minus the reference's, paired by training seed: the seeds both measured, the mean
    difference and its t-based 95 % interval (None with fewer than two such seeds).

    An ablation shares its seed's VAE, evaluator and every stage it does not change with the reference run, so the
    per-seed differences leave out much of the training noise that the two rows' own intervals carry."""
    ref = {seed: row.get(metric) for seed, row in ref_group}
    pairs = [
        (seed, row[metric] - ref[seed])
        for seed, row in group
        if row.get(metric) is not None and ref.get(seed) is not None
    ]
    if len(pairs) < 2:
        return None
    interval = seed_interval([d for _, d in pairs])
    assert interval.ci95 is not None
    zero = "excludes" if abs(interval.mean) > interval.ci95 else "includes"
    seeds = ", ".join(str(seed) for seed, _ in pairs)
    return f"paired by seed ({seeds}): difference {interval.mean:+.3g} ± {interval.ci95:.3g} ({zero} 0)"


def ablation_report(runs_root: str | Path, reference: str = "demo") -> str:
    """Markdown summary of every ``<runs_root>/ablate-*[-seed<k>]/results.json`` next to ``<runs_root>/<reference>``
    (and ``<reference>-seed<k>``), one row per ablation with mean ± 95 % interval over its training seeds.

    Each ablation's direction is compared with the paper's (`PAPER_DIRECTIONS`) against the reference run and
    called reproduced (or not) only when the two intervals separate, inconclusive otherwise (`direction_verdict`).
    """
    root = Path(runs_root)
    paths = sorted(root.glob("ablate-*/results.json"))
    if not paths:
        raise FileNotFoundError(f"no {root}/ablate-*/results.json found; run `make ablations` (or make ablate-<name>)")
    ref_paths = [
        p
        for p in [root / reference / "results.json", *sorted(root.glob(f"{reference}-seed*/results.json"))]
        if p.is_file() and seed_of_run(p.parent.name)[0] == reference
    ]
    ref_group = _seed_rows(ref_paths)[reference] if ref_paths else []
    ref_row = aggregate_seeds(ref_group) if ref_paths else None
    rows: list[tuple[str, dict[str, Any]]] = []
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    if ref_row is not None:
        rows.append((f"{reference} (MoT, sampled VAE z32, stages 1-3)", ref_row))
    for base, group in _seed_rows(paths).items():
        rows.append((base.removeprefix("ablate-"), aggregate_seeds(group)))
        groups[base.removeprefix("ablate-")] = group
    ref_path = root / reference / "results.json"
    header = "| run | seeds | " + " | ".join(c for c, _ in _SUMMARY_COLUMNS) + " | reused stages |"
    lines = [
        f"# Ablations ({root})",
        "",
        "Same corpus and demo budget for every row; each row is the mean over its training seeds (`seeds`: run "
        "folders `ablate-<name>` for seed 0, `ablate-<name>-seed<k>` otherwise; `make ablations SEEDS=S`), with "
        "± the t-based 95 % interval over those seeds, t_{0.975,K-1} · s / sqrt(K), where a metric was measured for "
        "K >= 2 seeds. `train s` is the summed fit wall time of the stages the run trained itself, `eval s` the "
        "wall time of `llamo eval run`. `reused stages` were linked from the reference run of the same seed "
        "instead of retrained because neither the ablation nor anything upstream changes them (training is "
        "deterministic, so retraining would give the same weights). `-`: not measured for that run (the "
        "latent-width rows are paper Table 2 and train the VAE only).",
        "",
        header,
        "| --- | --- |" + " ---: |" * len(_SUMMARY_COLUMNS) + " --- |",
    ]
    for name, row in rows:
        reused = ", ".join(row.get("reused") or []) or "-"
        seeds = ", ".join(str(k) for k in row["seeds"])
        lines.append(
            f"| {name} | {seeds} | " + " | ".join(_cell(row, c, d) for c, d in _SUMMARY_COLUMNS) + f" | {reused} |"
        )
    lines += ["", "## Direction vs the paper", ""]
    if ref_row is None:
        lines.append(f"No reference run ({ref_path} missing): directions cannot be compared. Run `make demo` first.")
    for name, row in rows[1 if ref_row else 0 :]:
        for metric, direction, paper in PAPER_DIRECTIONS.get(name, []):
            if ref_row is None:
                break
            ours, ref = row.get(metric), ref_row.get(metric)
            if ours is None or ref is None:
                lines.append(f"- {name}, {metric}: not measured ({paper}).")
                continue
            went = "higher" if ours > ref else "lower" if ours < ref else "equal"
            verdict = direction_verdict(name, row, ref_row, metric, direction)
            paired = paired_difference(groups[name], ref_group, metric)
            lines.append(
                f"- {name}, {metric}: {ours:.4g} vs {ref:.4g} ({went}); paper: {direction} ({paper}) — {verdict}"
                + (f"; {paired}." if paired else ".")
            )
    if ref_row is not None:
        lines += [
            "",
            "A paper direction is called only when the two 95 % intervals separate, "
            "|mean_a - mean_b| > h_a + h_b; otherwise it is inconclusive. With two or more training seeds the "
            "interval is over those seeds (it includes training noise and, with `--gen_seeds`, generation noise); "
            "with one seed only T2M R@3 has an interval, that of the protocol's repetitions over R-precision groups, "
            "which leaves out training and generation noise, and every other metric is inconclusive. Where both "
            "rows share two or more seeds, the line also gives the difference paired by seed with its t-based "
            "95 % interval: the two runs of a seed share its VAE, evaluator and unchanged stages, so the noise they "
            "share cancels (what differs between them does not); it is evidence beside the verdict, not the rule "
            "that calls it.",
        ]
    return "\n".join(lines) + "\n"
