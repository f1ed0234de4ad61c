"""One seed per run and intervals over seeds: the `seed_everything` link of `llamo fit`, the `--gen_seeds`
aggregation of `llamo eval run`, and the ablation report's mean ± interval over training seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.cli import LightningArgumentParser
from make_args import NO_INSTALL

from llamo.stages.cli import _cli_kwargs, _ParseOnlyCLI, explicit_seeds, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
STAGES = {
    "vae": [EXP / "base.yaml", EXP / "vae.yaml"],
    "evaluator": [EXP / "base.yaml", EXP / "evaluator.yaml"],
    "stage2": [EXP / "base.yaml", EXP / "model" / "tiny.yaml", EXP / "stage2.yaml"],
}


def _configs(stage: str) -> list[str]:
    return [a for p in STAGES[stage] for a in ("--config", str(p))]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_seed_everything_sets_the_model_and_data_seeds(stage: str) -> None:
    cfg = parse_config([*_configs(stage), "--seed_everything", "7"])
    assert (cfg["seed_everything"], cfg["model"]["init_args"]["seed"], cfg["data"]["init_args"]["seed"]) == (7, 7, 7)


class _Unlinked(_ParseOnlyCLI):
    """The parser as it was before the link: no `seed_everything` -> model/data seed."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from callbacks.handoff import StageHandoff
        from callbacks.llamo_previews import GenerationPreviews
        from callbacks.progress import LogProgress

        parser.add_lightning_class_args(StageHandoff, "handoff")
        parser.add_lightning_class_args(LogProgress, "progress")
        parser.add_lightning_class_args(GenerationPreviews, "previews")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = parser.parse_args(args)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_default_seed_resolves_to_the_unlinked_configuration(stage: str) -> None:
    # training is a function of the resolved configuration: equal configurations train the same weights, so the
    # default seed reproduces the runs trained before the link bit for bit
    linked = parse_config(_configs(stage))
    before = _Unlinked(**_cli_kwargs(), args=_configs(stage), run=False).config.as_dict()
    assert linked == before
    assert linked["model"]["init_args"]["seed"] == linked["data"]["init_args"]["seed"] == 0


def test_a_model_seed_that_disagrees_is_an_error_naming_seed_everything(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config([*_configs("vae"), "--model.init_args.seed=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.init_args.seed=1" in err and "--seed_everything 1" in err


def test_a_stage_seed_equal_to_seed_everything_is_accepted() -> None:
    # a saved config.yaml of a run (which records the linked seeds) composes again
    cfg = parse_config([*_configs("vae"), "--seed_everything=3", "--data.init_args.seed", "3"])
    assert cfg["data"]["init_args"]["seed"] == 3


def test_explicit_seeds_reads_flags_and_config_files(tmp_path: Path) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text("data:\n  init_args:\n    seed: 5\n")
    found = explicit_seeds(["--model.seed", "2", "--config", str(overlay), "--trainer.max_steps=3"])
    assert found == [("the command line", "model.init_args.seed", 2), (str(overlay), "data.init_args.seed", 5)]


def test_no_experiment_yaml_sets_a_stage_seed_itself() -> None:
    # a YAML seed would conflict with every --seed_everything but its own value
    offenders = [str(p) for p in EXP.rglob("*.yaml") if explicit_seeds(["--config", str(p)])]
    assert offenders == []


def test_a_random_seed_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_config([*_configs("vae"), "--seed_everything=true"])
    assert "--seed_everything must be an integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Makefile seeds


def _make(*args: str) -> str:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", *NO_INSTALL, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fits(out: str) -> list[tuple[str, str, str]]:
    """(run name, stage folder, seed) of every `llamo fit` a dry run would start."""
    import re

    fits = [line for line in out.splitlines() if line.startswith("FIT fit ")]
    pattern = r"init_args\.name=(\S+) .*init_args\.version=(\S+) .*--seed_everything=(\d+)"
    return [re.search(pattern, line).groups() for line in fits]  # type: ignore[union-attr]


def test_make_ablations_trains_every_row_per_seed_in_its_own_folder(tmp_path: Path) -> None:
    out = _make("ablations", "SEEDS=2", f"RUNS={tmp_path}", "LLAMO=echo FIT")
    fits = set(_fits(out))
    # seed 0 keeps the folders of earlier releases, seed k > 0 gets -seed<k>; the folder's seed is the fit's seed
    assert ("ablate-no_mot", "stage2", "0") in fits and ("ablate-no_mot-seed1", "stage2", "1") in fits
    assert not any(name.startswith("ablate-no_mot-seed2") for name, _, _ in fits)
    # the VAE-only rows get VAE_SEEDS=3 seeds, and the reference's VAE too
    assert {(n, s) for n, st, s in fits if n.startswith("ablate-latent16")} == {
        ("ablate-latent16", "0"),
        ("ablate-latent16-seed1", "1"),
        ("ablate-latent16-seed2", "2"),
    }
    assert ("demo-seed1", "stage3", "1") in fits and ("demo-seed2", "vae", "2") in fits
    assert not any(n == "demo-seed2" and st != "vae" for n, st, _ in fits)
    assert not any(n == "demo" for n, _, _ in fits)  # seed 0's reference is `make demo` itself
    assert f"FIT eval run {tmp_path}/ablate-no_mot-seed1 " in out
    assert out.rstrip().splitlines()[-1] == f"FIT eval ablations {tmp_path} --reference demo"


def test_make_ablations_runs_only_the_chosen_rows(tmp_path: Path) -> None:
    out = _make("ablations", "SEEDS=2", "ABLATIONS=latent16", f"RUNS={tmp_path}", "LLAMO=echo FIT")
    fits = set(_fits(out))
    assert {n for n, _, _ in fits if n.startswith("ablate-")} == {
        "ablate-latent16",
        "ablate-latent16-seed1",
        "ablate-latent16-seed2",
    }
    # only VAE-only rows: the reference needs its VAE per seed, not a whole demo
    assert {(n, st) for n, st, _ in fits if n.startswith("demo")} == {("demo-seed1", "vae"), ("demo-seed2", "vae")}


def test_make_ablations_refuses_an_unknown_row() -> None:
    import subprocess

    done = subprocess.run(
        ["make", "-s", *NO_INSTALL, "help", "ABLATIONS=latent16 no_such_row"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "ABLATIONS names 'no_such_row'" in done.stderr and "latent64" in done.stderr


def test_default_seed_runs_the_commands_of_today(tmp_path: Path) -> None:
    out = _make("ablate-no_mot", f"RUNS={tmp_path}", "LLAMO=echo FIT")
    assert {(n, s) for n, _, s in _fits(out)} == {("ablate-no_mot", "0")}


@pytest.mark.parametrize("bad", ["SEEDS=0", "SEEDS=two", "SEED=-1"])
def test_bad_seed_variables_are_refused(bad: str) -> None:
    import subprocess

    done = subprocess.run(["make", "-s", *NO_INSTALL, "help", bad], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and bad.split("=")[0] in done.stderr


@pytest.mark.parametrize(("ref_seed", "linked"), [(1, True), (0, False)])
def test_reuse_is_keyed_on_the_seed(tmp_path: Path, ref_seed: int, linked: bool) -> None:
    ref = tmp_path / "demo-seed1" / "vae"
    ref.mkdir(parents=True)
    (ref / "config.yaml").write_text(f"seed_everything: {ref_seed}\ntrainer:\n  max_steps: 5\n")
    (ref / "handoff.safetensors").write_bytes(b"")
    out = _make(
        "stage-vae", f"RUNS={tmp_path}", "EXP=ablate-t-seed1", "ABLATION=stages12", "SEED=1",
        f"REUSE={tmp_path}/demo-seed1", "LLAMO=echo FIT",
    )  # fmt: skip
    assert ((tmp_path / "ablate-t-seed1" / "vae").is_symlink()) == linked
    assert ("FIT fit" in out) != linked
    if not linked:
        assert "not linked" in out and "seed_everything=0" in out and "SEED=1" in out


# ------------------------------------------------------------------------------- ablation report over seeds


def test_seed_interval_is_the_t_interval_of_the_sample_std() -> None:
    from llamo.eval.seeds import seed_interval

    r = seed_interval([0.40, 0.43, 0.28])
    s = (sum((x - r.mean) ** 2 for x in (0.40, 0.43, 0.28)) / 2) ** 0.5
    assert r.mean == pytest.approx(0.37) and r.ci95 == pytest.approx(4.302653 * s / 3**0.5, rel=1e-6)
    assert seed_interval([0.4, 0.4]).ci95 == 0.0 and seed_interval([0.4]).ci95 is None


def test_separation_rule() -> None:
    from llamo.eval.seeds import separated

    assert separated(1.0, 0.1, 1.3, 0.1) is True
    assert separated(1.0, 0.2, 1.3, 0.2) is False
    assert separated(1.0, None, 5.0, 0.1) is None


def test_seed_of_run_names() -> None:
    from llamo.eval.seeds import seed_of_run

    assert seed_of_run("ablate-no_mot-seed2") == ("ablate-no_mot", 2)
    assert seed_of_run("ablate-no_mot") == ("ablate-no_mot", 0)
    assert seed_of_run("demo-seed0") == ("demo-seed0", 0)  # seed 0 never has a suffix


def _fake_results(run: str, mpjpe: float, r3: float | None = None) -> dict[str, Any]:
    skipped = {"skipped": "not run", "rows": None}
    tables: dict[str, Any] = {k: dict(skipped) for k in ("t2m", "m2t", "language", "samples")}
    tables["reconstruction"] = {"skipped": None, "rows": [{"name": "Real"}, {"mpjpe": mpjpe}]}
    if r3 is not None:
        row = {"FID": 1.0, "R@3": r3, "R@3_ci95": 0.001}
        tables["t2m"] = {"skipped": None, "rows": [row, dict(row, **{"R@3": 0.1}), row]}
    return {"run": f"runs/{run}", "tables": tables, "training": {}, "seconds": 1.0}


def test_ablation_report_gives_mean_and_interval_over_seeds(tmp_path: Path) -> None:
    import json

    from llamo.eval.ablations import ablation_report

    runs = {
        "demo": (20.0, 0.50), "demo-seed1": (21.0, 0.30), "demo-seed2": (22.0, None),
        "ablate-latent16": (30.0, None), "ablate-latent16-seed1": (31.0, None), "ablate-latent16-seed2": (32.0, None),
        "ablate-latent64": (20.5, None), "ablate-latent64-seed1": (22.5, None), "ablate-latent64-seed2": (18.5, None),
        "ablate-stages12": (20.0, 0.45), "ablate-stages12-seed1": (20.0, 0.25),
    }  # fmt: skip
    for name, (mpjpe, r3) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_fake_results(name, mpjpe, r3)))
    md = ablation_report(tmp_path)
    lines = {line.split(" |")[0]: line for line in md.splitlines() if line.startswith("| ")}
    # MPJPE 31 ± 4.303 * 1 / sqrt(3) = 2.48; reference 21 ± 2.48
    assert lines["| latent16"].startswith("| latent16 | 0, 1, 2 | 31.00 ± 2.48 |")
    assert "| 0, 1, 2 | 21.00 ± 2.48 |" in lines["| demo (MoT, sampled VAE z32, stages 1-3)"]
    verdicts = {line.split(",")[0]: line for line in md.splitlines() if line.startswith("- ")}
    # 31 ± 2.48 vs 21 ± 2.48 separate; paired by seed the differences are 10, 10, 10
    assert verdicts["- latent16"].endswith("— reproduces; paired by seed (0, 1, 2): difference +10 ± 0 (excludes 0).")
    assert "inconclusive: the difference is within the 95 % intervals" in verdicts["- latent64"]  # 20.5 ± 4.97
    # paired differences 0.5, 1.5, -3.5: mean -0.5, s = sqrt(7), 4.303 * s / sqrt(3) = 6.57
    assert verdicts["- latent64"].endswith("paired by seed (0, 1, 2): difference -0.5 ± 6.57 (includes 0).")
    r3 = next(line for line in md.splitlines() if line.startswith("- stages12, T2M R@3"))
    # 0.35 ± 12.7 * 0.1 vs 0.40 ± 12.7 * 0.1 over two seeds: the protocol's ±0.001 no longer decides it; paired by
    # seed both differences are -0.05, which the verdict (the rule: separated intervals) does not use
    assert "0.35 vs 0.4 (lower)" in r3 and "inconclusive: the difference is within" in r3
    assert r3.endswith("paired by seed (0, 1): difference -0.05 ± 0 (excludes 0).")
    fid = next(line for line in md.splitlines() if line.startswith("- stages12, T2M FID"))
    assert fid.endswith("paired by seed (0, 1): difference +0 ± 0 (includes 0).")  # demo-seed2 measured no FID


def test_paired_difference_uses_the_seeds_both_rows_measured() -> None:
    from llamo.eval.ablations import paired_difference

    ablation = [(0, {"m": 1.0}), (1, {"m": 2.0}), (2, {"m": None}), (4, {"m": 7.0})]
    reference = [(0, {"m": 0.5}), (1, {"m": 1.0}), (2, {"m": 3.0}), (3, {"m": 9.0})]
    # seeds 0 and 1 only: differences 0.5 and 1.0, mean 0.75, s = 0.3536, 12.706 * s / sqrt(2) = 3.18
    assert paired_difference(ablation, reference, "m") == "paired by seed (0, 1): difference +0.75 ± 3.18 (includes 0)"
    assert paired_difference(ablation[:1], reference, "m") is None  # one common seed: no interval
    assert paired_difference(ablation, reference, "other") is None


# ------------------------------------------------------------------------------- --gen_seeds and MultiModality


class _FakeEvaluator:
    """Embeds a motion as its mean frame and a text as a fixed vector per caption (4 dims)."""

    class config:  # noqa: N801
        feature_dim = 4

    def encode_motion(self, batch: Any, lengths: Any) -> Any:
        import torch

        mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        return (batch * mask).sum(1) / lengths[:, None]

    def encode_text(self, texts: list[str]) -> Any:
        import torch

        return torch.stack([torch.full((4,), float(int(t.split()[-1]))) for t in texts])


class _FakeRun:
    """`LLaMoRun.generate` stand-in: the prompt's number plus seeded noise, every frame the same."""

    from pathlib import Path as _P
    from types import SimpleNamespace as _NS

    stage_dir = _P("stage3")
    generation = None  # no sweep recorded: the model config's setting
    model = _NS(flow_head=_NS(config=_NS(sample_steps=2, guidance_scale=1.0)))

    def generate(self, prompts: list[str], *, max_tokens: int, generator: Any, **_: Any) -> list[Any]:
        import torch

        out = []
        for p in prompts:
            frame = float(int(p.split()[-1])) + 3.0 * torch.randn(4, generator=generator)
            out.append(self._NS(features=frame.expand(4 * max_tokens, 4).clone(), stop_reason="max"))
        return out


def _t2m(**settings: Any) -> dict[str, Any]:
    import numpy as np

    from llamo.eval.items import TestItems
    from llamo.eval.settings import EvalSettings, Section
    from llamo.eval.t2m import t2m_section

    n = 40
    items = TestItems(
        ids=[f"i{k}" for k in range(n)],
        features=[np.full((16 + 4 * (k % 3), 4), float(k), np.float32) for k in range(n)],
        captions=[[f"move {k}"] for k in range(n)],
        prompts=[f"move {k}" for k in range(n)],
        available=n,
        left_out=0,
    )
    section = Section("t2m", "Table 3")
    config = EvalSettings(device="cpu", repeats=3, gen_batch=8, **settings)
    t2m_section(_FakeRun(), _FakeEvaluator(), np.zeros(4), np.ones(4), items, config, section)
    return section.to_dict()


def test_gen_seeds_one_is_todays_single_generation_and_k_aggregates_with_the_t_interval() -> None:
    from llamo.eval.gen_seeds import generation_seed
    from llamo.eval.seeds import seed_interval

    assert generation_seed(3, 5, 0) == 3 * 1000 + 5  # the seed of every batch before --gen_seeds
    one, three = _t2m(), _t2m(gen_seeds=3)
    assert one["rows"][:2] == three["rows"][:2]  # real and shuffled rows do not depend on generation
    values = three["gen_seeds"]["R@3"]
    assert len(values) == 3 and values[0] == one["rows"][2]["R@3"]  # generation 0 is K = 1's generation
    assert len(set(values)) > 1  # the other generations drew other noise
    assert three["rows"][2]["R@3"] == pytest.approx(sum(values) / 3)
    assert three["rows"][2]["R@3_ci95"] == pytest.approx(seed_interval(values).ci95)
    assert any("--gen_seeds" in note for note in three["notes"]) and "gen_seeds" not in one


def test_multimodality_appears_when_asked_for() -> None:
    from llamo.eval.markdown import format_report

    assert all("MultiModality" not in r for r in _t2m()["rows"])
    table = _t2m(mm_texts=5, mm_gens=3)
    llamo = table["rows"][2]
    assert llamo["MultiModality"] > 0 and "MultiModality" not in table["rows"][0]
    sections = {
        k: {"title": k, "seconds": 0.0, "skipped": "x", "notes": []}
        for k in ("reconstruction", "m2t", "language", "samples")
    }
    results = {"run": "r", "data": "d", "settings": {"split": "test"}, "llamo_stage": "stage3", "created": "now",
               "seconds": 1.0, "tables": {**sections, "t2m": table}}  # fmt: skip
    assert "MModality ↑" in format_report(results)


def test_bad_generation_flags_name_the_flag() -> None:
    from llamo.eval.settings import EvalSettings

    for bad, flag in (
        ({"gen_seeds": 0}, "--gen_seeds"),
        ({"mm_gens": 1}, "--mm_gens"),
        ({"mm_texts": -1}, "--mm_texts"),
    ):
        with pytest.raises(ValueError, match=flag):
            EvalSettings(device="cpu", **bad)


# ------------------------------------------------------------------- --gen_seeds in Table 4 (sampled captions)


def _text_embedding(texts: Any) -> Any:
    """A fake evaluator text encoder (4 dims from the words), so caption R@3 / MM-Dist vary with the captions."""
    import torch

    return torch.tensor([[len(t), len(t.split()), t.count("a"), t.count("e")] for t in texts], dtype=torch.float32)


@pytest.fixture(scope="module")
def m2t_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Table 4 of a tiny random run (stage1 + VAE) on a small synthetic corpus, with --gen_seeds 1 and 2."""
    import warnings
    from types import SimpleNamespace

    import numpy as np
    import torch
    from tiny_llamo import write_tiny_run

    from llamo.eval.items import load_test_items
    from llamo.eval.m2t import m2t_section
    from llamo.eval.settings import EvalSettings, Section
    from llamo.inference.run import load_run
    from llamo.motion.normalization import Normalizer
    from llamo.motion.synthetic import synthesize

    root = tmp_path_factory.mktemp("m2t")
    rng = np.random.default_rng(0)
    run_dir, _, _ = write_tiny_run(root, Normalizer(0.1 * rng.normal(size=272), 0.5 + 0.1 * rng.random(272)))
    data = root / "data"
    synthesize(data, clips=40, seed=3, progress=False)
    run = load_run(run_dir)
    common = dict(device="cpu", bertscore=False, caption_tokens=6, items=3)
    items = load_test_items(data, EvalSettings(**common))
    evaluator = SimpleNamespace(encode_text=_text_embedding)
    real = torch.randn(len(items.ids), 4, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"run": run, "items": items, "common": common, "evaluator": evaluator, "real": real}
    for k in (1, 2):
        section = Section("m2t", "Table 4")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny run records no training length: "captioned whole"
            m2t_section(run, evaluator, real, items, data, EvalSettings(gen_seeds=k, **common), section)
        out[k] = section.to_dict()
    return out


def test_gen_seeds_one_keeps_the_greedy_table4(m2t_run: dict[str, Any]) -> None:
    import warnings

    from metrics.captioning import caption_metrics

    run, items, one = m2t_run["run"], m2t_run["items"], m2t_run[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        greedy = [run.caption(f, max_new_tokens=6) for f in items.features]
    assert list(one["predictions"].values()) == greedy
    real_rows = one["rows"][:-1]
    retrieval = dict(encode_text=m2t_run["evaluator"].encode_text, motion_embeddings=m2t_run["real"])
    expected = caption_metrics(
        greedy, items.captions, bertscore_config=None, retrieval_group_size=len(greedy), seed=0, **retrieval
    ).scores
    # the LLaMo row is the greedy captions' score set itself: no interval, no per-generation values
    assert one["rows"][-1] == {"name": "LLaMo (stage1)", **expected}
    llamo = one["rows"][-1]
    assert not any(k.endswith("_ci95") for k in llamo) and "gen_seeds" not in one and "decoding" not in one
    assert "captioned greedily" in one["notes"][0]
    assert m2t_run[2]["rows"][:-1] == real_rows  # the reference and constant rows do not depend on generation


def test_gen_seeds_two_samples_table4_and_reports_the_t_interval(m2t_run: dict[str, Any]) -> None:
    import json
    import warnings

    from llamo.eval.m2t import caption_test_motions
    from llamo.eval.markdown import format_report
    from llamo.eval.seeds import seed_interval
    from llamo.eval.settings import EvalSettings, check_finite

    two, one = m2t_run[2], m2t_run[1]
    back = json.loads(json.dumps(two))  # what results.json holds
    check_finite(back)
    llamo = back["rows"][-1]
    per_generation = back["gen_seeds"]
    assert set(per_generation) == {"bleu_1", "bleu_4", "rouge_l", "cider", "R@1", "R@2", "R@3", "MM-Dist"}
    for metric, values in per_generation.items():
        assert len(values) == 2
        assert llamo[metric] == pytest.approx(sum(values) / 2)
        assert llamo[f"{metric}_ci95"] == pytest.approx(seed_interval(values).ci95)
    assert len(set(per_generation["MM-Dist"])) == 2  # the two generations sampled different captions
    gens = back["generation_predictions"]
    assert len(gens) == 2 and gens[0] != gens[1] and gens[0] == back["predictions"]
    assert list(gens[0].values()) != list(one["predictions"].values())  # sampled, not greedy
    assert back["decoding"] == {"mode": "sampled", "generations": 2, "temperature": 0.7}
    # a caption is a function of (seed, item, generation): generation 1 alone gives the same captions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = caption_test_motions(
            m2t_run["run"], m2t_run["items"], EvalSettings(gen_seeds=2, **m2t_run["common"]), 1
        )
    assert again == list(gens[1].values())
    assert "sampling at temperature 0.7" in back["notes"][0] and "t_{0.975,K-1}" in back["notes"][0]
    sections = {
        k: {"title": k, "seconds": 0.0, "skipped": "x", "notes": []}
        for k in ("reconstruction", "t2m", "language", "samples")
    }
    results = {"run": "r", "data": "d", "settings": {"split": "test"}, "llamo_stage": "stage1", "created": "now",
               "seconds": 1.0, "tables": {**sections, "m2t": back}}  # fmt: skip
    row = next(line for line in format_report(results).splitlines() if line.startswith("| LLaMo"))
    assert row.count(" ± ") == 6  # every column but the skipped BERTScore
    assert f"{100 * llamo['bleu_1']:.2f} ± {100 * llamo['bleu_1_ci95']:.2f}" in row


def test_bad_caption_temperature_names_the_flag(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import math

    from llamo.commands.evaluation import run as eval_run_command
    from llamo.eval.settings import EvalSettings
    from metrics.command import run_command

    for bad in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="--caption_temperature"):
            EvalSettings(device="cpu", gen_seeds=2, caption_temperature=bad)
    with pytest.raises(ValueError, match="--caption_temperature"):
        EvalSettings(device="cpu", caption_temperature=math.nan)
    with pytest.warns(UserWarning, match="--caption_temperature 1 has no effect with --gen_seeds 1"):
        EvalSettings(device="cpu", caption_temperature=1.0)
    EvalSettings(device="cpu", gen_seeds=3, caption_temperature=1.3)  # a valid sampling temperature
    args = [str(tmp_path), "--data", str(tmp_path), "--gen_seeds", "2", "--caption_temperature", "0"]
    assert run_command(eval_run_command, args, "llamo eval run") == 2
    assert "--caption_temperature must be a finite number > 0" in capsys.readouterr().err
