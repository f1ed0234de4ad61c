"""The 272-dim representation, rotations, skeleton, normalisation and expressiveness filter (real clip + synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from llamo.motion.filters import ExpressivenessResult, check_expressive, end_effector_speeds
from llamo.motion.normalization import Normalizer, compute_mean_std
from llamo.motion.representation import (
    FEATURE_DIM,
    GROUPS,
    ROOT_DIMS,
    SLICES,
    features_from_motion,
    prefix_matmul,
    recover_joints,
    recover_root_position,
    recover_rotations,
)
from llamo.motion.rotation import (
    axis_angle_to_matrix,
    heading_angle,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
    yaw_matrix,
)
from llamo.motion.skeleton import (
    END_EFFECTORS,
    JOINT_NAMES,
    KINEMATIC_CHAINS,
    MIRROR_PAIRS,
    NUM_JOINTS,
    PARENTS,
    REST_OFFSETS,
    bone_lengths,
    forward_kinematics,
)

IDENTITY_6D = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _yaw_np(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@pytest.fixture(scope="module")
def real_motion(real_clip: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The real clip as float64 tensors plus its recovered joints and local rotations."""
    features = torch.from_numpy(real_clip["features"]).double()
    return {
        "features": features,
        "joints": recover_joints(features),
        "rotations": recover_rotations(features),
    }


# --- layout and skeleton constants --------------------------------------------------------------------------------


def test_layout_constants() -> None:
    assert FEATURE_DIM == 272
    assert [(s.start, s.stop) for s in SLICES.values()] == [(0, 2), (2, 8), (8, 74), (74, 140), (140, 272)]
    assert GROUPS == tuple(SLICES.values())
    assert ROOT_DIMS == slice(0, 8)
    assert NUM_JOINTS == len(JOINT_NAMES) == len(PARENTS) == 22
    assert PARENTS == (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
    assert [JOINT_NAMES[j] for j in END_EFFECTORS] == ["left_foot", "right_foot", "left_wrist", "right_wrist"]
    for left, right in MIRROR_PAIRS:
        assert JOINT_NAMES[left].replace("left_", "") == JOINT_NAMES[right].replace("right_", "")
    for chain in KINEMATIC_CHAINS:
        assert all(PARENTS[child] == parent for parent, child in zip(chain[:-1], chain[1:]))
    assert REST_OFFSETS.shape == (22, 3) and REST_OFFSETS.dtype == np.float64
    # left side of the body is +x in SMPL's rest frame, legs go down
    assert REST_OFFSETS[1, 0] > 0 > REST_OFFSETS[2, 0] and REST_OFFSETS[4, 1] < -0.3


# --- rotations -----------------------------------------------------------------------------------------------------


def test_rotations_against_scipy() -> None:
    rng = np.random.default_rng(0)
    axis_angle = rng.normal(size=(64, 3))
    axis_angle[:8] *= 1e-6  # near identity
    axis_angle[8:16] *= (np.pi - 1e-5) / np.linalg.norm(axis_angle[8:16], axis=-1, keepdims=True)  # near 180 deg
    expected = Rotation.from_rotvec(axis_angle).as_matrix()
    matrix = axis_angle_to_matrix(torch.from_numpy(axis_angle))
    np.testing.assert_allclose(matrix.numpy(), expected, atol=1e-12)
    back = matrix_to_axis_angle(matrix).numpy()
    # compare as rotations (axis-angle at pi is ambiguous in sign)
    np.testing.assert_allclose(Rotation.from_rotvec(back).as_matrix(), expected, atol=1e-9)
    np.testing.assert_allclose(back[16:], Rotation.from_matrix(expected[16:]).as_rotvec(), atol=1e-9)


def test_rot6d_round_trip_and_gram_schmidt() -> None:
    matrix = torch.from_numpy(Rotation.random(32, random_state=1).as_matrix())
    rot6d = matrix_to_rot6d(matrix)
    assert rot6d.shape == (32, 6)
    # PyTorch3D convention: the first two rows
    torch.testing.assert_close(rot6d[:, :3], matrix[:, 0])
    torch.testing.assert_close(rot6d[:, 3:], matrix[:, 1])
    torch.testing.assert_close(rot6d_to_matrix(rot6d), matrix, atol=1e-12, rtol=0)
    # perturbed/scaled 6D still decodes to a proper rotation
    noisy = rot6d_to_matrix(2.0 * rot6d + 0.05 * torch.randn_like(rot6d))
    eye = torch.eye(3, dtype=torch.float64).expand(32, 3, 3)
    torch.testing.assert_close(noisy @ noisy.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(noisy), torch.ones(32, dtype=torch.float64))
    with pytest.raises(ValueError, match="last dimension of 6"):
        rot6d_to_matrix(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_rot6d(torch.zeros(4, 3, 2))


def test_yaw_and_heading() -> None:
    angle = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    yaw = yaw_matrix(angle)
    np.testing.assert_allclose(yaw[5].numpy(), _yaw_np(angle[5].item()), atol=1e-15)
    np.testing.assert_allclose(yaw.numpy(), Rotation.from_rotvec(angle.numpy()[:, None] * [0, 1, 0]).as_matrix())
    # a body yawed by psi after a pitch and a roll (which keep its z axis in the y-z plane) has heading -psi
    tilt = torch.from_numpy((Rotation.from_rotvec([0.3, 0.0, 0.0]) * Rotation.from_rotvec([0.0, 0.0, 0.2])).as_matrix())
    root = yaw @ tilt
    heading = heading_angle(root)
    torch.testing.assert_close(heading, -angle)
    faced = yaw_matrix(heading) @ root
    torch.testing.assert_close(faced[:, 0, 2], torch.zeros(13, dtype=torch.float64), atol=1e-15, rtol=0)
    assert (faced[:, 2, 2] > 0).all()


def test_prefix_matmul_equals_sequential_loop() -> None:
    rel = torch.from_numpy(Rotation.random(2 * 37, random_state=2).as_matrix()).reshape(2, 37, 3, 3)
    expected = [rel[:, 0]]
    for t in range(1, 37):
        expected.append(rel[:, t] @ expected[-1])
    torch.testing.assert_close(prefix_matmul(rel), torch.stack(expected, dim=1), atol=1e-12, rtol=0)


# --- recovery on the real clip -------------------------------------------------------------------------------------


def test_recover_joints_reproduces_real_joints(real_clip: dict[str, np.ndarray]) -> None:
    joints = recover_joints(torch.from_numpy(real_clip["features"]))
    assert joints.shape == (1287, 22, 3) and joints.dtype == torch.float32
    error = np.abs(joints.double().numpy() - real_clip["joints"]).max()
    assert error < 1e-4, f"max joint error {error:.3e} m"  # measured 4.5e-8 m


def test_round_trip_features_real_clip(real_clip: dict[str, np.ndarray], real_motion: dict[str, torch.Tensor]) -> None:
    features = features_from_motion(real_motion["joints"], real_motion["rotations"])
    assert features.shape == (1287, 272) and features.dtype == torch.float64
    again_joints = recover_joints(features)
    assert (again_joints - real_motion["joints"]).abs().max() < 1e-4
    rot6d = matrix_to_rot6d(recover_rotations(features))
    assert (rot6d - matrix_to_rot6d(real_motion["rotations"])).abs().max() < 1e-4
    # every part of the vector, including the velocity and heading-velocity dims, is rebuilt (measured <= 1.5e-7;
    # the stored 6D rotations are float32 and not exactly orthonormal, hence not 1e-12)
    reference = real_clip["features"].astype(np.float64)
    for name, part in SLICES.items():
        error = np.abs(features[:, part].numpy() - reference[:, part]).max()
        assert error < 1e-6, f"{name}: max error {error:.3e}"


def test_forward_kinematics_reproduces_real_joints(real_motion: dict[str, torch.Tensor]) -> None:
    root = recover_root_position(real_motion["features"])
    torch.testing.assert_close(root, real_motion["joints"][:, 0], atol=1e-6, rtol=0)
    positions, global_rot = forward_kinematics(real_motion["rotations"], root)
    assert positions.shape == (1287, 22, 3) and global_rot.shape == (1287, 22, 3, 3)
    error = (positions - real_motion["joints"]).abs().max().item()
    assert error < 2e-6, f"FK max error {error:.3e} m"  # measured 2.9e-7 m
    torch.testing.assert_close(global_rot[:, 0], real_motion["rotations"][:, 0])
    torch.testing.assert_close(global_rot[:, 4], global_rot[:, 1] @ real_motion["rotations"][:, 4])
    # the bone lengths of the clip are those of REST_OFFSETS
    lengths = bone_lengths(real_motion["joints"])
    np.testing.assert_allclose(
        lengths.numpy(), np.broadcast_to(np.linalg.norm(REST_OFFSETS[1:], axis=-1), (1287, 21)), atol=1e-6
    )


def test_forward_kinematics_rest_pose_and_errors() -> None:
    root = torch.tensor([[0.5, 0.9, -1.0]], dtype=torch.float64)
    rest = torch.eye(3, dtype=torch.float64).expand(1, 22, 3, 3)
    positions, _ = forward_kinematics(rest, root)
    expected = [root[0].numpy()]
    for joint in range(1, 22):
        expected.append(expected[PARENTS[joint]] + REST_OFFSETS[joint])
    np.testing.assert_allclose(positions[0].numpy(), np.stack(expected), atol=1e-12)
    with pytest.raises(ValueError, match="local_rot must have shape"):
        forward_kinematics(torch.zeros(2, 21, 3, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="root_pos must have shape"):
        forward_kinematics(rest, torch.zeros(2, 3, dtype=torch.float64))


# --- conventions of features_from_motion ---------------------------------------------------------------------------


def test_features_invariant_to_global_yaw_and_translation(real_motion: dict[str, torch.Tensor]) -> None:
    joints, rotations = real_motion["joints"][200:320], real_motion["rotations"][200:320]
    features = features_from_motion(joints, rotations)
    # frame-0 conventions
    np.testing.assert_allclose(features[0, SLICES["root_velocity"]].numpy(), 0.0)
    np.testing.assert_allclose(features[0, SLICES["heading_velocity"]].numpy(), IDENTITY_6D)
    np.testing.assert_allclose(features[0, SLICES["local_velocities"]].numpy(), 0.0)
    local = features[:, SLICES["local_positions"]].reshape(-1, 22, 3)
    np.testing.assert_allclose(local[:, 0, [0, 2]].numpy(), 0.0, atol=1e-12)  # pelvis xz at the origin
    assert abs(local[..., 1].min().item()) < 1e-12  # floor at y = 0
    # heading velocity is a pure yaw: dims 3, 5, 7 are 0 and dim 6 is 1
    np.testing.assert_allclose(features[:, [3, 5, 7]].numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(features[:, 6].numpy(), 1.0)

    yaw = yaw_matrix(torch.tensor(2.1, dtype=torch.float64))
    moved_joints = joints @ yaw.T + torch.tensor([3.0, 0.7, -2.0], dtype=torch.float64)
    moved_rot = rotations.clone()
    moved_rot[:, 0] = yaw @ rotations[:, 0]
    torch.testing.assert_close(features_from_motion(moved_joints, moved_rot), features, atol=1e-10, rtol=0)


def test_recover_of_turned_crop_faces_z(real_motion: dict[str, torch.Tensor]) -> None:
    """A crop that starts mid-turn is re-anchored: rotated to face +z, pelvis at the origin, floor at 0."""
    joints, rotations = real_motion["joints"][500:620], real_motion["rotations"][500:620]
    features = features_from_motion(joints, rotations)
    root0 = rotations[0, 0].numpy()
    h0 = -np.arctan2(root0[0, 2], root0[2, 2])
    expected = joints.numpy() @ _yaw_np(h0).T
    expected -= np.array([expected[0, 0, 0], expected[..., 1].min(), expected[0, 0, 2]])
    np.testing.assert_allclose(recover_joints(features).numpy(), expected, atol=1e-10)
    recovered_root = recover_rotations(features)[:, 0].numpy()
    np.testing.assert_allclose(recovered_root, _yaw_np(h0) @ rotations[:, 0].numpy(), atol=1e-10)
    np.testing.assert_allclose(recover_rotations(features)[:, 1:].numpy(), rotations[:, 1:].numpy(), atol=1e-12)


def test_batched_equals_per_clip(real_motion: dict[str, torch.Tensor]) -> None:
    clips = [real_motion["features"][start : start + 64].float() for start in (0, 300, 900)]
    batch = torch.stack(clips)  # (3, 64, 272)
    joints, rotations = recover_joints(batch), recover_rotations(batch)
    assert joints.shape == (3, 64, 22, 3) and rotations.shape == (3, 64, 22, 3, 3) and joints.dtype == torch.float32
    refeatured = features_from_motion(joints, rotations)
    for i, clip in enumerate(clips):
        torch.testing.assert_close(joints[i], recover_joints(clip), atol=0, rtol=0)
        torch.testing.assert_close(rotations[i], recover_rotations(clip), atol=0, rtol=0)
        torch.testing.assert_close(refeatured[i], features_from_motion(joints[i], rotations[i]), atol=0, rtol=0)
    # a single frame is a valid clip
    single = features_from_motion(joints[0, :1], rotations[0, :1])
    torch.testing.assert_close(
        recover_joints(single), joints[0, :1] - joints[0, :1, :, 1].min() * torch.tensor([0, 1.0, 0])
    )
    # numpy in, numpy out, same dtype
    out = recover_joints(clips[0].numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"272-dim motion features of shape .*got shape \(10, 263\)"):
        recover_joints(torch.zeros(10, 263))
    with pytest.raises(ValueError, match=r"got shape \(272,\)"):
        recover_rotations(torch.zeros(272))
    with pytest.raises(ValueError, match="joints must have shape"):
        features_from_motion(torch.zeros(10, 24, 3), torch.zeros(10, 24, 3, 3))
    with pytest.raises(ValueError, match="local_rot must have shape"):
        features_from_motion(torch.zeros(10, 22, 3), torch.zeros(9, 22, 3, 3))
    with pytest.raises(ValueError, match="at least one frame"):
        features_from_motion(torch.zeros(0, 22, 3), torch.zeros(0, 22, 3, 3))
    with pytest.raises(ValueError, match="floating point"):
        recover_joints(torch.zeros(10, 272, dtype=torch.long))


# --- normalisation -------------------------------------------------------------------------------------------------


def test_normalizer_round_trip(real272_dir: Path, real_clip: dict[str, np.ndarray], tmp_path: Path) -> None:
    normalizer = Normalizer.load(real272_dir)
    np.testing.assert_array_equal(normalizer.mean, real_clip["mean"])
    x64 = real_clip["features"].astype(np.float64)
    normalised = normalizer.normalise(x64)
    np.testing.assert_allclose(normalised, (x64 - real_clip["mean"]) / real_clip["std"], rtol=0, atol=0)
    np.testing.assert_allclose(normalizer.denormalise(normalised), x64, rtol=0, atol=1e-13)
    tensor = torch.from_numpy(real_clip["features"])  # float32 tensor stays float32
    back = normalizer.denormalise(normalizer.normalise(tensor))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, tensor, rtol=0, atol=2e-6)
    normalizer.save(tmp_path / "stats")
    again = Normalizer.load(tmp_path / "stats")
    np.testing.assert_array_equal(again.std, normalizer.std)
    with pytest.raises(ValueError, match=r"last dimension 272, got shape \(4, 263\)"):
        normalizer.normalise(np.zeros((4, 263)))


def test_normalizer_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Mean.npy"):
        Normalizer.load(tmp_path)
    np.save(tmp_path / "mean.npy", np.zeros(272))  # MotionMillion's lower-case names are accepted
    with pytest.raises(FileNotFoundError, match="Std.npy"):
        Normalizer.load(tmp_path)
    np.save(tmp_path / "std.npy", np.ones(263))
    with pytest.raises(ValueError, match=r"std.npy has shape \(263,\)"):
        Normalizer.load(tmp_path)
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalizer(np.zeros(272), np.zeros(272))


def test_compute_mean_std_group_average() -> None:
    rng = np.random.default_rng(3)
    clips = [rng.normal(size=(length, 272)) * rng.uniform(0.1, 2.0, size=272) + 5.0 for length in (40, 73, 12)]
    clips[1][:, 3] = 0.0  # a constant dim in one clip
    mean, std = compute_mean_std(iter(clips))
    data = np.concatenate(clips)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=0, atol=1e-12)
    per_dim = data.std(axis=0)
    expected = np.concatenate([np.full(g.stop - g.start, per_dim[g].mean()) for g in GROUPS])
    np.testing.assert_allclose(std, expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"clip 1 has shape \(5, 263\)"):
        compute_mean_std([np.zeros((5, 272)), np.zeros((5, 263))])
    with pytest.raises(ValueError, match="no frames"):
        compute_mean_std([])


# --- expressiveness filter -----------------------------------------------------------------------------------------


def test_expressiveness_filter(real_clip: dict[str, np.ndarray]) -> None:
    real = check_expressive(real_clip["features"])
    assert isinstance(real, ExpressivenessResult) and real.expressive
    assert real.speeds.shape == (4,) and (real.speeds > 0.05).all()

    rng = np.random.default_rng(4)
    pose = real_clip["joints"][0].astype(np.float64)
    standing = pose + rng.normal(scale=1e-4, size=(90, 22, 3))  # 0.1 mm jitter
    still = check_expressive(standing)
    assert not still.expressive and (still.speeds < 0.05).all()
    # one wrist moving at 10 cm/s makes it expressive, and the speed is measured in m/s
    waving = standing.copy()
    waving[:, 21, 0] += np.arange(90) * 0.1 / 30
    speeds = end_effector_speeds(waving, fps=30)
    assert speeds[3] == pytest.approx(0.1, abs=0.02) and speeds[:3].max() < 0.05
    assert check_expressive(torch.from_numpy(waving)).expressive
    with pytest.raises(ValueError, match=r"got shape \(10, 263\)"):
        check_expressive(np.zeros((10, 263)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        end_effector_speeds(np.zeros((1, 22, 3)))
