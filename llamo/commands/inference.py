"""``llamo generate|caption|chat``: inference with a trained run (`llamo.inference`).

    llamo generate --ckpt runs/default "a person walks forward then waves" --out out.gif   # also .mp4 .png .npy
    llamo generate ... --decode fast    # CUDA: static KV cache + compiled/CUDA-graphed steps (auto: on CUDA)
    llamo caption --ckpt runs/default clip.npy
    llamo chat --ckpt runs/default [--prompt "What is a pirouette?"]
    llamo record-fingerprint runs/default/stage2   # an older handoff: record its base LLM's fingerprint
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from llamo.inference.fast import resolve_decode
from llamo.inference.run import LLaMoRun, LongMotionWarning, load_run, record_base_fingerprint
from llamo.inference.t2m import MotionChunk
from llamo.motion.render import SUFFIXES, render_motion
from llamo.progress import progress as progress_bar

__all__ = ["RunSelection", "caption", "chat", "generate", "record_fingerprint"]

#: output extensions of ``llamo generate``: the renderer's animations/filmstrip and raw features
OUTPUT_SUFFIXES = (*SUFFIXES, ".npy")
FPS = 30.0


@dataclass
class RunSelection:
    """Which trained run (and stage) to load, and where."""

    ckpt: Path
    """Run folder runs/<exp> (vae/ + stage1|2|3/)."""
    stage: str | None = None
    """stage1|stage2|stage3 (default: the newest one present)."""
    mean_std: Path | None = None
    """Folder with the corpus Mean.npy/Std.npy (default: <run>/vae, then <run>/evaluator)."""
    device: str | None = None
    """Torch device (default: cuda when available, else cpu)."""

    @property
    def torch_device(self) -> torch.device:
        """The device to load on."""
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def load(self, motion: bool = True) -> LLaMoRun:
        """`load_run` of the selection; prints what was loaded to stderr."""
        run = load_run(self.ckpt, self.stage, mean_std=self.mean_std, device=self.torch_device, motion=motion)
        where = f" (Mean/Std from {run.mean_std_dir})" if run.mean_std_dir is not None else ""
        print(f"loaded {run.stage_dir}{where}", file=sys.stderr)
        return run


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


def generate(
    prompts: list[str],
    /,
    *,
    run: RunSelection,
    out: Path,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    cfg: Literal["null", "prompt"] | None = None,
    temperature: float | None = None,
    exit_threshold: float = 0.5,
    min_tokens: int = 10,
    max_tokens: int = 75,
    stream: bool = False,
    decode: Literal["auto", "eager", "fast"] = "auto",
) -> int:
    """Stream text-to-motion from a trained run (gif/mp4/png/npy, frames/s).

    Streams frames as the model samples them (progress per frame), prints frames/s, the real-time factor and the
    time to first frame, and writes one file per prompt (several prompts stream as one batch and write
    ``<stem>_<i><suffix>``).

    Args:
        prompts: Caption(s) of the motion(s) to generate (one stream each).
        out: Output .gif/.mp4/.png (rendered) or .npy (un-normalised (T, 272) features).
        seed: Seed of the flow-head noise.
        steps: Euler steps of the flow head (default: the setting `llamo eval sweep` recorded in RUN/generation.json,
            else the model config).
        guidance_scale: CFG scale (default: as --steps).
        cfg: Unconditional source of CFG: the learned null condition or empty-caption prompt rows (default: as
            --steps; null without a recorded setting).
        temperature: Noise temperature of the flow head, x_0 ~ N(0, t^2 I) (default: as --steps; 1 without a recorded
            setting).
        exit_threshold: Exit probability that stops a motion.
        min_tokens: Latents before the exit head may stop.
        max_tokens: Latents at most, 4 frames each.
        stream: Print every frame as it is generated.
        decode: Decode path: eager (dynamic KV cache, the reference), fast (CUDA: static KV cache, compiled and
            CUDA-graphed decode step and Euler loop; the first stream compiles) or auto (fast on CUDA, else
            eager). The path used is printed.
    """
    outs = _out_paths(out, len(prompts))
    device = run.torch_device
    path = resolve_decode(decode, device)
    if path == "fast" and device.type != "cuda":
        raise ValueError(
            f"--decode fast needs a CUDA device (static KV cache + CUDA graphs), got --device {device}; use "
            "--decode auto (fast on CUDA, eager elsewhere) or --decode eager"
        )
    how = f"{path} (auto)" if decode == "auto" else path
    print(f"decode path: {how}", file=sys.stderr)
    loaded = run.load().with_generation(
        steps, guidance_scale, cfg, temperature, flags="--steps/--guidance_scale/--cfg/--temperature"
    )
    setting = loaded.generation
    assert setting is not None  # with_generation always sets one
    print(f"generation setting: {setting.describe()} ({setting.source})", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed)
    chunks = loaded.stream(
        prompts,
        exit_threshold=exit_threshold,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        generator=generator,
        decode=path,
    )
    features: list[list[np.ndarray]] = [[] for _ in prompts]
    first_frame = None
    start = time.perf_counter()
    with progress_bar(total=4 * max_tokens * len(prompts), unit="frame", desc="generate") as bar:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration as done:
                reasons: list[str] = done.value
                break
            elapsed = time.perf_counter() - start
            first_frame = elapsed if first_frame is None else first_frame
            features[chunk.sequence].append(chunk.features.cpu().numpy())
            bar.update(chunk.features.shape[0])
            if stream:
                _print_frames(chunk, elapsed)
        bar.total = bar.n
        bar.refresh()
    wall = time.perf_counter() - start

    clips = [np.concatenate(f).astype(np.float32) if f else np.zeros((0, 272), np.float32) for f in features]
    frames = sum(len(c) for c in clips)
    longest = max(len(c) for c in clips)
    print(f"generated {frames} frames ({frames / FPS:.1f} s of motion) in {wall:.2f} s on {device}, decode path {how}")
    if frames:
        per_stream = longest / wall  # every stream advances 4 frames per step; the longest sets the wall time
        print(
            f"  {frames / wall:.1f} frames/s total, {per_stream:.1f} frames/s per stream; real-time factor "
            f"{wall / (longest / FPS):.2f} (compute time / motion time; < 1 is faster than real time at {FPS:g} fps); "
            f"first frame after {1000 * (first_frame or 0.0):.0f} ms"
        )
    for prompt, clip, reason, target in zip(prompts, clips, reasons, outs):
        if not len(clip):
            print(f"{prompt!r}: the exit head stopped before the first latent; nothing written to {target}")
            continue
        if target.suffix.lower() == ".npy":
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, clip)
        else:
            render_motion(clip, target, caption=prompt, fps=FPS)
        print(f"wrote {target} ({len(clip)} frames, stop: {reason}) for {prompt!r}")
    return 0


def caption(
    clip: Path,
    /,
    *,
    run: RunSelection,
    normalized: bool = False,
    max_new_tokens: int = 48,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    window_frames: int | None = None,
) -> int:
    """Describe a motion clip with a trained run (motion-to-text); prints the caption.

    A clip longer than the longest motion the stage was trained on (recorded in the stage's config.json, or
    derived from the config.yaml its `llamo fit` saved) is captioned in windows no longer than that, of near-equal
    length: stderr says why and which windows, stdout has one ``frames START-END: caption`` line per window (END
    exclusive). The same text as ``load_run(...).caption(clip)``.

    Args:
        clip: (T, 272) features .npy (un-normalised) or (N, latent_dim) latents.
        normalized: The (T, 272) clip is already normalised.
        max_new_tokens: Longest caption in tokens.
        sample: Sample instead of greedy decoding.
        temperature: Sampling temperature (with --sample).
        seed: Sampling seed (with --sample).
        window_frames: Caption in windows of at most this many frames (a multiple of 4; default: the stage's
            training motion length).
    """
    if not clip.is_file():
        raise FileNotFoundError(f"clip {clip} not found")
    motion = np.load(clip)
    loaded = run.load()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LongMotionWarning)
        text = loaded.caption(
            motion.astype(np.float32),
            normalized=normalized,
            max_new_tokens=max_new_tokens,
            greedy=not sample,
            temperature=temperature,
            generator=torch.Generator().manual_seed(seed),
            window_frames=window_frames,
        )
    for warning in caught:
        if issubclass(warning.category, LongMotionWarning):
            print(f"{clip}: {warning.message}", file=sys.stderr)
        else:  # not ours: let it through as it would have gone without the recording
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(text)
    return 0


def chat(
    *,
    run: RunSelection,
    prompt: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
) -> int:
    """Text chat with a trained run (the frozen base model's answers).

    One reply (``--prompt``) or an interactive session (an empty line or EOF ends it).

    Args:
        prompt: Answer this one message and exit (default: interactive).
        system: Optional system message.
        max_new_tokens: Longest reply in tokens.
    """
    loaded = run.load(motion=False)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
        print(loaded.chat(messages, max_new_tokens=max_new_tokens))
        return 0
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = loaded.chat(messages, max_new_tokens=max_new_tokens)
        messages.append({"role": "assistant", "content": reply})
        print(f"llamo> {reply}")
    return 0


def record_fingerprint(stage_dir: Path, /) -> int:
    """Record the base LLM's fingerprint in a LLaMo stage folder written before handoffs recorded it.

    Rebuilds the base from the folder's saved ``llm`` config and writes its fingerprint into config.json; later
    loads then refuse any other base. Run it only if that base is the one the stage was trained with. A folder
    that already records the same fingerprint is left as it is; a different one is an error.

    Args:
        stage_dir: LLaMo stage folder (runs/<exp>/stage1|2|3, holding handoff.safetensors and config.json).
    """
    fingerprints = record_base_fingerprint(stage_dir)
    for prefix, fingerprint in fingerprints.items():
        print(f"{stage_dir}: {prefix} {fingerprint}")
    return 0
