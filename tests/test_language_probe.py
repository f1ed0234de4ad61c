"""Language-preservation probe: scoring rule, shipped data, padded greedy decoding, perplexity, SmolLM2 numbers."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import Tensor
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from llamo.commands.evaluation import language as eval_language
from llamo.core.llm import PREPARED_MARKER, build_random_llm, load_llm, load_tokenizer, smollm2_dir
from llamo.eval import language
from llamo.eval.language import (
    LanguageProbeResult,
    first_line,
    greedy_generate,
    load_paragraphs,
    load_probe,
    normalize_text,
    perplexity,
    run_language_probe,
    score_reply,
)
from llamo.eval.markdown import format_language_table
from llamo.inference import text as inference_text
from llamo.inference.prompts import stop_token_ids
from llamo.inference.text import HFLogitsFn, hf_logits_fn
from metrics.command import call_command

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
PROMPTS = [
    "What is the capital of France?",
    "Hello",
    "How many legs does a spider have? Reply with just a number, please.",
    "What colour is snow?",
    "Name the month that comes after March.",
]


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the words of the shipped probe and paragraphs (built offline, deterministic)."""
    split = pre_tokenizers.Whitespace()
    texts = [t for item in load_probe() for t in (item.prompt, *item.answers)] + load_paragraphs() + PROMPTS
    words = {piece for text in texts for piece, _ in split.pre_tokenize_str(text.lower())}
    words |= {"\n", "user", "assistant", "system", "one", "two", "three", "four", "five"}
    vocab = {token: i for i, token in enumerate(SPECIAL + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = split
    backend.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = TINY_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return build_random_llm(config, seed=0).eval()


def _plain(model: LlamaForCausalLM) -> inference_text.LogitsFn:
    """A bare callable (no incremental methods): greedy_generate must re-run the whole sequence each step."""
    fn = hf_logits_fn(model)
    return lambda ids, mask: fn(ids, mask)


# ---------------------------------------------------------------------------------------------------------
# Scoring rule
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "answers", "expected"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("PARIS!", ["paris"], True),
        ("Parisian cafes are famous.", ["Paris"], False),
        ("\n  \nParis\nLondon", ["London"], False),  # only the first non-empty line counts
        ("\n  \nParis\nLondon", ["Paris"], True),
        ("It is 1,000 grams.", ["1000"], True),
        ("42.", ["42"], True),
        ("142", ["42"], False),
        ("forty two", ["forty-two"], True),
        ("Forty-two.", ["forty two"], True),
        ("The formula is CO₂.", ["CO2"], True),
        ("Brasília", ["Brasilia"], True),
        ("Thank you!", ["thank you"], True),
        ("You, thank me.", ["thank you"], False),  # a phrase must appear in order
        ("The answer is the Moon", ["moon"], True),
        ("It is blue.", ["green", "blue"], True),
        ("It is red.", ["green", "blue"], False),
        ("", ["Paris"], False),
    ],
)
def test_score_reply(reply: str, answers: list[str], expected: bool) -> None:
    assert score_reply(reply, answers) is expected


def test_normalize_text_and_first_line() -> None:
    assert normalize_text("The Answer: an APPLE, a pear!") == "answer apple pear"
    assert normalize_text("Café  1,000,000 — H₂O") == "cafe 1000000 h2o"
    assert normalize_text("snake_case") == "snake case"
    assert first_line("\n \n  Paris. \nRome") == "Paris."
    assert first_line(" \n ") == ""
    with pytest.raises(ValueError, match="no accepted answer is left"):
        score_reply("a", ["The", "a!"])


# ---------------------------------------------------------------------------------------------------------
# Shipped data
# ---------------------------------------------------------------------------------------------------------


def test_shipped_probe_file() -> None:
    items = load_probe()
    assert len(items) == 100
    assert len({item.id for item in items}) == 100
    assert sum(item.kind == "fact" for item in items) == 72
    assert sum(item.kind == "instruction" for item in items) == 28
    for item in items:
        assert item.prompt.strip() and item.answers
        assert all(normalize_text(a) for a in item.answers), item.id
        # echoing the question must never score
        assert not score_reply(item.prompt, item.answers), f"{item.id}: an accepted answer occurs in its prompt"
    assert language.QUESTIONS_FILE.parent.name == "probe"


def test_shipped_paragraphs() -> None:
    paragraphs = load_paragraphs()
    assert len(paragraphs) == 20
    assert len(set(paragraphs)) == 20
    for text in paragraphs:
        assert 60 <= len(text.split()) <= 120, text[:40]
        assert "\n" not in text


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        load_probe(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        load_paragraphs(tmp_path / "nope.txt")
    good = {"id": "x", "kind": "fact", "prompt": "What is 1 + 1?", "answers": ["2"]}
    cases = [  # (error message, the line after one good line)
        (r"bad.jsonl:2 is not valid JSON", "{oops"),
        ("`answers` must be a non-empty list", json.dumps({**good, "id": "y", "answers": []})),
        ("`answers` must be a non-empty list", json.dumps({**good, "id": "y", "answers": ["the"]})),
        ("`id` must be a unique", json.dumps(good)),
        ("`kind` must be one of", json.dumps({**good, "id": "y", "kind": "quiz"})),
        ("`prompt` must be a non-empty", json.dumps({**good, "id": "y", "prompt": " "})),
        ("must be a JSON object", "[1, 2]"),
    ]
    path = tmp_path / "bad.jsonl"
    for message, line in cases:
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=message):
            load_probe(path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="has no items"):
        load_probe(tmp_path / "empty.jsonl")
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(ValueError, match="has no paragraphs"):
        load_paragraphs(tmp_path / "empty.txt")
    (tmp_path / "two.txt").write_text("First paragraph,\nsecond line.\n\n\nSecond one.\n")
    assert load_paragraphs(tmp_path / "two.txt") == ["First paragraph, second line.", "Second one."]


# ---------------------------------------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------------------------------------


def test_padded_batches_equal_unpadded_generation(model: LlamaForCausalLM, tokenizer: Any) -> None:
    lengths = {len(language._encode_prompt(tokenizer, p, True, None)) for p in PROMPTS}
    assert len(lengths) >= 3  # the batch really is padded
    single = [greedy_generate(_plain(model), tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    recomputed = greedy_generate(_plain(model), tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    cached = greedy_generate(hf_logits_fn(model), tokenizer, PROMPTS, max_new_tokens=8, batch_size=16)
    assert all(1 <= len(reply.split()) <= 8 for reply in single)
    assert recomputed == single
    assert cached == single
    again = greedy_generate(hf_logits_fn(model), tokenizer, PROMPTS, max_new_tokens=8, batch_size=16)
    assert again == cached  # deterministic
    raw = greedy_generate(hf_logits_fn(model), tokenizer, PROMPTS, max_new_tokens=8, use_chat_template=False)
    assert raw != cached  # the chat template is really applied


class ScriptedLM:
    """A fake `IncrementalLogitsFn`: after each prompt it 'says' a fixed token script, then the filler token.

    It reconstructs every row's real tokens from the padding mask, so it also checks that greedy_generate keeps
    ids, masks and the (row-selected) state aligned while finished rows leave the batch.
    """

    def __init__(self, tokenizer: Any, scripts: dict[str, list[str]], filler: str = "one") -> None:
        self.vocab = len(tokenizer)
        self.prompts = {
            tuple(language._encode_prompt(tokenizer, p, True, None)): tokenizer.convert_tokens_to_ids(s)
            for p, s in scripts.items()
        }
        self.filler = tokenizer.convert_tokens_to_ids(filler)
        self.batch_sizes: list[int] = []

    def _next_logits(self, rows: list[list[int]]) -> Tensor:
        logits = torch.zeros(len(rows), self.vocab)
        for i, real in enumerate(rows):
            prompt = next(p for p in self.prompts if tuple(real[: len(p)]) == p)
            script = self.prompts[prompt]
            done = len(real) - len(prompt)
            logits[i, script[done] if done < len(script) else self.filler] = 1.0
        return logits

    @staticmethod
    def _rows(ids: Tensor, mask: Tensor) -> list[list[int]]:
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def __call__(self, ids: Tensor, mask: Tensor) -> Tensor:
        self.batch_sizes.append(ids.shape[0])
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[:, -1] = self._next_logits(self._rows(ids, mask))
        return logits

    def start(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, list[list[int]]]:
        self.batch_sizes.append(ids.shape[0])
        rows = self._rows(ids, mask)
        return self._next_logits(rows), rows

    def step(self, ids: Tensor, mask: Tensor, state: list[list[int]]) -> tuple[Tensor, list[list[int]]]:
        assert ids.shape == (len(state), 1) and mask.shape[0] == len(state)
        self.batch_sizes.append(ids.shape[0])
        rows = [seq + [int(t)] for seq, t in zip(state, ids[:, 0])]
        assert all(int(m.sum()) == len(seq) for m, seq in zip(mask, rows))
        return self._next_logits(rows), rows

    def select(self, state: list[list[int]], rows: Tensor) -> list[list[int]]:
        return [state[i] for i in rows.tolist()]


def test_stops_first_line_and_finished_rows_leave_batch(tokenizer: Any) -> None:
    scripts = {
        "What is the capital of France?": ["paris", "\n", "london", "<|im_end|>"],
        "Hello": ["rome", "<|im_end|>", "three"],
        "Name the month that comes after March.": ["two", "three", "four", "five", "three", "four", "two"],
    }
    prompts = list(scripts)
    assert stop_token_ids(tokenizer) == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for incremental in (True, False):
        lm = ScriptedLM(tokenizer, scripts)
        fn = lm if incremental else (lambda ids, mask, lm=lm: lm(ids, mask))
        replies = greedy_generate(fn, tokenizer, prompts, max_new_tokens=5, batch_size=8)
        assert replies == ["paris \n london", "rome", "two three four five three"]
        assert lm.batch_sizes == [3, 3, 2, 2, 1]  # rows leave the batch when they stop
        lm = ScriptedLM(tokenizer, scripts)
        fn = lm if incremental else (lambda ids, mask, lm=lm: lm(ids, mask))
        first = greedy_generate(fn, tokenizer, prompts, max_new_tokens=5, first_line_only=True)
        assert first == ["paris", "rome", "two three four five three"]
        assert lm.batch_sizes == [3, 3, 1, 1, 1]


def test_extra_vocab_rows_never_enter_the_probe(model: LlamaForCausalLM, tokenizer: Any) -> None:
    """LLaMo appends [BOM]/[EOM] after the base vocabulary: huge scores there must not change anything."""
    base = _plain(model)

    def with_added_rows(ids: Tensor, mask: Tensor) -> Tensor:
        logits = base(ids, mask)
        return torch.cat([logits, torch.full((*logits.shape[:2], 2), 1e4)], dim=-1)  # (B, L, V + 2)

    items = load_probe()[:6]
    paragraphs = load_paragraphs()[:2]
    kwargs: dict[str, Any] = {"max_new_tokens": 4, "progress": False}
    a = run_language_probe(base, tokenizer, items, paragraphs, **kwargs)
    b = run_language_probe(with_added_rows, tokenizer, items, paragraphs, **kwargs)
    assert a.replies == b.replies and a.perplexity == b.perplexity


# ---------------------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------------------


def test_perplexity_matches_hand_computation(model: LlamaForCausalLM, tokenizer: Any) -> None:
    paragraphs = [load_paragraphs()[0], "The Moon is the natural satellite of the Earth.", load_paragraphs()[6]]
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in paragraphs:
            ids = torch.tensor([tokenizer(text)["input_ids"]])  # (1, L), unpadded
            logits = model(input_ids=ids).logits[0, :-1]
            nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    expected = math.exp(nll / count)
    assert len({len(tokenizer(p)["input_ids"]) for p in paragraphs}) == 3  # batches below are padded
    for batch_size in (1, 2, 3):
        assert perplexity(hf_logits_fn(model), tokenizer, paragraphs, batch_size) == pytest.approx(expected, rel=1e-5)

    def poisoned(ids: Tensor, mask: Tensor) -> Tensor:
        logits = hf_logits_fn(model)(ids, mask)
        return logits.masked_fill(~mask.bool()[..., None], float("nan"))  # garbage at every padded position

    got = perplexity(poisoned, tokenizer, paragraphs, batch_size=3)
    assert got == perplexity(hf_logits_fn(model), tokenizer, paragraphs, batch_size=3)


def test_same_model_twice_gives_identical_results(model: LlamaForCausalLM, tokenizer: Any) -> None:
    items = load_probe()[:10]
    paragraphs = load_paragraphs()[:3]
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 4, "progress": False}
    a = run_language_probe(hf_logits_fn(model), tokenizer, items, paragraphs, **kwargs)
    b = run_language_probe(hf_logits_fn(copy.deepcopy(model)), tokenizer, items, paragraphs, **kwargs)
    c = run_language_probe(_plain(model), tokenizer, items, paragraphs, **kwargs)
    for other in (b, c):
        assert other.replies == a.replies
        assert other.hits == a.hits
        assert (other.correct, other.total, other.accuracy) == (a.correct, a.total, a.accuracy)
        assert other.perplexity == a.perplexity
    assert a.total == 10 and math.isfinite(a.perplexity) and a.perplexity > 1.0


# ---------------------------------------------------------------------------------------------------------
# Bad input, table, CLI
# ---------------------------------------------------------------------------------------------------------


def test_bad_inputs(model: LlamaForCausalLM, tokenizer: Any) -> None:
    fn = hf_logits_fn(model)
    with pytest.raises(ValueError, match="at least one prompt"):
        greedy_generate(fn, tokenizer, [])
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty string"):
        greedy_generate(fn, tokenizer, ["Hello", "  "])
    with pytest.raises(ValueError, match="max_new_tokens and batch_size must be >= 1"):
        greedy_generate(fn, tokenizer, ["Hello"], batch_size=0)
    with pytest.raises(ValueError, match="system_prompt needs use_chat_template=True"):
        greedy_generate(fn, tokenizer, ["Hello"], use_chat_template=False, system_prompt="Be brief.")
    with pytest.raises(ValueError, match="at least one paragraph"):
        perplexity(fn, tokenizer, [])
    with pytest.raises(ValueError, match="paragraph 1 .* fewer than 2 tokens"):
        perplexity(fn, tokenizer, ["The Moon is bright.", "moon"])
    with pytest.raises(ValueError, match="at least one probe item"):
        run_language_probe(fn, tokenizer, items=[], progress=False)
    with pytest.raises(ValueError, match="at least one .model name, result. row"):
        format_language_table([])

    no_template = _tiny_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        greedy_generate(fn, no_template, ["Hello"])

    def too_narrow(ids: Tensor, mask: Tensor) -> Tensor:
        return fn(ids, mask)[..., :10]

    with pytest.raises(ValueError, match="logits_fn returned 10 logit columns but the tokenizer has"):
        greedy_generate(too_narrow, tokenizer, ["Hello"])
    with pytest.raises(ValueError, match="non-finite logits"):
        greedy_generate(lambda ids, mask: torch.full((*ids.shape, len(tokenizer)), float("nan")), tokenizer, ["Hi"])
    with pytest.raises(ValueError, match=r"logits_fn must return logits \(B, L, V\)"):
        perplexity(lambda ids, mask: fn(ids, mask)[:, 1:], tokenizer, ["The Moon is bright."])


def test_format_language_table() -> None:
    base = LanguageProbeResult(0.59, 59, 100, 16.8834, [], [], 1.0)
    mot = LanguageProbeResult(0.5, 1, 2, 20.0, [], [], 1.0)
    assert format_language_table([("SmolLM2-135M-Instruct", base), ("LLaMo (MoT)", mot)]) == (
        "| model | probe acc | correct/total | perplexity |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| SmolLM2-135M-Instruct | 59.0% | 59/100 | 16.8834 |\n"
        "| LLaMo (MoT) | 50.0% | 1/2 | 20.0000 |"
    )


def test_cli_on_a_saved_tiny_model(
    model: LlamaForCausalLM, tokenizer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    args = ["--llm", str(tmp_path / "tiny"), "--name", "tiny", "--max_new_tokens", "3", "--batch_size", "50"]
    assert call_command(eval_language, [*args, "--replies", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| model | probe acc | correct/total | perplexity |" in out and "| tiny |" in out and "/100 |" in out
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [item.id for item in load_probe()]


# ---------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_smollm2_language_probe() -> None:
    folder = smollm2_dir()
    if not (folder / PREPARED_MARKER).is_file():
        pytest.skip(f"SmolLM2-135M-Instruct is not prepared at {folder}; run `.venv/bin/python -m llamo prepare-llm`")
    model = load_llm(folder).eval()
    tokenizer = load_tokenizer(folder)
    start = time.perf_counter()
    result = run_language_probe(HFLogitsFn(model), tokenizer, progress=False)
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2-135M-Instruct language probe ({seconds:.1f}s, {torch.get_num_threads()} thread(s)):")
    print(format_language_table([("SmolLM2-135M-Instruct", result)]))
    assert result.total == 100
    assert result.accuracy > 0
    assert math.isfinite(result.perplexity) and result.perplexity > 1.0
