"""Stage 1, feature alignment (paper §3.4): adapter, projector, flow head, exit head and [BOM]/[EOM] rows."""

from __future__ import annotations

from torch import nn

from llamo.core.model import LLaMo
from llamo.stages.llamo_base import LLaMoStage


class AlignStage(LLaMoStage):
    """Aligns the motion latents with the frozen LLM: the transformer itself (both branches) stays frozen."""

    stage_name = "stage1"

    @classmethod
    def groups_of(cls, core: LLaMo) -> dict[str, list[nn.Parameter]]:
        backbone = [*core.adapter.parameters(), *core.projector.parameters(), *core.added_tokens.parameters()]
        return {"backbone": backbone, "heads": [*core.flow_head.parameters(), *core.exit_head.parameters()]}
