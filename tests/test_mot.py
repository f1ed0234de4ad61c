"""Mixture-of-Transformers backbone: routing, equivalence with the dense base at init, cached decoding."""

from __future__ import annotations

import pytest
import torch
from tiny_llamo import LLAMA_CONFIGS, random_llm
from torch import nn
from transformers import DynamicCache

from llamo.core.mot import MoTLlama, Routing

NAMES = list(LLAMA_CONFIGS)


def _inputs(llm, batch: int = 3, length: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, llm.config.hidden_size, generator=gen)
    motion = torch.rand(batch, length, generator=gen) < 0.5
    if batch >= 3:
        motion[0, :] = False  # one text-only row, one all-motion row in the batch
        motion[1, :] = True
    return embeds, motion


def _perturb_motion(mot: MoTLlama, scale: float = 0.2) -> None:
    """Make the motion twins differ from the text branch, as after training."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in mot.motion_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_routing_roundtrip_and_bad_mask() -> None:
    mask = torch.tensor([[True, False, False], [False, True, True]])
    r = Routing.from_mask(mask)
    assert r.text_index.tolist() == [1, 2, 3] and r.motion_index.tolist() == [0, 4, 5]
    x = torch.arange(6 * 2.0).reshape(2, 3, 2)
    t, m = r.gather(x)
    assert t.shape == (3, 2) and m.shape == (3, 2)
    assert torch.equal(r.scatter(t, m), x)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        Routing.from_mask(mask.long())


def test_motion_twins_are_copies_not_aliases() -> None:
    llm = random_llm("gqa_tied")
    mot = MoTLlama(llm)
    assert mot.llm is llm and mot.text_layers is llm.model.layers
    text_ids = {id(p) for p in llm.parameters()}
    assert all(id(p) not in text_ids for p in mot.motion_parameters())
    for text, twin in zip(llm.model.layers, mot.motion_layers):
        for (name, a), (_, b) in zip(text.named_parameters(), twin.named_parameters()):
            assert torch.equal(a, b), name
    n_layer = sum(p.numel() for p in llm.model.layers.parameters()) + llm.model.norm.weight.numel()
    assert sum(p.numel() for p in mot.motion_parameters()) == n_layer


@pytest.mark.parametrize("name", NAMES)
def test_init_equals_dense_base_on_same_embeddings(name: str) -> None:
    """Invariant 2: right after init, MoT on a mixed sequence == the dense base on the same input embeddings."""
    llm = random_llm(name)
    mot = MoTLlama(llm)
    embeds, motion = _inputs(llm)
    padding = torch.ones(motion.shape, dtype=torch.bool)
    padding[2, -3:] = False  # right padding in one row
    with torch.no_grad():
        dense = llm.model(inputs_embeds=embeds, attention_mask=padding, use_cache=False).last_hidden_state
        mixed = mot(embeds, motion, attention_mask=padding).hidden_states
    torch.testing.assert_close(mixed, dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_text_only_is_the_base_model_bit_for_bit(name: str) -> None:
    llm = random_llm(name)
    mot = MoTLlama(llm)
    _perturb_motion(mot)
    embeds, _ = _inputs(llm)
    with torch.no_grad():
        dense = llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        assert torch.equal(mot(embeds).hidden_states, dense)
        assert torch.equal(mot(embeds, torch.zeros(embeds.shape[:2], dtype=torch.bool)).hidden_states, dense)


def _reference_mot(mot: MoTLlama, embeds: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Independent reference (LMFusion style, written from the paper's equations): run BOTH branches on every
    token and select per token with torch.where; plain softmax attention with an explicit causal mask."""
    model, cfg = mot.llm.model, mot.llm.config
    length = embeds.shape[1]
    cos, sin = model.rotary_emb(embeds, position_ids=torch.arange(length)[None])
    sel = motion[..., None]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    groups = cfg.num_attention_heads // cfg.num_key_value_heads

    def pick(text_fn, motion_fn, x: torch.Tensor) -> torch.Tensor:
        return torch.where(sel, motion_fn(x), text_fn(x))

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:2], -1, cfg.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def rope(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[:, None] + rotated * sin[:, None]

    h = embeds
    for text, twin in zip(model.layers, mot.motion_layers):
        ta, ma = text.self_attn, twin.self_attn
        x = pick(text.input_layernorm, twin.input_layernorm, h)
        q = rope(heads(pick(ta.q_proj, ma.q_proj, x)))
        k = rope(heads(pick(ta.k_proj, ma.k_proj, x))).repeat_interleave(groups, dim=1)
        v = heads(pick(ta.v_proj, ma.v_proj, x)).repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-1, -2)) / cfg.head_dim**0.5
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (B, heads, T, head_dim)
        attn = attn.transpose(1, 2).reshape(*h.shape[:2], -1)
        h = h + pick(ta.o_proj, ma.o_proj, attn)
        h = h + pick(
            nn.Sequential(text.post_attention_layernorm, text.mlp),
            nn.Sequential(twin.post_attention_layernorm, twin.mlp),
            h,
        )
    return pick(model.norm, mot.motion_norm, h)


@pytest.mark.parametrize("name", NAMES)
def test_matches_independent_both_branches_reference(name: str) -> None:
    """After the branches diverge, gather/scatter routing == computing both branches and selecting per token."""
    llm = random_llm(name)
    mot = MoTLlama(llm)
    _perturb_motion(mot)
    embeds, motion = _inputs(llm)
    with torch.no_grad():
        ours = mot(embeds, motion).hidden_states
        reference = _reference_mot(mot, embeds, motion)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_each_branch_sees_only_its_own_tokens() -> None:
    """Gather/scatter routing: every per-token module runs on exactly its modality's rows."""
    llm = random_llm("gqa_tied")
    mot = MoTLlama(llm)
    embeds, motion = _inputs(llm)
    rows: dict[str, list[int]] = {"text": [], "motion": []}
    hooks = []
    for key, layers in (("text", llm.model.layers), ("motion", mot.motion_layers)):
        for layer in layers:
            attn = layer.self_attn
            for module in (
                layer.input_layernorm,
                attn.q_proj,
                attn.k_proj,
                attn.v_proj,
                attn.o_proj,
                layer.post_attention_layernorm,
                layer.mlp,
            ):
                hooks.append(module.register_forward_hook(lambda m, a, o, k=key: rows[k].append(a[0].shape[0])))
    with torch.no_grad():
        mot(embeds, motion)
    for h in hooks:
        h.remove()
    n_motion = int(motion.sum())
    assert rows["text"] and set(rows["text"]) == {motion.numel() - n_motion}
    assert rows["motion"] and set(rows["motion"]) == {n_motion}


@pytest.mark.parametrize("name", NAMES)
def test_incremental_decoding_equals_full_forward(name: str) -> None:
    """Invariant 4: one token at a time with a DynamicCache (mixed modalities) == one full forward."""
    llm = random_llm(name)
    mot = MoTLlama(llm)
    _perturb_motion(mot)
    embeds, motion = _inputs(llm, batch=2, length=10)
    motion[0] = torch.tensor([False, False, True, True, True, False, True, False, False, True])
    motion[1] = torch.tensor([True, False, False, True, True, True, True, False, True, True])
    with torch.no_grad():
        full = mot(embeds, motion).hidden_states
        # per-step modality differs between rows: some steps are mixed, some single-modality
        cache = DynamicCache(config=llm.config)
        steps = [mot(embeds[:, t : t + 1], motion[:, t : t + 1], cache=cache).hidden_states for t in range(10)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
        assert cache.get_seq_length() == 10
        # single-modality steps (one row, so each step is all-text or all-motion): both fast paths + cache
        row_cache = DynamicCache(config=llm.config)
        row_steps = [
            mot(embeds[1:, t : t + 1], motion[1:, t : t + 1], cache=row_cache).hidden_states for t in range(10)
        ]
        torch.testing.assert_close(torch.cat(row_steps, 1), full[1:], rtol=1e-5, atol=1e-5)
        # mixed prefill, then single steps
        cache = DynamicCache(config=llm.config)
        prefill = mot(embeds[:, :6], motion[:, :6], cache=cache, use_cache=True).hidden_states
        rest = [mot(embeds[:, t : t + 1], motion[:, t : t + 1], cache=cache).hidden_states for t in range(6, 10)]
        torch.testing.assert_close(torch.cat([prefill, *rest], 1), full, rtol=1e-5, atol=1e-5)


def test_motion_branch_changes_motion_rows_only_and_is_causal() -> None:
    llm = random_llm("mha_untied")
    mot = MoTLlama(llm)
    embeds, motion = _inputs(llm, batch=1, length=8)
    motion[0] = torch.tensor([False, False, False, True, True, False, False, False])
    with torch.no_grad():
        before = mot(embeds, motion).hidden_states
        _perturb_motion(mot)
        after = mot(embeds, motion).hidden_states
    # text positions before the first motion token cannot see the motion branch (causal attention)
    assert torch.equal(after[0, :3], before[0, :3])
    assert not torch.allclose(after[0, 3:], before[0, 3:])


def test_disabled_mot_is_the_dense_base() -> None:
    llm = random_llm("gqa_tied")
    mot = MoTLlama(llm, enabled=False)
    assert mot.motion_layers is None and mot.motion_parameters() == []
    embeds, motion = _inputs(llm)
    with torch.no_grad():
        dense = llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        assert torch.equal(mot(embeds, motion).hidden_states, dense)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    llm = random_llm("gqa3_untied")
    mot = MoTLlama(llm).train()
    embeds, motion = _inputs(llm, batch=2, length=7)
    grads = []
    for checkpointing in (False, True):
        mot.gradient_checkpointing = checkpointing
        mot.zero_grad()
        mot(embeds, motion).hidden_states.square().mean().backward()
        grads.append([p.grad.clone() for p in mot.motion_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
