"""Streaming-generation benchmark (not a test; paper Fig. 5): the cost of one motion token and frames/s.

    python -m llamo.bench_generation [--sizes demo 1b] [--dtypes float32 bfloat16] [--layers-1b 4]   # or `make bench`

Per size and dtype, with random weights (timings do not depend on the values), one table:

- per motion token (batch 1, position 10): backbone step (one motion token through the MoT motion branch with
  the KV cache), flow-head sampling at 10/25/50 Euler steps (no CFG, the configs' guidance 1.0), exit head,
  streaming VAE decode of 4 frames, de-normalisation + joint recovery, and the total at 50 steps;
- frames/s per stream at batch 1/4/8 from the component times at that batch (``4 / total``), and end to end
  with `stream_motion` (SmolLM2 tokenizer, exit head disabled; the first token, which holds the prefill, is
  not timed; demo size only unless ``--e2e-batches-1b``, to stay within the time bound) when the tokenizer is
  prepared;
- KV-cached step vs recomputing the whole sequence (prompt + 75 latents = 300 frames), target >= 10x;
- the cost of a token at positions 10 and 75 (target: flat);
- one Euler step of the flow head vs its memory-bandwidth floor (parameter bytes / measured copy bandwidth; a
  batch-1 step must read every weight once), target within 1.3x.

Sizes: ``demo`` = SmolLM2-135M-Instruct's shape (30 layers, 576 wide) with the heads of
experiments/model/smollm2.yaml and the VAE of experiments/vae.yaml; ``1b`` = Llama-3.2-1B's shape with the
paper-size heads of experiments/model/1b.yaml (flow head 1536 x 12) and the paper-size VAE (width 1024), but only
``--layers-1b`` of its 16 decoder layers (a 2-core CPU cannot run the full model within the time bound; per-layer
costs are identical, so backbone rows scale by 16 / layers; the table prints that estimate). Every time is the
fastest of ``--repeats`` runs (other jobs on a shared machine only ever add time); ``--threads`` defaults to 1
because 2 OpenMP threads competing with other processes on a shared 2-core machine make timings erratic.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from llamo.bench_mot import LLAMA_1B_SHAPE, SMOLLM2_SHAPE
from llamo.core.generation import JointTracker, stream_motion
from llamo.core.llm import LLMConfig, _is_prepared, load_tokenizer, smollm2_dir
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.core.vae import CausalMotionVAE, VAEConfig
from llamo.data.format import SequenceFormatter
from llamo.motion.normalization import Normalizer

MODEL_YAMLS = {"demo": Path("experiments/model/smollm2.yaml"), "1b": Path("experiments/model/1b.yaml")}
VAE_CONFIGS = {"demo": VAEConfig(width=128, depth=2), "1b": VAEConfig(width=1024, depth=3)}
PROMPT_TOKENS = 24  # a T2M_INSTRUCTION prompt with a short caption, [BOM] included
FLOW_STEPS = (10, 25, 50)
BATCHES = (1, 4, 8)
FPS = 30.0
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _best(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` (seconds) after ``warmup`` calls.

    The minimum, not the mean: on a machine shared with other jobs, slower runs measure the other jobs.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class CopyBandwidth:
    """Bytes/s of a large tensor copy (read + write counted), far larger than any cache."""

    def __init__(self, megabytes: int = 256) -> None:
        self.src = torch.ones(megabytes * 2**20 // 4)
        self.dst = torch.empty_like(self.src)

    def measure(self, repeats: int = 3) -> float:
        seconds = _best(lambda: self.dst.copy_(self.src), repeats)
        return 2 * self.src.numel() * self.src.element_size() / seconds


def _model(config: LLaMoConfig, size: str, dtype: str, layers_1b: int) -> LLaMo:
    shape = SMOLLM2_SHAPE if size == "demo" else {**LLAMA_1B_SHAPE, "num_hidden_layers": layers_1b}
    config.llm = LLMConfig(config=dict(shape), dtype=dtype)
    torch.manual_seed(0)
    model = LLaMo(config).eval().requires_grad_(False)
    with torch.no_grad():  # zero-initialised head layers would make some kernels trivially cheap
        for p in model.flow_head.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.02)
    return model


class _Timer:
    """Component timings of one model at one dtype."""

    def __init__(self, model: LLaMo, vae: CausalMotionVAE, repeats: int) -> None:
        self.model, self.vae, self.repeats = model, vae, repeats
        self.dtype = next(model.parameters()).dtype
        self.vocab = model.base_vocab_size
        gen = torch.Generator().manual_seed(0)
        self.prompt = torch.randint(0, self.vocab, (1, PROMPT_TOKENS), generator=gen)
        self.prompt[0, -1] = model.bom_id
        self.latents = torch.randn(80, model.config.latent_dim, generator=gen).to(self.dtype)

    def _sequence(self, batch: int, motion: int) -> tuple[Tensor, Tensor, Tensor]:
        ids = torch.cat([self.prompt, torch.zeros(1, motion, dtype=torch.long)], dim=1).expand(batch, -1)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, PROMPT_TOKENS:] = True
        return ids, mask, self.latents[:motion].repeat(batch, 1)

    @torch.no_grad()
    def backbone_steps(self, batch: int, positions: tuple[int, ...]) -> list[float]:
        """One cached motion step after each of ``positions`` motion tokens; the positions are timed in
        alternation so that load from other processes affects them alike."""
        steps = []
        for position in positions:
            ids, mask, latents = self._sequence(batch, position)
            cache = DynamicCache(config=self.model.llm.config)
            self.model(ids, mask, latents, cache=cache, use_cache=True)
            step_ids = torch.zeros(batch, 1, dtype=torch.long)
            step_mask = torch.ones(batch, 1, dtype=torch.bool)

            def step(cache: DynamicCache = cache, ids: Tensor = step_ids, mask: Tensor = step_mask) -> None:
                self.model(ids, mask, self.latents[:batch], cache=cache, use_cache=True)
                cache.crop(-1)  # drop the new token: every call times the same position

            step()  # warm-up
            steps.append(step)
        best = [float("inf")] * len(positions)
        for _ in range(self.repeats):
            for i, step in enumerate(steps):
                best[i] = min(best[i], _best(step, 1, warmup=0))
        return best

    @torch.no_grad()
    def full_recompute(self, position: int) -> float:
        """Forward of the whole sequence (prompt + ``position + 1`` motion tokens) without a cache."""
        ids, mask, latents = self._sequence(1, position + 1)
        return _best(lambda: self.model(ids, mask, latents), 1)

    @torch.no_grad()
    def flow(self, batch: int, steps: int, repeats: int | None = None) -> float:
        cond = torch.randn(batch, self.model.config.cond_dim).to(self.dtype)
        noise = torch.randn(batch, self.model.config.latent_dim)
        head = self.model.flow_head
        fn = lambda: head.sample(cond, steps=steps, guidance_scale=1.0, noise=noise)  # noqa: E731
        return _best(fn, self.repeats if repeats is None else repeats)

    @torch.no_grad()
    def exit_head(self, batch: int) -> float:
        hidden = torch.randn(batch, self.model.hidden_size).to(self.dtype)
        return _best(lambda: torch.sigmoid(self.model.exit_logits(hidden).float()).tolist(), self.repeats)

    @torch.no_grad()
    def vae_decode(self, batch: int) -> float:
        stream = self.vae.decode_stream()
        z = torch.randn(batch, 12, self.vae.config.latent_dim)
        stream.step(z[:, :10])  # a warm stream: the causal-conv caches hold a real prefix
        return _best(lambda: stream.step(z[:, 10:11]), self.repeats)

    def joints(self, batch: int, normalizer: Normalizer) -> float:
        tracker = JointTracker(batch)
        frames = torch.randn(batch, 4, 272)
        return _best(lambda: tracker.step(normalizer.denormalise(frames)), self.repeats)


def _formatter(model: LLaMo) -> SequenceFormatter | None:
    if not _is_prepared(smollm2_dir()):
        return None
    return SequenceFormatter(load_tokenizer("smollm2"), model.bom_id, model.eom_id, model.config.latent_dim)


def end_to_end_fps(
    model: LLaMo, vae: CausalMotionVAE, normalizer: Normalizer, formatter: SequenceFormatter, batch: int, tokens: int
) -> float:
    """Frames/s per stream of `stream_motion` at ``batch`` (50 Euler steps), timing tokens 2..``tokens``."""
    stamps: list[float] = []
    prompts = [f"a person walks forward then waves {i}" for i in range(batch)]
    chunks = stream_motion(
        model, vae, prompts, normalizer=normalizer, formatter=formatter, steps=50, guidance_scale=1.0,
        exit_threshold=1.0, min_tokens=0, max_tokens=tokens, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    for chunk in chunks:
        if chunk.sequence == batch - 1:  # the step's last chunk: the step is complete
            stamps.append(time.perf_counter())
    return 4 * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bench(size: str, dtypes: list[str], args: argparse.Namespace, copier: CopyBandwidth) -> None:
    """Measure one size at each dtype and print its markdown table."""
    rows: dict[str, dict[str, str]] = {}
    notes: list[str] = []

    def put(name: str, dtype: str, value: str) -> None:
        rows.setdefault(name, {})[dtype] = value

    cfg = LLaMoConfig.from_yaml(MODEL_YAMLS[size])
    vae = CausalMotionVAE(VAE_CONFIGS[size]).eval().requires_grad_(False)
    rng = np.random.default_rng(0)
    normalizer = Normalizer(0.1 * rng.normal(size=272), 0.5 + 0.1 * rng.random(272))
    layers = SMOLLM2_SHAPE["num_hidden_layers"] if size == "demo" else args.layers_1b
    scale = 1.0 if size == "demo" else LLAMA_1B_SHAPE["num_hidden_layers"] / layers
    ms = 1000.0
    for dtype in dtypes:
        start = time.perf_counter()
        model = _model(LLaMoConfig.from_dict(cfg.to_dict()), size, dtype, args.layers_1b)
        timer = _Timer(model, vae, args.repeats)
        head_params = sum(p.numel() for p in model.flow_head.parameters())
        head_bytes = sum(p.numel() * p.element_size() for p in model.flow_head.parameters())

        backbone, cached75 = timer.backbone_steps(1, (10, 75))
        # the shortest loop is timed with warm-up and repeats; the longer ones once each (they are 25/50 steps of
        # the same kernels, so their variance is already averaged over the steps)
        flows = {s: timer.flow(1, s, repeats=None if s == FLOW_STEPS[0] else 1) for s in FLOW_STEPS}
        exit_t, vae_t, joints_t = timer.exit_head(1), timer.vae_decode(1), timer.joints(1, normalizer)
        total = backbone + flows[50] + exit_t + vae_t + joints_t
        put("backbone step (ms/token)", dtype, f"{backbone * ms:.1f}")
        for s in FLOW_STEPS:
            put(f"flow head, {s} Euler steps (ms)", dtype, f"{flows[s] * ms:.1f}")
        put("exit head (ms)", dtype, f"{exit_t * ms:.2f}")
        put("VAE stream decode, 4 frames (ms)", dtype, f"{vae_t * ms:.2f}")
        put("de-normalise + joints (ms)", dtype, f"{joints_t * ms:.2f}")
        put("**total per token, 50 steps (ms)**", dtype, f"**{total * ms:.1f}**")
        if scale != 1.0:
            full = total + backbone * (scale - 1)
            put(f"total, est. {LLAMA_1B_SHAPE['num_hidden_layers']} layers (ms)", dtype, f"{full * ms:.1f}")
        put("real-time factor, batch 1 (compute / motion time)", dtype, f"{total / (4 / FPS):.2f}")

        put("frames/s per stream, batch 1 (components)", dtype, f"{4 / total:.1f}")
        for b in BATCHES[1:]:
            comp = (
                timer.backbone_steps(b, (10,))[0]
                + timer.flow(b, 10, repeats=1) * 5  # the Euler loop is linear in the number of steps
                + timer.exit_head(b)
                + timer.vae_decode(b)
                + timer.joints(b, normalizer)
            )
            put(f"frames/s per stream, batch {b} (components)", dtype, f"{4 / comp:.1f}")
        formatter = _formatter(model)
        if formatter is None:
            notes.append("end-to-end rows skipped: SmolLM2's tokenizer is not prepared (`llamo prepare-llm`)")
        else:
            for b in args.e2e_batches if size == "demo" else args.e2e_batches_1b:
                fps = end_to_end_fps(model, vae, normalizer, formatter, b, args.e2e_tokens)
                put(f"frames/s per stream, batch {b} (end to end)", dtype, f"{fps:.1f}")

        full75 = timer.full_recompute(75)
        put("cached step @75 / full recompute @75 (ms)", dtype, f"{cached75 * ms:.1f} / {full75 * ms:.0f}")
        put("KV-cache speed-up @75 (target >= 10x)", dtype, f"{full75 / cached75:.1f}x")
        put(
            "token cost @10 / @75, backbone + VAE (ms)",
            dtype,
            f"{(backbone + vae_t) * ms:.1f} / {(cached75 + vae_t) * ms:.1f}",
        )
        put("cost ratio @75 / @10 (target ~1.0)", dtype, f"{(cached75 + vae_t) / (backbone + vae_t):.2f}")

        # one Euler step and the copy bandwidth, measured in alternation (both suffer the same machine load)
        per_step, bandwidth = float("inf"), 0.0
        for _ in range(args.repeats):
            bandwidth = max(bandwidth, copier.measure(1))
            per_step = min(per_step, timer.flow(1, 10, repeats=1) / 10)
        floor = head_bytes / bandwidth
        put("flow head: one Euler step / bandwidth floor (ms)", dtype, f"{per_step * ms:.2f} / {floor * ms:.2f}")
        put("flow head vs floor (target <= 1.3x)", dtype, f"{per_step / floor:.2f}x")
        notes.append(
            f"{dtype}: flow head {head_params / 1e6:.1f} M params = {head_bytes / 2**20:.0f} MiB per Euler step, "
            f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
            f"measured in {time.perf_counter() - start:.0f} s"
        )
        del model, timer

    head = f"flow head {cfg.flow_head['width']} x {cfg.flow_head['depth']}, exit head width {cfg.exit_head['width']}"
    vae_cfg = VAE_CONFIGS[size]
    if size == "demo":
        title = f"demo: SmolLM2-135M shape (30 layers, 576 wide), {head}, VAE width {vae_cfg.width}"
    else:
        title = (
            f"1b: Llama-3.2-1B shape with {layers} of 16 layers (backbone rows x{scale:g} for the full model), "
            f"paper-size {head}, VAE width {vae_cfg.width}"
        )
    print(f"\n### {title}\n")
    print("| per motion token (4 frames) | " + " | ".join(dtypes) + " |")
    print("|---|" + "---:|" * len(dtypes))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(values.get(d, "-") for d in dtypes) + " |")
    for note in notes:
        print(f"- {note}")


def main(argv: list[str] | None = None) -> int:
    """Parse options (none when called by `llamo.bench`), print the device and one table per size."""
    parser = argparse.ArgumentParser(prog="python -m llamo.bench_generation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "1b"], choices=["demo", "1b"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(_DTYPES))
    parser.add_argument("--layers-1b", type=int, default=4, help="decoder layers of the 1B-shaped model (of 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument(
        "--e2e-batches", type=int, nargs="*", default=[1, 4], help="batches timed end to end (1b: the first only)"
    )
    parser.add_argument(
        "--e2e-batches-1b",
        type=int,
        nargs="*",
        default=[],
        help="batches of the 1b size timed end to end (default none: 50 Euler steps of the paper head take seconds "
        "per token on a CPU; the demo rows check the component sums)",
    )
    parser.add_argument("--e2e-tokens", type=int, default=3, help="latents per end-to-end stream (first untimed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the module doc)")
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(args.threads)
    copier = CopyBandwidth()
    device = "CPU (" + (_cpu_name() or "unknown") + f"), {args.threads} torch thread(s), torch {torch.__version__}"
    print(f"device: {device}; load average {_load()} (other processes share the cores)")
    for size in args.sizes:
        bench(size, args.dtypes, args, copier)
    print(f"\nload average at the end: {_load()}")
    return 0


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _cpu_name() -> str | None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
