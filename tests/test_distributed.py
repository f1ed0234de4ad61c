"""Stage 2 with 2 CPU processes (gloo) under DDP and FSDP2: the handoff written afterwards holds full,
unsharded weights that load strictly into a single-process model and equal the trained checkpoint. Also on a
bf16 base (precision policy, issue 12): the trainable weights stay float32 masters through the strategy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_llamo import EXPERIMENTS, stage_args, stage_workspace

from llamo.stages.cli import cli_main
from stageio import load_stage_output, load_stage_weights

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage_workspace(tmp_path_factory.mktemp("dist"))


#: the demo overlays' step-cost settings (fused AdamW, length-grouped steps dealt out to the ranks)
DEMO_STEP_OPTIONS = ("--model.init_args.adamw_fused=true", "--data.init_args.length_window=2")


@pytest.mark.parametrize(
    ("strategy", "dtype", "options"),
    [
        ("ddp", "float32", ()),
        ("ddp", "bfloat16", ()),
        ("fsdp2", "float32", ()),
        ("fsdp2", "bfloat16", ()),
        ("fsdp2", "bfloat16", DEMO_STEP_OPTIONS),  # the fused kernel on DTensor shards, bf16 base
    ],
    ids=["ddp-float32", "ddp-bfloat16", "fsdp2-float32", "fsdp2-bfloat16", "fsdp2-bfloat16-demo-options"],
)
def test_two_process_stage2_hands_off_full_weights(
    workspace: dict[str, Path], strategy: str, dtype: str, options: tuple[str, ...]
) -> None:
    llm_dtype = f"--model.init_args.core.llm.dtype={dtype}"
    out = f"{strategy}_{dtype}{'_demo' if options else ''}"
    args = stage_args(
        workspace, 2, out, "--config", str(EXPERIMENTS / "strategies" / f"{strategy}.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", llm_dtype, *options, steps=3,
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "llamo", *args], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "MEMBER: 2/2" in run.stdout + run.stderr  # really two processes

    handoff = load_stage_output(workspace["root"] / out / "handoff")
    assert handoff.stage == "stage2"
    assert {v.dtype for v in handoff.state_dict.values()} == {torch.float32}  # fp32 masters, whatever the base
    # a fresh single-process model of the same config takes the file strictly (full shapes, every key)
    single = cli_main(stage_args(workspace, 2, f"{out}_single", llm_dtype, steps=0)[1:], run=False).model
    fresh = {k: v.clone() for k, v in single.core.state_dict().items()}
    load_stage_weights(single.core, handoff, expected_config=single.core_config(), expected_kind="LLaMo")
    state = single.core.state_dict()
    for key, value in handoff.state_dict.items():
        assert torch.equal(state[key], value), key
    trained = [k for k in handoff.state_dict if k.startswith("mot.motion_layers.")]
    assert trained and any(not torch.equal(fresh[k], state[k]) for k in trained)  # it did train

    # and equals the trained weights in the run's own checkpoint
    ckpt = torch.load(workspace["root"] / out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for key, value in handoff.state_dict.items():
        assert ckpt["state_dict"][f"core.{key}"].dtype == torch.float32, key
        assert torch.equal(ckpt["state_dict"][f"core.{key}"], value), key
    # the optimizer states of every trainable tensor are float32 too
    states = [s for s in ckpt["optimizer_states"][0]["state"].values()]
    assert states and {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
