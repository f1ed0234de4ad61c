"""Fingerprint of the frozen base a handoff leaves out: definition, recording, checking on every load path, the
report's language check, older handoffs without one (issue 12, part 3)."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_llamo import LLAMA_CONFIGS, tiny_llamo_config, tiny_tokenizer
from torch import nn

from callbacks.handoff import StageHandoff
from llamo.core.llm import LLMConfig, build_random_llm, load_llm
from llamo.core.model import LLaMo
from llamo.eval.language import language_section
from llamo.eval.markdown import _checks
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.run import load_run, record_base_fingerprint
from llamo.stages.align import AlignStage
from stageio import (
    FINGERPRINT_VERSION,
    fingerprint_tensors,
    load_stage_output,
    load_stage_weights,
    record_excluded_fingerprints,
    save_stage_output,
)

# -- the definition --------------------------------------------------------------------------------------


def _reference(state: dict[str, torch.Tensor], tied: dict[str, str]) -> str:
    """The documented definition, written out independently (``tied``: key -> the earlier key it aliases)."""
    h = hashlib.sha256(FINGERPRINT_VERSION)
    for key in sorted(state):
        t = state[key]
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if key in tied:
            h.update(f"tied:{tied[key]}\n".encode())
        else:
            # numpy has no bfloat16: its 16-bit patterns as int16 are the same bytes
            plain = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            raw = plain.contiguous().numpy().tobytes()
            h.update(f"{len(raw)}\n".encode() + raw)
    return "sha256:" + h.hexdigest()


def test_fingerprint_follows_its_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=gen)
    state = {
        "z.weight": torch.randn(4, 3, generator=gen).t(),  # non-contiguous: hashed in row-major order
        "emb.weight": emb,
        "head.weight": emb,  # tied: hashed once
        "norm": torch.randn(4, generator=gen).to(torch.bfloat16),
        "count": torch.tensor(3),
    }
    got = fingerprint_tensors(state)
    assert got == _reference(state, tied={"head.weight": "emb.weight"})
    assert got == fingerprint_tensors(dict(reversed(list(state.items()))))  # key order of the dict does not enter
    # an untied copy with equal values is a different model structure, and hashes the bytes twice
    assert fingerprint_tensors({**state, "head.weight": emb.clone()}) == _reference(state, tied={})
    assert fingerprint_tensors({**state, "head.weight": emb.clone()}) != got


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["emb.weight"].view(-1)[5].add_(1e-6),  # one element
        lambda s: s.update({"emb.weight": s["emb.weight"].double()}),  # dtype
        lambda s: s.update({"emb.weight": s["emb.weight"].reshape(4, 6)}),  # shape
        lambda s: s.update({"emb.weights": s.pop("emb.weight")}),  # key
    ],
)
def test_any_change_changes_the_fingerprint(change) -> None:  # noqa: ANN001
    state = {"emb.weight": torch.randn(6, 4), "norm": torch.ones(4)}
    before = fingerprint_tensors(state)
    state = {k: v.clone() for k, v in state.items()}
    change(state)
    assert fingerprint_tensors(state) != before


# -- stageio: recorded at save, checked at load, older outputs warn ----------------------------------------


class Toy(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.base = nn.Linear(4, 4)
        self.motion = nn.Linear(4, 4)


def test_handoff_records_the_excluded_fingerprint_and_load_checks_it(tmp_path: Path) -> None:
    src = Toy(seed=0)
    save_stage_output(tmp_path, src, {}, excluded_prefixes=["base."])
    recorded = load_stage_output(tmp_path).excluded_fingerprints
    assert recorded == {"base.": fingerprint_tensors({"weight": src.base.weight, "bias": src.base.bias})}
    load_stage_weights(Toy(seed=0), tmp_path, rebuilt_from="seed 0")  # same base: loads

    other = Toy(seed=0)
    with torch.no_grad():
        other.base.weight[1, 2] += 1e-3  # one weight of the rebuilt base changed
    with pytest.raises(ValueError) as err:
        load_stage_weights(other, tmp_path, rebuilt_from="the toy's seed 0")
    message = str(err.value)
    assert "1 problem(s)" in message and "excluded weights 'base.' differ" in message
    assert recorded["base."] in message and fingerprint_tensors(other.base.state_dict()) in message
    assert "rebuilt from the toy's seed 0" in message and "retrain the stage" in message


def test_output_without_fingerprint_warns_and_can_be_recorded(tmp_path: Path) -> None:
    save_stage_output(tmp_path, Toy(), {}, excluded_prefixes=["base."])
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["excluded_fingerprints"]  # as written before fingerprints existed
    (tmp_path / "config.json").write_text(json.dumps(meta))
    changed = Toy(seed=1)
    with pytest.warns(UserWarning, match=r"records no fingerprint .* NOT checked .* `llamo record-fingerprint"):
        load_stage_weights(changed, tmp_path)  # loads: users have old runs

    record_excluded_fingerprints(tmp_path, Toy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_stage_weights(Toy(), tmp_path)
    with pytest.raises(ValueError, match="differ"):
        load_stage_weights(Toy(seed=1), tmp_path)
    with pytest.raises(ValueError, match="never overwritten"):
        record_excluded_fingerprints(tmp_path, Toy(seed=1))


# -- LLaMo: load_run, StageHandoff, the report's language check ----------------------------------------------


def _base_folder(root: Path, seed: int = 0) -> Path:
    folder = root / "base"
    build_random_llm(LLAMA_CONFIGS["gqa_tied"], seed=seed).save_pretrained(folder)
    return folder


def _change_one_weight(folder: Path) -> None:
    llm = load_llm(folder)
    with torch.no_grad():
        llm.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    llm.save_pretrained(folder)


def _write_stage(root: Path, llm: LLMConfig) -> Path:
    tok = root / "tokenizer"
    tiny_tokenizer().save_pretrained(tok)
    llm.tokenizer = str(tok)
    config = tiny_llamo_config("gqa_tied", llm=llm)
    model = LLaMo(config)
    core = config.to_dict()
    core.pop("loss")
    stage = root / "run" / "stage1"
    save_stage_output(stage, model, core, kind="LLaMo", excluded_prefixes=model.frozen_prefixes())
    return stage


def test_load_run_refuses_a_changed_base_folder_and_seed(tmp_path: Path) -> None:
    folder = _base_folder(tmp_path)
    stage = _write_stage(tmp_path, LLMConfig(path=str(folder)))
    recorded = load_stage_output(stage).excluded_fingerprints["mot.llm."]
    assert recorded == fingerprint_tensors(load_llm(folder).state_dict())  # the base's own fingerprint
    load_run(stage.parent, motion=False)

    _change_one_weight(folder)
    with pytest.raises(ValueError) as err:
        load_run(stage.parent, motion=False)
    message = str(err.value)
    assert f"llm.path {str(folder)!r}, llm.dtype float32" in message and "1 problem(s)" in message
    assert recorded in message and fingerprint_tensors(load_llm(folder).state_dict()) in message

    seeded = _write_stage(tmp_path / "seeded", LLMConfig(config=dict(LLAMA_CONFIGS["gqa_tied"])))
    meta = json.loads((seeded / "config.json").read_text())
    meta["config"]["llm"]["seed"] = 1
    (seeded / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"rebuilt from the seeded random config \(llm.config, llm.seed 1"):
        load_run(seeded.parent, motion=False)


def test_old_llamo_handoff_warns_and_record_fingerprint_fixes_it(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from llamo.cli import main

    folder = _base_folder(tmp_path)
    stage = _write_stage(tmp_path, LLMConfig(path=str(folder)))
    meta = json.loads((stage / "config.json").read_text())
    recorded = meta.pop("excluded_fingerprints")
    (stage / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=f"llamo record-fingerprint {stage}"):
        load_run(stage.parent, motion=False)
    assert main(["record-fingerprint", str(stage)]) == 0
    assert recorded["mot.llm."] in capsys.readouterr().out
    assert load_stage_output(stage).excluded_fingerprints == recorded
    assert record_base_fingerprint(stage) == recorded  # idempotent


def _stage_module(llm: LLMConfig) -> AlignStage:
    return AlignStage(core=tiny_llamo_config("gqa_tied", llm=llm))


def test_stage_handoff_records_and_the_next_stage_checks(tmp_path: Path) -> None:
    folder = _base_folder(tmp_path)
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name: None))
    first = _stage_module(LLMConfig(path=str(folder)))
    writer = StageHandoff(save_to=str(tmp_path / "stage1"))
    writer.setup(trainer, first, "fit")
    at_setup = writer.fingerprints
    writer.on_fit_end(trainer, first)
    recorded = load_stage_output(tmp_path / "stage1").excluded_fingerprints
    assert recorded == at_setup == {"mot.llm.": fingerprint_tensors(first.core.llm.state_dict())}
    # a resumed run holds the checkpoint's base, not necessarily llm.path's: the handoff records what it holds
    with torch.no_grad():
        first.core.llm.model.norm.weight[0] += 1.0
    writer.on_fit_end(trainer, first)
    assert (
        load_stage_output(tmp_path / "stage1").excluded_fingerprints
        == {"mot.llm.": fingerprint_tensors(first.core.llm.state_dict())}
        != at_setup
    )
    with torch.no_grad():
        first.core.llm.model.norm.weight[0] -= 1.0
    writer.on_fit_end(trainer, first)  # restore the handoff the rest of the test loads

    StageHandoff(load_from=str(tmp_path / "stage1")).setup(trainer, _stage_module(LLMConfig(path=str(folder))), "fit")
    _change_one_weight(folder)
    with pytest.raises(ValueError, match=f"rebuilt from llm.path {str(folder)!r}"):
        StageHandoff(load_from=str(tmp_path / "stage1")).setup(
            trainer, _stage_module(LLMConfig(path=str(folder))), "fit"
        )


def _language(run_dir: Path) -> dict:
    section = Section("language", "Language")
    language_section(load_run(run_dir, motion=False), EvalSettings(probe_items=2), section)
    table = section.to_dict()
    return {"t2m": {"skipped": "x"}, "m2t": {"skipped": "x"}, "language": table}


def test_report_language_check_states_the_fingerprints(tmp_path: Path) -> None:
    folder = _base_folder(tmp_path)
    stage = _write_stage(tmp_path, LLMConfig(path=str(folder)))
    tables = _language(stage.parent)
    recorded = load_stage_output(stage).excluded_fingerprints["mot.llm."]
    lang = tables["language"]
    assert lang["identical"] and lang["fingerprints_match"] and lang["base_fingerprint"] == recorded
    (check,) = [line for line in _checks(tables) if "Language probe" in line]
    assert f"base fingerprint {recorded} matches the handoff's" in check and check.endswith("**PASS**")

    # the base row is built again for the report: a base that changes after the handoff was loaded fails the check
    run = load_run(stage.parent, motion=False)
    _change_one_weight(folder)
    section = Section("language", "Language")
    language_section(run, EvalSettings(probe_items=2), section)
    lang = section.to_dict()
    assert lang["fingerprints_match"] is False
    (check,) = [line for line in _checks({**tables, "language": lang}) if "Language probe" in line]
    assert f"!= the handoff's {recorded}" in check and check.endswith("**FAIL**")

    # a different base fails the check by its fingerprint alone, even where the probe numbers happen to agree
    lang = {**lang, "identical": True}
    (check,) = [line for line in _checks({**tables, "language": lang}) if "Language probe" in line]
    assert "identical to the rebuilt base" in check and check.endswith("**FAIL**")

    # an older handoff: identical rows, but the base is not verified, so not a PASS
    lang = {**tables["language"], "fingerprints_match": None, "handoff_fingerprint": None}
    (check,) = [line for line in _checks({**tables, "language": lang}) if "Language probe" in line]
    assert f"llamo record-fingerprint {stage}" in check and check.endswith("**UNVERIFIED**")


@pytest.mark.smollm2
def test_smollm2_fingerprint_takes_seconds() -> None:
    from llamo.core.llm import is_prepared, smollm2_dir

    if not is_prepared(smollm2_dir()):
        pytest.skip(f"SmolLM2 not prepared at {smollm2_dir()} (run `llamo prepare-llm`)")
    state = load_llm("smollm2").state_dict()
    start = time.perf_counter()
    fingerprint = fingerprint_tensors(state)
    seconds = time.perf_counter() - start
    print(f"SmolLM2-135M fingerprint {fingerprint} in {seconds:.2f} s")
    assert seconds < 5.0, f"fingerprinting SmolLM2-135M took {seconds:.1f} s (budget 5 s)"
