"""Paired (normalised motion, caption) data for the text-motion evaluator (retrieval model).

Items follow MotionStreamer's evaluator training and T2M test protocol (``shared/reference/
motionstreamer_272_vae_eval.md`` §4.2/§4.4): the whole clip (a random ``max_frames`` window if longer), cropped to a
multiple of 4 frames by :func:`llamo.data.humanml272.crop_to_multiple` (random offset, sometimes one unit shorter),
normalised with the corpus Mean/Std, and one of its captions drawn at random. Training reads a stream keyed by the
optimiser step (:mod:`llamo.data.stream`): clip order, crops and captions are functions of ``(seed, stream
position)``, new on every pass and identical in a run resumed at any step. Validation/test items are drawn from an
RNG seeded by ``seed`` and the item index, so every epoch (and every process) sees the same pairs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from llamo.data.humanml272 import MotionCorpus, crop_to_multiple
from llamo.data.stream import PositionStream, check_stream_layout, stream_layout, stream_loader, stream_start
from llamo.motion.normalization import Normalizer

#: {"motion": (B, T_max, 272) normalised, zero-padded; "lengths": (B,) int64; "texts": list[str]; "ids": list[str]}
RetrievalBatch = dict[str, Tensor | list[str]]


class MotionCaptionPairs(Dataset):
    """One (normalised motion crop, caption) pair per clip of ``corpus``.

    Args:
        corpus: clips with captions.
        max_frames: longer clips are cut to a random window of this many frames first.
        multiple: crop length is a multiple of this (the VAE's temporal downsampling; MotionStreamer: 4).
        seed: ``None`` draws fresh crops and captions on every access; an int fixes them per index. Training reads
            the pairs through a :class:`~llamo.data.stream.PositionStream`, which keys each draw (:meth:`draw`) by
            its stream position instead.
    """

    def __init__(self, corpus: MotionCorpus, max_frames: int = 300, multiple: int = 4, seed: int | None = None) -> None:
        self.corpus = corpus
        self.max_frames = max_frames
        self.multiple = multiple
        self.seed = seed
        self.normalizer: Normalizer = corpus.normalizer

    def __len__(self) -> int:
        return len(self.corpus)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            # torch's RNG is seeded per DataLoader worker and epoch, so workers do not repeat each other
            return np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return np.random.default_rng((self.seed, index))

    def __getitem__(self, index: int) -> tuple[Tensor, str, str]:
        return self._pair(index, self._rng(index))

    def draw(self, index: int, key: tuple[int, ...]) -> tuple[Tensor, str, str]:
        """Pair of clip ``index`` with the crop and caption drawn from ``key`` (the same key, the same pair)."""
        return self._pair(index, np.random.default_rng(key))

    def _pair(self, index: int, rng: np.random.Generator) -> tuple[Tensor, str, str]:
        record = self.corpus[index]
        features = record.features
        if len(features) > self.max_frames:
            start = int(rng.integers(0, len(features) - self.max_frames + 1))
            features = features[start : start + self.max_frames]
        features = crop_to_multiple(features, self.multiple, rng)
        caption = record.captions[int(rng.integers(0, len(record.captions)))]
        motion = self.normalizer.normalise(torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32))
        return motion, caption, record.id


def collate_pairs(items: list[tuple[Tensor, str, str]]) -> RetrievalBatch:
    """Zero-pad clips (T_i, D) into ``motion`` (B, T_max, D) with ``lengths``; keep captions and ids as lists."""
    lengths = torch.tensor([len(m) for m, _, _ in items], dtype=torch.int64)
    motion = items[0][0].new_zeros(len(items), int(lengths.max()), items[0][0].shape[-1])
    for b, (clip, _, _) in enumerate(items):
        motion[b, : len(clip)] = clip
    return {"motion": motion, "lengths": lengths, "texts": [t for _, t, _ in items], "ids": [i for _, _, i in items]}


class RetrievalDataModule(L.LightningDataModule):
    """(motion, caption) pairs from a HumanML3D-272 style folder for :class:`llamo.stages.evaluator.EvaluatorStage`.

    Args:
        root: Dataset folder (``motion_data/``, ``texts/``, ``split/``, ``mean_std/``).
        batch_size: Pairs per batch; also the number of in-batch negatives of the contrastive loss (TMR: 256).
        max_frames: Longer clips are cut to a random window of this many frames (MotionStreamer test: < 300).
        min_frames: Shorter clips are left out (MotionStreamer test: 60; evaluator training: 40).
        multiple: Crops are a multiple of this many frames (MotionStreamer: 4).
        seed: Seed of the training stream (clip order, crops, captions keyed by stream position) and of the fixed
            validation/test crops and captions.
        num_workers: DataLoader worker processes.
        train_split, val_split, test_split: Split names (``split/<name>.txt``).
        skip_invalid: Skip (and count) broken clips instead of raising.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        max_frames: int = 300,
        min_frames: int = 40,
        multiple: int = 4,
        seed: int = 0,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        skip_invalid: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("multiple", multiple), ("min_frames", min_frames)):
            if value < 1:
                raise ValueError(f"--data.{name} must be >= 1, got {value}")
        if max_frames < max(min_frames, multiple):
            raise ValueError(
                f"--data.max_frames ({max_frames}) must be >= --data.min_frames ({min_frames}) and --data.multiple"
            )
        self.save_hyperparameters()
        self.sets: dict[str, MotionCaptionPairs] = {}
        self._stream: PositionStream[tuple[Tensor, str, str]] | None = None

    @property
    def normalizer(self) -> Normalizer:
        """Mean/Std of the corpus (the evaluator stage writes them next to its weights)."""
        if not self.sets:
            self.setup("fit")
        return next(iter(self.sets.values())).normalizer

    def _pairs(self, split: str, seed: int | None) -> MotionCaptionPairs:
        hp = self.hparams
        corpus = MotionCorpus(hp.root, split=split, min_length=hp.min_frames, skip_invalid=hp.skip_invalid)
        if len(corpus) == 0:
            raise ValueError(
                f"split {split!r} of {hp.root} has no clip with at least {hp.min_frames} frames; use a larger "
                "corpus or lower --data.min_frames"
            )
        return MotionCaptionPairs(corpus, hp.max_frames, hp.multiple, seed)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), None: ("train", "val", "test")}
        for part in wanted.get(stage, ()):
            if part not in self.sets:
                split = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[part]
                self.sets[part] = self._pairs(split, None if part == "train" else hp.seed)

    def _loader(self, part: str) -> DataLoader:
        if part not in self.sets:
            self.setup({"val": "validate", "test": "test"}[part])
        return DataLoader(
            self.sets[part],
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=collate_pairs,
        )

    def state_dict(self) -> dict[str, Any]:
        """The stream layout (see :func:`~llamo.data.stream.stream_layout`); Lightning stores it in checkpoints."""
        return {"stream": stream_layout(self.trainer, self.hparams.batch_size, self.hparams.seed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        current = stream_layout(self.trainer, self.hparams.batch_size, self.hparams.seed)
        check_stream_layout(state_dict.get("stream", {}), current, "RetrievalDataModule")

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.sets:
            self.setup("fit")
        hp = self.hparams
        if self._stream is None:
            self._stream = PositionStream(self.sets["train"], hp.seed)
        # in-batch negatives: full batches only (a tiny last batch would make the contrastive task trivially easy)
        return stream_loader(
            self._stream,
            hp.batch_size,
            lambda: stream_start(self.trainer, hp.batch_size),
            f"split {hp.train_split!r} of {hp.root} (min_frames={hp.min_frames})",
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            collate_fn=collate_pairs,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
