"""LlamoCLI + StageHandoff mechanics on a toy stage: handoff written, loaded strictly, resume wins."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.handoff import StageHandoff
from llamo.stages.base import NonFiniteLossError, StageModule
from llamo.stages.cli import cli_main
from stageio import load_stage_output


class ToyStage(StageModule):
    stage_name = "toy"

    def __init__(self, width: int = 4, lr: float = 0.1, poison_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.core = nn.Linear(width, 1)

    def core_config(self) -> dict:
        return {"width": self.hparams.width}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.core(x).squeeze(-1) - y) ** 2).mean()
        if self.global_step == self.hparams.poison_step:
            loss = loss * float("nan")
        self.check_finite({"mse": loss})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.core.parameters(), lr=self.hparams.lr)


class ToyData(L.LightningDataModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, width, generator=g)
        self.y = self.x.sum(-1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)


def _args(tmp: Path, *extra: str, width: int = 4) -> list[str]:
    return [
        "fit",
        f"--model={__name__}.ToyStage",
        f"--model.width={width}",
        f"--data={__name__}.ToyData",
        f"--data.width={width}",
        "--trainer.max_steps=3",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp}",
        "--seed_everything=0",
        *extra,
    ]


def _handoff(cli) -> StageHandoff:  # noqa: ANN001
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, StageHandoff))


def test_handoff_written_then_loaded_key_by_key(tmp_path: Path) -> None:
    first = cli_main(_args(tmp_path / "a", f"--handoff.save_to={tmp_path / 's1'}"))
    saved = load_stage_output(tmp_path / "s1")
    assert saved.stage == "toy" and saved.config == {"width": 4}
    for k, v in first.model.core.state_dict().items():
        assert torch.equal(saved.state_dict[k], v)
    # the next stage starts from exactly those weights (checked before any step: max_steps=0)
    second = cli_main(_args(tmp_path / "b", f"--handoff.load_from={tmp_path / 's1'}", "--trainer.max_steps=0"))
    assert _handoff(second).loaded_keys == 2
    for k, v in second.model.core.state_dict().items():
        assert torch.equal(saved.state_dict[k], v), k


def test_handoff_config_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    cli_main(_args(tmp_path / "a", f"--handoff.save_to={tmp_path / 's1'}"))
    with pytest.raises(ValueError, match=r"config width: saved 4 != current 6[\s\S]*shape weight"):
        cli_main(_args(tmp_path / "b", f"--handoff.load_from={tmp_path / 's1'}", width=6))


def test_resume_wins_over_handoff(tmp_path: Path) -> None:
    cli_main(_args(tmp_path / "a", f"--handoff.save_to={tmp_path / 's1'}"))
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    cli = cli_main(
        _args(tmp_path / "b", f"--handoff.load_from={tmp_path / 's1'}", f"--ckpt_path={ckpt}", "--trainer.max_steps=4")
    )
    assert _handoff(cli).load_from is None and _handoff(cli).loaded_keys == 0
    assert cli.trainer.global_step == 4


def test_nan_loss_stops_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="non-finite loss at global step 1"):
        cli_main(_args(tmp_path, "--model.poison_step=1"))
