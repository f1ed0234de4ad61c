"""Streaming-generation benchmark (not a test; paper Fig. 5): the cost of one motion token and frames/s.

    python -m benchmarks.generation [--sizes demo 1b] [--dtypes float32 bfloat16] [--layers-1b 4]   # or `make bench`

Per size and dtype, with random weights (timings do not depend on the values), one table:

- per motion token (batch 1, position 10): backbone step (one motion token through the MoT motion branch with
  the KV cache), flow-head sampling at 10/25/50 Euler steps (no CFG, the configs' guidance 1.0), exit head,
  streaming VAE decode of 4 frames, de-normalisation + joint recovery, and the total at 50 steps;
- frames/s per stream at batch 1/4/8 from the component times at that batch (``4 / total``), and end to end
  with `stream_motion` (SmolLM2 tokenizer, exit head disabled; the first token, which holds the prefill, is
  not timed; demo size only unless ``--e2e-batches-1b``, to stay within the time bound) when the tokenizer is
  prepared;
- KV-cached step vs recomputing the whole sequence (prompt + 75 latents = 300 frames), target >= 10x, for the
  eager path (`DynamicCache`) and the fast path's decode step (`StaticCache`; plain, and on
  `PackedMotionWeights`; with ``--cpu-compile`` also `torch.compile` inductor on the CPU, which compiles for about
  a minute), each with its bandwidth floor (motion-twin + adapter weights + the keys/values read, over the measured
  copy bandwidth);
- the cost of a token at positions 10 and 75 (target: flat);
- one Euler step of a 50-step `FlowHead.sample` call vs its memory-bandwidth floor (all parameter bytes /
  measured copy bandwidth), target within 1.3x; since `sample` computes the adaLN modulations of every step in
  one matmul per call, a step reads fewer bytes than that, so the table also gives the ratio to the bytes a step
  must read (`flow_step_read_bytes`: the state path every step, everything else once per call);
- end to end, the fast decode path (`stream_motion(decode="fast")`) beside the eager one: on a CPU its static-cache
  functions uncompiled on packed weights (CUDA graphs need a GPU); with a CUDA device a second table compares
  eager and fast (inductor + CUDA graphs) per token and in frames/s per stream at batch 1/4/8 (``--cuda``
  default when a GPU is present).

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
from transformers.cache_utils import DynamicCache, StaticCache

from benchmarks.mot import LLAMA_1B_SHAPE, SMOLLM2_SHAPE
from llamo.core.format import SequenceFormatter
from llamo.core.heads import FlowHead
from llamo.core.llm import LLMConfig, is_prepared, load_tokenizer, smollm2_dir
from llamo.core.model import LLaMo, LLaMoConfig
from llamo.core.vae import CausalMotionVAE, VAEConfig
from llamo.inference.fast import DecodePath, FastDecodeOptions, compiled
from llamo.inference.t2m import stream_motion
from llamo.motion.normalization import Normalizer
from llamo.motion.representation import JointTracker

MODEL_YAMLS = {"demo": Path("experiments/model/smollm2.yaml"), "1b": Path("experiments/model/1b.yaml")}
VAE_CONFIGS = {"demo": VAEConfig(width=128, depth=2), "1b": VAEConfig(width=1024, depth=3)}
PROMPT_TOKENS = 24  # a T2M_INSTRUCTION prompt with a short caption, [BOM] included
FLOW_STEPS = (10, 25, 50)
FLOW_FLOOR_STEPS = 50  # the model configs' sample_steps
BATCHES = (1, 4, 8)
MOTION_TOKENS = 76  # the full recompute's motion tokens (position 75 + the new one)
#: the fast decode path's static-cache functions on a CPU: uncompiled, plain or on packed weights
CPU_STATIC = FastDecodeOptions(compile=False, allow_cpu=True)
CPU_PACKED = FastDecodeOptions(compile=False, allow_cpu=True, pack_weights=True)
#: the layout packing helps on this CPU in float32 only (MKL GEMV); in bfloat16 it measured slower (1b shape:
#: 52 -> 69 ms), so the end-to-end and inductor rows pack in float32 only
PACK_DTYPES = ("float32",)

FPS = 30.0
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _cpu_fast(dtype: str, compile: bool = False) -> FastDecodeOptions:
    """The fast path's options for a CPU row: packed weights in `PACK_DTYPES`, inductor (no CUDA graphs on a
    CPU) when ``compile``."""
    return FastDecodeOptions(compile=compile, mode=None, allow_cpu=True, pack_weights=dtype in PACK_DTYPES)


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


def flow_step_read_bytes(head: FlowHead, steps: int) -> int:
    """Bytes `FlowHead.sample` must read per Euler step at batch 1: the state path (input projection, the blocks'
    LayerNorm + MLP, the output linear) every step; the adaLN modulation, timestep and condition weights once per
    call (they do not depend on the state), so ``1 / steps`` of them per step."""
    state = [head.input_proj, head.final_layer.linear]
    state += [m for block in head.blocks for m in (block.in_ln, block.mlp)]
    state_params = {id(p) for m in state for p in m.parameters()}

    def size(params: Any) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    state_bytes = size(p for p in head.parameters() if id(p) in state_params)
    return state_bytes + (size(head.parameters()) - state_bytes) // steps


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

    def backbone_steps(self, batch: int, positions: tuple[int, ...]) -> list[float]:
        """One cached motion step (eager path: `DynamicCache`, ``LLaMo.forward``) after each of ``positions``
        motion tokens; the positions are timed in alternation so that load from other processes affects them
        alike."""
        return self.alternate(self.eager_step_fns(batch, positions))

    @torch.no_grad()
    def eager_step_fns(self, batch: int, positions: tuple[int, ...]) -> list[Callable[[], None]]:
        """Warmed-up callables of `backbone_steps`, one per position (each call times the same position)."""
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
        return steps

    @torch.no_grad()
    def static_step_fns(
        self, batch: int, positions: tuple[int, ...], options: FastDecodeOptions
    ) -> list[Callable[[], None]]:
        """Warmed-up callables of the fast path's cached motion step (`StaticCache`, adapter ->
        `MoTLlama.motion_forward`, packed and compiled as ``options`` say) after each of ``positions`` motion
        tokens; the first call compiles (its time: ``compile_seconds``)."""
        step_fn = compiled(_static_backbone, options)
        packed = self.model.mot.packed_motion_weights() if options.pack_weights else None
        multiple = options.cache_multiple
        cache_len = -(-(PROMPT_TOKENS + MOTION_TOKENS) // multiple) * multiple
        steps = []
        self.compile_seconds = 0.0
        for position in positions:
            ids, mask, latents = self._sequence(batch, position)
            cache = StaticCache(config=self.model.llm.config, max_cache_len=cache_len)
            self.model(ids, mask, latents, cache=cache, use_cache=True)
            position_ids = torch.full((batch, 1), PROMPT_TOKENS + position)
            padding = torch.ones(batch, cache_len, dtype=torch.bool)

            def step(cache: StaticCache = cache, positions: Tensor = position_ids, padding: Tensor = padding) -> None:
                step_fn(self.model, cache, self.latents[:batch], positions, padding, packed)
                cache.crop(-1)  # the write position goes back: every call times the same position

            start = time.perf_counter()
            step()  # warm-up (the first one compiles)
            self.compile_seconds = max(self.compile_seconds, time.perf_counter() - start)
            steps.append(step)
        return steps

    def alternate(self, steps: list[Callable[[], None]]) -> list[float]:
        """Fastest time of each callable over ``repeats`` rounds that call them in turn (machine load hits all
        alike)."""
        best = [float("inf")] * len(steps)
        for _ in range(self.repeats):
            for i, step in enumerate(steps):
                best[i] = min(best[i], _best(step, 1, warmup=0))
        return best

    def step_floor_bytes(self, position: int) -> int:
        """Bytes a batch-1 cached motion step must read: adapter + motion-branch weights (w/o MoT: the base
        layers and final norm) and the keys/values of ``PROMPT_TOKENS + position + 1`` tokens."""
        mot = self.model.mot
        branch = mot.motion_parameters() or [*mot.llm.model.layers.parameters(), *mot.llm.model.norm.parameters()]
        weights = sum(p.numel() * p.element_size() for p in [*self.model.adapter.parameters(), *branch])
        config = self.model.llm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
        element = next(self.model.parameters()).element_size()
        return weights + per_token * element * (PROMPT_TOKENS + position + 1)

    def full_recompute_fn(self, position: int) -> Callable[[], None]:
        """A warmed-up forward of the whole sequence (prompt + ``position + 1`` motion tokens) without a cache."""
        ids, mask, latents = self._sequence(1, position + 1)

        @torch.no_grad()
        def forward() -> None:
            self.model(ids, mask, latents)

        forward()
        return forward

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


def _static_backbone(
    model: LLaMo, cache: StaticCache, latents: Tensor, position_ids: Tensor, padding: Tensor, packed: Any
) -> Tensor:
    """The fast path's decode step without the heads (the recompute it is compared with has none either)."""
    embeds = model.adapter(latents)[:, None]  # (B, 1, H)
    return model.mot.motion_forward(embeds, padding, position_ids, cache, use_cache=True, packed=packed)


def _formatter(model: LLaMo) -> SequenceFormatter | None:
    if not is_prepared(smollm2_dir()):
        return None
    return SequenceFormatter(load_tokenizer("smollm2"), model.bom_id, model.eom_id, model.config.latent_dim)


def end_to_end_fps(
    model: LLaMo,
    vae: CausalMotionVAE,
    normalizer: Normalizer,
    formatter: SequenceFormatter,
    batch: int,
    tokens: int,
    decode: DecodePath = "eager",
    fast: FastDecodeOptions | None = None,
) -> float:
    """Frames/s per stream of `stream_motion` at ``batch`` (50 Euler steps), timing tokens 2..``tokens``
    (the first holds the prefill; on CUDA the device is synchronised at every stamp)."""
    stamps: list[float] = []
    prompts = [f"a person walks forward then waves {i}" for i in range(batch)]
    device = next(model.parameters()).device
    chunks = stream_motion(
        model, vae, prompts, normalizer=normalizer, formatter=formatter, steps=50, guidance_scale=1.0,
        exit_threshold=1.0, min_tokens=0, max_tokens=tokens, generator=torch.Generator().manual_seed(0),
        decode=decode, fast=fast,
    )  # fmt: skip
    for chunk in chunks:
        if chunk.sequence == batch - 1:  # the step's last chunk: the step is complete
            if device.type == "cuda":
                torch.cuda.synchronize(device)
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
                # best of --repeats streams per path, alternating the paths so that machine load hits both alike
                fps = {"eager": 0.0, "fast": 0.0}
                for _ in range(args.repeats):
                    for decode, fast in (("eager", None), ("fast", _cpu_fast(dtype))):
                        e2e = end_to_end_fps(model, vae, normalizer, formatter, b, args.e2e_tokens, decode, fast)
                        fps[decode] = max(fps[decode], e2e)
                put(f"frames/s per stream, batch {b} (end to end)", dtype, f"{fps['eager']:.1f}")
                put(f"frames/s per stream, batch {b} (end to end, fast path)", dtype, f"{fps['fast']:.1f}")

        # the KV-cache target: a cached one-token step vs the full forward of prompt + 76 motion tokens, same
        # model, dtype and threads, all timed in one alternation (load changes hit them alike); the steps' floor is
        # the bytes they must read over the copy bandwidth
        variants = [("eager, DynamicCache", None), ("fast, StaticCache", CPU_STATIC), ("fast, packed", CPU_PACKED)]
        if args.cpu_compile:
            compiled = _cpu_fast(dtype, compile=True)
            variants.append((f"fast, {'packed, ' if compiled.pack_weights else ''}inductor", compiled))
        fns = [
            f
            for _, options in variants
            for f in (
                timer.eager_step_fns(1, (10, 75)) if options is None else timer.static_step_fns(1, (10, 75), options)
            )
        ]
        times = timer.alternate([*fns, timer.full_recompute_fn(75)])
        full75 = times[-1]
        bandwidth = max(copier.measure(1) for _ in range(args.repeats))
        floor75 = timer.step_floor_bytes(75) / bandwidth
        put("full recompute @75: prompt + 76 motion tokens (ms)", dtype, f"{full75 * ms:.0f}")
        put("cached step floor @75: weights + KV / copy bandwidth (ms)", dtype, f"{floor75 * ms:.1f}")
        put("KV-cache speed-up a step at its floor would give @75", dtype, f"{full75 / floor75:.0f}x")
        for v, (name, options) in enumerate(variants):
            at10, at75 = times[2 * v], times[2 * v + 1]
            put(f"cached step @10 / @75, {name} (ms)", dtype, f"{at10 * ms:.1f} / {at75 * ms:.1f}")
            put(
                f"KV-cache speed-up @75, {name} (target >= 10x; step / floor)",
                dtype,
                f"{full75 / at75:.1f}x ({at75 / floor75:.1f}x)",
            )
            if options is not None and options.compile:
                notes.append(f"{dtype}: inductor compiled the CPU decode step in {timer.compile_seconds:.0f} s")
        notes.append(
            f"{dtype}: end-to-end fast path = static cache, uncompiled"
            + (", packed weights" if dtype in PACK_DTYPES else "")
            + (" (inductor: `--cpu-compile` rows)" if args.cpu_compile else "; inductor not measured (`--cpu-compile`)")
        )
        put(
            "token cost @10 / @75, backbone + VAE (ms)",
            dtype,
            f"{(backbone + vae_t) * ms:.1f} / {(cached75 + vae_t) * ms:.1f}",
        )
        put("cost ratio @75 / @10 (target ~1.0)", dtype, f"{(cached75 + vae_t) / (backbone + vae_t):.2f}")

        # one Euler step (of a 50-step call, the configs' sample_steps) and the copy bandwidth, measured in
        # alternation (both suffer the same machine load)
        per_step, bandwidth = float("inf"), 0.0
        for _ in range(args.repeats):
            bandwidth = max(bandwidth, copier.measure(1))
            per_step = min(per_step, timer.flow(1, FLOW_FLOOR_STEPS, repeats=1) / FLOW_FLOOR_STEPS)
        floor = head_bytes / bandwidth
        read_floor = flow_step_read_bytes(model.flow_head, FLOW_FLOOR_STEPS) / bandwidth
        put(
            f"flow head: one Euler step of {FLOW_FLOOR_STEPS} / all-weights floor (ms)",
            dtype,
            f"{per_step * ms:.2f} / {floor * ms:.2f}",
        )
        put("flow head vs all-weights floor (target <= 1.3x)", dtype, f"{per_step / floor:.2f}x")
        put("flow head vs the bytes a step must read (floor ms; ratio)", dtype,
            f"{read_floor * ms:.2f}; {per_step / read_floor:.2f}x")  # fmt: skip
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


def bench_cuda_decode(size: str, dtypes: list[str], args: argparse.Namespace) -> None:
    """Eager vs fast (`FastDecodeOptions()`: static cache, inductor + CUDA graphs) `stream_motion` on the GPU:
    ms per token and frames/s per stream at batch 1/4/8, ``--cuda-tokens`` latents per stream (first untimed).
    One warm-up stream per batch and path (the fast one compiles for this shape) precedes the timed ones."""
    device = torch.device("cuda")
    cfg = LLaMoConfig.from_yaml(MODEL_YAMLS[size])
    vae = CausalMotionVAE(VAE_CONFIGS[size]).eval().requires_grad_(False).to(device)
    rng = np.random.default_rng(0)
    normalizer = Normalizer(0.1 * rng.normal(size=272), 0.5 + 0.1 * rng.random(272))
    rows: dict[str, dict[str, str]] = {}
    for dtype in dtypes:
        model = _model(LLaMoConfig.from_dict(cfg.to_dict()), size, dtype, args.layers_1b).to(device)
        formatter = _formatter(model)
        if formatter is None:
            print(f"\n(CUDA decode table for {size} skipped: SmolLM2's tokenizer is not prepared)")
            return
        for b in BATCHES:
            fps = {}
            for decode in ("eager", "fast"):
                fast = FastDecodeOptions() if decode == "fast" else None
                start = time.perf_counter()
                end_to_end_fps(model, vae, normalizer, formatter, b, args.cuda_tokens, decode, fast)  # warm-up
                warm = time.perf_counter() - start
                fps[decode] = max(
                    end_to_end_fps(model, vae, normalizer, formatter, b, args.cuda_tokens, decode, fast)
                    for _ in range(args.repeats)
                )
                rows.setdefault(f"batch {b}: ms/token, {decode}", {})[dtype] = f"{4000 / fps[decode]:.2f}"
                rows.setdefault(f"batch {b}: frames/s per stream, {decode}", {})[dtype] = f"{fps[decode]:.0f}"
                if decode == "fast":
                    rows.setdefault(f"batch {b}: first fast stream incl. compile (s)", {})[dtype] = f"{warm:.1f}"
            rows.setdefault(f"batch {b}: fast / eager speed-up", {})[dtype] = f"{fps['fast'] / fps['eager']:.1f}x"
        del model
    layers = SMOLLM2_SHAPE["num_hidden_layers"] if size == "demo" else args.layers_1b
    gpu = torch.cuda.get_device_name(device)
    print(f"\n### {size} on {gpu}: eager vs fast decode ({layers} layers, 50 Euler steps)\n")
    print("| stream_motion | " + " | ".join(dtypes) + " |")
    print("|---|" + "---:|" * len(dtypes))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(values.get(d, "-") for d in dtypes) + " |")


def main(argv: list[str] | None = None) -> int:
    """Parse options (none when called by `benchmarks`), print the device and one table per size."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
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
    parser.add_argument(
        "--cpu-compile",
        action="store_true",
        help="also time the fast decode step compiled by inductor for the CPU (about a minute of compilation)",
    )
    parser.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=torch.cuda.is_available(),
        help="the eager vs fast decode table on the GPU (default: when CUDA is available)",
    )
    parser.add_argument("--cuda-tokens", type=int, default=12, help="latents per stream in the CUDA table")
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(args.threads)
    copier = CopyBandwidth()
    device = "CPU (" + (_cpu_name() or "unknown") + f"), {args.threads} torch thread(s), torch {torch.__version__}"
    print(f"device: {device}; load average {_load()} (other processes share the cores)")
    for size in args.sizes:
        bench(size, args.dtypes, args, copier)
    if args.cuda:
        for size in args.sizes:
            bench_cuda_decode(size, args.dtypes, args)
    else:
        print("\n(eager vs fast decode on CUDA: not measured, no CUDA device; the fast path's CUDA graphs need one)")
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
