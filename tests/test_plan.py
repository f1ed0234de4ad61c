"""`llamo plan`: per-device bytes of weights, gradients and AdamW states (README "Distributed", "Memory plan").

The tiny model's counts are written out by hand from experiments/model/tiny.yaml (the Llama shapes) and checked
against what the plan reads off the meta-device model; the strategy rules are checked on synthetic groups; the
real 1B/3B/8B paper compositions are planned on the meta device (nothing allocated, nothing downloaded).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llamo.commands.plan import plan
from llamo.core.memory import ParameterGroup, meta_llamo, plan_memory
from llamo.core.model import LLaMoConfig
from llamo.stages.plan import plan_stage, resolve_strategy
from metrics.command import call_command

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"

# ---- tiny.yaml by hand: vocab 49152, hidden 64, intermediate 128, 2 layers, 4 heads x 16, 2 KV heads, tied ----
V, H, I, LAYERS, Q, KV = 49152, 64, 128, 2, 4 * 16, 2 * 16
LAYER = H * Q + 2 * H * KV + Q * H + 3 * H * I + 2 * H  # q, k, v, o, gate/up/down, two RMSNorms
TEXT = V * H + LAYERS * LAYER + H  # tied embedding / LM head, the layers, the final norm
TWINS = LAYERS * LAYER + H  # motion twins of every layer + the motion branch's final norm
ADDED = 2 * H  # [BOM]/[EOM] input rows (tied: they are also the output rows)
assert (LAYER, TEXT, TWINS) == (36_992, 3_219_776, 74_048)


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An overlay that gives the tiny model a bf16 text branch, as model/{1b,3b,8b}.yaml do."""
    path = tmp_path_factory.mktemp("plan") / "bf16.yaml"
    path.write_text("model:\n  init_args:\n    core:\n      llm:\n        dtype: bfloat16\n")
    return path


@pytest.fixture(scope="module")
def head_sizes() -> tuple[int, int]:
    """(adapter + projector, flow head + exit head) elements of the tiny model, counted module by module."""
    core = meta_llamo(LLaMoConfig.from_yaml(EXP / "model" / "tiny.yaml"))

    def count(*modules: object) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())  # type: ignore[attr-defined]

    return count(core.adapter, core.projector), count(core.flow_head, core.exit_head)


def tiny(stage: str, bf16: Path, *extra: Path) -> list[Path]:
    return [EXP / "base.yaml", EXP / "model" / "tiny.yaml", bf16, EXP / f"{stage}.yaml", *extra]


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_tiny_single_device_bytes_by_hand(stage: str, tiny_bf16: Path, head_sizes: tuple[int, int]) -> None:
    """Frozen text in bf16 (2 B), everything else fp32 (4 B); gradients (4 B) and two AdamW states (8 B) only for
    the stage's trainable set: stage 1 adapter/projector/rows/heads, stage 2 + twins, stage 3 heads only."""
    mid, heads = head_sizes
    trainable = {"stage1": mid + ADDED + heads, "stage2": TWINS + mid + ADDED + heads, "stage3": heads}[stage]
    frozen_fp32 = TWINS + mid + ADDED + heads - trainable  # fp32 tensors this stage leaves alone
    result = plan_stage(tiny(stage, tiny_bf16))
    mem = result.memory
    assert (mem.strategy, mem.devices) == ("single", 1)  # base.yaml: strategy auto, devices 1
    assert mem.frozen_weights == 2 * TEXT + 4 * frozen_fp32
    assert mem.trainable_weights == 4 * trainable
    assert mem.masters == 0
    assert mem.gradients == 4 * trainable
    assert mem.optimizer_states == 2 * 4 * trainable
    assert mem.total == 2 * TEXT + 4 * frozen_fp32 + 16 * trainable
    groups = {g.name: g.numel for g in result.groups}
    expected = {"frozen bfloat16": TEXT, "trainable float32": trainable, "frozen float32": frozen_fp32}
    assert groups == {k: v for k, v in expected.items() if v}


def test_tiny_deepspeed_zero2(tiny_bf16: Path, head_sizes: tuple[int, int]) -> None:
    """ZeRO-2 + bf16-mixed: the whole module in bf16 on every device; fp32 masters, gradients (bf16 partition +
    fp32 copy) and fp32 states split over N."""
    mid, heads = head_sizes
    trainable = TWINS + mid + ADDED + heads
    files = tiny("stage2", tiny_bf16, EXP / "strategies" / "deepspeed_zero2.yaml")
    for n in (1, 4):
        mem = plan_stage(files, devices=n).memory
        shard = math.ceil(trainable / n)
        assert mem.strategy == "deepspeed_zero2"
        assert mem.frozen_weights == 2 * TEXT and mem.trainable_weights == 2 * trainable  # not divided by N
        assert (mem.masters, mem.gradients, mem.optimizer_states) == (4 * shard, (2 + 4) * shard, 8 * shard)


def test_tiny_fsdp2_shards_everything(tiny_bf16: Path, head_sizes: tuple[int, int]) -> None:
    mid, heads = head_sizes
    trainable = mid + ADDED + heads
    files = tiny("stage1", tiny_bf16, EXP / "strategies" / "fsdp2.yaml")
    mem = plan_stage(files).memory  # fsdp2.yaml: devices 2
    assert (mem.strategy, mem.devices) == ("fsdp", 2)
    assert mem.frozen_weights == 2 * math.ceil(TEXT / 2) + 4 * math.ceil((TWINS) / 2)
    assert mem.trainable_weights == 4 * math.ceil(trainable / 2) == mem.gradients
    assert mem.optimizer_states == 2 * mem.gradients


# ---- strategy rules on synthetic groups --------------------------------------------------------------------------

GROUPS = [
    ParameterGroup("frozen bfloat16", 8_000, 2, False),
    ParameterGroup("frozen float32", 1_000, 4, False),
    ParameterGroup("trainable float32", 4_000, 4, True),
]


@pytest.mark.parametrize("n", [1, 2, 8])
def test_zero2_divides_grads_and_states_not_weights(n: int) -> None:
    one = plan_memory(GROUPS, "deepspeed_zero2", 1, "bf16-mixed")
    many = plan_memory(GROUPS, "deepspeed_zero2", n, "bf16-mixed")
    assert many.frozen_weights == one.frozen_weights == 2 * 9_000  # frozen fp32 cast to bf16 too
    assert many.trainable_weights == one.trainable_weights == 2 * 4_000
    assert (many.masters * n, many.gradients * n, many.optimizer_states * n) == (
        one.masters, one.gradients, one.optimizer_states) == (4 * 4_000, 6 * 4_000, 8 * 4_000)  # fmt: skip


def test_zero2_without_half_mode_keeps_the_module_dtypes() -> None:
    mem = plan_memory(GROUPS, "deepspeed_zero2", 4, "32-true")
    assert (mem.frozen_weights, mem.trainable_weights) == (2 * 8_000 + 4 * 1_000, 4 * 4_000)
    assert mem.gradients == (4 + 4) * 1_000


@pytest.mark.parametrize("n", [2, 8])
def test_fsdp_divides_everything(n: int) -> None:
    one, many = plan_memory(GROUPS, "fsdp", 1), plan_memory(GROUPS, "fsdp", n)
    for field in ("frozen_weights", "trainable_weights", "gradients", "optimizer_states"):
        assert getattr(many, field) * n == getattr(one, field), field
    assert one.total == 2 * 8_000 + 4 * 1_000 + 4 * 4_000 * 4  # weights + grads + 2 states of the trainables


def test_ddp_replicates_and_counts_its_buckets() -> None:
    single, ddp = plan_memory(GROUPS, "single", 1), plan_memory(GROUPS, "ddp", 8)
    assert ddp.weights == single.weights and ddp.optimizer_states == single.optimizer_states == 8 * 4_000
    assert ddp.gradients == 2 * single.gradients  # the reducer's bucket copy
    assert plan_memory(GROUPS, "ddp", 8, ddp_bucket_copy=False).gradients == single.gradients


def test_strategy_names() -> None:
    assert resolve_strategy("auto", 1)[0] == "single" and resolve_strategy("auto", 2)[0] == "ddp"
    assert resolve_strategy({"class_path": "x.FSDPStrategy", "init_args": {}}, 2)[0] == "fsdp"
    with pytest.raises(ValueError, match="not modelled"):
        resolve_strategy({"class_path": "x.DeepSpeedStrategy", "init_args": {"stage": 3}}, 8)
    with pytest.raises(ValueError, match="not modelled"):
        resolve_strategy({"class_path": "x.FSDPStrategy", "init_args": {"sharding_strategy": "HYBRID_SHARD"}}, 8)


# ---- bad input ---------------------------------------------------------------------------------------------------


def test_bad_devices_names_the_flag(tiny_bf16: Path) -> None:
    for bad in (0, -2):
        with pytest.raises(ValueError, match="--devices"):
            plan_stage(tiny("stage1", tiny_bf16), devices=bad)
    with pytest.raises(ValueError, match="devices must be a positive integer"):
        plan_memory(GROUPS, "fsdp", 0)
    with pytest.raises(ValueError, match="--devices 4: the configured single-device strategy"):
        plan_stage([*tiny("stage1", tiny_bf16), _single_device(tiny_bf16.parent)], devices=4)


def _single_device(folder: Path) -> Path:
    path = folder / "single.yaml"
    path.write_text("trainer:\n  strategy: single_device\n")
    return path


def test_not_a_llamo_stage_names_the_file() -> None:
    vae = EXP / "vae.yaml"
    with pytest.raises(ValueError, match=r"vae\.yaml sets model\.class_path: llamo\.stages\.vae\.\w+, which is not"):
        plan_stage([EXP / "base.yaml", vae])
    with pytest.raises(ValueError, match="compose a stage file after the model file"):
        # the model file after the stage file puts back the shared base class, which trains nothing
        plan_stage([EXP / "base.yaml", EXP / "stage2.yaml", EXP / "model" / "tiny.yaml"])
    with pytest.raises(FileNotFoundError, match="--config nope.yaml does not exist"):
        plan_stage(["nope.yaml"])


# ---- the command -------------------------------------------------------------------------------------------------


def test_command_prints_the_table(tiny_bf16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = tiny("stage2", tiny_bf16, EXP / "strategies" / "deepspeed_zero2.yaml")
    args = [a for f in files for a in ("--config", str(f))]
    assert call_command(plan, [*args, "--devices", "4", "--gpu_memory_gb", "1"]) == 0
    out = capsys.readouterr().out
    assert "JointStage (stage2)" in out and "deepspeed_zero2, 4 device(s), precision bf16-mixed" in out
    for row in ("weights, frozen", "weights, trainable", "fp32 master copies", "gradients", "optimizer states (AdamW)"):
        assert f"| {row} |" in out
    assert "| **total** |" in out and "Activations are NOT included" in out and "Fits: headroom" in out
    with pytest.raises(ValueError, match="--gpu_memory_gb"):
        call_command(plan, [*args, "--gpu_memory_gb", "0"])


def test_command_says_when_it_does_not_fit(tiny_bf16: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for f in tiny("stage2", tiny_bf16) for a in ("--config", str(f))]
    assert call_command(plan, [*args, "--gpu_memory_gb", "0.001"]) == 0
    assert "Does NOT fit" in capsys.readouterr().out


# ---- the paper's sizes on the meta device ------------------------------------------------------------------------

PAPER_GPUS = {"1b": 8, "3b": 8, "8b": 16}


def paper(size: str, stage: str) -> list[Path]:
    return [
        EXP / "base.yaml",
        EXP / "model" / f"{size}.yaml",
        EXP / f"{stage}.yaml",
        EXP / "paper" / f"{stage}.yaml",
        EXP / "strategies" / "deepspeed_zero2.yaml",
        EXP / "paper" / f"gpus{PAPER_GPUS[size]}.yaml",
    ]


@pytest.mark.parametrize("size", sorted(PAPER_GPUS))
def test_paper_stage2_zero2_from_real_counts(size: str) -> None:
    """Stage 2 (the largest trainable set) of the paper recipe: the default device count is the recipe's, the
    bf16 module holds every parameter once, and the sharded parts follow the trainable count of Table 7."""
    result = plan_stage(paper(size, "stage2"))
    mem = result.memory
    core = meta_llamo(LLaMoConfig.from_yaml(EXP / "model" / f"{size}.yaml"))
    counts = core.parameter_counts()
    base = sum(p.numel() for p in core.llm.parameters())
    trainable = counts.total - base  # stage 2 trains everything but the base LLM
    assert (mem.strategy, mem.devices) == ("deepspeed_zero2", PAPER_GPUS[size])
    assert {g.name: g.numel for g in result.groups} == {"frozen bfloat16": base, "trainable float32": trainable}
    assert mem.frozen_weights == 2 * base and mem.trainable_weights == 2 * trainable
    shard = math.ceil(trainable / PAPER_GPUS[size])
    assert (mem.masters, mem.gradients, mem.optimizer_states) == (4 * shard, 6 * shard, 8 * shard)
    assert mem.total < 80 * 2**30  # fits an 80 GB GPU before activations (README table)
