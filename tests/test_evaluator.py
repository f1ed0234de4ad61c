"""The TMR-style text-motion evaluator (metrics/evaluator.py): padding invariance, checkpoints, loss, bad input."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from metrics.evaluator import (
    EvaluatorConfig,
    TextMotionEvaluator,
    contrastive_loss,
    hash_tokenize,
    packaged_minilm_path,
)

TINY = {"latent_dim": 32, "ff_size": 64, "num_layers": 2, "num_heads": 2, "text_num_layers": 1}
CAPTIONS = ["a person walks forward", "jump", "someone waves the left hand slowly, then sits down"]


def _scratch(**overrides: object) -> TextMotionEvaluator:
    return TextMotionEvaluator(EvaluatorConfig(**{**TINY, "text_encoder": "scratch", "vocab_size": 128, **overrides}))


@pytest.fixture(scope="module")
def minilm() -> TextMotionEvaluator:
    torch.manual_seed(0)
    return TextMotionEvaluator(EvaluatorConfig(**TINY, text_encoder="minilm")).eval()


@pytest.mark.parametrize("frames_per_token", [1, 4])
def test_motion_embedding_does_not_depend_on_batch_padding(frames_per_token: int) -> None:
    model = _scratch(frames_per_token=frames_per_token).eval()
    lengths = torch.tensor([50, 20, 7])
    batch = torch.randn(3, 64, 272)
    # garbage after the true length: huge values, NaN and Inf must all be ignored
    batch[1, 20:] = 1e6
    batch[2, 7:] = float("nan")
    batch[0, 50:] = float("inf")
    with torch.no_grad():
        batched = model.encode_motion(batch, lengths)
        alone = torch.cat([model.encode_motion(batch[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(3)])
        longer = model.encode_motion(torch.cat([batch, torch.zeros(3, 40, 272)], dim=1), lengths)
    assert batched.shape == (3, 32) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, longer, atol=1e-5, rtol=1e-5)
    # normalised embeddings by default; the motion really matters
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(3))
    assert not torch.allclose(batched[0], batched[1])


def test_text_embedding_does_not_depend_on_batch(minilm: TextMotionEvaluator) -> None:
    scratch = _scratch().eval()
    for model in (minilm, scratch):
        with torch.no_grad():
            batched = model.encode_text(CAPTIONS)
            alone = torch.cat([model.encode_text([c]) for c in CAPTIONS])
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
        assert model.encode_text([""]).shape == (1, 32)  # an empty caption is a (bad) caption, not an error


def test_minilm_backbone_is_frozen_external_asset(minilm: TextMotionEvaluator) -> None:
    backbone = minilm.text_encoder.backbone
    assert Path(backbone.path) == packaged_minilm_path()
    names = [n for n, _ in minilm.named_parameters()]
    assert names and not any("backbone" in n for n in names)
    assert not any("backbone" in k for k in minilm.state_dict())
    assert all(not p.requires_grad for p in backbone.model.parameters())
    minilm.train()
    assert not backbone.model.training  # no dropout in the frozen encoder, whatever the owner's mode
    minilm.eval()
    model = TextMotionEvaluator(EvaluatorConfig(**TINY)).to(torch.float64)
    assert next(model.text_encoder.backbone.model.parameters()).dtype == torch.float64  # moved with its owner
    assert model.encode_text(["walk"]).dtype == torch.float64
    # MiniLM sentence similarity: paraphrases are closer than unrelated captions
    with torch.no_grad():
        out = minilm(torch.zeros(3, 8, 272), [8, 8, 8], ["a man walks forward", "a person walks ahead", "jump"])
    assert out.text_similarity[0, 1] > 0.7 > out.text_similarity[0, 2]


def test_text_state_cache_is_exact(minilm: TextMotionEvaluator) -> None:
    cached = TextMotionEvaluator(EvaluatorConfig(**TINY, text_cache_size=2)).eval()
    cached.load_state_dict(minilm.state_dict())
    with torch.no_grad():
        expected = minilm.encode_text(CAPTIONS)
        first = cached.encode_text(CAPTIONS)  # 3 captions, room for 2: the oldest is dropped
        assert list(cached.text_encoder.backbone._cache) == CAPTIONS[1:]
        second = cached.encode_text(CAPTIONS[::-1])  # two from the cache, one recomputed
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, expected.flip(0), atol=1e-5, rtol=1e-5)
    assert len(cached.text_encoder.backbone._cache) == 2


@pytest.mark.parametrize("encoder", ["scratch", "minilm"])
def test_save_load_round_trip(encoder: str, tmp_path: Path, minilm: TextMotionEvaluator) -> None:
    model = _scratch().eval() if encoder == "scratch" else minilm
    folder = model.save(tmp_path / "ev")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["kind"] == "TextMotionEvaluator" and meta["excluded_prefixes"] == []
    assert meta["config"]["text_encoder"] == encoder and meta["config"]["latent_dim"] == 32
    # weights only: the frozen MiniLM (90 MB) is not copied into the checkpoint
    assert (folder / "handoff.safetensors").stat().st_size < 2_000_000
    loaded = TextMotionEvaluator.load(folder).eval()
    feats, lengths = torch.randn(2, 30, 272), torch.tensor([30, 12])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_motion(feats, lengths), model.encode_motion(feats, lengths))
        torch.testing.assert_close(loaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS))
    # the plain load_state_dict path for users with other weights
    other = TextMotionEvaluator(loaded.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.encode_text(CAPTIONS), model.encode_text(CAPTIONS))


def test_load_reads_llamo_stage_output(tmp_path: Path) -> None:
    """`llamo fit` of the evaluator stage writes its core through stageio; metrics reads that folder."""
    from stageio import load_stage_weights, save_stage_output

    model = _scratch().eval()
    save_stage_output(tmp_path / "stage", model, asdict(model.config), kind="TextMotionEvaluator", stage="evaluator")
    loaded = TextMotionEvaluator.load(tmp_path / "stage").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS))
    # and the other way round: TextMotionEvaluator.save is a valid stage output
    model.save(tmp_path / "saved")
    load_stage_weights(
        _scratch(), tmp_path / "saved", expected_config=asdict(model.config), expected_kind="TextMotionEvaluator"
    )
    save_stage_output(tmp_path / "vae", torch.nn.Linear(2, 2), {}, kind="CausalMotionVAE")
    with pytest.raises(ValueError, match="describes a 'CausalMotionVAE', not a TextMotionEvaluator"):
        TextMotionEvaluator.load(tmp_path / "vae")


def test_load_rejects_mismatched_weights_and_configs(tmp_path: Path) -> None:
    _scratch().save(tmp_path / "small")
    bigger = _scratch(latent_dim=64)
    with pytest.raises(
        ValueError, match=r"shape mismatches \['motion_encoder.input.bias: file \(32,\) vs model \(64,\)"
    ):
        bigger.load_weights(tmp_path / "small" / "handoff.safetensors")
    deeper = _scratch(num_layers=3)
    with pytest.raises(ValueError, match=r"missing keys \['motion_encoder.transformer.encoder.layers.2"):
        deeper.load_weights(tmp_path / "small" / "handoff.safetensors")
    with pytest.raises(FileNotFoundError, match="not a saved evaluator folder"):
        TextMotionEvaluator.load(tmp_path / "nowhere")
    meta = json.loads((tmp_path / "small" / "config.json").read_text())
    meta["config"]["latnet_dim"] = 5
    (tmp_path / "small" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown EvaluatorConfig keys \['latnet_dim'\]"):
        TextMotionEvaluator.load(tmp_path / "small")
    with pytest.raises(ValueError, match="latent_dim=30 must be divisible by num_heads=4"):
        EvaluatorConfig(latent_dim=30, num_heads=4)


def test_bad_input_raises_value_error() -> None:
    model = _scratch().eval()
    with pytest.raises(ValueError, match=r"shape \(B, T, 272\) \(normalised motion\), got \(2, 30, 263\)"):
        model.encode_motion(torch.zeros(2, 30, 263), [30, 30])
    with pytest.raises(ValueError, match=r"got \(30, 272\)"):
        model.encode_motion(torch.zeros(30, 272), [30])
    bad = torch.zeros(2, 30, 272)
    bad[1, 4, 100] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf inside the true length of clips \[1\]"):
        model.encode_motion(bad, [30, 10])
    with pytest.raises(ValueError, match=r"integers in \[1, T=30\], got \[30, 31\]"):
        model.encode_motion(torch.zeros(2, 30, 272), [30, 31])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        model.encode_motion(torch.zeros(2, 30, 272), [30])
    with pytest.raises(ValueError, match="got 2 clips but 3 captions"):
        model(torch.zeros(2, 30, 272), [30, 30], CAPTIONS)
    with pytest.raises(ValueError, match="non-empty list of strings, got str"):
        model.encode_text("a person walks")
    with pytest.raises(ValueError, match=r"entries \[1\] are not"):
        model.encode_text(["walk", 3])  # type: ignore[list-item]


def _reference_infonce(m: torch.Tensor, t: torch.Tensor, tau: float, masked: set[tuple[int, int]]) -> float:
    """Explicit per-row log-softmax sums over cosine similarities, skipping masked negatives."""
    m = m / m.norm(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    n = m.shape[0]
    total = 0.0
    for i in range(n):
        for rows_are_motion in (True, False):
            sims = [float(m[i] @ t[j] if rows_are_motion else t[i] @ m[j]) / tau for j in range(n)]
            keep = [sims[j] for j in range(n) if j == i or ((i, j) not in masked and (j, i) not in masked)]
            total += -(sims[i] - math.log(sum(math.exp(s) for s in keep)))
    return total / (2 * n)


def test_contrastive_loss_matches_reference_and_masks_false_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    m, t = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    got = contrastive_loss(m, t, 0.1)
    assert float(got) == pytest.approx(_reference_infonce(m, t, 0.1, set()), rel=1e-9)
    sim = torch.eye(5, dtype=torch.float64)
    sim[1, 3] = sim[3, 1] = 0.9  # captions 1 and 3 are near-duplicates: not negatives of each other
    masked = contrastive_loss(m, t, 0.1, sim, threshold=0.85)
    assert float(masked) == pytest.approx(_reference_infonce(m, t, 0.1, {(1, 3)}), rel=1e-9)
    assert float(contrastive_loss(m, t, 0.1, sim, threshold=0.95)) == pytest.approx(float(got))
    # identical captions in the scratch encoder are masked through its similarity matrix
    model = _scratch()
    out = model(torch.randn(3, 10, 272), [10, 10, 10], ["walk", "walk", "jump"])
    assert out.text_similarity.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_training_steps_separate_matched_pairs() -> None:
    """A few optimiser steps on 8 distinct (motion, caption) pairs reach perfect in-batch retrieval."""
    torch.manual_seed(0)
    model = _scratch(dropout=0.0)
    feats = torch.randn(8, 24, 272)
    lengths = torch.tensor([24, 20, 16, 24, 12, 18, 22, 10])
    captions = [f"action {w} done {k} times" for w, k in zip("abcdefgh", range(8))]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = model(feats, lengths, captions)
        losses = model.loss(out)
        first = float(losses["loss"].detach()) if first is None else first
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        final = model.loss(model(feats, lengths, captions))
    assert float(final["loss"]) < 0.3 * first
    assert float(final["accuracy"]) == 1.0


def test_hash_tokenizer_is_stable() -> None:
    ids = hash_tokenize("A person walks, then WALKS.", vocab_size=1000, max_tokens=10)
    assert len(ids) == 7 and ids[2] == ids[5] and all(1 <= i < 1000 for i in ids)
    # crc32 is fixed by the zlib format: ids do not change across processes or Python versions
    assert hash_tokenize("walk", 1000, 10) == [1 + zlib.crc32(b"walk") % 999]
    assert hash_tokenize("a b c d", 1000, 2) == hash_tokenize("a b", 1000, 2)


def test_real_clip_embeds(real_clip: dict[str, np.ndarray]) -> None:
    model = _scratch().eval()
    norm = (real_clip["features"] - real_clip["mean"]) / real_clip["std"]
    feats = torch.from_numpy(norm[:120]).float().unsqueeze(0)
    with torch.no_grad():
        emb = model.encode_motion(feats, [120])
        again = model.encode_motion(torch.cat([feats, feats[:, :60]], dim=1), [120])
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb, again, atol=1e-5, rtol=1e-5)


def test_docstring_examples_run() -> None:
    import doctest

    import metrics.evaluator

    result = doctest.testmod(metrics.evaluator)
    assert result.attempted >= 3 and result.failed == 0
