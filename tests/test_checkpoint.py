"""Stage outputs: round trip, strict loading with one error listing every problem, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from stageio import config_mismatches, load_stage_output, load_stage_weights, save_stage_output


class Toy(nn.Module):
    def __init__(self, width: int = 4, tie: bool = True) -> None:
        super().__init__()
        self.base = nn.Embedding(10, width)
        self.head = nn.Linear(width, 10, bias=False)
        if tie:
            self.head.weight = self.base.weight
        self.motion = nn.Linear(width, width)
        self.register_buffer("scale", torch.tensor([2.0]))


def test_round_trip_is_exact_and_tied_weights_survive(tmp_path: Path) -> None:
    src, dst = Toy(), Toy()
    torch.manual_seed(1)
    dst = Toy()
    save_stage_output(tmp_path, src, {"width": 4}, stage="s1")
    out = load_stage_weights(dst, tmp_path, expected_config={"width": 4}, expected_kind="Toy")
    assert out.stage == "s1" and out.kind == "Toy"
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    assert dst.head.weight is dst.base.weight
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["config"] == {"width": 4}


def test_excluded_prefixes_are_not_written_and_not_required(tmp_path: Path) -> None:
    src = Toy(tie=False)
    save_stage_output(tmp_path, src, {}, excluded_prefixes=["base."])
    saved = load_stage_output(tmp_path)
    assert not any(k.startswith("base.") for k in saved.state_dict)
    dst = Toy(tie=False)
    # the next stage rebuilds the excluded base from its own source: the same weights (their fingerprint is checked,
    # tests/test_fingerprint.py); everything else differs until loaded
    dst.base.load_state_dict(src.base.state_dict())
    assert not torch.equal(dst.motion.weight, src.motion.weight)
    load_stage_weights(dst, tmp_path)
    assert torch.equal(dst.base.weight, src.base.weight)
    assert torch.equal(dst.motion.weight, src.motion.weight)


def test_one_error_lists_every_problem(tmp_path: Path) -> None:
    save_stage_output(tmp_path, Toy(width=4), {"width": 4, "layers": 2})

    class Other(Toy):
        def __init__(self) -> None:
            super().__init__(width=6)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(ValueError) as err:
        load_stage_weights(Other(), tmp_path, expected_config={"width": 6, "layers": 2}, expected_kind="Toy")
    msg = str(err.value)
    assert "config width: saved 4 != current 6" in msg
    assert "missing key extra.weight" in msg and "missing key extra.bias" in msg
    assert "shape motion.weight: saved (4, 4) != current (6, 6)" in msg
    assert "problem(s)" in msg


def test_unexpected_keys_and_missing_files(tmp_path: Path) -> None:
    class Bigger(Toy):
        def __init__(self) -> None:
            super().__init__()
            self.more = nn.Linear(2, 2)

    save_stage_output(tmp_path, Bigger(), {})
    with pytest.raises(ValueError, match="unexpected key more.weight"):
        load_stage_weights(Toy(), tmp_path)
    with pytest.raises(FileNotFoundError, match="handoff.safetensors"):
        load_stage_output(tmp_path / "nowhere")


def test_corrupt_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    save_stage_output(tmp_path, Toy(), {})
    (tmp_path / "handoff.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        load_stage_output(tmp_path)


def test_config_mismatches_nested() -> None:
    a = {"vae": {"latent_dim": 32, "width": 64}, "steps": [1, 2]}
    b = {"vae": {"latent_dim": 16, "width": 64}, "steps": (1, 2), "new": 1}
    assert config_mismatches(a, b) == ["new: saved <absent> != current 1", "vae.latent_dim: saved 32 != current 16"]
    assert config_mismatches(a, b, ignore=["vae.latent_dim", "new"]) == []
