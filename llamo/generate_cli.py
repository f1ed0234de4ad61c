"""``llamo generate`` / ``llamo caption`` / ``llamo chat``: inference with a trained run (`llamo.core.generation`).

    llamo generate --ckpt runs/default "a person walks forward then waves" --out out.gif   # also .mp4 .png .npy
    llamo generate ... --decode fast    # CUDA: static KV cache + compiled/CUDA-graphed steps (auto: on CUDA)
    llamo caption --ckpt runs/default clip.npy
    llamo chat --ckpt runs/default [--prompt "What is a pirouette?"]

``llamo caption`` and ``llamo chat`` are registered through the two-line modules `llamo.caption_cli` and
`llamo.chat_cli`, which re-export this module's ``add_caption_arguments``/``run_caption`` and
``add_chat_arguments``/``run_chat`` under the CLI protocol names.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llamo.core.generation import DECODE_CHOICES, LLaMoRun, MotionChunk, load_run, resolve_decode
from llamo.motion.render import SUFFIXES, render_motion

#: output extensions of ``llamo generate``: the renderer's animations/filmstrip and raw features
OUTPUT_SUFFIXES = (*SUFFIXES, ".npy")
FPS = 30.0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="run folder runs/<exp> (vae/ + stage1|2|3/)")
    parser.add_argument("--stage", default=None, help="stage1|stage2|stage3 (default: the newest one present)")
    parser.add_argument(
        "--mean-std",
        type=Path,
        default=None,
        help="folder with the corpus Mean.npy/Std.npy (default: <run>/vae, then <run>/evaluator)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def _device(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(args: argparse.Namespace, motion: bool = True) -> LLaMoRun:
    run = load_run(args.ckpt, args.stage, mean_std=args.mean_std, device=_device(args), motion=motion)
    where = f" (Mean/Std from {run.mean_std_dir})" if run.mean_std_dir is not None else ""
    print(f"loaded {run.stage_dir}{where}", file=sys.stderr)
    return run


def _error(command: str, error: Exception) -> int:
    print(f"llamo {command}: error: {error}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------------------
# llamo generate
# ---------------------------------------------------------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``llamo generate``."""
    _add_run_arguments(parser)
    parser.add_argument("prompts", nargs="+", help="caption(s) of the motion(s) to generate (one stream each)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .gif/.mp4/.png (rendered) or .npy (un-normalised (T, 272) features); several prompts write "
        "<stem>_<i><suffix>",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the flow-head noise (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps of the flow head (default: model config)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: model config)")
    parser.add_argument(
        "--cfg", choices=("null", "prompt"), default="null", help="unconditional source of CFG (default null)"
    )
    parser.add_argument("--exit-threshold", type=float, default=0.5, help="exit probability that stops (default 0.5)")
    parser.add_argument("--min-tokens", type=int, default=10, help="latents before the exit head may stop (default 10)")
    parser.add_argument("--max-tokens", type=int, default=75, help="latents at most, 4 frames each (default 75)")
    parser.add_argument("--stream", action="store_true", help="print every frame as it is generated")
    parser.add_argument(
        "--decode",
        choices=DECODE_CHOICES,
        default="auto",
        help="decode path: eager (dynamic KV cache, the reference), fast (CUDA: static KV cache, compiled and "
        "CUDA-graphed decode step and Euler loop; the first stream compiles) or auto (fast on CUDA, else eager; "
        "default). The path used is printed",
    )


def _out_paths(out: Path, count: int) -> list[Path]:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: the extension must be one of {', '.join(OUTPUT_SUFFIXES)}")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def _print_frames(chunk: MotionChunk, elapsed: float) -> None:
    for j in range(chunk.joints.shape[0]):
        x, y, z = (float(v) for v in chunk.joints[j, 0])
        tqdm.write(
            f"seq {chunk.sequence} frame {chunk.first_frame + j:4d}  t={elapsed * 1000:8.1f} ms  "
            f"pelvis ({x:+.3f}, {y:+.3f}, {z:+.3f})"
        )


def cli_run(args: argparse.Namespace) -> int:
    """Generate, report speed, write the outputs; exit 2 on a user error."""
    try:
        outs = _out_paths(args.out, len(args.prompts))
        device = torch.device(_device(args))
        decode = resolve_decode(args.decode, device)
        if decode == "fast" and device.type != "cuda":
            raise ValueError(
                f"--decode fast needs a CUDA device (static KV cache + CUDA graphs), got --device {device}; use "
                "--decode auto (fast on CUDA, eager elsewhere) or --decode eager"
            )
        how = f"{decode} (auto)" if args.decode == "auto" else decode
        print(f"decode path: {how}", file=sys.stderr)
        run = _load(args)
        generator = torch.Generator().manual_seed(args.seed)
        stream = run.stream(
            args.prompts,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            cfg=args.cfg,
            exit_threshold=args.exit_threshold,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            generator=generator,
            decode=decode,
        )
        features: list[list[np.ndarray]] = [[] for _ in args.prompts]
        first_frame = None
        start = time.perf_counter()
        with tqdm(total=4 * args.max_tokens * len(args.prompts), unit="frame", desc="generate") as bar:
            while True:
                try:
                    chunk = next(stream)
                except StopIteration as done:
                    reasons: list[str] = done.value
                    break
                elapsed = time.perf_counter() - start
                first_frame = elapsed if first_frame is None else first_frame
                features[chunk.sequence].append(chunk.features.cpu().numpy())
                bar.update(chunk.features.shape[0])
                if args.stream:
                    _print_frames(chunk, elapsed)
            bar.total = bar.n
            bar.refresh()
        wall = time.perf_counter() - start
    except (ValueError, FileNotFoundError) as error:
        return _error("generate", error)

    clips = [np.concatenate(f).astype(np.float32) if f else np.zeros((0, 272), np.float32) for f in features]
    frames = sum(len(c) for c in clips)
    longest = max(len(c) for c in clips)
    print(
        f"generated {frames} frames ({frames / FPS:.1f} s of motion) in {wall:.2f} s on {_device(args)}, "
        f"decode path {how}"
    )
    if frames:
        per_stream = longest / wall  # every stream advances 4 frames per step; the longest sets the wall time
        print(
            f"  {frames / wall:.1f} frames/s total, {per_stream:.1f} frames/s per stream; real-time factor "
            f"{wall / (longest / FPS):.2f} (compute time / motion time; < 1 is faster than real time at {FPS:g} fps); "
            f"first frame after {1000 * (first_frame or 0.0):.0f} ms"
        )
    try:
        for prompt, clip, reason, out in zip(args.prompts, clips, reasons, outs):
            if not len(clip):
                print(f"{prompt!r}: the exit head stopped before the first latent; nothing written to {out}")
                continue
            if out.suffix.lower() == ".npy":
                out.parent.mkdir(parents=True, exist_ok=True)
                np.save(out, clip)
            else:
                render_motion(clip, out, caption=prompt, fps=FPS)
            print(f"wrote {out} ({len(clip)} frames, stop: {reason}) for {prompt!r}")
    except ValueError as error:
        return _error("generate", error)
    return 0


# ---------------------------------------------------------------------------------------------------------
# llamo caption
# ---------------------------------------------------------------------------------------------------------


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``llamo caption``."""
    _add_run_arguments(parser)
    parser.add_argument("clip", type=Path, help="(T, 272) features .npy (un-normalised) or (N, latent_dim) latents")
    parser.add_argument("--normalized", action="store_true", help="the (T, 272) clip is already normalised")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest caption in tokens (default 48)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")


def run_caption(args: argparse.Namespace) -> int:
    """Print the caption of a clip; exit 2 on a user error."""
    try:
        if not args.clip.is_file():
            raise FileNotFoundError(f"clip {args.clip} not found")
        motion = np.load(args.clip)
        run = _load(args)
        text = run.caption(
            motion.astype(np.float32),
            normalized=args.normalized,
            max_new_tokens=args.max_new_tokens,
            greedy=not args.sample,
            temperature=args.temperature,
            generator=torch.Generator().manual_seed(args.seed),
        )
    except (ValueError, FileNotFoundError) as error:
        return _error("caption", error)
    print(text)
    return 0


# ---------------------------------------------------------------------------------------------------------
# llamo chat
# ---------------------------------------------------------------------------------------------------------


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``llamo chat``."""
    parser.add_argument("--ckpt", type=Path, required=True, help="run folder runs/<exp> (a stage1|2|3/ inside)")
    parser.add_argument("--stage", default=None, help="stage1|stage2|stage3 (default: the newest one present)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--prompt", default=None, help="answer this one message and exit (default: interactive)")
    parser.add_argument("--system", default=None, help="optional system message")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.set_defaults(mean_std=None)  # chat needs no motion statistics


def run_chat(args: argparse.Namespace) -> int:
    """One reply (``--prompt``) or an interactive session (empty line / EOF ends it); exit 2 on a user error."""
    try:
        run = _load(args, motion=False)
        messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        if args.prompt is not None:
            messages.append({"role": "user", "content": args.prompt})
            print(run.chat(messages, max_new_tokens=args.max_new_tokens))
            return 0
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            messages.append({"role": "user", "content": line})
            reply = run.chat(messages, max_new_tokens=args.max_new_tokens)
            messages.append({"role": "assistant", "content": reply})
            print(f"llamo> {reply}")
    except (ValueError, FileNotFoundError) as error:
        return _error("chat", error)
    return 0
