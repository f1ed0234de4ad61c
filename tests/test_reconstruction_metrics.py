"""Reconstruction metrics against straightforward NumPy/SciPy references, known values, padding, 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.spatial.transform import Rotation

from metrics.reconstruction import (
    MPJPE,
    MPJRE,
    SJPE,
    compression_ratio,
    mpjpe,
    mpjre,
    sjpe,
)

J = 22


# ---- independent references (loops over clips, NumPy / SciPy) ------------------------------------------------------
def ref_mpjpe(pred: np.ndarray, gt: np.ndarray, lengths: list[int], include_root: bool = True) -> float:
    total, frames = 0.0, 0
    for p, g, n in zip(pred, gt, lengths):
        p, g = p[:n] - p[:n, :1], g[:n] - g[:n, :1]
        err = np.sqrt(((p - g) ** 2).sum(-1))  # (n, J)
        err = err if include_root else err[:, 1:]
        total += err.mean(-1).sum()
        frames += n
    return 1000 * total / frames


def ref_mpjre(pred: np.ndarray, gt: np.ndarray, lengths: list[int]) -> float:
    angles = []
    for p, g, n in zip(pred, gt, lengths):
        rel = Rotation.from_matrix(p[:n].reshape(-1, 3, 3)) * Rotation.from_matrix(g[:n].reshape(-1, 3, 3)).inv()
        angles.append(np.degrees(rel.magnitude()))
    return float(np.concatenate(angles).mean())


def ref_sjpe(pred: np.ndarray, gt: np.ndarray, lengths: list[int], fps: float = 30, per_joint: bool = False) -> float:
    values = []
    for p, g, n in zip(pred, gt, lengths):

        def jerk(x: np.ndarray, n: int = n) -> np.ndarray:
            x = x[:n, [10, 11, 20, 21]]
            out = np.zeros((n - 3, 4))
            for t in range(n - 3):
                out[t] = np.linalg.norm((x[t + 3] - 3 * x[t + 2] + 3 * x[t + 1] - x[t]) * fps**3, axis=-1)
            return out

        jp, jg = jerk(p), jerk(g)
        value = (np.abs(jg - jp) / (jg + jp + 1e-6)).sum() / (n - 3)
        values.append(value / 4 if per_joint else value)
    return float(np.mean(values))


def random_rotations(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return Rotation.random(int(np.prod(shape)), random_state=seed).as_matrix().reshape(*shape, 3, 3)


@pytest.fixture
def joints() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    rng = np.random.default_rng(0)
    gt = np.cumsum(rng.normal(0, 0.01, (3, 20, J, 3)), axis=1) + rng.normal(0, 0.3, (1, 1, J, 3))
    pred = gt + rng.normal(0, 0.02, gt.shape)
    return torch.from_numpy(pred), torch.from_numpy(gt), [20, 13, 6]


# ---- values vs references ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("include_root", [True, False])
def test_mpjpe_matches_reference(joints, include_root: bool) -> None:
    pred, gt, lengths = joints
    expected = ref_mpjpe(pred.numpy(), gt.numpy(), lengths, include_root)
    assert mpjpe(pred, gt, torch.tensor(lengths), include_root=include_root).item() == pytest.approx(expected, 1e-12)
    metric = MPJPE(include_root=include_root)
    metric.update(pred[:2].float(), gt[:2].float(), lengths[:2])  # float32 inputs, split into two updates
    metric.update(pred[2:].float(), gt[2:].float(), lengths[2:])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("per_joint", [False, True])
def test_sjpe_matches_reference(joints, per_joint: bool) -> None:
    pred, gt, lengths = joints
    expected = ref_sjpe(pred.numpy(), gt.numpy(), lengths, per_joint=per_joint)
    reduction = "mean" if per_joint else "sum"
    assert sjpe(pred, gt, lengths, joint_reduction=reduction).item() == pytest.approx(expected, rel=1e-10)
    metric = SJPE(joint_reduction=reduction)
    metric.update(pred[:1], gt[:1], lengths[:1])
    metric.update(pred[1:], gt[1:], lengths[1:])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-10)
    assert 0 < expected < (1 if per_joint else 4)


def test_mpjre_matches_reference() -> None:
    gt = random_rotations((2, 9, J), seed=1)
    noise = Rotation.from_rotvec(np.random.default_rng(2).normal(0, 0.3, (2 * 9 * J, 3))).as_matrix()
    pred = (noise @ gt.reshape(-1, 3, 3)).reshape(gt.shape)
    lengths = [9, 4]
    expected = ref_mpjre(pred, gt, lengths)
    got = mpjre(torch.from_numpy(pred), torch.from_numpy(gt), lengths).item()
    assert got == pytest.approx(expected, rel=1e-9)
    metric = MPJRE()
    metric.update(torch.from_numpy(pred[:1]).float(), torch.from_numpy(gt[:1]).float(), lengths[:1])
    metric.update(torch.from_numpy(pred[1:]).float(), torch.from_numpy(gt[1:]).float(), lengths[1:])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-4)


# ---- known values --------------------------------------------------------------------------------------------------
def test_identical_motion_is_zero(joints) -> None:
    _, gt, lengths = joints
    rot = torch.from_numpy(random_rotations((3, 20, J), seed=0))
    assert mpjpe(gt, gt, lengths).item() == 0
    assert mpjre(rot, rot, lengths).item() == pytest.approx(0, abs=1e-5)
    assert sjpe(gt, gt, lengths).item() == 0


def test_constant_offset_of_non_root_joints(joints) -> None:
    _, gt, lengths = joints
    pred = gt.clone()
    pred[:, :, 1:] += torch.tensor([0.006, 0.0, -0.008], dtype=torch.float64)  # |offset| = 10 mm, every non-root joint
    assert mpjpe(pred, gt, lengths, include_root=False).item() == pytest.approx(10.0, rel=1e-9)
    # MotionStreamer's protocol averages over all 22 joints, the root's zero error included
    assert mpjpe(pred, gt, lengths).item() == pytest.approx(10.0 * 21 / 22, rel=1e-9)
    # a global translation of the whole skeleton is removed by root alignment
    assert mpjpe(gt + torch.tensor([1.0, 2.0, 3.0]), gt, lengths).item() == pytest.approx(0, abs=1e-9)


def test_constant_rotation_error_is_its_angle() -> None:
    gt = random_rotations((2, 5, J), seed=3)
    delta = Rotation.from_rotvec(np.deg2rad(30) * np.array([0.6, 0.0, 0.8])).as_matrix()
    pred = delta @ gt
    assert mpjre(torch.from_numpy(pred), torch.from_numpy(gt)).item() == pytest.approx(30.0, rel=1e-9)
    flip = Rotation.from_rotvec(np.pi * np.array([0.0, 1.0, 0.0])).as_matrix()  # stable at 180 degrees
    assert mpjre(torch.from_numpy(flip @ gt), torch.from_numpy(gt)).item() == pytest.approx(180.0, rel=1e-6)


def test_compression_ratio_matches_table_2() -> None:
    assert compression_ratio(16, 4) == pytest.approx(0.0147, abs=5e-5)
    assert compression_ratio(32, 4) == pytest.approx(0.0294, abs=5e-5)
    assert compression_ratio(64, 4) == pytest.approx(0.0588, abs=5e-5)
    assert compression_ratio(512, 2) == pytest.approx(0.941, abs=5e-4)  # FSQ-z512 row
    with pytest.raises(ValueError, match="downsample must be positive"):
        compression_ratio(32, 0)


def test_padding_is_ignored(joints) -> None:
    pred, gt, lengths = joints
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[1, 13:] = float("nan")
    gt2[2, 6:] = 1e6
    for fn in (mpjpe, sjpe):
        assert fn(pred2, gt2, lengths).item() == pytest.approx(fn(pred, gt, lengths).item(), rel=1e-12)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_raises(joints) -> None:
    pred, gt, lengths = joints
    with pytest.raises(ValueError, match="differ in shape"):
        mpjpe(pred[:, :10], gt)
    with pytest.raises(ValueError, match=r"shape \(B, T, J, 3\)"):
        mpjpe(pred[..., :2], gt[..., :2])
    with pytest.raises(ValueError, match=r"x\[None\]"):
        MPJPE().update(pred[0], gt[0])
    with pytest.raises(ValueError, match=r"shape \(B, T, J, 3, 3\)"):
        mpjre(pred, gt)
    bad = pred.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mpjpe(bad, gt)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 20\]"):
        mpjpe(pred, gt, [20, 21, 3])
    with pytest.raises(ValueError, match="3 integers"):
        mpjpe(pred, gt, [20, 3])
    with pytest.raises(ValueError, match=r"lengths must lie in \[4, 20\]"):
        sjpe(pred, gt, [20, 3, 6])
    with pytest.raises(ValueError, match="joint_reduction"):
        SJPE(joint_reduction="max")
    with pytest.raises(ValueError, match="not valid indices"):
        sjpe(pred[:, :, :12], gt[:, :, :12])


# ---- 2-process reduction over gloo ---------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metrics = {"mpjpe": MPJPE(), "sjpe": SJPE(), "mpjre": MPJRE()}
        lengths = data["lengths"][rank::world]  # uneven shards: rank 0 gets 2 clips, rank 1 gets 1
        for name, metric in metrics.items():
            key = "rot" if name == "mpjre" else "joints"
            for b in range(len(lengths)):  # one update per clip
                clip = slice(rank + b * world, rank + b * world + 1)
                metric.update(data[f"pred_{key}"][clip], data[f"gt_{key}"][clip], lengths[b : b + 1])
        result = {name: metric.compute().item() for name, metric in metrics.items()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_reduction_equals_single_process(joints, tmp_path: Path) -> None:
    pred, gt, lengths = joints
    rot_gt = torch.from_numpy(random_rotations((3, 20, J), seed=5))
    rot_pred = torch.from_numpy(random_rotations((3, 20, J), seed=6))
    data = {"pred_joints": pred, "gt_joints": gt, "pred_rot": rot_pred, "gt_rot": rot_gt, "lengths": lengths}
    args = (2, str(tmp_path / "pg"), str(tmp_path), data)
    # fork: no re-import of torch/scipy in the children (spawn costs ~10 s on the 2-core CI machine)
    mp.start_processes(_ddp_worker, args=args, nprocs=2, join=True, start_method="fork")
    expected = {
        "mpjpe": mpjpe(pred, gt, lengths).item(),
        "sjpe": sjpe(pred, gt, lengths).item(),
        "mpjre": mpjre(rot_pred, rot_gt, lengths).item(),
    }
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-12), (rank, name)
