"""Exact resume after a hard kill at any step, mid-epoch included (DESIGN invariant 8), and atomic checkpoints.

Each stage kind (a LLaMo stage, the VAE, the evaluator) is trained uninterrupted, and again with a kill right after
the checkpoint of a mid-epoch step, then resumed with ``--ckpt_path .../last.ckpt``: the resumed handoff equals the
uninterrupted one tensor by tensor (``torch.equal``). The LLaMo stage is killed for real (SIGKILL of a ``llamo fit``
subprocess); the VAE and evaluator die in-process by an exception at the same point, which leaves the same
``last.ckpt`` behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from kill_switch import KillAfterStep, Killed
from tiny_llamo import stage_args, stage_workspace

from llamo.data.retrieval import RetrievalDataModule
from llamo.motion.synthetic import synthesize
from llamo.stages.checkpoint_io import AtomicCheckpointIO
from llamo.stages.cli import cli_main
from stageio import load_stage_output

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
EVERY = 3  # last.ckpt every 3 optimiser steps


def _overlay(path: Path, kill_at: int | None = None, sigkill: bool = True) -> Path:
    """A trainer overlay: last.ckpt every EVERY steps (plus, optionally, the kill switch)."""
    callbacks: list[dict] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "every_n_train_steps": EVERY, "save_on_train_epoch_end": True},
        }
    ]
    if kill_at is not None:
        killer = f"{KillAfterStep.__module__}.{KillAfterStep.__name__}"  # tests/ is on the subprocess's PYTHONPATH
        callbacks.append({"class_path": killer, "init_args": {"step": kill_at, "sigkill": sigkill}})
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def _mid_epoch(ckpt: Path, step: int) -> None:
    """The checkpoint is at optimiser step ``step`` and inside an epoch (not at its boundary)."""
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert state["global_step"] == step
    batches = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    # written in on_train_batch_end, before Lightning counts the batch completed: "processed" is the batch count
    mid = 0 < batches["current"]["processed"] and not batches["is_last_batch"]
    assert mid, f"step {step} is at an epoch boundary, so this would not test a mid-epoch kill: {batches}"


def _assert_same_handoff(a: Path, b: Path) -> None:
    x, y = load_stage_output(a).state_dict, load_stage_output(b).state_dict
    assert x.keys() == y.keys()
    diff = {k: float((x[k].double() - y[k].double()).abs().max()) for k in x if not torch.equal(x[k], y[k])}
    assert not diff, f"resumed weights differ from the uninterrupted run (max abs diff per key): {diff}"


# -- a LLaMo stage, killed for real -------------------------------------------------------------------------------


def test_llamo_stage_resumed_after_sigkill_mid_epoch_equals_uninterrupted(tmp_path: Path) -> None:
    ws = stage_workspace(tmp_path, clips=24)  # 20 training clips at batch 4: 5 steps per epoch
    steps, kill = 8, 6  # killed after step 6 (1 batch into epoch 2); the resumed run ends mid-epoch 2

    def args(out: str, *extra: str) -> list[str]:
        # caption dropout on: its draws, too, must follow the stream position across the kill (at data seed 0 and
        # batch 4 it empties the captions of positions 9, 17 and 29). Length grouping on, in windows of 4 steps:
        # the kill at step 6 is mid-window (steps 4-7 read positions 16-31 sorted by length; step 7 reads 29)
        grouping = ("--data.init_args.caption_dropout=0.25", "--data.init_args.length_window=4")
        return stage_args(ws, 1, out, *grouping, *extra, steps=steps)

    full = cli_main(args("full", "--config", str(_overlay(tmp_path / "ckpt.yaml"))))
    assert isinstance(full.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the default from base.yaml

    killed = args("killed", "--config", str(_overlay(tmp_path / "kill.yaml", kill)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the same single intra-op thread as this process
    proc = subprocess.run(
        [sys.executable, "-m", "llamo", *killed], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    _mid_epoch(last, kill)
    assert not (tmp_path / "killed" / "handoff").exists()  # it really died before the end

    cli_main(args("killed", "--config", str(_overlay(tmp_path / "ckpt.yaml")), f"--ckpt_path={last}"))
    _assert_same_handoff(tmp_path / "full" / "handoff", tmp_path / "killed" / "handoff")


# -- the VAE and the evaluator, killed in-process at the same point ------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "corpus"
    synthesize(root, clips=40, seed=0, progress=False)  # 32 train, 4 val, 4 test
    return root


def _kill_and_resume(tmp_path: Path, base: list[str], steps: int, kill: int) -> None:
    """Uninterrupted run, a run killed after step ``kill`` (mid-epoch), its resume; the handoffs must be equal."""

    def args(out: str, overlay: Path, *extra: str) -> list[str]:
        return [
            *base,
            "--config", str(overlay),
            f"--trainer.max_steps={steps}",
            "--trainer.check_val_every_n_epoch=1",  # validation between the kill and the end: it must not matter
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path / out}",
            f"--handoff.save_to={tmp_path / out / 'handoff'}",
            *extra,
        ]  # fmt: skip

    ckpt = _overlay(tmp_path / "ckpt.yaml")
    cli_main(args("full", ckpt))
    with pytest.raises(Killed):
        cli_main(args("killed", _overlay(tmp_path / "kill.yaml", kill, sigkill=False)))
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    _mid_epoch(last, kill)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(args("killed", ckpt, f"--ckpt_path={last}"))
    assert not [w for w in caught if "data stream layout" in str(w.message)]
    _assert_same_handoff(tmp_path / "full" / "handoff", tmp_path / "killed" / "handoff")


def test_vae_resumed_mid_epoch_equals_uninterrupted(corpus: Path, tmp_path: Path) -> None:
    # 32 clips, 1 window each, batch 4: 8 steps per epoch; killed after step 6, resumed across the epoch end
    base = [
        "fit",
        "--config", str(EXPERIMENTS / "base.yaml"),
        "--config", str(EXPERIMENTS / "vae.yaml"),
        "--model.init_args.vae.width=16",
        "--model.init_args.vae.depth=1",
        "--model.init_args.vae.latent_dim=8",
        "--model.init_args.warmup_steps=2",
        f"--data.init_args.root={corpus}",
        "--data.init_args.batch_size=4",
        "--data.init_args.window=32",
        "--data.init_args.windows_per_clip=1",
    ]  # fmt: skip
    _kill_and_resume(tmp_path, base, steps=10, kill=6)


def test_evaluator_resumed_mid_epoch_equals_uninterrupted(corpus: Path, tmp_path: Path) -> None:
    # 32 clips at batch 8: 4 steps per epoch; killed after step 3, resumed across the epoch end; dropout 0.1 is on
    base = [
        "fit",
        "--config", str(EXPERIMENTS / "base.yaml"),
        "--config", str(EXPERIMENTS / "evaluator.yaml"),
        "--model.init_args.evaluator.latent_dim=16",
        "--model.init_args.evaluator.ff_size=32",
        "--model.init_args.evaluator.num_layers=1",
        "--model.init_args.evaluator.num_heads=2",
        "--model.init_args.evaluator.text_encoder=scratch",
        "--model.init_args.evaluator.vocab_size=256",
        "--model.init_args.warmup_steps=1",
        "--model.init_args.group_size=4",
        f"--data.init_args.root={corpus}",
        "--data.init_args.batch_size=8",
        "--data.init_args.max_frames=96",
    ]  # fmt: skip
    _kill_and_resume(tmp_path, base, steps=6, kill=3)


def test_resuming_with_another_stream_layout_warns(corpus: Path) -> None:
    dm = RetrievalDataModule(str(corpus), batch_size=8)
    saved = dm.state_dict()  # what Lightning writes into the checkpoint
    assert saved == {"stream": {"seed": 0, "batch_size": 8, "world_size": 1, "accumulate_grad_batches": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.load_state_dict(saved)  # the same layout: silent
    dm.trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=1)  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="world_size 1 -> 2"):
        dm.load_state_dict(saved)


# -- atomic checkpoint writes ---------------------------------------------------------------------------------------


class _TornWrite(Exception):
    """Stands in for the kill in the middle of a checkpoint write."""


def test_a_crash_mid_write_keeps_the_previous_last_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.arange(4.0)}, last)

    def torn_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04" + b"\x00" * 64)  # type: ignore[attr-defined]  # the start of a torch zip file
        raise _TornWrite

    with monkeypatch.context() as m:
        m.setattr(torch, "save", torn_save)
        with pytest.raises(_TornWrite):
            io.save_checkpoint({"global_step": 6, "w": torch.zeros(4)}, last)
    state = io.load_checkpoint(last)
    assert state["global_step"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no partial file replaced or joined it

    # a SIGKILL cannot clean up: its temp file stays until the next save of the same checkpoint removes it
    stale = last.parent / ".last.ckpt.killed.tmp"
    stale.write_bytes(b"PK\x03\x04")
    io.save_checkpoint({"global_step": 9, "w": torch.ones(4)}, last)
    assert io.load_checkpoint(last)["global_step"] == 9
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_atomic_io_refuses_storage_options(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"anon": True})
