"""The ``python -m metrics`` commands: ``captions`` (motion-to-text) and ``t2m`` (text-to-motion).

Each command is a typed function; `metrics.command` builds its options from the signature and docstring.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch

from metrics.captioning import (
    NUM_REFS,
    BERTScoreConfig,
    build_bert_scorer,
    caption_metrics,
    load_caption_files,
    preview_ids,
)
from metrics.command import write_json
from metrics.evaluators import load_evaluator
from metrics.generation import (
    DIVERSITY_PAIRS,
    GROUP_SIZE,
    MM_PAIRS,
    embed_clips,
    embed_texts,
    format_table,
    load_mean_std,
    read_clip_dir,
    read_mm_dir,
    repeat_protocol,
    t2m_metrics,
)
from metrics.motionstreamer import convert_motionstreamer_evaluator

__all__ = ["captions", "convert_evaluator", "t2m"]


def captions(
    *,
    pred: Path,
    refs: Path,
    out: Path | None = None,
    num_refs: int = NUM_REFS,
    bertscore: bool = True,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    bertscore_idf: bool | None = None,
    bertscore_baseline: str | None = None,
    bertscore_batch_size: int = 64,
    device: str = "cpu",
    per_item: bool = False,
    evaluator: Path | None = None,
    motions: Path | None = None,
    mean_std: Path | None = None,
    group_size: int = GROUP_SIZE,
    seed: int = 0,
    batch_size: int = 64,
) -> int:
    """Motion-to-text: BLEU@1/@4, ROUGE-L, CIDEr, BERTScore of pred.json vs refs.json.

    Prints the table and writes the JSON (``--out``, default ``<pred>.metrics.json``).

    Args:
        pred: JSON ``{id: predicted caption}``.
        refs: JSON ``{id: [reference caption, ...]}``.
        out: Result JSON (default: ``<pred>.metrics.json``).
        num_refs: References per motion (TM2T rule).
        bertscore: Compute BERTScore (``--no_bertscore`` skips it).
        bertscore_model: Local HF encoder folder; switches to the TM2T protocol (layer 17, IDF, roberta-large
            baseline), meant for roberta-large weights (default: packaged all-MiniLM-L6-v2, layer 6, no IDF, no
            rescaling).
        bertscore_layer: Layer whose embeddings are compared (default: the protocol's).
        bertscore_idf: IDF weighting over the references (default: the protocol's).
        bertscore_baseline: Rescale baseline TSV, or ``none`` for no rescaling (default: the protocol's).
        bertscore_batch_size: BERTScore batch size.
        device: Torch device of the BERTScore encoder and the evaluator.
        per_item: Also write per-caption scores to the JSON.
        evaluator: Evaluator folder of either kind (the evaluator stage's, or a converted MotionStreamer one): adds
            caption R@1-3 and MM-Dist (needs --motions).
        motions: Folder of ground-truth ``<id>.npy`` clips (T, 272), UN-normalised (with --evaluator).
        mean_std: Folder with Mean.npy/Std.npy (default: the evaluator folder).
        group_size: R-precision group size.
        seed: Seed of the R-precision group shuffle.
        batch_size: Evaluator batch size.
    """
    ids, preds, references = load_caption_files(pred, refs)
    config = None
    if bertscore:
        base = BERTScoreConfig() if bertscore_model is None else BERTScoreConfig.tm2t(bertscore_model)
        overrides = {"batch_size": bertscore_batch_size, "device": device}
        if bertscore_layer is not None:
            overrides["num_layers"] = bertscore_layer
        if bertscore_idf is not None:
            overrides["idf"] = bertscore_idf
        if bertscore_baseline is not None:
            overrides["baseline_path"] = None if bertscore_baseline.lower() == "none" else bertscore_baseline
        config = BERTScoreConfig(**{**asdict(base), **overrides})
        build_bert_scorer(config)  # fail on a bad model folder before the evaluator work
    encode_text, motion = None, None
    if evaluator is not None:
        if motions is None:
            raise ValueError(
                "--evaluator needs --motions DIR (the ground-truth <id>.npy clips of the captioned motions)"
            )
        model = load_evaluator(evaluator, map_location=device)
        mean, std = load_mean_std(mean_std if mean_std is not None else evaluator)
        clips = read_clip_dir(motions, model.config.feature_dim)
        by_id = dict(zip(clips.ids, clips.clips))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"--motions {motions} has no <id>.npy clip for caption ids {preview_ids(missing)}")
        motion = embed_clips(model, [by_id[i] for i in ids], mean, std, batch_size, device, "embed motion")
        encode_text = model.encode_text
    elif motions is not None:
        raise ValueError("--motions is only used with --evaluator DIR (caption R-precision / MM-Dist)")
    report = caption_metrics(
        preds,
        references,
        ids,
        num_refs=num_refs,
        bertscore_config=config,
        encode_text=encode_text,
        motion_embeddings=motion,
        retrieval_group_size=group_size,
        seed=seed,
        progress=True,
    )
    result = report.to_dict(per_item=per_item)
    result["inputs"] = {"pred": str(pred), "refs": str(refs)}
    if evaluator is not None:
        result["inputs"].update(evaluator=str(evaluator), motions=str(motions))
    path = write_json(out if out is not None else pred.with_name(pred.stem + ".metrics.json"), result)
    print(report.format_table())
    print(f"wrote {path}")
    return 0


def t2m(
    *,
    real: Path,
    gen: Path,
    evaluator: Path,
    mean_std: Path | None = None,
    repeats: int = 20,
    seed: int = 0,
    out: Path | None = None,
    group_size: int = GROUP_SIZE,
    diversity_pairs: int = DIVERSITY_PAIRS,
    mm_pairs: int = MM_PAIRS,
    batch_size: int = 64,
    device: str = "cpu",
) -> int:
    """Text-to-motion: FID, R-precision, MM-Dist, Diversity, MultiModality.

    Embeds REAL and GEN (folder format in `metrics.generation`) with the evaluator, runs the repeated protocol and
    prints mean ± 95 % interval per metric; ``--out`` also writes the results as JSON.

    Args:
        real: Folder of ground-truth ``<id>.npy`` clips (T, 272).
        gen: Folder of generated ``<id>.npy`` clips + ``texts/<id>.txt`` captions.
        evaluator: Evaluator folder of either kind (the evaluator stage's, or a converted MotionStreamer one).
        mean_std: Folder with Mean.npy/Std.npy (default: the evaluator folder).
        repeats: Protocol repetitions N.
        seed: Seed of the first repetition.
        out: Write the results as JSON here.
        group_size: R-precision group size.
        diversity_pairs: Diversity pairs.
        mm_pairs: MultiModality pairs per text.
        batch_size: Evaluator batch size.
        device: Torch device for the evaluator (cpu, cuda, ...).
    """
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    model = load_evaluator(evaluator, map_location=device)
    feature_dim = model.config.feature_dim
    mean, std = load_mean_std(mean_std if mean_std is not None else evaluator)
    generated = read_clip_dir(gen, feature_dim, with_texts=True)
    reference = read_clip_dir(real, feature_dim)
    if generated.ids != reference.ids:
        only_gen = sorted(set(generated.ids) - set(reference.ids))
        only_real = sorted(set(reference.ids) - set(generated.ids))
        raise ValueError(
            f"--real ({len(reference.ids)} clips) and --gen ({len(generated.ids)} clips) must hold the same ids; "
            f"only in --gen: {only_gen[:10]}, only in --real: {only_real[:10]}"
        )
    assert generated.texts is not None
    # fail before the (slow) embedding when the set is too small for the protocol's sizes
    if len(generated.ids) < group_size:
        raise ValueError(f"{len(generated.ids)} clips are fewer than --group_size {group_size}; pass a smaller value")
    if len(generated.ids) < diversity_pairs:
        raise ValueError(
            f"{len(generated.ids)} clips are fewer than --diversity_pairs {diversity_pairs} (pairs are drawn "
            "without replacement); pass a smaller value"
        )
    text_emb = embed_texts(model, generated.texts, batch_size)
    real_emb = embed_clips(model, reference.clips, mean, std, batch_size, device, "embed real")
    gen_emb = embed_clips(model, generated.clips, mean, std, batch_size, device, "embed generated")
    mm_emb = None
    mm_dir = gen / "multimodality"
    if mm_dir.is_dir():
        groups = read_mm_dir(mm_dir, generated.ids, feature_dim)
        flat = [clip for clips in groups.values() for clip in clips]
        per_text = len(next(iter(groups.values())))
        mm_emb = embed_clips(model, flat, mean, std, batch_size, device, "embed multimodality")
        mm_emb = mm_emb.reshape(len(groups), per_text, -1)  # (K, R, E)

    def one_run(generator: torch.Generator) -> dict[str, float]:
        return t2m_metrics(
            text_emb,
            real_emb,
            gen_emb,
            generator,
            mm_emb,
            group_size=group_size,
            diversity_pairs=diversity_pairs,
            mm_pairs=mm_pairs,
        )

    summary = repeat_protocol(one_run, repeats=repeats, seed=seed, progress=True)
    print(format_table(summary, repeats))
    if out is not None:
        report = {
            "metrics": {name: asdict(r) for name, r in summary.items()},
            "num_pairs": len(generated.ids),
            "num_multimodality_texts": 0 if mm_emb is None else int(mm_emb.shape[0]),
            "repeats": repeats,
            "seed": seed,
            "group_size": group_size,
            "diversity_pairs": diversity_pairs,
            "mm_pairs": mm_pairs,
            "evaluator": str(evaluator),
            "real": str(real),
            "gen": str(gen),
        }
        print(f"wrote {write_json(out, report)}", file=sys.stderr)
    return 0



def convert_evaluator(
    kind: Literal["motionstreamer"],
    ckpt: Path,
    /,
    *,
    out: Path,
    mean_std: Path | None = None,
    allow_pickle: bool = False,
) -> int:
    """Convert a released evaluator checkpoint once into the suite's weights-only evaluator folder.

    ``motionstreamer``: MotionStreamer's ``Evaluator_272/epoch=99.ckpt`` (TMR motion encoder + DistilBERT text
    encoder). Prints where the folder is; ``--evaluator OUT`` of ``t2m``/``captions`` (and the llamo evaluation
    commands) then loads it without unpickling anything.

    Args:
        kind: Which released evaluator the checkpoint is.
        ckpt: The released checkpoint file.
        out: Folder to write (handoff.safetensors + config.json).
        mean_std: Folder with the HumanML3D-272 Mean.npy/Std.npy the evaluator was trained with; checked and
            copied beside the weights, where --mean_std defaults to look.
        allow_pickle: Read a checkpoint that needs a full unpickle (only for a file you trust).
    """
    assert kind == "motionstreamer", kind  # the Literal is checked by the parser
    folder = convert_motionstreamer_evaluator(ckpt, out, allow_pickle=allow_pickle, mean_std_dir=mean_std)
    model = load_evaluator(folder)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {folder} ({model.__class__.__name__}, {parameters:,} parameters)")
    if mean_std is None:
        print("no --mean_std given: pass the HumanML3D-272 Mean/Std folder to every command that uses this evaluator")
    return 0
