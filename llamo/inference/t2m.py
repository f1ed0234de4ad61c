"""Streaming text-to-motion with a trained LLaMo (paper §3.3, Fig. 5).

`stream_motion` is a Python generator. The prompt is the training format up to and including the assistant's
``[BOM]`` (`llamo.inference.prompts.t2m_prompt_ids`). After one prefill, every step

1. reads the exit head on the last hidden state (``[BOM]`` first, then the last motion token) of the
   conditional rows and stops a sequence when ``sigmoid(logit) > exit_threshold`` once it has at least
   ``min_tokens`` latents, or unconditionally at ``max_tokens``;
2. samples the next latent with the flow head (Euler from t = 0 to 1, `FlowHead.sample`);
3. decodes its 4 frames with the streaming (causal) VAE decoder and yields them at once, normalised,
   de-normalised and as joint positions (`llamo.motion.representation.JointTracker`);
4. feeds the latent back through the motion adapter, one motion token per row, with the KV cache.

A batch of prompts is left-padded (padding masked, positions counted per row) and streams together. The model
state lives in a decode path with one interface (``exit_logits``, ``keep``, ``sample``, ``feed``, ``close``):

- `EagerDecodePath` (``decode="eager"``, the reference): a `DynamicCache`; a finished sequence's rows are removed
  from the KV cache, the VAE stream and the joint tracker, so it stops yielding and costs nothing afterwards.
- `llamo.inference.fast.StaticDecodePath` (``decode="fast"``, CUDA): static KV cache, static shapes, compiled
  (CUDA-graphed) step functions; finished sequences keep their rows. Same chunks and stop reasons.

Classifier-free guidance (``guidance_scale != 1``), two sources of the unconditional velocity:

- ``cfg="null"`` (default): the flow head's learned null condition. This is what the paper's recipe teaches: the
  head replaces a token's condition by ``null_cond`` with probability ``cond_dropout`` (MAR / MotionGPT3 pattern).
  It costs no extra LLM rows, only the head's batch doubles.
- ``cfg="prompt"``: the same template with an empty caption is batched as extra LLM rows (MAR / NextStep-1
  pattern: same cache, one call, the sampled latent is appended to both rows), and its projected hidden state
  is the unconditional condition. It doubles the LLM cost. Its hidden states are in the training distribution
  only when the stages trained with caption dropout (``data.init_args.caption_dropout`` > 0, which empties the
  caption of that share of text-to-motion samples); the paper's recipe and the demo's never empty a caption, yet
  this source is the one the demo's validation sweep picks (README "The generation setting").
Both share one noise sample between the conditional and unconditional rows; the exit head reads only the
conditional rows (SLED-TTS).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from llamo.core.format import SequenceFormatter
from llamo.core.heads import FlowHead
from llamo.core.model import LLaMo
from llamo.core.vae import CausalMotionVAE
from llamo.inference.fast import DecodePath, FastDecodeOptions, StaticDecodePath, acquire_static_cache
from llamo.inference.guidance import check_temperature
from llamo.inference.prompts import check_prompts, left_pad, model_formatter, t2m_prompt_ids
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM, JointTracker

__all__ = [
    "STOP_EXIT",
    "STOP_MAX_TOKENS",
    "EagerDecodePath",
    "GeneratedMotion",
    "MotionChunk",
    "generate_motion",
    "stream_motion",
]

#: stop reasons returned by `stream_motion`
STOP_EXIT = "exit"
STOP_MAX_TOKENS = "max_tokens"

CFGSource = Literal["null", "prompt"]


@dataclass
class MotionChunk:
    """The 4 new frames of one sequence, yielded as soon as its latent was sampled (tensors on the model device)."""

    sequence: int
    """Index of the prompt this chunk belongs to."""
    index: int
    """Latent index in the sequence (0-based); the chunk holds frames ``4 * index .. 4 * index + 3``."""
    latent: Tensor
    """``(latent_dim,)`` float32 the sampled latent, in the VAE's space (what the VAE decoded)."""
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
    """``(N, latent_dim)`` float32 sampled latents, in the VAE's space."""
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


class EagerDecodePath:
    """The eager path's model state of one stream (`DynamicCache`); finished sequences leave the batch.

    Built after the prefill (``hidden (R, H)`` at ``[BOM]``): ``count`` conditional rows first, then, with prompt
    CFG, as many unconditional rows mirroring them.
    """

    drops_rows = True

    def __init__(
        self,
        model: LLaMo,
        cache: DynamicCache,
        hidden: Tensor,
        mask: Tensor,
        next_position: Tensor,
        lengths: list[int],
        uncond_rows: bool,
        pad_id: int,
    ) -> None:
        self.model, self.cache, self.hidden, self.mask = model, cache, hidden, mask
        self.next_position, self.lengths, self.uncond_rows, self.pad_id = next_position, lengths, uncond_rows, pad_id
        self.width = mask.shape[1]  # the padded prompt length

    def exit_logits(self, active: list[int]) -> Tensor:
        """Exit logits ``(A,)`` of the running sequences (the first ``len(active)`` rows)."""
        return self.model.exit_logits(self.hidden[: len(active)])

    def keep(self, keep: list[int], count: int) -> None:
        """Keep only the rows ``keep`` (of ``count`` running sequences) and their unconditional mirrors."""
        keep_rows = keep + [i + count for i in keep] if self.uncond_rows else keep
        row_index = torch.tensor(keep_rows, device=self.hidden.device)
        self.cache.batch_select_indices(row_index)
        self.hidden, self.mask = self.hidden[row_index], self.mask[row_index]
        self.next_position = self.next_position[row_index]
        self.lengths = [self.lengths[i] for i in keep_rows]

    def sample(self, head: FlowHead, noise: Tensor, steps: int, scale: float, count: int) -> Tensor:
        """Latents ``(count, D)`` of the running sequences from ``noise (count, D)``."""
        cond = self.model.flow_condition(self.hidden[:count])  # (A, cond_dim)
        uncond = self.model.flow_condition(self.hidden[count:]) if self.uncond_rows else None
        return head.sample(cond, steps=steps, guidance_scale=scale, noise=noise, uncond=uncond)  # (A, D)

    def feed(self, z: Tensor) -> None:
        """Feed the sampled latents (every LLM row) back as the next motion token."""
        rows = z.shape[0]
        device = z.device
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, 1)], dim=1)
        self.hidden = self.model(
            torch.full((rows, 1), self.pad_id, dtype=torch.long, device=device),
            motion_mask=torch.ones(rows, 1, dtype=torch.bool, device=device),
            latents=z,
            # the padding mask is needed while ANY kept row is left-padded, even when all kept rows are equally
            # long (the longer prompts that set the padded width may have finished)
            attention_mask=self.mask if min(self.lengths) < self.width else None,
            position_ids=self.next_position,
            cache=self.cache,
            use_cache=True,
        ).hidden_states[:, -1]
        self.next_position = self.next_position + 1

    def close(self) -> None:
        """Nothing to release."""


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
        temperature: scale of the generated initial noise, ``x_0 ~ N(0, temperature^2 I)`` (finite, > 0; not
            applied to an explicit ``noise``).
        decode: ``"eager"`` (DynamicCache, finished rows dropped; the reference) or ``"fast"`` (StaticCache,
            static shapes, compiled/CUDA-graphed decode step and Euler loop; CUDA unless ``fast.allow_cpu``).
            Both give the same chunks and stop reasons (latents equal up to floating-point rounding).
            `resolve_decode` turns ``"auto"`` into one of them.
        fast: compile options of the fast path (default `FastDecodeOptions()`: inductor + CUDA graphs); only
            with ``decode="fast"``. The first fast stream of a shape compiles (slow); later ones reuse it.
    """
    captions = check_prompts(prompts)
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
    check_temperature(temperature, "stream_motion")
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

    rows = [t2m_prompt_ids(formatter, c) for c in captions]
    if uncond_rows:
        rows += [t2m_prompt_ids(formatter, "")] * n
    lengths = [len(r) for r in rows]
    ids, mask = left_pad(rows, formatter.pad_id)
    ids, mask = ids.to(device), mask.to(device).bool()
    positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # (R, L): each row counts from its first real token
    # the static cache holds the prompt and every motion token fed back (max_tokens - 1), rounded up to a bucket
    multiple = options.cache_multiple
    cache_len = -(-(ids.shape[1] + max_tokens) // multiple) * multiple
    if static:
        cache, slot = acquire_static_cache(model, ids.shape[0], cache_len)
    else:
        cache, slot = DynamicCache(config=model.llm.config), None
    path: EagerDecodePath | StaticDecodePath | None = None
    try:
        hidden = model(
            ids,
            attention_mask=mask if len(set(lengths)) > 1 else None,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).hidden_states[:, -1]  # (R, H) at [BOM]
        next_position = positions[:, -1:] + 1  # (R, 1)
        if static:
            path = StaticDecodePath(model, cache, slot, hidden, mask, next_position, cache_len, n, options)
        else:
            path = EagerDecodePath(model, cache, hidden, mask, next_position, lengths, uncond_rows, formatter.pad_id)
        return (
            yield from _decode_loop(
                path,
                head,
                model.to_vae_latents,
                vae,
                normalizer,
                n,
                steps,
                scale,
                uncond_rows,
                exit_threshold,
                min_tokens,
                max_tokens,
                generator,
                noise,
                temperature,
                latent_dim,
                device,
            )
        )
    finally:
        if path is not None:
            path.close()
        elif slot is not None:
            slot.busy = False


def _decode_loop(
    path: EagerDecodePath | StaticDecodePath,
    head: FlowHead,
    to_vae_latents: Callable[[Tensor], Tensor],
    vae: CausalMotionVAE,
    normalizer: Normalizer,
    n: int,
    steps: int,
    scale: float,
    uncond_rows: bool,
    exit_threshold: float,
    min_tokens: int,
    max_tokens: int,
    generator: torch.Generator | None,
    noise: Tensor | None,
    temperature: float,
    latent_dim: int,
    device: torch.device,
) -> Generator[MotionChunk, None, list[str]]:
    """The per-token loop of `stream_motion` over one decode path (exit decision, sample, decode, yield, feed)."""
    active = list(range(n))  # sequence of conditional row i (uncond row i + len(active) mirrors it)
    reasons = [""] * n
    decoder = vae.decode_stream()
    tracker = JointTracker(n, device)
    vae_dtype = next(vae.parameters()).dtype
    for k in range(max_tokens + 1):
        count = len(active)
        if k == max_tokens:
            stop = [True] * count
        elif k >= min_tokens:
            p_exit = torch.sigmoid(path.exit_logits(active).float()).tolist()
            stop = [p > exit_threshold for p in p_exit]
        else:
            stop = [False] * count
        if any(stop):
            for i in (i for i in range(count) if stop[i]):
                reasons[active[i]] = STOP_MAX_TOKENS if k == max_tokens else STOP_EXIT
            keep = [i for i in range(count) if not stop[i]]
            if not keep:
                return reasons
            if path.drops_rows:
                path.keep(keep, count)
                decoder_rows = torch.tensor(keep, device=device)
                decoder.select(decoder_rows)
                tracker.select(decoder_rows)
            active = [active[i] for i in keep]
            count = len(active)
        # batch row of each running sequence: the static path never drops rows, the eager path packs them
        batch_rows = list(range(count)) if path.drops_rows else active
        # initial noise of the rows in the batch: the running ones' (eager) or every sequence's (static)
        drawn = active if path.drops_rows else slice(None)
        if noise is not None:
            x0 = noise[k, drawn].to(device)
        else:
            gen_device = generator.device if generator is not None else device
            x0 = temperature * torch.randn(n, latent_dim, generator=generator, device=gen_device)[drawn].to(device)
        z = path.sample(head, x0.float(), steps, scale, count)  # the model's latent space (fed back below)
        latents = to_vae_latents(z.float())  # (B, D) what the VAE decodes

        normalized = decoder.step(latents.to(vae_dtype)[:, None]).float()  # (B, 4, 272)
        features = normalizer.denormalise(normalized)
        joints = tracker.step(features)  # (B, 4, 22, 3)
        for seq, row in zip(active, batch_rows):
            yield MotionChunk(seq, k, latents[row], normalized[row], features[row], joints[row])

        if k + 1 == max_tokens:
            continue  # the cap stops every sequence next; feeding this latent back would be wasted
        path.feed(torch.cat([z, z]) if uncond_rows else z)  # the unconditional rows continue with the same motion
    raise AssertionError("unreachable: every sequence stops at max_tokens")


def generate_motion(
    model: LLaMo,
    vae: CausalMotionVAE,
    prompts: str | Sequence[str],
    **kwargs: Any,
) -> list[GeneratedMotion]:
    """Run `stream_motion` to the end and return one `GeneratedMotion` per prompt (same keyword arguments)."""
    captions = check_prompts(prompts)
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
