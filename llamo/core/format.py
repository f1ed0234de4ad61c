"""The interleaved motion-text sequence format (paper §3.3): ``[BOS] {text} [BOM] {motion} [EOM] {text} ... [EOS]``.

A sample is a chat (the base tokenizer's own chat template) whose message contents interleave text and
`MotionSpan`s. The template is rendered with a unique placeholder string per motion span; the text between
placeholders is tokenised piecewise and every placeholder becomes ``[BOM]``, one slot per motion latent, ``[EOM]``.
``[BOM]``/``[EOM]`` are the two ids appended after the base vocabulary (`llamo.core.llm.AddedTokenRows`), so the
tokenizer itself is not modified.

Which positions carry which loss (position i's hidden state predicts token i + 1):

- NTP (``labels[i] = id[i + 1]``): the next token is text (including ``[BOM]``) inside an assistant turn and
  position i is itself a text token. ``[EOM]`` is never a label: the exit head decides where motion ends.
- FM (``fm_mask[i]``): the next token is a motion slot of a span the assistant generates; its clean latent is the
  flow-matching target and the hidden state at i (``[BOM]`` or the previous motion slot) the condition.
- End (``end_mask[i]``, ``end_target[i]``): the same positions as FM (target 0) plus the last motion slot of a
  generated span (target 1, "the motion ends here").

Motion in a user turn (motion-to-text) is input only: no FM/End loss and no teacher-forcing noise.
Latents of all spans are kept in one ``(M, latent_dim)`` tensor in slot order (sample by sample, then sequence
order), which is the row-major order of ``motion_mask``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "M2T_INSTRUCTION",
    "PLAIN_CHAT_TEMPLATE",
    "T2M_INSTRUCTION",
    "FormattedSample",
    "MotionSpan",
    "MotionTextBatch",
    "SequenceFormatter",
    "check_motion_layout",
    "collate_samples",
]

#: label of positions without a next-token loss (the `torch.nn.functional.cross_entropy` default)
IGNORE_INDEX = -100
#: user prompt of a text-to-motion sample; ``{caption}`` is replaced by the caption
T2M_INSTRUCTION = "Generate a motion matching the following description: {caption}"
#: user instruction after the motion of a motion-to-text sample
M2T_INSTRUCTION = "Describe this motion in one sentence."
#: a minimal chat template for tokenizers that ship none (base, non-instruct models); pass it explicitly
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
_PLACEHOLDER = "<llamo-motion-{}>"
_PLACEHOLDER_RE = re.compile(r"<llamo-motion-(\d+)>")


@dataclass
class MotionSpan:
    """One motion inside a message: its latents ``(N, latent_dim)``, or only its length N in latent tokens
    (the latents are then filled into the batch later, e.g. after the VAE encoded the clips on the device)."""

    latents: Tensor | None = None
    """``(N, latent_dim)`` motion latents (normalised VAE space)."""
    length: int | None = None
    """Number of latent tokens N when ``latents`` is not given."""

    def __post_init__(self) -> None:
        if self.latents is None and self.length is None:
            raise ValueError("MotionSpan needs `latents` (N, latent_dim) or `length` (number of latent tokens)")
        if self.latents is not None:
            if self.latents.ndim != 2:
                raise ValueError(f"MotionSpan latents must have shape (N, latent_dim), got {tuple(self.latents.shape)}")
            if self.length is not None and self.length != self.latents.shape[0]:
                raise ValueError(f"MotionSpan length {self.length} != latents rows {self.latents.shape[0]}")
        if self.num_tokens < 1:
            raise ValueError(f"a MotionSpan needs at least one latent token, got {self.num_tokens}")

    @property
    def num_tokens(self) -> int:
        """N, the number of motion slots the span occupies."""
        return int(self.latents.shape[0]) if self.latents is not None else int(self.length or 0)


Content = str | MotionSpan | Sequence[str | MotionSpan]


@dataclass
class FormattedSample:
    """One formatted sequence; every ``(T,)`` tensor is indexed by position."""

    input_ids: Tensor
    """``(T,)`` long; motion slots hold the pad id (their embedding comes from the motion adapter)."""
    motion_mask: Tensor
    """``(T,)`` bool, True at motion slots."""
    labels: Tensor
    """``(T,)`` long next-token targets, `IGNORE_INDEX` where there is no NTP loss."""
    fm_mask: Tensor
    """``(T,)`` bool: position conditions the flow head for the latent in the next slot."""
    end_mask: Tensor
    """``(T,)`` bool: positions with an exit-head loss."""
    end_target: Tensor
    """``(T,)`` bool: exit target (True only on the last slot of a generated span)."""
    span_lengths: list[int]
    """Latent tokens per motion span, in sequence order."""
    span_generated: list[bool]
    """Per span: True when the assistant generates it (FM/End losses, teacher-forcing noise)."""
    latents: Tensor | None
    """``(M, latent_dim)`` latents of all spans in slot order, None when spans were given by length only."""
    text: str
    """The rendered chat template with motion placeholders (for inspection)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class MotionTextBatch:
    """A right-padded batch of `FormattedSample`s (see `collate_samples`)."""

    input_ids: Tensor
    """``(B, T)`` long."""
    attention_mask: Tensor
    """``(B, T)`` bool, False on padding."""
    motion_mask: Tensor
    """``(B, T)`` bool."""
    labels: Tensor
    """``(B, T)`` long, `IGNORE_INDEX` where no NTP loss."""
    fm_mask: Tensor
    """``(B, T)`` bool."""
    fm_target: Tensor
    """``(B, T)`` long: row of ``latents`` that position predicts (-1 where ``fm_mask`` is False)."""
    end_mask: Tensor
    """``(B, T)`` bool."""
    end_target: Tensor
    """``(B, T)`` bool."""
    latent_noise_mask: Tensor
    """``(M,)`` bool: latents of generated spans (they get teacher-forcing noise as inputs)."""
    span_lengths: list[list[int]]
    """Per sample, latent tokens per span (the order of ``latents``)."""
    latents: Tensor | None = None
    """``(M, latent_dim)`` in slot order, or None until `with_latents` fills it."""

    @property
    def num_latents(self) -> int:
        """M, the number of motion slots in the batch."""
        return int(self.latent_noise_mask.shape[0])

    def with_latents(self, latents: Tensor) -> MotionTextBatch:
        """A copy holding ``latents (M, latent_dim)`` (slot order: sample by sample, spans in sequence order)."""
        if latents.ndim != 2 or latents.shape[0] != self.num_latents:
            raise ValueError(
                f"the batch has {self.num_latents} motion slots (span lengths {self.span_lengths}); got latents of "
                f"shape {tuple(latents.shape)}, expected ({self.num_latents}, latent_dim)"
            )
        return replace(self, latents=latents)

    def to(self, device: torch.device | str) -> MotionTextBatch:
        """The batch with every tensor moved to ``device``."""
        moved = {
            f.name: (
                getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor) else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return MotionTextBatch(**moved)


class SequenceFormatter:
    """Turns chats with interleaved text and `MotionSpan`s into `FormattedSample`s.

    ``tokenizer`` is a Hugging Face tokenizer; ``bom_id``/``eom_id`` the ids of [BOM]/[EOM] (`LLaMo.bom_id`,
    `LLaMo.eom_id`); ``latent_dim`` the VAE latent width; ``chat_template`` overrides the tokenizer's template
    (required when it has none, e.g. `PLAIN_CHAT_TEMPLATE`); ``pad_id`` defaults to the tokenizer's pad, else eos.

    ``system_prompt`` (not None) opens every text-to-motion / motion-to-text sample with that system message, ""
    included; None leaves the system turn to the template (an instruct template may insert its default one).
    """

    def __init__(
        self,
        tokenizer: Any,
        bom_id: int,
        eom_id: int,
        latent_dim: int,
        chat_template: str | None = None,
        pad_id: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.bom_id = bom_id
        self.eom_id = eom_id
        self.latent_dim = latent_dim
        self.chat_template = chat_template
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no chat template; pass chat_template= (e.g. "
                "llamo.core.format.PLAIN_CHAT_TEMPLATE) or use an instruct model's tokenizer"
            )
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; pass pad_id=")
        self.pad_id = int(pad_id)

    # -- public ---------------------------------------------------------------------------------------

    def text_to_motion(
        self, caption: str, motion: MotionSpan | Tensor | int, instruction: str = T2M_INSTRUCTION
    ) -> FormattedSample:
        """User asks for a motion described by ``caption``; the assistant answers with the motion."""
        prompt = instruction.format(caption=caption)
        return self.format(
            [
                *self._system(),
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": [_as_span(motion)]},
            ]
        )

    def motion_to_text(
        self, motion: MotionSpan | Tensor | int, caption: str, instruction: str = M2T_INSTRUCTION
    ) -> FormattedSample:
        """User shows a motion and asks for a description; the assistant answers with ``caption``."""
        return self.format(
            [
                *self._system(),
                {"role": "user", "content": [_as_span(motion), "\n" + instruction]},
                {"role": "assistant", "content": caption},
            ]
        )

    def format(self, messages: Sequence[Mapping[str, Any]]) -> FormattedSample:
        """Format a chat: each message is ``{"role": ..., "content": str | MotionSpan | list of both}``.

        Motion spans in assistant messages are generated (FM/End losses); text in assistant messages gets the
        NTP loss, including the template's end-of-turn tokens.
        """
        spans: list[MotionSpan] = []
        rendered_messages = [self._render_message(m, spans, i) for i, m in enumerate(messages)]
        full = self._render(rendered_messages, add_generation_prompt=False)
        regions = self._assistant_regions(rendered_messages, full)
        return self._tokenize(full, regions, spans)

    # -- internals ------------------------------------------------------------------------------------

    def _system(self) -> list[dict[str, str]]:
        return [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]

    def _render_message(self, message: Mapping[str, Any], spans: list[MotionSpan], index: int) -> dict[str, str]:
        if "role" not in message or "content" not in message:
            raise ValueError(f"message {index} must have 'role' and 'content', got keys {sorted(message)}")
        content = message["content"]
        parts = [content] if isinstance(content, (str, MotionSpan)) else list(content)
        text = ""
        for part in parts:
            if isinstance(part, MotionSpan):
                if part.latents is not None and part.latents.shape[-1] != self.latent_dim:
                    raise ValueError(
                        f"motion latents in message {index} have width {part.latents.shape[-1]}, but the model's "
                        f"latent_dim is {self.latent_dim} (shape {tuple(part.latents.shape)}); encode the motion "
                        "with the VAE the model was built for"
                    )
                text += _PLACEHOLDER.format(len(spans))
                spans.append(part)
            elif isinstance(part, str):
                if _PLACEHOLDER_RE.search(part):
                    raise ValueError(f"message {index} text contains the reserved marker '<llamo-motion-N>'")
                text += part
            else:
                raise ValueError(f"message {index} content parts must be str or MotionSpan, got {type(part).__name__}")
        return {"role": str(message["role"]), "content": text}

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=self.chat_template
        )

    def _assistant_regions(self, messages: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
        """Character ranges of ``full`` rendered by each assistant message (content + end-of-turn tokens)."""
        regions = []
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:j], add_generation_prompt=True) if j else ""
            upto = self._render(messages[: j + 1], add_generation_prompt=False)
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise ValueError(
                    "the chat template does not render conversations prefix-consistently (rendering the first "
                    f"{j} message(s) with a generation prompt is not a prefix of rendering {j + 1}); pass a "
                    "chat_template= that does"
                )
            regions.append((len(prefix), len(upto)))
        return regions

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _tokenize(self, full: str, regions: list[tuple[int, int]], spans: list[MotionSpan]) -> FormattedSample:
        # cut the rendered string at every placeholder and at every assistant-region boundary
        cuts = {0, len(full)}
        for start, end in regions:
            cuts.update((start, end))
        matches = list(_PLACEHOLDER_RE.finditer(full))
        if [int(m.group(1)) for m in matches] != list(range(len(spans))):
            raise ValueError("the chat template dropped or reordered motion placeholders; use another template")
        for m in matches:
            cuts.update((m.start(), m.end()))
        bounds = sorted(cuts)

        def in_region(pos: int) -> bool:
            return any(start <= pos < end for start, end in regions)

        ids: list[int] = []
        is_motion: list[bool] = []
        in_loss: list[bool] = []  # text token inside an assistant turn / motion slot of a generated span
        span_generated: list[bool] = []
        match_at = {m.start(): int(m.group(1)) for m in matches}
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a in match_at:
                span = spans[match_at[a]]
                generated = in_region(a)
                span_generated.append(generated)
                ids += [self.bom_id] + [self.pad_id] * span.num_tokens + [self.eom_id]
                is_motion += [False] + [True] * span.num_tokens + [False]
                in_loss += [generated] * (span.num_tokens + 2)
            else:
                piece = self._encode(full[a:b])
                ids += piece
                is_motion += [False] * len(piece)
                in_loss += [in_region(a)] * len(piece)

        length = len(ids)
        labels = [IGNORE_INDEX] * length
        fm_mask = [False] * length
        end_mask = [False] * length
        end_target = [False] * length
        for i in range(length - 1):
            nxt = i + 1
            if is_motion[nxt]:
                if in_loss[nxt]:
                    fm_mask[i] = end_mask[i] = True
            elif is_motion[i]:
                assert ids[nxt] == self.eom_id
                if in_loss[i]:
                    end_mask[i] = end_target[i] = True
            elif in_loss[nxt]:
                labels[i] = ids[nxt]

        latents = None
        if spans and all(s.latents is not None for s in spans):
            latents = torch.cat([s.latents for s in spans])  # (M, latent_dim)
        elif not spans:
            latents = torch.zeros(0, self.latent_dim)
        return FormattedSample(
            input_ids=torch.tensor(ids, dtype=torch.long),
            motion_mask=torch.tensor(is_motion, dtype=torch.bool),
            labels=torch.tensor(labels, dtype=torch.long),
            fm_mask=torch.tensor(fm_mask, dtype=torch.bool),
            end_mask=torch.tensor(end_mask, dtype=torch.bool),
            end_target=torch.tensor(end_target, dtype=torch.bool),
            span_lengths=[s.num_tokens for s in spans],
            span_generated=span_generated,
            latents=latents,
            text=full,
        )


def _as_span(motion: MotionSpan | Tensor | int) -> MotionSpan:
    if isinstance(motion, MotionSpan):
        return motion
    if isinstance(motion, Tensor):
        return MotionSpan(latents=motion)
    return MotionSpan(length=int(motion))


def collate_samples(samples: Sequence[FormattedSample], pad_id: int) -> MotionTextBatch:
    """Right-pad samples into a `MotionTextBatch`; ``fm_target`` indexes the batch's concatenated latents."""
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    batch, length = len(samples), max(len(s) for s in samples)

    def pad(name: str, value: int | bool, dtype: torch.dtype) -> Tensor:
        out = torch.full((batch, length), value, dtype=dtype)
        for row, sample in enumerate(samples):
            tensor = getattr(sample, name)
            out[row, : tensor.shape[0]] = tensor
        return out

    input_ids = pad("input_ids", pad_id, torch.long)
    motion_mask = pad("motion_mask", False, torch.bool)
    attention_mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, sample in enumerate(samples):
        attention_mask[row, : len(sample)] = True
    fm_mask = pad("fm_mask", False, torch.bool)
    # row of `latents` held by each slot = number of motion slots before it in row-major order
    slot_rank = motion_mask.reshape(-1).long().cumsum(0).reshape(batch, length) - 1  # (B, T)
    next_rank = torch.cat([slot_rank[:, 1:], torch.full((batch, 1), -1)], dim=1)
    fm_target = torch.where(fm_mask, next_rank, torch.full_like(next_rank, -1))

    noise = [
        torch.full((n,), generated, dtype=torch.bool)
        for s in samples
        for n, generated in zip(s.span_lengths, s.span_generated)
    ]
    latent_noise_mask = torch.cat(noise) if noise else torch.zeros(0, dtype=torch.bool)
    latents = None
    if all(s.latents is not None for s in samples):
        latents = torch.cat([s.latents for s in samples if s.latents is not None])
    return MotionTextBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        motion_mask=motion_mask,
        labels=pad("labels", IGNORE_INDEX, torch.long),
        fm_mask=fm_mask,
        fm_target=fm_target,
        end_mask=pad("end_mask", False, torch.bool),
        end_target=pad("end_target", False, torch.bool),
        latent_noise_mask=latent_noise_mask,
        span_lengths=[list(s.span_lengths) for s in samples],
        latents=latents,
    )


def check_motion_layout(
    input_ids: Tensor,
    motion_mask: Tensor,
    bom_id: int,
    eom_id: int,
    attention_mask: Tensor | None = None,
    allow_open: bool = False,
) -> None:
    """Raise ValueError unless every motion span reads ``[BOM] slot ... slot [EOM]`` (vectorised, ``(B, T)``).

    ``allow_open`` accepts a span still open at the end of a row (a generation prefix ending in ``[BOM]`` or a
    motion slot). Padding (``attention_mask`` False) counts as the end of the row.
    """
    if input_ids.shape != motion_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and motion_mask {tuple(motion_mask.shape)} must have the same shape"
        )
    valid = torch.ones_like(motion_mask) if attention_mask is None else attention_mask.bool()
    motion = motion_mask & valid
    bom = (input_ids == bom_id) & ~motion_mask & valid
    eom = (input_ids == eom_id) & ~motion_mask & valid
    pad = torch.zeros_like(motion[:, :1])
    prev_motion = torch.cat([pad, motion[:, :-1]], dim=1)
    prev_bom = torch.cat([pad, bom[:, :-1]], dim=1)
    next_motion = torch.cat([motion[:, 1:], pad], dim=1)
    next_eom = torch.cat([eom[:, 1:], pad], dim=1)
    next_end = ~torch.cat([valid[:, 1:], pad], dim=1)

    problems = []

    def report(bad: Tensor, what: str) -> None:
        if bad.any():
            row, col = (int(v) for v in bad.nonzero()[0])
            problems.append(f"{what} (row {row}, position {col}; {int(bad.sum())} such position(s))")

    open_ok = next_end if allow_open else torch.zeros_like(next_end)
    report(motion & ~(prev_motion | prev_bom), "a motion slot not preceded by [BOM] or another motion slot")
    report(
        motion & ~(next_motion | next_eom | open_ok),
        "a motion span opened by [BOM] is not closed by [EOM] (text follows its last slot or the row ends)",
    )
    report(bom & ~(next_motion | open_ok), "[BOM] without motion slots after it")
    report(eom & ~prev_motion, "[EOM] without a motion span before it")
    if problems:
        raise ValueError("bad motion layout, spans must read [BOM] motion... [EOM]: " + "; ".join(problems))
