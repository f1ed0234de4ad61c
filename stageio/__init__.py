"""Portable weights at stage boundaries: ``handoff.safetensors`` + ``config.json``, loaded strictly.

A tiny package of its own (torch + safetensors only) so that both ``llamo`` and the standalone ``metrics``
package read and write the one format without importing each other.

A stage output folder holds exactly two files:

- ``handoff.safetensors``: tensors only (never a pickle, so loading a folder from elsewhere cannot run code);
- ``config.json``: ``{"kind": <core class name>, "config": <core config dict>, "excluded_prefixes": [...],
  "stage": <stage name>}``.

``excluded_prefixes`` names state-dict sub-trees deliberately left out (e.g. the frozen base LLM, which the
next stage rebuilds from its own path) so a handoff does not copy hundreds of MB of unchanged weights.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "handoff.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class StageOutput:
    """What a stage folder holds once read."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    config: dict[str, Any]
    stage: str = ""
    excluded_prefixes: list[str] = field(default_factory=list)


def _selected(state: Mapping[str, torch.Tensor], excluded_prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not any(k.startswith(p) for p in excluded_prefixes)}


def save_stage_output(
    out_dir: str | Path,
    core: nn.Module,
    config: Mapping[str, Any],
    kind: str | None = None,
    stage: str = "",
    excluded_prefixes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``core``'s weights (minus ``excluded_prefixes``) and its config to ``out_dir``; return the folder.

    ``extra`` adds informational entries to ``config.json`` (e.g. where converted weights came from); they cannot
    replace the format's own keys.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied embeddings) and non-contiguous views
    tensors = {
        k: v.detach().to("cpu").clone().contiguous() for k, v in _selected(core.state_dict(), excluded_prefixes).items()
    }
    clash = sorted(set(extra or {}) & {"kind", "stage", "config", "excluded_prefixes"})
    assert not clash, f"extra entries {clash} would replace the stage-output format's own keys"
    meta = {
        **dict(extra or {}),
        "kind": kind or type(core).__name__,
        "stage": stage,
        "config": dict(config),
        "excluded_prefixes": list(excluded_prefixes),
    }
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"kind": meta["kind"], "stage": stage})
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_stage_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a stage folder (or of the folder of its ``handoff.safetensors``), without the weights.

    Returns ``{"kind", "stage", "config", "excluded_prefixes"}`` (missing entries filled with empty values).
    """
    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    cfg = folder / CONFIG_FILE
    if not cfg.is_file():
        raise FileNotFoundError(
            f"stage output {folder} has no {CONFIG_FILE}; pass the folder a finished stage wrote "
            f"(it holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg} is not valid JSON ({err}); re-run the stage that wrote it") from err
    return {
        "kind": str(meta.get("kind", "")),
        "stage": str(meta.get("stage", "")),
        "config": dict(meta.get("config", {})),
        "excluded_prefixes": list(meta.get("excluded_prefixes", [])),
    }


def load_stage_output(path: str | Path) -> StageOutput:
    """Read a stage folder (or its ``handoff.safetensors``) written by :func:`save_stage_output`."""
    p = Path(path)
    folder = p.parent if p.suffix == ".safetensors" else p
    weights = folder / WEIGHTS_FILE
    for f in (weights, folder / CONFIG_FILE):
        if not f.is_file():
            raise FileNotFoundError(
                f"stage output {folder} has no {f.name}; pass the folder a finished stage wrote "
                f"(it holds {WEIGHTS_FILE} and {CONFIG_FILE})"
            )
    meta = read_stage_config(folder)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"{weights} cannot be read as safetensors ({err}); re-run the stage that wrote it") from err
    return StageOutput(state_dict=state, **meta)


def config_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """Fields whose values differ between two (nested) config dicts, as ``a.b: saved != current`` lines."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix in ignore:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                name = f"{prefix}.{key}" if prefix else str(key)
                if key not in a or key not in b:
                    if name not in ignore:
                        saved = repr(a[key]) if key in a else "<absent>"
                        current = repr(b[key]) if key in b else "<absent>"
                        out.append(f"{name}: saved {saved} != current {current}")
                else:
                    walk(a[key], b[key], name)
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{prefix}[{i}]")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}: saved {a!r} != current {b!r}")

    walk(saved, current, "")
    return out


def load_stage_weights(
    module: nn.Module,
    source: str | Path | StageOutput,
    expected_config: Mapping[str, Any] | None = None,
    expected_kind: str | None = None,
    ignore_config_fields: Sequence[str] = (),
) -> StageOutput:
    """Load a stage output into ``module`` strictly.

    Every key of ``module`` outside the saved ``excluded_prefixes`` must be present with the same shape, and
    no extra key may appear. All problems (missing, unexpected, mis-shaped keys, kind and config mismatches)
    are collected and raised as ONE ``ValueError`` so a broken handoff is diagnosed in a single run.
    """
    out = source if isinstance(source, StageOutput) else load_stage_output(source)
    where = source if not isinstance(source, StageOutput) else "<stage output>"
    problems: list[str] = []
    if expected_kind is not None and out.kind != expected_kind:
        problems.append(f"kind: saved {out.kind!r} != current {expected_kind!r}")
    if expected_config is not None:
        problems += [f"config {m}" for m in config_mismatches(out.config, expected_config, ignore_config_fields)]
    target = _selected(module.state_dict(), out.excluded_prefixes)
    missing = sorted(set(target) - set(out.state_dict))
    unexpected = sorted(set(out.state_dict) - set(target))
    shapes = sorted(
        f"{k}: saved {tuple(out.state_dict[k].shape)} != current {tuple(v.shape)}"
        for k, v in target.items()
        if k in out.state_dict and out.state_dict[k].shape != v.shape
    )
    problems += [f"missing key {k}" for k in missing]
    problems += [f"unexpected key {k}" for k in unexpected]
    problems += [f"shape {s}" for s in shapes]
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(
            f"cannot load stage output {where} into {type(module).__name__}: {len(problems)} problem(s)\n  {listing}\n"
            "Point the handoff at the folder written by the previous stage of the same model configuration."
        )
    # keys were checked above; strict=False only because excluded sub-trees are absent on purpose
    result = module.load_state_dict(out.state_dict, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return out


def read_torch_checkpoint(
    path: str | Path, allow_pickle: bool = False, trusted: str = "a released checkpoint", flag: str = "--allow_pickle"
) -> Any:
    """The top-level object of a foreign torch checkpoint (``torch.save``), for one-time weight conversions.

    Reads with ``weights_only=True`` first (tensors and plain containers only: nothing can run). A file that needs
    a full unpickle is read only with ``allow_pickle``; without it, and for a truncated, corrupt or foreign file,
    raises ONE ``ValueError`` naming ``path`` and the fix. ``trusted`` names the file the user may trust in that
    message and ``flag`` the option that sets ``allow_pickle``.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise ValueError(f"{path} cannot be read: it is truncated or corrupt ({err}); download it again") from err
        if not allow_pickle:
            hint = "" if zipfile.is_zipfile(path) else " (it is not a zip archive: it may also be truncated)"
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = found.group(1) if found else "non-tensor objects"
            raise ValueError(
                f"{path} stores Python objects beyond tensors ({what}, e.g. Lightning hyper-parameters), so reading "
                f"it needs a full unpickle, which can run arbitrary code{hint}. If you trust the file ({trusted}), "
                f"pass {flag} (allow_pickle=True) once; the converted folder is weights-only and never unpickled again"
            ) from err
    except Exception as err:  # torch raises RuntimeError/EOFError/KeyError/... for truncated or foreign files
        raise ValueError(f"{path} cannot be read: it is truncated or corrupt ({err}); download it again") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"unpickling {path} needs the Python module {err.name!r}, which is not installed; install it "
            f"(e.g. `pip install {err.name}`) for the one-time conversion"
        ) from err
    except Exception as err:  # as above, plus pickle's own errors for truncated data
        raise ValueError(f"{path} cannot be read: it is truncated or corrupt ({err}); download it again") from err
