"""Text decoding: one batched decoder for captions, chat and the language probe.

Every text answer of the suite comes from `decode_tokens`: greedy (argmax, the default) or sampled next tokens
over a text vocabulary, one KV-cached step per token, rows leaving the batch as they finish. Sampling is at a
temperature, optionally restricted to the top-p nucleus, and draws from explicit CPU `torch.Generator` objects:
one per row makes every row's text a function of its own prompt and seed, whatever else shares the batch.

`decode_tokens` reads logits through a `LogitsFn`, ``(input_ids (B, L), attention_mask (B, L) | None) -> logits
(B, L, V')``, so the base Hugging Face model (`HFLogitsFn`) and LLaMo (`LLaMoTextLogitsFn`, optionally with motion
in the prompt) are decoded by the same code. Contract of a `LogitsFn`:

- rows are LEFT-padded (``attention_mask`` 1 = real token, 0 = padding); a token's position is the number of real
  tokens before it (`positions_from_mask`), so a padded row gives the logits of the same row unpadded.
  ``attention_mask=None`` means no padding at all: the model's own default positions and unmasked causal
  attention are used (single prompts: `caption`, `chat`);
- only the first ``vocab_size`` logit columns are read. Extra rows such as LLaMo's ``[BOM]``/``[EOM]`` (appended
  after the base vocabulary) therefore never become text.

A `LogitsFn` that also implements `IncrementalLogitsFn` (``start`` / ``step`` / ``select`` with a KV cache, as
`HFLogitsFn` does) is decoded one token per step; otherwise every step re-runs the whole sequence (same tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from llamo.core.format import SequenceFormatter
from llamo.core.model import LLaMo
from llamo.core.vae import CausalMotionVAE
from llamo.data.humanml272 import crop_to_multiple
from llamo.inference.prompts import chat_prompt_ids, m2t_prompt, model_formatter, stop_token_ids
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import FEATURE_DIM

__all__ = [
    "HFLogitsFn",
    "IncrementalLogitsFn",
    "LLaMoTextLogitsFn",
    "LogitsFn",
    "WindowCaption",
    "caption",
    "caption_windows",
    "chat",
    "decode_tokens",
    "hf_logits_fn",
    "plan_windows",
    "positions_from_mask",
    "sample_next_tokens",
]

#: ``(input_ids (B, L) long, attention_mask (B, L) | None) -> logits (B, L, V')`` (see the module docstring)
LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


@runtime_checkable
class IncrementalLogitsFn(Protocol):
    """A `LogitsFn` that can also decode incrementally with a cache (used by `decode_tokens` when present)."""

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Logits ``(B, L, V')`` of every position of a left-padded batch."""
        ...

    def start(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Any]:
        """Run the left-padded prompts; return the LAST position's logits ``(B, V')`` and an opaque state."""
        ...

    def step(self, input_ids: Tensor, attention_mask: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        """Feed ``input_ids (B, 1)``; ``attention_mask (B, L + 1)`` covers everything so far. Same returns."""
        ...

    def select(self, state: Any, rows: Tensor) -> Any:
        """Keep only batch ``rows`` (1-D long, ascending) of the state: finished replies leave the batch."""
        ...


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids ``(B, L)`` of a left-padded batch: real tokens count 0, 1, ... (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class HFLogitsFn:
    """`LogitsFn` and `IncrementalLogitsFn` of a plain Hugging Face causal LM (e.g. `LlamaForCausalLM`).

    Passes explicit position ids from the padding mask (HF's default positions would count the left padding) and
    moves inputs to the model's device. The model is used as it is: put it in eval mode first.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def _logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        positions: Tensor | None,
        cache: Any = None,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[Tensor, Any]:
        """The one model call behind every method: logits ``(B, L or 1, V)`` (``last_only``: the last position only)
        and the cache. Subclasses for other models override this alone."""
        device = self.device
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            position_ids=None if positions is None else positions.to(device),
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=1 if last_only else 0,
        )
        return out.logits, out.cache

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Logits ``(B, L, V)`` of every position, no cache."""
        return self._logits(input_ids, attention_mask, _positions(attention_mask))[0]

    def start(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Any]:
        """Prefill: last-position logits ``(B, V)`` (only that row goes through the LM head) and the KV cache."""
        logits, cache = self._logits(
            input_ids, attention_mask, _positions(attention_mask), use_cache=True, last_only=True
        )
        return logits[:, -1], cache

    def step(self, input_ids: Tensor, attention_mask: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        """One cached decode step for ``input_ids (B, 1)``."""
        positions = _positions(attention_mask)
        positions = None if positions is None else positions[:, -input_ids.shape[1] :]  # (B, 1)
        logits, cache = self._logits(input_ids, attention_mask, positions, cache=state, use_cache=True, last_only=True)
        return logits[:, -1], cache

    def select(self, state: Any, rows: Tensor) -> Any:
        """Keep batch ``rows`` of the KV cache (in place)."""
        state.batch_select_indices(rows.to(self.device))
        return state


def _positions(attention_mask: Tensor | None) -> Tensor | None:
    return None if attention_mask is None else positions_from_mask(attention_mask)


def hf_logits_fn(model: nn.Module) -> HFLogitsFn:
    """The `LogitsFn` (with KV-cached decoding) of a plain Hugging Face causal LM."""
    return HFLogitsFn(model)


class LLaMoTextLogitsFn(HFLogitsFn):
    """`LogitsFn` (with KV-cached decoding) of LLaMo's text head, optionally with motion in the prompt.

    Text-only input goes through `LLaMo.forward` without a motion mask (under MoT: the frozen base model's own
    layers) and `LLaMo.text_logits` (the base LM head, then the [BOM]/[EOM] columns). ``motion_mask (B, L)`` and
    ``latents (M, latent_dim)`` describe motion slots of the PROMPT (motion-to-text): they enter every call that
    starts from the beginning (``__call__``, ``start``), never a cached ``step``. Everything but the model call is
    `HFLogitsFn`'s, so that a frozen text branch reproduces the base model's numbers exactly.
    """

    def __init__(self, model: LLaMo, motion_mask: Tensor | None = None, latents: Tensor | None = None) -> None:
        super().__init__(model)
        if (motion_mask is None) != (latents is None):
            raise ValueError("pass motion_mask and latents together (motion in the prompt) or neither (text only)")
        self.motion_mask, self.latents = motion_mask, latents

    def _logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        positions: Tensor | None,
        cache: Any = None,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[Tensor, Any]:
        """Logits ``(B, L or 1, V + 2)`` of LLaMo's text head and the cache."""
        d = self.device
        motion = cache is None and self.motion_mask is not None  # only a call from the start sees the prompt
        out = self.model(
            input_ids.to(d),
            self.motion_mask.to(d) if motion else None,
            self.latents.to(d) if motion else None,
            attention_mask=None if attention_mask is None else attention_mask.to(d),
            position_ids=None if positions is None else positions.to(d),
            cache=cache,
            use_cache=use_cache,
        )
        if last_only:  # (B, H) rows through the head, as the base model's own last-row path computes them
            return self.model.text_logits(out.hidden_states[:, -1])[:, None], out.cache
        return self.model.text_logits(out.hidden_states), out.cache


@torch.inference_mode()
def decode_tokens(
    logits_fn: LogitsFn,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    vocab_size: int,
    stop_ids: set[int],
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    use_cache: bool = True,
    finished: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """New token ids per row of ``input_ids (B, L)`` (left-padded by ``attention_mask``, None: no padding).

    Each step reads the last position's logits over the first ``vocab_size`` columns and takes the argmax. With
    ``greedy=False`` it samples instead (`sample_next_tokens`): softmax of the logits / ``temperature``, cut to
    the smallest set of most likely tokens whose probability reaches ``top_p`` (1: no cut), one draw per row on
    the CPU. ``generator`` is one CPU `torch.Generator` per row of ``input_ids`` (row i draws only from
    ``generator[i]``, so the same prompt and seed give the same text in any batch), or one generator that the
    rows share, drawing in row order (then a row's text depends on the rows before it), or None (the global
    generator). A row ends at a token of ``stop_ids`` (not returned), when ``finished(tokens)`` says so (the
    token that made it true is kept), or after ``max_new_tokens``; finished rows leave the batch (and the KV
    cache). ``use_cache`` uses the `IncrementalLogitsFn` methods when ``logits_fn`` has them.

    Per-row generators make the draws independent of the batch; the logits they draw from are those of the
    `LogitsFn` contract (a padded row gives its unpadded logits), up to float rounding that other batch shapes
    can change in the last bits, which can move a draw that lies within that rounding of a token boundary.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not greedy:
        _check_sampling(temperature, top_p)
    if attention_mask is None and input_ids.shape[0] > 1:
        raise ValueError("several prompts need an attention_mask (left padding); pass one from left_pad")
    if isinstance(generator, torch.Generator) or generator is None:
        generators = [generator] * input_ids.shape[0]  # shared: rows draw from it one after another
    else:
        generators = list(generator)
        if len(generators) != input_ids.shape[0]:
            raise ValueError(
                f"generator must be one torch.Generator per prompt ({input_ids.shape[0]}), got {len(generators)}; "
                "or pass a single generator for all rows"
            )
    incremental = use_cache and isinstance(logits_fn, IncrementalLogitsFn)
    ids, mask = input_ids, attention_mask
    generated: list[list[int]] = [[] for _ in range(ids.shape[0])]
    alive = list(range(ids.shape[0]))  # batch row -> index into `generated`
    state: Any = None
    for step in range(max_new_tokens):
        if incremental:
            call = logits_fn.start(ids, mask) if step == 0 else logits_fn.step(ids[:, -1:], mask, state)
            logits, state = call  # (B, V')
        else:
            logits = logits_fn(ids, mask)
            if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
                raise ValueError(
                    f"logits_fn must return logits (B, L, V) = ({ids.shape[0]}, {ids.shape[1]}, V), "
                    f"got {tuple(logits.shape)}"
                )
            logits = logits[:, -1]
        if logits.shape[-1] < vocab_size:
            raise ValueError(
                f"logits_fn returned {logits.shape[-1]} logit columns but the tokenizer has {vocab_size} tokens; "
                "the logits_fn and tokenizer belong to different models"
            )
        logits = logits[:, :vocab_size]
        if not torch.isfinite(logits).all():
            raise ValueError(f"logits_fn returned non-finite logits at generation step {step}")
        if greedy:
            next_ids = logits.argmax(-1).cpu()  # (B,)
        else:
            next_ids = sample_next_tokens(logits, [generators[i] for i in alive], temperature=temperature, top_p=top_p)
        keep: list[int] = []
        for row, index in enumerate(alive):
            token = int(next_ids[row])
            if token in stop_ids:
                continue
            generated[index].append(token)
            if finished is not None and finished(generated[index]):
                continue
            keep.append(row)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            rows = torch.tensor(keep, dtype=torch.long)
            ids, next_ids = ids[rows], next_ids[rows]
            mask = None if mask is None else mask[rows]
            alive = [alive[row] for row in keep]
            if incremental:
                state = logits_fn.select(state, rows)
        ids = torch.cat([ids, next_ids[:, None].to(ids.device)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return generated


def _check_sampling(temperature: float, top_p: float) -> None:
    """Sampling needs a finite temperature > 0 (greedy decoding is ``greedy=True``, not temperature 0) and
    0 < top_p <= 1."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite number > 0 for sampling, got {temperature!r}; for greedy decoding pass "
            "greedy=True"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: no nucleus cut), got {top_p!r}")


def sample_next_tokens(
    logits: Tensor,
    generators: Sequence[torch.Generator | None],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Tensor:
    """One sampled token id per row of ``logits (B, V)``: ``(B,)`` long on the CPU.

    Row r draws from ``softmax(logits[r] / temperature)``, restricted to its top-p nucleus (the most likely tokens,
    in descending order with ties kept in index order, up to and including the first whose cumulative probability
    reaches ``top_p``), with one `torch.multinomial` call on ``generators[r]``, so a row's draw depends only on
    its logits and its generator's state. Rows that share one generator consume it in row order (for B rows
    that is the stream one batched ``multinomial`` call would use).
    """
    _check_sampling(temperature, top_p)
    if len(generators) != logits.shape[0]:
        raise ValueError(f"sample_next_tokens needs one generator per row ({logits.shape[0]}), got {len(generators)}")
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()  # (B, V)
    if top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True, stable=True)
        before = ranked.cumsum(-1) - ranked  # probability of the tokens ranked above each one
        ranked = ranked.masked_fill(before >= top_p, 0.0)  # the top token always stays (before = 0)
        probs = torch.zeros_like(probs).scatter(-1, order, ranked)  # multinomial needs no renormalisation
    return torch.cat([torch.multinomial(probs[r : r + 1], 1, generator=g)[:, 0] for r, g in enumerate(generators)])


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """Describe a motion in one sentence (motion-to-text with the frozen text head, the `M2T_INSTRUCTION` prompt).

    ``motion`` is either latents ``(N, latent_dim)`` or features ``(T, 272)``: un-normalised (corpus ``.npy``
    clips; ``normalizer`` required) or, with ``normalized=True``, already normalised. Features are cropped to
    their first multiple of 4 frames and encoded to the VAE means, as the training latents were. Decoding is
    greedy unless ``greedy=False`` (sampling at ``temperature``, within the ``top_p`` nucleus, from the CPU
    ``generator``: the same generator seed gives the same caption; see `decode_tokens`) and stops at
    eos/end-of-turn.
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
    latents = model.to_model_latents(x.to(device, torch.float32)).to(dtype)  # VAE means -> the model's space
    logits_fn = LLaMoTextLogitsFn(model, motion_mask[None].to(device), latents)
    (tokens,) = decode_tokens(
        logits_fn,
        ids[None].to(device),
        None,
        vocab_size=model.base_vocab_size,
        stop_ids=stop_token_ids(formatter.tokenizer),
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
    )
    return formatter.tokenizer.decode(tokens, skip_special_tokens=True).strip()


@dataclass(frozen=True)
class WindowCaption:
    """The caption of one window of a clip: frames ``[start_frame, end_frame)`` (latents ``[start_latent,
    end_latent)``, ``frames_per_latent`` frames each)."""

    start_frame: int
    end_frame: int
    start_latent: int
    end_latent: int
    text: str

    def line(self) -> str:
        """``frames START-END: caption`` (END exclusive), the form `llamo caption` prints per window."""
        return f"frames {self.start_frame}-{self.end_frame}: {self.text}"


def plan_windows(latents: int, window_latents: int) -> list[tuple[int, int]]:
    """Split ``latents`` tokens into the fewest consecutive windows of at most ``window_latents`` tokens, of
    near-equal size (``[(start, end), ...]``, end exclusive; sizes differ by at most one).

    Equal sizes rather than full windows plus a remainder: a 76-token clip with 75-token windows gives two 38-token
    windows, not a 75-token one and a 1-token one whose caption would say nothing.
    """
    if window_latents < 1:
        raise ValueError(f"window_latents must be >= 1, got {window_latents}")
    if latents < 1:
        return []
    count = math.ceil(latents / window_latents)
    base, extra = divmod(latents, count)
    bounds, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def caption_windows(
    model: LLaMo,
    vae: CausalMotionVAE | None,
    motion: Tensor | np.ndarray,
    *,
    window_latents: int,
    normalizer: Normalizer | None = None,
    normalized: bool = False,
    **kwargs: Any,
) -> list[WindowCaption]:
    """Caption a clip in consecutive windows of at most ``window_latents`` latent tokens (see `plan_windows`).

    ``motion`` is features ``(T, 272)`` or latents ``(N, latent_dim)`` as in `caption`. Features are windowed in
    frames (``window_latents`` x the VAE's downsampling, trailing ``T % downsampling`` frames dropped as `caption`
    does) and every window is encoded by the VAE from its own first frame, as each training clip was; latents are
    windowed as they are. A clip that fits gives one window. ``kwargs`` go to `caption` (decoding options).
    """
    x = torch.as_tensor(np.asarray(motion) if isinstance(motion, np.ndarray) else motion)
    latent_dim = model.config.latent_dim
    if x.ndim != 2 or x.shape[-1] not in (latent_dim, FEATURE_DIM):
        raise ValueError(
            f"motion must be latents (N, {latent_dim}) or features (T, {FEATURE_DIM}), got shape {tuple(x.shape)}"
        )
    features = x.shape[-1] == FEATURE_DIM
    if features and vae is None:
        raise ValueError("captioning motion features needs the VAE to encode them; pass vae=")
    per = vae.config.downsample if features and vae is not None else 1
    frames_per_latent = vae.config.downsample if vae is not None else 4
    windows = plan_windows(int(x.shape[0]) // per, window_latents)
    if not windows:
        raise ValueError("motion has no latent token; give at least 4 frames or one latent")
    out = []
    for start, end in windows:
        piece = x[start * per : end * per]
        text = caption(model, vae, piece, normalizer=normalizer, normalized=normalized, **kwargs)
        out.append(WindowCaption(start * frames_per_latent, end * frames_per_latent, start, end, text))
    return out


def chat(
    model: LLaMo,
    messages: Sequence[Mapping[str, str]],
    *,
    formatter: SequenceFormatter | None = None,
    max_new_tokens: int = 256,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """The assistant's reply to a text-only chat ``[{"role": ..., "content": ...}, ...]``.

    Only text tokens are involved, so every step runs the frozen base model (MoT's text fast path): the greedy
    reply is token-identical to the base model's greedy reply.
    """
    formatter = model_formatter(model) if formatter is None else formatter
    ids = torch.tensor([chat_prompt_ids(formatter, messages)], device=_model_device(model))
    (tokens,) = decode_tokens(
        LLaMoTextLogitsFn(model),
        ids,
        None,
        vocab_size=model.base_vocab_size,
        stop_ids=stop_token_ids(formatter.tokenizer),
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
    )
    return formatter.tokenizer.decode(tokens, skip_special_tokens=True).strip()
