"""The embedded motion-caption corpus: procedural kinematic motion on the 22-joint skeleton, with captions.

There is no HumanML3D on this machine, so llamo writes its own corpus in the HumanML3D-272 folder layout
(``motion_data/vector_272/<id>.npy``, ``texts/<id>.txt``, ``split/{train,val,test}.txt``,
``mean_std/{Mean,Std}.npy``) and every later stage reads it with the loader that reads real data.

How a clip is made:

1. 1-3 *actions* are drawn from :data:`FAMILIES` (``stand_still`` only alone), each with continuous parameters
   (speed, step count, angle, side, repetitions, height ...). Each action becomes a *segment*: per-frame Euler
   offsets of the 22 local joint rotations from a neutral standing pose, a yaw rate, which feet are planted, and
   a flight height/velocity while airborne. Locomotion plans its footholds on the ground first and finds hip and
   knee angles by two-link inverse kinematics, so the legs actually carry the body.
2. Segments are overlap-added (each starts and ends near the neutral pose), then turned into rotation matrices
   and run through :func:`~llamo.motion.skeleton.forward_kinematics` with the pelvis at the origin.
3. The root trajectory is *derived* from the feet: horizontally, planted feet are pinned (the pelvis moves by
   minus their displacement), airborne frames move with the commanded flight velocity; vertically, the lowest
   foot touches the floor, plus the flight height. So feet do not slide and stay on the floor except when an
   action leaves it (jumps, running).
4. :func:`~llamo.motion.representation.features_from_motion` gives the 272-dim features.

Captions (3 per clip) come from templates and synonyms filled from the same parameters, so the words for side
(left/right), direction, count and speed always match the motion. Every draw comes from one
``numpy.random.Generator`` per clip (seeded by ``(seed, index)``), so a seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llamo.motion.normalization import Normalizer, compute_mean_std
from llamo.motion.representation import features_from_motion
from llamo.motion.skeleton import FEET, MIRROR_PAIRS, NUM_JOINTS, REST_OFFSETS, forward_kinematics

FPS = 30
#: shortest clip written (frames); MotionStreamer's evaluation keeps 60 <= T < 300
MIN_FRAMES = 64
#: longest clip written (frames), a multiple of 4 below 300
MAX_FRAMES = 296
#: split fractions (train, val, test)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
GRAVITY = 9.81

# joint indices (SMPL order, see skeleton.JOINT_NAMES)
(PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3, L_FOOT, R_FOOT, NECK, L_COLLAR,
 R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST) = range(NUM_JOINTS)
#: left joint -> right joint (and back)
_OTHER_SIDE = {a: b for pair in MIRROR_PAIRS for a, b in (pair, pair[::-1])}
# Euler components of a pose array (..., 22, 3); the rotation is R = Rx(x) @ Ry(y) @ Rz(z). With this order the
# elevation of an arm (z, innermost) is applied before its forward swing (x, outermost), and legs flex about x.
X, Y, Z = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------------
# small numeric helpers


def _smoothstep(u: np.ndarray | float) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _keys(t: np.ndarray, times: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """Piecewise ease-in/ease-out interpolation through keyframes (constant outside)."""
    times_a = np.asarray(times, dtype=np.float64)
    values_a = np.asarray(values, dtype=np.float64)
    assert np.all(np.diff(times_a) > 0), times
    i = np.clip(np.searchsorted(times_a, t, side="right") - 1, 0, len(times_a) - 2)
    u = (t - times_a[i]) / (times_a[i + 1] - times_a[i])
    return values_a[i] + (values_a[i + 1] - values_a[i]) * _smoothstep(u)


def _hold(t: np.ndarray, rise: float, hold: float, fall: float, start: float = 0.0) -> np.ndarray:
    """0 -> 1 over ``rise`` s, 1 for ``hold`` s, 1 -> 0 over ``fall`` s, starting at ``start``."""
    up = _smoothstep((t - start) / rise)
    down = 1.0 - _smoothstep((t - start - rise - hold) / fall)
    return up * down


def _euler_to_matrix(e: np.ndarray) -> np.ndarray:
    """Euler angles (..., 3) -> rotation matrices (..., 3, 3), R = Rx(e0) @ Ry(e1) @ Rz(e2)."""
    cx, cy, cz = np.cos(e[..., 0]), np.cos(e[..., 1]), np.cos(e[..., 2])
    sx, sy, sz = np.sin(e[..., 0]), np.sin(e[..., 1]), np.sin(e[..., 2])
    rows = (
        (cy * cz, -cy * sz, sy),
        (cx * sz + sx * sy * cz, cx * cz - sx * sy * sz, -sx * cy),
        (sx * sz - cx * sy * cz, sx * cz + cx * sy * sz, cx * cy),
    )
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _yaw(angle: np.ndarray) -> np.ndarray:
    """Rotations (..., 3, 3) about +y (positive = turn to the body's left, from +z towards +x)."""
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(angle), np.ones_like(angle)
    return np.stack(
        (np.stack((c, zero, s), -1), np.stack((zero, one, zero), -1), np.stack((-s, zero, c), -1)), axis=-2
    )


# ----------------------------------------------------------------------------------------------------------------
# body, segments


@dataclass(frozen=True)
class _Body:
    """One clip's skeleton and posture style. Leg quantities are (left, right) pairs: the SMPL legs differ."""

    offsets: np.ndarray
    """(22, 3) rest offsets (REST_OFFSETS scaled)."""
    hip_drop: np.ndarray
    """(2,) height of the pelvis above each hip joint."""
    thigh: np.ndarray
    """(2,) thigh length in the sagittal (y, z) plane."""
    shank: np.ndarray
    """(2,) shank length in the sagittal plane."""
    thigh_angle: np.ndarray
    """(2,) forward angle of the rest thigh from straight down (rad)."""
    shank_angle: np.ndarray
    """(2,) forward angle of the rest shank from straight down (rad)."""
    rest_ankle: np.ndarray
    """(2, 2) (down, forward) of each rest ankle from its hip."""
    neutral: np.ndarray
    """(22, 3) Euler angles of the standing pose (arms down)."""


def _sample_body(rng: np.random.Generator) -> _Body:
    scale = rng.uniform(0.92, 1.08)
    offsets = REST_OFFSETS * scale
    thigh_v, shank_v = offsets[[L_KNEE, R_KNEE]], offsets[[L_ANKLE, R_ANKLE]]  # (2, 3)
    neutral = np.zeros((NUM_JOINTS, 3))
    arm_down = 1.35 + rng.uniform(-0.06, 0.06)  # rest pose is a T-pose: bring the arms down beside the body
    elbow = 0.25 + rng.uniform(-0.1, 0.15)
    _put(neutral, L_SHOULDER, "left", z=-arm_down)
    _put(neutral, L_SHOULDER, "right", z=-arm_down)
    _put(neutral, L_ELBOW, "left", y=-elbow)
    _put(neutral, L_ELBOW, "right", y=-elbow)
    neutral[SPINE1, X] = rng.uniform(-0.04, 0.06)
    neutral[NECK, X] = rng.uniform(-0.05, 0.1)
    return _Body(
        offsets=offsets,
        hip_drop=-offsets[[L_HIP, R_HIP], 1],
        thigh=np.hypot(thigh_v[:, 1], thigh_v[:, 2]),
        shank=np.hypot(shank_v[:, 1], shank_v[:, 2]),
        thigh_angle=np.arctan2(thigh_v[:, 2], -thigh_v[:, 1]),
        shank_angle=np.arctan2(shank_v[:, 2], -shank_v[:, 1]),
        rest_ankle=np.stack((-(thigh_v + shank_v)[:, 1], (thigh_v + shank_v)[:, 2]), axis=-1),
        neutral=neutral,
    )


def _put(pose: np.ndarray, left_joint: int, side: str, x: float | np.ndarray = 0.0, y: float | np.ndarray = 0.0,
         z: float | np.ndarray = 0.0) -> None:
    """Add Euler offsets given for the LEFT joint to ``side``'s joint; the right side is the mirror image.

    Mirroring about the x = 0 plane keeps x rotations and negates y and z rotations.
    """
    joint, sign = (left_joint, 1.0) if side == "left" else (_OTHER_SIDE[left_joint], -1.0)
    pose[..., joint, X] += x
    pose[..., joint, Y] += sign * y
    pose[..., joint, Z] += sign * z


@dataclass
class _Segment:
    """One action as per-frame signals; all zero = standing still in the neutral pose."""

    pose: np.ndarray
    """(n, 22, 3) Euler offsets from the neutral pose (joint 0: pelvis tilt, the heading is ``yaw_rate``)."""
    yaw_rate: np.ndarray
    """(n,) heading change per frame in radians (+ = turn left)."""
    contact: np.ndarray
    """(n, 2) 1 where the left / right foot is planted."""
    air: np.ndarray
    """(n,) height of the lowest foot above the floor (m); > 0 only while airborne."""
    air_velocity: np.ndarray
    """(n, 2) body-frame (x = left, z = forward) pelvis velocity while airborne, m/frame."""

    @classmethod
    def still(cls, n: int) -> _Segment:
        return cls(np.zeros((n, NUM_JOINTS, 3)), np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))

    @property
    def n(self) -> int:
        return self.pose.shape[0]


def _frames(seconds: float) -> int:
    return max(2, int(round(seconds * FPS)))


# ----------------------------------------------------------------------------------------------------------------
# legs by inverse kinematics: crouching in place, and locomotion with footholds planned on the ground


def _leg_ik(body: _Body, leg: int, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hip and knee Euler angles (n, 3) that put leg ``leg``'s ankle at ``target`` (n, 3) = (x, -down, z) from
    its hip: two-link IK in the sagittal plane, corrected for the rest pose's own thigh and shank tilts."""
    dx, dy, dz = target[:, 0], -target[:, 1], target[:, 2]
    l1, l2 = body.thigh[leg], body.shank[leg]
    # the SMPL rest legs are within 0.05 % of straight: allow that much reach
    dist = np.clip(np.sqrt(dx * dx + dy * dy + dz * dz), 0.35 * (l1 + l2), 0.99999 * (l1 + l2))
    inner = np.arccos(np.clip((l1 * l1 + l2 * l2 - dist * dist) / (2 * l1 * l2), -1.0, 1.0))
    alpha = np.arccos(np.clip((l1 * l1 + dist * dist - l2 * l2) / (2 * l1 * dist), -1.0, 1.0))
    thigh = np.arctan2(dz, np.sqrt(dx * dx + dy * dy)) + alpha  # forward angle; the knee points forward
    shank = thigh - (np.pi - inner)
    # an x rotation by a turns a limb's forward angle phi into phi - a (hip flexion is a negative x rotation)
    hip = np.zeros((len(dx), 3))
    hip[:, X] = body.thigh_angle[leg] - thigh
    hip[:, Z] = np.arctan2(dx, dy)  # abduction towards +x
    knee = np.zeros((len(dx), 3))
    knee[:, X] = body.shank_angle[leg] - shank - hip[:, X]
    return hip, knee


def _crouch(body: _Body, pose: np.ndarray, down: np.ndarray, forward: np.ndarray | float = 0.0) -> None:
    """Bend both legs so each ankle moves ``down`` (n,) towards the pelvis and ``forward`` from its rest place.

    Both ankles move the same way relative to the pelvis, so planted feet stay planted; zero = the rest legs.
    """
    for leg, (hip_j, knee_j) in enumerate(((L_HIP, L_KNEE), (R_HIP, R_KNEE))):
        rest_down, rest_forward = body.rest_ankle[leg]
        target = np.stack((np.zeros_like(down), -(rest_down - down), rest_forward + forward + 0 * down), axis=-1)
        hip, knee = _leg_ik(body, leg, target)
        pose[:, hip_j] += hip
        pose[:, knee_j] += knee


def _gait(
    body: _Body,
    *,
    steps: int,
    period: float,
    speed: float,
    direction: tuple[float, float],
    duty: float,
    lift: float,
    crouch: float,
    lead: int,
    turn: float = 0.0,
    turn_with_feet: bool = False,
    flight: float = 0.0,
    arm_swing: float = 0.0,
    elbow: float = 0.0,
    lean: float = 0.0,
    arms_out: float = 0.0,
) -> _Segment:
    """``steps`` alternating steps (``lead`` = first swing foot, 0 left / 1 right) at ``speed`` m/s along the
    body-frame ``direction`` (x = left, z = forward); ``duty`` = stance share of a foot's cycle (< 0.5: flight).
    ``turn`` radians of heading are spread over the motion (over lifted feet when ``turn_with_feet``)."""
    n = _frames((steps + 1) * period)
    t = np.arange(n) / FPS
    total = (steps + 1) * period
    # pelvis plan along the travel axis: accelerate over the first step, decelerate over the last
    env = _smoothstep((t - 0.5 * period) / period) * _smoothstep(((steps + 0.5) * period - t) / period)
    velocity = speed * env  # m/s
    plan = np.cumsum(velocity) / FPS
    plan -= plan[0]
    end = plan[-1]

    swing_half = period * (1.0 - duty)  # half the swing duration
    foot_pos = np.zeros((2, n))  # footholds along the travel axis
    lift_h = np.zeros((2, n))
    contact = np.ones((n, 2))
    last = [0.0, 0.0]
    for k in range(steps):
        foot = (lead + k) % 2
        centre = (k + 1) * period
        t0, t1 = centre - swing_half, centre + swing_half
        # land under the hip at the middle of the coming stance; the last two steps close the feet together
        land = float(np.interp((k + 2) * period, t, plan)) if k < steps - 2 else end
        inside = (t >= t0) & (t <= t1)
        u = (t[inside] - t0) / (t1 - t0)
        foot_pos[foot, inside] = last[foot] + (land - last[foot]) * _smoothstep(u)
        foot_pos[foot, t > t1] = land
        lift_h[foot, inside] = lift * np.sin(np.pi * u)
        contact[inside, foot] = 0.0
        last[foot] = land

    rel = foot_pos - plan  # (2, n) foot relative to the pelvis along the travel axis
    # ankle targets from the hips: the rest ankle moved by the plan (so standing is exactly the rest pose)
    dx = rel * direction[0]
    dz = body.rest_ankle[:, 1:] + rel * direction[1]
    # the pelvis sinks by `sink` below standing: as little as the crouch allows while every foot (with its lift)
    # stays reachable. Each leg keeps its own rest height: the SMPL legs differ by millimetres, and bending a
    # straight leg to absorb them would take a visible knee angle.
    rest_down = body.rest_ankle[:, :1]  # (2, 1)
    reach = np.hypot(body.rest_ankle[:, :1], body.rest_ankle[:, 1:])  # (2, 1) the rest legs' hip-ankle distance
    sink = np.maximum(float(rest_down.max()) * (1.0 - crouch) * env,
                      (rest_down - lift_h - np.sqrt(np.clip(reach**2 - dx**2 - dz**2, 0.0, None))).max(axis=0))

    pose = np.zeros((n, NUM_JOINTS, 3))
    for foot, (hip_j, knee_j) in enumerate(((L_HIP, L_KNEE), (R_HIP, R_KNEE))):
        target = np.stack((dx[foot], -(rest_down[foot] - sink - lift_h[foot]), dz[foot]), axis=-1)
        hip, knee = _leg_ik(body, foot, target)
        pose[:, hip_j] += hip
        pose[:, knee_j] += knee
    edge = _smoothstep(t / 0.15) * _smoothstep((total - t) / 0.15)

    # arms swing against the legs: the arm goes back while the same-side foot is ahead
    swing = np.clip(rel * direction[1] / max(speed * period, 1e-6), -1.0, 1.0)
    for foot, side in enumerate(("left", "right")):
        _put(pose, L_SHOULDER, side, x=arm_swing * swing[foot] * env, z=arms_out * edge)
        _put(pose, L_ELBOW, side, y=-elbow * edge)
    pose[:, SPINE1, X] += lean * env

    air = np.zeros(n)
    air_velocity = np.zeros((n, 2))
    if flight > 0:
        both_up = (contact.sum(axis=1) == 0)
        air = flight * np.minimum(lift_h[0], lift_h[1]) / max(lift, 1e-6) * both_up
        air_velocity[:, 0] = direction[0] * velocity / FPS
        air_velocity[:, 1] = direction[1] * velocity / FPS
        air_velocity *= both_up[:, None]

    if turn_with_feet:
        weight = lift_h.sum(axis=0)
    else:
        weight = env.copy()
    yaw_rate = turn * weight / weight.sum() if turn else np.zeros(n)
    return _Segment(pose, yaw_rate, contact, air, air_velocity)


# ----------------------------------------------------------------------------------------------------------------
# the action families: sample(rng) -> params (JSON-able), build(params, body) -> segment


def _pace(speed: float, slow: float, fast: float) -> str:
    return "slow" if speed < slow else "fast" if speed > fast else "normal"


def _sample_walk(rng: np.random.Generator) -> dict:
    direction = "forward" if rng.random() < 0.75 else "backward"
    if direction == "forward":
        speed = rng.uniform(0.55, 1.55)
        pace = _pace(speed, 0.85, 1.25)
    else:
        speed = rng.uniform(0.4, 1.0)
        pace = _pace(speed, 0.55, 0.85)
    curve, curve_deg = "none", 0.0
    if direction == "forward" and rng.random() < 0.3:
        curve, curve_deg = str(rng.choice(["left", "right"])), float(rng.uniform(30.0, 90.0))
    return {"direction": direction, "speed": float(speed), "pace": pace, "steps": int(rng.integers(3, 11)),
            "curve": curve, "curve_deg": curve_deg, "lead": int(rng.integers(2))}


def _build_walk(p: dict, body: _Body) -> _Segment:
    speed = p["speed"]
    cadence = 1.45 + 0.45 * (speed - 0.55) if p["direction"] == "forward" else 1.5 + 0.5 * (speed - 0.4)
    sign = 1.0 if p["direction"] == "forward" else -1.0
    turn = math.radians(p["curve_deg"]) * (1.0 if p["curve"] == "left" else -1.0 if p["curve"] == "right" else 0.0)
    # a curve turns the body while a foot is in the air, so the planted foot pivots instead of sliding
    return _gait(body, steps=p["steps"], period=1.0 / cadence, speed=speed, direction=(0.0, sign), duty=0.58,
                 lift=0.06 + 0.03 * speed, crouch=0.995, lead=p["lead"], turn=turn, turn_with_feet=True,
                 arm_swing=0.2 + 0.15 * speed, elbow=0.1, lean=0.03 * sign)


def _sample_jog(rng: np.random.Generator) -> dict:
    speed = rng.uniform(1.6, 2.6)
    return {"direction": "forward", "speed": float(speed), "pace": _pace(speed, 1.9, 2.3),
            "steps": int(rng.integers(4, 13)), "lead": int(rng.integers(2))}


def _build_jog(p: dict, body: _Body) -> _Segment:
    cadence = 2.6 + 0.25 * (p["speed"] - 1.6)
    return _gait(body, steps=p["steps"], period=1.0 / cadence, speed=p["speed"], direction=(0.0, 1.0), duty=0.42,
                 lift=0.12, crouch=0.985, lead=p["lead"], flight=0.025, arm_swing=0.45, elbow=1.1, lean=0.1)


def _sample_run(rng: np.random.Generator) -> dict:
    speed = rng.uniform(2.8, 4.0)
    return {"direction": "forward", "speed": float(speed), "pace": "fast" if speed > 3.5 else "normal",
            "steps": int(rng.integers(4, 13)), "lead": int(rng.integers(2))}


def _build_run(p: dict, body: _Body) -> _Segment:
    cadence = 2.9 + 0.3 * (p["speed"] - 2.8)
    return _gait(body, steps=p["steps"], period=1.0 / cadence, speed=p["speed"], direction=(0.0, 1.0), duty=0.33,
                 lift=0.18, crouch=0.975, lead=p["lead"], flight=0.05, arm_swing=0.65, elbow=1.3, lean=0.18)


def _sample_sidestep(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right"])), "steps": int(rng.integers(2, 7)),
            "width": float(rng.uniform(0.12, 0.2)), "period": float(rng.uniform(0.55, 0.75))}


def _build_sidestep(p: dict, body: _Body) -> _Segment:
    left = p["side"] == "left"
    # the foot on the side of travel leads, so the feet part and close and never cross
    return _gait(body, steps=p["steps"], period=p["period"], speed=p["width"] / p["period"],
                 direction=(1.0 if left else -1.0, 0.0), duty=0.6, lift=0.06, crouch=0.99, lead=0 if left else 1)


def _sample_turn(rng: np.random.Generator) -> dict:
    angle = int(rng.choice([45, 90, 135, 180]))
    return {"side": str(rng.choice(["left", "right"])), "angle": angle,
            "angle_deg": float(angle + rng.uniform(-8.0, 8.0)), "period": float(rng.uniform(0.45, 0.6)),
            "lead": int(rng.integers(2))}


def _build_turn(p: dict, body: _Body) -> _Segment:
    steps = max(2, math.ceil(p["angle_deg"] / 50.0)) + 1
    sign = 1.0 if p["side"] == "left" else -1.0
    return _gait(body, steps=steps, period=p["period"], speed=0.0, direction=(0.0, 1.0), duty=0.6, lift=0.05,
                 crouch=0.99, lead=p["lead"], turn=sign * math.radians(p["angle_deg"]), turn_with_feet=True)


def _sample_spin(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right"])), "turns": 1 if rng.random() < 0.7 else 2,
            "period": float(rng.uniform(0.28, 0.36)), "lead": int(rng.integers(2))}


def _build_spin(p: dict, body: _Body) -> _Segment:
    sign = 1.0 if p["side"] == "left" else -1.0
    return _gait(body, steps=5 * p["turns"] + 1, period=p["period"], speed=0.0, direction=(0.0, 1.0), duty=0.55,
                 lift=0.06, crouch=0.985, lead=p["lead"], turn=sign * 2.0 * math.pi * p["turns"],
                 turn_with_feet=True, arms_out=0.6, elbow=0.3)


def _sample_jump(rng: np.random.Generator) -> dict:
    mode = "in_place" if rng.random() < 0.5 else "forward"
    return {"mode": mode, "count": int(rng.integers(1, 4)), "height": float(rng.uniform(0.12, 0.35)),
            "distance": float(rng.uniform(0.35, 0.9)) if mode == "forward" else 0.0}


def _build_jump(p: dict, body: _Body) -> _Segment:
    flight_t = 2.0 * math.sqrt(2.0 * p["height"] / GRAVITY)
    prep, push, land, recover = 0.4, 0.12, 0.25, 0.3
    one = prep + push + flight_t + land + recover
    total = p["count"] * one + 0.1
    n = _frames(total)
    t = np.arange(n) / FPS
    crouch_keys: list[tuple[float, float]] = [(0.0, 0.0)]
    arm_keys: list[tuple[float, float]] = [(0.0, 0.0)]
    air = np.zeros(n)
    contact = np.ones((n, 2))
    air_velocity = np.zeros((n, 2))
    v0 = GRAVITY * flight_t / 2.0
    for j in range(p["count"]):
        s = j * one
        up, down = s + prep + push, s + prep + push + flight_t
        crouch_keys += [(s + prep, 1.0), (up, 0.0), (up + 0.5 * flight_t, 0.25), (down, 0.1), (down + land, 0.8),
                        (down + land + recover, 0.0)]
        arm_keys += [(s + prep, 0.7), (up + 0.3 * flight_t, -1.6), (down, -1.2), (down + land, -0.3),
                     (down + land + recover, 0.0)]
        inside = (t > up) & (t < down)
        tau = t[inside] - up
        air[inside] = v0 * tau - 0.5 * GRAVITY * tau * tau
        contact[inside] = 0.0
        air_velocity[inside, 1] = p["distance"] / flight_t / FPS
    crouch_keys.append((total + 1.0, 0.0))
    arm_keys.append((total + 1.0, 0.0))
    c = _keys(t, *zip(*crouch_keys))
    a = _keys(t, *zip(*arm_keys))
    pose = np.zeros((n, NUM_JOINTS, 3))
    _crouch(body, pose, down=0.3 * c, forward=0.15 * c)
    for side in ("left", "right"):
        _put(pose, L_SHOULDER, side, x=a)
    pose[:, SPINE1, X] += 0.35 * c
    return _Segment(pose, np.zeros(n), contact, air, air_velocity)


def _sample_squat(rng: np.random.Generator) -> dict:
    return {"count": int(rng.integers(1, 5)), "depth": float(rng.uniform(0.4, 1.0)),
            "duration": float(rng.uniform(1.3, 2.0))}


def _squat_depth_word(depth: float) -> str:
    return "deep" if depth > 0.75 else "shallow" if depth < 0.55 else "normal"


def _build_squat(p: dict, body: _Body) -> _Segment:
    each = p["duration"]
    n = _frames(p["count"] * each + 0.3)
    t = np.arange(n) / FPS - 0.15
    phase = np.clip(t / each, 0.0, p["count"])
    c = np.sin(np.pi * (phase % 1.0)) ** 2 * p["depth"]
    pose = np.zeros((n, NUM_JOINTS, 3))
    _crouch(body, pose, down=0.45 * c, forward=0.25 * c)  # hips go down and back
    for side in ("left", "right"):
        _put(pose, L_SHOULDER, side, x=-1.3 * c)
        _put(pose, L_ELBOW, side, y=0.15 * c)
    pose[:, SPINE1, X] += 0.35 * c
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_wave(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right"])), "count": int(rng.integers(2, 6)),
            "frequency": float(rng.uniform(1.5, 2.5))}


def _build_wave(p: dict, body: _Body) -> _Segment:
    rise, waving = 0.5, p["count"] / p["frequency"]
    n = _frames(rise + waving + rise + 0.1)
    t = np.arange(n) / FPS
    e = _hold(t, rise, waving, rise)
    w = _hold(t, 0.1, waving - 0.2, 0.1, start=rise)
    pose = np.zeros((n, NUM_JOINTS, 3))
    side = p["side"]
    _put(pose, L_SHOULDER, side, y=-0.35 * e, z=1.6 * e)
    _put(pose, L_ELBOW, side, z=1.5 * e + 0.45 * w * np.sin(2 * np.pi * p["frequency"] * (t - rise)))
    pose[:, HEAD, Z] += (0.1 if side == "left" else -0.1) * e  # tilt the head towards the waving hand
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_raise_arms(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right", "both"])), "mode": str(rng.choice(["forward", "sideways", "up"])),
            "rise": float(rng.uniform(0.5, 0.9)), "hold": float(rng.uniform(0.4, 1.5))}


def _build_raise_arms(p: dict, body: _Body) -> _Segment:
    n = _frames(2 * p["rise"] + p["hold"] + 0.1)
    t = np.arange(n) / FPS
    e = _hold(t, p["rise"], p["hold"], p["rise"])
    pose = np.zeros((n, NUM_JOINTS, 3))
    x, z = {"forward": (-1.45, 0.15), "sideways": (0.0, 1.25), "up": (0.0, 2.8)}[p["mode"]]
    for side in ("left", "right") if p["side"] == "both" else (p["side"],):
        _put(pose, L_SHOULDER, side, x=x * e, z=z * e)
        _put(pose, L_ELBOW, side, y=0.2 * e)
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_kick(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right"])), "count": int(rng.integers(1, 4)),
            "height": str(rng.choice(["low", "high"])), "duration": float(rng.uniform(0.9, 1.2))}


def _build_kick(p: dict, body: _Body) -> _Segment:
    each, hip_max = p["duration"], (0.9 if p["height"] == "low" else 1.45)
    n = _frames(p["count"] * each + 0.5)
    t = np.arange(n) / FPS
    hip_keys, knee_keys = [(0.0, 0.0)], [(0.0, 0.0)]
    for k in range(p["count"]):
        s = 0.2 + k * each
        # lift off and land with the knee bending twice as much as the hip: the foot rises straight up
        hip_keys += [(s + 0.15 * each, 0.3), (s + 0.33 * each, 0.8 * hip_max), (s + 0.5 * each, hip_max),
                     (s + 0.67 * each, 0.8 * hip_max), (s + 0.82 * each, 0.3), (s + 0.97 * each, 0.0)]
        knee_keys += [(s + 0.15 * each, 0.6), (s + 0.33 * each, 1.6), (s + 0.5 * each, 0.1),
                      (s + 0.67 * each, 1.6), (s + 0.82 * each, 0.6), (s + 0.97 * each, 0.0)]
    for keys in (hip_keys, knee_keys):
        keys.append((t[-1] + 1.0, 0.0))
    hip, knee = (_keys(t, *zip(*k)) for k in (hip_keys, knee_keys))
    ankle = 0.6 * (hip / hip_max) ** 2  # point the toes as the leg extends
    e = _hold(t, 0.2, n / FPS - 0.4, 0.2)
    pose = np.zeros((n, NUM_JOINTS, 3))
    side = p["side"]
    other = "right" if side == "left" else "left"
    _put(pose, L_HIP, side, x=-hip)
    _put(pose, L_KNEE, side, x=knee)
    _put(pose, L_ANKLE, side, x=ankle)
    _crouch(body, pose, down=0.03 * e)  # soft knees, on both legs so the feet stay put until the kick
    _put(pose, L_SHOULDER, other, x=-0.4 * e)
    _put(pose, L_SHOULDER, side, x=0.3 * e, z=0.3 * e)
    pose[:, SPINE1, X] -= 0.12 * hip / 1.45
    contact = np.ones((n, 2))
    contact[:, 0 if side == "left" else 1] = (hip < 0.02).astype(np.float64)
    return _Segment(pose, np.zeros(n), contact, np.zeros(n), np.zeros((n, 2)))


def _sample_punch(rng: np.random.Generator) -> dict:
    side = str(rng.choice(["left", "right", "alternating"]))
    return {"side": side, "count": int(rng.integers(2 if side == "alternating" else 1, 7)),
            "duration": float(rng.uniform(0.35, 0.5)), "lead": str(rng.choice(["left", "right"]))}


def _punch_sides(p: dict) -> list[str]:
    if p["side"] != "alternating":
        return [p["side"]] * p["count"]
    other = "right" if p["lead"] == "left" else "left"
    return [p["lead"] if k % 2 == 0 else other for k in range(p["count"])]


def _build_punch(p: dict, body: _Body) -> _Segment:
    guard, each = 0.4, p["duration"]
    n = _frames(2 * guard + p["count"] * each + 0.1)
    t = np.arange(n) / FPS
    g = _hold(t, guard, p["count"] * each, guard)
    pose = np.zeros((n, NUM_JOINTS, 3))
    extend = {"left": np.zeros(n), "right": np.zeros(n)}
    for k, side in enumerate(_punch_sides(p)):
        s = guard + k * each
        extend[side] += _keys(t, (s - 0.01, s, s + 0.35 * each, s + each, s + each + 0.01), (0, 0, 1, 0, 0))
    for side in ("left", "right"):
        _put(pose, L_SHOULDER, side, x=-0.45 * g - 1.0 * extend[side], y=-0.2 * extend[side], z=0.2 * g)
        _put(pose, L_ELBOW, side, y=-1.8 * g + 1.95 * extend[side])
    # the punching shoulder goes forward: twist the chest away from that side (yaw about the spine)
    pose[:, SPINE2, Y] += -0.25 * extend["left"] + 0.25 * extend["right"]
    _crouch(body, pose, down=0.04 * g)  # fighting stance: knees slightly bent
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_bow(rng: np.random.Generator) -> dict:
    return {"depth": float(rng.uniform(0.35, 1.1)), "down": float(rng.uniform(0.7, 1.1)),
            "hold": float(rng.uniform(0.3, 1.2))}


def _bow_depth_word(depth: float) -> str:
    return "deep" if depth > 0.85 else "slight" if depth < 0.6 else "normal"


def _build_bow(p: dict, body: _Body) -> _Segment:
    n = _frames(2 * p["down"] + p["hold"] + 0.1)
    t = np.arange(n) / FPS
    b = p["depth"] * _hold(t, p["down"], p["hold"], p["down"])
    pose = np.zeros((n, NUM_JOINTS, 3))
    # tilt the pelvis and take the tilt back at the hips so the legs stay vertical
    pose[:, PELVIS, X] += 0.3 * b
    pose[:, SPINE1, X] += 0.3 * b
    pose[:, SPINE2, X] += 0.25 * b
    pose[:, SPINE3, X] += 0.15 * b
    pose[:, NECK, X] += 0.1 * b
    for side in ("left", "right"):
        _put(pose, L_HIP, side, x=-0.3 * b)
        _put(pose, L_SHOULDER, side, x=-0.8 * b)  # arms hang towards the floor instead of along the trunk
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_clap(rng: np.random.Generator) -> dict:
    return {"count": int(rng.integers(2, 7)), "frequency": float(rng.uniform(1.6, 2.4))}


def _build_clap(p: dict, body: _Body) -> _Segment:
    rise, clapping = 0.4, p["count"] / p["frequency"]
    n = _frames(2 * rise + clapping + 0.1)
    t = np.arange(n) / FPS
    e = _hold(t, rise, clapping, rise)
    inside = (t >= rise) & (t <= rise + clapping)
    together = np.where(inside, 0.5 - 0.5 * np.cos(2 * np.pi * p["frequency"] * (t - rise)), 0.0)
    pose = np.zeros((n, NUM_JOINTS, 3))
    for side in ("left", "right"):
        # arms forward, then swing in about the vertical until the wrists meet at the midline
        _put(pose, L_SHOULDER, side, y=-1.05 * e - 0.45 * together, z=1.0 * e)
        _put(pose, L_ELBOW, side, y=-0.65 * e)
    return _Segment(pose, np.zeros(n), np.ones((n, 2)), np.zeros(n), np.zeros((n, 2)))


def _sample_balance(rng: np.random.Generator) -> dict:
    return {"side": str(rng.choice(["left", "right"])), "hold": float(rng.uniform(1.0, 3.0)),
            "knee_height": float(rng.uniform(1.1, 1.6))}


def _build_balance(p: dict, body: _Body) -> _Segment:
    rise = 0.6
    n = _frames(2 * rise + p["hold"] + 0.1)
    t = np.arange(n) / FPS
    e = _hold(t, rise, p["hold"], rise)
    side = p["side"]
    pose = np.zeros((n, NUM_JOINTS, 3))
    hip = p["knee_height"] * e
    _put(pose, L_HIP, side, x=-hip)
    _put(pose, L_KNEE, side, x=np.minimum(2.0 * hip, 1.7))  # knee leads: the foot leaves the floor vertically
    for s in ("left", "right"):
        _put(pose, L_SHOULDER, s, z=0.9 * e)
    contact = np.ones((n, 2))
    contact[:, 0 if side == "left" else 1] = (e < 0.05).astype(np.float64)
    return _Segment(pose, np.zeros(n), contact, np.zeros(n), np.zeros((n, 2)))


def _sample_stand_still(rng: np.random.Generator) -> dict:
    return {"duration": float(rng.uniform(2.2, 6.0))}


def _build_stand_still(p: dict, body: _Body) -> _Segment:
    return _Segment.still(_frames(p["duration"]))


# ----------------------------------------------------------------------------------------------------------------
# captions


_NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
           10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen"}
_TIMES = {1: "once", 2: "twice"}
#: speed words by pace (adverbial phrases)
PACE_WORDS = {
    "slow": ("slowly", "at a slow pace", "leisurely"),
    "normal": ("at a normal pace", "at a steady pace", "at an even pace"),
    "fast": ("quickly", "briskly", "at a fast pace"),
}


def times_word(count: int) -> str:
    """'once', 'twice', 'three times', ..."""
    return _TIMES.get(count, f"{_NUMBER[count]} times")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _phrase_walk(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    d = p["direction"]
    steps = _NUMBER[p["steps"]]
    if d == "forward":
        bases = ["walks forward", "walks ahead", "moves forward"] + (["walks straight ahead"] * (p["curve"] == "none"))
        counted = [f"walks {steps} steps forward", f"takes {steps} steps forward"]
    else:
        bases = ["walks backward", "walks backwards", "moves backward", "steps backward"]
        counted = [f"walks {steps} steps backward", f"takes {steps} steps backwards"]
    parts = [_pick(rng, counted if detailed or rng.random() < 0.3 else bases)]
    if detailed or rng.random() < 0.5:
        parts.append(_pick(rng, PACE_WORDS[p["pace"]]))
    if p["curve"] != "none":
        parts.append(_pick(rng, ["curving to the {s}", "veering to the {s}", "in an arc to the {s}"]).format(
            s=p["curve"]))
    return " ".join(parts)


def _phrase_jog(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    parts = [_pick(rng, ["jogs forward", "jogs ahead", "jogs straight ahead"])]
    if detailed or rng.random() < 0.4:
        parts.append(f"for {_NUMBER[p['steps']]} steps")
    if detailed or rng.random() < 0.5:
        parts.append(_pick(rng, PACE_WORDS[p["pace"]]))
    return " ".join(parts)


def _phrase_run(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    fast = p["pace"] == "fast"
    parts = [_pick(rng, ["sprints forward", "runs forward quickly", "dashes forward"] if fast
                   else ["runs forward", "runs ahead", "runs straight ahead"])]
    if detailed or rng.random() < 0.4:
        parts.append(f"for {_NUMBER[p['steps']]} steps")
    return " ".join(parts)


def _phrase_sidestep(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, k = p["side"], p["steps"]
    if detailed or rng.random() < 0.4:
        return _pick(rng, [f"takes {_NUMBER[k]} steps sideways to the {s}", f"sidesteps {times_word(k)} to the {s}",
                           f"shuffles {_NUMBER[k]} steps to the {s}"])
    return _pick(rng, [f"sidesteps to the {s}", f"steps sideways to the {s}", f"shuffles sideways to the {s}",
                       f"moves sideways to the {s}"])


_ANGLE_WORDS = {
    45: ("45 degrees", "an eighth of a turn"),
    90: ("90 degrees", "a quarter turn"),
    135: ("135 degrees", "three eighths of a turn"),
    180: ("180 degrees", "a half turn"),
}


def _phrase_turn(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s = p["side"]
    if detailed or rng.random() < 0.5:
        a = p["angle"]
        options = [f"turns {_ANGLE_WORDS[a][0]} to the {s}", f"makes {_ANGLE_WORDS[a][1]} to the {s}"]
        if a == 180:
            options.append(f"turns around to the {s}")
        return _pick(rng, options)
    return _pick(rng, [f"turns {s}", f"turns to the {s}", f"pivots to the {s}", f"turns towards the {s}"])


def _phrase_spin(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, k = p["side"], p["turns"]
    if detailed or rng.random() < 0.5:
        if k == 1:
            return _pick(rng, [f"spins around once to the {s}", f"does a full spin to the {s}",
                               f"spins a full circle to the {s}"])
        return _pick(rng, [f"spins around twice to the {s}", f"does two full spins to the {s}",
                           f"spins two full circles to the {s}"])
    return _pick(rng, [f"spins to the {s}", f"spins around to the {s}", f"twirls to the {s}"])


def _phrase_jump(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    k = p["count"]
    if p["mode"] == "in_place":
        base = _pick(rng, ["jumps in place", "jumps up in place", "hops in place"] if p["height"] < 0.2
                     else ["jumps in place", "jumps straight up in place", "jumps up high in place"])
    else:
        base = _pick(rng, ["leaps forward", "jumps far forward"] if p["distance"] > 0.7
                     else ["jumps forward", "hops forward"])
    if detailed or rng.random() < 0.5:
        return f"{base} {times_word(k)}"
    return base


def _phrase_squat(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    k, depth = p["count"], _squat_depth_word(p["depth"])
    adj = {"deep": "deep ", "shallow": "shallow ", "normal": ""}[depth]
    if detailed or rng.random() < 0.5:
        if k == 1:
            return _pick(rng, [f"does one {adj}squat", f"squats down {'low ' if depth == 'deep' else ''}once"])
        return _pick(rng, [f"does {_NUMBER[k]} {adj}squats", f"squats {times_word(k)}",
                           f"squats down and up {times_word(k)}"])
    return _pick(rng, ["squats", "squats down", "crouches down and stands back up", "does squats" if k > 1 else
                       "does a squat"])


def _phrase_wave(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, k = p["side"], p["count"]
    base = _pick(rng, [f"waves with the {s} hand", f"waves the {s} hand", f"raises the {s} hand and waves",
                       f"waves hello with the {s} hand"])
    if detailed or rng.random() < 0.4:
        return f"{base} {times_word(k)}"
    return base


def _phrase_raise_arms(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, mode = p["side"], p["mode"]
    arm = "both arms" if s == "both" else f"the {s} arm"
    where = {"forward": ["in front", "forward", "straight out in front"], "sideways": ["to the side", "out sideways"],
             "up": ["above the head", "overhead", "up high"]}[mode]
    if s == "both" and mode == "sideways":
        where = ["out to the sides", "out sideways"]
    verb = _pick(rng, ["raises", "lifts", "puts up" if mode == "up" else "raises"])
    phrase = f"{verb} {arm} {_pick(rng, where)}" if detailed or rng.random() < 0.7 else f"{verb} {arm}"
    if rng.random() < 0.4:
        phrase += " and lowers " + ("them" if s == "both" else "it")
    return phrase


def _phrase_kick(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, k = p["side"], p["count"]
    height = p["height"] + " " if detailed or rng.random() < 0.3 else ""
    base = _pick(rng, [f"kicks {height}with the {s} leg", f"kicks {height}forward with the {s} foot",
                       f"kicks the {s} leg forward {height}".rstrip()])
    if detailed or rng.random() < 0.4:
        base += " " + times_word(k)
    return base


def _phrase_punch(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s, k = p["side"], p["count"]
    if s == "alternating":
        if detailed or rng.random() < 0.5:
            return _pick(rng, [f"throws {_NUMBER[k]} punches with alternating fists",
                               f"punches forward {times_word(k)} with alternating hands"])
        return _pick(rng, ["punches forward with alternating fists", "throws punches with alternating hands",
                           "punches the air with alternating fists"])
    if detailed or rng.random() < 0.5:
        return _pick(rng, [f"punches {times_word(k)} with the {s} fist",
                           f"throws {_NUMBER[k]} {'punches' if k > 1 else 'punch'} with the {s} hand",
                           f"punches forward {times_word(k)} with the {s} hand"])
    return _pick(rng, [f"punches with the {s} fist", f"punches forward with the {s} hand",
                       f"throws a punch with the {s} hand"])


def _phrase_bow(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    depth = _bow_depth_word(p["depth"])
    if detailed or rng.random() < 0.6:
        return _pick(rng, {"deep": ["bows deeply", "takes a deep bow", "bends deeply forward at the waist"],
                           "slight": ["bows slightly", "gives a slight bow", "bends slightly forward"],
                           "normal": ["bows", "takes a bow", "bends forward at the waist"]}[depth])
    return _pick(rng, ["bows", "takes a bow", "bows down"])


def _phrase_clap(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    k = p["count"]
    if detailed or rng.random() < 0.5:
        return _pick(rng, [f"claps the hands {times_word(k)}", f"claps {times_word(k)}"])
    return _pick(rng, ["claps the hands", "claps", "claps in front of the chest"])


def _phrase_balance(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    s = p["side"]
    return _pick(rng, [f"lifts the {s} knee and balances", f"stands on one leg with the {s} knee raised",
                       f"raises the {s} leg and balances on one foot", f"balances on one leg, lifting the {s} knee"])


def _phrase_stand_still(p: dict, rng: np.random.Generator, detailed: bool) -> str:
    return _pick(rng, ["stands still", "stands in place without moving", "remains motionless", "stays still",
                       "stands still and does nothing"])


@dataclass(frozen=True)
class Family:
    """One action family: how to draw its parameters, build its motion and describe it."""

    name: str
    sample: Callable[[np.random.Generator], dict]
    build: Callable[[dict, _Body], _Segment]
    phrase: Callable[[dict, np.random.Generator, bool], str]


#: the action families, by name
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("walk", _sample_walk, _build_walk, _phrase_walk),
        Family("jog", _sample_jog, _build_jog, _phrase_jog),
        Family("run", _sample_run, _build_run, _phrase_run),
        Family("sidestep", _sample_sidestep, _build_sidestep, _phrase_sidestep),
        Family("turn", _sample_turn, _build_turn, _phrase_turn),
        Family("spin", _sample_spin, _build_spin, _phrase_spin),
        Family("jump", _sample_jump, _build_jump, _phrase_jump),
        Family("squat", _sample_squat, _build_squat, _phrase_squat),
        Family("wave", _sample_wave, _build_wave, _phrase_wave),
        Family("raise_arms", _sample_raise_arms, _build_raise_arms, _phrase_raise_arms),
        Family("kick", _sample_kick, _build_kick, _phrase_kick),
        Family("punch", _sample_punch, _build_punch, _phrase_punch),
        Family("bow", _sample_bow, _build_bow, _phrase_bow),
        Family("clap", _sample_clap, _build_clap, _phrase_clap),
        Family("balance", _sample_balance, _build_balance, _phrase_balance),
        Family("stand_still", _sample_stand_still, _build_stand_still, _phrase_stand_still),
    )
}
#: families that may appear inside a composition (standing still only makes a clip of its own)
COMPOSABLE = tuple(name for name in FAMILIES if name != "stand_still")

_SUBJECTS = (("a person", "the person"), ("a man", "he"), ("a woman", "she"), ("someone", "the person"),
             ("the person", "the person"), ("a figure", "the figure"), ("the man", "he"), ("the woman", "she"),
             ("a human", "the human"))


def _caption(actions: list[dict], rng: np.random.Generator, detailed: bool) -> str:
    subject, again = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
    phrases = [FAMILIES[a["family"]].phrase(a, rng, detailed) for a in actions]
    if len(phrases) == 1:
        text = f"{subject} {phrases[0]}"
    elif len(phrases) == 2:
        text = _pick(rng, [f"{subject} {phrases[0]}, then {phrases[1]}",
                           f"{subject} {phrases[0]} and then {phrases[1]}",
                           f"first {subject} {phrases[0]}, then {again} {phrases[1]}",
                           f"{subject} {phrases[0]}, and after that {again} {phrases[1]}"])
    else:
        text = _pick(rng, [f"{subject} {phrases[0]}, then {phrases[1]}, and finally {phrases[2]}",
                           f"{subject} {phrases[0]}, {phrases[1]}, and then {phrases[2]}",
                           f"first {subject} {phrases[0]}, next {again} {phrases[1]}, and last {again} {phrases[2]}"])
    return text[0].upper() + text[1:] + "."


def make_captions(actions: list[dict], rng: np.random.Generator, count: int = 3) -> list[str]:
    """``count`` different captions of a clip's actions; the first names every parameter (count, speed, angle)."""
    captions: list[str] = []
    for _ in range(20 * count):
        caption = _caption(actions, rng, detailed=not captions)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    assert len(captions) == count, (actions, captions)
    return captions


# Part-of-speech tags and lemmas of the caption vocabulary, for HumanML3D's `word/POS` token field.
_VERBS = {
    "walks": "walk", "moves": "move", "steps": "step", "takes": "take", "jogs": "jog", "runs": "run",
    "sprints": "sprint", "dashes": "dash", "sidesteps": "sidestep", "shuffles": "shuffle", "turns": "turn",
    "makes": "make", "pivots": "pivot", "spins": "spin", "does": "do", "twirls": "twirl", "jumps": "jump",
    "hops": "hop", "leaps": "leap", "squats": "squat", "crouches": "crouch", "stands": "stand", "waves": "wave",
    "raises": "raise", "lifts": "lift", "puts": "put", "lowers": "lower", "kicks": "kick", "punches": "punch",
    "throws": "throw", "bows": "bow", "bends": "bend", "gives": "give", "claps": "clap",
    "balances": "balance", "remains": "remain", "stays": "stay", "curving": "curve", "veering": "veer",
    "lifting": "lift", "raised": "raise", "alternating": "alternate", "moving": "move",
}
_NOUNS = {
    "person", "man", "woman", "someone", "figure", "human", "steps", "step", "degrees", "turn", "eighth", "eighths",
    "quarter", "spin", "spins", "circle", "circles", "squat", "squats", "hand", "hands", "arm", "arms", "head",
    "side", "sides", "leg", "foot", "knee", "fist", "fists", "punch", "punches", "air", "bow", "waist", "chest",
    "time", "degree", "sidestep", "sidesteps",
    "place", "pace", "arc", "times", "front", "nothing", "hello",
}
_POS_OTHER = {
    "a": "DET", "an": "DET", "the": "DET", "both": "DET", "one": "NUM", "two": "NUM", "three": "NUM", "four": "NUM",
    "five": "NUM", "six": "NUM", "seven": "NUM", "eight": "NUM", "nine": "NUM", "ten": "NUM", "eleven": "NUM",
    "twelve": "NUM", "thirteen": "NUM", "45": "NUM", "90": "NUM", "135": "NUM", "180": "NUM", "he": "PRON",
    "she": "PRON", "it": "PRON", "them": "PRON", "forward": "ADV", "ahead": "ADV", "backward": "ADV",
    "backwards": "ADV", "straight": "ADV", "sideways": "ADV", "back": "ADV", "up": "ADP", "down": "ADP",
    "around": "ADV", "once": "ADV", "twice": "ADV", "then": "ADV", "first": "ADV", "next": "ADV", "last": "ADV",
    "finally": "ADV", "slowly": "ADV", "quickly": "ADV", "briskly": "ADV", "leisurely": "ADV", "deeply": "ADV",
    "slightly": "ADV", "far": "ADV", "high": "ADV", "low": "ADV", "overhead": "ADV",
    "still": "ADV", "out": "ADP", "in": "ADP", "to": "ADP", "towards": "ADP", "with": "ADP", "for": "ADP",
    "of": "ADP", "on": "ADP", "at": "ADP", "above": "ADP", "after": "ADP", "without": "ADP", "and": "CCONJ",
    "that": "PRON", "left": "ADJ", "right": "ADJ", "full": "ADJ", "deep": "ADJ", "shallow": "ADJ", "slight": "ADJ",
    "slow": "ADJ", "fast": "ADJ", "half": "ADJ", "steady": "ADJ", "even": "ADJ", "normal": "ADJ", "motionless": "ADJ",
}


def _tokens(caption: str) -> str:
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    out: list[str] = []
    previous = ""
    for w in words:
        # "steps", "squats", "punches" ... are nouns after a number, article or adjective, verbs otherwise
        noun_context = previous in {"NUM", "DET", "ADJ"}
        if w in _POS_OTHER:
            tag, lemma = _POS_OTHER[w], w
        elif w in _VERBS and not (noun_context and w in _NOUNS):
            tag, lemma = "VERB", _VERBS[w]
        else:
            assert w in _NOUNS, f"caption word {w!r} missing from the token lexicon"
            tag, lemma = "NOUN", w[:-1] if w.endswith("s") and w[:-1] in _NOUNS else w
        out.append(f"{lemma}/{tag}")
        previous = tag
    return " ".join(out)


def caption_line(caption: str) -> str:
    """One HumanML3D text line: ``caption#word/POS ...#0.0#0.0`` (the caption covers the whole clip)."""
    return f"{caption}#{_tokens(caption)}#0.0#0.0"


# ----------------------------------------------------------------------------------------------------------------
# clip assembly


@dataclass
class SynthClip:
    """One generated clip."""

    features: np.ndarray
    """(T, 272) float32 un-normalised 272-dim features (what is written to disk)."""
    joints: np.ndarray
    """(T, 22, 3) float64 global joints in the generator's world (starts at the xz origin facing +z, floor y = 0)."""
    local_rot: np.ndarray
    """(T, 22, 3, 3) float64 parent-relative rotations; joint 0 = global pelvis orientation."""
    captions: list[str]
    """3 captions matching the actions."""
    actions: list[dict] = field(default_factory=list)
    """One dict per action: ``family``, ``start``/``end`` frames and the family's parameters."""


def _sample_actions(rng: np.random.Generator, families: Sequence[str] | None) -> list[dict]:
    if families is not None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not 1 <= len(families) <= 3:
            raise ValueError(f"families must be 1-3 names from {sorted(FAMILIES)}, got {list(families)}")
        names = list(families)
    else:
        k = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        names = [str(rng.choice(list(FAMILIES)))] if k == 1 else []
        while len(names) < k:  # no family twice in a row: "walks, then walks" reads as one action
            name = str(rng.choice(COMPOSABLE))
            if not names or name != names[-1]:
                names.append(name)
    return [{"family": name, **FAMILIES[name].sample(rng)} for name in names]


def _idle(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nobody stands perfectly still: slow upper-body drift, a sideways weight shift and a slight yaw of the pelvis.

    Returns pose offsets (n, 22, 3) and a heading offset (n,) (0 at frame 0). End effectors stay under ~3 cm/s
    (stand-still clips remain under-expressive), and every clip has some root and heading motion, so no feature
    group of a corpus is constant (which would give it a zero std).
    """
    t = np.arange(n) / FPS
    pose = np.zeros((n, NUM_JOINTS, 3))
    for joint in (SPINE1, SPINE3, NECK, HEAD, L_SHOULDER, R_SHOULDER):
        freq, phase = rng.uniform(0.1, 0.3, size=3), rng.uniform(0, 2 * np.pi, size=3)
        pose[:, joint] = 0.01 * np.sin(2 * np.pi * freq * t[:, None] + phase)

    def drift(amplitude: float) -> np.ndarray:
        freq, phase = rng.uniform(0.08, 0.2), rng.uniform(0, 2 * np.pi)
        return amplitude * (np.sin(2 * np.pi * freq * t + phase) - np.sin(phase))

    # tilting both legs the same way about z moves the pelvis sideways over planted feet
    sway = drift(rng.uniform(0.003, 0.008))
    pose[:, L_HIP, Z] += sway
    pose[:, R_HIP, Z] += sway
    # the pelvis (and the upper body) yaws; the hips turn back so the legs, and the feet, do not
    heading = drift(rng.uniform(0.005, 0.02))
    pose[:, L_HIP, Y] -= heading
    pose[:, R_HIP, Y] -= heading
    return pose, heading


def generate_clip(rng: np.random.Generator, families: Sequence[str] | None = None) -> SynthClip:
    """Draw and build one clip (1-3 actions, 64-296 frames at 30 fps) from ``rng``.

    Args:
        rng: the clip's random generator (all randomness comes from it).
        families: force these 1-3 family names in this order (parameters are still drawn); default: random.
    """
    body = _sample_body(rng)
    overlap = 6  # frames two consecutive actions blend over
    for _ in range(100):
        actions = _sample_actions(rng, families)
        segments = [FAMILIES[a["family"]].build(a, body) for a in actions]
        lead = int(rng.integers(0, 8))
        length = lead + sum(s.n for s in segments) - overlap * (len(segments) - 1)
        if length <= MAX_FRAMES:
            break
    else:  # pragma: no cover - every single family fits
        raise AssertionError(f"could not fit {families} into {MAX_FRAMES} frames")
    num_frames = max(MIN_FRAMES, -(-length // 4) * 4)

    offsets = np.zeros((num_frames, NUM_JOINTS, 3))
    yaw_rate = np.zeros(num_frames)
    contact = np.ones((num_frames, 2))
    air = np.zeros(num_frames)
    air_velocity = np.zeros((num_frames, 2))
    start = lead
    for action, seg in zip(actions, segments):
        window = slice(start, start + seg.n)
        offsets[window] += seg.pose
        yaw_rate[window] += seg.yaw_rate
        contact[window] *= seg.contact
        air[window] += seg.air
        air_velocity[window] += seg.air_velocity
        action["start"], action["end"] = start, start + seg.n
        start += seg.n - overlap

    idle_pose, idle_heading = _idle(rng, num_frames)
    pose = body.neutral + offsets + idle_pose
    # feet stay level with the floor unless an action moves the ankle: undo the sagittal tilt of the leg chain
    pose[:, L_ANKLE, X] -= pose[:, PELVIS, X] + pose[:, L_HIP, X] + pose[:, L_KNEE, X]
    pose[:, R_ANKLE, X] -= pose[:, PELVIS, X] + pose[:, R_HIP, X] + pose[:, R_KNEE, X]
    heading = np.cumsum(yaw_rate) + idle_heading
    local_rot = _euler_to_matrix(pose)  # (T, 22, 3, 3)
    local_rot[:, PELVIS] = _yaw(heading) @ local_rot[:, PELVIS]

    rot_t = torch.from_numpy(local_rot)
    rel, _ = forward_kinematics(rot_t, torch.zeros(num_frames, 3, dtype=torch.float64), body.offsets)
    rel_np = rel.numpy()  # (T, 22, 3) joints relative to the pelvis, world orientation
    root = _root_trajectory(rel_np, heading, contact, air, air_velocity)
    joints = rel_np + root[:, None, :]
    features = features_from_motion(torch.from_numpy(joints), rot_t).numpy().astype(np.float32)
    captions = make_captions(actions, rng)
    return SynthClip(features=features, joints=joints, local_rot=local_rot, captions=captions, actions=actions)


def _root_trajectory(rel: np.ndarray, heading: np.ndarray, contact: np.ndarray, air: np.ndarray,
                     air_velocity: np.ndarray) -> np.ndarray:
    """Pelvis positions (T, 3) that keep planted feet fixed and the lowest foot on the floor (or ``air`` above)."""
    feet = rel[:, list(FEET), :]  # (T, 2, 3)
    moved = feet[1:] - feet[:-1]  # (T-1, 2, 3) foot displacement relative to the pelvis
    planted = contact[1:] * contact[:-1]  # (T-1, 2) planted in both frames
    weight = planted.sum(axis=1)
    pinned = -(moved * planted[:, :, None]).sum(axis=1) / np.maximum(weight, 1.0)[:, None]  # (T-1, 3)
    c, s = np.cos(heading[1:]), np.sin(heading[1:])
    flying = np.stack((c * air_velocity[1:, 0] + s * air_velocity[1:, 1], np.zeros_like(c),
                       -s * air_velocity[1:, 0] + c * air_velocity[1:, 1]), axis=-1)  # body frame -> world
    step = np.where((weight > 0)[:, None], pinned, flying)
    root = np.zeros((len(rel), 3))
    root[1:, [0, 2]] = np.cumsum(step[:, [0, 2]], axis=0)
    root[:, 1] = air - feet[:, :, 1].min(axis=1)
    return root


# ----------------------------------------------------------------------------------------------------------------
# the corpus on disk


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    out_dir: Path
    clips: int
    frames: int
    splits: dict[str, int]
    families: dict[str, int]
    seconds: float
    """wall-clock time of the run."""

    @property
    def hours(self) -> float:
        """Motion duration of the corpus in hours."""
        return self.frames / FPS / 3600.0


#: the sub-folders synthesize writes (and removes with overwrite=True)
OUTPUT_PARTS = ("motion_data", "texts", "split", "mean_std", "synth_meta.json")


def _split_ids(num_clips: int, seed: int) -> dict[str, list[str]]:
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_clips)
    n_val = max(1, int(round(SPLIT_FRACTIONS[1] * num_clips)))
    n_test = max(1, int(round(SPLIT_FRACTIONS[2] * num_clips)))
    cut = num_clips - n_val - n_test
    parts = {"train": order[:cut], "val": order[cut : cut + n_val], "test": order[cut + n_val :]}
    return {name: [f"{i:06d}" for i in sorted(idx.tolist())] for name, idx in parts.items()}


def synthesize(out_dir: str | Path, clips: int, seed: int, progress: bool = True,
               overwrite: bool = False) -> SynthSummary:
    """Write ``clips`` procedural clips in the HumanML3D-272 layout under ``out_dir`` (deterministic per seed).

    Writes ``motion_data/vector_272/<id>.npy`` (float32 (T, 272), un-normalised), ``texts/<id>.txt`` (3
    ``caption#tokens#0.0#0.0`` lines), ``split/{train,val,test}.txt`` (80/10/10), ``mean_std/{Mean,Std}.npy``
    (from the train split, group-averaged std) and ``synth_meta.json`` (seed and action families per clip).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if clips < 3:
        raise ValueError(f"--clips must be >= 3 so that train, val and test are non-empty, got {clips}")
    existing = [p for p in OUTPUT_PARTS if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them "
                              "or choose another --out")
    for part in existing:
        target = out / part
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    motion_dir, text_dir, split_dir = out / "motion_data" / "vector_272", out / "texts", out / "split"
    for d in (motion_dir, text_dir, split_dir):
        d.mkdir(parents=True, exist_ok=True)

    splits = _split_ids(clips, seed)
    frames = 0
    family_counts: Counter[str] = Counter()
    meta: dict[str, list[str]] = {}
    for index in tqdm(range(clips), desc="synthesizing clips", disable=not progress, unit="clip"):
        clip_id = f"{index:06d}"
        clip = generate_clip(np.random.default_rng([seed, index]))
        np.save(motion_dir / f"{clip_id}.npy", clip.features)
        (text_dir / f"{clip_id}.txt").write_text("\n".join(caption_line(c) for c in clip.captions) + "\n")
        frames += clip.features.shape[0]
        names = [a["family"] for a in clip.actions]
        family_counts.update(names)
        meta[clip_id] = names
    for name, ids in splits.items():
        (split_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    # statistics of exactly the float32 files a reader will load
    mean, std = compute_mean_std(np.load(motion_dir / f"{i}.npy") for i in splits["train"])
    Normalizer(mean, std).save(out / "mean_std")
    (out / "synth_meta.json").write_text(json.dumps({"seed": seed, "clips": clips, "fps": FPS, "actions": meta},
                                                    indent=0, sort_keys=True))
    return SynthSummary(out_dir=out, clips=clips, frames=frames, splits={k: len(v) for k, v in splits.items()},
                        families=dict(sorted(family_counts.items())), seconds=time.perf_counter() - started)
