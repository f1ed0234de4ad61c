"""``llamo eval run --protocol motionstreamer`` (MotionStreamer's ``eval_t2m.py``) and ``--paper`` resolution.

The data folder is written here in HumanML3D-272 layout with clips around the 60/300-frame boundaries and
``caption#tokens#from#to`` lines, tagged and untagged; the expected items follow the reference's §4.1 by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llamo.commands.evaluation import run as eval_run_command
from llamo.eval.markdown import format_report
from llamo.eval.motionstreamer import motionstreamer_test_items
from llamo.eval.paper import resolve_eval_inputs
from llamo.eval.settings import EvalSettings
from metrics.captioning import BERTScoreConfig
from metrics.command import run_command
from metrics.motionstreamer_protocol import (
    diversity_independent,
    diversity_times,
    drop_last_batches,
    motionstreamer_t2m_metrics,
)

#: clip id -> (frames, caption lines)
CLIPS: dict[str, tuple[int, list[str]]] = {
    # 59 frames: below 60, dropped with its captions
    "a_short": (59, ["a person walks#a/DET#0.0#0.0", "a person waves#a/DET#0.0#1.9"]),
    # exactly 60: kept, two untagged captions -> one whole-clip item
    "b_60": (60, ["a person jumps#a/DET#0.0#0.0", "someone hops#s/NOUN#nan#nan"]),
    # 299: kept; whole item + tagged 0-90 twice (two items) + 150-299 (clamped to the clip) ; 30-75 is too short
    "c_299": (
        299,
        [
            "a person dances#a/DET#0.0#0.0",
            "a person walks forward#a/DET#0.0#3.0",
            "someone walks ahead#s/NOUN#0.0#3.0",
            "a person jumps once#a/DET#1.0#2.5",
            "a person sits down#a/DET#5.0#20.0",
        ],
    ),
    # 300 frames: not < 300, dropped with its valid-looking tagged sub-clip
    "d_300": (300, ["a person runs#a/DET#0.0#0.0", "a person turns#a/DET#0.0#3.0"]),
    # only tagged lines: no whole-clip item, two sub-clip items
    "e_tagged": (150, ["a person turns left#a/DET#0.5#3.0", "a person waves#a/DET#1.0#4.0"]),
    # bare captions (MotionMillion style): whole-clip item
    "f_bare": (61, ["a person stretches", "someone stretches the arms"]),
}
#: item id -> (span start, span end, captions)
EXPECTED = {
    "b_60": (0, 60, ["a person jumps", "someone hops"]),
    "c_299": (0, 299, ["a person dances"]),
    "c_299@0-90": (0, 90, ["a person walks forward"]),
    "c_299@0-90#2": (0, 90, ["someone walks ahead"]),
    "c_299@150-299": (150, 299, ["a person sits down"]),
    "e_tagged@15-90": (15, 90, ["a person turns left"]),
    "e_tagged@30-120": (30, 120, ["a person waves"]),
    "f_bare": (0, 61, ["a person stretches", "someone stretches the arms"]),
}


def _clip(clip_id: str, frames: int) -> np.ndarray:
    """A clip whose frame t holds t in column 0 (crops are checked against it)."""
    x = np.full((frames, 272), float(len(clip_id)), dtype=np.float32)
    x[:, 0] = np.arange(frames)
    return x


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "hml272"
    for sub in ("motion_data", "texts", "split", "mean_std"):
        (root / sub).mkdir(parents=True)
    for clip_id, (frames, lines) in CLIPS.items():
        np.save(root / "motion_data" / f"{clip_id}.npy", _clip(clip_id, frames))
        (root / "texts" / f"{clip_id}.txt").write_text("\n".join(lines) + "\n")
    (root / "split" / "test.txt").write_text("\n".join(CLIPS) + "\n")
    np.save(root / "mean_std" / "Mean.npy", np.zeros(272, np.float32))
    np.save(root / "mean_std" / "Std.npy", np.ones(272, np.float32))
    return root


def test_items_follow_motionstreamer_rules(data: Path) -> None:
    items = motionstreamer_test_items(data, "test", seed=3)
    assert sorted(items.ids) == sorted(EXPECTED)
    assert (items.clips, items.left_out, items.sub_clips_left_out) == (4, 2, 1)  # a, d out; c's 30-75 out
    for i, item_id in enumerate(items.ids):
        start, end, captions = EXPECTED[item_id]
        assert items.spans[i] == (start, end)
        assert items.captions[i] == captions
        assert items.prompts[i] in captions
        span, m, offset = end - start, len(items.features[i]), items.offsets[i]
        assert m % 4 == 0 and m in ((span // 4) * 4, (span // 4 - 1) * 4), (item_id, span, m)
        assert 0 <= offset <= span - m
        # the crop is the clip's frames [start + offset, start + offset + m)
        np.testing.assert_array_equal(items.features[i][:, 0], np.arange(start + offset, start + offset + m))
    again = motionstreamer_test_items(data, "test", seed=3)
    assert again.offsets == items.offsets and again.prompts == items.prompts
    assert [len(f) for f in again.features] == [len(f) for f in items.features]


def test_crops_are_one_unit_shorter_about_a_third_of_the_time(data: Path) -> None:
    shorter = total = 0
    offsets = set()
    for seed in range(60):
        items = motionstreamer_test_items(data, "test", seed=seed)
        for (start, end), feat, offset in zip(items.spans, items.features, items.offsets):
            shorter += len(feat) < ((end - start) // 4) * 4
            total += 1
            offsets.add(offset)
    assert 0.25 < shorter / total < 0.42, shorter / total  # 480 crops, expected 1/3
    assert offsets == set(range(8))  # random offsets (span - crop < 8 frames here), not always the first frames


def test_drop_last_batches_shuffles_and_drops_the_rest() -> None:
    batches = drop_last_batches(9, np.random.default_rng(0), batch_size=4)
    assert [len(b) for b in batches] == [4, 4]
    used = np.concatenate(batches)
    assert len(set(used.tolist())) == 8 and set(used.tolist()) <= set(range(9))
    assert used.tolist() != list(range(8))  # shuffled
    same = drop_last_batches(9, np.random.default_rng(0), batch_size=4)
    assert all((a == b).all() for a, b in zip(batches, same))
    assert [len(b) for b in drop_last_batches(70, np.random.default_rng(0))] == [32, 32]
    with pytest.raises(ValueError, match="no full batch"):
        drop_last_batches(31, np.random.default_rng(0))


def test_diversity_300_100_rule_and_independent_draws() -> None:
    assert [diversity_times(n) for n in (96, 300, 301, 4000)] == [100, 100, 300, 300]
    # every two distinct points are 2 apart: only a self-pair (possible with independent draws) lowers the mean
    points = 2.0**0.5 * torch.eye(100)
    values = [diversity_independent(points, 100, np.random.default_rng(s)) for s in range(10)]
    assert all(v <= 2.0 for v in values) and min(values) < 2.0
    with pytest.raises(ValueError, match="at least 100 embeddings"):
        diversity_independent(points[:64], 100, np.random.default_rng(0))


def _reference_scores(text: np.ndarray, motion: np.ndarray, batches: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The reference's §4.4 semantics written out: per-batch distance matrix, row argsort, cumulative top-k, trace."""
    hits, trace = np.zeros(3), 0.0
    for b in batches:
        t, m = text[b], motion[b]
        d = np.sqrt(np.maximum(-2 * t @ m.T + (t**2).sum(1)[:, None] + (m**2).sum(1)[None], 0))
        order = np.argsort(d, axis=1)
        correct = order[:, :3] == np.arange(len(b))[:, None]
        hits += np.cumsum(correct, axis=1).astype(bool).sum(0)
        trace += np.trace(d)
    return hits, trace


def test_metrics_per_batch_on_the_kept_items_only() -> None:
    g = torch.Generator().manual_seed(0)
    n, dim = 130, 16
    text = torch.randn(n, dim, generator=g, dtype=torch.float64)
    real = text + 0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    gen = text + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    batches = drop_last_batches(n, np.random.default_rng(1))
    kept = np.concatenate(batches)
    out = motionstreamer_t2m_metrics(text, real, gen, batches, np.random.default_rng(2))
    for side, motion in (("real", real), ("gen", gen)):
        hits, trace = _reference_scores(text.numpy(), motion.numpy(), batches)
        assert [out[f"{side}/R@{k}"] for k in (1, 2, 3)] == pytest.approx((hits / 128).tolist())
        assert out[f"{side}/MM-Dist"] == pytest.approx(trace / 128)
    assert out["real/R@1"] > out["gen/R@1"] > 1 / 32
    # the two dropped items change nothing
    dropped = np.setdiff1d(np.arange(n), kept)
    real2, gen2 = real.clone(), gen.clone()
    real2[dropped] += 100.0
    gen2[dropped] -= 100.0
    assert motionstreamer_t2m_metrics(text, real2, gen2, batches, np.random.default_rng(2)) == out


def _ms_evaluator(folder: Path, with_mean_std: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": "MotionStreamerEvaluator", "config": {}}))
    (folder / "handoff.safetensors").write_bytes(b"not loaded by the resolution")
    if with_mean_std:
        _mean_std(folder)
    return folder


def _mean_std(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "Mean.npy", np.zeros(272, np.float32))
    np.save(folder / "Std.npy", np.full(272, 0.5, np.float32))
    return folder


def _roberta(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta", "num_hidden_layers": 24}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_paper_lists_every_missing_input_in_one_error(tmp_path: Path, data: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        resolve_eval_inputs(run, EvalSettings(paper=True, device="cpu"))
    message = str(err.value)
    for flag in ("--evaluator DIR", "convert-evaluator motionstreamer", "--mean_std DIR", "--bertscore_model DIR"):
        assert flag in message
    # the command line: the same single error, exit status 2
    assert run_command(eval_run_command, [str(run), "--data", str(data), "--paper"], "llamo eval run") == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1
    assert all(f in stderr for f in ("--evaluator DIR", "--mean_std DIR", "--bertscore_model DIR"))


def test_paper_partial_inputs_name_only_what_is_missing(tmp_path: Path) -> None:
    evaluator = _ms_evaluator(tmp_path / "ms_eval", with_mean_std=False)
    settings = EvalSettings(paper=True, evaluator=str(evaluator), device="cpu")
    with pytest.raises(FileNotFoundError) as err:
        resolve_eval_inputs(tmp_path, settings)
    assert "--evaluator DIR" not in str(err.value)
    assert "--mean_std DIR" in str(err.value) and "--bertscore_model DIR" in str(err.value)


def test_complete_paper_configuration_resolves(tmp_path: Path) -> None:
    evaluator = _ms_evaluator(tmp_path / "ms_eval", with_mean_std=False)
    mean_std, roberta = _mean_std(tmp_path / "hml272_mean_std"), _roberta(tmp_path / "roberta-large")
    settings = EvalSettings(
        paper=True, evaluator=str(evaluator), mean_std=str(mean_std), bertscore_model=str(roberta), device="cpu"
    )
    assert settings.protocol == "motionstreamer"
    inputs = resolve_eval_inputs(tmp_path / "run", settings)
    assert inputs.protocol == "motionstreamer"
    assert (inputs.evaluator_dir, inputs.evaluator_kind, inputs.mean_std_dir) == (
        evaluator,
        "MotionStreamerEvaluator",
        mean_std,
    )
    assert inputs.bertscore == BERTScoreConfig.tm2t(str(roberta), device="cpu")
    assert (inputs.bertscore.num_layers, inputs.bertscore.idf) == (17, True)
    # Mean/Std beside the converted evaluator (convert-evaluator --mean_std) are found without --mean_std
    inputs = resolve_eval_inputs(
        tmp_path / "run",
        EvalSettings(paper=True, evaluator=str(_ms_evaluator(tmp_path / "ms2", True)), bertscore_model=str(roberta)),
    )
    assert inputs.mean_std_dir == tmp_path / "ms2"


def test_motionstreamer_evaluator_needs_its_mean_std(tmp_path: Path) -> None:
    evaluator = _ms_evaluator(tmp_path / "ms_eval", with_mean_std=False)
    with pytest.raises(FileNotFoundError, match="MotionStreamer evaluator without Mean.npy/Std.npy.*--mean_std DIR"):
        resolve_eval_inputs(tmp_path, EvalSettings(evaluator=str(evaluator), device="cpu"))
    inputs = resolve_eval_inputs(
        tmp_path, EvalSettings(evaluator=str(evaluator), mean_std=str(_mean_std(tmp_path / "ms")), device="cpu")
    )
    assert inputs.protocol == "suite" and inputs.mean_std_dir == tmp_path / "ms"
    assert inputs.bertscore == BERTScoreConfig()  # the packaged MiniLM stays the default
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "Mean.npy", np.zeros(263, np.float32))
    np.save(bad / "Std.npy", np.ones(263, np.float32))
    with pytest.raises(ValueError, match=r"shape \(272,\)"):
        resolve_eval_inputs(tmp_path, EvalSettings(evaluator=str(evaluator), mean_std=str(bad), device="cpu"))


def test_default_settings_resolve_to_the_run_evaluator(tmp_path: Path) -> None:
    settings = EvalSettings(device="cpu")
    assert settings.protocol == "suite" and not settings.paper
    assert resolve_eval_inputs(tmp_path, settings).evaluator_dir is None  # no evaluator/: Table 3 is skipped
    own = tmp_path / "evaluator"
    own.mkdir()
    (own / "config.json").write_text(json.dumps({"kind": "TextMotionEvaluator"}))
    (own / "handoff.safetensors").write_bytes(b"")
    _mean_std(own)
    inputs = resolve_eval_inputs(tmp_path, settings)
    assert (inputs.protocol, inputs.evaluator_dir, inputs.mean_std_dir) == ("suite", own, own)


def test_motionstreamer_protocol_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ground-truth length"):
        EvalSettings(protocol="motionstreamer", length="exit")
    with pytest.raises(ValueError, match="every test item"):
        EvalSettings(protocol="motionstreamer", items=100)
    with pytest.raises(ValueError, match="one run"):
        EvalSettings(paper=True, repeats=5)
    with pytest.raises(ValueError, match="--protocol"):
        EvalSettings(protocol="guo")  # type: ignore[arg-type]


def test_report_names_the_protocol_and_accepts_single_run_rows() -> None:
    row = {"FID": 1.0, "R@1": 0.3, "R@2": 0.4, "R@3": 0.5, "MM-Dist": 15.0, "Diversity": 27.0}
    row |= {f"{k}_ci95": None for k in row}

    def section(title: str, rows: list | None, **extra: object) -> dict:
        return {"title": title, "seconds": 1.0, "skipped": None, "notes": [], "rows": rows, **extra}

    results = {
        "run": "runs/x",
        "data": "d",
        "created": "now",
        "llamo_stage": "stage3",
        "settings": {"split": "test"},
        "seconds": 1.0,
        "tables": {
            "reconstruction": section("Table 2", [], protocol="`llamo eval vae`"),
            "t2m": section(
                "Table 3",
                [dict(row, name="Real", FID=None), dict(row, name="Shuffled", **{"R@3": 0.1}), dict(row, name="L")],
                protocol="MotionStreamer `eval_t2m.py`",
            ),
            "m2t": dict(section("Table 4", None, protocol="TM2T"), skipped="not run in this test"),
            "language": section("Language", [], mot=False),
            "samples": section("Samples", []),
        },
    }
    md = format_report(results)
    assert "Protocol: MotionStreamer `eval_t2m.py`." in md and "Protocol: TM2T." in md
    assert "Protocol: `llamo eval vae`." in md
    assert "| L | 1.000 | 0.300 | 0.400 | 0.500 | 15.000 | 27.000 |" in md  # one run: bare values
    assert "margin +0.400 (needs > 0.050)" in md


class _FakeRun:
    """Just what the Table-3 section calls: ``generate`` (GT-length features) and the run's generation setting."""

    class _Motion:
        def __init__(self, features: torch.Tensor) -> None:
            self.features, self.stop_reason = features, "max_tokens"

    def __init__(self) -> None:
        from llamo.inference.guidance import GenerationSetting

        self.stage_dir = Path("stage3")
        # the setting the notes must state: the run's (a sweep's record here), not the model config's
        self.generation = GenerationSetting(8, 4.0, "prompt", source="a test record", recorded=True, temperature=0.5)

    def generate(self, prompts: list[str], max_tokens: int, generator: torch.Generator, **_: object) -> list:
        return [self._Motion(torch.randn(4 * max_tokens, 272, generator=generator)) for _ in prompts]


class _FakeEvaluator:
    """Embeds a motion by its mean first 8 features and a caption by its character counts (deterministic)."""

    config = type("C", (), {"feature_dim": 272})()

    def encode_motion(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([f[: int(n), :8].mean(0) for f, n in zip(features, lengths)])

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([[c.count(ch) for ch in "aeiourstn"[:8]] for c in captions], dtype=torch.float32)


def test_section_runs_the_protocol_end_to_end(tmp_path: Path) -> None:
    from llamo.eval.motionstreamer import motionstreamer_t2m_section
    from llamo.eval.settings import Section

    root = tmp_path / "many"
    for sub in ("motion_data", "texts", "split"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"m{i:03d}" for i in range(140)]
    for i, clip_id in enumerate(ids):
        np.save(root / "motion_data" / f"{clip_id}.npy", rng.normal(size=(int(rng.integers(60, 300)), 272)))
        (root / "texts" / f"{clip_id}.txt").write_text(f"a person moves {'x' * (i % 7)}#a/DET#0.0#0.0\n")
    (root / "split" / "test.txt").write_text("\n".join(ids) + "\n")
    section = Section("t2m", "Table 3")
    settings = EvalSettings(protocol="motionstreamer", device="cpu", seed=5, gen_batch=64)
    mean, std = np.zeros(272, np.float32), np.ones(272, np.float32)
    out = motionstreamer_t2m_section(_FakeRun(), _FakeEvaluator(), mean, std, root, settings, section)
    assert section.data["pairs"] == 128 and section.data["items"]["items"] == 140  # 4 batches of 32
    names = [r["name"] for r in section.data["rows"]]
    assert names == ["Real motion", "Shuffled real (wrong captions)", "LLaMo (stage3)"]
    assert all(r["R@3_ci95"] is None for r in section.data["rows"]) and section.data["rows"][0]["FID"] is None
    assert [len(g) for g in out["generated"]] == [len(f) for f in out["items"].features]  # the GT length
    assert any("100 pairs" in n for n in section.notes)
    setting = "flow head: 8 Euler steps, guidance scale 4, unconditional source 'prompt', noise temperature 0.5"
    assert any(setting in n for n in section.notes)
    again = Section("t2m", "Table 3")
    motionstreamer_t2m_section(_FakeRun(), _FakeEvaluator(), mean, std, root, settings, again)
    assert again.data["rows"] == section.data["rows"]  # one seeded run: reproducible
