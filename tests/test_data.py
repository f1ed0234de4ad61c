"""The HumanML3D-272 / MotionMillion folder reader, its errors, `check_dataset` and MotionStreamer cropping."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from llamo.cli import main
from llamo.data.check import check_dataset, scan_dataset
from llamo.data.humanml272 import MotionCorpus, MotionRecord, crop_to_multiple
from llamo.motion.synthetic import synthesize

CLIPS = 10


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize(root, clips=CLIPS, seed=5, progress=False)
    return root


@pytest.fixture
def corpus(corpus_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the small corpus, free to break."""
    return Path(shutil.copytree(corpus_dir, tmp_path / "corpus"))


def split_ids(root: Path, split: str) -> list[str]:
    return (root / "split" / f"{split}.txt").read_text().split()


def motion(root: Path, clip_id: str) -> Path:
    return root / "motion_data" / "vector_272" / f"{clip_id}.npy"


def text(root: Path, clip_id: str) -> Path:
    return root / "texts" / f"{clip_id}.txt"


def test_reads_every_split(corpus_dir: Path) -> None:
    seen = []
    for split in ("train", "val", "test"):
        corpus = MotionCorpus(corpus_dir, split=split)
        assert corpus.ids == split_ids(corpus_dir, split) and corpus.skipped == 0
        for record in corpus:
            assert isinstance(record, MotionRecord)
            assert record.features.dtype == np.float32 and record.features.shape[1] == 272
            np.testing.assert_array_equal(record.features, np.load(motion(corpus_dir, record.id)))
            assert len(record.captions) == 3 and all(c.endswith(".") and "#" not in c for c in record.captions)
        assert corpus.lengths.tolist() == [len(r.features) for r in corpus]
        seen += corpus.ids
    assert sorted(seen) == [f"{i:06d}" for i in range(CLIPS)]
    corpus = MotionCorpus(corpus_dir, split="train")
    np.testing.assert_array_equal(corpus.normalizer.mean, np.load(corpus_dir / "mean_std" / "Mean.npy"))
    lazy = MotionCorpus(corpus_dir, split="train", preload=False)
    assert lazy.ids == corpus.ids
    for a, b in zip(lazy, corpus):
        np.testing.assert_array_equal(a.features, b.features)
        assert a.captions == b.captions


def test_length_filter(corpus_dir: Path) -> None:
    lengths = MotionCorpus(corpus_dir, split="train").lengths
    cut = int(np.median(lengths))
    corpus = MotionCorpus(corpus_dir, split="train", max_length=cut)
    assert len(corpus) == int((lengths <= cut).sum()) and corpus.too_long == int((lengths > cut).sum()) > 0
    assert corpus.skipped == 0 and all(len(r.features) <= cut for r in corpus)
    with pytest.raises(ValueError, match="max_length=10 is below min_length=40"):
        MotionCorpus(corpus_dir, split="train", max_length=10)
    with pytest.raises(FileNotFoundError, match=r"split/nope\.txt.*found: test\.txt, train\.txt, val\.txt"):
        MotionCorpus(corpus_dir, split="nope")
    with pytest.raises(FileNotFoundError, match="llamo data synth"):
        MotionCorpus(corpus_dir / "missing")


def save_like(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    np.save(path, change(np.load(path)))


def set_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[5, 10] = value
        return x

    return change


# name -> (corrupt(root, clip_id), exception, message pattern (the clip id / file is checked separately), kind)
BAD_INPUTS: dict[str, tuple[Callable[[Path, str], None], type[Exception], str, str]] = {
    "wrong_dim": (lambda r, i: np.save(motion(r, i), np.zeros((80, 263), np.float32)), ValueError,
                  r"shape \(80, 263\), expected \(T, 272\)", "wrong_shape"),
    "one_dim": (lambda r, i: np.save(motion(r, i), np.zeros(272, np.float32)), ValueError,
                r"shape \(272,\), expected \(T, 272\)", "wrong_shape"),
    "nan": (lambda r, i: save_like(motion(r, i), set_value(np.nan)), ValueError, r"1 NaN/Inf values \(first at frame "
            r"5, dim 10\)", "non_finite"),
    "inf": (lambda r, i: save_like(motion(r, i), set_value(np.inf)), ValueError, "NaN/Inf", "non_finite"),
    "too_short": (lambda r, i: save_like(motion(r, i), lambda x: x[:20]), ValueError,
                  "has 20 frames, fewer than min_length=40", "too_short"),
    "not_npy": (lambda r, i: motion(r, i).write_bytes(b"not a numpy file"), ValueError, "cannot load", "unreadable"),
    "missing_caption_file": (lambda r, i: text(r, i).unlink(), FileNotFoundError, "caption file not found",
                             "missing_text"),
    "empty_caption_file": (lambda r, i: text(r, i).write_text(""), ValueError, "holds no caption", "empty_text"),
    "blank_caption_file": (lambda r, i: text(r, i).write_text("\n  \n"), ValueError, "holds no caption",
                           "empty_text"),
    "empty_caption_line": (lambda r, i: text(r, i).write_text("#a/DET#0.0#0.0\n"), ValueError, "empty caption",
                           "bad_text"),
    "bad_time_tags": (lambda r, i: text(r, i).write_text("a man walks.#a/DET#one#two\n"), ValueError,
                      "are not numbers", "bad_text"),
    "missing_motion_file": (lambda r, i: motion(r, i).unlink(), FileNotFoundError, "motion file not found",
                            "missing_motion"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_clip_raises_one_clear_error_or_is_skipped(corpus: Path, name: str) -> None:
    corrupt, exc_type, pattern, kind = BAD_INPUTS[name]
    ids = split_ids(corpus, "train")
    clip_id = ids[3]
    corrupt(corpus, clip_id)
    with pytest.raises(exc_type, match=pattern) as info:
        MotionCorpus(corpus, split="train")
    assert type(info.value) is exc_type
    # the message names the file
    assert re.search(rf"{clip_id}\.(npy|txt)", str(info.value)), str(info.value)

    skipping = MotionCorpus(corpus, split="train", skip_invalid=True)
    assert skipping.skipped == 1 and len(skipping) == len(ids) - 1 and clip_id not in skipping.ids
    assert skipping.problems[0].kind == kind

    problems = check_dataset(corpus)
    assert [p.kind for p in problems] == [kind] and clip_id in str(problems[0].path)


def test_split_entry_without_files(corpus: Path) -> None:
    with (corpus / "split" / "train.txt").open("a") as f:
        f.write("999999\n")
    with pytest.raises(FileNotFoundError, match=r"999999\.npy: motion file not found"):
        MotionCorpus(corpus, split="train")
    skipping = MotionCorpus(corpus, split="train", skip_invalid=True)
    assert skipping.skipped == 1 and len(skipping) == len(split_ids(corpus, "train")) - 1
    problems = check_dataset(corpus)
    # both files are missing: check reports both at once
    assert sorted(p.kind for p in problems) == ["missing_motion", "missing_text"]


@pytest.mark.parametrize("missing", ["Mean.npy", "Std.npy"])
def test_missing_mean_std(corpus: Path, corpus_dir: Path, missing: str) -> None:
    (corpus / "mean_std" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"mean_std/{missing}"):
        MotionCorpus(corpus, split="train", skip_invalid=True)  # not a per-clip problem: never skipped
    assert [p.kind for p in check_dataset(corpus)] == ["missing_mean_std"]
    (corpus / "mean_std" / ("Std.npy" if missing == "Mean.npy" else "Mean.npy")).unlink()
    with pytest.raises(FileNotFoundError, match=r"Mean/Std not found.*mean_std=DIR"):
        MotionCorpus(corpus, split="train")
    # another folder's Mean/Std can stand in (e.g. HumanML3D-272's, which its evaluator expects)
    corpus_with_other = MotionCorpus(corpus, split="train", mean_std=corpus_dir / "mean_std")
    np.testing.assert_array_equal(corpus_with_other.normalizer.std, np.load(corpus_dir / "mean_std" / "Std.npy"))


def test_bad_mean_std_values(corpus: Path) -> None:
    np.save(corpus / "mean_std" / "Std.npy", np.zeros(272))
    with pytest.raises(ValueError, match="std must be > 0"):
        MotionCorpus(corpus, split="train")
    np.save(corpus / "mean_std" / "Std.npy", np.ones(263))
    with pytest.raises(ValueError, match=r"Std\.npy has shape \(263,\)"):
        MotionCorpus(corpus, split="train")
    assert [p.kind for p in check_dataset(corpus)] == ["bad_mean_std"]


def test_check_reports_every_problem_at_once(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, val, test = (split_ids(corpus, s) for s in ("train", "val", "test"))
    np.save(motion(corpus, train[0]), np.zeros((80, 263), np.float32))
    save_like(motion(corpus, train[1]), set_value(np.nan))
    save_like(motion(corpus, train[2]), lambda x: x[:20])
    text(corpus, train[3]).unlink()
    text(corpus, train[4]).write_text("")
    (corpus / "split" / "train.txt").write_text("\n".join([*train, "424242", train[5], val[0]]) + "\n")
    (corpus / "mean_std" / "Mean.npy").unlink()
    problems = check_dataset(corpus)
    found = sorted((p.kind, p.path.name) for p in problems)
    assert found == sorted([
        ("wrong_shape", f"{train[0]}.npy"), ("non_finite", f"{train[1]}.npy"), ("too_short", f"{train[2]}.npy"),
        ("missing_text", f"{train[3]}.txt"), ("empty_text", f"{train[4]}.txt"), ("missing_motion", "424242.npy"),
        ("missing_text", "424242.txt"), ("duplicate_id", "train.txt"), ("split_overlap", "val.txt"),
        ("missing_mean_std", "mean_std"),
    ])
    report = scan_dataset(corpus)
    assert report.splits["test"].problems == 0 and report.splits["test"].valid == len(test)
    assert report.splits["train"].entries == len(train) + 3 and report.splits["train"].valid == len(train) - 4

    assert main(["data", "check", str(corpus), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{len(problems)} problem(s)" in out
    for problem in problems:
        assert str(problem.path) in out
    assert check_dataset(corpus / "nowhere")[0].kind == "missing_folder"


def test_other_layouts_read_the_same_clips(corpus_dir: Path, tmp_path: Path) -> None:
    reference = {r.id: r for r in MotionCorpus(corpus_dir, split="test")}
    # HumanML3D-272: motion_data/<id>.npy, Mean.npy/Std.npy, caption#tokens#from#to
    h3d = Path(shutil.copytree(corpus_dir, tmp_path / "h3d"))
    for f in (h3d / "motion_data" / "vector_272").glob("*.npy"):
        f.rename(h3d / "motion_data" / f.name)
    (h3d / "motion_data" / "vector_272").rmdir()
    # MotionMillion: motion_data/vector_272/, bare caption lines, mean_std/vector_272/mean.npy, nested splits
    mm = Path(shutil.copytree(corpus_dir, tmp_path / "mm"))
    for f in (mm / "texts").glob("*.txt"):
        f.write_text("\n".join(line.split("#")[0] for line in f.read_text().splitlines()) + "\n")
    (mm / "mean_std" / "vector_272").mkdir()
    for name in ("Mean", "Std"):
        (mm / "mean_std" / f"{name}.npy").rename(mm / "mean_std" / "vector_272" / f"{name.lower()}.npy")
    (mm / "split" / "version1" / "t2m_60_300").mkdir(parents=True)
    (mm / "split" / "test.txt").rename(mm / "split" / "version1" / "t2m_60_300" / "test.txt")
    for root, split in ((h3d, "test"), (mm, "version1/t2m_60_300/test")):
        records = {r.id: r for r in MotionCorpus(root, split=split)}
        assert records.keys() == reference.keys()
        for clip_id, record in records.items():
            np.testing.assert_array_equal(record.features, reference[clip_id].features)
            assert record.captions == reference[clip_id].captions
        assert check_dataset(root) == []


def test_time_tagged_captions_become_sub_clips(corpus: Path) -> None:
    clip_id = split_ids(corpus, "train")[0]
    features = np.load(motion(corpus, clip_id))
    text(corpus, clip_id).write_text("a person waves.#a/DET#0.0#0.0\nthe person turns.#the/DET#0.5#1.9\n"
                                     "someone turns.#x/X#0.5#1.9\nnan tags mean whole.#x/X#nan#nan\n")
    records = {r.id: r for r in MotionCorpus(corpus, split="train")}
    assert records[clip_id].captions == ["a person waves.", "nan tags mean whole."]
    sub = records[f"{clip_id}@15-57"]
    assert sub.captions == ["the person turns.", "someone turns."]
    np.testing.assert_array_equal(sub.features, features[15:57])
    # a sub-clip shorter than the minimum is an error like a short clip
    text(corpus, clip_id).write_text("a person waves.#a/DET#0.0#0.0\nshort.#x/X#0.5#1.0\n")
    with pytest.raises(ValueError, match=rf"{clip_id}@15-30 has 15 frames"):
        MotionCorpus(corpus, split="train")


def test_real_humanml3d_272_clip(real272_dir: Path, tmp_path: Path) -> None:
    """The reader on the real AMASS clip laid out as HumanML3D-272 (files linked, not copied)."""
    root = tmp_path / "real"
    for sub in ("motion_data", "texts", "split", "mean_std"):
        (root / sub).mkdir(parents=True)
    (root / "motion_data" / "000000.npy").symlink_to(real272_dir / "clip_000000_272.npy")
    for name in ("Mean.npy", "Std.npy"):
        (root / "mean_std" / name).symlink_to(real272_dir / name)
    (root / "texts" / "000000.txt").write_text("a person moves around.#a/DET person/NOUN#0.0#0.0\n")
    (root / "split" / "test.txt").write_text("000000\n")
    corpus = MotionCorpus(root, split="test")
    record = corpus[0]
    np.testing.assert_array_equal(record.features, np.load(real272_dir / "clip_000000_272.npy"))
    np.testing.assert_array_equal(corpus.normalizer.std, np.load(real272_dir / "Std.npy"))
    assert check_dataset(root) == []
    # MotionStreamer's evaluation filter (60 <= T < 300) leaves this 1287-frame clip out, and says so
    filtered = MotionCorpus(root, split="test", min_length=60, max_length=299)
    assert len(filtered) == 0 and filtered.too_long == 1


def test_crop_to_multiple() -> None:
    x = np.arange(103 * 2).reshape(103, 2)
    np.testing.assert_array_equal(crop_to_multiple(x), x[:100])
    assert crop_to_multiple(torch.arange(10), multiple=4).tolist() == list(range(8))
    rng = np.random.default_rng(0)
    lengths, starts = [], []
    for _ in range(3000):
        y = crop_to_multiple(x, 4, rng)
        lengths.append(len(y))
        starts.append(int(y[0, 0]) // 2)
        np.testing.assert_array_equal(y, x[starts[-1] : starts[-1] + len(y)])
    assert set(lengths) == {96, 100}
    assert abs(lengths.count(96) / 3000 - 1 / 3) < 0.03  # one unit shorter with probability 1/3
    assert set(starts) == set(range(0, 8))  # offsets 0..3 (length 100) and 0..7 (length 96)
    assert len(crop_to_multiple(np.zeros((5, 2)), 4, rng)) == 4  # one unit only: never shortened
    with pytest.raises(ValueError, match="shorter than one unit"):
        crop_to_multiple(np.zeros((3, 2)))
