"""DataModule of the three LLaMo stages: cached VAE latents + captions, mixed text-to-motion / motion-to-text.

Every clip is encoded once by the frozen VAE (:mod:`llamo.data.latents`, cached on disk per VAE checkpoint).
Training reads an endless stream of sample *positions*: position ``q`` is clip ``perm_p[q mod N]`` of the
``p = q div N``-th shuffled pass, and its task (text-to-motion with probability ``t2m_ratio``, else
motion-to-text), caption, crop and caption dropout are drawn from a hash of ``(seed, q)``. The sampler reads
where the stream stands from the trainer's optimiser step whenever an iterator is created
(:mod:`llamo.data.stream`), so a batch mixes tasks by the stage's ratio and a run resumed at any step, mid-epoch
included, sees exactly the samples an uninterrupted one would, whatever Lightning's epoch bookkeeping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from llamo.core.format import FormattedSample, MotionTextBatch, SequenceFormatter, collate_samples
from llamo.data.latents import LatentSet, build_latents, check_vae_latent_dim
from llamo.data.stream import (
    LengthGroupedOrder,
    StreamOrder,
    check_stream_layout,
    step_positions,
    stream_layout,
    stream_loader,
    stream_start,
)
from llamo.data.stream import uniform as _uniform


class MotionTextDataset(Dataset[FormattedSample]):
    """Formatted samples from a :class:`LatentSet`, indexed by stream position (see the module docstring)."""

    def __init__(
        self,
        latents: LatentSet,
        formatter: SequenceFormatter,
        t2m_ratio: float,
        max_latents: int,
        seed: int = 0,
        shuffle: bool = True,
        caption_dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= t2m_ratio <= 1.0:
            raise ValueError(f"t2m_ratio must be in [0, 1], got {t2m_ratio}")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(
                f"caption_dropout must be in [0, 1) (the share of text-to-motion samples whose caption is "
                f"emptied), got {caption_dropout}; 0 turns it off"
            )
        if len(latents) == 0:
            raise ValueError("no clips to train on (the split is empty or every clip was filtered out)")
        self.latents, self.formatter = latents, formatter
        self.t2m_ratio, self.max_latents, self.seed, self.shuffle = t2m_ratio, max_latents, seed, shuffle
        self.caption_dropout = caption_dropout
        self._order = StreamOrder(len(latents), seed, shuffle)
        self._text_tokens: dict[tuple[str, str], int] = {}  # see `length`

    def __len__(self) -> int:
        return len(self.latents)

    def clip(self, position: int) -> int:
        """Clip index at a stream position: the ``position mod N``-th entry of that pass's permutation."""
        return self._order(position)

    def task(self, position: int) -> str:
        """``"t2m"`` or ``"m2t"`` for the sample at this stream position."""
        return "t2m" if _uniform(self.seed, position, "task") < self.t2m_ratio else "m2t"

    def caption_dropped(self, position: int) -> bool:
        """Whether the text-to-motion sample at this position is trained with an empty caption."""
        return self.task(position) == "t2m" and _uniform(self.seed, position, "caption_dropout") < self.caption_dropout

    def length(self, position: int) -> int:
        """Tokens of the sample at this stream position (what its row of a padded batch needs).

        A sample is its text (fixed by task and caption) plus one slot per motion latent, so the text's token count
        is formatted once per (task, caption) and cached: length grouping asks for every position of a window.
        """
        z, task, caption = self._draw(position)
        key = (task, caption)
        if key not in self._text_tokens:
            self._text_tokens[key] = int(self._format(z, task, caption).input_ids.shape[0]) - len(z)
        return self._text_tokens[key] + len(z)

    def __getitem__(self, position: int) -> FormattedSample:
        z, task, caption = self._draw(position)
        return self._format(z, task, caption)

    def _draw(self, position: int) -> tuple[torch.Tensor, str, str]:
        """``(cropped latents, task, caption)`` at a stream position (the emptied caption if dropped)."""
        index = self.clip(position)
        z = self.latents.latents[index]
        if len(z) > self.max_latents:
            start = int(_uniform(self.seed, position, "crop") * (len(z) - self.max_latents + 1)) if self.shuffle else 0
            z = z[start : start + self.max_latents]
        captions = self.latents.captions[index]
        caption = captions[int(_uniform(self.seed, position, "caption") * len(captions))]
        # the empty caption is exactly the unconditional row of `cfg="prompt"` guidance (`t2m_prompt_ids`)
        return z, self.task(position), "" if self.caption_dropped(position) else caption

    def _format(self, z: torch.Tensor, task: str, caption: str) -> FormattedSample:
        if task == "t2m":
            return self.formatter.text_to_motion(caption, z)
        return self.formatter.motion_to_text(z, caption)


class LLaMoDataModule(L.LightningDataModule):
    """Motion-text batches for the LLaMo stages.

    Args:
        root: Corpus folder in the HumanML3D-272 layout (e.g. the output of ``llamo data synth``).
        vae_dir: Output folder of the VAE stage (``runs/<exp>/vae``); its latents are cached under it.
        t2m_ratio: Share of text-to-motion samples (paper Table 1: 0.5 / 0.8 / 1.0 for stages 1 / 2 / 3).
        expressive_only: Train only on clips that pass the end-effector speed filter (paper stage 3).
        expressive_threshold: Speed in m/s an end effector must reach for a clip to count as expressive.
        batch_size: Samples per batch (per process).
        max_latents: Longest motion span in latent tokens (75 = 300 frames); longer clips are cropped.
        max_frames: Frames of each clip that are encoded into the cache.
        val_split: Split used for validation (None: no validation loop).
        num_workers: DataLoader workers.
        cache_dir: Where latents are cached (default: ``<vae_dir>/latent_cache``).
        seed: Seed of the task/caption/crop draws and of the shuffling.
        caption_dropout: Share of the training split's text-to-motion samples whose caption is emptied, so that
            the LLM learns the caption-free motion distribution that ``cfg="prompt"`` guidance subtracts (its
            unconditional rows are the same template with an empty caption). 0 (the paper's recipe): never;
            validation never drops captions.
        length_window: Optimiser steps whose samples are sorted by length together, so that each step's batch
            holds samples of similar length and pads less (:class:`~llamo.data.stream.LengthGroupedOrder`; the same
            samples, only their grouping into steps changes). 1 (the paper recipe): a step reads consecutive stream
            positions. The demo uses 8: its batches of 4 pad 22 % of their tokens unsorted.
    """

    def __init__(
        self,
        root: str = "data/synth",
        vae_dir: str = "runs/default/vae",
        t2m_ratio: float = 0.5,
        expressive_only: bool = False,
        expressive_threshold: float = 0.05,
        batch_size: int = 8,
        max_latents: int = 75,
        max_frames: int = 300,
        val_split: str | None = "val",
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        caption_dropout: float = 0.0,
        length_window: int = 1,
    ) -> None:
        if length_window < 1:
            raise ValueError(
                f"data.init_args.length_window must be >= 1 (optimiser steps sorted by length together), got "
                f"{length_window}; 1 turns length grouping off"
            )
        super().__init__()
        self.save_hyperparameters()
        self.formatter: SequenceFormatter | None = None
        self.train_set: MotionTextDataset | None = None
        self.val_set: MotionTextDataset | None = None

    def _latents(self, split: str) -> LatentSet:
        h = self.hparams
        if not Path(h.root).is_dir():
            raise FileNotFoundError(f"data.root={h.root!r} is not a folder; run `llamo data synth --out {h.root}`")
        latents = build_latents(
            h.vae_dir,
            h.root,
            split,
            cache_dir=h.cache_dir,
            max_frames=h.max_frames,
            expressive_threshold=h.expressive_threshold,
        )
        return latents.subset(latents.expressive) if h.expressive_only else latents

    def setup(self, stage: str) -> None:
        if self.formatter is None:
            core = getattr(self.trainer.lightning_module if self.trainer else None, "core", None)
            if core is None or not hasattr(core, "sequence_formatter"):
                raise ValueError(
                    "LLaMoDataModule needs a SequenceFormatter: set `.formatter` or train it with a "
                    "LLaMo stage whose core provides `sequence_formatter()`"
                )
            self.formatter = core.sequence_formatter()
        h = self.hparams
        if self.train_set is None or (h.val_split and self.val_set is None):
            # before encoding the corpus: a wrong VAE would otherwise fail much later, deep inside the model
            check_vae_latent_dim(h.vae_dir, self.formatter.latent_dim)
        if self.train_set is None:
            self.train_set = MotionTextDataset(
                self._latents("train"),
                self.formatter,
                h.t2m_ratio,
                h.max_latents,
                h.seed,
                caption_dropout=h.caption_dropout,
            )
        if h.val_split and self.val_set is None:
            self.val_set = MotionTextDataset(
                self._latents(h.val_split), self.formatter, h.t2m_ratio, h.max_latents, h.seed + 1, shuffle=False
            )

    def _collate(self) -> Callable[[list[FormattedSample]], MotionTextBatch]:
        assert self.formatter is not None
        return functools.partial(collate_samples, pad_id=self.formatter.pad_id)

    def state_dict(self) -> dict[str, Any]:
        """The stream layout (see :func:`~llamo.data.stream.stream_layout`); Lightning stores it in checkpoints."""
        return {"stream": self._stream_layout()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_stream_layout(state_dict.get("stream", {}), self._stream_layout(), "LLaMoDataModule")

    def _stream_layout(self) -> dict[str, int]:
        h = self.hparams
        return {**stream_layout(self.trainer, h.batch_size, h.seed), "length_window": h.length_window}

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        h = self.hparams
        return stream_loader(
            self.train_set,
            h.batch_size,
            lambda: stream_start(self.trainer, h.batch_size),
            f"split 'train' of {h.root} (expressive_only={h.expressive_only})",
            grouping=self._grouping(),
            collate_fn=self._collate(),
            num_workers=h.num_workers,
        )

    def _grouping(self) -> LengthGroupedOrder | None:
        h = self.hparams
        if h.length_window == 1:
            return None
        assert self.train_set is not None
        return LengthGroupedOrder(
            h.length_window, lambda: step_positions(self.trainer, h.batch_size), self.train_set.length, h.seed
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            collate_fn=self._collate(),
            num_workers=self.hparams.num_workers,
        )

    def transfer_batch_to_device(self, batch: MotionTextBatch, device: torch.device, dataloader_idx: int) -> object:
        return batch.to(device)
