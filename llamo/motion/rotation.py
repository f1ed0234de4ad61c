"""Batched rotation conversions (torch), in the conventions of the 272-dim representation.

Matrices act on column vectors (``v' = R @ v``), as SMPL and the 272-dim processing code do. The 6D
rotation representation is the PyTorch3D one: the first two *rows* of the matrix, flattened
(``R[..., :2, :]``), decoded by Gram-Schmidt. Every function works on any leading batch shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: below this rotation angle (radians) the Taylor expansions replace sin(x)/x-type ratios
_SMALL_ANGLE = 1e-4


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> 6D (..., 6): the first two rows, row-major."""
    _check_matrix(matrix)
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """6D (..., 6) -> rotation matrices (..., 3, 3) by Gram-Schmidt on the two rows; row 3 = row 1 x row 2."""
    if rot6d.shape[-1] != 6:
        raise ValueError(f"rot6d_to_matrix expects a last dimension of 6, got shape {tuple(rot6d.shape)}")
    b1 = F.normalize(rot6d[..., :3], dim=-1)
    a2 = rot6d[..., 3:]
    b2 = F.normalize(a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3): ``_skew(a) @ b == a x b``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        (torch.stack((zero, -z, y), -1), torch.stack((z, zero, -x), -1), torch.stack((-y, x, zero), -1)), -2
    )


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors (..., 3) (direction = axis, norm = angle in radians) -> matrices (..., 3, 3), Rodrigues."""
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle_to_matrix expects a last dimension of 3, got shape {tuple(axis_angle.shape)}")
    theta2 = (axis_angle * axis_angle).sum(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = theta2.sqrt()
    small = theta < _SMALL_ANGLE
    safe_theta = torch.where(small, torch.ones_like(theta), theta)
    # R = I + a K + b K^2 with K the skew matrix of the *unnormalised* vector, so no axis division is needed
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe_theta) / safe_theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe_theta)) / (safe_theta * safe_theta))
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (w, x, y, z) with w >= 0.

    Shepperd's method: of the four algebraically equivalent formulas, use the one whose divisor is largest, which
    keeps the conversion accurate for every angle (the trace formula alone breaks down near 180 degrees).
    """
    _check_matrix(matrix)
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * component^2 for w, x, y, z
    four_sq = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1)
    two_q = four_sq.clamp_min(0).sqrt()  # (..., 4) = 2|q_i|
    # candidate i: 4 q_i * (w, x, y, z) for the formula that divides by q_i
    cand = torch.stack(
        (
            torch.stack((four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, four_sq[..., 1], m01 + m10, m02 + m20), -1),
            torch.stack((m02 - m20, m01 + m10, four_sq[..., 2], m12 + m21), -1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, four_sq[..., 3]), -1),
        ),
        dim=-2,
    )  # (..., 4 candidates, 4 components)
    best = two_q.argmax(dim=-1, keepdim=True)  # (..., 1)
    chosen = torch.gather(cand, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    denom = torch.gather(two_q, -1, best)  # 2 q_best (>= 1 for a rotation)
    quat = chosen / (2.0 * denom)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def quaternion_to_axis_angle(quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> axis-angle (..., 3) with angle in [0, pi]."""
    if quat.shape[-1] != 4:
        raise ValueError(f"quaternion_to_axis_angle expects a last dimension of 4, got shape {tuple(quat.shape)}")
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    w, v = quat[..., :1], quat[..., 1:]
    sin_half = v.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, w)
    small = sin_half < _SMALL_ANGLE
    # angle / sin(angle/2) -> 2 / w as the angle -> 0
    safe_sin = torch.where(small, torch.ones_like(sin_half), sin_half)
    scale = torch.where(small, 2.0 / w.clamp_min(1e-12), angle / safe_sin)
    return v * scale


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), angle in [0, pi] (via the quaternion)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def yaw_matrix(angle: torch.Tensor) -> torch.Tensor:
    """Rotations about +y by ``angle`` (radians), (...) -> (..., 3, 3): [[c, 0, s], [0, 1, 0], [-s, 0, c]]."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack(
        (torch.stack((c, zero, s), -1), torch.stack((zero, one, zero), -1), torch.stack((-s, zero, c), -1)), -2
    )


def heading_angle(root_rotation: torch.Tensor) -> torch.Tensor:
    """Heading of global root orientations (..., 3, 3) -> (...): ``h = -atan2(R[0,2], R[2,2])``.

    ``yaw_matrix(h) @ R`` faces +z: the heading is *minus* the yaw of the facing vector ``R @ z``.
    """
    _check_matrix(root_rotation)
    return -torch.atan2(root_rotation[..., 0, 2], root_rotation[..., 2, 2])


def _check_matrix(matrix: torch.Tensor) -> None:
    if matrix.ndim < 2 or matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected rotation matrices of shape (..., 3, 3), got shape {tuple(matrix.shape)}")
