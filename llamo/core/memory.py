"""Per-device memory of weights, gradients and optimizer states for one training setting (``llamo plan``).

The arithmetic is pure: `plan_memory` takes parameter groups (element count, bytes per element, trainable or
not) and a strategy kind and returns bytes per device; `parameter_groups` reads the groups off a model, which
`meta_llamo` builds on the meta device (no weights allocated, nothing read but a ``config.json``), so the
counts and dtypes are the real model's, 8B included, on any machine.

What each strategy keeps on one device (N devices, T = trainable elements; trainable tensors are float32
masters under the precision policy, see README "Precision"):

- ``single`` / ``ddp``: every weight in its own dtype; gradients of the trainable tensors (their dtype); AdamW's
  ``exp_avg`` + ``exp_avg_sq`` (their dtype). DDP also keeps its reducer's bucket buffers, a second copy of the
  gradients unless ``gradient_as_bucket_view: true`` (``ddp_bucket_copy``).
- ``deepspeed_zero2``: DeepSpeed's engine casts the *whole module* to the compute dtype (bf16 under
  ``bf16-mixed``/``bf16-true``, fp16 under ``16-*``; otherwise the module keeps its dtypes) and replicates it;
  its ZeRO-2 optimizer keeps a float32 master partition of the trainable elements (4 B x T/N), the gradient
  partition in the module's dtype plus the float32 copy it makes of it at the step ((m + 4) B x T/N), and the
  float32 Adam states (8 B x T/N). Its reduce bucket (``reduce_bucket_size`` elements) is not counted.
- ``fsdp`` (FSDP2 ``fully_shard`` or FSDP1 ``FULL_SHARD``): weights, gradients and AdamW states of every tensor
  are split over the N devices, each in its own dtype. The unit gathered for compute (one MLP, or the root)
  is transient and not counted.

Not counted anywhere: activations (they grow with batch size and sequence length and often dominate), the
CUDA context (~0.5-1 GB), allocator fragmentation, communication buffers, autocast's transient casts, and
buffers (RoPE frequencies: kilobytes). Shards are rounded up to whole elements per group, not padded as the
strategies pad them (a few elements per tensor).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from llamo.core.llm import build_random_llm, resolve_llm_path
from llamo.core.model import LLaMo, LLaMoConfig

__all__ = [
    "FP32_BYTES",
    "GIB",
    "STRATEGY_KINDS",
    "MemoryPlan",
    "ParameterGroup",
    "StrategyKind",
    "meta_llamo",
    "parameter_groups",
    "plan_memory",
]

StrategyKind = Literal["single", "ddp", "deepspeed_zero2", "fsdp"]
#: the strategy kinds `plan_memory` knows
STRATEGY_KINDS: tuple[str, ...] = ("single", "ddp", "deepspeed_zero2", "fsdp")
FP32_BYTES = 4
#: AdamW keeps exp_avg and exp_avg_sq per trainable element
ADAM_STATES = 2
GIB = 1024**3
#: Lightning precisions under which DeepSpeed's engine casts the module to a half dtype (its bf16/fp16 mode)
_DEEPSPEED_MODULE_BYTES = {"bf16-mixed": 2, "bf16-true": 2, "16-mixed": 2, "16-true": 2}


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters that share a dtype and a role (frozen or trained in this stage)."""

    name: str
    """What the group is, for the printout (e.g. ``frozen bfloat16``)."""
    numel: int
    """Number of elements."""
    element_bytes: int
    """Bytes per element of the dtype the model holds them in (bf16: 2, fp32: 4)."""
    trainable: bool
    """Whether this stage's optimizer updates them (they then have gradients and AdamW states)."""

    @property
    def bytes(self) -> int:
        """Bytes of the whole group in its own dtype."""
        return self.numel * self.element_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one setting (module docstring: what each strategy keeps)."""

    strategy: str
    """Strategy kind (`STRATEGY_KINDS`)."""
    devices: int
    """Number of devices the sharded parts are split over (data-parallel world size)."""
    frozen_weights: int
    """Weights of the frozen tensors."""
    trainable_weights: int
    """Weights of the trainable tensors as the module holds them (DeepSpeed: its bf16 copies)."""
    masters: int
    """Float32 master copies kept by the optimizer besides the module (DeepSpeed ZeRO's partitions; else 0)."""
    gradients: int
    """Gradients of the trainable tensors (with DDP bucket / DeepSpeed fp32-copy overheads)."""
    optimizer_states: int
    """AdamW exp_avg + exp_avg_sq."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """What this strategy's numbers assume."""

    @property
    def weights(self) -> int:
        """Frozen + trainable weights."""
        return self.frozen_weights + self.trainable_weights

    @property
    def total(self) -> int:
        """Everything counted (weights, masters, gradients, optimizer states); activations are not."""
        return self.weights + self.masters + self.gradients + self.optimizer_states


def _shard(numel: int, devices: int) -> int:
    """Elements of one device's shard (rounded up: the last shard is padded to the same size)."""
    return math.ceil(numel / devices)


def plan_memory(
    groups: Iterable[ParameterGroup],
    strategy: StrategyKind,
    devices: int,
    precision: str = "32-true",
    ddp_bucket_copy: bool = True,
) -> MemoryPlan:
    """Bytes per device of weights, gradients and AdamW states of ``groups`` under ``strategy`` on ``devices``.

    ``precision`` is ``trainer.precision`` (only DeepSpeed's module dtype depends on it: autocast keeps no
    persistent copies); ``ddp_bucket_copy`` is False when DDP runs with ``gradient_as_bucket_view: true``.
    Raises ValueError on an unknown strategy, ``devices < 1``, or ``single`` with more than one device.
    """
    groups = list(groups)
    if strategy not in STRATEGY_KINDS:
        raise ValueError(f"unknown strategy kind {strategy!r}; known: {', '.join(STRATEGY_KINDS)}")
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    if strategy == "single" and devices != 1:
        raise ValueError(f"strategy 'single' runs on one device, got devices={devices}; use 'ddp' for more")
    frozen = [g for g in groups if not g.trainable]
    trainable = [g for g in groups if g.trainable]
    t_numel = sum(g.numel for g in trainable)
    t_bytes = sum(g.bytes for g in trainable)
    frozen_bytes = sum(g.bytes for g in frozen)
    if strategy in ("single", "ddp"):
        grads = t_bytes * (2 if strategy == "ddp" and ddp_bucket_copy else 1)
        notes = ["weights, gradients and AdamW states replicated on every device"]
        if strategy == "ddp":
            notes.append(
                "gradients x2: DDP's bucket buffers copy them (gradient_as_bucket_view: true drops the copy)"
                if ddp_bucket_copy
                else "gradients x1: gradient_as_bucket_view: true (the buckets are the gradients)"
            )
        return MemoryPlan(strategy, devices, frozen_bytes, t_bytes, 0, grads, ADAM_STATES * t_bytes, tuple(notes))
    if strategy == "deepspeed_zero2":
        shard = _shard(t_numel, devices)
        module_bytes = _DEEPSPEED_MODULE_BYTES.get(precision)
        if module_bytes is None:  # no bf16/fp16 mode: the engine leaves the module's dtypes alone
            frozen_w, trainable_w = frozen_bytes, t_bytes
            grad_partition = sum(_shard(g.numel, devices) * g.element_bytes for g in trainable)
            mode = f"{precision}: the module keeps its own dtypes"
        else:
            frozen_w = sum(g.numel for g in frozen) * module_bytes
            trainable_w = t_numel * module_bytes
            grad_partition = shard * module_bytes
            mode = f"{precision}: DeepSpeed casts the whole module to {8 * module_bytes}-bit, frozen fp32 tensors too"
        notes = (
            f"module replicated on every device ({mode})",
            "fp32 master partition of the trainable elements: 4 B x T/N",
            "gradients: the partition in the module dtype + its fp32 copy made at the step (reduce bucket not counted)",
            "AdamW states: fp32 exp_avg + exp_avg_sq: 8 B x T/N",
        )
        return MemoryPlan(
            strategy,
            devices,
            frozen_w,
            trainable_w,
            FP32_BYTES * shard,
            grad_partition + FP32_BYTES * shard,
            ADAM_STATES * FP32_BYTES * shard,
            notes,
        )
    # fsdp: everything sharded, each group in its own dtype
    frozen_w = sum(_shard(g.numel, devices) * g.element_bytes for g in frozen)
    trainable_w = sum(_shard(g.numel, devices) * g.element_bytes for g in trainable)
    notes = (
        "weights, gradients and AdamW states all sharded over the devices, each in its own dtype",
        "the unit all-gathered for compute (one MLP, or the root unit) is transient and not counted",
    )
    return MemoryPlan(strategy, devices, frozen_w, trainable_w, 0, trainable_w, ADAM_STATES * trainable_w, notes)


def parameter_groups(model: nn.Module, trainable: Iterable[nn.Parameter]) -> list[ParameterGroup]:
    """``model``'s distinct parameters grouped by (trainable in ``trainable`` or frozen, dtype).

    Shared (tied) parameters count once, as in `LLaMo.parameter_counts`. Groups come frozen first, then by dtype
    name, so the printout is stable.
    """
    train_ids = {id(p) for p in trainable}
    sizes: dict[tuple[bool, torch.dtype], int] = {}
    for param in model.parameters():  # parameters() yields each tensor once (tied weights included)
        key = (id(param) in train_ids, param.dtype)
        sizes[key] = sizes.get(key, 0) + param.numel()
    ordered = sorted(sizes.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    return [
        ParameterGroup(
            f"{'trainable' if is_trained else 'frozen'} {str(dtype).removeprefix('torch.')}",
            numel,
            dtype.itemsize,
            is_trained,
        )
        for (is_trained, dtype), numel in ordered
    ]


def meta_llamo(config: LLaMoConfig) -> LLaMo:
    """`LLaMo` of ``config`` on the meta device: real shapes and dtypes, no memory, nothing downloaded.

    A base given by ``llm.path`` is described by that folder's ``config.json`` (``smollm2``: the prepared
    folder), so it must exist locally; a ``llm.config`` base needs nothing.
    """
    spec = config.llm
    if spec.path is None:
        return LLaMo(config, device="meta")
    from transformers import LlamaConfig

    folder = resolve_llm_path(spec.path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"llm.path {spec.path!r}: {folder / 'config.json'} does not exist; the plan reads the base model's shape "
            "from it (set llm.path to a local HF Llama folder, or give llm.config instead)"
        )
    llama = LlamaConfig.from_pretrained(str(folder), local_files_only=True)
    llm = build_random_llm(llama, dtype=spec.torch_dtype, device="meta", attn_implementation=spec.attn_implementation)
    return LLaMo(config, llm=llm, device="meta")
