"""Stage 3, motion head annealing (paper §3.4): only the flow head and the exit head train."""

from __future__ import annotations

from torch import nn

from llamo.core.model import LLaMo
from llamo.stages.llamo_base import LLaMoStage


class AnnealStage(LLaMoStage):
    """Refines the flow and exit heads on expressive clips; every other parameter is frozen."""

    stage_name = "stage3"

    @classmethod
    def groups_of(cls, core: LLaMo) -> dict[str, list[nn.Parameter]]:
        return {"heads": [*core.flow_head.parameters(), *core.exit_head.parameters()]}
