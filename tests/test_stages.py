"""The three LLaMo stages through LlamoCLI: trainable sets (Table 1), handoff key by key, exact resume.

A tiny random Llama (vocab 64, word-level tokenizer saved to a folder), a random tiny VAE written as a stage
output, and a 24-clip synthetic corpus keep every run at a few seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_llamo import stage_args as _args
from tiny_llamo import stage_workspace

from llamo.stages.cli import cli_main
from stageio import load_stage_output, save_stage_output

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage_workspace(tmp_path_factory.mktemp("stages"))


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


EXPECTED_TRAINABLE = {
    1: ("added_tokens.", "adapter.", "projector.", "flow_head.", "exit_head."),
    2: (
        "added_tokens.",
        "adapter.",
        "projector.",
        "flow_head.",
        "exit_head.",
        "mot.motion_layers.",
        "mot.motion_norm.",
    ),
    3: ("flow_head.", "exit_head."),
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_changes_exactly_its_trainable_set(workspace: dict[str, Path], stage: int) -> None:
    cli = cli_main(_args(workspace, stage, f"set{stage}", steps=4)[1:], run=False)  # run=False: no subcommand
    before = {k: _digest(v) for k, v in cli.model.core.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    after = {k: _digest(v) for k, v in cli.model.core.state_dict().items()}
    changed = {k for k in before if before[k] != after[k]}
    expected = {k for k in before if k.startswith(EXPECTED_TRAINABLE[stage])}
    assert changed == expected, (sorted(changed - expected)[:5], sorted(expected - changed)[:5])
    assert not any(k.startswith("mot.llm.") for k in changed)  # the text branch never moves


def test_next_stage_starts_from_the_handoff_key_by_key(workspace: dict[str, Path]) -> None:
    first = cli_main(_args(workspace, 1, "h1"))
    saved = load_stage_output(workspace["root"] / "h1" / "handoff")
    assert saved.stage == "stage1" and saved.excluded_prefixes == ["mot.llm."]
    assert not any(k.startswith("mot.llm.") for k in saved.state_dict)
    second = cli_main(_args(workspace, 2, "h2", f"--handoff.load_from={workspace['root'] / 'h1' / 'handoff'}", steps=0))
    state = second.model.core.state_dict()
    for key, value in saved.state_dict.items():
        assert torch.equal(state[key], value), key
    # the frozen base is rebuilt from the same config, not copied: still identical to stage 1's
    for key, value in first.model.core.state_dict().items():
        assert torch.equal(state[key], value), key


def test_broken_handoff_is_one_clear_error(workspace: dict[str, Path]) -> None:
    cli_main(_args(workspace, 1, "b1", steps=1))
    handoff = workspace["root"] / "b1" / "handoff"
    bad = load_stage_output(handoff)
    bad.config["cond_dim"] = 32
    bad.state_dict.pop("adapter.fc1.weight", None)
    bad.state_dict["projector.fc1.weight"] = torch.zeros(3, 3)

    broken = workspace["root"] / "b1" / "broken"

    class Raw(torch.nn.Module):
        def state_dict(self, *a: object, **k: object) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return bad.state_dict

    # Raw holds no base to fingerprint: keep the one b1 recorded (the same tiny base as the next stage's)
    save_stage_output(
        broken,
        Raw(),
        bad.config,
        kind="LLaMo",
        stage="stage1",
        excluded_prefixes=["mot.llm."],
        fingerprints=bad.excluded_fingerprints,
    )
    with pytest.raises(ValueError) as err:
        cli_main(_args(workspace, 2, "b2", f"--handoff.load_from={broken}", steps=0))
    msg = str(err.value)
    assert "config cond_dim: saved 32 != current 16" in msg
    assert "shape projector.fc1.weight: saved (3, 3)" in msg
    (broken / "handoff.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        cli_main(_args(workspace, 2, "b3", f"--handoff.load_from={broken}", steps=0))


class StopAt(L.Callback):
    """Simulates a killed run: stop after ``step`` optimiser steps (the checkpoint callback still saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_reaches_the_uninterrupted_weights(workspace: dict[str, Path]) -> None:
    # 19 train clips at batch 4: 5 steps per epoch. The interrupted run has the same max_steps (the cosine
    # schedule depends on it), stops at the epoch boundary, and is resumed from last.ckpt
    full = cli_main(_args(workspace, 2, "r_full", steps=8))
    part = cli_main(_args(workspace, 2, "r_part", steps=8)[1:], run=False)
    part.trainer.callbacks.append(StopAt(5))
    part.trainer.fit(part.model, part.datamodule)
    assert part.trainer.global_step == 5
    ckpt = workspace["root"] / "r_part" / "checkpoints" / "last.ckpt"
    resumed = cli_main(_args(workspace, 2, "r_resumed", f"--ckpt_path={ckpt}", steps=8))
    assert resumed.trainer.global_step == full.trainer.global_step == 8
    a, b = full.model.core.state_dict(), resumed.model.core.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage_base_class_alone_is_a_clear_error(workspace: dict[str, Path]) -> None:
    args = _args(workspace, 1, "base_only")
    at = args.index(str(EXPERIMENTS / "stage1.yaml"))
    args[at - 1 : at + 1] = ["--data=llamo.data.llamo_data.LLaMoDataModule"]  # no stage file, only its data
    with pytest.raises(ValueError, match="compose a stage file"):
        cli_main(args)


def test_fused_adamw_is_the_same_update(workspace: dict[str, Path]) -> None:
    """``adamw_fused: true`` (the demo overlays) reaches the optimizer and takes the for-loop AdamW's steps."""
    runs = {}
    for fused in ("null", "true"):
        args = _args(workspace, 2, f"fused-{fused}", f"--model.init_args.adamw_fused={fused}", steps=3)
        cli = cli_main(args[1:], run=False)
        start = {k: v.clone() for k, v in cli.model.core.state_dict().items()}
        cli.trainer.fit(cli.model, cli.datamodule)
        assert cli.trainer.optimizers[0].defaults["fused"] is (True if fused == "true" else None)
        runs[fused] = cli.model.core.state_dict()
    twins = [k for k in runs["null"] if k.startswith("mot.motion_layers.")]
    # the three steps moved the motion twins, so the comparison below compares updates
    assert any(not torch.equal(runs["null"][k], start[k]) for k in twins)
    for key, value in runs["null"].items():
        torch.testing.assert_close(runs["true"][key], value, rtol=1e-5, atol=1e-6, msg=key)
