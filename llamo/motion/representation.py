"""The 272-dim motion representation of MotionStreamer / MotionMillion (HumanML3D-272), both directions.

Per frame (22 SMPL joints, 30 fps, y-up, metres, the body faces +z at frame 0):

==================  =========  ====================================================================
name                dims       content
==================  =========  ====================================================================
root_velocity       0:2        pelvis (vx, vz) from t-1 to t, rotated by the heading of frame t-1
heading_velocity    2:8        6D of ``yaw(h_t - h_{t-1})`` (identity at frame 0)
local_positions     8:74       joints with the heading removed and the pelvis xz at the origin
local_velocities    74:140     ``local_positions[t] - local_positions[t-1]`` (0 at frame 0)
local_rotations     140:272    6D parent-relative rotations; the root is its global orientation
                               with the heading removed
==================  =========  ====================================================================

Positions are relative to ``(pelvis_x[0], min height of the clip, pelvis_z[0])``, so the floor is y = 0.
Everything is computed in float64 and returned in the input's dtype; numpy inputs give numpy outputs.

`JointTracker` is `recover_joints` for a stream: it recovers the joints of consecutive chunks with a constant cost
per chunk (streaming generation decodes 4 frames at a time).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from llamo.motion.rotation import heading_angle, matrix_to_rot6d, rot6d_to_matrix, yaw_matrix
from llamo.motion.skeleton import NUM_JOINTS

FEATURE_DIM = 272

#: named parts of a 272-dim frame
SLICES: dict[str, slice] = {
    "root_velocity": slice(0, 2),
    "heading_velocity": slice(2, 8),
    "local_positions": slice(8, 8 + 3 * NUM_JOINTS),
    "local_velocities": slice(8 + 3 * NUM_JOINTS, 8 + 6 * NUM_JOINTS),
    "local_rotations": slice(8 + 6 * NUM_JOINTS, 8 + 12 * NUM_JOINTS),
}
#: the root dims (planar velocity + heading velocity) that the VAE's root loss weights
ROOT_DIMS = slice(0, 8)
#: groups whose per-dim std is replaced by the group average when normalising (in dim order)
GROUPS: tuple[slice, ...] = tuple(SLICES.values())

assert SLICES["local_rotations"].stop == FEATURE_DIM

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _as_float64(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return x.to(torch.float64)


def _like(result: torch.Tensor, reference: ArrayT) -> ArrayT:
    """Cast ``result`` back to the type and dtype of the caller's input."""
    if isinstance(reference, np.ndarray):
        return result.numpy().astype(reference.dtype, copy=False)
    return result.to(reference.dtype)


def _check_features(features: torch.Tensor | np.ndarray) -> None:
    if features.ndim < 2 or features.shape[-1] != FEATURE_DIM:
        raise ValueError(
            f"expected 272-dim motion features of shape (..., T, {FEATURE_DIM}), got shape {tuple(features.shape)}"
        )


def prefix_matmul(rel: torch.Tensor) -> torch.Tensor:
    """Ordered prefix products along time: ``out[t] = rel[t] @ rel[t-1] @ ... @ rel[0]``, shape (..., T, 3, 3).

    A Hillis-Steele scan: log2(T) batched matmuls instead of a T-step loop, and the same products as the
    sequential left-multiplication of the reference recovery (only the association order differs).
    """
    out = rel
    num_frames = rel.shape[-3]
    step = 1
    while step < num_frames:
        # out[t] currently covers rel[t..t-step+1]; prepend the block that ends at t-step
        out = torch.cat((out[..., :step, :, :], out[..., step:, :, :] @ out[..., :-step, :, :]), dim=-3)
        step *= 2
    return out


def _heading_and_root(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 features (..., T, 272) -> (heading matrices H (..., T, 3, 3), root xz trajectory (..., T, 2))."""
    heading = prefix_matmul(rot6d_to_matrix(x[..., SLICES["heading_velocity"]]))  # (..., T, 3, 3)
    velocity = x[..., SLICES["root_velocity"]]  # (..., T, 2)
    step = torch.stack((velocity[..., 0], torch.zeros_like(velocity[..., 0]), velocity[..., 1]), dim=-1)
    # the velocity of frame t is expressed in the heading frame of t-1; frame 0 is kept as is (0 for real data)
    world_step = torch.cat(
        (step[..., :1, :], torch.einsum("...tji,...tj->...ti", heading[..., :-1, :, :], step[..., 1:, :])), dim=-2
    )  # H^T @ step
    root_xz = world_step.cumsum(dim=-2)[..., [0, 2]]
    return heading, root_xz


def recover_joints(features: ArrayT) -> ArrayT:
    """Global joint positions (..., T, 22, 3) from UN-normalised 272-dim features (..., T, 272).

    The MotionStreamer / 272-dim recovery: accumulate the heading from the heading velocities, rotate the local
    positions back, add the integrated root trajectory. Only dims 0:74 are used.
    """
    _check_features(features)
    x = _as_float64(features, "features")
    heading, root_xz = _heading_and_root(x)
    local = x[..., SLICES["local_positions"]].reshape(*x.shape[:-1], NUM_JOINTS, 3)  # (..., T, 22, 3)
    joints = torch.einsum("...tji,...tkj->...tki", heading, local)  # H^T @ p per joint
    joints = joints + torch.stack(
        (root_xz[..., 0], torch.zeros_like(root_xz[..., 0]), root_xz[..., 1]), dim=-1
    ).unsqueeze(-2)
    return _like(joints, features)


def recover_rotations(features: ArrayT) -> ArrayT:
    """Local joint rotations (..., T, 22, 3, 3) from UN-normalised features; joint 0 = global root orientation.

    Non-root joints are the parent-relative rotations as stored; the root gets its heading restored.
    """
    _check_features(features)
    x = _as_float64(features, "features")
    heading, _ = _heading_and_root(x)
    rot = rot6d_to_matrix(x[..., SLICES["local_rotations"]].reshape(*x.shape[:-1], NUM_JOINTS, 6))
    root = heading.transpose(-1, -2) @ rot[..., 0, :, :]
    rot = torch.cat((root.unsqueeze(-3), rot[..., 1:, :, :]), dim=-3)
    return _like(rot, features)


def recover_root_position(features: ArrayT) -> ArrayT:
    """Global pelvis positions (..., T, 3) from UN-normalised features (integrated xz, stored pelvis height)."""
    _check_features(features)
    x = _as_float64(features, "features")
    _, root_xz = _heading_and_root(x)
    height = x[..., SLICES["local_positions"].start + 1]
    return _like(torch.stack((root_xz[..., 0], height, root_xz[..., 1]), dim=-1), features)


def features_from_motion(joints: ArrayT, local_rot: ArrayT) -> ArrayT:
    """272-dim features (..., T, 272) from global joints (..., T, 22, 3) and local rotations (..., T, 22, 3, 3).

    ``local_rot`` holds parent-relative rotations with joint 0 = the global root orientation (what
    :func:`recover_rotations` returns and :func:`~llamo.motion.skeleton.forward_kinematics` consumes). The
    reference's conventions are applied here: the whole clip is rotated about the y axis so that frame 0 faces
    +z, moved so the frame-0 pelvis is at the xz origin and the lowest joint of the clip at y = 0. Each item of a
    batch must be a whole clip (padding frames would change the floor and the frame-0 heading).
    """
    if joints.ndim < 3 or joints.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (..., T, {NUM_JOINTS}, 3), got shape {tuple(joints.shape)}")
    if local_rot.shape != (*joints.shape, 3):
        raise ValueError(
            f"local_rot must have shape (..., T, {NUM_JOINTS}, 3, 3) matching joints {tuple(joints.shape)}, "
            f"got shape {tuple(local_rot.shape)}"
        )
    if joints.shape[-3] == 0:
        raise ValueError(f"features_from_motion needs at least one frame, got joints of shape {tuple(joints.shape)}")
    pos = _as_float64(joints, "joints")
    rot = _as_float64(local_rot, "local_rot")

    # face +z at frame 0: rotate positions and root orientation about the world y axis
    first = yaw_matrix(heading_angle(rot[..., 0, 0, :, :]))  # (..., 3, 3)
    pos = torch.einsum("...ij,...tkj->...tki", first, pos)
    root_rot = first.unsqueeze(-3) @ rot[..., :, 0, :, :]  # (..., T, 3, 3)

    # floor at y = 0, frame-0 pelvis at the xz origin
    origin = torch.stack((pos[..., 0, 0, 0], pos[..., 1].amin(dim=(-2, -1)), pos[..., 0, 0, 2]), dim=-1)  # (..., 3)
    pos = pos - origin[..., None, None, :]

    heading = heading_angle(root_rot)  # (..., T)
    remove = yaw_matrix(heading)  # (..., T, 3, 3)
    root_xz = pos[..., 0, :] * pos.new_tensor([1.0, 0.0, 1.0])  # (..., T, 3)
    local_pos = torch.einsum("...tij,...tkj->...tki", remove, pos - root_xz.unsqueeze(-2))  # (..., T, 22, 3)

    zeros_like_first = torch.zeros_like(local_pos[..., :1, :, :])
    local_vel = torch.cat((zeros_like_first, local_pos[..., 1:, :, :] - local_pos[..., :-1, :, :]), dim=-3)
    # root displacement t-1 -> t in the heading frame of t-1
    root_step = torch.einsum("...tij,...tj->...ti", remove[..., :-1, :, :], root_xz[..., 1:, :] - root_xz[..., :-1, :])
    root_vel = torch.cat((torch.zeros_like(root_xz[..., :1, :]), root_step), dim=-2)[..., [0, 2]]  # (..., T, 2)
    delta = torch.cat((torch.zeros_like(heading[..., :1]), heading[..., 1:] - heading[..., :-1]), dim=-1)
    heading_vel = matrix_to_rot6d(yaw_matrix(delta))  # (..., T, 6); frame 0 = identity

    rot = torch.cat(((remove @ root_rot).unsqueeze(-3), rot[..., 1:, :, :]), dim=-3)
    flat = local_pos.shape[:-2] + (3 * NUM_JOINTS,)
    features = torch.cat(
        (
            root_vel,
            heading_vel,
            local_pos.reshape(flat),
            local_vel.reshape(flat),
            matrix_to_rot6d(rot).reshape(*rot.shape[:-3], 6 * NUM_JOINTS),
        ),
        dim=-1,
    )
    assert features.shape[-1] == FEATURE_DIM
    return _like(features, joints)


class JointTracker:
    """Joint positions of streamed 272-dim chunks, equal to `recover_joints` of the concatenated features.

    `recover_joints` integrates the heading (ordered product of the per-frame heading velocities) and the root
    trajectory (velocities rotated by the previous frame's heading, summed) from frame 0. This does the same
    integration per chunk, continuing from each row's last heading ``(3, 3)`` and root ``(x, z)``, so the cost
    per chunk is constant instead of re-recovering the whole prefix.
    """

    def __init__(self, rows: int, device: torch.device | str = "cpu") -> None:
        # before frame 0 the heading is I (frame 0's velocity is used unrotated) and the root is at the origin
        self.heading = torch.eye(3, dtype=torch.float64, device=device).repeat(rows, 1, 1)  # (R, 3, 3)
        self.root = torch.zeros(rows, 2, dtype=torch.float64, device=device)  # (R, 2) world x, z

    def step(self, features: Tensor) -> Tensor:
        """De-normalised chunk ``(R, t, 272)`` -> joints ``(R, t, 22, 3)`` in the chunk's dtype."""
        if features.ndim != 3 or features.shape[0] != self.heading.shape[0] or features.shape[-1] != FEATURE_DIM:
            raise ValueError(
                f"JointTracker.step expects features (R={self.heading.shape[0]}, t, {FEATURE_DIM}), got "
                f"{tuple(features.shape)}"
            )
        x = features.to(torch.float64)
        rel = rot6d_to_matrix(x[..., SLICES["heading_velocity"]])  # (R, t, 3, 3)
        heading = prefix_matmul(rel) @ self.heading[:, None]  # (R, t, 3, 3): rel[t] @ ... @ rel[0]
        previous = torch.cat([self.heading[:, None], heading[:, :-1]], dim=1)  # heading of frame t - 1
        velocity = x[..., SLICES["root_velocity"]]  # (R, t, 2)
        step = torch.stack([velocity[..., 0], torch.zeros_like(velocity[..., 0]), velocity[..., 1]], dim=-1)
        world_step = torch.einsum("rtji,rtj->rti", previous, step)  # H^T @ step
        root = self.root[:, None] + world_step[..., [0, 2]].cumsum(dim=1)  # (R, t, 2)
        local = x[..., SLICES["local_positions"]].reshape(*x.shape[:-1], NUM_JOINTS, 3)  # (R, t, 22, 3)
        joints = torch.einsum("rtji,rtkj->rtki", heading, local)  # H^T @ p per joint
        joints = joints + torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 1]], dim=-1)[:, :, None]
        self.heading, self.root = heading[:, -1], root[:, -1]
        return joints.to(features.dtype)

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices) of the tracked streams."""
        self.heading = self.heading[rows]
        self.root = self.root[rows]
