"""Stage 3, motion head annealing (paper §3.4): only the flow head and the exit head train."""

from __future__ import annotations

from torch import nn

from llamo.stages.llamo_base import LLaMoStage


class AnnealStage(LLaMoStage):
    """Refines the flow and exit heads on expressive clips; every other parameter is frozen."""

    stage_name = "stage3"

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"heads": [*self.core.flow_head.parameters(), *self.core.exit_head.parameters()]}
