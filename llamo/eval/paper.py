"""Which evaluator, Mean/Std, Table-3 protocol and BERTScore ``llamo eval run`` uses (`resolve_eval_inputs`).

Defaults: the run's own ``evaluator/`` folder with the Mean/Std beside it, the suite protocol, the packaged MiniLM
BERTScore. ``--evaluator DIR`` / ``--mean_std DIR`` / ``--bertscore_model DIR`` replace each of them, and
``--paper`` asks for everything comparable with the paper's Tables 3/4:

- a converted **MotionStreamer evaluator** (``python -m metrics convert-evaluator motionstreamer epoch=99.ckpt
  --out DIR``), normalising with the **HumanML3D-272 Mean/Std** it was trained with (beside it, or ``--mean_std``);
- MotionStreamer's **protocol** (``--protocol motionstreamer``, `llamo.eval.motionstreamer`);
- **TM2T's BERTScore**: a local roberta-large, layer 17, IDF, baseline rescaling (`BERTScoreConfig.tm2t`).

A MotionStreamer-kind evaluator without Mean/Std is an error in every mode: normalising its input with the run's
corpus statistics would silently shift every embedding. With ``--paper`` every missing input is listed in one
error, each with the flag that supplies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamo.eval.settings import EvalSettings
from metrics.captioning import BERTScoreConfig, packaged_baseline
from metrics.generation import load_mean_std
from metrics.motionstreamer import KIND as MOTIONSTREAMER_KIND
from metrics.motionstreamer import check_mean_std
from stageio import read_stage_config

__all__ = ["BERTSCORE_HINT", "EVALUATOR_HINT", "EvalInputs", "MEAN_STD_HINT", "bertscore_config", "resolve_eval_inputs"]

#: what each flag of a comparable evaluation supplies (the --paper error names them)
EVALUATOR_HINT = (
    "--evaluator DIR (a converted MotionStreamer evaluator: `python -m metrics convert-evaluator motionstreamer "
    "Evaluator_272/epoch=99.ckpt --out DIR --mean_std humanml3d_272/mean_std`)"
)
MEAN_STD_HINT = "--mean_std DIR (HumanML3D-272 Mean.npy/Std.npy, the statistics the evaluator was trained with)"
BERTSCORE_HINT = "--bertscore_model DIR (a local roberta-large folder: config.json, weights and tokenizer)"

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER = ("tokenizer.json", "vocab.json")


@dataclass(frozen=True)
class EvalInputs:
    """What Tables 3/4 of ``llamo eval run`` use, resolved from `EvalSettings` and the run folder."""

    protocol: str
    """Table 3 protocol: ``suite`` or ``motionstreamer``."""
    evaluator_dir: Path | None
    """Evaluator folder (None: the run has none and --evaluator was not given; Table 3 is skipped)."""
    evaluator_kind: str | None
    """``kind`` of its config.json (``TextMotionEvaluator`` or ``MotionStreamerEvaluator``)."""
    mean_std_dir: Path | None
    """Folder of the Mean/Std the evaluator normalises with."""
    bertscore: BERTScoreConfig | None
    """Table 4's BERTScore (None: --no_bertscore)."""

    def describe_evaluator(self) -> str:
        """One phrase for the report: which evaluator and which statistics."""
        if self.evaluator_dir is None:
            return "no evaluator"
        return f"the {self.evaluator_kind} in `{self.evaluator_dir}` (Mean/Std of `{self.mean_std_dir}`)"


def _has_mean_std(directory: Path) -> bool:
    return any(
        (directory / m).is_file() and (directory / s).is_file()
        for m, s in (("Mean.npy", "Std.npy"), ("mean.npy", "std.npy"))
    )


def _evaluator_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a MotionStreamer evaluator folder (None: it is one)."""
    missing = [str(directory / f) for f in ("config.json", "handoff.safetensors") if not (directory / f).is_file()]
    if missing:
        return f"{' and '.join(missing)} not found"
    kind = read_stage_config(directory)["kind"]
    if kind != MOTIONSTREAMER_KIND:
        return f"{directory} holds a {kind or 'kind-less'} stage output, not a {MOTIONSTREAMER_KIND}"
    return None


def _bertscore_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a usable local roberta-large folder (None: it is one)."""
    missing = []
    if not (directory / "config.json").is_file():
        missing.append(str(directory / "config.json"))
    if not any((directory / w).is_file() for w in _WEIGHTS):
        missing.append(f"{directory}/{' or '.join(_WEIGHTS)}")
    if not any((directory / t).is_file() for t in _TOKENIZER):
        missing.append(f"{directory}/{' or '.join(_TOKENIZER)}")
    return f"{', '.join(missing)} not found" if missing else None


def _paper_inputs(run: Path, settings: EvalSettings) -> EvalInputs:
    """`resolve_eval_inputs` for ``--paper``: every problem gathered into one error."""
    problems: list[str] = []
    evaluator = Path(settings.evaluator) if settings.evaluator is not None else run / "evaluator"
    why = _evaluator_problem(evaluator)
    if why is not None:
        given = "" if settings.evaluator is not None else " (no --evaluator given: the run's own folder was checked)"
        problems.append(f"{EVALUATOR_HINT}: {why}{given}")
    mean_std = Path(settings.mean_std) if settings.mean_std is not None else evaluator
    if not _has_mean_std(mean_std):
        where = "--mean_std" if settings.mean_std is not None else "beside the evaluator"
        problems.append(f"{MEAN_STD_HINT}: {mean_std}/Mean.npy and Std.npy not found ({where})")
    if settings.bertscore_model is None:
        problems.append(f"{BERTSCORE_HINT}: not given")
    else:
        why = _bertscore_problem(Path(settings.bertscore_model))
        if why is not None:
            problems.append(f"{BERTSCORE_HINT}: {why}")
    baseline = packaged_baseline("roberta-large")
    if not Path(baseline).is_file():
        problems.append(f"the roberta-large rescale baseline {baseline} (shipped with bert-score): not found")
    if problems:
        raise FileNotFoundError(
            "--paper needs every input of the paper's comparable evaluation; missing:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    check_mean_std(*load_mean_std(mean_std))  # the shapes and values, once the files are known to exist
    return EvalInputs(
        protocol="motionstreamer",
        evaluator_dir=evaluator,
        evaluator_kind=MOTIONSTREAMER_KIND,
        mean_std_dir=mean_std,
        bertscore=bertscore_config(settings),
    )


def bertscore_config(settings: EvalSettings) -> BERTScoreConfig | None:
    """Table 4's BERTScore: TM2T's roberta-large with ``--bertscore_model``, else the packaged MiniLM (on the CPU,
    as before the flag existed); None with ``--no_bertscore``."""
    if not settings.bertscore:
        return None
    if settings.bertscore_model is not None:
        return BERTScoreConfig.tm2t(settings.bertscore_model, device=str(settings.device))
    return BERTScoreConfig()


def resolve_eval_inputs(run: str | Path, settings: EvalSettings) -> EvalInputs:
    """The evaluator, Mean/Std, protocol and BERTScore of ``llamo eval run`` (module docstring).

    Raises:
        FileNotFoundError: a folder given by a flag does not hold what it must (naming the flag and the file), or
            ``--paper`` without all its inputs (one error listing every missing one).
        ValueError: a MotionStreamer evaluator's Mean/Std are not 272 finite values with Std > 0.
    """
    run = Path(run)
    if settings.paper:
        return _paper_inputs(run, settings)
    if settings.bertscore_model is not None:
        why = _bertscore_problem(Path(settings.bertscore_model))
        if why is not None:
            raise FileNotFoundError(f"{BERTSCORE_HINT}: {why}")
    bertscore = bertscore_config(settings)
    if settings.evaluator is not None:
        evaluator = Path(settings.evaluator)
        if not (evaluator / "config.json").is_file() or not (evaluator / "handoff.safetensors").is_file():
            raise FileNotFoundError(
                f"--evaluator {evaluator}: no config.json + handoff.safetensors there; pass an evaluator folder "
                "(the run's evaluator/ or a converted MotionStreamer evaluator)"
            )
    else:
        evaluator = run / "evaluator"
        if not (evaluator / "handoff.safetensors").is_file():
            return EvalInputs(settings.protocol, None, None, None, bertscore)
    kind = read_stage_config(evaluator)["kind"]
    mean_std = Path(settings.mean_std) if settings.mean_std is not None else evaluator
    if not _has_mean_std(mean_std):
        if settings.mean_std is not None:
            raise FileNotFoundError(f"--mean_std {mean_std}: no Mean.npy/Std.npy there; pass the folder holding them")
        if kind == MOTIONSTREAMER_KIND:
            raise FileNotFoundError(
                f"{evaluator} is a MotionStreamer evaluator without Mean.npy/Std.npy beside it: it must normalise "
                f"with the HumanML3D-272 statistics it was trained with, not the run's corpus statistics; pass "
                f"{MEAN_STD_HINT}"
            )
        raise FileNotFoundError(f"{evaluator} holds no Mean.npy/Std.npy; pass {MEAN_STD_HINT.split(' (')[0]}")
    if kind == MOTIONSTREAMER_KIND:
        check_mean_std(*load_mean_std(mean_std))
    return EvalInputs(settings.protocol, evaluator, kind, mean_std, bertscore)
