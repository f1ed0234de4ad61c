"""Text-to-motion metrics (metrics/generation.py) against references computed differently in the test."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metrics.generation as generation
from metrics.command import call_command
from metrics.commands import t2m
from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator
from metrics.generation import (
    FID,
    Diversity,
    MMDist,
    MultiModality,
    RPrecision,
    diversity,
    feature_sums,
    fid,
    fid_from_sums,
    mm_dist,
    multimodality,
    r_precision,
    repeat_protocol,
    retrieval_hits,
    t2m_metrics,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- references


def _reference_fid(real: np.ndarray, gen: np.ndarray) -> float:
    """The textbook formula with np.cov and scipy.linalg.sqrtm (as in the T2M evaluation code)."""
    mu1, mu2 = real.mean(axis=0), gen.mean(axis=0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(gen, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _reference_r_precision(text: np.ndarray, motion: np.ndarray, group: int, top_k: int) -> np.ndarray:
    """Consecutive groups, argsort of every row of an explicit double loop distance matrix."""
    hits = np.zeros(top_k)
    groups = len(text) // group
    for g in range(groups):
        t, m = text[g * group : (g + 1) * group], motion[g * group : (g + 1) * group]
        d = np.array([[math.sqrt(((a - b) ** 2).sum()) for b in m] for a in t])
        for i in range(group):
            position = int(np.where(np.argsort(d[i], kind="stable") == i)[0][0])
            for k in range(top_k):
                hits[k] += position <= k
    return hits / (groups * group)


# ------------------------------------------------------------------------------------------------------ FID


def test_fid_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16))
    real = rng.normal(size=(600, 16)) @ mix
    gen = 0.7 * rng.normal(size=(500, 16)) @ (mix + 0.3 * rng.normal(size=(16, 16))) + 0.5
    expected = _reference_fid(real, gen)
    assert expected > 1.0
    assert abs(fid(real, gen) - expected) / expected < 1e-6
    assert abs(fid_from_sums(*feature_sums(real), *feature_sums(gen)) - expected) / expected < 1e-6
    assert fid(real, real) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_fid_metric_batches_equal_function() -> None:
    rng = np.random.default_rng(1)
    real, gen = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) * 1.5 + 0.2
    metric = FID(num_features=8)
    for chunk in np.array_split(real, 4):
        metric.update(torch.from_numpy(chunk).float(), real=True)
    for chunk in np.array_split(gen, 3):
        metric.update(torch.from_numpy(chunk).float(), real=False)
    expected = _reference_fid(real.astype(np.float32).astype(np.float64), gen.astype(np.float32).astype(np.float64))
    first = float(metric.compute())
    assert first == pytest.approx(expected, rel=1e-6)
    # compute never resets: a second call gives the same value and updates keep accumulating
    assert float(metric.compute()) == first
    metric.update(torch.from_numpy(gen[:50]).float(), real=True)
    assert float(metric.compute()) != first
    metric.reset()
    with pytest.raises(ValueError, match="at least 2 real samples"):
        metric.compute()


# ----------------------------------------------------------------------------------------------- R-precision


def test_retrieval_hits_hand_built_matrices() -> None:
    # row 0: match nearest (rank 0); row 1: one closer motion (rank 1); row 2: two closer (rank 2)
    d = torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.0, 3.0], [1.0, 2.0, 3.0]])
    assert retrieval_hits(d, top_k=3).tolist() == [1, 2, 3]
    # ties count against the match: a collapsed evaluator (all distances equal) never hits
    assert retrieval_hits(torch.ones(4, 4), top_k=3).tolist() == [0, 0, 0]
    # row 0 ties with another motion (rank 1), row 1 has one nearer motion (rank 1), row 2 is nearest (rank 0)
    tied = torch.tensor([[1.0, 1.0, 5.0], [0.0, 1.0, 2.0], [9.0, 9.0, 0.0]])
    assert retrieval_hits(tied, top_k=2).tolist() == [1, 3]
    # several groups at once: identity-like groups are perfect, reversed-order groups all miss R@1
    perfect = torch.full((4, 4), 5.0).fill_diagonal_(0.0)
    worst = torch.zeros(4, 4).fill_diagonal_(5.0)
    assert retrieval_hits(torch.stack([perfect, worst]), top_k=3).tolist() == [4, 4, 4]


def test_r_precision_matches_reference_and_known_values() -> None:
    rng = np.random.default_rng(2)
    text = rng.normal(size=(100, 6))
    motion = text + rng.normal(scale=1.2, size=(100, 6))
    got = r_precision(text, motion, group_size=32, top_k=3, shuffle=False).numpy()
    np.testing.assert_allclose(got, _reference_r_precision(text, motion, 32, 3), atol=1e-12)
    assert got[0] < got[1] < got[2] < 1.0

    # 1-D points 0..31 (text = motion): rank of every match is 0
    points = torch.arange(64.0).unsqueeze(1)
    assert r_precision(points, points, generator=_gen(0)).tolist() == [1.0, 1.0, 1.0]
    # motion i placed at text i + 0.6: for texts 1..31 motion i-1 (distance 0.4) is nearer -> R@1 = 1/32
    shifted = points[:32] + 0.6
    r = r_precision(points[:32], shifted, shuffle=False)
    assert r.tolist() == [1 / 32, 1.0, 1.0]
    # shuffling uses the generator: same seed, same value
    noisy = motion.copy()
    a = r_precision(text, noisy, generator=_gen(5))
    b = r_precision(text, noisy, generator=_gen(5))
    assert torch.equal(a, b)


def test_r_precision_metric_equals_function_and_pools_leftovers() -> None:
    rng = np.random.default_rng(3)
    text = torch.from_numpy(rng.normal(size=(70, 5)))
    motion = text + torch.from_numpy(rng.normal(scale=1.0, size=(70, 5)))
    metric = RPrecision(seed=7)
    metric.update(text, motion)
    # one update of all pairs = the pure function with the same seed (same permutation, 2 groups, 6 dropped)
    assert torch.equal(metric.compute(), r_precision(text, motion, generator=_gen(7)))
    assert float(metric.num_pairs) == 64

    streamed = RPrecision(seed=0)
    for chunk_t, chunk_m in zip(text.split(20), motion.split(20)):
        streamed.update(chunk_t, chunk_m)
    value = streamed.compute()
    assert float(streamed.num_pairs) == 64 and value.shape == (3,)
    assert torch.equal(streamed.compute(), value)  # compute never resets

    few = RPrecision(group_size=32)
    few.update(text[:20], motion[:20])
    with pytest.raises(ValueError, match="at least group_size=32 pairs, got 20"):
        few.compute()
    few.update(text[20:40], motion[20:40])  # 40 pending -> one group scored inside update
    assert float(few.num_pairs) == 32


# -------------------------------------------------------------------------------- MM-Dist, Diversity, MultiModality


def test_mm_dist_known_value_and_metric() -> None:
    text = torch.zeros(3, 2)
    motion = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    assert mm_dist(text, motion) == pytest.approx(16 / 3)
    metric = MMDist()
    metric.update(text[:2], motion[:2])
    metric.update(text[2:], motion[2:])
    assert float(metric.compute()) == pytest.approx(16 / 3)


def test_diversity_known_points() -> None:
    # 300 points, every two distinct ones exactly 2 apart: each random pair of distinct items measures 2
    simplex = math.sqrt(2.0) * torch.eye(300, dtype=torch.float64)
    assert diversity(simplex, 300, _gen(0)) == pytest.approx(2.0, abs=1e-12)
    # two far clusters of coincident points (a: 0, b: 10): distance is 10 across clusters, 0 inside
    clusters = torch.cat([torch.zeros(200, 3), torch.full((200, 3), 10.0 / math.sqrt(3))])
    value = diversity(clusters, 300, _gen(1))
    assert 0.0 < value < 10.0
    # the estimate is the fraction of cross pairs x 10; over many seeds it is close to 10 * 200/399
    mean = np.mean([diversity(clusters, 300, _gen(s)) for s in range(50)])
    assert mean == pytest.approx(10 * 200 / 399, rel=0.02)
    metric = Diversity(num_pairs=300, seed=4)
    metric.update(simplex[:150])
    metric.update(simplex[150:])
    assert float(metric.compute()) == pytest.approx(2.0, abs=1e-12)
    assert float(Diversity(num_pairs=50, seed=3).forward(clusters)) == pytest.approx(diversity(clusters, 50, _gen(3)))


def test_multimodality_known_value_and_metric() -> None:
    # text k: 6 generations on a scaled simplex, all pairs (k+1)*sqrt(2) apart -> mean over texts 2*sqrt(2)
    gens = torch.stack([(k + 1) * torch.eye(6, dtype=torch.float64) for k in range(3)])  # (3, 6, 6)
    assert multimodality(gens, num_pairs=4, generator=_gen(0)) == pytest.approx(2 * math.sqrt(2), abs=1e-12)
    # two generations per text: the only pair
    pair = torch.tensor([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 2.0]]])
    assert multimodality(pair, num_pairs=1) == pytest.approx(3.0)
    metric = MultiModality(num_pairs=4)
    metric.update(gens[:1])
    metric.update(gens[1:])
    assert float(metric.compute()) == pytest.approx(2 * math.sqrt(2), abs=1e-12)


# ---------------------------------------------------------------------------------------------- protocol runner


def test_repeat_protocol_mean_and_interval() -> None:
    values = [0.1, 0.4, 0.3, 0.9, 0.2]
    out = repeat_protocol(lambda g: {"a": values[int(g.initial_seed()) - 10], "b": 1.0}, repeats=5, seed=10)
    arr = np.array(values)
    assert out["a"].mean == pytest.approx(arr.mean())
    assert out["a"].ci95 == pytest.approx(1.96 * arr.std() / math.sqrt(5))
    assert out["a"].values == tuple(values)
    assert out["b"].ci95 == 0.0
    with pytest.raises(ValueError, match="repetition 1 returned metrics"):
        repeat_protocol(lambda g: {"a": 1.0} if g.initial_seed() == 0 else {"b": 1.0}, repeats=2)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        repeat_protocol(lambda g: {"a": 1.0}, repeats=0)


def test_t2m_metrics_keys_and_values() -> None:
    g = _gen(0)
    text = torch.randn(96, 8, generator=g)
    real = text + 0.1 * torch.randn(96, 8, generator=g)
    gen = torch.randn(96, 8, generator=g)
    mm = torch.randn(5, 4, 8, generator=g)
    out = t2m_metrics(text, real, gen, _gen(1), mm, diversity_pairs=50, mm_pairs=3)
    assert set(out) == {
        "gen/FID",
        "gen/R@1",
        "gen/R@2",
        "gen/R@3",
        "gen/MM-Dist",
        "gen/Diversity",
        "gen/MultiModality",
        "real/R@1",
        "real/R@2",
        "real/R@3",
        "real/MM-Dist",
        "real/Diversity",
    }
    assert out["real/R@1"] > 0.9 > out["gen/R@3"]
    assert out["gen/FID"] == pytest.approx(fid(real, gen))
    assert out == t2m_metrics(text, real, gen, _gen(1), mm, diversity_pairs=50, mm_pairs=3)
    # generated == real: every generated column equals the real one (same groups, same pairs)
    same = t2m_metrics(text, real, real.clone(), _gen(2), diversity_pairs=50)
    assert same["gen/FID"] == pytest.approx(0.0, abs=1e-9)
    for name in ("R@1", "R@2", "R@3", "MM-Dist", "Diversity"):
        assert same[f"gen/{name}"] == same[f"real/{name}"], name


# -------------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_error() -> None:
    good = torch.randn(40, 4)
    with pytest.raises(ValueError, match="NaN/Inf in 1 of 40 rows"):
        fid(good, torch.where(torch.arange(40).unsqueeze(1) == 3, float("nan"), good))
    with pytest.raises(ValueError, match=r"shape \(N, E\), got \(40,\)"):
        mm_dist(good[:, 0], good[:, 0])
    with pytest.raises(ValueError, match=r"same shape, got text \(40, 4\) vs motion \(39, 4\)"):
        r_precision(good, good[:39])
    with pytest.raises(ValueError, match="differ in width: 4 vs 3"):
        fid(good, good[:, :3])
    with pytest.raises(ValueError, match="at least group_size=32 pairs, got 20"):
        r_precision(good[:20], good[:20])
    with pytest.raises(ValueError, match="needs at least that many embeddings, got 40"):
        diversity(good, 300)
    with pytest.raises(ValueError, match="at least max\\(2, num_pairs\\) generations per text, got 3"):
        multimodality(torch.randn(2, 3, 4), num_pairs=10)
    with pytest.raises(ValueError, match="width 3, this FID was built with 4"):
        FID(num_features=4).update(good[:, :3], real=True)
    with pytest.raises(ValueError, match="is empty"):
        MMDist().update(good[:0], good[:0])


def test_docstring_examples_run() -> None:
    result = doctest.testmod(generation, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


# ------------------------------------------------------------------------------------------------ 2-process DDP


def _feed(metrics: dict[str, torch.nn.Module], chunk: dict[str, torch.Tensor]) -> None:
    for start in range(0, chunk["text"].shape[0], 17):
        sl = slice(start, start + 17)
        metrics["fid"].update(chunk["real"][sl], real=True)
        metrics["fid"].update(chunk["gen"][sl], real=False)
        metrics["r"].update(chunk["text"][sl], chunk["gen"][sl])
        metrics["mm_dist"].update(chunk["text"][sl], chunk["gen"][sl])
        metrics["div"].update(chunk["gen"][sl])
    metrics["mm"].update(chunk["mm"])


def _metric_set() -> dict[str, torch.nn.Module]:
    return {
        "fid": FID(num_features=6),
        "r": RPrecision(seed=3),
        "mm_dist": MMDist(),
        "div": Diversity(num_pairs=40, seed=5),
        "mm": MultiModality(num_pairs=3, seed=2),
    }


def _ddp_worker(rank: int, world: int, init_file: str, chunks: list[dict[str, torch.Tensor]], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metrics = _metric_set()
        _feed(metrics, chunks[rank])
        results = {name: m.compute() for name, m in metrics.items()}
        # compute() syncs for the value only: the local states are restored afterwards
        results["local_pairs"] = metrics["r"].num_pairs.clone()
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_metrics_reduce_across_two_gloo_processes(tmp_path: Path) -> None:
    g = _gen(11)
    chunks = []
    for n, k in ((45, 3), (51, 4)):  # 45 = 32 + 13 and 51 = 32 + 19 pending pairs -> one pooled group of 32
        text = torch.randn(n, 6, generator=g, dtype=torch.float64)
        chunks.append(
            {
                "text": text,
                "gen": text + torch.randn(n, 6, generator=g, dtype=torch.float64),
                "real": torch.randn(n, 6, generator=g, dtype=torch.float64) * 2,
                "mm": torch.randn(k, 5, 6, generator=g, dtype=torch.float64),
            }
        )
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), chunks, str(tmp_path / "res")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"res.{r}") for r in range(2)]

    both = {key: torch.cat([c[key] for c in chunks]) for key in ("text", "gen", "real")}
    # every process computes the same global value
    for key in ("fid", "r", "mm_dist", "div", "mm"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    res = ranks[0]
    assert float(res["fid"]) == pytest.approx(_reference_fid(both["real"].numpy(), both["gen"].numpy()), rel=1e-6)
    assert float(res["mm_dist"]) == pytest.approx(mm_dist(both["text"], both["gen"]), rel=1e-12)
    assert float(res["div"]) == pytest.approx(diversity(both["gen"], 40, _gen(5)), rel=1e-12)
    per_rank = [multimodality(c["mm"], 3, _gen(2)) * c["mm"].shape[0] for c in chunks]
    assert float(res["mm"]) == pytest.approx(sum(per_rank) / 7, rel=1e-12)
    # R-precision: 64 pairs scored inside the updates + 32 pooled left-overs at compute
    assert float(ranks[0]["local_pairs"]) == 32 and float(ranks[1]["local_pairs"]) == 32
    local = [_metric_set(), _metric_set()]
    for metrics, chunk in zip(local, chunks):
        _feed(metrics, chunk)
    local[1]["r"].merge_state(local[0]["r"])  # incoming first: rank 0's left-overs precede rank 1's
    assert torch.equal(res["r"], local[1]["r"].compute())
    assert res["r"].shape == (3,)


# ------------------------------------------------------------------------------------------------------- CLI


def _write_clips(folder: Path, clips: dict[str, np.ndarray], texts: dict[str, str] | None = None) -> None:
    folder.mkdir(parents=True)
    for name, clip in clips.items():
        np.save(folder / f"{name}.npy", clip)
    if texts is not None:
        (folder / "texts").mkdir()
        for name, text in texts.items():
            (folder / "texts" / f"{name}.txt").write_text(f"{text}#tok/OTHER#0.0#0.0\nanother caption\n")


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t2m_cli")
    rng = np.random.default_rng(0)
    cfg = EvaluatorConfig(
        latent_dim=16, ff_size=32, num_layers=1, num_heads=2, text_encoder="scratch", text_num_layers=1, vocab_size=64
    )
    TextMotionEvaluator(cfg).save(root / "evaluator")
    np.save(root / "evaluator" / "Mean.npy", np.zeros(272, np.float32))
    np.save(root / "evaluator" / "Std.npy", np.ones(272, np.float32))
    ids = [f"{i:04d}" for i in range(40)]
    real = {i: rng.normal(size=(int(rng.integers(20, 60)), 272)).astype(np.float32) for i in ids}
    gen = {i: rng.normal(size=(int(rng.integers(20, 60)), 272)).astype(np.float32) for i in ids}
    _write_clips(root / "real", real)
    _write_clips(root / "gen", gen, {i: f"caption number {i}" for i in ids})
    for i in ids[:3]:
        (root / "gen" / "multimodality" / i).mkdir(parents=True)
        for k in range(3):
            np.save(root / "gen" / "multimodality" / i / f"{k}.npy", rng.normal(size=(30, 272)).astype(np.float32))
    return {"root": root, "evaluator": root / "evaluator", "real": root / "real", "gen": root / "gen"}


def _run_cli(argv: list[str]) -> int:
    return call_command(t2m, argv)


def test_cli_t2m_writes_table_and_json(cli_setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = cli_setup["root"] / "result.json"
    argv = [
        "--real",
        str(cli_setup["real"]),
        "--gen",
        str(cli_setup["gen"]),
        "--evaluator",
        str(cli_setup["evaluator"]),
    ]
    assert _run_cli([*argv, "--repeats", "3", "--diversity-pairs", "20", "--mm-pairs", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "R@3" in table and "MultiModality" in table and "N=3 repetitions" in table
    report = json.loads(out.read_text())
    assert report["num_pairs"] == 40 and report["num_multimodality_texts"] == 3 and report["repeats"] == 3
    metrics = report["metrics"]
    assert len(metrics["gen/R@1"]["values"]) == 3
    assert 0.0 <= metrics["gen/R@1"]["mean"] <= metrics["gen/R@3"]["mean"] <= 1.0
    assert metrics["gen/FID"]["ci95"] == 0.0  # FID has no random part once embeddings are fixed
    assert metrics["gen/MultiModality"]["mean"] > 0


def test_cli_t2m_bad_folders(cli_setup: dict[str, Path], tmp_path: Path) -> None:
    base = ["--evaluator", str(cli_setup["evaluator"]), "--repeats", "1", "--diversity-pairs", "10"]
    short_real = tmp_path / "short_real"
    _write_clips(short_real, {f"{i:04d}": np.zeros((30, 272), np.float32) for i in range(39)})
    with pytest.raises(ValueError, match=r"same ids; only in --gen: \['0039'\]"):
        _run_cli([*base, "--real", str(short_real), "--gen", str(cli_setup["gen"])])
    wrong_dim = tmp_path / "wrong_dim"
    _write_clips(wrong_dim, {"0000": np.zeros((30, 263), np.float32)}, {"0000": "walk"})
    with pytest.raises(ValueError, match=r"0000.npy: expected .*\(T, 272\), got \(30, 263\)"):
        _run_cli([*base, "--real", str(short_real), "--gen", str(wrong_dim)])
    nan_clip = np.zeros((30, 272), np.float32)
    nan_clip[3, 5] = np.nan
    nan_dir = tmp_path / "nan"
    _write_clips(nan_dir, {"0000": nan_clip}, {"0000": "walk"})
    with pytest.raises(ValueError, match="NaN/Inf"):
        _run_cli([*base, "--real", str(short_real), "--gen", str(nan_dir)])
    no_text = tmp_path / "no_text"
    _write_clips(no_text, {"0000": np.zeros((30, 272), np.float32)})
    with pytest.raises(FileNotFoundError, match=r"texts/0000.txt is missing"):
        _run_cli([*base, "--real", str(short_real), "--gen", str(no_text)])
    argv = [
        "--real",
        str(cli_setup["real"]),
        "--gen",
        str(cli_setup["gen"]),
        "--evaluator",
        str(cli_setup["evaluator"]),
    ]
    with pytest.raises(ValueError, match="40 clips are fewer than --diversity_pairs 300"):
        _run_cli(argv)
    with pytest.raises(ValueError, match="40 clips are fewer than --group_size 64"):
        _run_cli([*argv, "--group-size", "64"])
    with pytest.raises(FileNotFoundError, match="holds no Mean.npy/Std.npy"):
        _run_cli([*base, "--real", str(cli_setup["real"]), "--gen", str(cli_setup["gen"]), "--mean-std", str(tmp_path)])
