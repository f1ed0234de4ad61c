"""Motion-to-text metrics (metrics/captioning.py) against pycocoevalcap and bert-score called directly.

The PTB tokenizer launches Java and BERTScore loads a model, so the expensive results are computed once per module.
"""

from __future__ import annotations

import json
import re
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from metrics import generation
from metrics.__main__ import main as metrics_main
from metrics.captioning import (
    BERTScoreConfig,
    CaptionMetrics,
    align_by_id,
    build_bert_scorer,
    caption_metrics,
    caption_retrieval,
    load_caption_files,
    normalize_references,
    packaged_bertscore_model,
    ptb_tokenize,
)
from metrics.command import call_command
from metrics.commands import captions

# (id, prediction, references): 1, 2, 3 and 5 references; punctuation and capitals on both sides
ITEMS = [
    ("m0", "A person walks forward, then turns left.", ["a person walks forward and turns left"]),
    ("m1", "someone jumps up twice", ["A man jumps twice.", "a person jumps up and down two times"]),
    (
        "m2",
        "a person waves with the right hand",
        ["the person waves the left hand", "a man is waving", "someone waves hello with the right hand"],
    ),
    (
        "m3",
        "the man runs in a circle",
        ["a person jogs in a circle", "a man runs around", "someone runs in a circle.", "extra ref 4", "extra ref 5"],
    ),
    ("m4", "a person kicks with the left leg", ["a person kicks with the left leg", "someone kicks"]),
    ("m5", "a person sits down slowly", ["a man sits down", "a person slowly sits on a chair", "someone takes a seat"]),
]
IDS = [i for i, _, _ in ITEMS]
PREDS = [p for _, p, _ in ITEMS]
REFS = [r for _, _, r in ITEMS]


def tm2t_refs(refs: list[str]) -> list[str]:
    """TM2T's Motion2TextEvalDataset rule, written out case by case (the library cycles an index)."""
    if len(refs) > 3:
        return refs[:3]
    if len(refs) == 2:
        return refs + refs[:1]
    if len(refs) == 1:
        return refs * 3
    return list(refs)


def coco_reference(preds: list[str], refs: list[list[str]]) -> dict[str, object]:
    """COCOEvalCap's own recipe: PTB-tokenise references and predictions (separately), then the four scorers."""
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = {i: [""] for i, p in enumerate(preds) if not p.strip()}
    res.update(tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds) if p.strip()}))
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    cider, cider_items = Cider().compute_score(gts, res)
    return {
        "bleu_1": bleu[0],
        "bleu_4": bleu[3],
        "rouge_l": rouge,
        "cider": cider,
        "items": {"bleu_1": bleu_items[0], "bleu_4": bleu_items[3], "rouge_l": rouge_items, "cider": cider_items},
    }


@pytest.fixture(scope="module")
def report():
    """Default protocol (packaged MiniLM BERTScore) on ITEMS, computed once."""
    return caption_metrics(PREDS, REFS, IDS)


@pytest.fixture(scope="module")
def minilm() -> str:
    return packaged_bertscore_model()


@pytest.fixture(scope="module")
def bert_score():
    """bert-score, imported here so that the DDP worker processes (which import this file) skip transformers."""
    import bert_score

    return bert_score


# ------------------------------------------------------------------------------------------------ n-gram metrics


def test_ngram_metrics_equal_pycocoevalcap(report) -> None:
    expected = coco_reference(PREDS, [tm2t_refs(r) for r in REFS])
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert report.scores[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
        np.testing.assert_allclose(report.per_item[key], expected["items"][key], rtol=1e-12, atol=1e-12)
    assert 0.3 < report.scores["bleu_1"] < 1.0 and report.scores["cider"] > 0
    assert report.num_captions == len(ITEMS) and report.num_empty == 0
    assert report.settings["references_per_motion"] == 3


def test_ptb_tokenize_keeps_lines_aligned() -> None:
    # \u2028 and \r are line breaks for the Java lexer: unhandled, "b" would land in the next caption
    assert ptb_tokenize(["A\u2028boy.", "C,\rd!", "", "e"]) == ["a boy", "c d", "", "e"]
    assert ptb_tokenize(["", "  "]) == ["", ""]


# ----------------------------------------------------------------------------------------------------- BERTScore


def test_bertscore_equals_bert_score(report, minilm: str, bert_score) -> None:
    p, r, f = bert_score.score(PREDS, [tm2t_refs(x) for x in REFS], model_type=minilm, num_layers=6)
    for key, ref in (("bertscore_precision", p), ("bertscore_recall", r), ("bertscore_f1", f)):
        np.testing.assert_allclose(report.per_item[key], ref.numpy(), rtol=0, atol=1e-6)
        assert report.scores[key] == pytest.approx(float(ref.double().mean()), abs=1e-6)
    assert report.settings["bertscore"]["model"] == minilm and report.settings["bertscore"]["num_layers"] == 6


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_bertscore_idf_and_baseline_equal_bert_score(tmp_path: Path, minilm: str, bert_score) -> None:
    """The TM2T options (IDF over references, baseline rescale), on MiniLM with a hand-written baseline."""
    rows = ["LAYER,P,R,F"] + [f"{layer},0.{30 + layer},0.{40 + layer},0.{50 + layer}" for layer in range(7)]
    tsv = tmp_path / "baseline.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    refs3 = [tm2t_refs(r) for r in REFS]
    cfg = BERTScoreConfig(num_layers=6, idf=True, baseline_path=str(tsv))
    preds = PREDS[:-1] + [""]
    out = caption_metrics(preds, REFS, IDS, bertscore_config=cfg)
    p, r, f = bert_score.score(
        preds[:-1], refs3[:-1], model_type=minilm, num_layers=6, lang="en", rescale_with_baseline=True,
        baseline_path=str(tsv), idf=bert_score.utils.get_idf_dict(
            [x for group in refs3 for x in group], bert_score.utils.get_tokenizer(minilm, False)
        ),
    )  # fmt: skip
    np.testing.assert_allclose(out.per_item["bertscore_f1"][:-1], f.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.per_item["bertscore_precision"][:-1], p.numpy(), rtol=0, atol=1e-6)
    # the empty prediction: raw 0 rescaled with layer 6's baseline
    assert out.per_item["bertscore_precision"][-1] == pytest.approx((0 - 0.36) / (1 - 0.36), abs=1e-6)
    assert out.per_item["bertscore_f1"][-1] == pytest.approx((0 - 0.56) / (1 - 0.56), abs=1e-6)
    # idf actually changes the scores (so the comparison above is not vacuous)
    plain = bert_score.score(preds[:-1], refs3[:-1], model_type=minilm, num_layers=6, lang="en",
                             rescale_with_baseline=True, baseline_path=str(tsv))[2]  # fmt: skip
    assert not torch.allclose(plain, f, atol=1e-4)


def test_bertscore_config_tm2t_and_bad_settings(tmp_path: Path, minilm: str) -> None:
    cfg = BERTScoreConfig.tm2t("/models/roberta-large")
    assert (cfg.num_layers, cfg.idf) == (17, True)
    assert Path(cfg.baseline_path).is_file() and cfg.baseline_path.endswith("en/roberta-large.tsv")
    with pytest.raises(ValueError, match="num_layers=17 but .* has 6 layers"):
        build_bert_scorer(BERTScoreConfig(model=minilm, num_layers=17))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_bert_scorer(BERTScoreConfig(model=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="baseline .* does not exist"):
        build_bert_scorer(BERTScoreConfig(baseline_path=str(tmp_path / "missing.tsv")))


# ------------------------------------------------------------------------------------ references, empty predictions


def test_reference_rule() -> None:
    assert normalize_references(["a"]) == ["a", "a", "a"]
    assert normalize_references(["a", "b"]) == ["a", "b", "a"]
    assert normalize_references(["a", "b", "c"]) == ["a", "b", "c"]
    assert normalize_references(["a", "b", "c", "d", "e"]) == ["a", "b", "c"]
    for refs in REFS:
        assert normalize_references(refs) == tm2t_refs(refs)


def test_multi_reference_scoring() -> None:
    pred = ["a man walks in a circle", "someone jumps"]
    one_ref = caption_metrics(pred, [["a man walks in a circle"], ["a person jumps"]], bertscore_config=None)
    repeated = caption_metrics(pred, [["a man walks in a circle"] * 3, ["a person jumps"] * 3], bertscore_config=None)
    assert one_ref.scores == repeated.scores
    # a 4th reference is dropped: adding an exact match there changes nothing, adding it 3rd does
    base = [["a person strolls", "someone moves", "a human goes"], ["a person jumps"]]
    fourth = caption_metrics(pred, [base[0] + ["a man walks in a circle"], base[1]], bertscore_config=None)
    third = caption_metrics(pred, [base[0][:2] + ["a man walks in a circle"], base[1]], bertscore_config=None)
    assert fourth.per_item["rouge_l"][0] < 0.5
    assert third.per_item["rouge_l"][0] == pytest.approx(1.0)
    # ROUGE-L takes the best reference per item
    assert one_ref.per_item["rouge_l"][0] == pytest.approx(1.0)


def test_empty_prediction_scored_as_wrong_not_dropped(report, minilm: str, bert_score) -> None:
    preds = list(PREDS)
    preds[1], preds[4] = "", "   "
    out = caption_metrics(preds, REFS, IDS)
    assert out.num_captions == len(ITEMS) and out.num_empty == 2 and out.empty_ids == ["m1", "m4"]
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider", "bertscore_f1", "bertscore_precision"):
        assert out.per_item[key][1] == 0.0 and out.per_item[key][4] == 0.0, key
    refs3 = [tm2t_refs(r) for r in REFS]
    expected = coco_reference(preds, refs3)
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert out.scores[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
        assert out.scores[key] < report.scores[key]
    # BERTScore: the mean runs over all items, the empty ones contributing 0
    kept = [0, 2, 3, 5]
    f = bert_score.score([preds[i] for i in kept], [refs3[i] for i in kept], model_type=minilm, num_layers=6)[2]
    assert out.scores["bertscore_f1"] == pytest.approx(float(f.double().sum()) / len(ITEMS), abs=1e-6)
    d = out.to_dict()
    assert d["num_empty_predictions"] == 2 and d["empty_prediction_ids"] == ["m1", "m4"]


# ------------------------------------------------------------------------------------------------------ bad input


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="got 2 predictions but 3 reference lists"):
        caption_metrics(["a", "b"], [["a"], ["b"], ["c"]], bertscore_config=None)
    with pytest.raises(ValueError, match=r"duplicate caption ids: 'x'"):
        caption_metrics(["a", "b"], [["a"], ["b"]], ["x", "x"], bertscore_config=None)
    with pytest.raises(ValueError, match=r"at least one non-blank caption; bad for ids 'b'"):
        caption_metrics(["a", "b"], [["a"], []], ["a", "b"], bertscore_config=None)
    with pytest.raises(ValueError, match=r"bad for ids '1'"):
        caption_metrics(["a", "b"], [["a"], "a plain string"], bertscore_config=None)
    with pytest.raises(ValueError, match=r"blank reference captions for ids '0'"):
        caption_metrics(["a"], [["a", " "]], bertscore_config=None)
    with pytest.raises(ValueError, match=r"not a string for ids '1'"):
        caption_metrics(["a", None], [["a"], ["b"]], bertscore_config=None)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no captions to score"):
        caption_metrics([], [], bertscore_config=None)
    with pytest.raises(ValueError, match="num_refs .* must be >= 1, got 0"):
        caption_metrics(["a"], [["a"]], bertscore_config=None, num_refs=0)
    with pytest.raises(ValueError, match="both encode_text and motion_embeddings"):
        caption_metrics(["a"], [["a"]], bertscore_config=None, motion_embeddings=torch.zeros(1, 4))


def test_missing_ids_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"3 predictions vs 3 references; ids without a prediction .*'c'.*"
                       r"ids without references in references: 'z'"):  # fmt: skip
        align_by_id({"a": "x", "b": "y", "z": "w"}, {"a": ["r"], "b": ["r"], "c": ["r"]})
    pred, refs = tmp_path / "pred.json", tmp_path / "refs.json"
    pred.write_text(json.dumps({"a": "x"}))
    refs.write_text(json.dumps({"a": ["r"], "b": ["r"]}))
    with pytest.raises(ValueError, match=rf"1 {pred} vs 2 {refs}; ids without a prediction in {pred}: 'b'"):
        load_caption_files(pred, refs)
    refs.write_text(json.dumps({"a": "just a string"}))
    with pytest.raises(ValueError, match="references must be lists of strings; not for ids 'a'"):
        load_caption_files(pred, refs)
    refs.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list; expected an object"):
        load_caption_files(pred, refs)
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_caption_files(tmp_path / "nope.json", refs)


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_json(tmp_path: Path, report, capsys: pytest.CaptureFixture[str]) -> None:
    pred, refs, out = tmp_path / "pred.json", tmp_path / "refs.json", tmp_path / "res" / "metrics.json"
    pred.write_text(json.dumps(dict(zip(IDS, PREDS))))
    refs.write_text(json.dumps(dict(zip(IDS, REFS))))
    rc = metrics_main(["captions", "--pred", str(pred), "--refs", str(refs), "--out", str(out), "--per-item"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result) == {"metrics", "num_captions", "num_empty_predictions", "empty_prediction_ids", "settings",
                           "inputs", "per_item"}  # fmt: skip
    assert set(result["metrics"]) == {"bleu_1", "bleu_4", "rouge_l", "cider", "bertscore_precision",
                                      "bertscore_recall", "bertscore_f1"}  # fmt: skip
    for key, value in report.scores.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-9), key
    assert result["num_captions"] == 6 and result["num_empty_predictions"] == 0
    assert result["per_item"]["m4"]["rouge_l"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "bleu_4" in printed and "empty predictions: 0" in printed and str(out) in printed


def test_cli_flags_and_dispatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, refs = tmp_path / "pred.json", tmp_path / "refs.json"
    pred.write_text(json.dumps({"a": "a man walks", "b": ""}))
    refs.write_text(json.dumps({"a": ["a man walks"], "b": ["a man runs"]}))
    assert metrics_main(["captions", "--pred", str(pred), "--refs", str(refs), "--no-bertscore"]) == 0
    result = json.loads((tmp_path / "pred.metrics.json").read_text())  # default --out beside --pred
    assert "bertscore_f1" not in result["metrics"] and result["empty_prediction_ids"] == ["b"]
    assert result["metrics"]["rouge_l"] == pytest.approx(0.5)
    # a user error is printed as one line and exits 2
    capsys.readouterr()
    assert metrics_main(["captions", "--pred", str(pred), "--refs", str(refs), "--bertscore-layer", "17"]) == 2
    assert re.search("error: BERTScore num_layers=17 but .* has 6 layers", capsys.readouterr().err)
    # --bertscore-model selects the TM2T protocol; a folder without a model is named in the error
    assert metrics_main(["captions", "--pred", str(pred), "--refs", str(refs), "--bertscore-model", str(tmp_path)]) == 2
    assert re.search(f"{tmp_path}.* has no config.json", capsys.readouterr().err)
    # t2m is dispatched lazily to metrics.generation
    with pytest.raises(SystemExit) as exc:
        metrics_main(["t2m", "--help"])
    assert exc.value.code == 0 and "python -m metrics t2m" in capsys.readouterr().out
    assert metrics_main(["nope"]) == 2


# ------------------------------------------------------------------------------------------------------ retrieval


def _toy_encoder(dim: int = 16):
    """Deterministic bag-of-words text encoder: sum of fixed random word vectors."""
    table: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(1)

    def encode(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            vec = torch.zeros(dim)
            for w in t.lower().split():
                if w not in table:
                    table[w] = torch.randn(dim, generator=g)
                vec += table[w]
            rows.append(vec)
        return torch.stack(rows)

    return encode


def test_caption_retrieval_uses_generation_metrics() -> None:
    encode = _toy_encoder()
    n = 40
    refs = [[f"motion number {i} goes {'left' if i % 2 else 'right'}"] for i in range(n)]
    preds = [r[0] if i % 4 else "" for i, r in enumerate(refs)]
    motion = encode([r[0] for r in refs]) + 0.1 * torch.randn(n, 16, generator=torch.Generator().manual_seed(2))
    out = caption_retrieval(preds, motion, encode, seed=3)
    text = encode(preds).double()
    r = generation.r_precision(text, motion.double(), 32, generator=torch.Generator().manual_seed(3))
    assert [out["R@1"], out["R@2"], out["R@3"]] == pytest.approx(r.tolist())
    assert out["MM-Dist"] == pytest.approx(generation.mm_dist(text, motion))
    assert 0.5 < out["R@3"] < 1.0  # the empty quarter cannot be retrieved
    full = caption_metrics(preds, refs, bertscore_config=None, encode_text=encode, motion_embeddings=motion, seed=3)
    assert {k: full.scores[k] for k in out} == pytest.approx(out)
    with pytest.raises(ValueError, match=r"motion_embeddings must be \(N, E\) with N = 40"):
        caption_retrieval(preds, motion[:-1], encode)


def test_cli_caption_retrieval_with_evaluator(tmp_path: Path) -> None:
    from metrics.evaluator import EvaluatorConfig, TextMotionEvaluator

    tiny = {"latent_dim": 16, "ff_size": 32, "num_layers": 1, "num_heads": 2, "text_num_layers": 1}
    folder = TextMotionEvaluator(EvaluatorConfig(**tiny, text_encoder="scratch", vocab_size=64)).save(tmp_path / "ev")
    rng = np.random.default_rng(0)
    np.save(folder / "Mean.npy", rng.normal(size=272).astype(np.float32))
    np.save(folder / "Std.npy", rng.uniform(0.5, 2.0, size=272).astype(np.float32))
    motions = tmp_path / "motions"
    motions.mkdir()
    ids = [f"c{i:02d}" for i in range(34)]
    for i in ids + ["not_captioned"]:
        np.save(motions / f"{i}.npy", rng.normal(size=(int(rng.integers(8, 20)), 272)).astype(np.float32))
    preds = {i: f"a person {['walks', 'jumps', 'waves'][k % 3]} {k}" for k, i in enumerate(ids)}
    refs = {i: [f"someone {['walks', 'jumps', 'waves'][k % 3]}"] for k, i in enumerate(ids)}
    pred, ref, out = tmp_path / "pred.json", tmp_path / "refs.json", tmp_path / "m.json"
    pred.write_text(json.dumps(preds))
    ref.write_text(json.dumps(refs))
    argv = ["captions", "--pred", str(pred), "--refs", str(ref), "--out", str(out), "--no-bertscore"]
    assert metrics_main([*argv, "--evaluator", str(folder), "--motions", str(motions), "--seed", "5"]) == 0
    result = json.loads(out.read_text())["metrics"]
    # reference: the same evaluator loaded by hand, embeddings via metrics.generation, the pure function
    evaluator = TextMotionEvaluator.load(folder).eval()
    mean, std = np.load(folder / "Mean.npy"), np.load(folder / "Std.npy")
    clips = [np.load(motions / f"{i}.npy") for i in ids]
    motion = generation.embed_clips(evaluator, clips, mean, std)
    expected = caption_retrieval([preds[i] for i in ids], motion, evaluator.encode_text, seed=5)
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert set(expected) == {"R@1", "R@2", "R@3", "MM-Dist"} and 0.0 <= expected["R@3"] <= 1.0
    (motions / "c07.npy").unlink()
    with pytest.raises(ValueError, match=r"has no <id>.npy clip for caption ids 'c07'"):
        call_command(captions, [*argv[1:], "--evaluator", str(folder), "--motions", str(motions)])
    with pytest.raises(ValueError, match="--motions is only used with --evaluator"):
        call_command(captions, [*argv[1:], "--motions", str(motions)])
    with pytest.raises(ValueError, match="--evaluator needs --motions"):
        call_command(captions, [*argv[1:], "--evaluator", str(folder)])


# ------------------------------------------------------------------------------------------ torchmetrics accumulator


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric CaptionMetrics was called before")
def test_metric_class_accumulates_by_id(report) -> None:
    metric = CaptionMetrics()
    metric.update(IDS[:4], PREDS[:4], REFS[:4])
    # a DistributedSampler-style repeat of an id is counted once
    metric.update(IDS[3:], PREDS[3:], REFS[3:])
    out = metric.compute()
    assert out["num_captions"] == 6.0 and out["num_empty_predictions"] == 0.0
    for key, value in report.scores.items():
        assert out[key] == pytest.approx(value, abs=1e-9), key
    assert metric.state_dict() == {}  # list states are not persistent
    assert metric.compute() == out  # compute never resets
    metric.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="got 1 predictions but 2 reference lists"):
        metric.update(["a"], ["x"], [["y"], ["z"]])
    with pytest.raises(ValueError, match="needs motion_embeddings in every update, and only then"):
        metric.update(["a"], ["x"], [["y"]], torch.zeros(1, 4))
    with_encoder = CaptionMetrics(bertscore_config=None, encode_text=_toy_encoder())
    with_encoder.update(["a"], ["x"], [["y"]], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="width changed from 4 to 5"):
        with_encoder.update(["b"], ["x"], [["y"]], torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"must be \(B, D\) with B = 1, got \(2, 4\)"):
        with_encoder.update(["b"], ["x"], [["y"]], torch.zeros(2, 4))


# a non-ASCII caption checks the UTF-8 byte states
DDP_PREDS = [p if i != 2 else "a person waves ✋ with the right hand" for i, p in enumerate(PREDS)]
# per layout and rank, the batches (item rows) it updates with
DDP_SHARDS = {
    # rank 1 repeats item 3, as a DistributedSampler pads the last batch
    "split": {0: [[0, 1], [2, 3]], 1: [[3, 4, 5]]},
    # torchmetrics' float32 stand-in for rank 1's empty states must not meet rank 0's uint8 bytes
    "rank1_empty": {0: [[0, 1, 2], [3, 4, 5]], 1: []},
}


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    # the empty rank's compute() is expected to run without a local update
    warnings.filterwarnings("ignore", message="The ``compute`` method of metric CaptionMetrics was called before")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        encode = _toy_encoder(dim=8)
        motion = encode([r[0] for r in REFS])
        for layout, shards in DDP_SHARDS.items():
            metric = CaptionMetrics(bertscore_config=None, encode_text=encode, retrieval_group_size=4)
            for rows in shards[rank]:
                ids, preds, refs = [IDS[i] for i in rows], [DDP_PREDS[i] for i in rows], [REFS[i] for i in rows]
                metric.update(ids, preds, refs, motion[rows])
            torch.save(metric.compute(), Path(out_dir) / f"{layout}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_metric_class_ddp_gloo(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    encode = _toy_encoder(dim=8)
    single = CaptionMetrics(bertscore_config=None, encode_text=encode, retrieval_group_size=4)
    single.update(IDS, DDP_PREDS, REFS, encode([r[0] for r in REFS]))
    expected = single.compute()
    assert expected["num_captions"] == 6.0 and {"R@3", "MM-Dist", "cider"} <= expected.keys()
    for layout in DDP_SHARDS:
        for rank in range(2):
            out = torch.load(tmp_path / f"{layout}_rank{rank}.pt")
            assert out.keys() == expected.keys()
            for key, value in expected.items():
                assert out[key] == pytest.approx(value, abs=1e-9), (layout, rank, key)
