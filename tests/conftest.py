"""Shared test fixtures: seeds, thread limits and the real 272-dim sample clip from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one thread per pytest worker: CI has 2 cores and runs 2 workers
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout (present in CI and on the developers' machines, absent in a user's clone)
SHARED_DIR = Path(os.environ.get("LLAMO_SHARED_DIR", REPO_ROOT.parent / "shared"))
REAL272_DIR = SHARED_DIR / "data" / "real272"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def real272_dir() -> Path:
    """Folder with the real AMASS clip (272-dim + joints) and the HumanML3D-272 Mean/Std, read in place."""
    if not (REAL272_DIR / "clip_000000_272.npy").is_file():
        pytest.skip(f"real 272-dim sample not found at {REAL272_DIR} (it ships in ../shared beside the checkout)")
    return REAL272_DIR


@pytest.fixture(scope="session")
def real_clip(real272_dir: Path) -> dict[str, np.ndarray]:
    """The real clip: ``features`` (T,272) un-normalised, ``joints`` (T,22,3), ``mean``/``std`` (272,)."""
    return {
        "features": np.load(real272_dir / "clip_000000_272.npy"),
        "joints": np.load(real272_dir / "clip_000000_joints22.npy"),
        "mean": np.load(real272_dir / "Mean.npy"),
        "std": np.load(real272_dir / "Std.npy"),
    }
