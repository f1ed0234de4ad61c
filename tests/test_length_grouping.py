"""Length grouping of the training stream (`LengthGroupedOrder`, ``data.init_args.length_window``): the same samples,
each read once inside its window, steps of similar length, and an order that depends on the stream position alone."""

from __future__ import annotations

import pytest
import torch
from tiny_llamo import LATENT_DIM, tiny_tokenizer

from llamo.core.format import SequenceFormatter
from llamo.data.latents import LatentSet
from llamo.data.llamo_data import LLaMoDataModule, MotionTextDataset
from llamo.data.stream import LengthGroupedOrder, StreamSampler

PER_STEP, WINDOW = 4, 8


def _length(q: int) -> int:
    return 5 + (q * 7919) % 97  # lengths 5..101, scattered along the stream


def test_each_window_reads_its_own_positions_once() -> None:
    order = LengthGroupedOrder(WINDOW, lambda: PER_STEP, _length, seed=1)
    span = WINDOW * PER_STEP
    for w in range(3):
        read = [order(k) for k in range(w * span, (w + 1) * span)]
        assert sorted(read) == list(range(w * span, (w + 1) * span))


def test_steps_pad_less_and_alternate_long_and_short() -> None:
    order = LengthGroupedOrder(WINDOW, lambda: PER_STEP, _length, seed=1)
    steps = 64

    def padding(position_of) -> float:
        padded = real = 0
        for s in range(steps):
            lengths = [_length(position_of(s * PER_STEP + i)) for i in range(PER_STEP)]
            padded, real = padded + max(lengths) * PER_STEP, real + sum(lengths)
        return 1 - real / padded

    plain, grouped = padding(lambda k: k), padding(order)
    assert plain > 0.3 and grouped < plain / 3, (plain, grouped)
    # the window's steps are not in length order: the longest chunk is not always the last step of the window
    longest = [max(range(WINDOW), key=lambda i: sum(_length(order((w * WINDOW + i) * PER_STEP + j)) for j in range(4)))
               for w in range(steps // WINDOW)]  # fmt: skip
    assert len(set(longest)) > 1


def test_a_sampler_started_mid_window_reads_what_the_full_stream_reads() -> None:
    """The resume case: the iterator a resumed run creates at step 11 (mid-window 1) continues the same order."""
    full = list(StreamSampler(200, lambda: 0, LengthGroupedOrder(WINDOW, lambda: PER_STEP, _length, seed=2)))
    fresh = LengthGroupedOrder(WINDOW, lambda: PER_STEP, _length, seed=2)  # a new process: nothing cached
    resumed = list(StreamSampler(100, lambda: 11 * PER_STEP, fresh))
    assert resumed == full[11 * PER_STEP : 11 * PER_STEP + 100]
    # another seed groups the same window into other steps
    other = list(StreamSampler(200, lambda: 0, LengthGroupedOrder(WINDOW, lambda: PER_STEP, _length, seed=3)))
    assert other != full and sorted(other[:32]) == sorted(full[:32])


def test_the_step_size_is_read_when_the_window_is_laid_out() -> None:
    """Under DDP a step reads batch x world size positions: the window is cut into steps of that size."""
    per_step = [PER_STEP]
    order = LengthGroupedOrder(2, lambda: per_step[0], _length)
    single = [order(k) for k in range(8)]
    per_step[0] = 2 * PER_STEP  # two ranks
    double = [order(k) for k in range(16)]
    assert sorted(double) == list(range(16)) and double[:8] != single


def test_window_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="window of at least 1"):
        LengthGroupedOrder(0, lambda: PER_STEP, _length)
    with pytest.raises(ValueError, match="length_window must be >= 1.*got 0"):
        LLaMoDataModule(length_window=0)


def test_the_datamodule_batches_pad_less_with_the_same_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn(2 + (i * 5) % 11, LATENT_DIM, generator=gen) for i in range(32)]
    latents = LatentSet([f"c{i}" for i in range(32)], clips, [["a person walks"]] * 32, [True] * 32, LATENT_DIM)
    formatter = SequenceFormatter(tiny_tokenizer(), 100, 101, LATENT_DIM)
    data = MotionTextDataset(latents, formatter, t2m_ratio=0.5, max_latents=12, seed=0)
    assert data.length(5) == data[5].input_ids.shape[0]
    plain, grouped = LLaMoDataModule(batch_size=4), LLaMoDataModule(batch_size=4, length_window=8)
    for module in (plain, grouped):
        module.train_set, module.formatter = data, formatter

    def batches(module: LLaMoDataModule) -> list:
        return list(module.train_dataloader())

    a, b = batches(plain), batches(grouped)
    assert len(a) == len(b) == 8
    pad = lambda bs: sum(int(x.input_ids.numel() - x.attention_mask.sum()) for x in bs)  # noqa: E731
    assert pad(b) < pad(a) / 2, (pad(a), pad(b))
    ids = lambda bs: sorted(tuple(r[m].tolist()) for x in bs for r, m in zip(x.input_ids, x.attention_mask.bool()))  # noqa: E731
    assert ids(a) == ids(b)  # the same 32 samples, grouped into other steps
    assert plain.state_dict()["stream"]["length_window"] == 1 and grouped.state_dict()["stream"]["length_window"] == 8


def test_cached_lengths_are_the_formatted_lengths() -> None:
    """`length` caches the text's tokens per (task, caption): every position, cropped or dropped, still matches."""
    gen = torch.Generator().manual_seed(1)
    clips = [torch.randn(2 + (i * 5) % 11, LATENT_DIM, generator=gen) for i in range(16)]
    captions = [["a person walks", "a person jumps high"]] * 16
    latents = LatentSet([f"c{i}" for i in range(16)], clips, captions, [True] * 16, LATENT_DIM)
    formatter = SequenceFormatter(tiny_tokenizer(), 100, 101, LATENT_DIM)
    data = MotionTextDataset(latents, formatter, t2m_ratio=0.5, max_latents=6, seed=0, caption_dropout=0.3)
    positions = range(200)  # > 12 passes: most lengths come from the cache
    assert any(data.caption_dropped(q) for q in positions) and any(len(clips[data.clip(q)]) > 6 for q in positions)
    assert [data.length(q) for q in positions] == [data[q].input_ids.shape[0] for q in positions]


def test_two_ranks_split_each_length_sorted_step() -> None:
    """Under DDP Lightning wraps the sampler in a DistributedSamplerWrapper (rank r takes every 2nd position): the
    two ranks' batches of a step together are that step's chunk, and each rank's batch is of similar lengths."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    world, batch, steps = 2, PER_STEP, 16

    def rank_batches(grouping: LengthGroupedOrder | None) -> list[list[list[int]]]:
        samplers = [StreamSampler(steps * batch * world, lambda: 0, grouping) for _ in range(world)]
        wrapped = [DistributedSamplerWrapper(s, world, r, shuffle=False) for r, s in enumerate(samplers)]
        ranks = [list(w) for w in wrapped]
        return [[ranks[r][i * batch : (i + 1) * batch] for r in range(world)] for i in range(steps)]

    def spread(part: list[int]) -> int:
        return max(map(_length, part)) - min(map(_length, part))

    plain = rank_batches(None)
    grouped = rank_batches(LengthGroupedOrder(WINDOW, lambda: batch * world, _length, seed=4))
    for step in range(steps):  # a step's two rank batches together are the step's chunk of the grouped stream
        window = step // WINDOW
        chunk = grouped[step][0] + grouped[step][1]
        assert len(set(chunk)) == batch * world
        assert all(window * WINDOW * batch * world <= q < (window + 1) * WINDOW * batch * world for q in chunk)
    mean_spread = lambda steps_: sum(spread(p) for parts in steps_ for p in parts) / (steps * world)  # noqa: E731
    assert mean_spread(grouped) < mean_spread(plain) / 3, (mean_spread(plain), mean_spread(grouped))
