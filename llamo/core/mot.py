"""Mixture-of-Transformers over a pretrained `LlamaForCausalLM` (paper §3.3, eq. for h_in ... h').

Every decoder layer gets a motion twin of each per-token module (input RMSNorm, Q/K/V/O projections,
post-attention RMSNorm, MLP) plus a motion final norm; the twins are deep copies of the text modules at
initialisation (BAGEL ``init_moe``). The text branch IS the base model's own modules, never wrapped or edited.

Routing (BAGEL / Meta MoT): a bool ``motion_mask (B, T)`` is turned once per forward into flat index lists
(`Routing`); every per-token module runs only on its own modality's rows (index gather -> branch -> one gather
back into sequence order), never both branches on all tokens. Q/K/V of both modalities are merged in sequence
order for ONE causal attention with the base model's RoPE, GQA and attention kernel, and a standard
transformers `Cache` (e.g. `DynamicCache`) stores the keys/values of both modalities per layer.

Frozen prompt rows: a training step's text tokens before a row's first [BOM]/[EOM]/motion slot (the chat template
and caption of a text-to-motion sample, the instruction of a motion-to-text one) read only frozen weights and attend
only to each other, so their hidden states are constants of everything that trains. `LLaMo.forward` marks them
(`Routing.frozen`) and `_mixed_layer` runs them without autograd: the backward skips their dX through every frozen
layer, which could only carry gradient into constants. The loss and the gradients are those of the full graph up to
float rounding (the rows' matmuls run as a separate block); inference (no autograd) keeps one text pass.

Fast paths decided from host-side knowledge (no device sync beyond building the routing):
- no motion token -> the base `LlamaModel.forward` itself runs (text outputs are bit-identical to the base);
- only motion tokens (a motion decode step) -> `MoTLlama.motion_forward`: the motion twins run as an ordinary
  Llama layer stack. It needs no routing (no ``nonzero``, no host sync) and keeps every shape static, so with a
  `StaticCache` it traces into one graph (``torch.compile(fullgraph=True)``, CUDA graphs; `llamo.core.generation`).
  Optionally it reads `PackedMotionWeights`: Q/K/V and gate/up fused and stored ``(in, out)``, a layout in which
  batch-1 CPU GEMVs stream the weights faster (see the class).

With ``enabled=False`` (the paper's "w/o MoT" ablation) there are no twins: every token takes the base model's
dense path, so the same code trains one shared, fully fine-tuned branch.

Precision: the twins are trainable, so they are held in ``motion_dtype`` (float32 by default: the master weights
AdamW updates; a bf16 copy would round most small updates away) while the frozen text branch keeps the base
model's dtype (e.g. bfloat16). The residual stream, the shared attention and the KV cache stay in the text
branch's dtype: each motion module casts its rows to the twins' dtype on the way in and its result back on the
way out. Under autocast (``trainer.precision: bf16-mixed``) the matmuls run in bf16 anyway and these casts only
decide the dtype of the elementwise ops (norms, residual adds); without autocast (a bf16 base under
``precision: 32-true``) they make the mixed layer run at all, and the text rows never see a cast, so the text path
is the base model's own bf16 computation.

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

__all__ = ["MoTLlama", "MoTOutput", "PackedMotionWeights", "Routing"]


@dataclass
class Routing:
    """Flat token indices of each modality for one forward, computed once and shared by every layer.

    Indices address the flattened ``(B * T)`` token axis. ``inverse`` maps the concatenation
    ``[text rows; motion rows]`` back to sequence order, so scattering is a single ``index_select``.
    """

    text_index: Tensor
    """``(N_text,)`` flat positions of text tokens, the `frozen` ones first."""
    motion_index: Tensor
    """``(N_motion,)`` flat positions of motion tokens."""
    inverse: Tensor
    """``(B * T,)`` row of each token in ``cat([text rows, motion rows])``."""
    shape: tuple[int, int]
    """``(B, T)``."""
    frozen: int = 0
    """How many leading text rows are constants of the trainable weights (see `from_mask`): `_mixed_layer` runs
    them without autograd."""

    @classmethod
    def from_mask(cls, motion_mask: Tensor, frozen_mask: Tensor | None = None) -> Routing:
        """Routing for a bool ``(B, T)`` mask (True = motion token).

        ``frozen_mask (B, T)`` bool (optional) marks text tokens whose hidden states depend on no trainable weight
        (a frozen text branch, and only frozen tokens before them in the causal order, e.g. the prompt before
        [BOM]). Their rows come first in ``text_index`` and run outside autograd: a training step then skips their
        backward (dX through every frozen layer), which would only carry gradient into constants. The caller
        guarantees the property; this only checks that no motion token is marked."""
        if motion_mask.dtype != torch.bool or motion_mask.ndim != 2:
            raise ValueError(
                f"motion_mask must be a bool tensor of shape (B, T), got dtype {motion_mask.dtype} and shape "
                f"{tuple(motion_mask.shape)}"
            )
        flat = motion_mask.reshape(-1)
        if frozen_mask is None:
            text_index = (~flat).nonzero().squeeze(1)
            frozen = 0
        else:
            assert frozen_mask.shape == motion_mask.shape and frozen_mask.dtype == torch.bool
            frozen_flat = frozen_mask.reshape(-1)
            assert not bool((frozen_flat & flat).any()), "a motion token cannot be frozen"
            frozen_index = frozen_flat.nonzero().squeeze(1)
            text_index = torch.cat([frozen_index, (~flat & ~frozen_flat).nonzero().squeeze(1)])
            frozen = frozen_index.numel()
        motion_index = flat.nonzero().squeeze(1)
        order = torch.cat([text_index, motion_index])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return cls(text_index, motion_index, inverse, (motion_mask.shape[0], motion_mask.shape[1]), frozen)

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


@dataclass
class PackedMotionWeights:
    """The motion twins' Q/K/V and gate/up projections, each group fused and stored ``(in, out)`` contiguous.

    A one-token decode step is a chain of matrix-vector products bound by reading the weights. Measured on the
    project's 2-core EPYC (fp32, 1 thread, torch 2.13 / MKL, 30 layers of SmolLM2-135M-shaped twins): ``x @ W.T``
    with a Linear's ``(out, in)`` weight streams 11-12 GB/s, ``x @ W`` with ``W (in, out)`` 16-20 GB/s for the
    wide fused outputs (read bandwidth: ~29 GB/s), so the packed step is ~12 ms faster (47 -> 35 ms). The
    output projections (narrow) keep the modules' own layout. A copy: ~75 % of the twins' bytes extra. In
    bfloat16 (oneDNN) the same layout measured slower (Llama-3.2-1B-shaped layers: 52 -> 69 ms per 4 layers).
    """

    qkv: list[Tensor]
    """Per layer ``(H, q_width + 2 kv_width)``: ``[q_proj; k_proj; v_proj]`` weights, transposed."""
    qkv_bias: list[Tensor | None]
    """Per layer the fused Q/K/V bias (None without ``attention_bias``)."""
    gate_up: list[Tensor]
    """Per layer ``(H, 2 intermediate)``: ``[gate_proj; up_proj]`` weights, transposed."""
    gate_up_bias: list[Tensor | None]
    """Per layer the fused gate/up bias (None without ``mlp_bias``)."""
    source: tuple[tuple[int, int], ...]
    """``(data_ptr, version)`` of every packed parameter when packed: any change (training step, loading,
    moving) makes the pack stale."""

    @staticmethod
    def sources(layers: nn.ModuleList) -> tuple[tuple[int, int], ...]:
        """The staleness key of the parameters packed from ``layers``."""
        return tuple((p.data_ptr(), p._version) for layer in layers for p in _packed_parameters(layer))

    @classmethod
    def pack(cls, layers: nn.ModuleList) -> PackedMotionWeights:
        """Pack the motion twins ``layers`` (copies; marked as static addresses for CUDA graphs)."""
        qkv, qkv_bias, gate_up, gate_up_bias = [], [], [], []
        with torch.no_grad():
            for layer in layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv.append(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t().contiguous())
                gate_up.append(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t().contiguous())
                qkv_bias.append(_cat_bias(attn.q_proj, attn.k_proj, attn.v_proj))
                gate_up_bias.append(_cat_bias(mlp.gate_proj, mlp.up_proj))
        for tensor in (*qkv, *gate_up, *(b for b in (*qkv_bias, *gate_up_bias) if b is not None)):
            torch._dynamo.mark_static_address(tensor)
        return cls(qkv, qkv_bias, gate_up, gate_up_bias, cls.sources(layers))


def _packed_parameters(layer: LlamaDecoderLayer) -> list[Tensor]:
    linears = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
    linears += (layer.mlp.gate_proj, layer.mlp.up_proj)
    return [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]


def _cat_bias(*linears: nn.Linear) -> Tensor | None:
    if all(lin.bias is None for lin in linears):
        return None
    assert all(lin.bias is not None for lin in linears)
    return torch.cat([lin.bias for lin in linears])


class MoTLlama(nn.Module):
    """A base `LlamaForCausalLM` (the text branch, as given) plus motion twins of its per-token modules.

    Attributes: ``llm`` (the base model, untouched), ``motion_layers`` (one deep-copied `LlamaDecoderLayer`
    per base layer; only its norms, projections and MLP are used, the attention op is the shared one) and
    ``motion_norm`` (deep copy of the final norm). Neither twin exists when ``enabled=False``. The twins are
    stored in ``motion_dtype`` (float32: trainable master weights, see the module docstring); copying a bf16
    base into float32 is exact, so at initialisation the twins hold the text branch's values.
    """

    def __init__(self, llm: LlamaForCausalLM, enabled: bool = True, motion_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.llm = llm
        self.enabled = enabled
        self.gradient_checkpointing = False
        self.motion_layers: nn.ModuleList | None = None
        self.motion_norm: nn.Module | None = None
        self._packed: PackedMotionWeights | None = None  # see `packed_motion_weights`
        if enabled:
            self.motion_layers = nn.ModuleList(copy.deepcopy(layer) for layer in llm.model.layers).to(motion_dtype)
            self.motion_norm = copy.deepcopy(llm.model.norm).to(motion_dtype)
            for twin in self.motion_layers:
                twin.gradient_checkpointing = False

    @property
    def text_layers(self) -> nn.ModuleList:
        """The base model's decoder layers (the text branch)."""
        return self.llm.model.layers

    @property
    def text_dtype(self) -> torch.dtype:
        """Dtype of the text branch's weights as the forward sees them: the residual stream, the shared attention
        and the KV cache run in it."""
        return self.llm.model.embed_tokens.weight.dtype

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters of the base model (embedding, layers, final norm, LM head)."""
        return list(self.llm.parameters())

    def motion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the motion twins (empty when disabled)."""
        if not self.enabled:
            return []
        assert self.motion_layers is not None and self.motion_norm is not None
        return [*self.motion_layers.parameters(), *self.motion_norm.parameters()]

    def packed_motion_weights(self) -> PackedMotionWeights:
        """`PackedMotionWeights` of the motion twins for `motion_forward` (decode steps), cached on the module
        (not in the state dict) and re-packed whenever a twin parameter changed since the last call."""
        if not self.enabled:
            raise ValueError("packed motion weights need the motion twins; this MoTLlama was built with enabled=False")
        assert self.motion_layers is not None
        if self._packed is None or self._packed.source != PackedMotionWeights.sources(self.motion_layers):
            self._packed = None  # free the stale copy before packing the new one
            self._packed = PackedMotionWeights.pack(self.motion_layers)
        return self._packed

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

        if routing.shape != tuple(inputs_embeds.shape[:2]):
            raise ValueError(
                f"motion_mask has shape {routing.shape} but inputs_embeds has (B, T) = {tuple(inputs_embeds.shape[:2])}"
            )
        if use_cache and cache is None:
            cache = DynamicCache(config=self.llm.config)
        if not routing.has_text:
            hidden = self.motion_forward(inputs_embeds, attention_mask, position_ids, cache, use_cache)
            return MoTOutput(hidden, cache)

        assert self.motion_layers is not None and self.motion_norm is not None
        model = self.llm.model
        position_ids, causal_mask, position_embeddings = self._prepare(
            inputs_embeds, attention_mask, position_ids, cache
        )
        hidden = inputs_embeds
        for text_layer, motion_layer in zip(self.text_layers, self.motion_layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
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

        text_rows, motion_rows = routing.gather(hidden)
        text_out = model.norm(text_rows)
        motion_out = self.motion_norm(motion_rows.to(self.motion_norm.weight.dtype)).to(text_out.dtype)
        return MoTOutput(routing.scatter(text_out, motion_out), cache)

    def motion_forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        packed: PackedMotionWeights | None = None,
    ) -> Tensor:
        """Hidden states ``(B, T, H)`` of a sequence whose tokens are ALL motion (a motion decode step).

        The motion twins run as an ordinary Llama layer stack (base RoPE, mask and attention kernel) followed by the
        motion final norm (with ``enabled=False``: the base layers and final norm, as in `forward`); arguments as in
        `forward`. No routing, no data-dependent shape, no host sync: with a
        `StaticCache` (its write position is a tensor advanced in place) a decode step is one static graph that
        ``torch.compile(fullgraph=True)`` and CUDA graphs can capture. Gradient checkpointing is not applied here
        (motion-only sequences are decode steps, not training batches).

        ``packed`` (from `packed_motion_weights`) runs the same layers with the fused ``(in, out)`` Q/K/V and
        gate/up weights: equal up to floating-point rounding, faster batch-1 steps on a CPU.

        ``inputs_embeds`` are cast to the text branch's dtype (`text_dtype`), as `LLaMo.embed` casts motion slots:
        the KV cache the prefill wrote holds that dtype. When the twins' dtype differs (float32 twins on a bf16
        base), each layer runs through `_motion_layer`, which casts around the shared attention.
        """
        if packed is not None and not self.enabled:
            raise ValueError("packed motion weights need the motion twins; this MoTLlama was built with enabled=False")
        if not self.enabled:  # "w/o MoT": motion tokens take the base model's own layers and final norm
            return self.llm.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
            ).last_hidden_state
        assert self.motion_layers is not None and self.motion_norm is not None
        inputs_embeds = inputs_embeds.to(self.text_dtype)
        position_ids, causal_mask, position_embeddings = self._prepare(
            inputs_embeds, attention_mask, position_ids, cache
        )
        hidden = inputs_embeds
        motion_dtype = self.motion_norm.weight.dtype
        for i, motion_layer in enumerate(self.motion_layers):
            if packed is not None or motion_dtype != hidden.dtype:
                hidden = _motion_layer(motion_layer, packed, i, hidden, causal_mask, position_embeddings, cache)
                continue
            hidden = motion_layer(
                hidden,
                attention_mask=causal_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
            )
        return self.motion_norm(hidden.to(motion_dtype)).to(inputs_embeds.dtype)

    def _prepare(
        self, inputs_embeds: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None, cache: Cache | None
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """``(position_ids, causal_mask, position_embeddings)`` prepared as `LlamaModel.forward` does, so positions,
        masks and RoPE are the base model's."""
        model = self.llm.model
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
        return position_ids, causal_mask, position_embeddings


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

    Dtypes: the text rows run exactly as in the base layer. The motion rows are cast to the twins' dtype (float32
    master weights) for their norms, projections, MLP and residual adds; their Q/K/V join the shared attention
    in the dtype of the text Q/K/V (the base dtype, or bf16 under autocast), and the layer output goes back to
    the residual stream's dtype. All casts are no-ops when both branches share one dtype.
    """
    batch, length, _ = hidden.shape
    attn_t, attn_m = text.self_attn, motion.self_attn
    head_dim = attn_t.head_dim
    q_width = attn_t.q_proj.out_features
    kv_width = attn_t.k_proj.out_features

    motion_dtype = motion.input_layernorm.weight.dtype
    res_t, res_m = routing.gather(hidden)  # (N_t, H), (N_m, H)
    res_m = res_m.to(motion_dtype)
    # frozen text rows (Routing.frozen) are constants: computing them without autograd spares their backward
    res_f, res_t = res_t[: routing.frozen].detach(), res_t[routing.frozen :]

    def text_qkv(res: Tensor) -> Tensor:
        x = text.input_layernorm(res)
        return torch.cat([attn_t.q_proj(x), attn_t.k_proj(x), attn_t.v_proj(x)], dim=-1)

    def text_out(res: Tensor, o: Tensor) -> Tensor:
        mid = res + attn_t.o_proj(o)
        return mid + text.mlp(text.post_attention_layernorm(mid))

    x_m = motion.input_layernorm(res_m)
    qkv_t = text_qkv(res_t)
    if routing.frozen:
        with torch.no_grad():
            qkv_f = text_qkv(res_f)
        qkv_t = torch.cat([qkv_f, qkv_t])
    qkv_m = torch.cat([attn_m.q_proj(x_m), attn_m.k_proj(x_m), attn_m.v_proj(x_m)], dim=-1)
    qkv = routing.scatter(qkv_t, qkv_m.to(qkv_t.dtype))  # (B, T, q_width + 2 * kv_width)
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
    out_t = text_out(res_t, o_t[routing.frozen :])
    if routing.frozen:
        with torch.no_grad():  # a frozen row attends only to frozen rows (a causal prefix): still a constant
            out_f = text_out(res_f, o_t[: routing.frozen])
        out_t = torch.cat([out_f, out_t])
    mid_m = res_m + attn_m.o_proj(o_m.to(motion_dtype))
    out_m = mid_m + motion.mlp(motion.post_attention_layernorm(mid_m))
    return routing.scatter(out_t, out_m.to(out_t.dtype))


def _motion_layer(
    layer: LlamaDecoderLayer,
    packed: PackedMotionWeights | None,
    index: int,
    hidden: Tensor,
    causal_mask: Tensor | None,
    position_embeddings: tuple[Tensor, Tensor],
    cache: Cache | None,
) -> Tensor:
    """`LlamaDecoderLayer.forward` of motion twin ``index`` on motion-only rows, written out so that dtypes can
    differ: the norms, projections, MLP and residual adds run in the twin's dtype, the RoPE, cache update and
    attention kernel in ``hidden``'s (the text branch's, which the KV cache holds), the output goes back to
    ``hidden``'s dtype. With ``packed`` (`PackedMotionWeights`) the Q/K/V and gate/up projections read the fused
    ``(in, out)`` weights; the output and down projections are the layer's own."""
    batch, length, _ = hidden.shape
    attn, mlp = layer.self_attn, layer.mlp
    dtype = layer.input_layernorm.weight.dtype
    residual = hidden.to(dtype)
    x = layer.input_layernorm(residual)
    if packed is None:
        qkv = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    else:
        qkv = _matmul_in_out(x, packed.qkv[index], packed.qkv_bias[index])
    q_width, kv_width = attn.q_proj.out_features, attn.k_proj.out_features
    q, k, v = qkv.to(hidden.dtype).split([q_width, kv_width, kv_width], dim=-1)
    q = q.reshape(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
    k = k.reshape(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, kv_heads, T, head_dim)
    v = v.reshape(batch, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx)
    attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, eager_attention_forward
    )
    dropout = 0.0 if not attn.training else attn.attention_dropout
    attn_out, _ = attention(attn, q, k, v, causal_mask, dropout=dropout, scaling=attn.scaling)
    residual = residual + attn.o_proj(attn_out.reshape(batch, length, -1).to(dtype))
    x = layer.post_attention_layernorm(residual)
    if packed is None:
        out = mlp(x)
    else:
        gate_up = _matmul_in_out(x, packed.gate_up[index], packed.gate_up_bias[index])
        gate, up = gate_up.chunk(2, dim=-1)
        out = mlp.down_proj(mlp.act_fn(gate) * up)
    return (residual + out).to(hidden.dtype)


def _matmul_in_out(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight (+ bias)`` for a weight stored ``(in, out)``."""
    out = x @ weight
    return out if bias is None else out + bias
