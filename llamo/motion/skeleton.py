"""The 22-joint SMPL body skeleton of the 272-dim representation: names, tree, rest offsets, forward kinematics."""

from __future__ import annotations

import numpy as np
import torch

NUM_JOINTS = 22

#: SMPL joint order (the first 22 SMPL / SMPL-H / SMPL-X body joints)
JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
)
#: parent of each joint (-1 for the root); every parent comes before its children
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
FEET: tuple[int, int] = (10, 11)
WRISTS: tuple[int, int] = (20, 21)
#: the joints whose speeds decide expressiveness (paper appendix) and that sJPE uses
END_EFFECTORS: tuple[int, ...] = (*FEET, *WRISTS)
#: left/right joint pairs swapped by mirroring
MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))
#: HumanML3D's 5 drawing chains: right leg, left leg, spine to head, right arm, left arm
KINEMATIC_CHAINS: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)

#: Rest-pose offset of each joint from its parent, in the parent's frame (metres, y-up, +z forward; row 0 = 0).
#: Derived once from the real AMASS clip ../shared/data/real272/clip_000000_272.npy as the mean over its 1287
#: frames of ``G_parent^T (p_j - p_parent)`` (G = global rotations from the clip's 6D local rotations, p = its
#: joints); the per-frame spread is below 1e-6 m, so these are the subject's SMPL bone vectors.
REST_OFFSETS: np.ndarray = np.array(
    [
        [0.0000000, 0.0000000, 0.0000000],  # pelvis
        [0.0607575, -0.1047879, -0.0267714],  # left_hip
        [-0.0656533, -0.1183293, -0.0204009],  # right_hip
        [-0.0031701, 0.1265159, -0.0318875],  # spine1
        [0.0565658, -0.4000016, -0.0060199],  # left_knee
        [-0.0454460, -0.3806387, -0.0151171],  # right_knee
        [0.0120387, 0.1669015, -0.0077200],  # spine2
        [-0.0477758, -0.4290283, -0.0342087],  # left_ankle
        [0.0168577, -0.4376164, -0.0213755],  # right_ankle
        [-0.0126392, 0.0642589, 0.0291368],  # spine3
        [0.0524906, -0.0625776, 0.1298750],  # left_foot
        [-0.0422560, -0.0625286, 0.1305866],  # right_foot
        [-0.0142614, 0.1851834, -0.0298342],  # neck
        [0.0506313, 0.0955906, -0.0047077],  # left_collar
        [-0.0536730, 0.0950211, -0.0112546],  # right_collar
        [0.0281212, 0.1689415, 0.0198713],  # head
        [0.1369680, 0.0654245, -0.0185989],  # left_shoulder
        [-0.1182683, 0.0599664, -0.0156017],  # right_shoulder
        [0.2698329, -0.0764592, -0.0467336],  # left_elbow
        [-0.2897716, -0.0364006, -0.0293841],  # right_elbow
        [0.2745227, 0.0253994, 0.0005027],  # left_wrist
        [-0.2707162, -0.0053467, -0.0134158],  # right_wrist
    ],
    dtype=np.float64,
)

assert len(JOINT_NAMES) == len(PARENTS) == NUM_JOINTS == REST_OFFSETS.shape[0]
assert all(p < j for j, p in enumerate(PARENTS))


def forward_kinematics(
    local_rot: torch.Tensor, root_pos: torch.Tensor, offsets: torch.Tensor | np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global joint positions and rotations from parent-relative rotations.

    Args:
        local_rot: (..., 22, 3, 3) parent-relative rotations; joint 0 is the global root orientation.
        root_pos: (..., 3) global pelvis position.
        offsets: (22, 3) or (..., 22, 3) rest offsets from each parent, in the parent's frame; default
            :data:`REST_OFFSETS`.

    Returns:
        positions (..., 22, 3) and global rotations (..., 22, 3, 3), in the dtype of ``local_rot``.
    """
    if local_rot.ndim < 3 or local_rot.shape[-3:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"local_rot must have shape (..., {NUM_JOINTS}, 3, 3), got shape {tuple(local_rot.shape)}")
    if root_pos.shape != (*local_rot.shape[:-3], 3):
        raise ValueError(
            f"root_pos must have shape {(*local_rot.shape[:-3], 3)} to match local_rot, got {tuple(root_pos.shape)}"
        )
    offsets = torch.as_tensor(REST_OFFSETS if offsets is None else offsets, dtype=local_rot.dtype)
    offsets = offsets.to(local_rot.device)
    if offsets.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"offsets must have shape (..., {NUM_JOINTS}, 3), got shape {tuple(offsets.shape)}")
    offsets = offsets.expand(*local_rot.shape[:-3], NUM_JOINTS, 3)
    global_rot: list[torch.Tensor] = [local_rot[..., 0, :, :]]
    positions: list[torch.Tensor] = [root_pos.to(local_rot.dtype)]
    # loop over the 22 joints (not frames): each joint needs its parent's result
    for joint in range(1, NUM_JOINTS):
        parent = PARENTS[joint]
        parent_rot = global_rot[parent]
        global_rot.append(parent_rot @ local_rot[..., joint, :, :])
        positions.append(positions[parent] + (parent_rot @ offsets[..., joint, :, None]).squeeze(-1))
    return torch.stack(positions, dim=-2), torch.stack(global_rot, dim=-3)


def bone_lengths(joints: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Lengths (..., 21) of the bones joint j -> PARENTS[j] for j = 1..21 of joints (..., 22, 3)."""
    if joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (..., {NUM_JOINTS}, 3), got shape {tuple(joints.shape)}")
    children = list(range(1, NUM_JOINTS))
    bones = joints[..., children, :] - joints[..., [PARENTS[j] for j in children], :]
    if isinstance(bones, np.ndarray):
        return np.linalg.norm(bones, axis=-1)
    return bones.norm(dim=-1)
