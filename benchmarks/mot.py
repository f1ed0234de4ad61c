"""Benchmark (not a test): cost of the Mixture-of-Transformers against the dense base model.

``python -m benchmarks.mot [--sizes smollm2 1b] [--batch 2] [--prompt 40] [--motion 80] [--repeats 5]``

For each size, on the same mixed text-to-motion batch and from the same weights:

1. training step (forward + backward, no optimiser step) of the full ``LLaMo.loss`` with MoT (text branch
   frozen, motion twins trainable) vs the "w/o MoT" LLaMo (the dense base model, every weight trainable, same
   heads and losses): ratio MoT / dense (target <= 1.10);
2. the same for the backbone alone (``MoTLlama`` vs ``LlamaModel``, loss = mean squared hidden state);
3. text-only inference per token (prefill, then one token at a time with a `DynamicCache`): LLaMo's text
   path (embedding with [BOM]/[EOM] rows, MoT fast path, LM head + 2 columns) vs the base
   `LlamaForCausalLM`: ratio (target 1.00).

Sizes: ``smollm2`` is SmolLM2-135M-Instruct's shape (30 layers, 576 wide, 9/3 heads, vocab 49152) with random
weights (timing does not depend on the values); ``1b`` is Llama-3.2-1B's width (2048, 32/8 heads, FFN 8192,
vocab 128256) with only ``--layers-1b`` decoder layers (default 2; the full 16 layers take minutes per step
on a 2-core CPU; per-layer costs are identical, so the ratio of the layer stack carries over).
Runs alternate MoT and dense and report the median, which damps noise from other processes on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from llamo.core.format import IGNORE_INDEX, FormattedSample, collate_samples
from llamo.core.llm import LLMConfig, build_random_llm
from llamo.core.model import LLaMo, LLaMoConfig

SMOLLM2_SHAPE: dict[str, Any] = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
LLAMA_1B_SHAPE: dict[str, Any] = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
LATENT_DIM = 32


def _t2m_sample(prompt: int, motion: int, vocab: int, bom: int, eom: int, gen: torch.Generator) -> FormattedSample:
    """``prompt`` text tokens, [BOM], ``motion`` slots, [EOM], 2 text tokens, with the formatter's loss layout."""
    ids = torch.randint(0, vocab, (prompt + motion + 4,), generator=gen)
    ids[prompt], ids[prompt + motion + 1] = bom, eom
    slots = torch.arange(prompt + 1, prompt + motion + 1)
    length = ids.shape[0]
    motion_mask = torch.zeros(length, dtype=torch.bool)
    motion_mask[slots] = True
    labels = torch.full((length,), IGNORE_INDEX)
    labels[prompt - 1] = bom
    labels[prompt + motion + 1 : -1] = ids[prompt + motion + 2 :]
    fm_mask = torch.zeros(length, dtype=torch.bool)
    fm_mask[prompt : prompt + motion] = True
    end_mask = fm_mask.clone()
    end_mask[prompt + motion] = True
    end_target = torch.zeros(length, dtype=torch.bool)
    end_target[prompt + motion] = True
    return FormattedSample(
        input_ids=ids,
        motion_mask=motion_mask,
        labels=labels,
        fm_mask=fm_mask,
        end_mask=end_mask,
        end_target=end_target,
        span_lengths=[motion],
        span_generated=[True],
        latents=torch.randn(motion, LATENT_DIM, generator=gen),
        text="",
    )


def _models(shape: dict[str, Any]) -> tuple[LLaMo, LLaMo]:
    """(MoT LLaMo, w/o-MoT LLaMo) on identical base weights and identical heads."""
    base = build_random_llm(shape, seed=0)
    config = LLaMoConfig(
        llm=LLMConfig(config=shape),
        latent_dim=LATENT_DIM,
        cond_dim=shape["hidden_size"],
        flow_head=dict(width=shape["hidden_size"], depth=3),
        exit_head=dict(width=shape["hidden_size"]),
    )
    torch.manual_seed(0)
    mot = LLaMo(config, llm=copy.deepcopy(base)).train()
    torch.manual_seed(0)
    dense = LLaMo(LLaMoConfig(**{**config.__dict__, "mot": False}), llm=base).train()
    return mot, dense


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calling them in alternation after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(_time(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_size(name: str, shape: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Run the three comparisons for one model shape and print them."""
    mot, dense = _models(shape)
    gen = torch.Generator().manual_seed(0)
    samples = [
        _t2m_sample(args.prompt, args.motion, shape["vocab_size"], mot.bom_id, mot.eom_id, gen)
        for _ in range(args.batch)
    ]
    batch = collate_samples(samples, pad_id=0)

    def step(model: LLaMo) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model.loss(batch, generator=torch.Generator().manual_seed(1))["loss"].backward()

        return run

    embeds = mot.embed(batch.input_ids, batch.motion_mask, batch.latents).detach()

    def backbone_mot() -> None:
        mot.zero_grad(set_to_none=True)
        mot.mot(embeds, batch.motion_mask).hidden_states.square().mean().backward()

    def backbone_dense() -> None:
        dense.zero_grad(set_to_none=True)
        dense.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state.square().mean().backward()

    train = _alternate({"mot": step(mot), "dense": step(dense)}, args.repeats)
    backbone = _alternate({"mot": backbone_mot, "dense": backbone_dense}, args.repeats)

    # text-only inference: prefill the prompt, then decode one token at a time with a cache
    mot.eval()
    base = dense.llm.eval()
    prompt = batch.input_ids[:1, : args.prompt]
    new_tokens = torch.randint(0, shape["vocab_size"], (1, args.decode), generator=gen)

    def decode(forward: Callable[[torch.Tensor, DynamicCache], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                cache = DynamicCache(config=base.config)
                forward(prompt, cache)
                for t in range(args.decode):
                    forward(new_tokens[:, t : t + 1], cache)

        return run

    def llamo_text(ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        return mot.text_logits(mot(ids, cache=cache, use_cache=True).hidden_states[:, -1:])

    def base_text(ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        return base(ids, cache=cache, use_cache=True, logits_to_keep=1).logits

    infer = _alternate({"mot": decode(llamo_text), "dense": decode(base_text)}, args.repeats)
    per_token = {k: v / (args.decode + 1) for k, v in infer.items()}

    tokens = batch.input_ids.numel()
    n_motion = int(batch.motion_mask.sum())
    print(
        f"\n== {name}: {shape['num_hidden_layers']} layers x {shape['hidden_size']}, batch {args.batch} x "
        f"{batch.input_ids.shape[1]} tokens ({n_motion}/{tokens} motion), {torch.get_num_threads()} threads"
    )
    print(
        f"  train step (LLaMo.loss fwd+bwd): MoT {train['mot']:.3f}s  dense {train['dense']:.3f}s  "
        f"ratio {train['mot'] / train['dense']:.3f}"
    )
    print(
        f"  backbone only (fwd+bwd):         MoT {backbone['mot']:.3f}s  dense {backbone['dense']:.3f}s  "
        f"ratio {backbone['mot'] / backbone['dense']:.3f}"
    )
    print(
        f"  text-only decode per token:      LLaMo {1e3 * per_token['mot']:.2f}ms  base "
        f"{1e3 * per_token['dense']:.2f}ms  ratio {per_token['mot'] / per_token['dense']:.3f}"
    )
    return {
        "train_ratio": train["mot"] / train["dense"],
        "backbone_ratio": backbone["mot"] / backbone["dense"],
        "text_token_ratio": per_token["mot"] / per_token["dense"],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (None: defaults, as `benchmarks` calls it), run the requested sizes, print the ratios."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["smollm2", "1b"], choices=["smollm2", "1b"])
    parser.add_argument("--batch", type=int, default=2, help="sequences per batch")
    parser.add_argument("--prompt", type=int, default=40, help="text tokens before [BOM]")
    parser.add_argument("--motion", type=int, default=80, help="motion latent tokens per sequence")
    parser.add_argument("--decode", type=int, default=16, help="text tokens decoded one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--layers-1b", type=int, default=2, help="decoder layers of the 1B-wide config")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP threads competing with other "
        "processes made steps 5x slower and the ratios meaningless)",
    )
    args = parser.parse_args([] if argv is None else argv)
    torch.set_num_threads(args.threads)
    shapes = {"smollm2": SMOLLM2_SHAPE, "1b": {**LLAMA_1B_SHAPE, "num_hidden_layers": args.layers_1b}}
    for name in args.sizes:
        bench_size(name, shapes[name], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
