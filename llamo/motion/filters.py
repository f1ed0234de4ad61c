"""The expressiveness filter of the paper's appendix: drop clips whose end effectors barely move.

A clip is under-expressive when the speeds of all end effectors (both feet, both wrists) stay below 5 cm/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llamo.motion.representation import FEATURE_DIM, recover_joints
from llamo.motion.skeleton import END_EFFECTORS, NUM_JOINTS


@dataclass(frozen=True)
class ExpressivenessResult:
    """The filter's decision for one clip."""

    expressive: bool
    """True when at least one end effector reaches the speed threshold."""
    speeds: np.ndarray
    """(4,) maximum speed in m/s of L_foot, R_foot, L_wrist, R_wrist (the order of ``END_EFFECTORS``)."""


def end_effector_speeds(joints: np.ndarray | torch.Tensor, fps: float = 30.0) -> np.ndarray:
    """Maximum frame-to-frame speed (m/s) of each end effector of global joints (T, 22, 3) -> (4,)."""
    joints = joints.detach().cpu().numpy() if isinstance(joints, torch.Tensor) else np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (T, {NUM_JOINTS}, 3), got shape {joints.shape}")
    if joints.shape[0] < 2:
        raise ValueError(f"need at least 2 frames to measure speed, got {joints.shape[0]}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    effectors = joints[:, list(END_EFFECTORS), :].astype(np.float64)  # (T, 4, 3)
    speed = np.linalg.norm(np.diff(effectors, axis=0), axis=-1) * fps  # (T-1, 4)
    return speed.max(axis=0)


def check_expressive(
    features_or_joints: np.ndarray | torch.Tensor, threshold: float = 0.05, fps: float = 30.0
) -> ExpressivenessResult:
    """Decide whether one clip is expressive.

    Args:
        features_or_joints: UN-normalised features (T, 272) or global joints (T, 22, 3).
        threshold: speed in m/s that at least one end effector must reach (paper: 5 cm/s).
        fps: frame rate of the clip.
    """
    x = features_or_joints
    if x.ndim == 2 and x.shape[-1] == FEATURE_DIM:
        joints = recover_joints(x)
    elif x.ndim == 3 and tuple(x.shape[1:]) == (NUM_JOINTS, 3):
        joints = x
    else:
        raise ValueError(
            f"expected features (T, {FEATURE_DIM}) or joints (T, {NUM_JOINTS}, 3), got shape {tuple(x.shape)}"
        )
    speeds = end_effector_speeds(joints, fps=fps)
    return ExpressivenessResult(expressive=bool((speeds >= threshold).any()), speeds=speeds)
