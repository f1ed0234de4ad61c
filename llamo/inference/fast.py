"""The fast decode path of `llamo.inference.t2m.stream_motion`: static KV cache, static shapes, compiled steps.

``decode="fast"`` (CUDA) keeps a `StaticCache` sized prompt + ``max_tokens`` for every LLM row (CFG rows
included), written at the cache's in-place position counter, and static shapes for the whole stream: finished
sequences keep their rows (they run on, their outputs are not yielded), so every step has the same shapes. The
motion decode step (adapter -> MoT motion-only layers with the static cache -> motion final norm -> exit head +
flow condition) and the flow head's Euler loop are two functions, each wrapped in ``torch.compile(fullgraph=True,
mode="reduce-overhead")`` (CUDA graphs; `FastDecodeOptions` makes backend/mode injectable, e.g. for CPU tests). One
host sync per token remains: the exit decision. The cache length is rounded up to a bucket (``cache_multiple``) so
prompts of other lengths reuse the compiled step; another batch size, ``steps`` or guidance scale compiles again.
On a CPU (``allow_cpu``, for tests and measurements) ``pack_weights`` runs the step on `PackedMotionWeights`, whose
layout speeds up batch-1 GEMVs there.

`StaticDecodePath` is the fast counterpart of `llamo.inference.t2m.EagerDecodePath`: the same methods, called by
the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from transformers.cache_utils import Cache, StaticCache

from llamo.core.heads import FlowHead
from llamo.core.model import LLaMo
from llamo.core.mot import PackedMotionWeights

__all__ = [
    "DECODE_CHOICES",
    "DecodePath",
    "FastDecodeOptions",
    "StaticDecodePath",
    "acquire_static_cache",
    "resolve_decode",
]

DecodePath = Literal["eager", "fast"]
#: values of ``llamo generate --decode``: "auto" is "fast" on a CUDA device and "eager" elsewhere
DECODE_CHOICES = ("auto", "eager", "fast")


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


def compiled(fn: Callable[..., Any], options: FastDecodeOptions) -> Callable[..., Any]:
    """``fn`` wrapped in `torch.compile` as ``options`` say (``fn`` itself when they do not compile), cached per
    (function, options) so later streams reuse the compiled code."""
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


def acquire_static_cache(model: LLaMo, rows: int, cache_len: int) -> tuple[StaticCache, _CacheSlot | None]:
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


class StaticDecodePath:
    """The fast path's model state of one stream: every row stays in the batch, the step functions are compiled.

    Built after the prefill (``hidden (R, H)`` at ``[BOM]``); ``n`` conditional rows, then the unconditional rows
    of prompt CFG when there are any.
    """

    drops_rows = False

    def __init__(
        self,
        model: LLaMo,
        cache: StaticCache,
        slot: _CacheSlot | None,
        hidden: Tensor,
        mask: Tensor,
        next_position: Tensor,
        cache_len: int,
        n: int,
        options: FastDecodeOptions,
    ) -> None:
        self.model, self.cache, self.slot, self.n = model, cache, slot, n
        self.next_position = next_position
        self.step_fn = compiled(_motion_decode_step, options)
        self.flow_fn = compiled(_flow_sample, options)
        device = hidden.device
        self.graphed = options.compile and options.mode == "reduce-overhead" and device.type == "cuda"
        self.packed = model.mot.packed_motion_weights() if options.pack_weights else None
        self.exit, self.cond = _motion_heads(model, hidden, n)  # (n,), (R, cond_dim)
        # (R, cache_len): every key slot after the prompt is real; causality hides the ones not written yet
        self.padding = torch.cat([mask, mask.new_ones(mask.shape[0], cache_len - mask.shape[1])], dim=1)

    def exit_logits(self, active: list[int]) -> Tensor:
        """Exit logits ``(A,)`` of the running sequences ``active``."""
        return self.exit[active]

    def keep(self, keep: list[int], count: int) -> None:
        """Finished sequences keep their rows (static shapes): nothing to do."""

    def sample(self, head: FlowHead, noise: Tensor, steps: int, scale: float, count: int) -> Tensor:
        """Latents ``(n, D)`` of every sequence (finished ones included) from ``noise (n, D)``."""
        n = self.n
        uncond = self.cond[n:] if self.cond.shape[0] > n else None
        return self.flow_fn(head, self.cond[:n], uncond, noise, steps, scale).clone()

    def feed(self, z: Tensor) -> None:
        """Feed the sampled latents (every LLM row) back as the next motion token."""
        if self.graphed:  # a new step of the CUDA-graph trees: the previous step's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        exit_logits, cond = self.step_fn(
            self.model, self.cache, z, self.next_position, self.padding, self.n, self.packed
        )
        # clones: outputs of a CUDA graph live in its static memory, which the next replay overwrites
        self.exit, self.cond = exit_logits.clone(), cond.clone()
        self.next_position = self.next_position + 1

    def close(self) -> None:
        """Free the model's reusable static cache for the next stream."""
        if self.slot is not None:
            self.slot.busy = False
