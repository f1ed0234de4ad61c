"""Motion-only data for the VAE stage: random fixed-length training windows, whole validation clips.

Training items are random ``window``-frame crops (MotionStreamer: 64 frames, a new random offset every time a clip
is drawn; clips shorter than the window are left out), read as a stream keyed by the optimiser step
(:mod:`llamo.data.stream`): the clip order and every crop offset are functions of ``(seed, stream position)``, so a
run resumed at any step crops exactly what an uninterrupted one does. Validation items are whole clips cropped to at most
``val_max_frames`` frames and to a multiple of the VAE's temporal downsampling, batched with zero padding and
``lengths`` so the metrics see every clip at its own length. All motion is normalised with the corpus's Mean/Std.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from llamo.data.humanml272 import MotionCorpus
from llamo.data.stream import PositionStream, check_stream_layout, stream_layout, stream_loader, stream_start, uniform
from llamo.motion.normalization import Normalizer

MotionBatch = dict[str, Tensor]


class RandomWindows(Dataset):
    """``windows_per_clip`` random ``window``-frame crops per clip and epoch, normalised float32 (window, D).

    Clips shorter than ``window`` are left out (MotionStreamer drops them too); ``clips`` says how many remain.
    Item ``i`` is a crop of clip ``i mod clips``; its offset comes from a key (:meth:`draw`), so training reads
    it through a :class:`~llamo.data.stream.PositionStream` that keys each crop by its stream position.
    """

    def __init__(self, corpus: MotionCorpus, window: int, windows_per_clip: int = 1) -> None:
        self.corpus = corpus
        self.window = window
        self.windows_per_clip = windows_per_clip
        self.normalizer: Normalizer = corpus.normalizer
        self.indices = np.flatnonzero(corpus.lengths >= window)

    @property
    def clips(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return self.clips * self.windows_per_clip

    def draw(self, index: int, key: tuple[int, ...]) -> Tensor:
        """Window of item ``index`` at the offset drawn from ``key`` (the same key, the same window)."""
        features = self.corpus[int(self.indices[index % self.clips])].features
        start = int(uniform(*key, "crop") * (len(features) - self.window + 1))
        crop = torch.as_tensor(features[start : start + self.window], dtype=torch.float32)
        return self.normalizer.normalise(crop)

    def __getitem__(self, index: int) -> Tensor:
        return self.draw(index, (index,))


class WholeClips(Dataset):
    """Clips with at least ``min_frames`` frames, normalised, cropped to ``<= max_frames`` and to a multiple of
    ``multiple`` frames (the VAE's temporal downsampling)."""

    def __init__(self, corpus: MotionCorpus, max_frames: int, multiple: int, min_frames: int = 1) -> None:
        self.corpus = corpus
        self.max_frames = max_frames
        self.multiple = multiple
        self.normalizer: Normalizer = corpus.normalizer
        self.indices = np.flatnonzero(corpus.lengths >= max(min_frames, multiple))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tensor:
        features = self.corpus[int(self.indices[index])].features
        frames = min(len(features), self.max_frames) // self.multiple * self.multiple
        return self.normalizer.normalise(torch.as_tensor(features[:frames], dtype=torch.float32))


def collate_padded(clips: list[Tensor]) -> MotionBatch:
    """Stack clips (T_i, D) into ``{"motion": (B, T_max, D) zero-padded, "lengths": (B,) int64}``."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.int64)
    motion = clips[0].new_zeros(len(clips), int(lengths.max()), clips[0].shape[-1])
    for b, clip in enumerate(clips):
        motion[b, : len(clip)] = clip
    return {"motion": motion, "lengths": lengths}


class MotionWindowDataModule(L.LightningDataModule):
    """Random normalised motion windows from a HumanML3D-272 style folder (VAE stage data).

    Args:
        root: Dataset folder (``motion_data/``, ``texts/``, ``split/``, ``mean_std/``).
        window: Frames per training window (MotionStreamer: 64); shorter training clips are left out.
        batch_size: Clips per batch (training and validation).
        windows_per_clip: Random windows drawn from each training clip per epoch.
        val_max_frames: Validation clips are cropped to their first ``val_max_frames`` frames.
        min_frames: Shortest validation clip kept (MotionStreamer's reconstruction test uses 60).
        multiple: Validation clips are cropped to a multiple of this (the VAE's temporal downsampling).
        num_workers: DataLoader worker processes.
        train_split, val_split: Split names (``split/<name>.txt``).
        skip_invalid: Skip (and count) broken clips instead of raising.
        seed: Seed of the training stream (clip order and crop offsets, keyed by stream position).
    """

    def __init__(
        self,
        root: str,
        window: int = 64,
        batch_size: int = 32,
        windows_per_clip: int = 1,
        val_max_frames: int = 300,
        min_frames: int = 60,
        multiple: int = 4,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        skip_invalid: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("window", window),
            ("batch_size", batch_size),
            ("windows_per_clip", windows_per_clip),
            ("val_max_frames", val_max_frames),
            ("multiple", multiple),
        ):
            if value < 1:
                raise ValueError(f"--data.{name} must be >= 1, got {value}")
        if window % multiple or val_max_frames < multiple:
            raise ValueError(
                f"--data.window ({window}) must be a multiple of --data.multiple ({multiple}) and "
                f"--data.val_max_frames ({val_max_frames}) at least that large"
            )
        self.save_hyperparameters()
        self.train_set: RandomWindows | None = None
        self.val_set: WholeClips | None = None
        self._stream: PositionStream[Tensor] | None = None

    @property
    def normalizer(self) -> Normalizer:
        """Mean/Std of the corpus (the stage de-normalises reconstructions with it for joint metrics)."""
        if self.train_set is None and self.val_set is None:
            self.setup("fit")
        dataset = self.train_set if self.train_set is not None else self.val_set
        assert dataset is not None
        return dataset.normalizer

    def _corpus(self, split: str) -> MotionCorpus:
        # min_length=1: short clips are not errors here, each dataset leaves out what it cannot use
        return MotionCorpus(self.hparams.root, split=split, min_length=1, skip_invalid=self.hparams.skip_invalid)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = RandomWindows(self._corpus(hp.train_split), hp.window, hp.windows_per_clip)
            if self.train_set.clips == 0:
                raise ValueError(
                    f"split {hp.train_split!r} of {hp.root} has no clip with at least --data.window={hp.window} "
                    "frames; use a larger corpus or a shorter window"
                )
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = WholeClips(self._corpus(hp.val_split), hp.val_max_frames, hp.multiple, hp.min_frames)
            if len(self.val_set) == 0:
                raise ValueError(
                    f"split {hp.val_split!r} of {hp.root} has no clip with at least --data.min_frames="
                    f"{hp.min_frames} frames; lower it or use a larger corpus"
                )

    def state_dict(self) -> dict[str, Any]:
        """The stream layout (see :func:`~llamo.data.stream.stream_layout`); Lightning stores it in checkpoints."""
        return {"stream": stream_layout(self.trainer, self.hparams.batch_size, self.hparams.seed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        current = stream_layout(self.trainer, self.hparams.batch_size, self.hparams.seed)
        check_stream_layout(state_dict.get("stream", {}), current, "MotionWindowDataModule")

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') first"
        hp = self.hparams
        if self._stream is None:
            self._stream = PositionStream(self.train_set, hp.seed)
        return stream_loader(
            self._stream,
            hp.batch_size,
            lambda: stream_start(self.trainer, hp.batch_size),
            f"split {hp.train_split!r} of {hp.root} (windows_per_clip={hp.windows_per_clip})",
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            collate_fn=collate_padded,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup('fit') or setup('validate') first"
        # fixed order: the preview callback shows the same clips every epoch
        return DataLoader(
            self.val_set,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_padded,
        )
