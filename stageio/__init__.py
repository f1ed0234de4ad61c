"""Portable weights at stage boundaries: ``handoff.safetensors`` + ``config.json``, loaded strictly.

A tiny package of its own (torch + safetensors only) so that both ``llamo`` and the standalone ``metrics``
package read and write the one format without importing each other.

A stage output folder holds exactly two files:

- ``handoff.safetensors``: tensors only (never a pickle, so loading a folder from elsewhere cannot run code);
- ``config.json``: ``{"kind": <core class name>, "config": <core config dict>, "excluded_prefixes": [...],
  "excluded_fingerprints": {<prefix>: "sha256:<hex>"}, "stage": <stage name>}``.

``excluded_prefixes`` names state-dict sub-trees deliberately left out (e.g. the frozen base LLM, which the
next stage rebuilds from its own path) so a handoff does not copy hundreds of MB of unchanged weights.
``excluded_fingerprints`` records, per excluded prefix, `fingerprint_tensors` of that sub-tree as it was when the
stage trained (keys with the prefix stripped: for LLaMo's ``mot.llm.`` it is the fingerprint of the base
``LlamaForCausalLM.state_dict()`` itself). `load_stage_weights` recomputes it on the rebuilt sub-tree and refuses a
mismatch, so a handoff cannot silently be combined with other base weights than the ones it was trained with.
Outputs written before fingerprints existed (no ``excluded_fingerprints`` entry) load with a warning;
`record_excluded_fingerprints` adds the entry to such a folder.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
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
#: first bytes hashed by `fingerprint_tensors`: a new definition must change it (old fingerprints then mismatch)
FINGERPRINT_VERSION = b"stageio-fingerprint-v1\0"
#: the config.json entries of the format itself (`save_stage_output`'s ``extra`` cannot replace them)
_FORMAT_KEYS = {"kind", "stage", "config", "excluded_prefixes", "excluded_fingerprints"}


def fingerprint_tensors(state: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<64 hex>"`` identifying the tensors of ``state`` (a state dict or a sub-tree of one).

    Definition (version 1): SHA-256 over ``FINGERPRINT_VERSION``, then for every key in sorted (code point) order
    the UTF-8 header ``"<key>\\0<dtype>\\0<shape>\\0"`` (``torch.float32``, ``(576, 49152)``) followed by either
    ``"<n bytes>\\n"`` and the tensor's raw bytes in row-major (C-contiguous) order as held in memory
    (little-endian on every platform torch supports), or, when the tensor is a view of exactly the same memory as
    an earlier key's (tied weights: same storage, offset, shape, stride and dtype), ``"tied:<earlier key>\\n"``
    and no bytes, so a tied matrix is hashed once. Devices, ``requires_grad`` and memory layout do not enter;
    any changed element, dtype, shape, key or tying does. Cost: one SHA-256 pass over the bytes, no copy for a
    contiguous CPU tensor (a CUDA tensor is copied to the CPU first): SmolLM2-135M-Instruct in float32 (538 MB)
    takes 0.4-0.9 s on the 2-core development CPU (`tests/test_fingerprint.py` keeps it under 5 s).
    """
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    seen: dict[tuple[Any, ...], str] = {}
    for key in sorted(state):
        tensor = state[key].detach()
        assert tensor.device.type != "meta", f"{key} is on the meta device: it holds no weights to fingerprint"
        identity = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel() and identity in seen:
            digest.update(f"tied:{seen[identity]}\n".encode())
            continue
        seen[identity] = key
        # a uint8 view of contiguous CPU memory: numpy has no bfloat16, and no copy is made for a contiguous tensor
        raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"{raw.nbytes}\n".encode())
        digest.update(memoryview(raw))
    return "sha256:" + digest.hexdigest()


def excluded_fingerprints(state: Mapping[str, torch.Tensor], excluded_prefixes: Sequence[str]) -> dict[str, str]:
    """``{prefix: fingerprint_tensors(sub-tree under prefix, keys with the prefix stripped)}`` of ``state``."""
    out = {}
    for prefix in excluded_prefixes:
        sub = _subtree(state, prefix)
        assert sub, f"excluded prefix {prefix!r} matches no key of the state dict"
        out[prefix] = fingerprint_tensors(sub)
    return out


def _subtree(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@dataclass
class StageOutput:
    """What a stage folder holds once read."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    config: dict[str, Any]
    stage: str = ""
    excluded_prefixes: list[str] = field(default_factory=list)
    excluded_fingerprints: dict[str, str] | None = None
    """``{prefix: fingerprint}`` of the excluded sub-trees as trained; None: written before fingerprints existed."""
    folder: Path | None = None
    """The folder it was read from (None when built in memory)."""


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
    fingerprints: Mapping[str, str] | None = None,
) -> Path:
    """Write ``core``'s weights (minus ``excluded_prefixes``) and its config to ``out_dir``; return the folder.

    ``extra`` adds informational entries to ``config.json`` (e.g. where converted weights came from); they cannot
    replace the format's own keys. ``fingerprints`` are the `excluded_fingerprints` to record; None computes them
    from ``core.state_dict()``, which is right for a plain module. A caller whose ``core`` presents a gathered
    copy of sharded weights passes the ones it computed on the plain module (gathering breaks weight tying).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = core.state_dict()
    # clone: safetensors refuses tensors that share storage (tied embeddings) and non-contiguous views
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in _selected(state, excluded_prefixes).items()}
    clash = sorted(set(extra or {}) & _FORMAT_KEYS)
    assert not clash, f"extra entries {clash} would replace the stage-output format's own keys"
    if fingerprints is None:
        fingerprints = excluded_fingerprints(state, excluded_prefixes)
    assert sorted(fingerprints) == sorted(excluded_prefixes), (sorted(fingerprints), sorted(excluded_prefixes))
    meta = {
        **dict(extra or {}),
        "kind": kind or type(core).__name__,
        "stage": stage,
        "config": dict(config),
        "excluded_prefixes": list(excluded_prefixes),
        "excluded_fingerprints": dict(fingerprints),
    }
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"kind": meta["kind"], "stage": stage})
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_stage_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a stage folder (or of the folder of its ``handoff.safetensors``), without the weights.

    Returns ``{"kind", "stage", "config", "excluded_prefixes", "excluded_fingerprints"}`` (missing entries filled
    with empty values; ``excluded_fingerprints`` is None when the folder was written before fingerprints existed).
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
        "excluded_fingerprints": (
            None if meta.get("excluded_fingerprints") is None else dict(meta["excluded_fingerprints"])
        ),
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
    return StageOutput(state_dict=state, folder=folder, **meta)


def record_excluded_fingerprints(folder: str | Path, module: nn.Module) -> dict[str, str]:
    """Add ``excluded_fingerprints`` of ``module`` (the rebuilt core) to a stage folder written without them.

    Only for a folder whose ``config.json`` has no fingerprints yet (an older output), and only when ``module``'s
    excluded sub-trees really are the weights it was trained with: that is what the record will vouch for. A folder
    that already records them is left unchanged when they agree (ValueError naming both when they do not).
    Returns the fingerprints.
    """
    folder = Path(folder)
    meta_file = folder / CONFIG_FILE
    saved = read_stage_config(folder)
    current = excluded_fingerprints(module.state_dict(), saved["excluded_prefixes"])
    recorded = saved["excluded_fingerprints"]
    if recorded is not None:
        if recorded != current:
            raise ValueError(
                f"{meta_file} already records excluded_fingerprints {recorded}, the rebuilt weights give {current}; "
                "a recorded fingerprint is never overwritten (it names the weights the stage was trained with)"
            )
        return current
    meta = json.loads(meta_file.read_text())
    meta["excluded_fingerprints"] = current
    tmp = meta_file.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(meta_file)  # atomic: an interrupted write leaves the old config.json
    return current


def config_mismatches(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Fields whose values differ between two (nested) config dicts, as ``a.b: saved != current`` lines.

    ``defaults`` (dotted name -> value): a field the saved config lacks counts as saved with this value, so a
    stage output written before the field existed still matches a config that keeps the field's default."""
    out: list[str] = []
    defaults = defaults or {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix in ignore:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                name = f"{prefix}.{key}" if prefix else str(key)
                if key not in a and key in b and name in defaults:
                    walk(defaults[name], b[key], name)
                elif key not in a or key not in b:
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
    rebuilt_from: str = "the loading code",
    config_defaults: Mapping[str, Any] | None = None,
) -> StageOutput:
    """Load a stage output into ``module`` strictly.

    Every key of ``module`` outside the saved ``excluded_prefixes`` must be present with the same shape, and
    no extra key may appear; the excluded sub-trees ``module`` already holds (rebuilt by the caller, described
    by ``rebuilt_from`` in messages, e.g. ``llm.path '/models/x'``) must have the recorded `excluded_fingerprints`.
    ``config_defaults`` are the values of config fields an older output may not record (see `config_mismatches`).
    All problems (missing, unexpected, mis-shaped keys, kind and config mismatches, fingerprint mismatches) are
    collected and raised as ONE ``ValueError`` so a broken handoff is diagnosed in a single run. An output that
    records no fingerprints (written before they existed) loads with a `UserWarning` saying how to record them.
    """
    out = source if isinstance(source, StageOutput) else load_stage_output(source)
    where = out.folder if out.folder is not None else "<stage output>"
    problems: list[str] = []
    fixes: list[str] = []
    if expected_kind is not None and out.kind != expected_kind:
        problems.append(f"kind: saved {out.kind!r} != current {expected_kind!r}")
    if expected_config is not None:
        mismatches = config_mismatches(out.config, expected_config, ignore_config_fields, config_defaults)
        problems += [f"config {m}" for m in mismatches]
    state = module.state_dict()
    target = _selected(state, out.excluded_prefixes)
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
        fixes.append("Point the handoff at the folder written by the previous stage of the same model configuration.")
    if out.excluded_prefixes and out.excluded_fingerprints is None:
        warnings.warn(
            f"stage output {where} records no fingerprint of its excluded weights {out.excluded_prefixes} (it was "
            f"written before stage outputs recorded them), so the weights rebuilt from {rebuilt_from} are NOT "
            "checked against the ones it was trained with. If they are the same, record their fingerprint once "
            f"with `llamo record-fingerprint {where}` (Python: stageio.record_excluded_fingerprints(folder, core)); "
            "otherwise point the loader at the weights the stage was trained on.",
            UserWarning,
            stacklevel=2,
        )
    elif out.excluded_prefixes:
        wrong = []
        for prefix in out.excluded_prefixes:
            sub = _subtree(state, prefix)
            if not sub:
                problems.append(f"excluded prefix {prefix!r}: {type(module).__name__} has no weights under it")
                continue
            recorded, current = out.excluded_fingerprints.get(prefix), fingerprint_tensors(sub)
            if recorded != current:
                wrong.append(prefix)
                problems.append(
                    f"excluded weights {prefix!r} differ from the ones this output was trained with: it records "
                    f"{recorded}, the weights rebuilt from {rebuilt_from} have {current}"
                )
        if wrong:
            fixes.append(
                f"The excluded weights are not stored in the output; they were rebuilt from {rebuilt_from}. Point "
                "that at the exact weights the stage was trained on (same checkpoint files and dtype), or retrain "
                "the stage on these weights."
            )
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(
            f"cannot load stage output {where} into {type(module).__name__}: {len(problems)} problem(s)\n  {listing}\n"
            + "\n".join(fixes)
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
