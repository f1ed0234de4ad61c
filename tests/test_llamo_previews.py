"""GenerationPreviews (issue 14, point 4): the LLaMo stages log generated motions (filmstrips), captions and, with an
evaluator, R@3 of fixed validation items to TensorBoard; the previews are deterministic, leave the model as they
found it, and refuse bad settings by name."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_configs import print_config
from tiny_llamo import stage_args, stage_workspace

from callbacks.llamo_previews import GenerationPreviews
from llamo.eval.items import load_test_items
from llamo.eval.settings import EvalSettings
from llamo.motion.normalization import Normalizer
from llamo.stages.cli import LlamoCLI, cli_main
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from stageio import save_stage_output

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LLaMo workspace (60 clips: 6 validation items) and a tiny evaluator folder."""
    ws = stage_workspace(tmp_path_factory.mktemp("previews"), clips=60)
    config = EvaluatorConfig(
        latent_dim=32, ff_size=64, num_layers=1, num_heads=2, text_num_layers=1, text_encoder="scratch", vocab_size=128
    )
    evaluator = TextMotionEvaluator(config).eval()
    ws["evaluator"] = ws["root"] / "evaluator"
    save_stage_output(ws["evaluator"], evaluator, asdict(evaluator.config), kind="TextMotionEvaluator")
    Normalizer.load(ws["data"] / "mean_std").save(ws["evaluator"])
    return ws


def _fit(ws: dict[str, Path], out: str, *previews: str, steps: int, logger: bool = True) -> LlamoCLI:
    """A tiny stage-1 fit that logs to TensorBoard under ``<root>/<out>/tb`` (stage_args switches the logger off)."""
    args = [a for a in stage_args(ws, 1, out, steps=steps) if not (logger and a == "--trainer.logger=false")]
    if logger:
        args.append(f"--trainer.logger.init_args.save_dir={ws['root'] / out / 'tb'}")
    return cli_main([*args, "--previews.caption_tokens=8", "--previews.panels=3", *previews])


def _events(ws: dict[str, Path], out: str) -> EventAccumulator:
    (path,) = (ws["root"] / out / "tb").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _text(acc: EventAccumulator, tag: str) -> list[str]:
    """Every value of an ``add_text`` tag (stored as the tensor ``<tag>/text_summary``)."""
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


def _callback(cli: LlamoCLI) -> GenerationPreviews:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, GenerationPreviews))


def test_fit_logs_filmstrips_captions_and_r3_every_n_steps(ws: dict[str, Path]) -> None:
    _fit(ws, "every2", "--previews.every_n_steps=2", "--previews.at_end=true", "--previews.num_prompts=2",
         "--previews.num_captions=2", f"--previews.evaluator={ws['evaluator']}", "--previews.num_r3_items=6",
         steps=4)  # fmt: skip
    acc = _events(ws, "every2")
    tags = acc.Tags()
    images = sorted(t for t in tags["images"] if t.startswith("previews/"))
    assert images == ["previews/t2m_0", "previews/t2m_1"]  # num_prompts
    # steps 2 and 4; at_end adds none, step 4 just had one
    assert all([e.step for e in acc.Images(t)] == [2, 4] for t in images)
    image = acc.Images("previews/t2m_0")[0]
    assert image.width > image.height > 0  # a filmstrip: panels side by side

    # the prompts and references are the validation items of the Table-3 rule (seeded subset, seeded caption)
    items = load_test_items(ws["data"], EvalSettings(split="val", items=6, seed=0, device="cpu"))
    prompts = _text(acc, "previews/t2m_prompts")
    assert len(prompts) == 2 and prompts[0] == prompts[1]
    assert all(f"{i}. {items.prompts[i]} (`{items.ids[i]}`)" in prompts[0] for i in range(2))
    for i in range(2):
        texts = _text(acc, f"previews/m2t_{i}")
        assert len(texts) == 2 and texts[0].startswith("**LLaMo:** ")
        assert all(f"- {ref}" in texts[0] for ref in items.captions[i]) and f"`{items.ids[i]}`" in texts[0]
    assert "previews/m2t_2/text_summary" not in tags["tensors"]  # num_captions

    r3 = acc.Scalars("val/preview_r3")
    assert [e.step for e in r3] == [2, 4] and all(0.0 <= e.value <= 1.0 for e in r3)
    fid = acc.Scalars("val/preview_fid")
    assert [e.step for e in fid] == [2, 4] and all(np.isfinite(e.value) and e.value >= 0 for e in fid)


def test_preview_is_deterministic_and_leaves_the_model_as_it_was(ws: dict[str, Path]) -> None:
    cli = _fit(ws, "end", "--previews.at_end=true", "--previews.num_prompts=1", "--previews.num_captions=1", steps=2)
    acc = _events(ws, "end")
    assert [e.step for e in acc.Images("previews/t2m_0")] == [2]  # at the end of fit only
    assert "previews/t2m_1" not in acc.Tags()["images"]
    assert "val/preview_r3" not in acc.Tags()["scalars"]  # no evaluator, no R@3

    callback, module = _callback(cli), cli.model
    module.train()
    module.core.llm.eval()  # a mixed state: every module's own mode must come back, not a blanket train()
    modes = {name: m.training for name, m in module.named_modules()}
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    first = callback.preview(cli.trainer, module)
    second = callback.preview(cli.trainer, module)
    assert {name: m.training for name, m in module.named_modules()} == modes
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    # the same items, prompts, noise and greedy captions at every preview
    assert first.prompts == second.prompts and len(first.prompts) == 1
    assert first.caption_ids == second.caption_ids and first.captions == second.captions
    assert all(np.array_equal(a, b) for a, b in zip(first.motions, second.motions))
    assert first.motions[0].shape[0] == len(load_test_items(ws["data"], EvalSettings(split="val", items=2)).features[0])
    assert first.retrieval is None

    # a strategy that casts the whole model to bf16 (DeepSpeed casts the float32 heads too) still previews
    module.core.to(torch.bfloat16)
    cast = callback.preview(cli.trainer, module)
    assert cast.prompts == first.prompts and np.isfinite(cast.motions[0]).all()


def test_without_a_tensorboard_logger_previews_warn_once_and_log_nothing(
    ws: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="callbacks.llamo_previews"):
        _fit(ws, "nolog", "--previews.every_n_steps=1", "--previews.at_end=true", steps=2, logger=False)
    warned = [r for r in caplog.records if "no TensorBoardLogger" in r.getMessage()]
    assert len(warned) == 1 and "previews.every_n_steps: null" in warned[0].getMessage()


def test_bad_settings_name_the_key_the_value_and_the_fix(ws: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"previews.every_n_steps must be an integer >= 1 \(or null.*got 0"):
        GenerationPreviews(every_n_steps=0)
    with pytest.raises(ValueError, match=r"previews.num_prompts must be an integer >= 0.*got -1"):
        GenerationPreviews(num_prompts=-1)
    with pytest.raises(ValueError, match=r"previews.num_r3_items must be an integer >= 4 \(with 3 or fewer.*got 3"):
        GenerationPreviews(num_r3_items=3)
    with pytest.raises(ValueError, match=r"previews.at_end must be true or false, got 'yes'"):
        GenerationPreviews(at_end="yes")  # type: ignore[arg-type]
    # every problem at once
    with pytest.raises(ValueError, match=r"previews.caption_tokens.*; previews.panels"):
        GenerationPreviews(caption_tokens=0, panels=0)
    with pytest.raises(FileNotFoundError, match=r"previews.evaluator='/nowhere' is not a folder.*runs/<exp>/evaluator"):
        GenerationPreviews(evaluator="/nowhere")
    # a folder of another stage fails when the fit sets up, before any training step
    with pytest.raises(ValueError, match=r"previews.evaluator=.* holds a 'CausalMotionVAE' stage output, not an"):
        _fit(ws, "badeval", "--previews.every_n_steps=1", f"--previews.evaluator={ws['vae']}", steps=1)


def test_other_stages_ignore_the_previews() -> None:
    callback = GenerationPreviews(every_n_steps=1, at_end=True)
    callback.setup(SimpleNamespace(), SimpleNamespace(core=torch.nn.Linear(2, 2)), "fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="previews are inactive for this fit"):
        callback.preview(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]


def test_yaml_defaults_paper_scale_in_base_and_one_cheap_preview_per_demo_stage() -> None:
    base = print_config(EXP / "base.yaml", EXP / "model" / "tiny.yaml", EXP / "stage2.yaml")["previews"]
    assert base["every_n_steps"] == 2000 and base["at_end"] is False and base["evaluator"] is None
    # the demo overlays replace trainer.callbacks with []: the forced `previews` key survives that
    for overlay, size in ((EXP / "demo", 2), (EXP / "demo" / "smoke", 1)):
        for stage in ("stage1", "stage2", "stage3"):
            files = (EXP / "base.yaml", EXP / "model" / "tiny.yaml", EXP / f"{stage}.yaml", overlay / f"{stage}.yaml")
            cfg = print_config(*files)
            assert cfg["trainer"]["callbacks"] in ([], None)
            previews = cfg["previews"]
            assert previews["every_n_steps"] is None and previews["at_end"] is True and previews["evaluator"] is None
            assert (previews["num_prompts"], previews["num_captions"]) == (size, size)
