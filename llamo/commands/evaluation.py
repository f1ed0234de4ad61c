"""``llamo eval vae|evaluator|language|run|ablations``: the evaluation protocols of `llamo.eval` as commands."""

from __future__ import annotations

import json as json_module
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from llamo.core.llm import load_llm, load_tokenizer
from llamo.data.humanml272 import MotionCorpus
from llamo.data.latents import load_vae
from llamo.eval.ablations import ablation_report
from llamo.eval.language import load_probe, run_language_probe
from llamo.eval.markdown import format_language_table, format_report
from llamo.eval.report import evaluate_run
from llamo.eval.retrieval import evaluate_retrieval
from llamo.eval.settings import EvalSettings
from llamo.eval.sweep import PLOT_FILE, SweepSettings, format_sweep_table, plot_sweep, record_sweep, run_sweep
from llamo.eval.vae import evaluate_vae
from llamo.inference.text import hf_logits_fn
from metrics.command import write_json
from metrics.evaluators import load_evaluator
from metrics.generation import GROUP_SIZE, TOP_K

__all__ = ["ablations", "evaluator", "language", "run", "sweep", "vae"]


def default_device(device: str | None) -> str:
    """``device``, or ``cuda`` when available and ``cpu`` otherwise."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def vae(
    *,
    ckpt: Path,
    data: Path,
    split: str = "test",
    min_frames: int = 60,
    max_frames: int = 299,
    batch_size: int = 32,
    use_mean: bool = False,
    seed: int = 0,
    device: str | None = None,
    name: str | None = None,
    json: Path | None = None,
) -> int:
    """Print a Table-2 row (MPJPE, MPJRE, sJPE, T.Down, Comp.) for a VAE.

    MotionStreamer's TAE test protocol (`llamo.eval.vae`): the split's clips with min_frames <= T <= max_frames,
    cropped to a multiple of 4, passed through encode (sampled z) and decode.

    Args:
        ckpt: VAE stage output folder (holds handoff.safetensors + config.json), e.g. runs/default/vae.
        data: HumanML3D-272 style dataset folder.
        split: Split to reconstruct.
        min_frames: Shortest clip kept (MotionStreamer: 60).
        max_frames: Longest clip kept (MotionStreamer: T < 300).
        batch_size: Clips per batch.
        use_mean: Decode mu instead of a sampled z.
        seed: Seed of the latent noise.
        device: Torch device (default: cuda when available, else cpu).
        name: Row label (default: CausalVAE-z<latent> (<variance>)).
        json: Also write the row as JSON to this file.
    """
    if max_frames < 4 or min_frames < 4 or batch_size < 1:
        raise ValueError(
            f"--max_frames and --min_frames must be >= 4 and --batch_size >= 1, got {max_frames}, {min_frames}, "
            f"{batch_size}"
        )
    model = load_vae(ckpt)
    # min_length=1: shorter clips are left out by the protocol (evaluate_vae), they are not errors
    corpus = MotionCorpus(data, split=split, min_length=1, max_length=max_frames)
    result = evaluate_vae(
        model,
        corpus,
        min_frames=min_frames,
        max_frames=max_frames,
        batch_size=batch_size,
        use_mean=use_mean,
        seed=seed,
        device=default_device(device),
        name=name,
    )
    print(result.table())
    left_out = len(corpus) - result.clips + corpus.too_long
    print(
        f"({result.clips} clips, {result.frames} frames of split {split!r}; {left_out} clips outside "
        f"[{min_frames}, {max_frames}] frames left out)"
    )
    if json is not None:
        write_json(json, asdict(result))
    return 0


def evaluator(
    *,
    ckpt: Path,
    data: Path,
    split: str = "test",
    mean_std: Path | None = None,
    repeats: int = 20,
    seed: int = 0,
    min_frames: int = 60,
    max_frames: int = 300,
    skip_invalid: bool = False,
    group_size: int = GROUP_SIZE,
    batch_size: int = 64,
    device: str = "cpu",
    out: Path | None = None,
) -> int:
    """Retrieval R@1/2/3 + MM-Dist of a trained evaluator (real motion vs its captions).

    Prints mean ± 95 % interval over the repetitions and the chance level (`llamo.eval.retrieval`).

    Args:
        ckpt: Evaluator folder of either kind (handoff.safetensors + config.json).
        data: HumanML3D-272 style corpus folder.
        split: Split to evaluate.
        mean_std: Folder with Mean.npy/Std.npy (default: the --ckpt folder).
        repeats: Protocol repetitions.
        seed: Seed of the first repetition.
        min_frames: Shorter clips are left out (T2M test: 60).
        max_frames: Longer clips are cropped (T2M test: 300).
        skip_invalid: Leave out clips that are too short or broken (counted).
        group_size: R-precision group size.
        batch_size: Evaluator batch size.
        device: Torch device.
        out: Write the results as JSON here.
    """
    model = load_evaluator(ckpt)
    # the T2M test protocol keeps min_frames <= T < max_frames: longer clips are left out (counted), shorter ones
    # are errors unless --skip_invalid
    corpus = MotionCorpus(
        data,
        split=split,
        min_length=min_frames,
        max_length=max_frames - 1,
        skip_invalid=skip_invalid,
        mean_std=mean_std if mean_std is not None else ckpt,
    )
    summary = evaluate_retrieval(
        model, corpus, repeats, seed, group_size=group_size, max_frames=max_frames, batch_size=batch_size, device=device
    )
    print(
        f"evaluator {ckpt} on {data} split {split!r}: {len(corpus)} clips "
        f"({corpus.too_long} longer than {max_frames - 1} frames and {corpus.skipped} invalid left out), "
        f"{repeats} repetitions"
    )
    for metric, result in summary.items():
        chance = f"   (chance {int(metric[2:]) / group_size:.4f})" if metric.startswith("R@") else ""
        print(f"  {metric:<8} {result.mean:.4f} ± {result.ci95:.4f}{chance}")
    if out is not None:
        report = {
            "metrics": {k: asdict(v) for k, v in summary.items()},
            "chance": {f"R@{k}": k / group_size for k in range(1, TOP_K + 1)},
            "group_size": group_size,
            "clips": len(corpus),
            "too_long": corpus.too_long,
            "skipped": corpus.skipped,
            "split": split,
            "repeats": repeats,
            "seed": seed,
        }
        write_json(out, report)
    return 0


def language(
    *,
    llm: str = "smollm2",
    name: str | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    replies: Path | None = None,
) -> int:
    """Language-preservation probe (accuracy + perplexity) of a base LLM.

    Prints the table row and the probe's wall time (`llamo.eval.language`).

    Args:
        llm: Local HF Llama folder, or ``smollm2`` (the packaged SmolLM2-135M-Instruct).
        name: Model name in the table (default: the --llm value).
        max_new_tokens: Reply length limit in tokens.
        batch_size: Prompts per generation batch.
        replies: Write id/prompt/reply/correct as JSON lines here.
    """
    model = load_llm(llm).eval()
    tokenizer = load_tokenizer(llm)
    result = run_language_probe(hf_logits_fn(model), tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if replies is not None:
        replies.parent.mkdir(parents=True, exist_ok=True)
        with replies.open("w", encoding="utf-8") as f:
            for item, reply, hit in zip(load_probe(), result.replies, result.hits):
                record = {"id": item.id, "prompt": item.prompt, "reply": reply, "correct": hit}
                f.write(json_module.dumps(record, ensure_ascii=False) + "\n")
    print(format_language_table([(name or str(llm), result)]))
    print(f"probe wall time: {result.seconds:.1f}s")
    return 0


def run(
    run: Path,
    /,
    *,
    data: Path,
    settings: EvalSettings,
    out: Path | None = None,
    report: Path | None = None,
) -> int:
    """Evaluate a finished run: Tables 2-4, language probe, samples -> report.md.

    Prints the markdown report and writes it (``--report``, default RUN/report.md) with the results JSON
    (``--out``, default RUN/results.json) and the rendered samples (RUN/samples/).

    Args:
        run: Run folder with vae/, evaluator/, stage1..3/ (e.g. runs/demo).
        data: Corpus folder the run was trained on.
        out: Results JSON (default: RUN/results.json).
        report: Markdown report (default: RUN/report.md).
    """
    results = evaluate_run(run, data, settings)
    json_path = write_json(out or run / "results.json", results)
    markdown = format_report(results)
    report_path = report or run / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {json_path} and {report_path}", file=sys.stderr)
    return 0


def sweep(run: Path, /, *, data: Path, settings: SweepSettings, record: bool = True) -> int:
    """Choose a run's guidance scale, unconditional source and Euler steps on the validation split.

    Scores every setting of the grid (FID, R@3, MM-Dist, ms per token) with the run's evaluator, prints the table,
    draws the curves to RUN/sweep.png and records the setting the README's rule picks in RUN/generation.json,
    which `llamo generate` and `llamo eval run` then use by default (explicit flags still win). --split test is
    refused: the choice must not see the test split.

    Args:
        run: Run folder with vae/, evaluator/, stage1..3/ (e.g. runs/demo).
        data: Corpus folder the run was trained on.
        record: Write RUN/generation.json (--no_record: print and plot only).
    """
    result = run_sweep(run, data, settings)
    print(format_sweep_table(result))
    plot = plot_sweep(result, run / PLOT_FILE)
    print(f"wrote {plot}", file=sys.stderr)
    if record:
        print(f"wrote {record_sweep(run, result)} (used by llamo generate / llamo eval run)", file=sys.stderr)
    else:
        print("--no_record: nothing recorded; generation keeps its current default", file=sys.stderr)
    return 0


def ablations(runs: Path, /, *, reference: str = "demo", out: Path | None = None) -> int:
    """Gather every RUNS/ablate-*/results.json into the ablation report.

    Compares each ablation with the reference run and with the paper's direction; prints the markdown and writes
    it (default RUNS/ablations/report.md).

    Args:
        runs: Runs folder holding ablate-*/results.json.
        reference: Run folder name of the full model.
        out: Markdown report (default: RUNS/ablations/report.md).
    """
    markdown = ablation_report(runs, reference)
    path = out or runs / "ablations" / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {path}", file=sys.stderr)
    return 0
