"""Inference with a trained LLaMo: streaming text-to-motion, motion-to-text captions, text chat (paper §3.3, Fig. 5).

Text-to-motion (`stream_motion`) is a Python generator. The prompt is the training format up to and including the
assistant's ``[BOM]`` (`t2m_prompt_ids` cuts it out of a `SequenceFormatter` sample, so it is token-identical to
what the model was trained on). After one prefill, every step

1. reads the exit head on the last hidden state (``[BOM]`` first, then the last motion token) of the
   conditional rows and stops a sequence when ``sigmoid(logit) > exit_threshold`` once it has at least
   ``min_tokens`` latents, or unconditionally at ``max_tokens``;
2. samples the next latent with the flow head (Euler from t = 0 to 1, `FlowHead.sample`);
3. decodes its 4 frames with the streaming (causal) VAE decoder and yields them at once, normalised,
   de-normalised and as joint positions;
4. feeds the latent back through the motion adapter, one motion token per row, with the KV cache.

A batch of prompts is left-padded (padding masked, positions counted per row) and streams together. Two decode
paths (``decode=``), same results (the eager one is the reference in the tests):

- ``"eager"`` (default): a `DynamicCache`; a finished sequence's rows are removed from the KV cache, the VAE stream
  and the joint tracker, so it stops yielding and costs nothing afterwards.
- ``"fast"`` (CUDA): a `StaticCache` sized prompt + ``max_tokens`` for every LLM row (CFG rows included), written
  at the cache's in-place position counter, and static shapes for the whole stream: finished sequences keep their
  rows (they run on, their outputs are not yielded), so every step has the same shapes. The motion decode step
  (adapter -> MoT motion-only layers with the static cache -> motion final norm -> exit head + flow condition) and
  the flow head's Euler loop are two functions, each wrapped in ``torch.compile(fullgraph=True,
  mode="reduce-overhead")`` (CUDA graphs; `FastDecodeOptions` makes backend/mode injectable, e.g. for CPU
  tests). One host sync per token remains: the exit decision. The cache length is rounded up to a bucket
  (``cache_multiple``) so prompts of other lengths reuse the compiled step; another batch size, ``steps`` or
  guidance scale compiles again. On a CPU (``allow_cpu``, for tests and measurements) ``pack_weights`` runs the
  step on `PackedMotionWeights`, whose layout speeds up batch-1 GEMVs there.

Classifier-free guidance (``guidance_scale != 1``), two sources of the unconditional velocity:

- ``cfg="null"`` (default): the flow head's learned null condition. This is what training teaches: the head
  replaces a token's condition by ``null_cond`` with probability ``cond_dropout`` (MAR / MotionGPT3 pattern), while
  the LLM never sees caption dropout. It costs no extra LLM rows, only the head's batch doubles.
- ``cfg="prompt"``: the same template with an empty caption is batched as extra LLM rows (MAR / NextStep-1
  pattern: same cache, one call, the sampled latent is appended to both rows), and its projected hidden state
  is the unconditional condition. It doubles the LLM cost and its hidden states are out of the training
  distribution, so it is an option for experiments, not the default.
Both share one noise sample between the conditional and unconditional rows; the exit head reads only the
conditional rows (SLED-TTS).

Motion-to-text (`caption`) and text chat (`chat`) decode text greedily (or by sampling) with the frozen text head
over the base vocabulary and stop at eos or an end-of-turn token; a text-only chat runs entirely through the
frozen base model, so its greedy answer is the base model's.

`load_run` assembles a trained run folder (``runs/<exp>/{vae,stage1,stage2,stage3}``) and the corpus Mean/Std.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, StaticCache

from llamo.core.format import IGNORE_INDEX, MotionSpan, SequenceFormatter
from llamo.core.heads import FlowHead
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.core.mot import PackedMotionWeights
from llamo.core.vae import CausalMotionVAE, DecodeStream
from llamo.data.humanml272 import crop_to_multiple
from llamo.data.latents import load_vae
from llamo.eval.language import END_OF_TURN_TOKENS
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM, SLICES, prefix_matmul
from llamo.motion.rotation import rot6d_to_matrix
from llamo.motion.skeleton import NUM_JOINTS
from stageio import load_stage_output, load_stage_weights

__all__ = [
    "DECODE_CHOICES",
    "LLAMO_STAGES",
    "MEAN_STD_STAGES",
    "STOP_EXIT",
    "STOP_MAX_TOKENS",
    "FastDecodeOptions",
    "GeneratedMotion",
    "JointTracker",
    "LLaMoRun",
    "MotionChunk",
    "caption",
    "chat",
    "chat_prompt_ids",
    "generate_motion",
    "load_run",
    "m2t_prompt",
    "model_formatter",
    "resolve_decode",
    "stream_motion",
    "t2m_prompt_ids",
]

#: LLaMo stage folders of a run, newest first (`load_run` picks the first that exists)
LLAMO_STAGES = ("stage3", "stage2", "stage1")
#: stage folders of a run searched (in order) for the corpus ``Mean.npy``/``Std.npy`` when none is given
MEAN_STD_STAGES = ("vae", "evaluator")
#: stop reasons returned by `stream_motion`
STOP_EXIT = "exit"
STOP_MAX_TOKENS = "max_tokens"
#: placeholder caption used only to locate the assistant turn in a formatted motion-to-text sample
_DUMMY_REPLY = "a"

CFGSource = Literal["null", "prompt"]
DecodePath = Literal["eager", "fast"]
#: values of ``llamo generate --decode``: "auto" is "fast" on a CUDA device and "eager" elsewhere
DECODE_CHOICES = ("auto", "eager", "fast")


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class MotionChunk:
    """The 4 new frames of one sequence, yielded as soon as its latent was sampled (tensors on the model device)."""

    sequence: int
    """Index of the prompt this chunk belongs to."""
    index: int
    """Latent index in the sequence (0-based); the chunk holds frames ``4 * index .. 4 * index + 3``."""
    latent: Tensor
    """``(latent_dim,)`` float32 the sampled latent."""
    normalized: Tensor
    """``(4, 272)`` float32 normalised features (the VAE's output space)."""
    features: Tensor
    """``(4, 272)`` float32 de-normalised features (the corpus representation; `llamo render` reads these)."""
    joints: Tensor
    """``(4, 22, 3)`` float32 global joint positions, continuing the sequence's earlier chunks."""

    @property
    def first_frame(self) -> int:
        """Frame number of the chunk's first frame."""
        return 4 * self.index


@dataclass
class GeneratedMotion:
    """One finished text-to-motion sample (CPU tensors)."""

    prompt: str
    """The caption it was generated from."""
    latents: Tensor
    """``(N, latent_dim)`` float32 sampled latents."""
    normalized: Tensor
    """``(4N, 272)`` float32 normalised features."""
    features: Tensor
    """``(4N, 272)`` float32 de-normalised features."""
    joints: Tensor
    """``(4N, 22, 3)`` float32 joint positions."""
    stop_reason: str
    """`STOP_EXIT` (the exit head fired) or `STOP_MAX_TOKENS`."""

    @property
    def num_frames(self) -> int:
        """Number of frames (4 per latent)."""
        return int(self.features.shape[0])


# ---------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------


def model_formatter(model: LLaMo) -> SequenceFormatter:
    """The formatter training used: the model's tokenizer (``config.llm``), its chat template, [BOM]/[EOM] ids."""
    return model.sequence_formatter()


def t2m_prompt_ids(formatter: SequenceFormatter, caption: str) -> list[int]:
    """Token ids of a text-to-motion training sample for ``caption`` up to and including the assistant's [BOM].

    Cut out of a real formatted sample, so the prompt is token-identical to the training format.
    """
    ids = formatter.text_to_motion(caption, 1).input_ids.tolist()
    return ids[: ids.index(formatter.bom_id) + 1]


def m2t_prompt(formatter: SequenceFormatter, num_latents: int) -> tuple[Tensor, Tensor]:
    """``(input_ids (T,), motion_mask (T,))`` of a motion-to-text sample with ``num_latents`` motion slots, up to
    the end of the assistant's generation header (where the caption starts), cut out of a formatted sample."""
    sample = formatter.motion_to_text(MotionSpan(length=num_latents), _DUMMY_REPLY)
    # the first NTP label predicts the first token of the assistant turn; the prompt ends at its position
    first = int((sample.labels != IGNORE_INDEX).nonzero()[0, 0])
    assert sample.motion_mask[: first + 1].sum() == num_latents
    return sample.input_ids[: first + 1], sample.motion_mask[: first + 1]


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompt given: pass a caption string or a non-empty list of captions")
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty ({p!r}); describe the motion, e.g. 'a person walks forward'")
    return items


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(ids (R, L), mask (R, L) bool)`` with every row right-aligned (the last position is real in every row)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = True
    return ids.to(device), mask.to(device)


def _stop_ids(tokenizer: Any) -> set[int]:
    eos = tokenizer.eos_token_id
    stops = set(eos) if isinstance(eos, list) else ({int(eos)} if eos is not None else set())
    vocab = tokenizer.get_vocab()
    return stops | {int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab}


# ---------------------------------------------------------------------------------------------------------
# Streaming joint recovery
# ---------------------------------------------------------------------------------------------------------


class JointTracker:
    """Joint positions of streamed 272-dim chunks, equal to `recover_joints` of the concatenated features.

    `recover_joints` integrates the heading (ordered product of the per-frame heading velocities) and the root
    trajectory (velocities rotated by the previous frame's heading, summed) from frame 0. This does the same
    integration per chunk, continuing from each row's last heading ``(3, 3)`` and root ``(x, z)``, so the cost
    per chunk is constant instead of re-recovering the whole prefix.
    """

    def __init__(self, rows: int, device: torch.device | str = "cpu") -> None:
        # before frame 0 the heading is I (frame 0's velocity is used unrotated) and the root is at the origin
        self.heading = torch.eye(3, dtype=torch.float64, device=device).repeat(rows, 1, 1)  # (R, 3, 3)
        self.root = torch.zeros(rows, 2, dtype=torch.float64, device=device)  # (R, 2) world x, z

    def step(self, features: Tensor) -> Tensor:
        """De-normalised chunk ``(R, t, 272)`` -> joints ``(R, t, 22, 3)`` in the chunk's dtype."""
        if features.ndim != 3 or features.shape[0] != self.heading.shape[0] or features.shape[-1] != FEATURE_DIM:
            raise ValueError(
                f"JointTracker.step expects features (R={self.heading.shape[0]}, t, {FEATURE_DIM}), got "
                f"{tuple(features.shape)}"
            )
        x = features.to(torch.float64)
        rel = rot6d_to_matrix(x[..., SLICES["heading_velocity"]])  # (R, t, 3, 3)
        heading = prefix_matmul(rel) @ self.heading[:, None]  # (R, t, 3, 3): rel[t] @ ... @ rel[0]
        previous = torch.cat([self.heading[:, None], heading[:, :-1]], dim=1)  # heading of frame t - 1
        velocity = x[..., SLICES["root_velocity"]]  # (R, t, 2)
        step = torch.stack([velocity[..., 0], torch.zeros_like(velocity[..., 0]), velocity[..., 1]], dim=-1)
        world_step = torch.einsum("rtji,rtj->rti", previous, step)  # H^T @ step
        root = self.root[:, None] + world_step[..., [0, 2]].cumsum(dim=1)  # (R, t, 2)
        local = x[..., SLICES["local_positions"]].reshape(*x.shape[:-1], NUM_JOINTS, 3)  # (R, t, 22, 3)
        joints = torch.einsum("rtji,rtkj->rtki", heading, local)  # H^T @ p per joint
        joints = joints + torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 1]], dim=-1)[:, :, None]
        self.heading, self.root = heading[:, -1], root[:, -1]
        return joints.to(features.dtype)

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices) of the tracked streams."""
        self.heading = self.heading[rows]
        self.root = self.root[rows]


def _select_decode_rows(stream: DecodeStream, rows: Tensor) -> None:
    # every cached causal-conv buffer is (B, C, t): keeping rows keeps those streams' state
    stream.cache = {module: buffer[rows] for module, buffer in stream.cache.items()}


# ---------------------------------------------------------------------------------------------------------
# The fast decode path: static KV cache, static shapes, compiled (CUDA-graphed) step functions
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastDecodeOptions:
    """How ``stream_motion(decode="fast")`` compiles its two step functions (defaults: the CUDA setting).

    Tests and CPU experiments inject other values, e.g. ``FastDecodeOptions(backend="eager", mode=None,
    allow_cpu=True)`` proves on a CPU that both functions trace into single graphs (``fullgraph=True``) without
    paying for code generation.
    """

    compile: bool = True
    """Wrap the motion decode step and the flow-head Euler loop in `torch.compile`; False runs the same
    static-cache, static-shape functions eagerly."""
    backend: str = "inductor"
    """`torch.compile` backend (``"inductor"``; ``"eager"`` / ``"aot_eager"`` only trace, for tests)."""
    mode: str | None = "reduce-overhead"
    """`torch.compile` mode: ``"reduce-overhead"`` = inductor with CUDA graphs; None for the backend's default
    (required for backends other than inductor)."""
    fullgraph: bool = True
    """Fail on a graph break instead of silently splitting the function (a break would also end CUDA-graph
    capture)."""
    allow_cpu: bool = False
    """Allow the fast path on a non-CUDA device (tests, CPU measurements); by default asking for it there is a
    ValueError."""
    pack_weights: bool = False
    """Run the decode step on `PackedMotionWeights` (fused Q/K/V and gate/up stored ``(in, out)``, cached on the
    model): on the project's CPU in float32 a batch-1 step is ~25 % faster (MKL GEMV), in bfloat16 it is slower;
    it costs a copy of ~75 % of the motion twins. Off by default (on a GPU it is untested and the copy costs
    memory)."""
    cache_multiple: int = 64
    """The static cache length (prompt + ``max_tokens``) is rounded up to a multiple of this, so prompts of
    different lengths share one compiled decode step (its shapes depend on the rows and the cache length only).
    The extra slots are never written; causality masks them."""

    def __post_init__(self) -> None:
        if not isinstance(self.cache_multiple, int) or self.cache_multiple < 1:
            raise ValueError(
                f"FastDecodeOptions.cache_multiple must be a positive integer, got {self.cache_multiple!r}"
            )
        if self.mode is not None and self.backend != "inductor":
            # torch.compile would only warn and ignore the mode
            raise ValueError(
                f"FastDecodeOptions.mode={self.mode!r} needs backend='inductor', got backend={self.backend!r}; pass "
                "mode=None with other backends"
            )


def resolve_decode(decode: str, device: torch.device | str) -> DecodePath:
    """The decode path ``decode`` (one of `DECODE_CHOICES`) means on ``device``: "auto" -> "fast" on CUDA, else
    "eager"; "eager"/"fast" as given."""
    if decode not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {list(DECODE_CHOICES)}, got {decode!r}")
    if decode == "auto":
        return "fast" if torch.device(device).type == "cuda" else "eager"
    return decode  # type: ignore[return-value]


#: compiled wrappers, one per (function, options): a new stream reuses the compiled code instead of recompiling
_COMPILED: dict[tuple[Callable[..., Any], FastDecodeOptions], Callable[..., Any]] = {}


def _compiled(fn: Callable[..., Any], options: FastDecodeOptions) -> Callable[..., Any]:
    if not options.compile:
        return fn
    key = (fn, options)
    if key not in _COMPILED:
        kwargs: dict[str, Any] = dict(backend=options.backend, fullgraph=options.fullgraph, dynamic=False)
        if options.mode is not None:
            kwargs["mode"] = options.mode
        _COMPILED[key] = torch.compile(fn, **kwargs)
    return _COMPILED[key]


@dataclass
class _CacheSlot:
    """The static KV cache a model keeps for its fast streams (attribute ``_fast_decode_cache``)."""

    key: tuple[Any, ...]
    cache: StaticCache
    busy: bool = False


def _acquire_static_cache(model: LLaMo, rows: int, cache_len: int) -> tuple[StaticCache, _CacheSlot | None]:
    """A `StaticCache` of ``rows`` x ``cache_len`` for one fast stream, and the model's slot it was taken from.

    Streams of the same shape reuse one cache (`StaticCache.reset`), so its tensors keep their addresses: CUDA
    graphs captured with them stay valid, where a new cache per stream would make inductor re-record the graphs
    (and stop graphing a function after repeated re-records). A stream running while another holds the slot
    (interleaved generators) gets a cache of its own; the caller frees the slot (``busy = False``) when done.
    """
    param = next(model.parameters())
    key = (rows, cache_len, param.dtype, param.device)
    slot: _CacheSlot | None = getattr(model, "_fast_decode_cache", None)
    if slot is not None and slot.busy:
        return StaticCache(config=model.llm.config, max_cache_len=cache_len), None
    if slot is None or slot.key != key:
        slot = _CacheSlot(key, StaticCache(config=model.llm.config, max_cache_len=cache_len))
        model._fast_decode_cache = slot
    else:
        slot.cache.reset()
    slot.busy = True
    return slot.cache, slot


def _motion_heads(model: LLaMo, hidden: Tensor, cond_rows: int) -> tuple[Tensor, Tensor]:
    """``(exit logits (cond_rows,) float32 of the conditional rows, flow conditions (R, cond_dim) of all rows)``
    from last-layer motion hidden states ``(R, H)``."""
    return model.exit_logits(hidden[:cond_rows]).float(), model.flow_condition(hidden)


def _motion_decode_step(
    model: LLaMo,
    cache: Cache,
    latents: Tensor,
    position_ids: Tensor,
    padding_mask: Tensor,
    cond_rows: int,
    packed: PackedMotionWeights | None = None,
) -> tuple[Tensor, Tensor]:
    """One motion token per LLM row, static shapes: latents ``(R, latent_dim)`` -> adapter -> MoT motion-only
    layers (writing the static ``cache`` at its in-place position) -> motion final norm -> `_motion_heads`.

    ``position_ids (R, 1)`` are the rows' RoPE positions (left padding: rows differ), ``padding_mask (R,
    cache_len)`` marks the real keys over the whole static cache (causality hides the slots not written yet);
    ``packed``: see `FastDecodeOptions.pack_weights`.
    """
    embeds = model.adapter(latents)[:, None]  # (R, 1, H): a motion slot's embedding is adapter(z), as in `embed`
    hidden = model.mot.motion_forward(embeds, padding_mask, position_ids, cache, use_cache=True, packed=packed)
    hidden = hidden[:, -1]  # (R, H)
    return _motion_heads(model, hidden, cond_rows)


def _flow_sample(
    head: FlowHead, cond: Tensor, uncond: Tensor | None, noise: Tensor, steps: int, guidance_scale: float
) -> Tensor:
    """The flow head's Euler loop (`FlowHead.sample`) as one function of tensors (``steps`` is unrolled)."""
    return head.sample(cond, steps=steps, guidance_scale=guidance_scale, noise=noise, uncond=uncond)


# ---------------------------------------------------------------------------------------------------------
# Text-to-motion
# ---------------------------------------------------------------------------------------------------------


def _model_device(model: LLaMo) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def stream_motion(
    model: LLaMo,
    vae: CausalMotionVAE,
    prompts: str | Sequence[str],
    *,
    normalizer: Normalizer,
    formatter: SequenceFormatter | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    cfg: CFGSource = "null",
    exit_threshold: float = 0.5,
    min_tokens: int = 10,
    max_tokens: int = 75,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    temperature: float = 1.0,
    decode: DecodePath = "eager",
    fast: FastDecodeOptions | None = None,
) -> Generator[MotionChunk, None, list[str]]:
    """Stream motions for one caption or a batch of captions; yields `MotionChunk` s (see the module docstring).

    Per step the chunks of all still-running sequences are yielded in prompt order. The generator's return
    value (``StopIteration.value``) lists each sequence's stop reason (`STOP_EXIT` / `STOP_MAX_TOKENS`).

    Args:
        model, vae: a trained LLaMo and the VAE its latents come from (both in eval mode).
        prompts: caption(s); each is put into `T2M_INSTRUCTION` by the formatter.
        normalizer: the corpus Mean/Std (de-normalises the VAE output).
        formatter: the training formatter (default `model_formatter`).
        steps: Euler steps of the flow head (default: the head's ``sample_steps``).
        guidance_scale: CFG scale s in ``v_u + s (v_c - v_u)`` (default: the head's config; 1 = no guidance).
        cfg: source of the unconditional velocity, ``"null"`` (learned null condition) or ``"prompt"``
            (empty-caption prompt rows in the LLM batch).
        exit_threshold: stop when the exit probability is above it (1.0: never, only ``max_tokens``).
        min_tokens: the exit head is ignored before this many latents (0 allows an empty motion).
        max_tokens: hard cap on latents per sequence (75 = 300 frames, the training maximum).
        generator: draws the initial noise of each latent, ``(len(prompts), latent_dim)`` per step whatever
            sequences are still running, so a sequence's draws do not depend on when the others stop.
        noise: ``(max_tokens, len(prompts), latent_dim)`` explicit initial noise (replaces ``generator``).
        temperature: scale of the generated initial noise.
        decode: ``"eager"`` (DynamicCache, finished rows dropped; the reference) or ``"fast"`` (StaticCache,
            static shapes, compiled/CUDA-graphed decode step and Euler loop; CUDA unless ``fast.allow_cpu``).
            Both give the same chunks and stop reasons (latents equal up to floating-point rounding).
            `resolve_decode` turns ``"auto"`` into one of them.
        fast: compile options of the fast path (default `FastDecodeOptions()`: inductor + CUDA graphs); only
            with ``decode="fast"``. The first fast stream of a shape compiles (slow); later ones reuse it.
    """
    captions = _check_prompts(prompts)
    n = len(captions)
    head = model.flow_head
    steps = head.config.sample_steps if steps is None else steps
    scale = head.config.guidance_scale if guidance_scale is None else float(guidance_scale)
    latent_dim = model.config.latent_dim
    device = _model_device(model)
    if cfg not in ("null", "prompt"):
        raise ValueError(f"cfg must be 'null' (learned null condition) or 'prompt' (empty-caption rows), got {cfg!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not isinstance(min_tokens, int) or not 0 <= min_tokens <= max_tokens:
        raise ValueError(f"min_tokens must be an integer in [0, max_tokens={max_tokens}], got {min_tokens!r}")
    if not 0.0 <= exit_threshold <= 1.0:
        raise ValueError(f"exit_threshold must be a probability in [0, 1], got {exit_threshold!r}")
    if noise is not None and tuple(noise.shape) != (max_tokens, n, latent_dim):
        raise ValueError(
            f"noise must have shape (max_tokens, prompts, latent_dim) = {(max_tokens, n, latent_dim)}, "
            f"got {tuple(noise.shape)}"
        )
    if vae.config.latent_dim != latent_dim:
        raise ValueError(
            f"the VAE has latent_dim {vae.config.latent_dim} but the model expects {latent_dim}; load the VAE of "
            "the same run"
        )
    if decode not in ("eager", "fast"):
        raise ValueError(
            f"decode must be 'eager' or 'fast', got {decode!r} (resolve 'auto' with resolve_decode(decode, device))"
        )
    if fast is not None and decode != "fast":
        raise ValueError("fast= (FastDecodeOptions) only applies to decode='fast'; drop it or pass decode='fast'")
    static = decode == "fast"
    options = FastDecodeOptions() if fast is None else fast
    if static and device.type != "cuda" and not options.allow_cpu:
        raise ValueError(
            f"decode='fast' needs a CUDA device (static KV cache + CUDA graphs), the model is on {device}; use "
            "decode='eager' (llamo generate --decode eager/auto), or FastDecodeOptions(allow_cpu=True) to run it "
            "on this device anyway"
        )
    formatter = model_formatter(model) if formatter is None else formatter
    uncond_rows = cfg == "prompt" and scale != 1.0

    slot: _CacheSlot | None = None  # the model's reusable static cache while this stream holds it
    try:
        rows = [t2m_prompt_ids(formatter, c) for c in captions]
        if uncond_rows:
            rows += [t2m_prompt_ids(formatter, "")] * n
        lengths = [len(r) for r in rows]
        ids, mask = _left_pad(rows, formatter.pad_id, device)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # (R, L): each row counts from its first real token
        # the static cache holds the prompt and every motion token fed back (max_tokens - 1), rounded up to a bucket
        multiple = options.cache_multiple
        cache_len = -(-(ids.shape[1] + max_tokens) // multiple) * multiple
        cache: Cache
        if static:
            cache, slot = _acquire_static_cache(model, ids.shape[0], cache_len)
        else:
            cache = DynamicCache(config=model.llm.config)
        hidden = model(
            ids,
            attention_mask=mask if len(set(lengths)) > 1 else None,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).hidden_states[:, -1]  # (R, H) at [BOM]
        next_position = positions[:, -1:] + 1  # (R, 1)
        if static:
            step_fn = _compiled(_motion_decode_step, options)
            flow_fn = _compiled(_flow_sample, options)
            graphed = options.compile and options.mode == "reduce-overhead" and device.type == "cuda"
            packed = model.mot.packed_motion_weights() if options.pack_weights else None
            exit_logits, cond_all = _motion_heads(model, hidden, n)  # (n,), (R, cond_dim)
            # (R, cache_len): every key slot after the prompt is real; causality hides the ones not written yet
            padding = torch.cat([mask, mask.new_ones(mask.shape[0], cache_len - mask.shape[1])], dim=1)

        active = list(range(n))  # sequence of conditional row i (uncond row i + len(active) mirrors it)
        reasons = [""] * n
        decoder = vae.decode_stream()
        tracker = JointTracker(n, device)
        vae_dtype = next(vae.parameters()).dtype
        for k in range(max_tokens + 1):
            count = len(active)
            # batch row of each running sequence: the fast path never drops rows, the eager path packs them
            batch_rows = active if static else list(range(count))
            if k == max_tokens:
                stop = [True] * count
            elif k >= min_tokens:
                logits = exit_logits[batch_rows] if static else model.exit_logits(hidden[:count])
                p_exit = torch.sigmoid(logits.float()).tolist()
                stop = [p > exit_threshold for p in p_exit]
            else:
                stop = [False] * count
            if any(stop):
                for i in (i for i in range(count) if stop[i]):
                    reasons[active[i]] = STOP_MAX_TOKENS if k == max_tokens else STOP_EXIT
                keep = [i for i in range(count) if not stop[i]]
                if not keep:
                    return reasons
                if not static:
                    keep_rows = keep + [i + count for i in keep] if uncond_rows else keep
                    row_index = torch.tensor(keep_rows, device=device)
                    cache.batch_select_indices(row_index)
                    hidden, mask, next_position = hidden[row_index], mask[row_index], next_position[row_index]
                    lengths = [lengths[i] for i in keep_rows]
                    decoder_rows = torch.tensor(keep, device=device)
                    _select_decode_rows(decoder, decoder_rows)
                    tracker.select(decoder_rows)
                active = [active[i] for i in keep]
                count = len(active)
                batch_rows = active if static else list(range(count))

            # initial noise of the rows in the batch: every sequence's (fast) or the running ones' (eager)
            drawn = slice(None) if static else active
            if noise is not None:
                x0 = noise[k, drawn].to(device)
            else:
                gen_device = generator.device if generator is not None else device
                x0 = temperature * torch.randn(n, latent_dim, generator=generator, device=gen_device)[drawn].to(device)
            if static:
                uncond = cond_all[n:] if uncond_rows else None
                z = flow_fn(head, cond_all[:n], uncond, x0.float(), steps, scale).clone()  # (n, D)
            else:
                cond = model.flow_condition(hidden[:count])  # (A, cond_dim)
                uncond = model.flow_condition(hidden[count:]) if uncond_rows else None
                z = head.sample(cond, steps=steps, guidance_scale=scale, noise=x0.float(), uncond=uncond)  # (A, D)

            normalized = decoder.step(z.to(vae_dtype)[:, None]).float()  # (B, 4, 272)
            features = normalizer.denormalise(normalized)
            joints = tracker.step(features)  # (B, 4, 22, 3)
            latents = z.float()
            for seq, row in zip(active, batch_rows):
                yield MotionChunk(seq, k, latents[row], normalized[row], features[row], joints[row])

            if k + 1 == max_tokens:
                continue  # the cap stops every sequence next; feeding this latent back would be wasted
            feed = torch.cat([z, z]) if uncond_rows else z  # the unconditional rows continue with the same motion
            if static:
                if graphed:  # a new step of the CUDA-graph trees: the previous step's outputs may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                exit_logits, cond_all = step_fn(model, cache, feed, next_position, padding, n, packed)
                # clones: outputs of a CUDA graph live in its static memory, which the next replay overwrites
                exit_logits, cond_all = exit_logits.clone(), cond_all.clone()
                next_position = next_position + 1
                continue
            rows_now = feed.shape[0]
            mask = torch.cat([mask, mask.new_ones(rows_now, 1)], dim=1)
            hidden = model(
                torch.full((rows_now, 1), formatter.pad_id, dtype=torch.long, device=device),
                motion_mask=torch.ones(rows_now, 1, dtype=torch.bool, device=device),
                latents=feed,
                # the padding mask is needed while ANY kept row is left-padded, even when all kept rows are equally
                # long (the longer prompts that set the padded width may have finished)
                attention_mask=mask if min(lengths) < ids.shape[1] else None,
                position_ids=next_position,
                cache=cache,
                use_cache=True,
            ).hidden_states[:, -1]
            next_position = next_position + 1
        raise AssertionError("unreachable: every sequence stops at max_tokens")
    finally:
        if slot is not None:
            slot.busy = False


def generate_motion(
    model: LLaMo,
    vae: CausalMotionVAE,
    prompts: str | Sequence[str],
    **kwargs: Any,
) -> list[GeneratedMotion]:
    """Run `stream_motion` to the end and return one `GeneratedMotion` per prompt (same keyword arguments)."""
    captions = _check_prompts(prompts)
    chunks: list[list[MotionChunk]] = [[] for _ in captions]
    stream = stream_motion(model, vae, captions, **kwargs)
    while True:
        try:
            chunk = next(stream)
        except StopIteration as done:
            reasons: list[str] = done.value
            break
        chunks[chunk.sequence].append(chunk)
    latent_dim = model.config.latent_dim
    results = []
    for caption_text, parts, reason in zip(captions, chunks, reasons):

        def cat(name: str, empty: tuple[int, ...], parts: list[MotionChunk] = parts) -> Tensor:
            if not parts:
                return torch.zeros(empty)
            return torch.cat([getattr(c, name).reshape(-1, *empty[1:]) for c in parts]).cpu()

        results.append(
            GeneratedMotion(
                prompt=caption_text,
                latents=cat("latent", (0, latent_dim)),
                normalized=cat("normalized", (0, FEATURE_DIM)),
                features=cat("features", (0, FEATURE_DIM)),
                joints=cat("joints", (0, 22, 3)),
                stop_reason=reason,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------------------
# Text: captions and chat
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _decode_text(
    model: LLaMo,
    input_ids: Tensor,
    motion_mask: Tensor | None,
    latents: Tensor | None,
    stop_ids: set[int],
    max_new_tokens: int,
    greedy: bool,
    temperature: float,
    generator: torch.Generator | None,
) -> list[int]:
    """New token ids after ``input_ids (1, T)``: argmax (or a sample) over the BASE vocabulary of the frozen text
    head, one cached step per token, until a stop id (not returned) or ``max_new_tokens``."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")
    vocab = model.base_vocab_size
    cache = DynamicCache(config=model.llm.config)
    hidden = model(input_ids, motion_mask, latents, cache=cache, use_cache=True).hidden_states[:, -1]
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits = model.text_logits(hidden)[0, :vocab].float()  # [BOM]/[EOM] are never text answers
        if greedy:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        if token in stop_ids:
            break
        tokens.append(token)
        step = torch.tensor([[token]], device=input_ids.device)
        hidden = model(step, cache=cache, use_cache=True).hidden_states[:, -1]
    return tokens


def caption(
    model: LLaMo,
    vae: CausalMotionVAE | None,
    motion: Tensor | np.ndarray,
    *,
    formatter: SequenceFormatter | None = None,
    normalizer: Normalizer | None = None,
    normalized: bool = False,
    max_new_tokens: int = 48,
    greedy: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """Describe a motion in one sentence (motion-to-text with the frozen text head, the `M2T_INSTRUCTION` prompt).

    ``motion`` is either latents ``(N, latent_dim)`` or features ``(T, 272)``: un-normalised (corpus ``.npy``
    clips; ``normalizer`` required) or, with ``normalized=True``, already normalised. Features are cropped to
    their first multiple of 4 frames and encoded to the VAE means, as the training latents were. Decoding is
    greedy unless ``greedy=False`` (sampling at ``temperature`` from ``generator``) and stops at eos/end-of-turn.
    """
    formatter = model_formatter(model) if formatter is None else formatter
    latent_dim = model.config.latent_dim
    device = _model_device(model)
    x = torch.as_tensor(np.asarray(motion) if isinstance(motion, np.ndarray) else motion)
    if x.ndim != 2 or x.shape[-1] not in (latent_dim, FEATURE_DIM):
        raise ValueError(
            f"motion must be latents (N, {latent_dim}) or features (T, {FEATURE_DIM}), got shape {tuple(x.shape)}"
        )
    if not torch.is_floating_point(x) or not torch.isfinite(x).all():
        raise ValueError("motion must be finite floating-point values (no NaN/Inf)")
    if x.shape[-1] == FEATURE_DIM:
        if vae is None:
            raise ValueError("captioning motion features needs the VAE to encode them; pass vae=")
        if not normalized:
            if normalizer is None:
                raise ValueError(
                    "un-normalised features need the corpus Mean/Std: pass normalizer= (or normalized=True when the "
                    "features are already normalised)"
                )
            x = normalizer.normalise(x.double())
        x = crop_to_multiple(x.float(), vae.config.downsample)
        vae_param = next(vae.parameters())
        with torch.no_grad():
            x = vae.encode(x[None].to(vae_param.device, vae_param.dtype)).mu[0]  # (N, latent_dim)
    if x.shape[0] < 1:
        raise ValueError("motion has no latent token; give at least 4 frames or one latent")
    ids, motion_mask = m2t_prompt(formatter, int(x.shape[0]))
    dtype = next(model.parameters()).dtype
    tokens = _decode_text(
        model,
        ids[None].to(device),
        motion_mask[None].to(device),
        x.to(device, dtype),
        _stop_ids(formatter.tokenizer),
        max_new_tokens,
        greedy,
        temperature,
        generator,
    )
    return formatter.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def chat_prompt_ids(formatter: SequenceFormatter, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a text-only chat rendered with the chat template and the assistant's generation prompt."""
    if not messages:
        raise ValueError("chat needs at least one message, e.g. [{'role': 'user', 'content': 'Hello'}]")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': str, 'content': str}} (text only), got {m!r}")
    text = formatter.tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, chat_template=formatter.chat_template
    )
    # the rendered template already holds its special tokens (BOS, role markers)
    return list(formatter.tokenizer(text, add_special_tokens=False)["input_ids"])


def chat(
    model: LLaMo,
    messages: Sequence[Mapping[str, str]],
    *,
    formatter: SequenceFormatter | None = None,
    max_new_tokens: int = 256,
    greedy: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """The assistant's reply to a text-only chat ``[{"role": ..., "content": ...}, ...]``.

    Only text tokens are involved, so every step runs the frozen base model (MoT's text fast path): the greedy
    reply is token-identical to the base model's greedy reply.
    """
    formatter = model_formatter(model) if formatter is None else formatter
    ids = torch.tensor([chat_prompt_ids(formatter, messages)], device=_model_device(model))
    tokens = _decode_text(
        model, ids, None, None, _stop_ids(formatter.tokenizer), max_new_tokens, greedy, temperature, generator
    )
    return formatter.tokenizer.decode(tokens, skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------------------
# Loading a run
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LLaMoRun:
    """A trained run ready for inference; the methods forward to the module-level functions."""

    model: LLaMo
    """The LLaMo of the loaded stage (eval mode)."""
    vae: CausalMotionVAE | None
    """The run's VAE (None when loaded with ``motion=False``)."""
    normalizer: Normalizer | None
    """The corpus Mean/Std (None when loaded with ``motion=False``)."""
    formatter: SequenceFormatter
    """Tokenizer + chat template + [BOM]/[EOM] ids of the model."""
    stage_dir: Path
    """The stage folder the LLaMo weights came from."""
    mean_std_dir: Path | None
    """The folder Mean.npy/Std.npy were read from."""

    def _motion_parts(self) -> tuple[CausalMotionVAE, Normalizer]:
        if self.vae is None or self.normalizer is None:
            raise ValueError("this run was loaded with motion=False (no VAE, no Mean/Std); load_run(..., motion=True)")
        return self.vae, self.normalizer

    def stream(self, prompts: str | Sequence[str], **kwargs: Any) -> Generator[MotionChunk, None, list[str]]:
        """`stream_motion` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return stream_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def generate(self, prompts: str | Sequence[str], **kwargs: Any) -> list[GeneratedMotion]:
        """`generate_motion` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return generate_motion(self.model, vae, prompts, normalizer=normalizer, formatter=self.formatter, **kwargs)

    def caption(self, motion: Tensor | np.ndarray, **kwargs: Any) -> str:
        """`caption` with this run's parts."""
        vae, normalizer = self._motion_parts()
        return caption(self.model, vae, motion, formatter=self.formatter, normalizer=normalizer, **kwargs)

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> str:
        """`chat` with this run's model."""
        return chat(self.model, messages, formatter=self.formatter, **kwargs)


def _resolve_stage(run: Path, stage: str | None) -> Path:
    if stage is None:
        for name in LLAMO_STAGES:
            if (run / name / "handoff.safetensors").is_file():
                return run / name
        raise FileNotFoundError(
            f"run {run} has no finished LLaMo stage ({', '.join(f'{s}/handoff.safetensors' for s in LLAMO_STAGES)}); "
            "train one (`make stage-1 EXP=...`) or pass the run folder that holds it"
        )
    name = f"stage{stage}" if str(stage).isdigit() else str(stage)
    if name not in LLAMO_STAGES:
        raise ValueError(f"stage must be one of {list(LLAMO_STAGES)} (or 1/2/3), got {stage!r}")
    if not (run / name).is_dir():
        raise FileNotFoundError(f"run {run} has no {name}/ folder; available: {sorted(p.name for p in run.iterdir())}")
    return run / name


def _resolve_mean_std(run: Path, mean_std: str | Path | None) -> Path:
    if mean_std is not None:
        return Path(mean_std)
    tried = [run / name for name in MEAN_STD_STAGES]
    for folder in tried:
        if (folder / "Mean.npy").is_file() and (folder / "Std.npy").is_file():
            return folder
    raise FileNotFoundError(
        "no corpus Mean.npy/Std.npy found in " + ", ".join(str(t) for t in tried) + "; pass the corpus statistics "
        "folder explicitly (mean_std= / --mean-std DATA/mean_std, the folder the VAE was trained with)"
    )


def load_run(
    run_dir: str | Path,
    stage: str | None = None,
    *,
    mean_std: str | Path | None = None,
    device: str | torch.device | None = None,
    motion: bool = True,
    formatter: SequenceFormatter | None = None,
) -> LLaMoRun:
    """Load a trained run folder ``runs/<exp>/`` for inference.

    - LLaMo: ``stage`` (``stage1|stage2|stage3`` or ``1|2|3``), default the newest of stage3, stage2, stage1 that
      holds a ``handoff.safetensors``. The frozen base LLM (left out of the handoff) is rebuilt from the saved
      config's ``llm`` entry (its ``path``, or the seeded random ``config``), then the handoff is loaded strictly.
    - VAE: ``<run>/vae``.
    - Mean/Std (the corpus statistics that normalised the VAE's training data): ``mean_std`` when given (a folder
      with ``Mean.npy``/``Std.npy``, e.g. ``data/synth/mean_std``), else the first of ``<run>/vae`` and
      ``<run>/evaluator`` (the evaluator stage writes them there) that has both files; FileNotFoundError otherwise.
      The folder used is recorded in ``LLaMoRun.mean_std_dir``.
    - ``motion=False`` skips the VAE and Mean/Std (text chat only). ``formatter`` overrides `model_formatter`.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass runs/<exp> written by the training pipeline")
    stage_dir = _resolve_stage(run, stage)
    out = load_stage_output(stage_dir)
    if out.kind != LLaMo.__name__:
        raise ValueError(f"{stage_dir} holds a {out.kind!r} stage output, not a LLaMo; pass a LLaMo stage folder")
    model = LLaMo(LLaMoConfig.from_dict(out.config), device=device)
    load_stage_weights(model, out, expected_kind=LLaMo.__name__)
    model.eval().requires_grad_(False)
    vae = normalizer = mean_std_dir = None
    if motion:
        if not (run / "vae").is_dir():
            raise FileNotFoundError(
                f"run {run} has no vae/ folder (the VAE stage output); train it with `make stage-vae`"
            )
        vae = load_vae(run / "vae").to(device or "cpu")
        mean_std_dir = _resolve_mean_std(run, mean_std)
        normalizer = Normalizer.load(mean_std_dir)
    return LLaMoRun(
        model=model,
        vae=vae,
        normalizer=normalizer,
        formatter=model_formatter(model) if formatter is None else formatter,
        stage_dir=stage_dir,
        mean_std_dir=mean_std_dir,
    )
