"""Causal motion VAE: shapes, streaming == full pass, causality, padding masks, sampling, loss, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llamo.core.vae import (
    CausalConv1d,
    CausalMotionVAE,
    VAEConfig,
    VAEEncoding,
    VAEOutput,
)

F = 272


def tiny(variance: str = "sampled", latent_dim: int = 8, **kwargs) -> CausalMotionVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(width=16, depth=2, latent_dim=latent_dim, variance=variance, **kwargs)
    return CausalMotionVAE(cfg).eval()


@pytest.fixture(params=["sampled", "predicted"])
def vae(request: pytest.FixtureRequest) -> CausalMotionVAE:
    return tiny(request.param)


def random_chunks(total: int, rng: np.random.Generator, max_chunk: int) -> list[int]:
    sizes = []
    while total > 0:
        sizes.append(int(min(total, rng.integers(1, max_chunk + 1))))
        total -= sizes[-1]
    return sizes


def test_shapes(vae: CausalMotionVAE) -> None:
    x = torch.randn(3, 40, F)
    out = vae(x)
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == (3, 40, F)
    assert out.mu.shape == out.z.shape == (3, 10, 8)
    if vae.config.variance == "predicted":
        assert out.logvar is not None and out.logvar.shape == (3, 10, 8)
    else:
        assert out.logvar is None
    assert vae.decode(torch.randn(2, 5, 8)).shape == (2, 20, F)


def test_paper_size_parameter_count() -> None:
    # MotionStreamer's TAE at width 1024: encoder ~37.6 M, decoder ~38.6 M (hand count in the reference notes)
    with torch.device("meta"):
        model = CausalMotionVAE(VAEConfig(width=1024, depth=3, latent_dim=16, variance="predicted"))
    enc = sum(p.numel() for m in (model.encoder, model.to_latent) for p in m.parameters())
    dec = sum(p.numel() for m in (model.from_latent, model.decoder) for p in m.parameters())
    assert enc == pytest.approx(37.6e6, rel=2e-3)
    assert dec == pytest.approx(38.6e6, rel=2e-3)


@pytest.mark.parametrize("frames", [4, 28, 52, 100])
def test_encode_stream_equals_full(vae: CausalMotionVAE, frames: int) -> None:
    rng = np.random.default_rng(frames)
    x = torch.randn(2, frames, F)
    with torch.no_grad():
        full = vae.encode(x)
        stream = vae.encode_stream()
        parts, start = [], 0
        for size in random_chunks(frames, rng, max_chunk=9):  # chunk sizes unrelated to the 4-frame stride
            parts.append(stream.step(x[:, start : start + size]))
            start += size
    mu = torch.cat([p.mu for p in parts], dim=1)
    assert mu.shape == full.mu.shape
    torch.testing.assert_close(mu, full.mu, atol=1e-5, rtol=0)
    if vae.config.variance == "predicted":
        torch.testing.assert_close(torch.cat([p.logvar for p in parts], 1), full.logvar, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tokens", [1, 7, 13, 30])
def test_decode_stream_equals_full(vae: CausalMotionVAE, tokens: int) -> None:
    rng = np.random.default_rng(tokens)
    z = torch.randn(2, tokens, 8)
    with torch.no_grad():
        full = vae.decode(z)
        stream = vae.decode_stream()
        parts, start = [], 0
        for size in random_chunks(tokens, rng, max_chunk=3):
            frames = stream.step(z[:, start : start + size])
            assert frames.shape == (2, 4 * size, F)
            parts.append(frames)
            start += size
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_stream_cache_is_bounded() -> None:
    """Constant cost per latent: every conv keeps at most span - 1 past inputs, whatever the position."""
    vae = tiny()
    with torch.no_grad():
        dec, enc = vae.decode_stream(), vae.encode_stream()
        sizes = []
        for i in range(60):
            dec.step(torch.randn(1, 1, 8))
            enc.step(torch.randn(1, 4, F))
            if i in (10, 59):
                sizes.append({id(m): t.shape[-1] for m, t in (*dec.cache.items(), *enc.cache.items())})
    assert sizes[0] == sizes[1]
    for cache in (dec.cache, enc.cache):
        for module, buffer in cache.items():
            assert isinstance(module, CausalConv1d)
            assert buffer.shape[-1] <= module.span - 1


def test_encoder_causality(vae: CausalMotionVAE) -> None:
    x = torch.randn(1, 32, F)
    with torch.no_grad():
        base = vae.encode(x).mu
        for i in range(base.shape[1] - 1):
            perturbed = x.clone()
            perturbed[:, 4 * (i + 1) :] += 5 * torch.randn_like(perturbed[:, 4 * (i + 1) :])
            mu = vae.encode(perturbed).mu
            torch.testing.assert_close(mu[:, : i + 1], base[:, : i + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(mu[:, i + 1], base[:, i + 1], atol=1e-3)  # the test can detect a leak


def test_decoder_causality(vae: CausalMotionVAE) -> None:
    z = torch.randn(1, 8, 8)
    with torch.no_grad():
        base = vae.decode(z)
        for i in range(z.shape[1] - 1):
            perturbed = z.clone()
            perturbed[:, i + 1 :] += 5 * torch.randn_like(perturbed[:, i + 1 :])
            frames = vae.decode(perturbed)
            torch.testing.assert_close(frames[:, : 4 * (i + 1)], base[:, : 4 * (i + 1)], atol=1e-6, rtol=0)
            assert not torch.allclose(frames[:, 4 * (i + 1) : 4 * (i + 2)], base[:, 4 * (i + 1) : 4 * (i + 2)])


def test_padded_batch_equals_single_clips(vae: CausalMotionVAE) -> None:
    lengths = torch.tensor([32, 20, 8, 10])
    x = torch.full((4, 32, F), float("nan"))  # padding content must not matter, not even NaN
    clips = [torch.randn(1, int(n), F) for n in lengths]
    for b, clip in enumerate(clips):
        x[b, : clip.shape[1]] = clip[0]
    with torch.no_grad():
        batch = vae.encode(x, lengths)
        assert batch.lengths.tolist() == [8, 5, 2, 3]
        recon = vae.decode(batch.mu)
        for b, clip in enumerate(clips):
            n = clip.shape[1]
            padded = torch.cat([clip, clip.new_zeros(1, (-n) % 4, F)], dim=1)  # a lone clip must be a multiple of 4
            single = vae.encode(padded)
            k = single.mu.shape[1]
            torch.testing.assert_close(batch.mu[b : b + 1, :k], single.mu, atol=1e-5, rtol=0)
            assert torch.all(batch.mu[b, k:] == 0)
            if single.logvar is not None:
                torch.testing.assert_close(batch.logvar[b : b + 1, :k], single.logvar, atol=1e-5, rtol=0)
            torch.testing.assert_close(recon[b : b + 1, :n], vae.decode(single.mu)[:, :n], atol=1e-5, rtol=0)


def test_loss_ignores_padding(vae: CausalMotionVAE) -> None:
    lengths = torch.tensor([32, 12])
    mask = torch.arange(32) < lengths[:, None]
    x = torch.randn(2, 32, F)
    gen = torch.Generator().manual_seed(1)
    out = vae(x, lengths, generator=gen)
    base = vae.loss(x, out, mask, lambda_root=7.0, kl_weight=1.0)
    x2, recon2 = x.clone(), out.recon.detach().clone()
    x2[1, 12:] = float("nan")
    recon2[1, 12:] = 1e3
    out2 = VAEOutput(recon=recon2, mu=out.mu, logvar=out.logvar, z=out.z)
    again = vae.loss(x2, out2, mask, lambda_root=7.0, kl_weight=1.0)
    for key in ("loss", "recon", "root", "kl", "mse"):
        torch.testing.assert_close(again[key].detach(), base[key].detach())


def _np_sigma_nll(diff: np.ndarray) -> float:
    log_sigma = 0.5 * np.log(np.mean(diff**2))
    log_sigma = -6 + np.log1p(np.exp(log_sigma + 6))
    return float(np.sum(0.5 * (diff / np.exp(log_sigma)) ** 2 + log_sigma + 0.5 * np.log(2 * np.pi)))


@pytest.mark.parametrize("variance", ["sampled", "predicted"])
def test_loss_matches_reference(variance: str) -> None:
    vae = tiny(variance)
    x = torch.randn(3, 16, F, dtype=torch.float64)
    vae = vae.double()
    out = vae(x)
    mask = torch.ones(3, 16, dtype=torch.bool)
    parts = vae.loss(x, out, mask, lambda_root=7.0, kl_weight=0.5)
    diff = (out.recon - x).detach().numpy().reshape(-1, F)
    mu = out.mu.detach().numpy()
    recon, root = _np_sigma_nll(diff) / 3, _np_sigma_nll(diff[:, :8]) / 3
    if variance == "predicted":
        lv = out.logvar.detach().numpy()
        kl = -0.5 * np.sum(1 + lv - mu**2 - np.exp(lv)) / 3
    else:
        kl = 0.5 * np.sum(mu**2) / 3
    assert parts["recon"].item() == pytest.approx(recon, rel=1e-9)
    assert parts["root"].item() == pytest.approx(root, rel=1e-9)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-9)
    assert parts["loss"].item() == pytest.approx(recon + 0.5 * kl + 7.0 * root, rel=1e-9)
    assert parts["mse"].item() == pytest.approx(np.mean(diff**2), rel=1e-9)


def test_sampled_sigma_is_a_std_in_range() -> None:
    vae = tiny("sampled", sigma_max=0.01)
    mu = torch.zeros(4, 200, 512)
    z = vae.sample(VAEEncoding(mu=mu, logvar=None), generator=torch.Generator().manual_seed(0))
    per_token_std = z.std(dim=-1)  # one sigma per latent token, shared by its channels
    assert per_token_std.max() < 0.01 * 1.12
    assert per_token_std.mean().item() == pytest.approx(0.005, rel=0.05)  # E[U(0, 0.01)] = 0.005
    assert per_token_std.min() < 0.0005  # the range starts at 0


def test_predicted_sampling_uses_logvar() -> None:
    vae = tiny("predicted")
    mu = torch.full((2, 100, 8), 3.0)
    logvar = torch.full_like(mu, math.log(0.25))
    z = vae.sample(VAEEncoding(mu=mu, logvar=logvar), generator=torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.05)
    assert z.std().item() == pytest.approx(0.5, rel=0.05)


def test_training_reduces_loss() -> None:
    vae = tiny("sampled").train()
    # smooth low-rank motion-like signal (white noise would be incompressible)
    t = torch.linspace(0, 3, 32)[None, :, None]
    x = torch.sin(t * torch.rand(4, 1, 6) * 4 + torch.rand(4, 1, 6) * 6) @ torch.randn(6, F)
    mask = torch.ones(4, 32, dtype=torch.bool)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        parts = vae.loss(x, vae(x), mask, lambda_root=7.0, kl_weight=1.0)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["mse"].item())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_input_raises() -> None:
    vae = tiny()
    with pytest.raises(ValueError, match=r"shape \(B, T, 272\)"):
        vae.encode(torch.randn(2, 16, 263))
    with pytest.raises(ValueError, match="x\\[None\\]"):
        vae.encode(torch.randn(16, 272))
    x = torch.randn(2, 16, F)
    x[1, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vae.encode(x)
    with pytest.raises(ValueError, match="not a multiple of the temporal downsampling 4"):
        vae.encode(torch.randn(1, 18, F))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 16\]"):
        vae.encode(torch.randn(2, 16, F), torch.tensor([16, 17]))
    with pytest.raises(ValueError, match="1-D integer"):
        vae.encode(torch.randn(2, 16, F), torch.tensor([16.0, 8.0]))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, N, 8\)"):
        vae.decode(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="NaN"):
        vae.decode_stream().step(torch.full((1, 1, 8), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        vae.encode_stream().step(torch.full((1, 4, F), float("inf")))
    with pytest.raises(ValueError, match="variance must be 'sampled' or 'predicted'"):
        VAEConfig(variance="learned")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        VAEConfig(width=0)
