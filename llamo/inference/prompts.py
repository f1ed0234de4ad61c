"""Token-level prompts of the inference tasks, cut out of the training format so they are token-identical to it.

- `t2m_prompt_ids`: a text-to-motion sample up to and including the assistant's ``[BOM]``;
- `m2t_prompt`: a motion-to-text sample up to the end of the assistant's generation header;
- `chat_prompt_ids`: a text-only chat rendered with the chat template and the generation prompt.

`left_pad` batches prompts of different lengths (every row right-aligned, so the last position is real in every
row), `check_prompts` validates captions and `stop_token_ids` names the tokens that end a reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from llamo.core.format import IGNORE_INDEX, MotionSpan, SequenceFormatter
from llamo.core.model import LLaMo

__all__ = [
    "END_OF_TURN_TOKENS",
    "chat_prompt_ids",
    "check_prompts",
    "left_pad",
    "m2t_prompt",
    "model_formatter",
    "stop_token_ids",
    "t2m_prompt_ids",
]

#: end-of-turn tokens of common chat templates; generation also stops at them when the vocabulary has them
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>")
#: placeholder caption used only to locate the assistant turn in a formatted motion-to-text sample
_DUMMY_REPLY = "a"


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


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """``prompts`` as a non-empty list of non-blank strings (ValueError naming the first bad one otherwise)."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompt given: pass a caption string or a non-empty list of captions")
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty ({p!r}); describe the motion, e.g. 'a person walks forward'")
    return items


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids (R, L) long, mask (R, L) long)`` with every row right-aligned: the last position is real in every
    non-empty row, ``mask`` is 1 on real tokens and 0 on padding."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, length - len(row) :] = 1
    return ids, mask


def stop_token_ids(tokenizer: Any) -> set[int]:
    """Token ids that end a reply: the tokenizer's eos id(s) and the `END_OF_TURN_TOKENS` its vocabulary has."""
    eos = tokenizer.eos_token_id
    stops = set(eos) if isinstance(eos, list) else ({int(eos)} if eos is not None else set())
    vocab = tokenizer.get_vocab()
    return stops | {int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab}
