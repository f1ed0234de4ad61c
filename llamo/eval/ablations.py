"""The ablation summary: every ``runs/ablate-*/results.json`` next to the reference run, directions vs the paper.

``llamo eval ablations RUNS`` (``make ablations``) writes ``RUNS/ablations/report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamo.eval.markdown import format_value

__all__ = ["PAPER_DIRECTIONS", "ablation_report", "summary_row"]

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


def ablation_report(runs_root: str | Path, reference: str = "demo") -> str:
    """Markdown summary of every ``<runs_root>/ablate-*/results.json`` next to ``<runs_root>/<reference>``.

    Each ablation's direction is compared with the paper's (`PAPER_DIRECTIONS`) against the reference run and
    stated plainly, whether it reproduces or not.
    """
    root = Path(runs_root)
    paths = sorted(root.glob("ablate-*/results.json"))
    if not paths:
        raise FileNotFoundError(f"no {root}/ablate-*/results.json found; run `make ablations` (or make ablate-<name>)")
    rows: list[tuple[str, dict[str, Any]]] = []
    ref_path = root / reference / "results.json"
    # rows are recomputed from the stored tables, so results written by an older llamo get today's columns
    ref_row = summary_row(json.loads(ref_path.read_text())) if ref_path.is_file() else None
    if ref_row is not None:
        rows.append((f"{reference} (MoT, sampled VAE z32, stages 1-3)", ref_row))
    for p in paths:
        rows.append((p.parent.name.removeprefix("ablate-"), summary_row(json.loads(p.read_text()))))
    header = "| run | " + " | ".join(c for c, _ in _SUMMARY_COLUMNS) + " | reused stages |"
    lines = [
        f"# Ablations ({root})",
        "",
        "Same corpus, demo budget and seeds for every row; `train s` is the summed fit wall time of the stages the "
        "run trained itself, `eval s` the wall time of `llamo eval run`. `reused stages` were linked from the "
        "reference run instead of retrained because neither the ablation nor anything upstream changes them "
        "(training is deterministic, so retraining would give the same weights). `-`: not measured for that run "
        "(the latent-width rows are paper Table 2 and train the VAE only).",
        "",
        header,
        "| --- |" + " ---: |" * len(_SUMMARY_COLUMNS) + " --- |",
    ]
    for name, row in rows:
        reused = ", ".join(row.get("reused") or []) or "-"
        lines.append(
            f"| {name} | " + " | ".join(format_value(row.get(c), d) for c, d in _SUMMARY_COLUMNS) + f" | {reused} |"
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
            ci, ref_ci = row.get(f"{metric} ci95"), ref_row.get(f"{metric} ci95")
            if ci is not None and ref_ci is not None and abs(ours - ref) <= ci + ref_ci:
                verdict = f"inconclusive: the difference is within the 95 % intervals (±{ci:.3g}, ±{ref_ci:.3g})"
            else:
                verdict = "reproduces" if went == direction else "does NOT reproduce"
            lines.append(
                f"- {name}, {metric}: {ours:.4g} vs {ref:.4g} ({went}); paper: {direction} ({paper}) — {verdict}."
            )
    if ref_row is not None:
        lines += [
            "",
            "One seed per row. T2M R@3 carries the 95 % interval of the protocol's repetitions (over R-precision "
            "groups, not over training seeds); FID, MPJPE, BLEU and the probe carry none, so a small difference in "
            "them can be seed-to-seed noise.",
        ]
    return "\n".join(lines) + "\n"
