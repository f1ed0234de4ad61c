"""Motion-side modules around the LLM (paper §3.3, §7.2): adapter, projector, flow-matching head, exit head.

- `MotionAdapter` P(z): VAE latent -> LLM input embedding of a motion token.
- `MotionProjector`: last-layer motion hidden state -> condition of the flow head.
- `FlowHead`: MAR's ``SimpleMLPAdaLN`` trained as a rectified flow (NextStep-1 variant): it models the
  distribution of the next motion latent given the projected hidden state, with classifier-free guidance
  from a learned null condition.
- `ExitHead`: 5-layer Swish MLP giving one logit for "the motion ends here" (TransformerTTS / SpeechT5 style).

Time convention (paper eq. 6): ``x_t = (1 - t) * eps + t * x0``, t = 0 is noise, t = 1 is data, and the
velocity target is ``x0 - eps``. Sampling integrates from t = 0 to t = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ExitHead",
    "ExitHeadConfig",
    "FlowHead",
    "FlowHeadConfig",
    "LatentStandardizer",
    "MotionAdapter",
    "MotionProjector",
    "TimestepEmbedder",
]

#: Size of the sinusoidal timestep features before the timestep MLP (MAR / DiT / NextStep-1).
TIMESTEP_FREQUENCY_DIM = 256
#: Most bytes of adaLN modulations `FlowHead.sample` holds at once (steps x rows x (3 depth + 2) x width); above
#: it the steps are done in chunks, each reading the modulation weights once. A 1536 x 12 head, 50 steps, batch 1
#: needs 11 MiB in float32.
SAMPLE_MODULATION_BYTES = 64 * 2**20


def _check_last_dim(x: Tensor, owner: str, what: str, size_name: str, expected: int) -> None:
    """Raise a ValueError naming the expected width when ``x``'s last dimension is wrong."""
    if x.ndim == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"{owner} expects {what} with last dimension {size_name}={expected}, got shape {tuple(x.shape)}; "
            f"make {size_name} in the config match the tensors you pass"
        )


class _MLPNorm(nn.Module):
    """Linear -> GELU -> Linear -> RMSNorm (the paper's "two-layer MLP with GELU and post-RMSNorm")."""

    def __init__(self, in_dim: int, out_dim: int, eps: float, owner: str, in_name: str) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"{owner} sizes must be positive, got {in_name}={in_dim}, output size {out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self._owner = owner
        self._in_name = in_name
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.norm = nn.RMSNorm(out_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self._owner, "inputs", self._in_name, self.in_dim)
        # inputs may come in the base LLM's dtype (bf16); the weights are float32 masters
        h = self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))  # bf16 under autocast
        return self.norm(h.to(self.norm.weight.dtype))  # the norm in its weight's dtype (no mixed-dtype rms_norm)


class MotionAdapter(_MLPNorm):
    """The motion adapter P(.): maps VAE latents ``(..., latent_dim)`` to LLM embeddings ``(..., hidden_size)``.

    Two linear layers (latent_dim -> hidden_size -> hidden_size) with GELU between and an RMSNorm at the end,
    so motion embeddings enter the LLM at a fixed scale (set by the norm's learnable weight).
    """

    def __init__(self, latent_dim: int, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(latent_dim, hidden_size, eps, "MotionAdapter", "latent_dim")


class MotionProjector(_MLPNorm):
    """Maps last-layer motion hidden states ``(..., hidden_size)`` to flow-head conditions ``(..., cond_dim)``.

    Same shape as `MotionAdapter`: hidden_size -> cond_dim -> cond_dim, GELU, post-RMSNorm.
    """

    def __init__(self, hidden_size: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, cond_dim, eps, "MotionProjector", "hidden_size")


class LatentStandardizer(nn.Module):
    """Per-channel standardisation of VAE latents: the model works on ``(z - mean) / std``.

    A flow head draws its noise from N(0, I) and its time schedule assumes data of about that scale; VAE means
    usually have a much smaller and uneven per-channel spread (MAR and latent diffusion rescale for the same
    reason). The statistics are fitted once, on the training latents of the first LLaMo stage, and travel with
    the model as buffers (handoffs, checkpoints), so every later stage and every inference uses the same ones.
    """

    def __init__(self, latent_dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))
        # number of latent vectors the statistics came from; 0 = not fitted yet
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        """Whether `fit` has set the statistics (also after loading them from a handoff)."""
        return int(self.count) > 0

    @torch.no_grad()
    def fit(self, latents: Sequence[Tensor], chunk_clips: int = 4096) -> None:
        """Set mean/std from clips of latents, each ``(N_i, latent_dim)``.

        Accumulated in float64 over chunks of ``chunk_clips`` clips (Chan et al.'s pairwise merge of mean and
        squared deviations), so a corpus of millions of clips never needs a float64 copy of all its latents."""
        width = self.mean.shape[0]
        count, mean, m2 = 0, torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
        for start in range(0, len(latents), chunk_clips):
            rows = [z.reshape(-1, z.shape[-1]) for z in latents[start : start + chunk_clips] if z.numel()]
            if not rows:
                continue
            z = torch.cat(rows).double()  # (M_chunk, latent_dim)
            if z.shape[-1] != width:
                raise ValueError(f"latents have width {z.shape[-1]}, the standardiser {width}")
            n, chunk_mean = z.shape[0], z.mean(0)
            delta = chunk_mean - mean
            total = count + n
            m2 += (z - chunk_mean).pow(2).sum(0) + delta.pow(2) * (count * n / total)
            mean += delta * (n / total)
            count = total
        if count == 0:
            raise ValueError("LatentStandardizer.fit got no latents (the training split is empty)")
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_((m2 / count).sqrt().clamp_min(self.eps).to(self.std.dtype))
        self.count.fill_(count)

    def _check(self) -> None:
        if not self.fitted:
            raise ValueError(
                "latent_norm: standardise needs latent statistics, but none were fitted: train stage 1 with this "
                "config (it fits them on the training latents) or load a handoff that has them"
            )

    def normalise(self, z: Tensor) -> Tensor:
        """VAE latents ``(..., latent_dim)`` -> the model's standardised latents."""
        self._check()
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)

    def denormalise(self, z: Tensor) -> Tensor:
        """The model's standardised latents ``(..., latent_dim)`` -> VAE latents."""
        self._check()
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)


# ---------------------------------------------------------------------------------------------------------
# Flow head
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FlowHeadConfig:
    """Size and training/sampling settings of the flow-matching head (paper: 1536 x 12, k = 4, 50 Euler steps)."""

    latent_dim: int
    """Width of a motion latent x0 (the VAE's latent_dim; the paper uses 32)."""
    cond_dim: int
    """Width of the condition vector (the `MotionProjector` output)."""
    width: int = 1536
    """Hidden width W of the MLP (paper / MAR-H / NextStep-1: 1536)."""
    depth: int = 12
    """Number of adaLN residual blocks (paper: 12)."""
    timestep_samples: int = 4
    """k: timesteps (each with its own noise) drawn per motion token in `loss`, without re-running the LLM
    (paper and MAR ``diffusion_batch_mul``: 4)."""
    cond_dropout: float = 0.1
    """Probability that a token's condition is replaced by the learned null condition during training, so the
    head also learns the unconditional velocity used by classifier-free guidance (MAR: 0.1)."""
    sample_steps: int = 50
    """Euler steps from noise (t = 0) to data (t = 1) in `sample` (paper: 50)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale s in ``v = v_u + s (v_c - v_u)``; 1.0 = conditional only (one forward)."""
    timestep_distribution: Literal["logit_normal", "uniform"] = "logit_normal"
    """Training distribution of t: ``sigmoid(N(0, 1))`` as in NextStep-1 and BAGEL, or ``U(0, 1)``."""
    gradient_checkpointing: bool = False
    """Recompute each residual block in backward (saves activation memory of the k-times repeated batch)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("latent_dim", "cond_dim", "width", "depth", "timestep_samples", "sample_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"FlowHeadConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            problems.append(f"FlowHeadConfig.cond_dropout must be in [0, 1), got {self.cond_dropout!r}")
        if self.timestep_distribution not in ("logit_normal", "uniform"):
            problems.append(
                "FlowHeadConfig.timestep_distribution must be 'logit_normal' or 'uniform', "
                f"got {self.timestep_distribution!r}"
            )
        if problems:
            raise ValueError("\n".join(problems))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (cos half then sin half, max period 10000) -> Linear -> SiLU -> Linear.

    t is used as given, in [0, 1] (NextStep-1 / BAGEL), not scaled to DDPM step indices as in MAR.
    """

    def __init__(self, width: int, frequency_dim: int = TIMESTEP_FREQUENCY_DIM, max_period: float = 10000.0) -> None:
        super().__init__()
        assert frequency_dim % 2 == 0
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def frequency_features(self, t: Tensor) -> Tensor:
        """``(N,)`` timesteps -> ``(N, frequency_dim)`` sinusoidal features (float32)."""
        half = self.frequency_dim // 2
        exponent = torch.arange(half, device=t.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(self.max_period) * exponent)
        args = t.float()[:, None] * freqs[None]  # (N, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        features = self.frequency_features(t)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class _AdaLNResBlock(nn.Module):
    """LayerNorm -> adaLN (shift, scale) -> Linear-SiLU-Linear (mlp_ratio 1) -> gated residual."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaln_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.adaln_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class _AdaLNFinalLayer(nn.Module):
    """Non-affine LayerNorm -> adaLN (shift, scale) -> Linear to the velocity."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaln_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale = self.adaln_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class FlowHead(nn.Module):
    """Per-token rectified-flow head (MAR ``SimpleMLPAdaLN``, NextStep-1 flow version).

    The network sees a batch of independent vectors: noisy latent ``x_t (N, latent_dim)``, time ``t (N,)`` and
    condition ``cond (N, cond_dim)``; adaLN conditioning is ``y = TimestepEmbedder(t) + Linear(cond)``.
    Modulation layers and the output layer are zero-initialised, so at initialisation every block is the
    identity and the predicted velocity is exactly 0.

    Note for optimiser setup: MAR applies no weight decay to this head.
    """

    def __init__(self, config: FlowHeadConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.input_proj = nn.Linear(config.latent_dim, width)
        self.cond_embed = nn.Linear(config.cond_dim, width)
        self.time_embed = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(_AdaLNResBlock(width) for _ in range(config.depth))
        self.final_layer = _AdaLNFinalLayer(width, config.latent_dim)
        # learned "no condition" for classifier-free guidance (MAR's fake_latent)
        self.null_cond = nn.Parameter(torch.empty(config.cond_dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAR's initialisation: xavier-uniform linears with zero bias, N(0, 0.02) timestep MLP, zero adaLN
        and zero output layer (head outputs 0), N(0, 0.02) null condition."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaln_modulation[-1].weight)
            nn.init.zeros_(block.adaln_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaln_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaln_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        nn.init.normal_(self.null_cond, std=0.02)

    # -- network ---------------------------------------------------------------------------------------

    def _check_inputs(self, x: Tensor, cond: Tensor, x_name: str) -> None:
        _check_last_dim(x, "FlowHead", x_name, "latent_dim", self.config.latent_dim)
        _check_last_dim(cond, "FlowHead", "cond", "cond_dim", self.config.cond_dim)
        if x.shape[:-1] != cond.shape[:-1]:
            raise ValueError(
                f"FlowHead: {x_name} {tuple(x.shape)} and cond {tuple(cond.shape)} must have the same leading "
                "dimensions (one condition per latent)"
            )

    def velocity(self, x_t: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        """Predicted velocity ``(..., latent_dim)`` at ``x_t (..., latent_dim)``, time ``t`` (a float, a 0-d
        tensor or a tensor of the leading shape) and condition ``cond (..., cond_dim)``."""
        self._check_inputs(x_t, cond, "x_t")
        lead = x_t.shape[:-1]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(lead)
        if t.shape != lead:
            raise ValueError(f"FlowHead: t has shape {tuple(t.shape)}, expected a scalar or {tuple(lead)}")
        dtype = self.input_proj.weight.dtype  # inputs may come in another dtype (a bf16 base's hidden states)
        x = x_t.reshape(-1, x_t.shape[-1]).to(dtype)  # (N, latent_dim)
        y = self.time_embed(t.reshape(-1)) + self.cond_embed(cond.reshape(-1, cond.shape[-1]).to(dtype))  # (N, W)
        h = self.input_proj(x)
        for block in self.blocks:
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, y, use_reentrant=False)
            else:
                h = block(h, y)
        return self.final_layer(h, y).reshape(x_t.shape).to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        """Same as `velocity`."""
        return self.velocity(x_t, t, cond)

    def guided_velocity(
        self, x_t: Tensor, t: Tensor, cond: Tensor, guidance_scale: float, uncond: Tensor | None = None
    ) -> Tensor:
        """``v_u + s (v_c - v_u)`` from ONE forward on the batch ``[cond; uncond]`` sharing ``x_t``.

        ``x_t (N, latent_dim)``, ``t (N,)``, ``cond (N, cond_dim)``; ``uncond`` defaults to the learned null
        condition (pass the hidden state of a null-prompt LLM row to guide at the LLM level instead).
        """
        if uncond is None:
            uncond = self.null_cond.to(cond.dtype).expand_as(cond)
        elif uncond.shape != cond.shape:
            raise ValueError(f"FlowHead: uncond {tuple(uncond.shape)} must have the shape of cond {tuple(cond.shape)}")
        v = self.velocity(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))  # (2N, D)
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    # -- training --------------------------------------------------------------------------------------

    def _sample_timesteps(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        if self.config.timestep_distribution == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device, generator=generator))
        return torch.rand(n, device=device, generator=generator)

    def loss(
        self,
        x0: Tensor,
        cond: Tensor,
        weight: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Rectified-flow loss: weighted mean over tokens of the per-token MSE (over channels).

        ``x0 (N, latent_dim)`` clean latents, ``cond (N, cond_dim)`` their conditions, ``weight (N,)`` optional
        non-negative float/bool per-token weights (a mask); leading dims other than N are flattened. Each
        (x0, cond) pair is tiled ``timestep_samples`` times and every copy draws its own t and eps, so the head
        runs on k*N rows while the LLM that produced ``cond`` ran once; the gradient into ``cond`` sums over the
        copies. In training mode each token's condition is replaced by the null condition with probability
        ``cond_dropout``. All-zero weights give a loss of 0.
        """
        self._check_inputs(x0, cond, "x0")
        lead = x0.shape[:-1]
        if weight is not None and weight.shape != lead:
            raise ValueError(f"FlowHead.loss: weight has shape {tuple(weight.shape)}, expected {tuple(lead)}")
        x0 = x0.reshape(-1, x0.shape[-1])  # (N, D)
        cond = cond.reshape(-1, cond.shape[-1])  # (N, C)
        n, device = x0.shape[0], x0.device
        w = torch.ones(n, device=device) if weight is None else weight.reshape(-1).float()

        if self.training and self.config.cond_dropout > 0:
            drop = torch.rand(n, device=device, generator=generator) < self.config.cond_dropout
            cond = torch.where(drop[:, None], self.null_cond.to(cond.dtype), cond)

        k = self.config.timestep_samples
        x0, cond, w = x0.repeat(k, 1), cond.repeat(k, 1), w.repeat(k)  # (kN, D), (kN, C), (kN,)
        # noise, interpolation and target in float32 whatever the model dtype (draws independent of dtype)
        t = self._sample_timesteps(k * n, device, generator)
        eps = torch.randn(x0.shape, device=device, generator=generator)
        x0_f = x0.float()
        x_t = (1 - t[:, None]) * eps + t[:, None] * x0_f
        target = x0_f - eps
        pred = self.velocity(x_t.to(x0.dtype), t, cond)
        per_token = (pred.float() - target).pow(2).mean(dim=-1)  # (kN,)
        return (per_token * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)

    # -- sampling --------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        steps: int | None = None,
        guidance_scale: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        uncond: Tensor | None = None,
    ) -> Tensor:
        """Draw latents ``(N, latent_dim)`` for conditions ``cond (N, cond_dim)`` by Euler integration of the
        velocity from t = 0 (noise) to t = 1 (data): ``x <- x + v(x, i/steps) / steps``.

        ``steps`` and ``guidance_scale`` default to the config. With ``guidance_scale != 1`` or an explicit
        ``uncond`` the conditional and unconditional rows run in one batched forward and
        ``v = v_u + s (v_c - v_u)`` (as `guided_velocity`); with 1.0 only the conditional rows run; ``uncond``
        replaces the learned null condition as the unconditional input. ``noise`` gives the starting point (else
        ``temperature * N(0, I)`` from ``generator``, on ``cond``'s device). The state is integrated in float32
        and returned in ``cond``'s dtype. Leading dims other than N are kept.

        Inference fast path (same result as a loop over `velocity` / `guided_velocity` up to float rounding):
        the adaLN input ``y = TimestepEmbedder(t) + cond_embed(cond)`` does not depend on the state and the
        Euler grid fixes every t in advance, so the condition embedding, the timestep embeddings and every
        layer's adaLN modulation are computed once per call, as one matmul per layer over all (step, row)
        pairs (`_modulations`); an Euler step then runs only the state path (`_state_velocity`). At batch 1
        the per-step weight traffic drops from every parameter to the blocks' MLPs and the in/out projections
        (37% of a 1536 x 12 head); the modulation weights are read once per call (per chunk of steps for large
        batches, `SAMPLE_MODULATION_BYTES`) instead of once per step.
        """
        steps = self.config.sample_steps if steps is None else steps
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"FlowHead.sample: steps must be a positive integer, got {steps!r}")
        _check_last_dim(cond, "FlowHead", "cond", "cond_dim", self.config.cond_dim)
        lead = cond.shape[:-1]
        cond_flat = cond.reshape(-1, cond.shape[-1])  # (N, C)
        n, device, dtype = cond_flat.shape[0], cond.device, self.input_proj.weight.dtype  # the head's dtype
        cond_flat = cond_flat.to(dtype)
        guided = scale != 1.0 or uncond is not None
        rows = cond_flat
        if guided:
            if uncond is None:
                uncond_flat = self.null_cond.to(dtype).expand_as(cond_flat)
            else:
                uncond_flat = uncond.reshape(-1, uncond.shape[-1]).to(dtype)
                if uncond_flat.shape != cond_flat.shape:
                    raise ValueError(
                        f"FlowHead: uncond {tuple(uncond.shape)} must have the shape of cond {tuple(cond.shape)}"
                    )
            rows = torch.cat([cond_flat, uncond_flat])  # (2N, C): [cond; uncond] share each step's state
        if noise is None:
            noise = temperature * torch.randn(n, self.config.latent_dim, device=device, generator=generator)
        elif noise.shape != (*lead, self.config.latent_dim):
            raise ValueError(
                f"FlowHead.sample: noise has shape {tuple(noise.shape)}, expected {(*lead, self.config.latent_dim)}"
            )
        x = noise.reshape(n, -1).to(torch.float32, copy=True)  # (N, D); updated in place below

        cond_embedding = self.cond_embed(rows)  # (R, W), R = N or 2N
        dt = 1.0 / steps
        t = torch.arange(steps, device=device, dtype=torch.float64).mul(dt).float()  # (S,): i * dt as in float64
        time_embedding = self.time_embed(t)  # (S, W)
        # modulations of a chunk of steps at a time: (steps x rows) can be large for big batches
        mod_row_bytes = (3 * self.config.depth + 2) * self.config.width * cond_embedding.element_size()
        chunk = max(1, SAMPLE_MODULATION_BYTES // (mod_row_bytes * rows.shape[0]))
        for start in range(0, steps, chunk):
            mods = self._modulations(time_embedding[start : start + chunk], cond_embedding)
            for step_mods in zip(*(mod.unbind(0) for mod in mods)):  # the chunk's steps in order
                v = self._state_velocity(x.to(dtype), step_mods, guided)  # (R, D)
                if guided:
                    v_cond, v_uncond = v.chunk(2)
                    v = v_uncond + scale * (v_cond - v_uncond)
                x.add_(v, alpha=dt)
        return x.to(cond.dtype).reshape(*lead, self.config.latent_dim)

    def _modulations(self, time_embedding: Tensor, cond_embedding: Tensor) -> list[Tensor]:
        """adaLN ``(shift, 1 + scale, gate)`` of every block and ``(shift, 1 + scale)`` of the final layer for
        ``s`` steps x ``R`` rows: a list of ``(s, R, 3 or 2, W)`` tensors, one per layer, from
        ``time_embedding (s, W)`` and ``cond_embedding (R, W)``."""
        s, r, width = time_embedding.shape[0], cond_embedding.shape[0], self.config.width
        y = F.silu(time_embedding[:, None] + cond_embedding[None]).reshape(s * r, width)  # (s R, W)
        layers = [block.adaln_modulation[-1] for block in self.blocks] + [self.final_layer.adaln_modulation[-1]]
        mods = []
        for layer in layers:
            mod = F.linear(y, layer.weight, layer.bias).reshape(s, r, -1, width)  # (s, R, 3 or 2, W)
            mod[:, :, 1] += 1  # `_modulate` multiplies by (1 + scale)
            mods.append(mod)
        return mods

    def _state_velocity(self, x: Tensor, mods: Sequence[Tensor], guided: bool) -> Tensor:
        """The velocity ``(R, D)`` at states ``x (N, D)`` (repeated for the unconditional rows when ``guided``)
        given one step's `_modulations` (``(R, 3 or 2, W)`` each): `velocity` with the adaLN inputs done."""
        h = self.input_proj(torch.cat([x, x]) if guided else x)  # (R, W)
        for block, mod in zip(self.blocks, mods):
            ln, fc1, fc2 = block.in_ln, block.mlp[0], block.mlp[2]
            shift, scale, gate = mod.unbind(1)  # (R, W) each; scale holds 1 + scale
            z = torch.addcmul(shift, F.layer_norm(h, ln.normalized_shape, ln.weight, ln.bias, ln.eps), scale)
            z = F.silu(F.linear(z, fc1.weight, fc1.bias), inplace=True)
            h = torch.addcmul(h, gate, F.linear(z, fc2.weight, fc2.bias))
        final = self.final_layer
        shift, scale = mods[-1].unbind(1)
        z = torch.addcmul(shift, F.layer_norm(h, final.norm_final.normalized_shape, eps=final.norm_final.eps), scale)
        return F.linear(z, final.linear.weight, final.linear.bias)


# ---------------------------------------------------------------------------------------------------------
# Exit head
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ExitHeadConfig:
    """The motion-generation exit head: 5 Linear layers with Swish, one logit (paper §7.2)."""

    hidden_size: int
    """Width of the last-layer motion hidden state it reads (the LLM hidden size)."""
    width: int = 1024
    """Width of the 4 hidden layers."""
    pos_weight: float = 5.0
    """Weight of the positive class in the BCE loss: about one position per motion is positive, so the
    positives need up-weighting (SpeechT5 / ESPnet: 5, MELLE: 20, SLED-TTS: 100)."""
    initial_probability: float | None = None
    """If set, the last bias starts at logit(p) so the initial exit probability is p (e.g. 1 / mean motion length
    in tokens); None keeps PyTorch's default init."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("hidden_size", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"ExitHeadConfig.{name} must be a positive integer, got {value!r}")
        if not self.pos_weight > 0:
            problems.append(f"ExitHeadConfig.pos_weight must be > 0, got {self.pos_weight!r}")
        if self.initial_probability is not None and not 0.0 < self.initial_probability < 1.0:
            problems.append(f"ExitHeadConfig.initial_probability must be in (0, 1), got {self.initial_probability!r}")
        if problems:
            raise ValueError("\n".join(problems))


class ExitHead(nn.Module):
    """``hidden (..., hidden_size)`` -> exit logit ``(...)``: [Linear -> SiLU] x 4 -> Linear(width, 1)."""

    NUM_LINEAR = 5

    def __init__(self, config: ExitHeadConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_dim = config.hidden_size
        for _ in range(self.NUM_LINEAR - 1):
            layers += [nn.Linear(in_dim, config.width), nn.SiLU()]
            in_dim = config.width
        layers.append(nn.Linear(in_dim, 1))
        self.mlp = nn.Sequential(*layers)
        if config.initial_probability is not None:
            p = config.initial_probability
            nn.init.constant_(self.mlp[-1].bias, math.log(p / (1 - p)))

    def forward(self, hidden: Tensor) -> Tensor:
        """Exit logits ``(...)`` for hidden states ``(..., hidden_size)``."""
        _check_last_dim(hidden, "ExitHead", "hidden states", "hidden_size", self.config.hidden_size)
        return self.mlp(hidden.to(self.mlp[0].weight.dtype)).squeeze(-1)  # hidden may be the base's bf16

    def loss(self, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """BCE-with-logits (positive weight ``pos_weight``) averaged over positions where ``mask`` is True.

        ``logits``, ``targets`` (0/1, float or bool) and ``mask`` (bool) share one shape; an all-False mask
        gives 0. Computed in float32.
        """
        if targets.shape != logits.shape or mask.shape != logits.shape:
            raise ValueError(
                f"ExitHead.loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                f"{tuple(mask.shape)} must have the same shape"
            )
        if mask.dtype != torch.bool:
            raise ValueError(f"ExitHead.loss: mask must be a bool tensor, got dtype {mask.dtype}")
        pos_weight = torch.tensor(self.config.pos_weight, device=logits.device)
        per_position = F.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=pos_weight, reduction="none"
        )
        return per_position.masked_fill(~mask, 0.0).sum() / mask.sum().clamp_min(1)

    def exit_probability(self, hidden: Tensor) -> Tensor:
        """``sigmoid(logit)``: probability that the motion ends at each position."""
        return torch.sigmoid(self.forward(hidden))
