"""Caption dropout of the LLaMo DataModule: which samples lose their caption, what the emptied sample looks like
(the unconditional row of prompt-source guidance, token for token), and that 0 leaves the stream untouched."""

from __future__ import annotations

import pytest
import torch
from tiny_llamo import LATENT_DIM, tiny_tokenizer

from llamo.core.format import IGNORE_INDEX, SequenceFormatter
from llamo.data.latents import LatentSet
from llamo.data.llamo_data import LLaMoDataModule, MotionTextDataset
from llamo.inference.prompts import t2m_prompt_ids

CAPTIONS = ["a person walks forward", "a person jumps", "a person runs in circle"]
POSITIONS = range(600)


@pytest.fixture(scope="module")
def formatter() -> SequenceFormatter:
    return SequenceFormatter(tiny_tokenizer(), 100, 101, LATENT_DIM)


@pytest.fixture(scope="module")
def latents() -> LatentSet:
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn(4 + i % 5, LATENT_DIM, generator=gen) for i in range(12)]
    captions = [[CAPTIONS[i % 3], CAPTIONS[(i + 1) % 3]] for i in range(12)]
    return LatentSet([f"c{i}" for i in range(12)], clips, captions, [True] * 12, LATENT_DIM)


def _dataset(latents: LatentSet, formatter: SequenceFormatter, dropout: float = 0.0) -> MotionTextDataset:
    return MotionTextDataset(latents, formatter, t2m_ratio=0.5, max_latents=6, seed=3, caption_dropout=dropout)


def test_dropped_samples_are_the_prompt_guidance_rows(latents: LatentSet, formatter: SequenceFormatter) -> None:
    data = _dataset(latents, formatter, dropout=0.25)
    empty_prompt = t2m_prompt_ids(formatter, "")
    dropped = [q for q in POSITIONS if data.caption_dropped(q)]
    t2m = [q for q in POSITIONS if data.task(q) == "t2m"]
    assert set(dropped) <= set(t2m)  # motion-to-text samples keep their caption: it is their NTP target
    # the share among text-to-motion samples is the configured 0.25 (binomial, n ~ 300: 4 sigma ~ 0.1)
    assert abs(len(dropped) / len(t2m) - 0.25) < 0.1
    for q in dropped[:20]:
        ids = data[q].input_ids.tolist()
        # up to [BOM] the training row is token-identical to the unconditional row cfg="prompt" generates with
        assert ids[: len(empty_prompt)] == empty_prompt
    kept = next(q for q in t2m if q not in dropped)
    assert data[kept].input_ids.tolist()[: len(empty_prompt)] != empty_prompt


def test_dropout_keeps_the_rest_of_the_stream(latents: LatentSet, formatter: SequenceFormatter) -> None:
    """Same clips, tasks, crops and motion targets with and without dropout; 0 changes no sample at all."""
    plain = MotionTextDataset(latents, formatter, t2m_ratio=0.5, max_latents=6, seed=3)  # the argument left out
    off, on = _dataset(latents, formatter, 0.0), _dataset(latents, formatter, 0.5)
    assert any(on.caption_dropped(q) for q in range(60)) and not any(off.caption_dropped(q) for q in range(60))
    for q in range(60):
        a, b, c = plain[q], off[q], on[q]
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert on.clip(q) == plain.clip(q) and on.task(q) == plain.task(q)
        assert c.latents is not None and a.latents is not None and torch.equal(c.latents, a.latents)  # same crop
        if not on.caption_dropped(q):
            assert torch.equal(c.input_ids, a.input_ids)
        else:
            assert (c.labels != IGNORE_INDEX).sum() == (a.labels != IGNORE_INDEX).sum()  # same targets after [BOM]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_caption_dropout_is_refused(latents: LatentSet, formatter: SequenceFormatter, bad: float) -> None:
    with pytest.raises(ValueError, match=r"caption_dropout must be in \[0, 1\)"):
        _dataset(latents, formatter, bad)


def test_datamodule_exposes_it_with_the_paper_default() -> None:
    assert LLaMoDataModule().hparams["caption_dropout"] == 0.0
    assert LLaMoDataModule(caption_dropout=0.1).hparams["caption_dropout"] == 0.1
