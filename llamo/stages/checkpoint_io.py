"""Atomic Lightning checkpoints: a kill during a save leaves the previous ``last.ckpt`` intact and loadable.

Lightning's ``TorchCheckpointIO`` writes a local checkpoint to a temporary file from :func:`tempfile.mkstemp` (the
system temp folder) and ``shutil.move``\\ s it over the target. When that folder is on another file system (``/tmp``
on tmpfs, the run on a disk or network volume) the move is a copy into the target file: a job killed during it
leaves a truncated ``last.ckpt`` and no previous one. Nothing is fsync'ed either, so a node crash can leave an
empty file behind a completed rename.

:class:`AtomicCheckpointIO` writes ``.<name>.<random>.tmp`` *in the target's folder*, fsyncs it, renames it over the
target with :func:`os.replace` (atomic within one file system) and fsyncs the folder. Every strategy used by this
project saves through the strategy's ``checkpoint_io`` on rank 0 (single device, DDP, FSDP with a full state dict,
``ModelParallelStrategy`` with ``save_distributed_checkpoint: false``), so ``experiments/base.yaml`` installs it
with ``trainer.plugins``. DeepSpeed and sharded (directory) checkpoints are written by their own engines and are
not covered.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open folders, and its rename is durable)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it as it was.

    Stale temporary files of ``path`` from a previously killed save are removed first (only one process writes a
    given checkpoint path at a time: rank 0).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # an exception (not a kill) cleans up; a kill leaves it for the next save
        raise
    _fsync_folder(target.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring).

    Remote URLs (``s3://``, ``gs://``, ...) go to Lightning's fsspec path unchanged: object stores publish an
    object only once its upload completes, which is atomic already.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO.save_checkpoint(..., storage_options=...) is not supported (as in Lightning's "
                f"TorchCheckpointIO); got {storage_options!r} for {path}"
            )
        scheme = str(path).split("://", 1)[0] if "://" in str(path) else "file"
        if scheme != "file":
            super().save_checkpoint(checkpoint, path)
            return
        local = str(path).removeprefix("file://")
        atomic_torch_save(checkpoint, local)
