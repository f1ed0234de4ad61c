"""Tests of llamo.core.heads: adapter/projector, rectified-flow head (loss, k-resampling, Euler + CFG), exit head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llamo.core import heads
from llamo.core.heads import (
    ExitHead,
    ExitHeadConfig,
    FlowHead,
    FlowHeadConfig,
    MotionAdapter,
    MotionProjector,
)

LATENT, COND = 6, 10


def tiny_flow_head(**overrides: object) -> FlowHead:
    fields: dict[str, object] = dict(latent_dim=LATENT, cond_dim=COND, width=32, depth=2, cond_dropout=0.0)
    fields.update(overrides)
    return FlowHead(FlowHeadConfig(**fields))  # type: ignore[arg-type]


def perturbed(head: FlowHead, seed: int = 0) -> FlowHead:
    """Overwrite the zero-initialised layers with noise so the head computes a non-trivial velocity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return head


class RowCounter:
    """Forward-pre hook on ``input_proj``: records how many rows the network saw per call."""

    def __init__(self, head: FlowHead) -> None:
        self.rows: list[int] = []
        self.handle = head.input_proj.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.rows.append(args[0].shape[0])


# ---------------------------------------------------------------------------------------------------------
# adapter / projector


@pytest.mark.parametrize(("cls", "d_in", "d_out"), [(MotionAdapter, 8, 24), (MotionProjector, 24, 12)])
def test_adapter_projector_shapes_and_post_rmsnorm(cls: type[nn.Module], d_in: int, d_out: int) -> None:
    module = cls(d_in, d_out)
    with torch.no_grad():
        module.norm.weight.copy_(torch.linspace(0.5, 2.0, d_out))
    x = torch.randn(2, 5, d_in)
    y = module(x)
    assert y.shape == (2, 5, d_out)
    # reference: two linears with exact GELU, then x / rms(x) * weight
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(d_in, d_out), (d_out, d_out)]
    h = linears[1](F.gelu(linears[0](x)))
    expected = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * module.norm.weight
    torch.testing.assert_close(y, expected)
    # with unit norm weights the output has unit RMS per token
    with torch.no_grad():
        module.norm.weight.fill_(1.0)
    rms = module(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(2, 5), atol=1e-4, rtol=0)


def test_adapter_projector_reject_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"latent_dim=8, got shape \(2, 3, 7\)"):
        MotionAdapter(8, 16)(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=r"hidden_size=16, got shape \(4, 15\)"):
        MotionProjector(16, 12)(torch.randn(4, 15))


# ---------------------------------------------------------------------------------------------------------
# flow head: structure and init


def test_flow_head_outputs_exact_zero_at_init() -> None:
    head = tiny_flow_head()
    x, t, cond = torch.randn(7, LATENT), torch.rand(7), torch.randn(7, COND)
    v = head.velocity(x, t, cond)
    assert v.shape == (7, LATENT)
    assert torch.equal(v, torch.zeros_like(v))
    # every residual block is the identity at init (zero gate)
    h, y = torch.randn(7, 32), torch.randn(7, 32)
    for block in head.blocks:
        assert torch.equal(block(h, y), h)
    # ... and the head is not degenerate once the zero layers move
    assert perturbed(head).velocity(x, t, cond).abs().sum() > 0


def test_flow_head_paper_size_parameter_count() -> None:
    """1536 x 12 head with 32-dim latents and a 2048-dim condition: 152.4 M parameters (reference note §1.3)."""
    with torch.device("meta"):
        head = FlowHead(FlowHeadConfig(latent_dim=32, cond_dim=2048))
    n = sum(p.numel() for p in head.parameters())
    assert abs(n - 152.4e6) < 0.1e6, n


# ---------------------------------------------------------------------------------------------------------
# flow head: training loss


def test_loss_resamples_k_times_without_rerunning_the_condition() -> None:
    n, k = 5, 4
    head = perturbed(tiny_flow_head(timestep_samples=k))
    counter = RowCounter(head)
    cond_seen: list[Tensor] = []
    head.cond_embed.register_forward_pre_hook(lambda m, args: cond_seen.append(args[0].detach().clone()))
    x0, cond = torch.randn(n, LATENT), torch.randn(n, COND)
    loss = head.loss(x0, cond)
    assert counter.rows == [n * k]  # one head call on N*k rows
    torch.testing.assert_close(cond_seen[0], cond.repeat(k, 1), rtol=0, atol=0)  # tiled, not re-computed
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0

    head_k1 = perturbed(tiny_flow_head(timestep_samples=1))
    counter_k1 = RowCounter(head_k1)
    head_k1.loss(x0, cond)
    assert counter_k1.rows == [n]


def test_loss_matches_reference_rectified_flow_objective() -> None:
    """Re-draw the same t and eps from a cloned generator and compute the loss by hand."""
    n, k = 4, 3
    head = perturbed(tiny_flow_head(timestep_samples=k))
    x0, cond = torch.randn(n, LATENT), torch.randn(n, COND)
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0])
    loss = head.loss(x0, cond, weight, generator=torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    t = torch.sigmoid(torch.randn(n * k, generator=g))  # logit-normal
    eps = torch.randn(n * k, LATENT, generator=g)
    x0_k, cond_k, w_k = x0.repeat(k, 1), cond.repeat(k, 1), weight.repeat(k)
    x_t = (1 - t[:, None]) * eps + t[:, None] * x0_k
    per_row = (head.velocity(x_t, t, cond_k) - (x0_k - eps)).pow(2).mean(-1)
    torch.testing.assert_close(loss, (per_row * w_k).sum() / w_k.sum())


def test_loss_weights_mask_tokens_and_all_zero_gives_zero() -> None:
    head = perturbed(tiny_flow_head())
    x0, cond = torch.randn(6, LATENT), torch.randn(6, COND)
    mask = torch.tensor([True, True, False, True, False, False])
    g = torch.Generator().manual_seed(1)
    masked = head.loss(x0, cond, mask, generator=g)
    # changing a masked-out token's target does not change the loss
    x0_changed = x0.clone()
    x0_changed[2] += 100.0
    again = head.loss(x0_changed, cond, mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(masked, again)
    zero = head.loss(x0, cond, torch.zeros(6))
    assert zero.item() == 0.0


def test_gradient_reaches_cond() -> None:
    head = perturbed(tiny_flow_head())
    cond = torch.randn(5, COND, requires_grad=True)
    head.loss(torch.randn(5, LATENT), cond).backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    # at initialisation the zero output layer blocks it: only that layer gets gradient on the first step
    fresh = tiny_flow_head()
    cond0 = torch.randn(5, COND, requires_grad=True)
    fresh.loss(torch.randn(5, LATENT), cond0).backward()
    assert cond0.grad is not None and torch.equal(cond0.grad, torch.zeros_like(cond0))
    assert fresh.final_layer.linear.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    plain = perturbed(tiny_flow_head())
    ckpt = tiny_flow_head(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x0, cond = torch.randn(5, LATENT), torch.randn(5, COND)
    losses = [m.loss(x0, cond, generator=torch.Generator().manual_seed(2)) for m in (plain, ckpt)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_condition_dropout_uses_learned_null_condition() -> None:
    head = perturbed(tiny_flow_head(cond_dropout=0.5, timestep_samples=1))
    cond_seen: list[Tensor] = []
    head.cond_embed.register_forward_pre_hook(lambda m, args: cond_seen.append(args[0].detach().clone()))
    cond = torch.randn(200, COND)
    head.train()
    head.loss(torch.randn(200, LATENT), cond)
    dropped = (cond_seen[0] == head.null_cond.detach()).all(-1)
    kept = (cond_seen[0] == cond).all(-1)
    assert bool((dropped | kept).all())
    assert 60 < int(dropped.sum()) < 140  # ~Binomial(200, 0.5)
    head.eval()  # no dropout outside training
    head.loss(torch.randn(200, LATENT), cond)
    assert torch.equal(cond_seen[1], cond)


# ---------------------------------------------------------------------------------------------------------
# flow head: sampling


def test_euler_steps_match_the_analytic_update() -> None:
    head = perturbed(tiny_flow_head())
    cond, eps = torch.randn(4, COND), torch.randn(4, LATENT)
    one = head.sample(cond, steps=1, guidance_scale=1.0, noise=eps)
    with torch.no_grad():
        torch.testing.assert_close(one, eps + head.velocity(eps, 0.0, cond))
        two = head.sample(cond, steps=2, guidance_scale=1.0, noise=eps)
        x_half = eps + 0.5 * head.velocity(eps, 0.0, cond)
        torch.testing.assert_close(two, x_half + 0.5 * head.velocity(x_half, 0.5, cond))
    assert not torch.allclose(one, two)


def test_euler_with_constant_velocity_reaches_target_from_given_noise() -> None:
    """Only the output bias left: v(x, t) = b everywhere, so 10 Euler steps of b / 10 land on eps + b."""
    head = tiny_flow_head()
    bias = torch.randn(LATENT)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.final_layer.linear.bias.copy_(bias)
    eps = torch.randn(3, LATENT)
    out = head.sample(torch.randn(3, COND), steps=10, guidance_scale=1.0, noise=eps)
    torch.testing.assert_close(out, eps + bias)


def _reference_euler(
    head: FlowHead, cond: Tensor, eps: Tensor, steps: int, scale: float, uncond: Tensor | None = None
) -> Tensor:
    """The Euler loop built from `velocity` / `guided_velocity` (the training-time network, every layer every step):
    float32 state, network input in ``cond``'s dtype, CFG whenever ``scale != 1`` or ``uncond`` is given."""
    lead, n = cond.shape[:-1], cond[..., 0].numel()
    c = cond.reshape(n, -1)
    u = None if uncond is None else uncond.reshape(n, -1)
    x = eps.reshape(n, -1).float()
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((n,), i / steps)
            x_in = x.to(cond.dtype)
            if scale == 1.0 and u is None:
                v = head.velocity(x_in, t, c)
            else:
                v = head.guided_velocity(x_in, t, c, scale, u)
            x = x + v.float() / steps
    return x.to(cond.dtype).reshape(*lead, -1)


@pytest.mark.parametrize(("scale", "explicit_uncond"), [(1.0, False), (3.0, False), (1.0, True), (2.5, True)])
def test_sample_equals_reference_euler_loop(scale: float, explicit_uncond: bool) -> None:
    torch.manual_seed(0)
    head = perturbed(tiny_flow_head(width=48, depth=3))
    cond = torch.randn(2, 3, COND)  # leading dims (2, 3) are kept
    uncond = torch.randn(2, 3, COND) if explicit_uncond else None
    eps = torch.randn(2, 3, LATENT)
    eps_before = eps.clone()
    out = head.sample(cond, steps=8, guidance_scale=scale, noise=eps, uncond=uncond)
    expected = _reference_euler(head, cond, eps, 8, scale, uncond)
    assert out.shape == (2, 3, LATENT) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(eps, eps_before)  # the state is integrated in a copy of the noise
    plain = _reference_euler(head, cond, eps, 8, 1.0)  # guidance changes the result exactly when s != 1
    assert (out - plain).abs().max() > 1e-2 if scale != 1.0 else (out - plain).abs().max() < 1e-5

    # bfloat16 (8-bit mantissa): the fast path rounds intermediate results in another order than the reference
    # loop, so compare both with the float32 result: the same size of rounding error (measured: max difference
    # to the bf16 reference < 1% of the outputs, which reach ~16 with guidance 3; rms errors within 1.3x of the
    # reference's), while a wrong modulation, time or guidance term changes the outputs by O(1)
    head_bf16 = head.to(torch.bfloat16)  # in place: the float32 checks are done
    cond_bf16 = cond.bfloat16()
    uncond_bf16 = None if uncond is None else uncond.bfloat16()
    out_bf16 = head_bf16.sample(cond_bf16, steps=8, guidance_scale=scale, noise=eps, uncond=uncond_bf16)
    expected_bf16 = _reference_euler(head_bf16, cond_bf16, eps, 8, scale, uncond_bf16)
    assert out_bf16.shape == (2, 3, LATENT) and out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - expected_bf16.float()).abs().max() < 0.02 * expected.abs().max()
    rms_error = {
        name: (x.float() - out).pow(2).mean().sqrt() for name, x in (("fast", out_bf16), ("ref", expected_bf16))
    }
    assert rms_error["fast"] < 2 * rms_error["ref"], rms_error


def test_sample_computes_condition_and_timestep_embeddings_once_per_call() -> None:
    """The state-independent adaLN inputs are not recomputed per Euler step: one `cond_embed` call on the
    [cond; uncond] rows and one `time_embed` call on the whole step grid."""
    head = perturbed(tiny_flow_head())
    calls: dict[str, list[tuple[int, ...]]] = {"cond_embed": [], "time_embed": []}
    for name, module in (("cond_embed", head.cond_embed), ("time_embed", head.time_embed)):
        module.register_forward_pre_hook(lambda m, args, name=name: calls[name].append(tuple(args[0].shape)))
    head.sample(torch.randn(4, COND), steps=6, guidance_scale=2.0)
    assert calls == {"cond_embed": [(8, COND)], "time_embed": [(6,)]}


def test_sample_in_chunks_of_steps_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `SAMPLE_MODULATION_BYTES` the modulations are computed for a few steps at a time; same result."""
    head = perturbed(tiny_flow_head())
    cond, eps = torch.randn(3, COND), torch.randn(3, LATENT)
    whole = head.sample(cond, steps=7, guidance_scale=2.0, noise=eps)
    row_bytes = (3 * head.config.depth + 2) * head.config.width * 4
    calls: list[int] = []
    modulations = head._modulations
    monkeypatch.setattr(head, "_modulations", lambda t, c: calls.append(t.shape[0]) or modulations(t, c))
    monkeypatch.setattr(heads, "SAMPLE_MODULATION_BYTES", 2 * 6 * row_bytes)  # 2 steps of 6 rows
    chunked = head.sample(cond, steps=7, guidance_scale=2.0, noise=eps)
    assert calls == [2, 2, 2, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, _reference_euler(head, cond, eps, 7, 2.0), atol=1e-5, rtol=0)


def test_sample_uses_the_current_weights_after_an_optimizer_step_and_load_state_dict() -> None:
    """Nothing derived from the weights outlives a `sample` call: after the weights change in place (optimizer
    step) or by `load_state_dict`, sampling equals the reference loop with the new weights."""
    head = perturbed(tiny_flow_head())
    cond, eps = torch.randn(4, COND), torch.randn(4, LATENT)
    before = head.sample(cond, steps=5, guidance_scale=2.0, noise=eps)
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    head.loss(torch.randn(4, LATENT), cond).backward()
    opt.step()
    after_step = head.sample(cond, steps=5, guidance_scale=2.0, noise=eps)
    assert (after_step - before).abs().max() > 1e-3
    torch.testing.assert_close(after_step, _reference_euler(head, cond, eps, 5, 2.0), atol=1e-5, rtol=1e-5)

    other = perturbed(tiny_flow_head(), seed=7)
    head.load_state_dict(other.state_dict())
    loaded = head.sample(cond, steps=5, guidance_scale=2.0, noise=eps)
    torch.testing.assert_close(loaded, other.sample(cond, steps=5, guidance_scale=2.0, noise=eps), atol=0, rtol=0)
    torch.testing.assert_close(loaded, _reference_euler(other, cond, eps, 5, 2.0), atol=1e-5, rtol=1e-5)


def test_state_dict_keys_unchanged_by_sampling() -> None:
    """Checkpoint format: sampling adds no parameters or buffers; the keys are those of a fresh head."""
    head = perturbed(tiny_flow_head(depth=1))
    head.sample(torch.randn(2, COND), steps=3, guidance_scale=2.0)
    fresh = tiny_flow_head(depth=1)
    state = head.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert sorted(state) == sorted(
        [
            "null_cond",
            *(f"{name}.{p}" for name in ("input_proj", "cond_embed", "final_layer.linear") for p in ("weight", "bias")),
            *(f"time_embed.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")),
            *(f"blocks.0.{name}.{p}" for name in ("in_ln", "mlp.0", "mlp.2") for p in ("weight", "bias")),
            *(f"{name}.adaln_modulation.1.{p}" for name in ("blocks.0", "final_layer") for p in ("weight", "bias")),
        ]
    )


def _manual_euler(head: FlowHead, cond: Tensor, eps: Tensor, steps: int, scale: float | None) -> Tensor:
    """Reference sampler: separate conditional and null-conditional forwards."""
    x = eps.clone()
    null = head.null_cond.detach().expand_as(cond)
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((cond.shape[0],), i / steps)
            v = head.velocity(x, t, cond)
            if scale is not None:
                v_u = head.velocity(x, t, null)
                v = v_u + scale * (v - v_u)
            x = x + v / steps
    return x


def test_cfg_with_scale_one_equals_conditional_sampler_and_scale_s_batches_both() -> None:
    head = perturbed(tiny_flow_head())
    cond, eps = torch.randn(4, COND), torch.randn(4, LATENT)
    counter = RowCounter(head)
    cond_only = head.sample(cond, steps=5, guidance_scale=1.0, noise=eps)
    assert counter.rows == [4] * 5  # scale 1: no unconditional rows
    torch.testing.assert_close(cond_only, _manual_euler(head, cond, eps, 5, None))
    # the batched CFG path with s = 1 reduces to the conditional velocity
    with torch.no_grad():
        x, t = torch.randn(4, LATENT), torch.rand(4)
        torch.testing.assert_close(head.guided_velocity(x, t, cond, 1.0), head.velocity(x, t, cond))

    counter.rows.clear()
    guided = head.sample(cond, steps=5, guidance_scale=3.0, noise=eps)
    assert counter.rows == [8] * 5  # one forward per step on [cond; null]
    torch.testing.assert_close(guided, _manual_euler(head, cond, eps, 5, 3.0))
    assert not torch.allclose(guided, cond_only, atol=1e-3)


def test_sampling_defaults_come_from_config() -> None:
    head = perturbed(tiny_flow_head(sample_steps=3, guidance_scale=2.0))
    counter = RowCounter(head)
    cond, eps = torch.randn(2, COND), torch.randn(2, LATENT)
    out = head.sample(cond, noise=eps)
    assert counter.rows == [4, 4, 4]
    torch.testing.assert_close(out, _manual_euler(head, cond, eps, 3, 2.0))


def test_sampling_is_deterministic_under_a_seeded_generator() -> None:
    head = perturbed(tiny_flow_head())
    cond = torch.randn(3, COND)
    a = head.sample(cond, steps=4, generator=torch.Generator().manual_seed(11))
    b = head.sample(cond, steps=4, generator=torch.Generator().manual_seed(11))
    c = head.sample(cond, steps=4, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    x0 = torch.randn(3, LATENT)
    la = head.loss(x0, cond, generator=torch.Generator().manual_seed(5))
    lb = head.loss(x0, cond, generator=torch.Generator().manual_seed(5))
    assert torch.equal(la, lb)


def test_tiny_flow_head_overfits_a_fixed_mapping() -> None:
    torch.manual_seed(0)
    head = tiny_flow_head(latent_dim=4, cond_dim=8, width=64, depth=2)
    cond, x0 = torch.randn(16, 8), torch.randn(16, 4)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = head.loss(x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert first / last > 5.0, (first, last)
    # the learnt flow carries noise to the right latent for each condition
    sampled = head.sample(cond, steps=20, generator=torch.Generator().manual_seed(1))
    assert (sampled - x0).pow(2).mean() < 0.1 * x0.pow(2).mean()


# ---------------------------------------------------------------------------------------------------------
# flow head: bad input


def test_flow_head_rejects_bad_input() -> None:
    head = tiny_flow_head()
    with pytest.raises(ValueError, match=rf"cond_dim={COND}, got shape \(3, {COND + 1}\)"):
        head.sample(torch.randn(3, COND + 1))
    with pytest.raises(ValueError, match=rf"latent_dim={LATENT}, got shape \(3, 5\)"):
        head.loss(torch.randn(3, 5), torch.randn(3, COND))
    with pytest.raises(ValueError, match=rf"cond_dim={COND}"):
        head.loss(torch.randn(3, LATENT), torch.randn(3, 4))
    with pytest.raises(ValueError, match="same leading dimensions"):
        head.velocity(torch.randn(3, LATENT), 0.5, torch.randn(2, COND))
    with pytest.raises(ValueError, match=r"weight has shape \(2,\), expected \(3,\)"):
        head.loss(torch.randn(3, LATENT), torch.randn(3, COND), torch.ones(2))
    with pytest.raises(ValueError, match=r"noise has shape \(3, 2\)"):
        head.sample(torch.randn(3, COND), noise=torch.randn(3, 2))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        head.sample(torch.randn(3, COND), steps=0)
    with pytest.raises(ValueError, match="timestep_samples must be a positive integer"):
        FlowHeadConfig(latent_dim=4, cond_dim=4, timestep_samples=0)
    with pytest.raises(ValueError, match=r"cond_dropout must be in \[0, 1\)"):
        FlowHeadConfig(latent_dim=4, cond_dim=4, cond_dropout=1.0)


# ---------------------------------------------------------------------------------------------------------
# exit head


def test_exit_head_structure_five_linears_with_swish() -> None:
    head = ExitHead(ExitHeadConfig(hidden_size=12, width=16))
    layers = list(head.mlp)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5
    assert [type(m) for m in layers] == [nn.Linear, nn.SiLU] * 4 + [nn.Linear]
    assert (linears[0].in_features, linears[-1].out_features) == (12, 1)
    logits = head(torch.randn(2, 7, 12))
    assert logits.shape == (2, 7)
    torch.testing.assert_close(head.exit_probability(torch.zeros(3, 12)), torch.sigmoid(head(torch.zeros(3, 12))))


def test_exit_head_bce_equals_torch_reference_on_masked_positions() -> None:
    head = ExitHead(ExitHeadConfig(hidden_size=8, width=8, pos_weight=7.5))
    logits = head(torch.randn(3, 6, 8))
    targets = (torch.rand(3, 6) < 0.3).float()
    mask = torch.rand(3, 6) < 0.7
    loss = head.loss(logits, targets, mask)
    expected = F.binary_cross_entropy_with_logits(logits[mask], targets[mask], pos_weight=torch.tensor(7.5))
    torch.testing.assert_close(loss, expected)
    # pos_weight matters, masked positions don't, bool targets work
    plain = F.binary_cross_entropy_with_logits(logits[mask], targets[mask])
    assert not torch.allclose(loss, plain)
    garbage = torch.where(mask, logits, torch.full_like(logits, 1e4))
    torch.testing.assert_close(head.loss(garbage, targets.bool(), mask), expected)
    assert head.loss(logits, targets, torch.zeros(3, 6, dtype=torch.bool)).item() == 0.0


def test_exit_head_initial_probability_and_bad_input() -> None:
    head = ExitHead(ExitHeadConfig(hidden_size=8, width=8, initial_probability=0.05))
    assert math.isclose(head.mlp[-1].bias.item(), math.log(0.05 / 0.95), rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"hidden_size=8, got shape \(2, 9\)"):
        head(torch.randn(2, 9))
    with pytest.raises(ValueError, match="must have the same shape"):
        head.loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        head.loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="pos_weight must be > 0"):
        ExitHeadConfig(hidden_size=8, pos_weight=0.0)


def test_flow_step_read_bytes_counts_the_state_path_every_step_and_the_rest_once() -> None:
    from benchmarks.generation import flow_step_read_bytes

    head = FlowHead(FlowHeadConfig(latent_dim=8, cond_dim=12, width=16, depth=2))
    total = sum(p.numel() * p.element_size() for p in head.parameters())
    # state path: input_proj (8x16 + 16), per block LayerNorm (2x16) + MLP (2 x (16x16 + 16)), output (16x8 + 8)
    state = 4 * ((8 * 16 + 16) + 2 * (2 * 16 + 2 * (16 * 16 + 16)) + (16 * 8 + 8))
    assert flow_step_read_bytes(head, 1) == total
    assert flow_step_read_bytes(head, 10) == state + (total - state) // 10
    assert state < total
