"""VAE benchmark (not a test): encode+decode throughput and streaming-decode cost per latent.

    python -m benchmarks.vae            # or `make bench`

Prints frames/s of a full encode+decode for the paper-size (width 1024) and demo-size VAE, and the cost of
one streamed latent at positions 10 and 300 with the cached streaming decoder, against MotionStreamer's way
(re-decode the whole latent prefix every step), with their ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from llamo.core.vae import CausalMotionVAE, VAEConfig

SIZES = {"paper (w1024)": VAEConfig(width=1024), "demo (w128)": VAEConfig(width=128, depth=2)}


def _time(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def streamed_latent_cost(vae: CausalMotionVAE, position: int, repeats: int = 20) -> tuple[float, float]:
    """Seconds for latent number ``position``: (cached stream step, re-decode of the whole prefix)."""
    z = torch.randn(1, position + 1, vae.config.latent_dim)
    stream = vae.decode_stream()
    stream.step(z[:, :position])  # fill the caches with the prefix
    t_stream = float("inf")
    for _ in range(repeats):
        saved = {k: v.clone() for k, v in stream.cache.items()}
        t0 = time.perf_counter()
        stream.step(z[:, position : position + 1])
        t_stream = min(t_stream, time.perf_counter() - t0)
        stream.cache = saved
    t_full = _time(lambda: vae.decode(z[:, : position + 1]), repeats=3)
    return t_stream, t_full


def main() -> None:
    torch.manual_seed(0)
    print(f"\n## VAE (CPU threads: {torch.get_num_threads()})\n")
    print(
        "| size | params | encode+decode 300 frames x8 | frames/s | stream @10 | re-decode @10 | stream @300 "
        "| re-decode @300 | ratio @300 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg in SIZES.items():
        vae = CausalMotionVAE(cfg).eval()
        params = sum(p.numel() for p in vae.parameters()) / 1e6
        x = torch.randn(8, 300, cfg.feature_dim)
        with torch.no_grad():
            t = _time(lambda vae=vae, x=x: vae.decode(vae.encode(x).mu), repeats=2)
        s10, f10 = streamed_latent_cost(vae, 10)
        s300, f300 = streamed_latent_cost(vae, 300)
        print(
            f"| {name} | {params:.1f} M | {t * 1e3:.0f} ms | {8 * 300 / t:,.0f} | {s10 * 1e3:.2f} ms | "
            f"{f10 * 1e3:.2f} ms | {s300 * 1e3:.2f} ms | {f300 * 1e3:.1f} ms | {f300 / s300:.1f}x |"
        )
    print(
        "\nstream @N: one new latent (4 frames) with the cached decoder; flat in N is the target. "
        "re-decode @N: decode all N+1 latents again (MotionStreamer)."
    )


if __name__ == "__main__":
    main()
