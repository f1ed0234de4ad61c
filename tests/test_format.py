"""The interleaved chat sequence format: token layout, loss masks, collation, layout checks, bad input."""

from __future__ import annotations

import pytest
import torch
from tiny_llamo import LATENT_DIM, tiny_tokenizer

from llamo.core.format import (
    IGNORE_INDEX,
    PLAIN_CHAT_TEMPLATE,
    MotionSpan,
    SequenceFormatter,
    check_motion_layout,
    collate_samples,
)

BOM, EOM = 100, 101


@pytest.fixture
def formatter() -> SequenceFormatter:
    return SequenceFormatter(tiny_tokenizer(), BOM, EOM, LATENT_DIM)


def _positions(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(1).tolist()


def test_text_to_motion_layout_and_masks(formatter: SequenceFormatter) -> None:
    tok = formatter.tokenizer
    z = torch.randn(5, LATENT_DIM)
    s = formatter.text_to_motion("a person walks forward", MotionSpan(z))
    ids = s.input_ids.tolist()
    bom = ids.index(BOM)
    slots = list(range(bom + 1, bom + 6))
    eom = bom + 6
    assert ids[eom] == EOM and ids.count(BOM) == 1 and ids.count(EOM) == 1
    assert _positions(s.motion_mask) == slots
    # the assistant turn opens right before [BOM]: "<|im_start|> assistant \n" then [BOM]
    assert tok.convert_ids_to_tokens(ids[bom - 2 : bom]) == ["<|im_start|>", "assistant"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # NTP: predict [BOM] from the last prompt token and the end of turn from [EOM]; nothing else
    assert {i: int(s.labels[i]) for i in _positions(s.labels != IGNORE_INDEX)} == {bom - 1: BOM, eom: im_end}
    # FM: [BOM] and every slot but the last condition the next latent; End adds the last slot (target 1)
    assert _positions(s.fm_mask) == [bom, *slots[:-1]]
    assert _positions(s.end_mask) == [bom, *slots]
    assert _positions(s.end_target) == [slots[-1]]
    assert s.span_lengths == [5] and s.span_generated == [True]
    assert torch.equal(s.latents, z)
    # text tokens equal tokenising the rendered text without the motion marker
    whole = tok(s.text.replace("<llamo-motion-0>", ""), add_special_tokens=False)["input_ids"]
    assert [i for i, m in zip(ids, s.motion_mask.tolist()) if not m and i not in (BOM, EOM)] == whole


def test_motion_to_text_has_no_motion_losses(formatter: SequenceFormatter) -> None:
    tok = formatter.tokenizer
    s = formatter.motion_to_text(MotionSpan(torch.randn(4, LATENT_DIM)), "a person jumps .")
    ids = s.input_ids.tolist()
    assert not s.fm_mask.any() and not s.end_mask.any() and s.span_generated == [False]
    labelled = [int(s.labels[i]) for i in _positions(s.labels != IGNORE_INDEX)]
    expected = tok("a person jumps .<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert labelled == expected
    # the caption tokens are predicted by the positions right before them
    first = _positions(s.labels != IGNORE_INDEX)[0]
    assert tok.convert_ids_to_tokens(ids[first - 1 : first + 1]) == ["<|im_start|>", "assistant"]
    assert BOM not in labelled and EOM not in labelled


@pytest.mark.parametrize("system", ["", "you move"])
def test_system_prompt_opens_every_motion_sample(system: str) -> None:
    tok = tiny_tokenizer()
    plain = SequenceFormatter(tok, BOM, EOM, LATENT_DIM)
    with_system = SequenceFormatter(tok, BOM, EOM, LATENT_DIM, system_prompt=system)
    head = tok(f"<|im_start|>system\n{system}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    z = torch.randn(3, LATENT_DIM)
    for make in (lambda f: f.text_to_motion("a person jumps", z), lambda f: f.motion_to_text(z, "a person jumps .")):
        a, b = make(plain), make(with_system)
        assert b.input_ids.tolist() == head + a.input_ids.tolist()
        # the system turn carries no loss: every mask is the plain sample's, shifted by the system turn
        n = len(head)
        assert (b.labels[:n] == IGNORE_INDEX).all() and torch.equal(b.labels[n:], a.labels)
        for name in ("motion_mask", "fm_mask", "end_mask", "end_target"):
            assert not getattr(b, name)[:n].any() and torch.equal(getattr(b, name)[n:], getattr(a, name)), name


def test_collate_pads_and_indexes_latents(formatter: SequenceFormatter) -> None:
    z = [torch.randn(n, LATENT_DIM) for n in (3, 2, 4)]
    samples = [
        formatter.text_to_motion("a person walks", MotionSpan(z[0])),
        formatter.motion_to_text(MotionSpan(z[1]), "a person runs"),
        formatter.text_to_motion("a person jumps in circle", MotionSpan(z[2])),
    ]
    b = collate_samples(samples, formatter.pad_id)
    lengths = [len(s) for s in samples]
    assert b.input_ids.shape == (3, max(lengths))
    assert b.attention_mask.sum(1).tolist() == lengths
    assert torch.equal(b.latents, torch.cat(z))
    assert b.latent_noise_mask.tolist() == [True] * 3 + [False] * 2 + [True] * 4
    # fm_target of position (b, i) is the latent of slot (b, i + 1): compare against an explicit walk
    flat_rank = {}
    for row in range(3):
        for col in range(b.input_ids.shape[1]):
            if b.motion_mask[row, col]:
                flat_rank[(row, col)] = len(flat_rank)
    for row, col in b.fm_mask.nonzero().tolist():
        assert int(b.fm_target[row, col]) == flat_rank[(row, col + 1)]
    assert (b.fm_target[~b.fm_mask] == -1).all()
    assert not (b.labels[~b.attention_mask] != IGNORE_INDEX).any()
    check_motion_layout(b.input_ids, b.motion_mask, BOM, EOM, b.attention_mask)


def test_length_only_spans_take_latents_later(formatter: SequenceFormatter) -> None:
    b = collate_samples([formatter.text_to_motion("a person walks", 3), formatter.motion_to_text(2, "walks")], 1)
    assert b.latents is None and b.num_latents == 5
    filled = b.with_latents(torch.zeros(5, LATENT_DIM))
    assert filled.latents is not None and filled.latents.shape == (5, LATENT_DIM)
    with pytest.raises(ValueError, match="5 motion slots"):
        b.with_latents(torch.zeros(4, LATENT_DIM))


def test_plain_template_for_tokenizers_without_one() -> None:
    tok = tiny_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        SequenceFormatter(tok, BOM, EOM, LATENT_DIM)
    f = SequenceFormatter(tok, BOM, EOM, LATENT_DIM, chat_template=PLAIN_CHAT_TEMPLATE)
    s = f.text_to_motion("a person walks", 2)
    assert s.text.startswith("<s>user: ") and s.text.endswith("</s>\n")
    assert int(s.labels[(s.labels != IGNORE_INDEX).nonzero()[-1]]) == tok.eos_token_id


def test_bad_inputs(formatter: SequenceFormatter) -> None:
    with pytest.raises(ValueError, match="latent_dim is 8"):
        formatter.text_to_motion("a person walks", MotionSpan(torch.randn(3, LATENT_DIM + 1)))
    with pytest.raises(ValueError, match="needs `latents`"):
        MotionSpan()
    with pytest.raises(ValueError, match="at least one latent"):
        MotionSpan(length=0)
    with pytest.raises(ValueError, match="reserved marker"):
        formatter.text_to_motion("a <llamo-motion-0> person", 2)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        formatter.format([{"role": "user"}])


def test_check_motion_layout_catches_unclosed_and_stray_markers() -> None:
    text, slot = 7, 0
    ok = torch.tensor([[text, BOM, slot, slot, EOM, text]])
    motion = torch.tensor([[False, False, True, True, False, False]])
    check_motion_layout(ok, motion, BOM, EOM)
    # [BOM] without [EOM]: text follows the last slot
    bad = torch.tensor([[text, BOM, slot, slot, text, text]])
    with pytest.raises(ValueError, match=r"not closed by \[EOM\]"):
        check_motion_layout(bad, motion, BOM, EOM)
    # a prefix that ends inside a motion span is fine only when open spans are allowed
    prefix, prefix_motion = ok[:, :4], motion[:, :4]
    with pytest.raises(ValueError, match=r"not closed by \[EOM\]"):
        check_motion_layout(prefix, prefix_motion, BOM, EOM)
    check_motion_layout(prefix, prefix_motion, BOM, EOM, allow_open=True)
    with pytest.raises(ValueError, match=r"\[BOM\] without motion"):
        check_motion_layout(torch.tensor([[text, BOM, text]]), torch.zeros(1, 3, dtype=torch.bool), BOM, EOM)
    with pytest.raises(ValueError, match=r"\[EOM\] without a motion span"):
        check_motion_layout(torch.tensor([[text, EOM, text]]), torch.zeros(1, 3, dtype=torch.bool), BOM, EOM)
    with pytest.raises(ValueError, match="not preceded by"):
        check_motion_layout(torch.tensor([[text, slot, EOM]]), torch.tensor([[False, True, False]]), BOM, EOM)


@pytest.mark.smollm2
def test_smollm2_chat_template() -> None:
    from llamo.core.llm import is_prepared, load_tokenizer, smollm2_dir

    if not is_prepared(smollm2_dir()):
        pytest.skip(f"SmolLM2 not prepared at {smollm2_dir()} (run `llamo prepare-llm`)")
    tok = load_tokenizer("smollm2")
    f = SequenceFormatter(tok, 49152, 49153, LATENT_DIM)
    s = f.text_to_motion("A person waves with the right hand.", 4)
    assert s.text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n<llamo-motion-0>" in s.text
    ids = s.input_ids.tolist()
    bom = ids.index(49152)
    assert tok.decode(ids[:bom]).endswith("<|im_start|>assistant\n")
    assert int(s.labels[bom - 1]) == 49152 and int(s.labels[bom + 5]) == tok.convert_tokens_to_ids("<|im_end|>")
