"""Precision policy of the LLaMo stages: every trainable tensor has a float32 master copy.

bf16 keeps 8 significant bits, so a weight ``w`` moves only if an update exceeds about ``|w| * 2**-9`` (half an
ulp). AdamW's first steps move each weight by about ``lr``; at stage 3's lr 1e-5 that is below half an ulp of
every weight larger than ~5e-3 in magnitude, i.e. most of them: in bf16 storage those updates round away (and
the optimizer states, created in the parameter's dtype, are bf16 too). `llamo.core.model.LLaMo` therefore holds
every module that trains under MoT in float32 and only the frozen text branch in ``llm.dtype``; compute may
still run in bf16 under autocast (``trainer.precision: bf16-mixed``).

`check_fp32_master` refuses, with a ValueError naming the YAML key and the fix, any configuration that would
hand the optimizer a bf16/fp16 tensor without a float32 master: ``trainer.precision: bf16-true``/``16-true``
(Lightning casts the whole module), or the "w/o MoT" ablation (``core.mot: false``, the base model trains) on a
bf16/fp16 ``llm.dtype``. DeepSpeed with bf16/fp16 enabled is accepted whatever the module's dtype: its ZeRO
optimizer keeps float32 master partitions and float32 Adam states itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["HALF_TRUE_PRECISIONS", "check_fp32_master", "check_fsdp1_uniform_dtype", "strategy_keeps_fp32_master"]

#: Lightning precisions that cast the whole module to a half dtype (`HalfPrecision.convert_module`)
HALF_TRUE_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16}
#: precisions under which Lightning's DeepSpeedStrategy enables DeepSpeed's bf16/fp16 mode (fp32 master weights)
_DEEPSPEED_HALF = ("bf16-mixed", "bf16-true", "16-mixed", "16-true")


def strategy_keeps_fp32_master(strategy: object, precision: str) -> bool:
    """Whether ``strategy`` keeps float32 master weights of its own for half-precision parameters (DeepSpeed in
    bf16/fp16 mode: ZeRO's float32 partitions). DDP, FSDP1/FSDP2 and single-device strategies update the
    parameters they are given in those parameters' dtype."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy) and precision in _DEEPSPEED_HALF


def check_fp32_master(
    trainable: Iterable[tuple[str, torch.dtype]], precision: str, strategy: object, mot: bool, llm_dtype: str
) -> None:
    """Raise ValueError when a trainable tensor would be optimised in bf16/fp16 without a float32 master.

    ``trainable`` is ``(name, dtype)`` of every parameter the optimizer will update, as the optimizer will see
    it (after Lightning's precision conversion); ``precision`` is ``trainer.precision``; ``mot``/``llm_dtype``
    come from the core config and only shape the message.
    """
    if strategy_keeps_fp32_master(strategy, precision):
        return
    low = [(name, dtype) for name, dtype in trainable if dtype in (torch.bfloat16, torch.float16)]
    if not low:
        return
    example = ", ".join(f"{name} ({str(dtype).removeprefix('torch.')})" for name, dtype in low[:3])
    what = f"{len(low)} trainable tensor(s) (e.g. {example}) would be optimised without a float32 master copy"
    why = "at small learning rates (stage 3: 1e-5) most AdamW updates round away in bf16/fp16 storage"
    deepspeed = "or train with experiments/strategies/deepspeed_zero2.yaml, whose optimizer keeps float32 masters"
    if precision in HALF_TRUE_PRECISIONS:
        raise ValueError(
            f"trainer.precision: {precision} casts every parameter to {str(HALF_TRUE_PRECISIONS[precision])[6:]}: "
            f"{what}; {why}. Fix: set `trainer.precision: bf16-mixed` (float32 weights and optimizer states, "
            f"bf16 compute under autocast), {deepspeed}"
        )
    ablation = " with model.init_args.core.mot: false (the base model itself trains)" if not mot else ""
    raise ValueError(
        f"model.init_args.core.llm.dtype: {llm_dtype}{ablation}: {what}; {why}. Fix: set "
        "`model.init_args.core.llm.dtype: float32` (bf16 checkpoint weights upcast exactly; keep "
        f"`trainer.precision: bf16-mixed` for bf16 compute), {deepspeed}"
    )


def check_fsdp1_uniform_dtype(dtypes: Iterable[torch.dtype], strategy: object) -> None:
    """FSDP1 (`FSDPStrategy`, strategies/fsdp.yaml) flattens each wrap unit into ONE flat parameter of one dtype
    (torch's `_validate_tensors_to_flatten`: "Must flatten tensors with uniform dtype"); its root unit holds the
    frozen base's attention/norms/embedding and the float32 twins and heads together. Raise a ValueError naming
    the fix instead of FSDP's error when a bf16/fp16 base meets the float32 trainables."""
    from lightning.pytorch.strategies import FSDPStrategy

    found = sorted({str(d).removeprefix("torch.") for d in dtypes})
    if isinstance(strategy, FSDPStrategy) and len(found) > 1:
        raise ValueError(
            f"model.init_args.core.llm.dtype: the model holds {found} parameters, but FSDP1 (strategies/fsdp.yaml) "
            "needs one dtype per flat parameter and the trainable modules are float32 masters. Fix: add "
            "`--model.init_args.core.llm.dtype=float32` (FSDP's bf16 mixed precision computes with the exact "
            "bf16 values again), or use experiments/strategies/fsdp2.yaml (FSDP2 shards mixed dtypes)"
        )
