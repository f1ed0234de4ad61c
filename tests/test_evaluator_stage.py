"""Evaluator stage end to end on a tiny synthetic corpus: the retrieval DataModule, `llamo fit` with
experiments/evaluator.yaml, the handoff folder read by metrics (TextMotionEvaluator.load, `python -m metrics t2m`)
and `llamo eval evaluator`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from llamo.commands.evaluation import evaluator as eval_evaluator
from llamo.data.humanml272 import MotionCorpus
from llamo.data.retrieval import RetrievalDataModule
from llamo.eval.retrieval import evaluate_retrieval
from llamo.motion.synthetic import synthesize
from llamo.stages.cli import cli_main
from metrics.command import call_command
from metrics.commands import t2m
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from stageio import load_stage_output

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "--model.init_args.evaluator.latent_dim=16",
    "--model.init_args.evaluator.ff_size=32",
    "--model.init_args.evaluator.num_layers=1",
    "--model.init_args.evaluator.num_heads=2",
    "--model.init_args.evaluator.text_num_layers=1",
    "--model.init_args.evaluator.text_encoder=scratch",
    "--model.init_args.evaluator.vocab_size=256",
    "--model.init_args.warmup_steps=1",
    "--model.init_args.group_size=4",
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize(root, clips=40, seed=0, progress=False)  # 32 train, 4 val, 4 test
    return root


def _cli(command: Callable[..., int], argv: list[str]) -> int:
    return call_command(command, argv)


def test_retrieval_pairs(corpus_dir: Path) -> None:
    dm = RetrievalDataModule(str(corpus_dir), batch_size=8, max_frames=100, seed=3)
    dm.setup("fit")
    corpus = MotionCorpus(corpus_dir, split="train")
    captions = dict(zip(corpus.ids, (r.captions for r in corpus)))
    batch = next(iter(dm.train_dataloader()))
    motion, lengths = batch["motion"], batch["lengths"]
    assert motion.shape[0] == 8 and motion.shape[2] == 272 and motion.dtype == torch.float32
    assert (lengths % 4 == 0).all() and (lengths <= 100).all() and int(lengths.max()) == motion.shape[1]
    assert all(text in captions[clip_id] for text, clip_id in zip(batch["texts"], batch["ids"]))
    assert torch.equal(motion[0, int(lengths[0]) :], torch.zeros_like(motion[0, int(lengths[0]) :]))
    # a normalised crop of its own clip
    first = corpus.ids.index(batch["ids"][0])
    raw = dm.normalizer.denormalise(motion[0, : int(lengths[0])].double()).numpy()
    source = corpus[first].features.astype(np.float64)
    n = len(raw)
    assert any(np.allclose(source[s : s + n], raw, atol=1e-4) for s in range(len(source) - n + 1))
    # validation pairs are fixed (seeded per index); training pairs are drawn anew
    val = dm.sets["val"]
    a, b = val[0], val[0]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    train = dm.sets["train"]
    draws = {(len(train[0][0]), train[0][1]) for _ in range(12)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="max_frames"):
        RetrievalDataModule(str(corpus_dir), max_frames=20, min_frames=40)


def test_fit_writes_an_evaluator_that_metrics_can_use(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "evaluator"
    args = [
        "fit",
        "--config",
        str(REPO / "experiments" / "base.yaml"),
        "--config",
        str(REPO / "experiments" / "evaluator.yaml"),
        *TINY_MODEL,
        f"--data.init_args.root={corpus_dir}",
        "--data.init_args.batch_size=8",
        "--data.init_args.max_frames=96",
        "--trainer.max_steps=8",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--handoff.save_to={out_dir}",
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 8
    for key in ("val/loss", "val/R@1", "val/R@2", "val/R@3", "val/mm_dist", "train/loss"):
        assert torch.isfinite(cli.trainer.callback_metrics[key]), key
    r1, r3 = float(cli.trainer.callback_metrics["val/R@1"]), float(cli.trainer.callback_metrics["val/R@3"])
    assert 0.0 <= r1 <= r3 <= 1.0
    # last.ckpt is the newest state (not the last *best* one), so --ckpt_path resumes where the run stopped
    checkpoints = tmp_path / "runs" / "default" / "stage" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 8
    assert len(list(checkpoints.glob("best-r3-*.ckpt"))) == 1

    # the handoff folder: weights + config (stageio format) + the corpus Mean/Std
    saved = load_stage_output(out_dir)
    assert saved.kind == "TextMotionEvaluator" and saved.stage == "evaluator"
    assert EvaluatorConfig.from_dict(saved.config).latent_dim == 16
    for key, value in cli.model.core.state_dict().items():
        assert torch.equal(saved.state_dict[key], value), key
    corpus = MotionCorpus(corpus_dir, split="test")
    np.testing.assert_allclose(np.load(out_dir / "Mean.npy"), corpus.normalizer.mean)
    loaded = TextMotionEvaluator.load(out_dir).eval()
    model = cli.model.core.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(["a person jumps"]), model.encode_text(["a person jumps"]))

    # `python -m metrics t2m` with generated = real: FID 0 and equal R-precision in both columns
    real, gen = tmp_path / "real", tmp_path / "gen"
    (gen / "texts").mkdir(parents=True)
    real.mkdir()
    records = [MotionCorpus(corpus_dir, split=s)[i] for s in ("train", "val") for i in range(4)]
    for record in records:
        np.save(real / f"{record.id}.npy", record.features)
        shutil.copy(real / f"{record.id}.npy", gen / f"{record.id}.npy")
        (gen / "texts" / f"{record.id}.txt").write_text(record.captions[0] + "\n")
    report = tmp_path / "t2m.json"
    argv = ["--real", str(real), "--gen", str(gen), "--evaluator", str(out_dir), "--repeats", "2"]
    assert _cli(t2m, [*argv, "--group-size", "4", "--diversity-pairs", "4", "--out", str(report)]) == 0
    values = json.loads(report.read_text())["metrics"]
    assert values["gen/FID"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert values["gen/R@3"]["values"] == values["real/R@3"]["values"]
    assert values["gen/Diversity"]["values"] == values["real/Diversity"]["values"]
    assert values["gen/MM-Dist"]["mean"] == pytest.approx(values["real/MM-Dist"]["mean"])

    # `llamo eval evaluator` on the test split (4 clips, groups of 4)
    capsys.readouterr()
    result = tmp_path / "retrieval.json"
    eval_argv = ["--ckpt", str(out_dir), "--data", str(corpus_dir), "--repeats", "2", "--group-size", "4"]
    assert _cli(eval_evaluator, [*eval_argv, "--out", str(result)]) == 0
    printed = capsys.readouterr().out
    assert "split 'test': 4 clips" in printed and "(chance 0.7500)" in printed
    retrieval = json.loads(result.read_text())
    assert retrieval["chance"]["R@1"] == 0.25 and len(retrieval["metrics"]["R@1"]["values"]) == 2


def test_eval_evaluator_needs_a_full_group(corpus_dir: Path, tmp_path: Path) -> None:
    model = TextMotionEvaluator(
        EvaluatorConfig(
            latent_dim=16,
            ff_size=32,
            num_layers=1,
            num_heads=2,
            text_encoder="scratch",
            text_num_layers=1,
            vocab_size=64,
        )
    )
    model.save(tmp_path / "ev")
    corpus = MotionCorpus(corpus_dir, split="test")
    corpus.normalizer.save(tmp_path / "ev")
    with pytest.raises(ValueError, match="the split has 4 clips, R-precision needs at least group_size=32"):
        _cli(eval_evaluator, ["--ckpt", str(tmp_path / "ev"), "--data", str(corpus_dir), "--repeats", "1"])
    summary = evaluate_retrieval(model, corpus, repeats=3, seed=0, group_size=4)
    assert list(summary) == ["R@1", "R@2", "R@3", "MM-Dist"]
    assert len(summary["R@1"].values) == 3 and 0.0 <= summary["R@1"].mean <= summary["R@3"].mean <= 1.0
    # new captions and crops every repetition; the same seed repeats the same numbers
    again = evaluate_retrieval(model, corpus, repeats=3, seed=0, group_size=4)
    assert again["MM-Dist"].values == summary["MM-Dist"].values
    assert len(set(summary["MM-Dist"].values)) > 1
