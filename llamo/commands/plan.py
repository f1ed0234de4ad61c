"""``llamo plan``: per-device bytes of weights, gradients and optimizer states of a composed LLaMo stage."""

from __future__ import annotations

from llamo.core.memory import GIB, MemoryPlan
from llamo.stages.plan import StagePlan, plan_stage

#: activations are not computed; below this share of the GPU left for them a setting is called tight
HEADROOM_WARNING = 0.25


def _gib(n: float) -> str:
    return f"{n / GIB:,.2f}"


def format_plan(plan: StagePlan, gpu_memory_gb: float) -> str:
    """The printout of ``llamo plan`` (a Markdown table and notes)."""
    mem: MemoryPlan = plan.memory
    # an "80 GB" A100 reports 81,920 MiB (80 GiB) in nvidia-smi: the vendors' GB are binary here
    capacity = gpu_memory_gb * GIB
    lines = [
        f"configs:   {' '.join(plan.configs)}",
        f"stage:     {plan.stage}",
        f"strategy:  {plan.strategy} -> {mem.strategy}, {mem.devices} device(s), precision {plan.precision}",
        "",
        "| parameters | elements | bytes/elem | one full copy |",
        "|---|---:|---:|---:|",
    ]
    for g in plan.groups:
        lines.append(f"| {g.name} | {g.numel:,} | {g.element_bytes} | {_gib(g.bytes)} GiB |")
    if not any(g.trainable for g in plan.groups):
        lines.append("| (nothing trains in this stage) | 0 | | |")
    rows = [
        ("weights, frozen", mem.frozen_weights),
        ("weights, trainable", mem.trainable_weights),
        ("fp32 master copies", mem.masters),
        ("gradients", mem.gradients),
        ("optimizer states (AdamW)", mem.optimizer_states),
    ]
    lines += ["", f"Per device, of {gpu_memory_gb:g} GB (GiB) per GPU:", "",
              "| per device | GiB | % of GPU |", "|---|---:|---:|"]  # fmt: skip
    for label, value in rows:
        lines.append(f"| {label} | {_gib(value)} | {100 * value / capacity:.1f} % |")
    lines.append(f"| **total** | **{_gib(mem.total)}** | **{100 * mem.total / capacity:.1f} %** |")
    left = capacity - mem.total
    lines.append("")
    lines.append("Activations are NOT included (nor the CUDA context, ~0.5-1 GB, allocator fragmentation and")
    lines.append("communication buckets); they grow with batch size x sequence length and often dominate.")
    if left <= 0:
        lines.append(
            f"Does NOT fit: weights + gradients + states exceed {gpu_memory_gb:g} GB by {_gib(-left)} GiB before "
            "any activation."
        )
    else:
        tight = " (tight: under a quarter of the GPU)" if left < HEADROOM_WARNING * capacity else ""
        lines.append(f"Fits: headroom for activations and the rest: {_gib(left)} GiB of {_gib(capacity)} GiB{tight}.")
    lines += ["", "Assumes:"] + [f"- {note}" for note in (*mem.notes, *plan.notes)]
    return "\n".join(lines)


def plan(config: list[str], devices: int | None = None, gpu_memory_gb: float = 80.0) -> int:
    """Print the per-device bytes of weights, gradients and optimizer states of a composed LLaMo stage.

    The model is built on the meta device (no weights allocated, nothing downloaded), so real parameter counts
    and dtypes come from the configuration itself, 8B included. The stage file decides what trains (fp32
    masters with gradients and two fp32 AdamW states each); the strategy decides what is replicated and what is
    split over the devices. Activations are not included.

    Args:
        config: A YAML of `llamo fit`, in the same order: base, model size, stage, strategy...
        devices: Number of devices (data-parallel world size); default: the composed trainer.devices x
            trainer.num_nodes.
        gpu_memory_gb: Memory of one device in GB as nvidia-smi counts it (binary: an 80 GB A100 has 80 x 2**30
            bytes), for the % column and the headroom line.
    """
    if gpu_memory_gb <= 0:
        raise ValueError(f"--gpu_memory_gb must be positive, got {gpu_memory_gb!r}")
    print(format_plan(plan_stage(config, devices), gpu_memory_gb))
    return 0
