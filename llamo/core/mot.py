"""Mixture-of-Transformers over a pretrained `LlamaForCausalLM` (paper §3.3, eq. for h_in ... h').

Every decoder layer gets a motion twin of each per-token module (input RMSNorm, Q/K/V/O projections,
post-attention RMSNorm, MLP) plus a motion final norm; the twins are deep copies of the text modules at
initialisation (BAGEL ``init_moe``). The text branch IS the base model's own modules, never wrapped or edited.

Routing (BAGEL / Meta MoT): a bool ``motion_mask (B, T)`` is turned once per forward into flat index lists
(`Routing`); every per-token module runs only on its own modality's rows (index gather -> branch -> one gather
back into sequence order), never both branches on all tokens. Q/K/V of both modalities are merged in sequence
order for ONE causal attention with the base model's RoPE, GQA and attention kernel, and a standard
transformers `Cache` (e.g. `DynamicCache`) stores the keys/values of both modalities per layer.

Fast paths decided from host-side knowledge (no device sync beyond building the routing):
- no motion token -> the base `LlamaModel.forward` itself runs (text outputs are bit-identical to the base);
- only motion tokens (a motion decode step) -> the motion twins run as an ordinary Llama layer stack.

With ``enabled=False`` (the paper's "w/o MoT" ablation) there are no twins: every token takes the base model's
dense path, so the same code trains one shared, fully fine-tuned branch.

Sharding note: a mixed layer calls the text and motion layers' sub-modules directly (not their ``forward``), so
FSDP must not use `LlamaDecoderLayer` as its wrap unit for this model (its pre-forward hooks would not gather the
parameters); DDP and DeepSpeed ZeRO-2 (the paper's setup, parameters not sharded) are unaffected.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

__all__ = ["MoTLlama", "MoTOutput", "Routing"]


@dataclass
class Routing:
    """Flat token indices of each modality for one forward, computed once and shared by every layer.

    Indices address the flattened ``(B * T)`` token axis. ``inverse`` maps the concatenation
    ``[text rows; motion rows]`` back to sequence order, so scattering is a single ``index_select``.
    """

    text_index: Tensor
    """``(N_text,)`` flat positions of text tokens."""
    motion_index: Tensor
    """``(N_motion,)`` flat positions of motion tokens."""
    inverse: Tensor
    """``(B * T,)`` row of each token in ``cat([text rows, motion rows])``."""
    shape: tuple[int, int]
    """``(B, T)``."""

    @classmethod
    def from_mask(cls, motion_mask: Tensor) -> Routing:
        """Routing for a bool ``(B, T)`` mask (True = motion token)."""
        if motion_mask.dtype != torch.bool or motion_mask.ndim != 2:
            raise ValueError(
                f"motion_mask must be a bool tensor of shape (B, T), got dtype {motion_mask.dtype} and shape "
                f"{tuple(motion_mask.shape)}"
            )
        flat = motion_mask.reshape(-1)
        text_index = (~flat).nonzero().squeeze(1)
        motion_index = flat.nonzero().squeeze(1)
        order = torch.cat([text_index, motion_index])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return cls(text_index, motion_index, inverse, (motion_mask.shape[0], motion_mask.shape[1]))

    @property
    def has_text(self) -> bool:
        """Whether any token is text (host-side, no device sync)."""
        return self.text_index.numel() > 0

    @property
    def has_motion(self) -> bool:
        """Whether any token is motion (host-side, no device sync)."""
        return self.motion_index.numel() > 0

    def gather(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, ...)`` -> text rows ``(N_text, ...)``, motion rows ``(N_motion, ...)``."""
        flat = x.reshape(-1, *x.shape[2:])  # (B*T, ...)
        return flat.index_select(0, self.text_index), flat.index_select(0, self.motion_index)

    def scatter(self, text_rows: Tensor, motion_rows: Tensor) -> Tensor:
        """Inverse of `gather`: rows of both modalities back to ``(B, T, ...)`` in sequence order."""
        merged = torch.cat([text_rows, motion_rows]).index_select(0, self.inverse)  # (B*T, ...)
        return merged.reshape(*self.shape, *merged.shape[1:])


@dataclass
class MoTOutput:
    """Result of `MoTLlama.forward`."""

    hidden_states: Tensor
    """``(B, T, H)`` last-layer hidden states after each token's own final RMSNorm."""
    cache: Cache | None
    """The cache, holding keys/values of both modalities (None when neither given nor requested)."""


class MoTLlama(nn.Module):
    """A base `LlamaForCausalLM` (the text branch, as given) plus motion twins of its per-token modules.

    Attributes: ``llm`` (the base model, untouched), ``motion_layers`` (one deep-copied `LlamaDecoderLayer`
    per base layer; only its norms, projections and MLP are used, the attention op is the shared one) and
    ``motion_norm`` (deep copy of the final norm). Neither twin exists when ``enabled=False``.
    """

    def __init__(self, llm: LlamaForCausalLM, enabled: bool = True) -> None:
        super().__init__()
        self.llm = llm
        self.enabled = enabled
        self.gradient_checkpointing = False
        self.motion_layers: nn.ModuleList | None = None
        self.motion_norm: nn.Module | None = None
        if enabled:
            self.motion_layers = nn.ModuleList(copy.deepcopy(layer) for layer in llm.model.layers)
            self.motion_norm = copy.deepcopy(llm.model.norm)
            for twin in self.motion_layers:
                twin.gradient_checkpointing = False

    @property
    def text_layers(self) -> nn.ModuleList:
        """The base model's decoder layers (the text branch)."""
        return self.llm.model.layers

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters of the base model (embedding, layers, final norm, LM head)."""
        return list(self.llm.parameters())

    def motion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the motion twins (empty when disabled)."""
        if not self.enabled:
            return []
        assert self.motion_layers is not None and self.motion_norm is not None
        return [*self.motion_layers.parameters(), *self.motion_norm.parameters()]

    # -------------------------------------------------------------------------------------------------

    def forward(
        self,
        inputs_embeds: Tensor,
        motion_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        routing: Routing | None = None,
    ) -> MoTOutput:
        """Run the backbone on ``inputs_embeds (B, T, H)``.

        ``motion_mask (B, T)`` bool marks motion tokens (None = all text); ``attention_mask (B, T_past + T)``
        is the usual 2-D padding mask; ``position_ids`` default to ``past + arange(T)``; ``cache`` is any
        transformers `Cache` (created as a `DynamicCache` when ``use_cache`` and none is given). ``routing``
        may be passed to reuse one computed by the caller from the same ``motion_mask``.
        """
        if self.enabled and routing is None and motion_mask is not None:
            routing = Routing.from_mask(motion_mask)
        if not self.enabled or routing is None or not routing.has_motion:
            out = self.llm.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
            )
            return MoTOutput(out.last_hidden_state, out.cache)

        assert self.motion_layers is not None and self.motion_norm is not None
        if routing.shape != tuple(inputs_embeds.shape[:2]):
            raise ValueError(
                f"motion_mask has shape {routing.shape} but inputs_embeds has (B, T) = {tuple(inputs_embeds.shape[:2])}"
            )
        model = self.llm.model
        if use_cache and cache is None:
            cache = DynamicCache(config=model.config)
        # the same preparation as LlamaModel.forward, so positions, masks and RoPE are the base model's
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
        causal_mask = create_causal_mask(
            config=model.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        position_embeddings = model.rotary_emb(inputs_embeds, position_ids=position_ids)

        hidden = inputs_embeds
        for text_layer, motion_layer in zip(self.text_layers, self.motion_layers):
            if not routing.has_text:
                hidden = motion_layer(
                    hidden,
                    attention_mask=causal_mask,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                    position_embeddings=position_embeddings,
                )
            elif self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(
                    _mixed_layer,
                    text_layer,
                    motion_layer,
                    hidden,
                    routing,
                    causal_mask,
                    position_embeddings,
                    cache,
                    use_reentrant=False,
                )
            else:
                hidden = _mixed_layer(
                    text_layer, motion_layer, hidden, routing, causal_mask, position_embeddings, cache
                )

        if routing.has_text:
            text_rows, motion_rows = routing.gather(hidden)
            hidden = routing.scatter(model.norm(text_rows), self.motion_norm(motion_rows))
        else:
            hidden = self.motion_norm(hidden)
        return MoTOutput(hidden, cache)


def _mixed_layer(
    text: LlamaDecoderLayer,
    motion: LlamaDecoderLayer,
    hidden: Tensor,
    routing: Routing,
    causal_mask: Tensor | None,
    position_embeddings: tuple[Tensor, Tensor],
    cache: Cache | None,
) -> Tensor:
    """One MoT decoder layer on a sequence holding both modalities (paper §3.3; Llama pre-norm order).

    Per layer: one gather of the residual stream, one scatter of Q/K/V into sequence order, the shared
    attention, one gather of its output, and one scatter of the layer output. Residual adds, the
    post-attention norm and the MLP stay in the gathered (per-modality) layout.
    """
    batch, length, _ = hidden.shape
    attn_t, attn_m = text.self_attn, motion.self_attn
    head_dim = attn_t.head_dim
    q_width = attn_t.q_proj.out_features
    kv_width = attn_t.k_proj.out_features

    res_t, res_m = routing.gather(hidden)  # (N_t, H), (N_m, H)
    x_t = text.input_layernorm(res_t)
    x_m = motion.input_layernorm(res_m)
    qkv_t = torch.cat([attn_t.q_proj(x_t), attn_t.k_proj(x_t), attn_t.v_proj(x_t)], dim=-1)
    qkv_m = torch.cat([attn_m.q_proj(x_m), attn_m.k_proj(x_m), attn_m.v_proj(x_m)], dim=-1)
    qkv = routing.scatter(qkv_t, qkv_m)  # (B, T, q_width + 2 * kv_width)
    q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
    q = q.reshape(batch, length, -1, head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
    k = k.reshape(batch, length, -1, head_dim).transpose(1, 2)  # (B, kv_heads, T, head_dim)
    v = v.reshape(batch, length, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, attn_t.layer_idx)

    attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn_t.config._attn_implementation, eager_attention_forward
    )
    # the text attention module only supplies GQA groups, scaling and is_causal; both branches share them
    attn_out, _ = attention(
        attn_t,
        q,
        k,
        v,
        causal_mask,
        dropout=0.0 if not attn_t.training else attn_t.attention_dropout,
        scaling=attn_t.scaling,
    )
    attn_out = attn_out.reshape(batch, length, -1)  # (B, T, heads * head_dim)
    o_t, o_m = routing.gather(attn_out)
    mid_t = res_t + attn_t.o_proj(o_t)
    mid_m = res_m + attn_m.o_proj(o_m)
    out_t = mid_t + text.mlp(text.post_attention_layernorm(mid_t))
    out_m = mid_m + motion.mlp(motion.post_attention_layernorm(mid_m))
    return routing.scatter(out_t, out_m)
