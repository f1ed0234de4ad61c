"""Causal continuous motion VAE (paper §3.2, Eq. 2-3; MotionStreamer's causal TAE architecture).

Strictly causal 1D convolutions (left-only zero padding) turn normalised 272-dim motion ``(B, T, 272)`` into
latents ``(B, T / 2**down_t, latent_dim)`` and back. Latent ``i`` depends only on frames ``< 4(i+1)``;
decoded frames ``4i .. 4i+3`` depend only on latents ``<= i`` (``down_t = 2``). Because every layer is causal,
:class:`EncodeStream` / :class:`DecodeStream` can process one chunk at a time with a small per-convolution cache
of past inputs, so each new latent (or each new latent's 4 frames) costs the same at position 10 and 300 and the
result equals the full-sequence pass.

Two variance modes (``VAEConfig.variance``):

* ``"sampled"`` (the paper's robust VAE, Eq. 3): the encoder predicts only ``mu``; ``z = mu + sigma * eps`` with
  ``sigma ~ U(0, sigma_max)`` drawn once per latent token. ``sigma_max`` bounds the **standard deviation** (the
  variance is then in ``[0, sigma_max**2]``): Eq. 3 multiplies ``eps ~ N(0, I)`` by ``sigma ~ U(0, C_sigma)``, so
  the quantity drawn from the uniform is the factor that scales unit noise, i.e. a standard deviation. §3.2/§7.1
  call it "the variance" loosely (the text also names the Gaussian parameters ``(mu, sigma^2)``), but only the
  std reading is consistent with the equation, and it is also how MotionStreamer's ``z = mu + exp(0.5 logvar)
  eps`` is written. One scalar ``sigma`` is drawn per latent token and shared by its channels ("the variance for
  each VAE latent", §7.1).
* ``"predicted"`` (MotionStreamer's classic VAE; the paper's "use [76] VAE" ablation): the encoder predicts
  ``mu`` and ``logvar`` (clamped to [-30, 20] as in MotionStreamer), ``z = mu + exp(0.5 logvar) * eps``, and the
  loss has the Gaussian KL to ``N(0, I)``.

Loss (:meth:`CausalMotionVAE.loss`, Eq. 2): MotionStreamer's "optimal sigma-VAE" Gaussian NLL on all features,
the same NLL on the root dims 0:8 weighted by ``lambda_root``, and ``kl_weight`` times the KL. See the method's
docstring for the normalisation and for what "KL" means in ``sampled`` mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: MotionStreamer clamps the predicted log-variance to this range
LOGVAR_RANGE = (-30.0, 20.0)
#: sigma-VAE: log sigma is soft-clipped from below at this value (Rybkin et al.; MotionStreamer ReConsLoss)
MIN_LOG_SIGMA = -6.0
#: root representation: root xz velocity (0:2) + heading angular velocity 6D (2:8)
ROOT_DIMS = slice(0, 8)


@dataclass
class VAEConfig:
    """Architecture of :class:`CausalMotionVAE` (defaults = paper size; tiny sizes come from YAML)."""

    feature_dim: int = 272
    """Per-frame motion feature size (272-dim representation)."""
    width: int = 1024
    """Channels of every hidden convolution (1024 in MotionStreamer / the paper)."""
    depth: int = 3
    """Residual blocks per stage; block ``i`` has dilation ``dilation_growth**i``, applied largest first."""
    dilation_growth: int = 3
    """Dilation growth factor of the residual stacks (dilations 9, 3, 1 for depth 3)."""
    down_t: int = 2
    """Number of stride-2 stages; the temporal downsampling is ``2**down_t`` (4 in the paper)."""
    latent_dim: int = 32
    """Channels of each latent token (paper default 32; Table 2 also has 16 and 64)."""
    variance: Literal["sampled", "predicted"] = "sampled"
    """``sampled``: encoder predicts mu only, sigma ~ U(0, sigma_max) (paper); ``predicted``: mu + logvar + KL."""
    sigma_max: float = 0.01
    """Upper end C_sigma of the uniform range of the latent noise standard deviation (``sampled`` mode)."""

    def __post_init__(self) -> None:
        for name in ("feature_dim", "width", "depth", "dilation_growth", "down_t", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive integer, got {value!r}")
        if self.variance not in ("sampled", "predicted"):
            raise ValueError(f"VAEConfig.variance must be 'sampled' or 'predicted', got {self.variance!r}")
        if not self.sigma_max >= 0:
            raise ValueError(f"VAEConfig.sigma_max must be >= 0, got {self.sigma_max!r}")

    @property
    def downsample(self) -> int:
        """Frames per latent token (the paper's T.Down)."""
        return 2**self.down_t

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) for the stage handoff."""
        return asdict(self)


@dataclass
class VAEEncoding:
    """Posterior parameters per latent token."""

    mu: Tensor
    """(B, N, latent_dim) means."""
    logvar: Tensor | None
    """(B, N, latent_dim) predicted log-variances (``predicted`` mode) or None (``sampled`` mode)."""
    lengths: Tensor | None = None
    """(B,) number of valid latent tokens per clip, ``ceil(frames / downsample)``, or None (all valid)."""


@dataclass
class VAEOutput:
    """Result of :meth:`CausalMotionVAE.forward`."""

    recon: Tensor
    """(B, T, feature_dim) reconstruction (normalised features)."""
    mu: Tensor
    """(B, N, latent_dim)."""
    logvar: Tensor | None
    """(B, N, latent_dim) or None in ``sampled`` mode."""
    z: Tensor
    """(B, N, latent_dim) the latents that were decoded."""


# --------------------------------------------------------------------------------------------------------------
# building blocks; each stateful module has ``forward`` (whole sequence) and ``step`` (next chunk, with a cache)

#: streaming cache: one buffer of not-yet-consumed (left-padded) inputs per causal convolution
StreamCache = dict[nn.Module, Tensor]


class CausalConv1d(nn.Conv1d):
    """Conv1d with ``(k-1)*d + 1 - s`` zero frames padded on the left only, so output ``j`` sees inputs ``< s(j+1)``.

    For an input length divisible by the stride the output length is ``T / s``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, padding=0)
        self.span = (kernel_size - 1) * dilation + 1
        self.left_pad = self.span - stride
        assert self.left_pad >= 0, "causal conv needs kernel span >= stride"

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        """Outputs made computable by the new inputs ``x`` (B, C, t); may be empty (B, C_out, 0)."""
        past = cache.get(self)
        if past is None:  # the stream starts like the full pass: with the zero left padding
            past = x.new_zeros(x.shape[0], self.in_channels, self.left_pad)
        buffer = torch.cat([past, x], dim=-1)
        stride = self.stride[0]
        n_out = (buffer.shape[-1] - self.span) // stride + 1 if buffer.shape[-1] >= self.span else 0
        # keep only what future outputs still need: at most span - 1 frames, so the cost per step is constant
        cache[self] = buffer[..., n_out * stride :]
        if n_out == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return super().forward(buffer[..., : (n_out - 1) * stride + self.span])


class CausalResBlock(nn.Module):
    """Pre-activation residual block ``x + conv1x1(relu(conv_k3_dil(relu(x))))`` (MotionStreamer, norm = None)."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = CausalConv1d(width, width, 3, dilation=dilation)
        self.proj = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.relu(self.conv(F.relu(x))))

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        h = self.conv.step(F.relu(x), cache)
        if h.shape[-1] == 0:  # not enough new frames for an output yet (Conv1d rejects empty inputs)
            return h
        return x + self.proj(F.relu(h))


class CausalResStack(nn.Sequential):
    """``depth`` residual blocks with dilations ``growth**i`` in reversed order (largest first)."""

    def __init__(self, width: int, depth: int, growth: int):
        super().__init__(*[CausalResBlock(width, growth**i) for i in reversed(range(depth))])

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        for block in self:
            x = block.step(x, cache)
        return x


class Upsample2x(nn.Module):
    """Nearest-neighbour x2 in time: frame ``p`` copies input ``p // 2`` (stateless, so trivially causal)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(2, dim=-1)

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        return self(x)


class ReLU(nn.ReLU):
    """ReLU with the streaming ``step`` interface."""

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        return self(x)


class StreamingSequential(nn.Sequential):
    """Sequential whose children all have ``step(x, cache)``."""

    def step(self, x: Tensor, cache: StreamCache) -> Tensor:
        for module in self:
            x = module.step(x, cache)
        return x


def _encoder(cfg: VAEConfig) -> StreamingSequential:
    w = cfg.width
    layers: list[nn.Module] = [CausalConv1d(cfg.feature_dim, w, 3), ReLU()]
    for _ in range(cfg.down_t):
        layers += [CausalConv1d(w, w, 4, stride=2), CausalResStack(w, cfg.depth, cfg.dilation_growth)]
    layers.append(CausalConv1d(w, w, 3))  # no activation: a linear read-out follows
    return StreamingSequential(*layers)


def _decoder(cfg: VAEConfig) -> StreamingSequential:
    w = cfg.width
    layers: list[nn.Module] = [CausalConv1d(w, w, 3), ReLU()]
    for _ in range(cfg.down_t):
        layers += [CausalResStack(w, cfg.depth, cfg.dilation_growth), Upsample2x(), CausalConv1d(w, w, 3)]
    layers += [CausalConv1d(w, w, 3), ReLU(), CausalConv1d(w, cfg.feature_dim, 3)]
    return StreamingSequential(*layers)


# --------------------------------------------------------------------------------------------------------------


class CausalMotionVAE(nn.Module):
    """Causal continuous motion VAE: normalised motion (B, T, 272) <-> latents (B, T / 4, latent_dim).

    Inputs are normalised features (``(x - Mean) / Std``); ``T`` must be a multiple of ``config.downsample``
    (crop clips with ``llamo.data.humanml272.crop_to_multiple``, MotionStreamer's convention).
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = _encoder(config)
        n_out = config.latent_dim * (2 if config.variance == "predicted" else 1)
        self.to_latent = nn.Linear(config.width, n_out)
        self.from_latent = nn.Linear(config.latent_dim, config.width)
        self.decoder = _decoder(config)

    # ---- validation ---------------------------------------------------------------------------------------
    def _check_motion(self, x: Tensor, what: str = "x", multiple: bool = True, finite: bool = True) -> None:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.feature_dim:
            raise ValueError(
                f"{what} must have shape (B, T, {cfg.feature_dim}) (normalised motion features), got "
                f"{tuple(x.shape)}; add a batch dimension with x[None] or check feature_dim"
            )
        if multiple and x.shape[1] % cfg.downsample:
            raise ValueError(
                f"{what} has T={x.shape[1]} frames, not a multiple of the temporal downsampling {cfg.downsample}; "
                f"crop it (crop_to_multiple) or pad it and pass lengths"
            )
        if finite and not torch.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or Inf values (in valid frames); clean the input motion")

    def _check_latents(self, z: Tensor) -> None:
        if z.ndim != 3 or z.shape[-1] != self.config.latent_dim:
            raise ValueError(
                f"latents must have shape (B, N, {self.config.latent_dim}), got {tuple(z.shape)}; "
                f"check VAEConfig.latent_dim"
            )
        if not torch.isfinite(z).all():
            raise ValueError("latents contain NaN or Inf values")

    def _latents_from_hidden(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.to_latent(h.transpose(1, 2))  # (B, N, latent or 2*latent)
        if self.config.variance == "sampled":
            return out, None
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    # ---- whole-sequence API ---------------------------------------------------------------------------------
    def encode(self, x: Tensor, lengths: Tensor | None = None) -> VAEEncoding:
        """Encode normalised motion ``x`` (B, T, feature_dim) into per-token posterior parameters.

        ``lengths`` (B,) gives each clip's valid frames when ``x`` is a padded batch. Frames at and after a
        clip's length are replaced by zeros (the mean pose in normalised space) before encoding, so each clip's
        latents equal those of the clip encoded alone (zero-padded to a multiple of 4 if its length is not one);
        tokens past ``ceil(length / 4)`` are set to zero.
        """
        self._check_motion(x, finite=False)
        if lengths is not None:
            lengths = lengths.to(x.device)
            mask = padding_mask(lengths, x.shape[1])  # (B, T)
            if mask.shape[0] != x.shape[0]:
                raise ValueError(f"lengths has {mask.shape[0]} entries but x has batch size {x.shape[0]}")
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        self._check_motion(x)
        h = self.encoder(x.transpose(1, 2))  # (B, width, N)
        mu, logvar = self._latents_from_hidden(h)
        latent_lengths = None
        if lengths is not None:
            latent_lengths = (lengths + self.config.downsample - 1) // self.config.downsample
            keep = padding_mask(latent_lengths, mu.shape[1])[..., None]  # (B, N, 1)
            mu = mu * keep
            logvar = None if logvar is None else logvar * keep
        return VAEEncoding(mu=mu, logvar=logvar, lengths=latent_lengths)

    def sample(self, encoding: VAEEncoding, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``z`` (B, N, latent_dim) from the posterior.

        ``sampled``: ``z = mu + sigma * eps`` with one ``sigma ~ U(0, sigma_max)`` per latent token (a standard
        deviation, see the module docstring); ``predicted``: ``z = mu + exp(0.5 logvar) * eps``.
        """
        mu = encoding.mu
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        if self.config.variance == "sampled":
            sigma = torch.rand((*mu.shape[:-1], 1), generator=generator, dtype=mu.dtype, device=mu.device)
            return mu + sigma * self.config.sigma_max * eps
        if encoding.logvar is None:
            raise ValueError("predicted-variance VAE needs encoding.logvar; got None (was it encoded in sampled mode?)")
        return mu + torch.exp(0.5 * encoding.logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        """Decode latents (B, N, latent_dim) into normalised motion (B, downsample * N, feature_dim)."""
        self._check_latents(z)
        h = self.from_latent(z).transpose(1, 2)  # (B, width, N)
        return self.decoder(h).transpose(1, 2)  # (B, 4N, feature_dim)

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> VAEOutput:
        """Encode, draw ``z`` (or use ``mu`` when ``sample=False``) and decode.

        MotionStreamer also decodes a sampled ``z`` when it measures reconstruction, hence ``sample=True``.
        """
        encoding = self.encode(x, lengths)
        z = self.sample(encoding, generator) if sample else encoding.mu
        return VAEOutput(recon=self.decode(z), mu=encoding.mu, logvar=encoding.logvar, z=z)

    def loss(self, x: Tensor, out: VAEOutput, mask: Tensor, lambda_root: float, kl_weight: float) -> dict[str, Tensor]:
        """Eq. 2: ``loss = recon + kl_weight * kl + lambda_root * root`` over the valid frames of ``mask`` (B, T).

        * ``recon`` / ``root``: MotionStreamer's "optimal sigma-VAE" Gaussian NLL. One ``sigma`` per term is the
          RMS error of the batch's valid elements (not detached; ``log sigma`` soft-clipped from below at -6), the
          per-element NLL ``0.5 ((x - x_hat) / sigma)^2 + log sigma + 0.5 log 2 pi`` is summed over valid frames
          and dims (all dims; dims 0:8 for ``root``). Chosen over plain MSE because it is the paper's objective
          ([76]) and it balances reconstruction against the KL without a hand-tuned weight.
        * ``kl``: ``predicted`` mode: ``-0.5 sum(1 + logvar - mu^2 - exp(logvar))`` over valid tokens and
          channels. ``sampled`` mode: sigma is not a network output, so the KL of ``N(mu, sigma^2)`` to ``N(0, I)``
          reduces (up to a constant) to ``0.5 sum(mu^2)``; keeping it anchors the latent scale, without which
          the encoder could grow ``mu`` until the fixed noise ``sigma <= sigma_max`` no longer matters.
        * Normalisation: every sum is per clip and averaged over the batch (the per-sample ELBO). MotionStreamer
          sums the NLL over the batch too but averages the KL, i.e. its KL weight is effectively
          ``1 / per-device batch``; set ``kl_weight`` accordingly to reproduce it.

        Returns ``loss`` (to minimise) and the detached parts ``recon``, ``root``, ``kl``, ``mse`` (plain mean
        squared error over valid elements, for logging).
        """
        self._check_motion(x, multiple=False, finite=False)
        if out.recon.shape != x.shape:
            raise ValueError(f"reconstruction shape {tuple(out.recon.shape)} differs from input {tuple(x.shape)}")
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if not torch.isfinite(x[mask]).all():
            raise ValueError("x contains NaN or Inf values in valid frames; clean the input motion")
        batch = x.shape[0]
        diff = (out.recon - x)[mask]  # (valid frames, feature_dim)
        recon = _sigma_vae_nll(diff) / batch
        root = _sigma_vae_nll(diff[:, ROOT_DIMS]) / batch

        n_tokens = out.mu.shape[1]
        down = self.config.downsample
        token_mask = F.pad(mask, (0, n_tokens * down - mask.shape[1])).view(batch, n_tokens, down).any(-1)
        mu = out.mu[token_mask]  # (valid tokens, latent_dim)
        if out.logvar is None:
            kl = 0.5 * mu.pow(2).sum() / batch
        else:
            logvar = out.logvar[token_mask]
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / batch
        loss = recon + kl_weight * kl + lambda_root * root
        return {
            "loss": loss,
            "recon": recon.detach(),
            "root": root.detach(),
            "kl": kl.detach(),
            "mse": diff.detach().pow(2).mean(),
        }

    # ---- streaming ----------------------------------------------------------------------------------------
    def encode_stream(self) -> EncodeStream:
        """A stateful encoder fed frames chunk by chunk (any chunk size); see :class:`EncodeStream`."""
        return EncodeStream(self)

    def decode_stream(self) -> DecodeStream:
        """A stateful decoder fed latents chunk by chunk; see :class:`DecodeStream`."""
        return DecodeStream(self)


class EncodeStream:
    """Incremental encoder: ``step(frames (B, t, feature_dim)) -> VAEEncoding`` of the newly completed tokens.

    Token ``i`` is emitted as soon as frame ``4i+3`` has arrived; concatenating the outputs of all steps equals
    :meth:`CausalMotionVAE.encode` of the concatenated frames. Each convolution caches at most ``span - 1`` past
    inputs, so the cost per token does not grow with the position in the sequence.
    """

    def __init__(self, vae: CausalMotionVAE):
        self.vae = vae
        self.cache: StreamCache = {}

    def step(self, frames: Tensor) -> VAEEncoding:
        self.vae._check_motion(frames, what="frames", multiple=False)
        h = self.vae.encoder.step(frames.transpose(1, 2), self.cache)  # (B, width, new tokens)
        mu, logvar = self.vae._latents_from_hidden(h)
        return VAEEncoding(mu=mu, logvar=logvar)


class DecodeStream:
    """Incremental decoder: ``step(z (B, k, latent_dim)) -> frames (B, 4k, feature_dim)``.

    Concatenating the outputs equals :meth:`CausalMotionVAE.decode` of the concatenated latents; the cost per
    latent is constant (bounded per-convolution caches), unlike re-decoding the whole prefix every step.
    """

    def __init__(self, vae: CausalMotionVAE):
        self.vae = vae
        self.cache: StreamCache = {}

    def step(self, z: Tensor) -> Tensor:
        self.vae._check_latents(z)
        h = self.vae.from_latent(z).transpose(1, 2)  # (B, width, k)
        return self.vae.decoder.step(h, self.cache).transpose(1, 2)  # (B, 4k, feature_dim)

    def select(self, rows: Tensor) -> None:
        """Keep only batch ``rows`` (indices) of the streams: finished sequences leave the batch."""
        # every cached causal-conv buffer is (B, C, t): keeping rows keeps those streams' state
        self.cache = {module: buffer[rows] for module, buffer in self.cache.items()}


def padding_mask(lengths: Tensor, max_len: int, name: str = "lengths") -> Tensor:
    """(B, max_len) bool mask, True on the first ``lengths[b]`` positions; ValueError for bad lengths."""
    if lengths.ndim != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.numel() and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"{name} must lie in [1, {max_len}] (the padded length), got {lengths.tolist()}")
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def _sigma_vae_nll(diff: Tensor) -> Tensor:
    """Summed Gaussian NLL of residuals ``diff`` with the optimal shared sigma (soft-clipped log sigma)."""
    log_sigma = 0.5 * torch.log(diff.pow(2).mean().clamp_min(1e-12))  # clamp: finite at exact fit
    log_sigma = MIN_LOG_SIGMA + F.softplus(log_sigma - MIN_LOG_SIGMA)
    nll = 0.5 * (diff * torch.exp(-log_sigma)).pow(2) + log_sigma + 0.5 * math.log(2 * math.pi)
    return nll.sum()
