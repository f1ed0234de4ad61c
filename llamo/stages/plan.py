"""``llamo plan``'s reading of a composed stage configuration: which stage, which strategy, how many devices.

`plan_stage` parses the ``--config`` files with the parser of ``llamo fit`` (nothing instantiated), builds the
stage's `LLaMo` on the meta device, asks the stage class which parameters it trains (`LLaMoStage.groups_of`),
maps ``trainer.strategy`` to a strategy kind and hands the rest to the pure arithmetic in `llamo.core.memory`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llamo.core.memory import MemoryPlan, ParameterGroup, StrategyKind, meta_llamo, parameter_groups, plan_memory
from llamo.core.model import LLaMoConfig
from llamo.stages.cli import parse_config
from llamo.stages.llamo_base import LLaMoStage

__all__ = ["StagePlan", "plan_stage", "resolve_devices", "resolve_strategy"]

#: Lightning's registered strategy names -> kind (`lightning.pytorch.strategies.StrategyRegistry`)
_NAMED = {"ddp": "ddp", "ddp_spawn": "ddp", "ddp_fork": "ddp", "ddp_notebook": "ddp", "single_device": "single",
          "deepspeed_stage_2": "deepspeed_zero2", "fsdp": "fsdp"}  # fmt: skip


@dataclass(frozen=True)
class StagePlan:
    """A composed configuration's stage, strategy and per-device memory."""

    configs: tuple[str, ...]
    """The ``--config`` files, in order."""
    stage: str
    """The stage class (e.g. ``JointStage``) and its stage name."""
    strategy: str
    """``trainer.strategy`` as configured (class or registered name)."""
    precision: str
    """``trainer.precision``."""
    groups: tuple[ParameterGroup, ...]
    """Parameters by (trainable in this stage, dtype)."""
    memory: MemoryPlan
    """Bytes per device."""
    notes: tuple[str, ...] = ()
    """Warnings about this setting beyond the arithmetic (e.g. a refusal at setup)."""


def resolve_devices(trainer: dict[str, Any], files: str) -> int:
    """``trainer.devices x trainer.num_nodes`` of a composed configuration; ValueError when that is not a count."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            count = -1
    if count < 1:
        raise ValueError(
            f"trainer.devices is {devices!r} in {files}: not a device count; pass --devices N (the number of GPUs)"
        )
    return count * int(nodes)


def resolve_strategy(strategy: Any, devices: int) -> tuple[StrategyKind, dict[str, Any]]:
    """``(kind, init_args)`` of ``trainer.strategy`` (a registered name or ``{class_path, init_args}``); ValueError
    for a strategy or setting the plan does not model."""
    if isinstance(strategy, dict):
        name = str(strategy.get("class_path", "")).rsplit(".", 1)[-1]
        init = dict(strategy.get("init_args") or {})
    else:
        name, init = str(strategy or "auto"), {}
    unsupported = (
        f"trainer.strategy {name!r} is not modelled by `llamo plan`; it knows single-device, DDP, DeepSpeed ZeRO "
        "stage 2 without offload, FSDP1 FULL_SHARD and FSDP2 (ModelParallelStrategy, tensor_parallel_size 1)"
    )
    if name == "auto":
        # Lightning's "auto" picks DDP for several devices of one kind
        return ("single" if devices == 1 else "ddp"), init
    if name in _NAMED:
        return _NAMED[name], init  # type: ignore[return-value]
    if name.startswith("ddp"):
        return "ddp", init
    if name in ("SingleDeviceStrategy",):
        return "single", init
    if name == "DDPStrategy":
        return "ddp", init
    if name == "DeepSpeedStrategy":
        stage = init.get("stage", 2)
        if stage != 2 or init.get("offload_optimizer") or init.get("offload_parameters"):
            raise ValueError(f"{unsupported} (got stage={stage}, offload_optimizer={init.get('offload_optimizer')}, "
                             f"offload_parameters={init.get('offload_parameters')})")  # fmt: skip
        return "deepspeed_zero2", init
    if name == "FSDPStrategy":
        sharding = init.get("sharding_strategy") or "FULL_SHARD"
        if str(sharding).rsplit(".", 1)[-1] != "FULL_SHARD" or init.get("cpu_offload"):
            raise ValueError(f"{unsupported} (got sharding_strategy={sharding}, cpu_offload={init.get('cpu_offload')})")
        return "fsdp", init
    if name == "ModelParallelStrategy":
        if init.get("tensor_parallel_size", 1) not in (1, "auto"):
            raise ValueError(f"{unsupported} (got tensor_parallel_size={init.get('tensor_parallel_size')})")
        return "fsdp", init
    raise ValueError(unsupported)


def _set_by(files: Sequence[str], *keys: str) -> str | None:
    """The last of ``files`` that sets the nested key ``keys`` (the one that wins), for error messages."""
    for path in reversed(files):
        node: Any = yaml.safe_load(Path(path).read_text()) or {}
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return path
    return None


def plan_stage(configs: Sequence[str | Path], devices: int | None = None) -> StagePlan:
    """Per-device memory of the LLaMo stage composed from ``configs`` (the ``--config`` files of ``llamo fit``)
    on ``devices`` devices (None: ``trainer.devices x trainer.num_nodes``). Builds nothing but a meta model.

    Raises FileNotFoundError for a missing file and ValueError naming the flag or file for a bad device count,
    a configuration that is not a LLaMo stage, or a strategy the plan does not model.
    """
    files = [str(c) for c in configs]
    if not files:
        raise ValueError("--config: give the YAML files of `llamo fit` (base, model size, stage[, strategy])")
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path} does not exist")
    if devices is not None and (not isinstance(devices, int) or devices < 1):
        raise ValueError(f"--devices must be a positive number of devices, got {devices!r}")
    shown = " ".join(f"--config {f}" for f in files)
    cfg = parse_config([a for f in files for a in ("--config", f)])
    model_cfg = cfg.get("model") or {}
    class_path = str(model_cfg.get("class_path", ""))
    module_name, _, class_name = class_path.rpartition(".")
    stage_cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
    if not (isinstance(stage_cls, type) and issubclass(stage_cls, LLaMoStage)):
        source = _set_by(files, "model", "class_path") or shown
        raise ValueError(
            f"{source} sets model.class_path: {class_path or None}, which is not a LLaMo stage; `llamo plan` plans "
            "the LLaMo stages: compose base.yaml + model/<size>.yaml + stage{1,2,3}.yaml [+ strategy]"
        )
    core = meta_llamo(LLaMoConfig.from_dict(dict(model_cfg["init_args"]["core"])))
    trainable = [p for ps in stage_cls.groups_of(core).values() for p in ps]
    groups = parameter_groups(core, trainable)

    trainer = cfg.get("trainer") or {}
    count = resolve_devices(trainer, shown) if devices is None else devices
    strategy = trainer.get("strategy", "auto")
    kind, init = resolve_strategy(strategy, count)
    if kind == "single" and count != 1:
        raise ValueError(f"--devices {count}: the configured single-device strategy runs on 1 device; pass "
                         "--devices 1 or compose a multi-device strategy (experiments/strategies/*.yaml)")  # fmt: skip
    precision = str(trainer.get("precision", "32-true"))
    bucket_copy = not bool(init.get("gradient_as_bucket_view", False))
    memory = plan_memory(groups, kind, count, precision, ddp_bucket_copy=bucket_copy)
    notes = []
    if isinstance(strategy, dict) and str(strategy.get("class_path", "")).endswith("FSDPStrategy"):
        if len({g.element_bytes for g in groups}) > 1:
            notes.append(
                "FSDP1 (FSDPStrategy) refuses this model at setup: one dtype per flat parameter, and the base is not "
                "float32; set model.init_args.core.llm.dtype: float32 in an overlay, or use strategies/fsdp2.yaml"
            )
    stage_name = getattr(stage_cls, "stage_name", "")
    strategy_name = str(strategy.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(strategy, dict) else strategy
    return StagePlan(
        tuple(files),
        f"{class_name} ({stage_name})" if stage_name else class_name,
        str(strategy_name),
        precision,
        tuple(groups),
        memory,
        tuple(notes),
    )
