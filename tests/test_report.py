"""`llamo eval run` helpers (llamo/eval/): baselines, finiteness guard, markdown, ablation summary.

The end-to-end path (a trained run evaluated into report.md) is tests/test_demo_smoke.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llamo.eval.ablations import ablation_report, summary_row
from llamo.eval.m2t import most_frequent_caption
from llamo.eval.markdown import format_report
from llamo.eval.report import training_wall_times
from llamo.eval.settings import EvalSettings
from llamo.eval.settings import check_finite as _check_finite
from llamo.eval.t2m import derangement
from llamo.inference.text import LLaMoTextLogitsFn


@pytest.mark.parametrize("n", [2, 3, 10, 200])
def test_derangement_moves_every_item_and_is_a_permutation(n: int) -> None:
    for seed in range(5):
        p = derangement(n, np.random.default_rng(seed))
        assert sorted(p.tolist()) == list(range(n))
        assert (p != np.arange(n)).all()


def test_derangement_needs_two_items() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, np.random.default_rng(0))


def test_most_frequent_caption_counts_all_clips_and_breaks_ties_alphabetically() -> None:
    caps = [["a man walks", "b"], ["a man walks ", "c"], ["c", "d"]]
    assert most_frequent_caption(caps) == ("a man walks", 2)  # stripped; "c" also 2 -> alphabetical first
    assert most_frequent_caption([["z"], ["y"]]) == ("y", 1)
    with pytest.raises(ValueError, match="no caption"):
        most_frequent_caption([[" "], []])


def test_check_finite_names_the_bad_key() -> None:
    _check_finite({"a": [1.0, {"b": 2}], "c": None, "d": "x"})
    with pytest.raises(ValueError, match=r"results\.tables\.t2m\.rows\[1\]\.FID"):
        _check_finite({"tables": {"t2m": {"rows": [{"FID": 1.0}, {"FID": math.nan}]}}})
    with pytest.raises(ValueError, match="inf"):
        _check_finite({"x": math.inf})


def test_settings_reject_bad_flags() -> None:
    with pytest.raises(ValueError, match="--length"):
        EvalSettings(length="auto")
    with pytest.raises(ValueError, match="--items"):
        EvalSettings(items=1)
    with pytest.raises(ValueError, match="--repeats"):
        EvalSettings(repeats=0)
    with pytest.raises(ValueError, match="--min-frames"):
        EvalSettings(min_frames=300, max_frames=299)


def _results(run: str, r3: float = 0.5, bleu4: float = 0.1, mpjpe: float = 20.0, skip_m2t: bool = False) -> dict:
    """A results dict shaped like `evaluate_run`'s (numbers made up)."""

    def section(title: str, rows: list[dict[str, Any]] | None, skipped: str | None = None, **extra: Any) -> dict:
        return {"title": title, "seconds": 1.5, "skipped": skipped, "notes": ["a note"], "rows": rows, **extra}

    t2m_row = {k: 1.0 for k in ("FID", "R@1", "R@2", "MM-Dist", "Diversity")} | {"R@3": r3}
    t2m_row |= {f"{k}_ci95": 0.01 for k in ("FID", "R@1", "R@2", "R@3", "MM-Dist", "Diversity")}
    m2t = {"bleu_1": 0.5, "bleu_4": bleu4, "rouge_l": 0.4, "cider": 1.0, "bertscore_f1": 0.6, "R@3": 0.3}
    results = {
        "run": f"runs/{run}",
        "data": "data/synth",
        "created": "2026-01-01T00:00:00+00:00",
        "llamo_stage": "stage3",
        "settings": {"split": "test"},
        "training": {"vae": {"seconds": 10.0, "max_steps": 5}, "stage1": {"seconds": 20.0, "max_steps": 0}},
        "seconds": 30.0,
        "tables": {
            "reconstruction": section(
                "Table 2", [{"name": "VAE", "mpjpe": mpjpe, "mpjre": 1.0, "sjpe": 0.1, "t_down": 4, "comp": 0.0294}]
            ),
            "t2m": section(
                "Table 3",
                [
                    dict(t2m_row, name="Real", FID=None),
                    dict(t2m_row, name="Shuffled", **{"R@3": 0.09}),
                    dict(t2m_row, name="LLaMo"),
                ],
            ),
            "m2t": section("Table 4", None, "no LLaMo stage")
            if skip_m2t
            else section("Table 4", [dict(m2t, name="Constant", bleu_4=0.0), dict(m2t, name="LLaMo")]),
            "language": section(
                "Language",
                [
                    {"name": "base", "accuracy": 0.5, "correct": 5, "total": 10, "perplexity": 12.0},
                    {"name": "LLaMo", "accuracy": 0.5, "correct": 5, "total": 10, "perplexity": 12.0},
                ],
                identical=True,
                mot=True,
            ),
            "samples": section("Samples", [{"file": "samples/00_a.gif", "frames": 40, "id": "a", "prompt": "walk"}]),
        },
    }
    results["row"] = summary_row(results)
    return results


def test_format_report_has_every_table_checks_and_skips() -> None:
    md = format_report(_results("demo"))
    for title in ("Table 2", "Table 3", "Table 4", "Language", "Samples", "Training wall time", "Checks"):
        assert f"## {title}" in md
    assert "margin +0.410" in md and "**PASS**" in md  # R@3 0.5 vs shuffled 0.09
    assert md.count("Wall time: 1.5 s.") == 5
    skipped = format_report(_results("demo", skip_m2t=True))
    assert "**Skipped:** no LLaMo stage" in skipped and "not measured (Table 4 skipped)" in skipped


def test_summary_row_and_ablation_report(tmp_path: Path) -> None:
    for name, kwargs in {
        "demo": {},
        "ablate-latent16": {"mpjpe": 30.0},  # paper: higher -> reproduces
        "ablate-latent64": {"mpjpe": 25.0},  # paper: lower -> does not reproduce
        "ablate-only_stage1": {"r3": 0.2},
        "ablate-stages12": {"r3": 0.485},  # 0.015 below the reference: within the two 0.01 intervals
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(name, **kwargs)))
    row = summary_row(_results("demo"))
    assert row["T2M R@3"] == 0.5 and row["shuffled R@3"] == 0.09 and row["train s"] == 30.0
    md = ablation_report(tmp_path)
    assert md.count("\n| ") == 2 + 5  # header, separator, demo + 4 ablations
    # one seed: MPJPE has no interval, so no direction is called either way
    assert "latent16, MPJPE: 30 vs 20 (higher); paper: higher" in md
    assert "latent64, MPJPE: 25 vs 20 (higher); paper: lower" in md and "does NOT reproduce" not in md
    no_interval = "— inconclusive: no 95 % interval (1 seed(s) here, 1 in the reference)"
    assert all(no_interval in line for line in md.splitlines() if line.startswith(("- latent16,", "- latent64,")))
    assert "only_stage1, T2M R@3: 0.2 vs 0.5 (lower)" in md
    assert "stages12, T2M R@3: 0.485 vs 0.5 (lower); paper: lower" in md
    assert "— inconclusive: the difference is within the 95 % intervals (±0.01, ±0.01)." in md
    assert "only_stage1, T2M R@3: 0.2 vs 0.5 (lower); paper: lower (Table 6: R@3 0.959 -> 0.762) — reproduces." in md
    with pytest.raises(FileNotFoundError, match="ablate-"):
        ablation_report(tmp_path / "nothing")


def test_training_wall_times_reads_config_and_handoff(tmp_path: Path) -> None:
    import os

    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "config.yaml").write_text("trainer:\n  max_steps: 7\n")
    (stage / "handoff.safetensors").write_bytes(b"")
    os.utime(stage / "config.yaml", (1000.0, 1000.0))
    os.utime(stage / "handoff.safetensors", (1012.5, 1012.5))
    (tmp_path / "stage2").mkdir()  # no handoff: not listed
    assert training_wall_times(tmp_path) == {"stage1": {"seconds": 12.5, "max_steps": 7}}


def test_llamo_text_logits_fn_equals_base_model() -> None:
    """The MoT text path through `LLaMoTextLogitsFn` gives the base model's logits (full, prefill and cached)."""
    from tiny_llamo import tiny_llamo

    from llamo.inference.text import hf_logits_fn

    model, base = tiny_llamo("gqa_tied")
    model.eval()
    ids = torch.randint(4, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    ours, ref = LLaMoTextLogitsFn(model), hf_logits_fn(base)
    with torch.no_grad():
        vocab = base.config.vocab_size
        assert torch.equal(ours(ids, mask)[..., :vocab], ref(ids, mask))
        (a, sa), (b, sb) = ours.start(ids, mask), ref.start(ids, mask)
        assert torch.equal(a[:, :vocab], b)
        nxt = torch.tensor([[5], [6]])
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        assert torch.equal(ours.step(nxt, mask2, sa)[0][:, :vocab], ref.step(nxt, mask2, sb)[0])
