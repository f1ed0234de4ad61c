"""Precision policy (issue 12): a bf16 base model trains fp32 master weights and loses no update.

The text branch may be stored in bf16; every trainable tensor (motion twins, [BOM]/[EOM] rows, adapter,
projector, flow head, exit head) is float32 with float32 AdamW states, and a configuration that would optimise
bf16/fp16 tensors without a float32 master is refused with a ValueError naming the YAML key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_llamo import mixed_batch, random_llm, stage_args, stage_workspace, tiny_llamo_config
from transformers import DynamicCache

from llamo.core.model import LLaMo
from llamo.stages.cli import cli_main
from llamo.stages.precision import check_fp32_master, check_fsdp1_uniform_dtype

BF16 = "--model.init_args.core.llm.dtype=bfloat16"
STAGE3_LR = 1e-5
STEPS = 5


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage_workspace(tmp_path_factory.mktemp("precision"))


def _tiny(base_dtype: torch.dtype, head_dtype: torch.dtype | None = None) -> LLaMo:
    """Tiny LLaMo whose base holds bf16-representable values stored in ``base_dtype`` (so a float32 base is the
    exact upcast of the bf16 one); ``head_dtype`` recasts the flow and exit heads (the contrast run)."""
    llm = random_llm("gqa_tied").to(torch.bfloat16).to(base_dtype)
    torch.manual_seed(0)
    model = LLaMo(tiny_llamo_config("gqa_tied"), llm=llm)
    if head_dtype is not None:
        model.flow_head.to(head_dtype)
        model.exit_head.to(head_dtype)
    return model


def _anneal(model: LLaMo, steps: int = STEPS) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Stage 3 by hand: AdamW (paper betas, no decay) at lr 1e-5 on the flow and exit heads, lambda1 = 0,
    lambda2 = 1e-2. Returns (weights before, weights after, masks of the elements that got a real gradient)."""
    model.requires_grad_(False)
    params = [*model.flow_head.parameters(), *model.exit_head.parameters()]
    for p in params:
        p.requires_grad_(True)
    names = {id(p): n for n, p in model.named_parameters()}
    before = {names[id(p)]: p.detach().clone() for p in params}
    touched = {names[id(p)]: torch.zeros_like(p, dtype=torch.bool) for p in params}
    opt = torch.optim.AdamW(params, lr=STAGE3_LR, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = mixed_batch(model, seed=step)
        gen = torch.Generator().manual_seed(step)
        model.loss(batch, generator=gen, lambda_ntp=0.0, lambda_end=1e-2)["loss"].backward()
        for p in params:
            # a real gradient: Adam's step is lr * g / (|g| + eps); below ~100 eps (1e-6) it shrinks towards
            # zero in any precision (zero-initialised adaLN paths start there), above it is ~lr * sign(g)
            touched[names[id(p)]] |= p.grad.abs() > 100 * opt.defaults["eps"]
        opt.step()
        opt.zero_grad()
    return before, {names[id(p)]: p.detach().clone() for p in params}, touched


def _changed_fraction(before: dict, after: dict, touched: dict) -> float:
    """Fraction of the elements with a real gradient (see `_anneal`) that moved."""
    moved = sum(int(((before[k] != after[k]) & touched[k]).sum()) for k in before)
    return moved / sum(int(touched[k].sum()) for k in before)


# -- 1 + 2: stage 3 at lr 1e-5 loses no update and follows the all-fp32 run --------------------------------


def test_stage3_lr_1e5_updates_every_tensor_and_matches_fp32() -> None:
    policy = _tiny(torch.bfloat16)  # bf16 base, fp32 trainables: the policy
    assert {p.dtype for p in policy.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for n, p in policy.named_parameters() if not n.startswith("mot.llm.")} == {torch.float32}
    b, a, touched = _anneal(policy)
    b32, a32, _ = _anneal(_tiny(torch.float32))  # everything fp32
    bl, al, touched_low = _anneal(_tiny(torch.bfloat16, head_dtype=torch.bfloat16))  # bf16 params (old behaviour)

    assert [k for k in b if torch.equal(b[k], a[k])] == []  # every trainable tensor moved
    fraction = _changed_fraction(b, a, touched)
    fraction_low = _changed_fraction(bl, al, touched_low)
    print(f"\nstage 3, lr 1e-5, {STEPS} AdamW steps: moved {fraction:.2%} of the elements with a gradient "
          f"(fp32 masters) vs {fraction_low:.2%} with bf16 parameters")  # fmt: skip
    assert fraction == 1.0
    assert fraction_low < 0.5  # the contrast: bf16 storage rounds most lr-1e-5 updates away

    # Tolerance. The policy run differs from the all-fp32 run only by bf16 COMPUTE: the frozen bf16 text branch
    # and the bf16 residual stream round activations to 8 significant bits (relative error <= 2**-9 per op, a
    # few 1e-3 after the two layers, the norms and the heads), so the gradients differ by about 1 % relative.
    # Adam's step is lr * m / sqrt(v), invariant to the gradient's scale and smooth in its relative
    # perturbation for elements with consistent gradient signs, so the update vectors (weights after minus
    # before) differ by the same order: measured 1.4 %. 5 % leaves room for other CPU kernels while a lost or
    # rounded update (bf16 parameters: 88 %) fails by far.
    def update(before: dict, after: dict) -> torch.Tensor:
        return torch.cat([(after[k].float() - before[k].float()).flatten() for k in sorted(before)])

    ref = update(b32, a32)
    assert torch.equal(torch.cat([b[k].flatten() for k in sorted(b)]), torch.cat([b32[k].flatten() for k in sorted(b)]))
    err = float((update(b, a) - ref).norm() / ref.norm())
    err_low = float((update(bl, al) - ref).norm() / ref.norm())
    print(f"relative update error vs all-fp32: {err:.3%} (fp32 masters), {err_low:.1%} (bf16 parameters)")
    assert err < 0.05
    assert err_low > 0.5


# -- 3: text-only logits stay the bf16 base's, bit for bit -------------------------------------------------


def test_text_only_logits_bit_identical_to_the_bf16_base_after_training() -> None:
    llm = random_llm("gqa3_untied").to(torch.bfloat16)
    base = copy.deepcopy(llm)
    torch.manual_seed(0)
    model = LLaMo(tiny_llamo_config("gqa3_untied"), llm=llm)
    ids = torch.randint(0, model.base_vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    V = model.base_vocab_size

    def check() -> None:
        model.eval()
        with torch.no_grad():
            ours = model.text_logits(model(ids).hidden_states)
            assert ours.dtype == torch.bfloat16
            assert torch.equal(ours[..., :V], base(ids).logits)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: still the base's computation
                assert torch.equal(model.text_logits(model(ids).hidden_states)[..., :V], base(ids).logits)
            cache, ref_cache = DynamicCache(config=base.config), DynamicCache(config=base.config)
            model(ids[:, :5], cache=cache, use_cache=True)
            base(ids[:, :5], cache=ref_cache, use_cache=True)
            step = model.text_logits(model(ids[:, 5:6], cache=cache).hidden_states)[..., :V]
            assert torch.equal(step, base(ids[:, 5:6], cache=ref_cache).logits)

    check()
    # stage-2-like steps (motion twins, rows, adapter, projector and heads all train), big lr, weight decay
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(2):
        model.loss(mixed_batch(model, seed=step), generator=torch.Generator().manual_seed(step))["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert all(p.dtype == torch.bfloat16 for p in model.llm.parameters())
    check()


def test_mixed_sequence_on_a_bf16_base_runs_with_and_without_autocast() -> None:
    """The shared attention meets bf16 text Q/K/V and fp32 motion twins: it runs in bf16 (32-true and under
    autocast), the motion-only decode step (plain and packed) writes bf16 keys into the same cache."""
    model = _tiny(torch.bfloat16).eval()
    batch = mixed_batch(model)
    ref = _tiny(torch.float32).eval()
    with torch.no_grad():
        low = model(batch.input_ids, batch.motion_mask, batch.latents, attention_mask=batch.attention_mask)
        full = ref(batch.input_ids, batch.motion_mask, batch.latents, attention_mask=batch.attention_mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(batch.input_ids, batch.motion_mask, batch.latents, attention_mask=batch.attention_mask)
    valid = batch.attention_mask
    assert low.hidden_states.dtype == auto.hidden_states.dtype == torch.bfloat16
    # bf16 compute of a 2-layer net: agreement to a few bf16 ulps of O(1) activations
    for out in (low, auto):
        torch.testing.assert_close(out.hidden_states[valid].float(), full.hidden_states[valid], rtol=0, atol=0.1)

    row = slice(0, 1)
    slots = int(batch.motion_mask[row].sum())
    steps = []
    for packed in (None, model.mot.packed_motion_weights()):
        cache = DynamicCache(config=model.llm.config)
        with torch.no_grad():
            model(batch.input_ids[row], batch.motion_mask[row], batch.latents[:slots], cache=cache, use_cache=True)
            embeds = model.adapter(torch.randn(1, 8, generator=torch.Generator().manual_seed(1)))[:, None]
            steps.append(model.mot.motion_forward(embeds, None, None, cache, use_cache=True, packed=packed))
        assert cache.layers[0].keys.dtype == torch.bfloat16
    assert steps[0].dtype == torch.bfloat16 and torch.equal(steps[0], steps[1])


# -- through the stage: fp32 masters, fp32 AdamW states, fp32 handoff; the refused configurations -------------


def test_stage3_on_a_bf16_base_under_bf16_mixed(workspace: dict[str, Path]) -> None:
    args = stage_args(workspace, 3, "bf16_s3", BF16, "--trainer.precision=bf16-mixed", steps=STEPS)
    cli = cli_main(args[1:], run=False)
    core = cli.model.core
    before = {k: v.clone() for k, v in core.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    after = core.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == key.startswith(("flow_head.", "exit_head.")), key
        assert after[key].dtype == (torch.bfloat16 if key.startswith("mot.llm.") else torch.float32), key
    states = cli.trainer.optimizers[0].state.values()
    assert states and {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    with safe_open(str(workspace["root"] / "bf16_s3" / "handoff" / "handoff.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}  # the handoff holds the fp32 masters (the frozen bf16 base is not in it)


def test_bf16_true_precision_is_refused(workspace: dict[str, Path]) -> None:
    args = stage_args(workspace, 3, "bf16_true", BF16, "--trainer.precision=bf16-true", steps=1)
    with pytest.raises(ValueError, match=r"trainer\.precision: bf16-true .* `trainer\.precision: bf16-mixed`"):
        cli_main(args)


def test_without_mot_a_bf16_base_is_refused(workspace: dict[str, Path]) -> None:
    args = stage_args(workspace, 2, "bf16_nomot", BF16, "--model.init_args.core.mot=false", steps=1)
    with pytest.raises(ValueError, match=r"model\.init_args\.core\.llm\.dtype: bfloat16 with .*mot: false.*float32"):
        cli_main(args)
    # stage 1 trains only fp32 modules (adapter, projector, heads, rows) even without MoT: accepted
    cli_main(stage_args(workspace, 1, "bf16_nomot_s1", BF16, "--model.init_args.core.mot=false", steps=1))


def test_deepspeed_half_precision_counts_as_an_fp32_master() -> None:
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    trainable = [("mot.llm.model.layers.0.mlp.up_proj.weight", torch.bfloat16)]
    deepspeed = object.__new__(DeepSpeedStrategy)  # no deepspeed install needed for the type check
    check_fp32_master(trainable, "bf16-mixed", deepspeed, mot=False, llm_dtype="bfloat16")  # ZeRO keeps fp32
    with pytest.raises(ValueError, match="llm.dtype"):
        check_fp32_master(trainable, "32-true", deepspeed, mot=False, llm_dtype="bfloat16")
    with pytest.raises(ValueError, match="llm.dtype"):
        check_fp32_master(trainable, "bf16-mixed", DDPStrategy(), mot=False, llm_dtype="bfloat16")
    check_fp32_master([("flow_head.null_cond", torch.float32)], "bf16-mixed", DDPStrategy(), True, "bfloat16")


def test_fsdp1_with_a_bf16_base_is_refused() -> None:
    """FSDP1 needs one dtype per flat parameter (checked without a GPU: Lightning runs FSDP1 on CUDA only)."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    model = _tiny(torch.bfloat16)
    dtypes = [p.dtype for p in model.parameters()]
    with pytest.raises(ValueError, match=r"llm\.dtype=float32"):
        check_fsdp1_uniform_dtype(dtypes, FSDPStrategy())
    check_fsdp1_uniform_dtype(dtypes, DDPStrategy())  # DDP (and FSDP2) take mixed dtypes
    check_fsdp1_uniform_dtype([p.dtype for p in _tiny(torch.float32).parameters()], FSDPStrategy())
