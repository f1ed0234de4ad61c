"""The generation setting of a run (Euler steps, guidance scale, unconditional source, noise temperature) and where it
comes from.

Classifier-free guidance changes what a run generates as much as its weights do (issue 14 measured R@3 0.277 at
scale 1.0, 0.435 at 2.0 and 0.176 at 6.0 on the same demo run), so the setting is chosen by measurement and
recorded with the run: ``llamo eval sweep`` scores a grid on the validation split (`llamo.eval.sweep`) and writes
the chosen setting to ``RUN/generation.json`` (`GENERATION_FILE`). `load_run` reads it (`resolve_generation`), and
`LLaMoRun.stream`/`generate` — hence ``llamo generate`` and ``llamo eval run`` — use it whenever a call leaves
``steps``/``guidance_scale``/``cfg``/``temperature`` unset; an explicit value always wins. A run without the file
generates with the model config's defaults (``flow_head.sample_steps``, ``flow_head.guidance_scale``, cfg ``"null"``,
temperature 1), exactly what `stream_motion` does on its own. A record written before the temperature was part of
the setting has none: it reads as temperature 1, the value those runs generated with.

The record names the LLaMo stage it was measured on; another stage of the same run (``--stage stage2``) is not
given a setting chosen for different weights: it gets the config defaults and `GenerationSetting.source` says
why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamo.core.model import LLaMo

__all__ = [
    "CFG_SOURCES",
    "GENERATION_FILE",
    "GenerationSetting",
    "check_temperature",
    "config_default_setting",
    "read_generation_record",
    "resolve_generation",
    "write_generation_record",
]

#: the file in a run folder that records the generation setting chosen by ``llamo eval sweep``
GENERATION_FILE = "generation.json"
#: the unconditional sources of classifier-free guidance (`stream_motion`'s ``cfg``)
CFG_SOURCES = ("null", "prompt")
#: version of the record's layout
RECORD_VERSION = 1


@dataclass(frozen=True)
class GenerationSetting:
    """The flow head's sampling setting used by default, and why it is the default."""

    steps: int
    """Euler steps of the flow head."""
    guidance_scale: float
    """CFG scale s in ``v_u + s (v_c - v_u)`` (1 = no guidance)."""
    cfg: str
    """Unconditional source: ``"null"`` (learned null condition) or ``"prompt"`` (empty-caption rows)."""
    source: str
    """Where the values come from, as a sentence (the sweep's record, the model config, explicit flags)."""
    recorded: bool = False
    """True when the values come from the run's ``generation.json``."""
    temperature: float = 1.0
    """Scale of each latent's initial noise, ``x_0 ~ N(0, temperature^2 I)`` (1 = the training distribution; MAR's
    sampling temperature, applied to the deterministic Euler ODE through its starting point)."""

    def describe(self) -> str:
        """``25 Euler steps, guidance scale 2.0, unconditional source 'null', noise temperature 1``."""
        return (
            f"{self.steps} Euler steps, guidance scale {self.guidance_scale:g}, unconditional source {self.cfg!r}, "
            f"noise temperature {self.temperature:g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what reports record)."""
        return {
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "cfg": self.cfg,
            "temperature": self.temperature,
            "source": self.source,
            "recorded": self.recorded,
        }

    def fill(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` of `stream_motion` with ``steps``/``guidance_scale``/``cfg``/``temperature`` set to this
        setting where they are absent or None (an explicit value wins)."""
        out = dict(kwargs)
        values = (
            ("steps", self.steps),
            ("guidance_scale", self.guidance_scale),
            ("cfg", self.cfg),
            ("temperature", self.temperature),
        )
        for key, value in values:
            if out.get(key) is None:
                out[key] = value
        return out

    def override(
        self,
        steps: int | None = None,
        guidance_scale: float | None = None,
        cfg: str | None = None,
        temperature: float | None = None,
        flags: str = "",
    ) -> GenerationSetting:
        """This setting with the given values replaced (None keeps a value); the source names what was given."""
        pairs = (("steps", steps), ("guidance_scale", guidance_scale), ("cfg", cfg), ("temperature", temperature))
        given = {k: v for k, v in pairs if v is not None}
        if not given:
            return self
        check_setting(given.get("steps", self.steps), given.get("guidance_scale", self.guidance_scale),
                      given.get("cfg", self.cfg), where=flags or "the explicit setting",
                      temperature=given.get("temperature", self.temperature))  # fmt: skip
        named = ", ".join(f"{k}={v!r}" for k, v in given.items())
        return GenerationSetting(
            steps=int(given.get("steps", self.steps)),
            guidance_scale=float(given.get("guidance_scale", self.guidance_scale)),
            cfg=str(given.get("cfg", self.cfg)),
            source=f"explicit {flags + ' ' if flags else ''}({named}); otherwise {self.source}",
            recorded=False,  # at least one value is not the record's
            temperature=float(given.get("temperature", self.temperature)),
        )


def check_temperature(temperature: Any, where: str) -> None:
    """ValueError naming ``where`` unless the noise temperature is a finite number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"{where}: temperature must be a finite number > 0 (1 = the training noise N(0, I)), got {temperature!r}"
        )


def check_setting(steps: Any, guidance_scale: Any, cfg: Any, where: str, temperature: Any = 1.0) -> None:
    """ValueError naming ``where`` unless steps is a positive int, the scale a finite number, cfg a source and the
    noise temperature a finite number > 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{where}: steps must be a positive integer, got {steps!r}")
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, int | float)
        or not math.isfinite(guidance_scale)
    ):
        raise ValueError(f"{where}: guidance_scale must be a finite number, got {guidance_scale!r}")
    if cfg not in CFG_SOURCES:
        raise ValueError(f"{where}: cfg must be one of {list(CFG_SOURCES)}, got {cfg!r}")
    check_temperature(temperature, where)


def config_default_setting(model: LLaMo) -> GenerationSetting:
    """The model config's defaults: what `stream_motion` uses when nothing is given."""
    head = model.flow_head.config
    return GenerationSetting(
        steps=int(head.sample_steps),
        guidance_scale=float(head.guidance_scale),
        cfg="null",
        source=(
            f"the model config default (flow_head.sample_steps={head.sample_steps}, flow_head.guidance_scale="
            f"{head.guidance_scale:g}, cfg 'null', temperature 1); no setting recorded by `llamo eval sweep`"
        ),
    )


def write_generation_record(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (must hold ``chosen: {steps, guidance_scale, cfg[, temperature]}``, ``stage`` and ``split``) to
    ``RUN/generation.json``; returns the path. The record is checked before anything is written."""
    path = Path(run_dir) / GENERATION_FILE
    full = {"version": RECORD_VERSION, **record}
    _parse_record(full, path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a record
    return path


def read_generation_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The parsed ``RUN/generation.json``, or None when the run has none (ValueError naming the file when it is
    not a valid record)."""
    path = Path(run_dir) / GENERATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run `llamo eval sweep` or delete the file") from err
    _parse_record(record, path)
    return record


def _parse_record(record: Any, path: Path) -> None:
    fix = "re-run `llamo eval sweep` or delete the file"
    if not isinstance(record, Mapping) or not isinstance(record.get("chosen"), Mapping):
        raise ValueError(f"{path}: no 'chosen' entry with steps/guidance_scale/cfg; {fix}")
    chosen = record["chosen"]
    # a record from before the temperature was part of the setting has none: those runs generated at 1
    check_setting(chosen.get("steps"), chosen.get("guidance_scale"), chosen.get("cfg"),
                  where=f"{path} chosen ({fix})", temperature=chosen.get("temperature", 1.0))  # fmt: skip
    if record.get("split") == "test":
        raise ValueError(f"{path}: the setting was chosen on the test split, which the choice must not see; {fix}")
    if not isinstance(record.get("stage"), str):
        raise ValueError(f"{path}: no 'stage' entry naming the LLaMo stage it was measured on; {fix}")


def resolve_generation(model: LLaMo, run_dir: str | Path, stage: str) -> GenerationSetting:
    """The default generation setting of ``stage`` (e.g. ``stage3``) of the run ``run_dir``: the one recorded
    in ``RUN/generation.json`` when it was measured on that stage, else the model config's defaults."""
    default = config_default_setting(model)
    record = read_generation_record(run_dir)
    if record is None:
        return default
    path = Path(run_dir) / GENERATION_FILE
    if record["stage"] != stage:
        return GenerationSetting(
            default.steps,
            default.guidance_scale,
            default.cfg,
            source=(
                f"the model config default (flow_head.sample_steps={default.steps}, flow_head.guidance_scale="
                f"{default.guidance_scale:g}, cfg 'null', temperature 1): {path} was measured on {record['stage']}, "
                f"not {stage}"
            ),
        )
    chosen = record["chosen"]
    return GenerationSetting(
        steps=int(chosen["steps"]),
        guidance_scale=float(chosen["guidance_scale"]),
        cfg=str(chosen["cfg"]),
        temperature=float(chosen.get("temperature", 1.0)),
        source=(
            f"recorded by `llamo eval sweep` on the {record['split']!r} split of {record.get('data', '?')} "
            f"({path}, {record.get('created', 'undated')}; rule: {record.get('rule_name', 'see the file')})"
        ),
        recorded=True,
    )
