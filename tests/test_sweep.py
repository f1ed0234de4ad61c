"""Guidance as a measured setting (issue 14): the choice rule, the record in RUN/generation.json and who reads it,
the test-split refusal, ``llamo eval sweep`` end to end on a tiny run, and the sample filmstrips of the report."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_llamo import write_tiny_run

from llamo.cli import main as llamo_main
from llamo.eval.items import load_test_items
from llamo.eval.markdown import format_report
from llamo.eval.report import samples_section
from llamo.eval.settings import EvalSettings, Section
from llamo.eval.sweep import SweepSettings, choose_setting, sweep_grid
from llamo.eval.t2m import t2m_section
from llamo.inference.guidance import GENERATION_FILE, read_generation_record, write_generation_record
from llamo.inference.run import load_run
from llamo.inference.t2m import generate_motion
from llamo.motion.normalization import Normalizer
from llamo.motion.synthetic import synthesize
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from metrics.evaluators import load_evaluator
from metrics.generation import load_mean_std
from stageio import save_stage_output

PROMPT = "a person walks forward then turns left"
GEN = dict(exit_threshold=1.0, min_tokens=0, max_tokens=3)


# -- the choice rule on made-up score tables ----------------------------------------------------------------------


def _row(
    scale: float, cfg: str, steps: int, fid: float, r3: float, ci: float = 0.0, temperature: float | None = None
) -> dict[str, Any]:
    row = {"guidance_scale": scale, "cfg": cfg, "steps": steps, "FID": fid, "R@3": r3, "R@3_ci95": ci}
    return row if temperature is None else {**row, "temperature": temperature}


def _pick(rows: list[dict[str, Any]], factor: float = 2.0) -> tuple[float, str, int]:
    chosen, _ = choose_setting(rows, factor)
    return chosen["guidance_scale"], chosen["cfg"], chosen["steps"]


def test_choice_rule_bounds_fid_then_maximises_r3() -> None:
    # the curve: R@3 peaks at 2.0, FID grows with the scale
    rows = [
        _row(1.0, "null", 25, 0.10, 0.277),
        _row(2.0, "null", 25, 0.15, 0.435),
        _row(3.0, "null", 25, 0.19, 0.368),
        _row(6.0, "null", 25, 0.60, 0.500),  # the best R@3, but FID 6x the lowest: not eligible
    ]
    assert _pick(rows) == (2.0, "null", 25)
    # a stricter bound leaves only the lowest FID
    assert _pick(rows, factor=1.2) == (1.0, "null", 25)
    # a looser one admits 6.0
    assert _pick(rows, factor=10.0) == (6.0, "null", 25)
    _, why = choose_setting(rows)
    assert "3 of 4 settings have FID <= 2 x 0.1000" in why


def test_choice_rule_ties_go_to_fewer_steps_then_null_then_lower_scale() -> None:
    # within the best's 95 % interval (0.43 +- 0.02): 0.42 and 0.415 tie with it
    rows = [
        _row(2.0, "prompt", 5, 0.12, 0.420, 0.02),
        _row(2.0, "null", 50, 0.12, 0.430, 0.02),
        _row(3.0, "null", 5, 0.12, 0.415, 0.01),
        _row(1.5, "null", 10, 0.12, 0.300, 0.01),  # not tied: below 0.41
    ]
    assert _pick(rows) == (3.0, "null", 5)  # fewer steps first, then null over prompt
    rows = [_row(2.0, "prompt", 10, 0.1, 0.4), _row(3.0, "null", 10, 0.1, 0.4), _row(1.5, "prompt", 10, 0.1, 0.4)]
    assert _pick(rows) == (3.0, "null", 10)  # exact ties, same steps: null beats prompt even at a higher scale
    rows = [_row(3.0, "null", 10, 0.1, 0.4), _row(1.5, "null", 10, 0.1, 0.4)]
    assert _pick(rows) == (1.5, "null", 10)  # then the lower scale
    # no interval given: only exact ties are ties, the higher R@3 wins even with more steps
    assert _pick([_row(2.0, "null", 50, 0.1, 0.41), _row(2.0, "null", 5, 0.1, 0.40)]) == (2.0, "null", 50)


def test_choice_rule_weighs_the_noise_temperature_like_any_other_setting() -> None:
    # a lower temperature that scores beyond the interval wins; one whose FID breaks the bound is not eligible
    rows = [
        _row(5.0, "prompt", 25, 0.20, 0.30, 0.01, temperature=1.0),
        _row(5.0, "prompt", 25, 0.30, 0.36, 0.01, temperature=0.5),
        _row(5.0, "prompt", 25, 0.45, 0.50, 0.01, temperature=0.25),  # FID > 2 x 0.20
    ]
    chosen, why = choose_setting(rows)
    assert (chosen["guidance_scale"], chosen["temperature"]) == (5.0, 0.5)
    assert "picks scale 5, prompt, 25 steps, temperature 0.5 (R@3 0.360" in why
    # tied on R@3 (within the interval): the temperature nearer 1 wins, a row without one counts as 1
    tied = [_row(5.0, "prompt", 25, 0.2, 0.40, 0.02, temperature=0.7), _row(5.0, "prompt", 25, 0.2, 0.39, 0.02)]
    chosen, why = choose_setting(tied)
    assert "temperature" not in chosen and "picks scale 5, prompt, 25 steps (R@3 0.390" in why
    assert choose_setting([*tied, _row(5.0, "prompt", 25, 0.2, 0.395, 0.02, temperature=1.4)])[0] is tied[1]
    # the tie-break on the scale comes before the temperature
    rows = [_row(3.0, "prompt", 25, 0.2, 0.4, temperature=0.5), _row(5.0, "prompt", 25, 0.2, 0.4, temperature=1.0)]
    assert choose_setting(rows)[0]["guidance_scale"] == 3.0


def test_choice_at_the_grids_largest_scale_says_the_grid_may_be_too_narrow() -> None:
    rising = [
        _row(1.0, "null", 25, 0.10, 0.20),
        _row(3.0, "prompt", 25, 0.12, 0.30),
        _row(5.0, "prompt", 25, 0.15, 0.35),
    ]
    _, why = choose_setting(rising)
    assert why.endswith("scale 5 is the grid's largest, so a wider grid (--scales) may score higher")
    peaked = [*rising[:2], _row(5.0, "prompt", 25, 0.15, 0.25)]
    assert "grid's largest" not in choose_setting(peaked)[1]
    assert "grid's largest" not in choose_setting([_row(1.0, "null", 25, 0.1, 0.3)])[1]  # no guidance is no edge


def test_choice_rule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        choose_setting([])
    with pytest.raises(ValueError, match="fid_factor must be >= 1"):
        choose_setting([_row(1.0, "null", 5, 0.1, 0.3)], fid_factor=0.5)


def test_grid_runs_scale_one_once_and_settings_refuse_the_test_split() -> None:
    grid = sweep_grid(SweepSettings(scales=[2.0, 1.0], sources=["prompt", "null"], steps=[10, 5]))
    assert grid == [(1.0, "null", 5, 1.0), (1.0, "null", 10, 1.0), (2.0, "null", 5, 1.0), (2.0, "null", 10, 1.0),
                    (2.0, "prompt", 5, 1.0), (2.0, "prompt", 10, 1.0)]  # fmt: skip
    assert len(sweep_grid(SweepSettings())) == 4 + 4 * 2 * 4  # the default grid: 36 settings, temperature 1 only
    # temperatures multiply every setting, scale 1 included (it changes the unguided motion too), highest first
    grid = sweep_grid(SweepSettings(scales=[1.0, 5.0], sources=["prompt"], steps=[25], temperatures=[0.5, 1, 0.5]))
    assert grid == [(1.0, "null", 25, 1.0), (1.0, "null", 25, 0.5), (5.0, "prompt", 25, 1.0), (5.0, "prompt", 25, 0.5)]
    for bad in ([], [0.0], [-1.0], [float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="--temperatures must be a non-empty list of finite numbers > 0"):
            SweepSettings(temperatures=bad)
    with pytest.raises(ValueError, match="--split test is refused: .* must not|--split test is refused"):
        SweepSettings(split="test")
    with pytest.raises(ValueError, match="--sources"):
        SweepSettings(sources=["empty"])
    with pytest.raises(ValueError, match="quote the source names"):
        SweepSettings(sources=[None, "prompt"])
    with pytest.raises(ValueError, match="--steps"):
        SweepSettings(steps=[0])


# -- a tiny run folder: LLaMo stage1, VAE, evaluator, synthetic corpus ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    synthesize(data, clips=60, seed=3, progress=False)
    run, _, _ = write_tiny_run(root, Normalizer.load(data / "mean_std"))
    evaluator = TextMotionEvaluator(
        EvaluatorConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_num_layers=1,
                        text_encoder="scratch", vocab_size=128)  # fmt: skip
    ).eval()
    save_stage_output(run / "evaluator", evaluator, asdict(evaluator.config), kind="TextMotionEvaluator")
    Normalizer.load(data / "mean_std").save(run / "evaluator")
    return {"root": root, "run": run, "data": data}


def _fresh_run(tiny_run: dict[str, Path], name: str) -> Path:
    """A copy of the tiny run without any generation.json (tests write their own)."""
    run = tiny_run["root"] / name
    shutil.copytree(tiny_run["run"], run)
    (run / GENERATION_FILE).unlink(missing_ok=True)
    return run


def _record(
    run: Path,
    steps: int = 3,
    scale: float = 2.5,
    cfg: str = "prompt",
    stage: str = "stage1",
    temperature: float | None = None,
) -> None:
    chosen: dict[str, Any] = {"steps": steps, "guidance_scale": scale, "cfg": cfg}
    if temperature is not None:  # None: a record written before the temperature was part of the setting
        chosen["temperature"] = temperature
    write_generation_record(
        run,
        {"chosen": chosen, "stage": stage, "split": "val", "data": "data/x", "created": "2026-01-01T00:00:00+00:00",
         "rule_name": "test rule"},
    )  # fmt: skip


def test_without_a_record_generation_is_the_config_default(tiny_run: dict[str, Path]) -> None:
    run_dir = _fresh_run(tiny_run, "norecord")
    run = load_run(run_dir)
    head = run.model.flow_head.config
    assert run.generation is not None and not run.generation.recorded
    assert (run.generation.steps, run.generation.guidance_scale, run.generation.cfg, run.generation.temperature) == (
        head.sample_steps, head.guidance_scale, "null", 1.0)  # fmt: skip
    assert "model config default" in run.generation.source
    # exactly what stream_motion does with nothing given (make demo numbers do not move)
    ours = run.generate(PROMPT, generator=torch.Generator().manual_seed(0), **GEN)[0]
    plain = generate_motion(run.model, run.vae, PROMPT, normalizer=run.normalizer, formatter=run.formatter,
                            generator=torch.Generator().manual_seed(0), **GEN)[0]  # fmt: skip
    assert torch.equal(ours.features, plain.features)


def test_recorded_setting_is_the_default_and_explicit_values_win(tiny_run: dict[str, Path]) -> None:
    run_dir = _fresh_run(tiny_run, "recorded")
    _record(run_dir)
    run = load_run(run_dir)
    assert run.generation is not None and run.generation.recorded
    assert (run.generation.steps, run.generation.guidance_scale, run.generation.cfg) == (3, 2.5, "prompt")
    assert run.generation.temperature == 1.0  # the record has none: those runs generated at 1
    assert "recorded by `llamo eval sweep` on the 'val' split" in run.generation.source

    def gen(r: Any, **kw: Any) -> torch.Tensor:
        return r.generate(PROMPT, generator=torch.Generator().manual_seed(0), **GEN, **kw)[0].features

    recorded = gen(run)
    assert torch.equal(recorded, gen(load_run(_fresh_run(tiny_run, "explicit")), steps=3, guidance_scale=2.5,
                                     cfg="prompt"))  # fmt: skip
    assert not torch.equal(recorded, gen(run, guidance_scale=1.0))  # an explicit value wins
    assert torch.equal(gen(run, guidance_scale=1.0), gen(run.with_generation(guidance_scale=1.0)))

    # a record measured on another stage is not applied, and the source says why
    _record(run_dir, stage="stage3")
    other = load_run(run_dir)
    assert other.generation is not None and not other.generation.recorded
    assert "was measured on stage3, not stage1" in other.generation.source
    # a broken record is an error naming the file and the fix
    (run_dir / GENERATION_FILE).write_text(json.dumps({"chosen": {"steps": 0, "guidance_scale": 2, "cfg": "null"}}))
    with pytest.raises(ValueError, match=r"generation.json chosen .*steps must be a positive integer"):
        load_run(run_dir)
    (run_dir / GENERATION_FILE).write_text(json.dumps({"chosen": {"steps": 2, "guidance_scale": 2, "cfg": "null",
                                                                  "temperature": 0}, "stage": "stage1"}))  # fmt: skip
    with pytest.raises(ValueError, match=r"generation.json chosen .*temperature must be a finite number > 0"):
        load_run(run_dir)
    with pytest.raises(ValueError, match="chosen on the test split"):
        write_generation_record(run_dir, {"chosen": {"steps": 2, "guidance_scale": 2.0, "cfg": "null"},
                                          "stage": "stage1", "split": "test"})  # fmt: skip


def test_recorded_temperature_scales_the_noise_and_explicit_values_win(tiny_run: dict[str, Path]) -> None:
    run_dir = _fresh_run(tiny_run, "temperature")
    _record(run_dir, temperature=0.5)
    run = load_run(run_dir)
    assert run.generation is not None and run.generation.temperature == 0.5 and run.generation.recorded
    assert run.generation.describe().endswith("unconditional source 'prompt', noise temperature 0.5")
    assert run.generation.to_dict()["temperature"] == 0.5

    def gen(r: Any, **kw: Any) -> torch.Tensor:
        return r.generate(PROMPT, generator=torch.Generator().manual_seed(0), **GEN, **kw)[0].features

    plain = load_run(_fresh_run(tiny_run, "temperature_plain"))
    recorded = gen(run)
    assert torch.equal(recorded, gen(plain, steps=3, guidance_scale=2.5, cfg="prompt", temperature=0.5))
    assert not torch.equal(recorded, gen(plain, steps=3, guidance_scale=2.5, cfg="prompt"))  # 1 differs
    assert torch.equal(gen(run, temperature=1.0), gen(plain, steps=3, guidance_scale=2.5, cfg="prompt"))
    # the recorded temperature is what scales the noise: the same draw, times 0.5, passed as explicit noise
    latent_dim = run.model.config.latent_dim
    draws = torch.stack([torch.randn(1, latent_dim, generator=g) for g in [torch.Generator().manual_seed(0)]
                         for _ in range(GEN["max_tokens"])])  # fmt: skip
    assert torch.equal(recorded, gen(plain, steps=3, guidance_scale=2.5, cfg="prompt", noise=0.5 * draws))
    overridden = run.with_generation(temperature=0.8, flags="--temperature")
    assert overridden.generation is not None and overridden.generation.temperature == 0.8
    assert "explicit --temperature (temperature=0.8)" in overridden.generation.source
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="--temperature: temperature must be a finite number > 0"):
            run.with_generation(temperature=bad, flags="--temperature")
        with pytest.raises(ValueError, match="stream_motion: temperature must be a finite number > 0"):
            gen(plain, temperature=bad)


def test_generate_command_uses_the_record_and_flags_override(
    tiny_run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _fresh_run(tiny_run, "cli")
    _record(run_dir)
    out = tiny_run["root"] / "cli_out"
    common = ["generate", "--ckpt", str(run_dir), PROMPT, "--min_tokens", "0", "--max_tokens", "3",
              "--exit_threshold", "1.0"]  # fmt: skip
    assert llamo_main([*common, "--out", str(out / "rec.npy")]) == 0
    err = capsys.readouterr().err
    assert "generation setting: 3 Euler steps, guidance scale 2.5, unconditional source 'prompt'" in err
    assert "recorded by `llamo eval sweep`" in err
    flags = ["--steps", "3", "--guidance_scale", "2.5", "--cfg", "prompt"]
    assert llamo_main([*common, *flags, "--out", str(out / "same.npy")]) == 0
    assert llamo_main([*common, "--guidance_scale", "1.0", "--out", str(out / "flag.npy")]) == 0
    err = capsys.readouterr().err
    assert "explicit --steps/--guidance_scale/--cfg/--temperature (guidance_scale=1.0)" in err
    assert llamo_main([*common, "--temperature", "0.5", "--out", str(out / "cold.npy")]) == 0
    assert "noise temperature 0.5 (explicit --steps/--guidance_scale/--cfg/--temperature (temperature=0.5)" in (
        capsys.readouterr().err
    )
    assert llamo_main([*common, "--temperature", "0", "--out", str(out / "bad.npy")]) == 2
    assert "temperature must be a finite number > 0" in capsys.readouterr().err
    rec, same, flag, cold = (np.load(out / f"{n}.npy") for n in ("rec", "same", "flag", "cold"))
    np.testing.assert_array_equal(rec, same)
    assert not np.array_equal(rec, flag) and not np.array_equal(rec, cold)


def test_table3_notes_state_the_setting_and_why(tiny_run: dict[str, Path]) -> None:
    run_dir = _fresh_run(tiny_run, "table3")
    settings = EvalSettings(repeats=2, seed=0, device="cpu", gen_batch=8)
    items = load_test_items(tiny_run["data"], settings)
    evaluator = load_evaluator(run_dir / "evaluator")
    mean, std = load_mean_std(run_dir / "evaluator")

    def notes(run: Any) -> str:
        section = Section("t2m", "Table 3")
        t2m_section(run, evaluator, mean, std, items, settings, section)
        return "\n".join(section.notes)

    default = notes(load_run(run_dir))
    assert "Generation setting: 4 Euler steps, guidance scale 1, unconditional source 'null'" in default
    assert "the model config default" in default
    _record(run_dir, steps=2, scale=2.0, cfg="null")
    recorded = notes(load_run(run_dir))
    assert "Generation setting: 2 Euler steps, guidance scale 2, unconditional source 'null'" in recorded
    assert "'null', noise temperature 1 — recorded by `llamo eval sweep` on the 'val' split" in recorded
    flagged = notes(load_run(run_dir).with_generation(steps=5, flags="--steps/--guidance_scale/--cfg"))
    assert "Generation setting: 5 Euler steps, guidance scale 2" in flagged and "explicit --steps" in flagged


def test_report_shows_a_filmstrip_png_per_sample(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    settings = EvalSettings(device="cpu")
    items = load_test_items(tiny_run["data"], settings)
    generated = [f[:16] for f in items.features[:2]]
    section = Section("samples", "Samples")
    samples_section(generated, items, tmp_path, 2, section)
    md = format_report(_minimal_results(section))
    pngs = [r["png"] for r in section.data["rows"]]
    assert len(pngs) == 2
    for png in pngs:
        assert f"]({png})" in md and (tmp_path / png).is_file() and png.endswith(".png")
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _minimal_results(samples: Section) -> dict[str, Any]:
    skipped = {"seconds": 0.0, "skipped": "not run here", "notes": [], "rows": None}
    tables = {k: {"title": k, **skipped} for k in ("reconstruction", "t2m", "m2t", "language")}
    tables["samples"] = samples.to_dict()
    return {"run": "runs/x", "data": "d", "created": "now", "llamo_stage": "stage1", "seconds": 1.0,
            "settings": {"split": "test"}, "tables": tables,
            "generation": {"steps": 2, "guidance_scale": 2.0, "cfg": "null", "source": "a test"}}  # fmt: skip


# -- llamo eval sweep end to end -----------------------------------------------------------------------------------


def test_sweep_command_end_to_end(tiny_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _fresh_run(tiny_run, "sweep_e2e")
    data = str(tiny_run["data"])
    assert llamo_main(["eval", "sweep", str(run_dir), "--data", data, "--split", "test"]) == 2
    assert "--split test is refused" in capsys.readouterr().err
    # the natural spelling of the README's list, unquoted: YAML reads null as nothing
    assert llamo_main(["eval", "sweep", str(run_dir), "--data", data, "--sources", "[null,prompt]"]) == 2
    assert "quote the source names" in capsys.readouterr().err
    assert not (run_dir / GENERATION_FILE).exists()

    assert llamo_main(["eval", "sweep", str(run_dir), "--data", data, "--temperatures", "[0]"]) == 2
    assert "--temperatures must be a non-empty list" in capsys.readouterr().err
    grid = ["--scales", "[1, 2]", "--sources", "[\"null\"]", "--steps", "[2]", "--temperatures", "[1, 0.5]",
            "--gen_seeds", "1", "--repeats", "2", "--gen_batch", "8", "--device", "cpu"]  # fmt: skip
    assert llamo_main(["eval", "sweep", str(run_dir), "--data", data, *grid]) == 0
    out = capsys.readouterr().out
    assert "| scale | source | steps | temperature | FID ↓ | R@3 ↑ | MM-Dist ↓ | ms/token | chosen |" in out
    table = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(table) == 4 and sum("**←**" in line for line in table) == 1
    assert [line.split("|")[4].strip() for line in table] == ["1", "0.5", "1", "0.5"]
    assert (run_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = read_generation_record(run_dir)
    assert record is not None and record["split"] == "val" and record["stage"] == "stage1"
    assert len(record["rows"]) == 4 and record["rule"].startswith("Eligible: settings whose FID")
    assert sorted({r["temperature"] for r in record["rows"]}) == [0.5, 1.0]
    expected, _ = choose_setting(record["rows"], record["settings"]["fid_factor"])
    assert record["chosen"] == {k: expected[k] for k in ("guidance_scale", "cfg", "steps", "temperature")}
    loaded = load_run(run_dir).generation
    assert loaded is not None and loaded.recorded and loaded.steps == 2
    assert (loaded.guidance_scale, loaded.cfg, loaded.temperature) == (
        record["chosen"]["guidance_scale"], "null", record["chosen"]["temperature"])  # fmt: skip
