"""Stage 2, joint AR + FM learning (paper §3.4): the whole model except the VAE and the text parameters."""

from __future__ import annotations

from torch import nn

from llamo.core.model import LLaMo
from llamo.stages.llamo_base import LLaMoStage


class JointStage(LLaMoStage):
    """Trains the motion branch with the adapter, projector, heads and [BOM]/[EOM] rows (w/o MoT: the shared LLM)."""

    stage_name = "stage2"

    @classmethod
    def groups_of(cls, core: LLaMo) -> dict[str, list[nn.Parameter]]:
        backbone = [
            *cls.motion_branch_of(core),
            *core.adapter.parameters(),
            *core.projector.parameters(),
            *core.added_tokens.parameters(),
        ]
        return {"backbone": backbone, "heads": [*core.flow_head.parameters(), *core.exit_head.parameters()]}
