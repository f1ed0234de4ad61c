"""The embedded procedural corpus: kinematics, feet, expressiveness, caption/motion agreement, determinism, CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llamo.cli import main
from llamo.data.check import check_dataset
from llamo.data.humanml272 import MotionCorpus
from llamo.motion.filters import check_expressive
from llamo.motion.normalization import compute_mean_std
from llamo.motion.representation import FEATURE_DIM, recover_joints, recover_rotations
from llamo.motion.skeleton import bone_lengths
from llamo.motion.synthetic import (
    FAMILIES,
    MAX_FRAMES,
    MIN_FRAMES,
    SynthClip,
    caption_line,
    generate_clip,
    synthesize,
)

SEEDS_PER_FAMILY = 3
# written here, independently of the generator's own tables
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
           10: "ten", 11: "eleven", 12: "twelve"}
PACE = {"slow": ("slowly", "slow pace", "leisurely"), "fast": ("quickly", "briskly", "fast pace"),
        "normal": ("normal pace", "steady pace", "even pace")}
AIRBORNE = {"jump", "jog", "run"}


def times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{NUMBERS[n]} times")


@pytest.fixture(scope="module")
def family_clips() -> dict[str, list[SynthClip]]:
    """SEEDS_PER_FAMILY single-action clips of every family."""
    return {name: [generate_clip(np.random.default_rng([11, s]), [name]) for s in range(SEEDS_PER_FAMILY)]
            for name in FAMILIES}


@pytest.fixture(scope="module")
def random_clips() -> list[SynthClip]:
    """Clips as `llamo data synth` draws them (mostly compositions of 2-3 actions)."""
    return [generate_clip(np.random.default_rng([12, s])) for s in range(24)]


def all_clips(family_clips: dict[str, list[SynthClip]], random_clips: list[SynthClip]) -> list[SynthClip]:
    return [c for clips in family_clips.values() for c in clips] + random_clips


def recovered(clip: SynthClip) -> np.ndarray:
    return recover_joints(torch.from_numpy(clip.features).double()).numpy()


def test_at_least_twelve_families_and_compositions(random_clips: list[SynthClip]) -> None:
    assert len(FAMILIES) >= 12
    assert {"walk", "jog", "run", "turn", "jump", "squat", "wave", "raise_arms", "kick", "punch", "sidestep", "spin",
            "bow", "stand_still"} <= set(FAMILIES)
    sizes = {len(c.actions) for c in random_clips}
    assert sizes == {1, 2, 3}
    for clip in random_clips:
        names = [a["family"] for a in clip.actions]
        assert all(a != b for a, b in zip(names, names[1:])), names
        if len(names) > 1:
            assert "stand_still" not in names
        starts = [a["start"] for a in clip.actions]
        assert starts == sorted(starts) and clip.actions[-1]["end"] <= len(clip.features)


def test_shapes_lengths_and_dtype(family_clips: dict[str, list[SynthClip]], random_clips: list[SynthClip]) -> None:
    for clip in all_clips(family_clips, random_clips):
        t = len(clip.features)
        assert clip.features.shape == (t, FEATURE_DIM) and clip.features.dtype == np.float32
        assert MIN_FRAMES <= t <= MAX_FRAMES and t % 4 == 0
        assert np.isfinite(clip.features).all()
        assert clip.joints.shape == (t, 22, 3) and clip.local_rot.shape == (t, 22, 3, 3)
        assert len(clip.captions) == 3 and len(set(clip.captions)) == 3


def test_recovery_has_constant_bone_lengths_and_matches_generator(
    family_clips: dict[str, list[SynthClip]], random_clips: list[SynthClip]
) -> None:
    for clip in all_clips(family_clips, random_clips):
        joints = recovered(clip)
        lengths = bone_lengths(joints)  # (T, 21)
        drift = lengths.max(axis=0) - lengths.min(axis=0)
        assert drift.max() < 1e-3, (clip.actions, drift.max())
        # the 272-dim features are the generator's motion: recovery = its joints in the floor / origin frame
        origin = np.array([clip.joints[0, 0, 0], clip.joints[..., 1].min(), clip.joints[0, 0, 2]])
        np.testing.assert_allclose(joints, clip.joints - origin, atol=1e-4)
        # rotations too: the 6D block holds the generator's local rotations (root = global orientation)
        rot = recover_rotations(torch.from_numpy(clip.features).double()).numpy()
        np.testing.assert_allclose(rot, clip.local_rot, atol=1e-4)


def test_feet_on_the_floor(family_clips: dict[str, list[SynthClip]], random_clips: list[SynthClip]) -> None:
    for clip in all_clips(family_clips, random_clips):
        joints = recovered(clip)
        assert joints[..., 1].min() > -1e-5  # nothing under the floor
        lowest_foot = joints[:, [10, 11], 1].min(axis=1)  # (T,)
        names = {a["family"] for a in clip.actions}
        if names & AIRBORNE:
            # off the floor only while airborne, and never the whole clip
            assert (lowest_foot < 0.005).mean() > 0.6, clip.actions
        else:
            assert lowest_foot.max() < 0.005, (clip.actions, lowest_foot.max())


def test_planted_feet_do_not_slide(family_clips: dict[str, list[SynthClip]]) -> None:
    for name, clips in family_clips.items():
        for clip in clips:
            feet = recovered(clip)[:, [10, 11]]  # (T, 2, 3)
            on_floor = (feet[1:, :, 1] < 1e-3) & (feet[:-1, :, 1] < 1e-3)
            speed = np.linalg.norm(np.diff(feet[..., [0, 2]], axis=0), axis=-1) * 30  # m/s
            assert np.percentile(speed[on_floor], 95) < 0.08, (name, clip.actions)


def test_expressiveness_filter_flags_only_stand_still(family_clips: dict[str, list[SynthClip]]) -> None:
    for name, clips in family_clips.items():
        for clip in clips:
            result = check_expressive(clip.features)
            assert result.expressive == (name != "stand_still"), (name, result.speeds)


def side_words(text: str) -> list[str]:
    return re.findall(r"\b(left|right)\b", text.lower())


def expected_sides(action: dict) -> list[str]:
    name = action["family"]
    if name in ("sidestep", "turn", "spin", "wave", "kick", "balance"):
        return [action["side"]]
    if name in ("raise_arms", "punch"):
        return [] if action["side"] in ("both", "alternating") else [action["side"]]
    if name == "walk" and action["curve"] != "none":
        return [action["curve"]]
    return []


def test_captions_name_sides_in_order(family_clips: dict[str, list[SynthClip]], random_clips: list[SynthClip]) -> None:
    for clip in all_clips(family_clips, random_clips):
        want = [s for a in clip.actions for s in expected_sides(a)]
        for caption in clip.captions:
            assert side_words(caption) == want, (caption, clip.actions)
        for action in clip.actions:
            if action["family"] == "raise_arms" and action["side"] == "both":
                assert all("both arms" in c for c in clip.captions)
            if action["family"] == "punch" and action["side"] == "alternating":
                assert all("alternating" in c for c in clip.captions)


def count_words(action: dict) -> tuple[str, ...]:
    name = action["family"]
    if name in ("walk", "jog", "run"):
        return (f"{NUMBERS[action['steps']]} steps",)
    if name == "sidestep":
        return (f"{NUMBERS[action['steps']]} steps", times(action["steps"]))
    if name == "spin":
        return ("once", "a full") if action["turns"] == 1 else ("twice", "two full")
    if name == "turn":
        return {45: ("45 degrees", "eighth"), 90: ("90 degrees", "quarter"), 135: ("135 degrees", "three eighths"),
                180: ("180 degrees", "half turn", "around")}[action["angle"]]
    if name in ("jump", "wave", "kick", "clap"):
        return (times(action["count"]),)
    if name in ("squat", "punch"):
        return (times(action["count"]), f"{NUMBERS[action['count']]} ")
    return ()


def test_detailed_caption_names_counts_directions_and_speed(family_clips: dict[str, list[SynthClip]]) -> None:
    for name, clips in family_clips.items():
        for clip in clips:
            action = clip.actions[0]
            detailed = clip.captions[0].lower()
            words = count_words(action)
            if words:
                assert any(w in detailed for w in words), (detailed, action)
            if name in ("walk", "jog"):
                assert any(w in detailed for w in PACE[action["pace"]]), (detailed, action)
                others = [w for pace, ws in PACE.items() if pace != action["pace"] for w in ws]
                assert not any(w in c.lower() for c in clip.captions for w in others), (clip.captions, action)
            for caption in (c.lower() for c in clip.captions):
                if name in ("walk", "jog", "run"):
                    if action["direction"] == "backward":
                        assert "backward" in caption
                    else:
                        assert ("forward" in caption or "ahead" in caption) and "backward" not in caption
                if name == "jump":
                    assert ("in place" in caption) == (action["mode"] == "in_place"), caption
                    assert ("forward" in caption) == (action["mode"] == "forward"), caption


def yaw_of_facing(clip: SynthClip) -> np.ndarray:
    """Unwrapped yaw (rad) of the pelvis facing direction; + = towards +x = the body's left at frame 0."""
    root = recover_rotations(torch.from_numpy(clip.features).double()).numpy()[:, 0]
    facing = root[:, :, 2]  # R @ z
    return np.unwrap(np.arctan2(facing[:, 0], facing[:, 2]))


def test_motion_matches_parameters(family_clips: dict[str, list[SynthClip]]) -> None:
    for clip in family_clips["walk"]:
        joints = recovered(clip)
        assert joints[0, 1, 0] > joints[0, 2, 0]  # +x is the body's left (left hip at larger x) at frame 0
    for name in ("walk", "jog", "run"):
        for clip in family_clips[name]:
            a = clip.actions[0]
            pelvis = recovered(clip)[:, 0]
            if a.get("curve", "none") == "none":
                forward = pelvis[-1, 2] - pelvis[0, 2]
                assert np.sign(forward) == (1 if a["direction"] == "forward" else -1), a
                assert abs(pelvis[-1, 0] - pelvis[0, 0]) < 0.1 * abs(forward)
            speed = cruising_speed(clip, a)
            assert abs(speed - a["speed"]) < 0.25 * a["speed"], (a, speed)
    for clip in family_clips["sidestep"]:
        a = clip.actions[0]
        pelvis = recovered(clip)[:, 0]
        assert np.sign(pelvis[-1, 0] - pelvis[0, 0]) == (1 if a["side"] == "left" else -1), a
    for name in ("turn", "spin"):
        for clip in family_clips[name]:
            a = clip.actions[0]
            angle = a["angle_deg"] if name == "turn" else 360.0 * a["turns"]
            sign = 1 if a["side"] == "left" else -1
            turned = np.degrees(yaw_of_facing(clip)[-1] - yaw_of_facing(clip)[0])
            assert abs(turned - sign * angle) < 3.0, (a, turned)
    for name, joint in (("wave", (20, 21)), ("kick", (10, 11)), ("balance", (10, 11))):
        for clip in family_clips[name]:
            a = clip.actions[0]
            joints = recovered(clip)
            path = np.linalg.norm(np.diff(joints[:, list(joint)], axis=0), axis=-1).sum(axis=0)  # (2,) left, right
            moving = 0 if a["side"] == "left" else 1
            assert path[moving] > 3 * path[1 - moving], (name, a, path)
    for clip in family_clips["jump"]:
        a = clip.actions[0]
        feet_height = recovered(clip)[:, [10, 11], 1].min(axis=1)
        assert abs(feet_height.max() - a["height"]) < 0.02, (a, feet_height.max())
        airborne = feet_height > 0.02
        takeoffs = int((airborne[1:] & ~airborne[:-1]).sum())
        assert takeoffs == a["count"], (a, takeoffs)
    for clip in family_clips["squat"]:
        a = clip.actions[0]
        pelvis_height = recovered(clip)[:, 0, 1]
        assert pelvis_height.max() - pelvis_height.min() > 0.3 * a["depth"], a
    for clip in family_clips["clap"]:
        a = clip.actions[0]
        joints = recovered(clip)
        gap = np.linalg.norm(joints[:, 20] - joints[:, 21], axis=-1)
        close = gap < 0.2
        assert int((close[1:] & ~close[:-1]).sum()) == a["count"], (a, gap.min())


def cruising_speed(clip: SynthClip, action: dict) -> float:
    """Mean pelvis ground speed (m/s) over the middle third of an action."""
    pelvis = recovered(clip)[:, 0]
    third = (action["end"] - action["start"]) // 3
    mid = pelvis[action["start"] + third : action["end"] - third][:, [0, 2]]
    return float(np.linalg.norm(np.diff(mid, axis=0), axis=-1).mean() * 30)


def test_pace_words_order_the_measured_speeds() -> None:
    speeds: dict[str, list[float]] = {"slow": [], "normal": [], "fast": []}
    for s in range(40):
        clip = generate_clip(np.random.default_rng([13, s]), ["walk"])
        action = clip.actions[0]
        if action["direction"] == "forward":
            speeds[action["pace"]].append(cruising_speed(clip, action))
    assert all(len(v) >= 3 for v in speeds.values()), speeds
    # "slowly" is a slow human walk, "quickly" a fast one, and the three bands do not overlap
    assert max(speeds["slow"]) < 1.0 < 1.15 < min(speeds["fast"])
    assert max(speeds["slow"]) < min(speeds["normal"]) and max(speeds["normal"]) < min(speeds["fast"])


def test_caption_line_format(random_clips: list[SynthClip]) -> None:
    for clip in random_clips:
        for caption in clip.captions:
            fields = caption_line(caption).split("#")
            assert fields[0] == caption and fields[2:] == ["0.0", "0.0"]
            tokens = fields[1].split()
            assert len(tokens) == len(re.findall(r"[\w']+", caption))
            assert all(re.fullmatch(r"[a-z0-9]+/[A-Z]+", t) for t in tokens), fields[1]


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthesize_is_deterministic_and_readable(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", clips=12, seed=3, progress=False)
    synthesize(tmp_path / "b", clips=12, seed=3, progress=False)
    synthesize(tmp_path / "c", clips=12, seed=4, progress=False)
    tree_a, tree_b, tree_c = (read_tree(tmp_path / n) for n in "abc")
    assert tree_a == tree_b
    assert tree_a.keys() == tree_c.keys()
    assert all(tree_a[k] != tree_c[k] for k in tree_a if k.startswith("motion_data/"))
    assert sum(k.startswith("motion_data/vector_272/") for k in tree_a) == 12
    assert a.clips == 12 and a.splits == {"train": 10, "val": 1, "test": 1} and sum(a.families.values()) >= 12

    assert check_dataset(tmp_path / "a") == []
    items = 0
    for split in ("train", "val", "test"):
        corpus = MotionCorpus(tmp_path / "a", split=split)
        items += len(corpus)
        for record in corpus:
            assert record.features.dtype == np.float32 and len(record.captions) == 3
    assert items == 12
    train = MotionCorpus(tmp_path / "a", split="train")
    mean, std = compute_mean_std(r.features for r in train)
    np.testing.assert_allclose(train.normalizer.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(train.normalizer.std, std, rtol=1e-12, atol=1e-12)


def test_synthesize_bad_arguments(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", clips=3, seed=0, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthesize(tmp_path / "a", clips=3, seed=0, progress=False)
    synthesize(tmp_path / "a", clips=4, seed=1, progress=False, overwrite=True)
    assert len(list((tmp_path / "a" / "motion_data" / "vector_272").glob("*.npy"))) == 4
    with pytest.raises(ValueError, match="--clips"):
        synthesize(tmp_path / "b", clips=2, seed=0, progress=False)
    with pytest.raises(ValueError, match="--seed"):
        synthesize(tmp_path / "b", clips=5, seed=-1, progress=False)
    with pytest.raises(ValueError, match="families"):
        generate_clip(np.random.default_rng(0), ["moonwalk"])


def test_cli_synth_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--out", str(out), "--clips", "5", "--seed", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 clips" in printed and "train 3" in printed
    assert main(["data", "check", str(out), "--no-progress"]) == 0
    assert "no problems found" in capsys.readouterr().out
