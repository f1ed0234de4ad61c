"""Training data as an endless stream keyed by the optimiser step, so that a resumed run needs no loader state.

Every training DataModule (VAE windows, evaluator pairs, LLaMo samples) reads *stream positions*: position ``q``
is item ``perm_p[q mod N]`` of the ``p = q div N``-th shuffled pass over the ``N`` items, and every random draw of
that sample (crop, caption, task) is a function of ``(seed, q)``. :class:`StreamSampler` asks where the stream
stands when the DataLoader creates its iterator, and :func:`stream_start` answers from the trainer:
``global_step x batch size x world size x accumulate_grad_batches``. Lightning restores ``global_step`` from the
checkpoint before it creates the iterator, so a run resumed at any step (mid-epoch included) reads the very
positions an uninterrupted run reads after that step: there is no position, RNG or worker state to save.

Why not the sampler's own counter: Lightning does not call ``on_train_epoch_start`` when it resumes mid-epoch, and
DataLoader workers and prefetching read the sampler ahead of training, so only the step is a reliable clock.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

T_co = TypeVar("T_co", covariant=True)


def uniform(*key: object) -> float:
    """Deterministic U[0, 1) from a key (stable across processes and Python runs, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class StreamOrder:
    """Item index at a stream position: the ``position mod n``-th entry of that pass's seeded permutation."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n < 1:
            raise ValueError(f"a stream needs at least one item, got n={n}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._perm: tuple[int, list[int]] | None = None  # one pass at a time is enough

    def __call__(self, position: int) -> int:
        if position < 0:
            raise IndexError(f"stream positions are >= 0, got {position}")
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm[1][offset]


class KeyedItems(Protocol[T_co]):
    """A dataset whose random draws come from a caller-given key (see :class:`PositionStream`)."""

    def __len__(self) -> int: ...

    def draw(self, index: int, key: tuple[int, ...]) -> T_co: ...


class PositionStream(Dataset[T_co]):
    """``stream[q]`` = ``items.draw(order(q), key=(seed, q, 1))``: an endless shuffled stream over ``items``.

    ``len()`` is one pass (the DataLoader's epoch); any position ``>= 0`` is valid. The trailing ``1`` of the key
    keeps stream draws apart from fixed per-index draws ``(seed, index)`` of evaluation sets.
    """

    def __init__(self, items: KeyedItems[T_co], seed: int) -> None:
        self.items, self.seed = items, seed
        self.order = StreamOrder(len(items), seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> T_co:
        return self.items.draw(self.order(position), (self.seed, position, 1))


class StreamSampler(Sampler[int]):
    """Yields ``size`` consecutive stream positions from ``start()``, read each time an iterator is created.

    With ``grouping`` the positions come in the order of a :class:`LengthGroupedOrder` (still a function of the
    stream position alone, so resuming stays exact).
    """

    def __init__(self, size: int, start: Callable[[], int], grouping: LengthGroupedOrder | None = None) -> None:
        self.size, self.start, self.grouping = size, start, grouping

    def __iter__(self) -> Iterator[int]:
        first = self.start()
        if self.grouping is None:
            return iter(range(first, first + self.size))
        return (self.grouping(k) for k in range(first, first + self.size))

    def __len__(self) -> int:
        return self.size


class LengthGroupedOrder:
    """Reorders the stream inside windows of ``window`` optimiser steps so that each step's samples have similar
    lengths (the "mega-batch" of HF's ``group_by_length``): less padding, the same samples.

    Window ``w`` holds the positions of steps ``w * window ... (w + 1) * window - 1`` (``step_positions()``
    positions per step: batch x world size x accumulation, as in :func:`stream_start`). They are sorted by
    ``length(position)`` and cut into ``window`` chunks of one step each; a seeded permutation of the window
    decides which step gets which chunk, so long and short steps alternate instead of arriving in length order.
    Every position of the window is read exactly once, by a step of that window: a run resumed at any step reads
    what the uninterrupted run reads. ``window=1`` is the identity (a step's positions, unsorted order aside).
    """

    def __init__(
        self, window: int, step_positions: Callable[[], int], length: Callable[[int], int], seed: int = 0
    ) -> None:
        if window < 1:
            raise ValueError(f"length grouping needs a window of at least 1 step, got {window}")
        self.window, self.step_positions, self.length, self.seed = window, step_positions, length, seed
        self._cache: tuple[tuple[int, int], list[int]] | None = None  # (window index, per step), the window's order

    def __call__(self, position: int) -> int:
        if position < 0:
            raise IndexError(f"stream positions are >= 0, got {position}")
        per_step = self.step_positions()
        step, offset = divmod(position, per_step)
        window, slot = divmod(step, self.window)
        if self._cache is None or self._cache[0] != (window, per_step):
            self._cache = ((window, per_step), self._window_order(window, per_step))
        return self._cache[1][slot * per_step + offset]

    def _window_order(self, window: int, per_step: int) -> list[int]:
        first = window * self.window * per_step
        by_length = sorted(range(first, first + self.window * per_step), key=lambda q: (self.length(q), q))
        chunks = [by_length[i * per_step : (i + 1) * per_step] for i in range(self.window)]
        g = torch.Generator().manual_seed(self.seed * 100_019 + window)
        return [q for i in torch.randperm(self.window, generator=g).tolist() for q in chunks[i]]


def step_positions(trainer: Any, batch_size: int) -> int:
    """Stream positions one optimiser step consumes: ``batch_size`` per process and accumulated batch."""
    if trainer is None:
        return batch_size
    return batch_size * int(trainer.world_size) * int(trainer.accumulate_grad_batches)


def stream_start(trainer: Any, batch_size: int) -> int:
    """First stream position of the next optimiser step (0 without a trainer, e.g. a loader used on its own).

    Each optimiser step consumes ``batch_size`` positions per process and accumulated batch; DDP/FSDP's
    distributed sampler deals the positions of one step out to the ranks (rank ``r`` takes every
    ``world_size``-th), so the steps read disjoint, consecutive slices of the stream.
    """
    if trainer is None:
        return 0
    return int(trainer.global_step) * step_positions(trainer, batch_size)


def stream_loader(
    dataset: Dataset,
    batch_size: int,
    start: Callable[[], int],
    what: str,
    grouping: LengthGroupedOrder | None = None,
    **kwargs: Any,
) -> DataLoader:
    """Training DataLoader over a stream dataset: full batches only, so each step consumes exactly a batch.

    ``what`` names the data (split and flag) in the error raised when one batch is more than the data holds;
    ``grouping`` reorders the positions by length (:class:`LengthGroupedOrder`).
    """
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size:
        raise ValueError(
            f"{what} has {size} training items, fewer than --data.init_args.batch_size={batch_size}: every step "
            "reads a full batch (that keeps the data stream keyed by the step); lower the batch size or add data"
        )
    return DataLoader(
        dataset, batch_size=batch_size, sampler=StreamSampler(size, start, grouping), drop_last=True, shuffle=False, **kwargs
    )


def stream_layout(trainer: Any, batch_size: int, seed: int) -> dict[str, int]:
    """What a step's stream position depends on besides the step: saved in the checkpoint, compared on resume."""
    return {
        "seed": seed,
        "batch_size": batch_size,
        "world_size": int(trainer.world_size) if trainer is not None else 1,
        "accumulate_grad_batches": int(trainer.accumulate_grad_batches) if trainer is not None else 1,
    }


def check_stream_layout(saved: dict[str, Any], current: dict[str, int], what: str) -> None:
    """Warn when a resumed run's stream layout differs from its checkpoint's (then the resume is not exact).

    A warning, not an error: resuming on another number of devices or with another batch size is a legitimate
    choice after a preemption, it only gives up replaying the uninterrupted run's samples.
    """
    changed = {k: (saved[k], v) for k, v in current.items() if k in saved and saved[k] != v}
    if changed:
        detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        warnings.warn(
            f"{what}: resuming with a data stream layout other than the checkpoint's ({detail}); training goes on "
            "but no longer reads the samples the uninterrupted run would. For an exact resume use the checkpoint's "
            "--data.init_args.seed / batch_size, --trainer.devices / num_nodes and accumulate_grad_batches",
            stacklevel=2,
        )
