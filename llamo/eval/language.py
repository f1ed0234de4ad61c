"""Language-preservation probe: does a model still answer simple questions and model English like its base LLM?

Paper §4.4 (Table 5) reports MMLU / IFEval unchanged by the Mixture-of-Transformers design (the text branch is
frozen) and collapsing for the "w/o MoT" full fine-tune. Those benchmarks are far too large for a CPU demo, so
llamo ships a small stand-in inside the package:

- ``probe/questions.jsonl``: 100 short prompts written for llamo, 72 factual questions (capitals, arithmetic,
  colours, opposites, units, simple science) and 28 instructions with a checkable answer, one JSON object a line:
  ``{"id", "kind": "fact" | "instruction", "prompt", "answers": [accepted answers]}``;
- ``probe/paragraphs.txt``: 20 held-out English paragraphs (plain encyclopaedic prose, 90-100 words each, written
  for llamo, separated by blank lines) for perplexity.

Scoring rule (`score_reply`): a reply is correct when one accepted answer occurs, after normalisation, as a whole
word or phrase in the normalised FIRST NON-EMPTY LINE of the reply. Normalisation (`normalize_text`): Unicode NFKD
with combining accents dropped (``CO₂`` -> ``co2``, ``Brasília`` -> ``brasilia``), lower case, thousands
separators removed (``1,000`` -> ``1000``), every other non-alphanumeric character turned into a space, the
articles a/an/the removed, whitespace collapsed. So ``"The capital of France is Paris."`` scores for ``Paris``,
``"Parisian"`` does not, and ``"42."`` scores for ``42`` but ``"142"`` does not. The match is lenient (a reply
naming two candidates still scores); no accepted answer occurs in its own prompt (checked by the tests), so
echoing the question never scores.

Perplexity (`perplexity`): each paragraph is tokenised with the tokenizer's own special-token convention
(Llama 3 prepends ``<|begin_of_text|>``, SmolLM2 adds nothing); every token after the first is predicted from
the tokens before it; perplexity is ``exp`` of the mean negative log-likelihood over all predicted tokens of all
paragraphs (a token-weighted mean, not a mean of per-paragraph perplexities). Padding never enters.

Model-agnostic interface: the base HF `LlamaForCausalLM` and LLaMo's text path are scored by the same code
through a `llamo.inference.text.LogitsFn` (`hf_logits_fn`, `LLaMoTextLogitsFn`); replies come from the suite's one
text decoder, `llamo.inference.text.decode_tokens`. Only the first ``len(tokenizer)`` logit columns (the text
vocabulary) are read, both for the greedy argmax and for the perplexity softmax, so LLaMo's ``[BOM]``/``[EOM]``
rows never enter the probe: with a frozen text branch the MoT model must reproduce its base model's numbers
exactly. To compare two models for exact equality, score both through the same path.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from llamo.core.llm import build_llm
from llamo.eval.settings import EvalSettings, Section
from llamo.inference.prompts import left_pad, stop_token_ids
from llamo.inference.run import LLaMoRun
from llamo.inference.text import LLaMoTextLogitsFn, LogitsFn, decode_tokens, hf_logits_fn
from llamo.progress import progress as progress_bar
from stageio import fingerprint_tensors, read_stage_config

__all__ = [
    "PARAGRAPHS_FILE",
    "PROBE_SYSTEM_PROMPT",
    "QUESTIONS_FILE",
    "LanguageProbeResult",
    "ProbeItem",
    "first_line",
    "fingerprint_note",
    "language_section",
    "greedy_generate",
    "load_paragraphs",
    "load_probe",
    "normalize_text",
    "perplexity",
    "run_language_probe",
    "score_reply",
]

PROBE_DIR = Path(__file__).resolve().with_name("probe")
#: the 100 shipped probe prompts with their accepted answers
QUESTIONS_FILE = PROBE_DIR / "questions.jsonl"
#: the 20 shipped held-out English paragraphs
PARAGRAPHS_FILE = PROBE_DIR / "paragraphs.txt"
#: system turn of the probe prompts: asks for the short replies the probe scores (and keeps decoding short)
PROBE_SYSTEM_PROMPT = "Answer briefly."

_ARTICLES = frozenset({"a", "an", "the"})
_KINDS = ("fact", "instruction")

# ---------------------------------------------------------------------------------------------------------
# Probe data and scoring
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeItem:
    """One probe prompt."""

    id: str
    """Unique name of the item (e.g. ``capital-france``)."""
    kind: Literal["fact", "instruction"]
    """``fact``: a factual question; ``instruction``: an instruction whose result is checkable."""
    prompt: str
    """The user message."""
    answers: tuple[str, ...]
    """Accepted answers; any one of them in the reply's first line (see `score_reply`) is correct."""


def normalize_text(text: str) -> str:
    """Lower-case, accent- and punctuation-free, article-free form of ``text`` (the rule in the module docstring)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"[\W_]+", " ", text)
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def first_line(reply: str) -> str:
    """The first non-empty line of ``reply``, stripped ("" when there is none)."""
    for line in reply.splitlines():
        if line.strip():
            return line.strip()
    return ""


def score_reply(reply: str, answers: Sequence[str]) -> bool:
    """True when an accepted answer occurs as a whole word/phrase in the reply's first line (both normalised)."""
    targets = [normalize_text(a) for a in answers]
    if not any(targets):
        raise ValueError(f"no accepted answer is left after normalisation (articles and punctuation): {answers!r}")
    line = f" {normalize_text(first_line(reply))} "
    return any(f" {t} " in line for t in targets if t)


def _missing_data_file(path: Path, default: Path) -> FileNotFoundError:
    hint = (
        "it ships inside the llamo package (llamo/eval/probe/); reinstall llamo (`make install`)"
        if path == default
        else "pass an existing file or leave the path out to use the shipped one"
    )
    return FileNotFoundError(f"language probe file {path} does not exist; {hint}")


def load_probe(path: str | Path | None = None) -> list[ProbeItem]:
    """Read probe items from a JSON-lines file (default: the shipped `QUESTIONS_FILE`), validating every line."""
    path = QUESTIONS_FILE if path is None else Path(path)
    if not path.is_file():
        raise _missing_data_file(path, QUESTIONS_FILE)
    items: list[ProbeItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err}); each line must be one probe item object") from err
        if not isinstance(record, dict):
            raise ValueError(f"{where} must be a JSON object with id, kind, prompt, answers; got {record!r}")
        item_id, kind, prompt, answers = (record.get(k) for k in ("id", "kind", "prompt", "answers"))
        if not isinstance(item_id, str) or not item_id or item_id in seen:
            raise ValueError(f"{where}: `id` must be a unique non-empty string, got {item_id!r}")
        if kind not in _KINDS:
            raise ValueError(f"{where}: `kind` must be one of {_KINDS}, got {kind!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: `prompt` must be a non-empty string, got {prompt!r}")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and normalize_text(a) for a in answers)
        ):
            raise ValueError(
                f"{where}: `answers` must be a non-empty list of strings that stay non-empty after normalisation "
                f"(not only articles/punctuation), got {answers!r}"
            )
        seen.add(item_id)
        items.append(ProbeItem(item_id, kind, prompt, tuple(answers)))
    if not items:
        raise ValueError(f"language probe file {path} has no items")
    return items


def load_paragraphs(path: str | Path | None = None) -> list[str]:
    """Read blank-line-separated paragraphs (default: the shipped `PARAGRAPHS_FILE`); lines are joined by spaces."""
    path = PARAGRAPHS_FILE if path is None else Path(path)
    if not path.is_file():
        raise _missing_data_file(path, PARAGRAPHS_FILE)
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    paragraphs = [" ".join(block.split()) for block in blocks if block.strip()]
    if not paragraphs:
        raise ValueError(f"paragraph file {path} has no paragraphs (they are separated by blank lines)")
    return paragraphs


# ---------------------------------------------------------------------------------------------------------
# Tokenisation helpers
# ---------------------------------------------------------------------------------------------------------


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token before probing")
    return int(pad)


def _text_vocab_size(tokenizer: Any, logits: Tensor) -> int:
    vocab = len(tokenizer)
    if logits.shape[-1] < vocab:
        raise ValueError(
            f"logits_fn returned {logits.shape[-1]} logit columns but the tokenizer has {vocab} tokens; "
            "the logits_fn and tokenizer belong to different models"
        )
    return vocab


def _encode_prompt(tokenizer: Any, prompt: str, use_chat_template: bool, system_prompt: str | None) -> list[int]:
    if use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "use_chat_template=True but the tokenizer has no chat template; pass use_chat_template=False or set "
                "tokenizer.chat_template (e.g. llamo.core.format.PLAIN_CHAT_TEMPLATE)"
            )
        # the rendered template already holds its special tokens (BOS, role markers)
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


# ---------------------------------------------------------------------------------------------------------
# Generation and perplexity
# ---------------------------------------------------------------------------------------------------------


def greedy_generate(
    logits_fn: LogitsFn,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 24,
    batch_size: int = 16,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
    first_line_only: bool = False,
    use_cache: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy (argmax over the text vocabulary) replies to ``prompts``, in order, deterministic.

    Each prompt becomes one user turn of the tokenizer's chat template with the assistant prompt appended
    (``use_chat_template=False``: the raw prompt with the tokenizer's special tokens), after a system turn with
    ``system_prompt`` when given (None: whatever the template does without one). Prompts are sorted by
    length into left-padded batches of ``batch_size``; a reply ends at eos or an end-of-turn token
    (`END_OF_TURN_TOKENS`, excluded from the reply) or after ``max_new_tokens``, and with ``first_line_only``
    as soon as its first non-empty line is complete (the reply is then that line). Special tokens are skipped
    in decoding and the reply is stripped. ``use_cache`` uses the `IncrementalLogitsFn` methods when
    ``logits_fn`` has them; otherwise every step re-runs the whole sequence.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("greedy_generate needs at least one prompt, got an empty list")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} must be a non-empty string, got {p!r}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if system_prompt is not None and not use_chat_template:
        raise ValueError("system_prompt needs use_chat_template=True (a system turn exists only in a chat template)")
    encoded = [_encode_prompt(tokenizer, p, use_chat_template, system_prompt) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens")
    pad_id = _pad_id(tokenizer)
    stops = stop_token_ids(tokenizer)

    def line_done(tokens: list[int]) -> bool:
        return "\n" in tokenizer.decode(tokens, skip_special_tokens=True).lstrip()

    # similar lengths share a batch: less padding; sorted() is stable, so the batching is deterministic
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    replies = [""] * len(prompts)
    batches = range(0, len(order), batch_size)
    for start in progress_bar(batches, desc="greedy generation", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in rows], pad_id)
        tokens = decode_tokens(
            logits_fn,
            ids,
            mask,
            vocab_size=len(tokenizer),
            stop_ids=stops,
            max_new_tokens=max_new_tokens,
            use_cache=use_cache,
            finished=line_done if first_line_only else None,
        )
        for i, toks in zip(rows, tokens):
            text = tokenizer.decode(toks, skip_special_tokens=True).strip()
            replies[i] = first_line(text) if first_line_only else text
    return replies


def perplexity(
    logits_fn: LogitsFn,
    tokenizer: Any,
    paragraphs: Sequence[str],
    batch_size: int = 4,
    progress: bool = False,
) -> float:
    """``exp`` of the mean next-token NLL over all tokens (after each paragraph's first) of all ``paragraphs``.

    Batches are left-padded; padded positions are neither inputs seen by real tokens nor targets. The softmax
    runs over the text vocabulary (the first ``len(tokenizer)`` logit columns).
    """
    paragraphs = list(paragraphs)
    if not paragraphs:
        raise ValueError("perplexity needs at least one paragraph, got an empty list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [list(tokenizer(p)["input_ids"]) if isinstance(p, str) else [] for p in paragraphs]
    for i, ids in enumerate(encoded):
        if len(ids) < 2:
            raise ValueError(f"paragraph {i} ({paragraphs[i]!r:.60}) has fewer than 2 tokens; nothing to predict")
    pad_id = _pad_id(tokenizer)
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    with torch.inference_mode():
        for start in progress_bar(
            range(0, len(encoded), batch_size), desc="perplexity", unit="batch", disable=not progress
        ):
            ids, mask = left_pad(encoded[start : start + batch_size], pad_id)
            logits = logits_fn(ids, mask)
            if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
                raise ValueError(
                    f"logits_fn must return logits (B, L, V) = ({ids.shape[0]}, {ids.shape[1]}, V), "
                    f"got {tuple(logits.shape)}"
                )
            logits = logits[:, :-1, : _text_vocab_size(tokenizer, logits)]  # position i predicts token i + 1
            # a target counts only when it and its predecessor are real (the first real token has no context)
            valid = (mask[:, 1:] * mask[:, :-1]).bool().to(logits.device)  # (B, L-1)
            targets = ids[:, 1:].to(logits.device)
            nll = F.cross_entropy(logits[valid].float(), targets[valid], reduction="none")
            if not torch.isfinite(nll).all():
                raise ValueError("logits_fn returned non-finite logits at real token positions")
            total_nll += nll.double().sum().cpu()
            total_tokens += int(valid.sum())
    return math.exp(float(total_nll) / total_tokens)


# ---------------------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LanguageProbeResult:
    """Scores of one model on the language probe."""

    accuracy: float
    """``correct / total`` (0..1)."""
    correct: int
    """Number of prompts answered correctly (`score_reply`)."""
    total: int
    """Number of probe prompts."""
    perplexity: float
    """Perplexity on the held-out paragraphs (`perplexity`)."""
    replies: list[str]
    """The scored reply (first line) to each prompt, in probe order."""
    hits: list[bool]
    """Whether each reply was scored correct, in probe order."""
    seconds: float
    """Wall time of the whole probe (generation and perplexity)."""


def run_language_probe(
    logits_fn: LogitsFn,
    tokenizer: Any,
    items: Sequence[ProbeItem] | None = None,
    paragraphs: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    ppl_batch_size: int = 4,
    use_chat_template: bool = True,
    system_prompt: str | None = PROBE_SYSTEM_PROMPT,
    use_cache: bool = True,
    progress: bool = True,
) -> LanguageProbeResult:
    """Score ``logits_fn`` on the probe prompts (default: shipped `load_probe`) and paragraphs (`load_paragraphs`).

    Replies are greedy (`greedy_generate`, after a ``system_prompt`` turn) and stop at the end of their first
    line, the only part `score_reply` reads (``system_prompt`` is not used with ``use_chat_template=False``: a raw
    prompt has no system turn). ``batch_size`` prompts share a generation batch, ``ppl_batch_size``
    paragraphs a perplexity batch; neither changes the result beyond floating-point noise.
    """
    start = time.perf_counter()
    items = load_probe() if items is None else list(items)
    paragraphs = load_paragraphs() if paragraphs is None else list(paragraphs)
    if not items:
        raise ValueError("run_language_probe needs at least one probe item, got an empty list")
    replies = greedy_generate(
        logits_fn,
        tokenizer,
        [item.prompt for item in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        system_prompt=system_prompt if use_chat_template else None,
        first_line_only=True,
        use_cache=use_cache,
        progress=progress,
    )
    hits = [score_reply(reply, item.answers) for reply, item in zip(replies, items)]
    ppl = perplexity(logits_fn, tokenizer, paragraphs, batch_size=ppl_batch_size, progress=progress)
    correct = sum(hits)
    return LanguageProbeResult(
        accuracy=correct / len(items),
        correct=correct,
        total=len(items),
        perplexity=ppl,
        replies=replies,
        hits=hits,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------------------
# The report's language row
# ---------------------------------------------------------------------------------------------------------


def language_section(run_model: LLaMoRun, settings: EvalSettings, section: Section) -> None:
    """The language row: the rebuilt base LLM and LLaMo's text path on the probe, and whether the base is the one
    the handoff was trained on (its `stageio.fingerprint_tensors` against the fingerprint the handoff recorded).

    ``section.data`` gets ``rows``, ``identical`` (same replies and perplexity), ``mot``, ``base_fingerprint`` (of
    the base scored here), ``handoff_fingerprint`` (None: an older handoff that records none; also None without
    MoT, whose handoff holds the whole fine-tuned LLM) and ``fingerprints_match`` (None when there is nothing to
    compare).
    """
    model = run_model.model
    tokenizer = run_model.formatter.tokenizer
    items = load_probe()
    if settings.probe_items is not None:
        items = items[: settings.probe_items]
    base = build_llm(model.config.llm, settings.device).eval()
    base_fingerprint = fingerprint_tensors(base.state_dict())
    recorded = read_stage_config(run_model.stage_dir)["excluded_fingerprints"]
    (prefix,) = model.frozen_prefixes() or (None,)
    handoff_fingerprint = None if prefix is None or recorded is None else recorded.get(prefix)
    results: list[tuple[str, LanguageProbeResult]] = []
    llm_name = model.config.llm.path or "random base LLM (seeded config)"
    for name, fn in (
        (f"Base LLM ({llm_name})", hf_logits_fn(base)),
        (f"LLaMo text path ({run_model.stage_dir.name})", LLaMoTextLogitsFn(model)),
    ):
        results.append((name, run_language_probe(fn, tokenizer, items=items, progress=True)))
    del base
    (base_name, b), (ours_name, o) = results
    identical = b.replies == o.replies and b.hits == o.hits and b.perplexity == o.perplexity
    section.data["rows"] = [
        {"name": n, "accuracy": r.accuracy, "correct": r.correct, "total": r.total, "perplexity": r.perplexity}
        for n, r in results
    ]
    section.data["identical"] = identical
    section.data["mot"] = bool(model.config.mot)
    section.data["perplexity_difference"] = abs(b.perplexity - o.perplexity)
    section.data["differing_replies"] = sum(x != y for x, y in zip(b.replies, o.replies))
    section.data["base_fingerprint"] = base_fingerprint
    section.data["handoff_fingerprint"] = handoff_fingerprint
    match = None if handoff_fingerprint is None else handoff_fingerprint == base_fingerprint
    section.data["fingerprints_match"] = match
    section.data["stage_dir"] = str(run_model.stage_dir)
    expectation = (
        "MoT freezes the text branch, so the two rows must be identical"
        if model.config.mot
        else "w/o MoT fine-tunes the shared LLM, so the rows may differ (paper Table 5)"
    )
    verdict = (
        "identical (same replies, same perplexity)"
        if identical
        else (
            f"NOT identical: {section.data['differing_replies']} differing replies, perplexity differs by "
            f"{section.data['perplexity_difference']:.3g}"
        )
    )
    section.notes += [
        f"{len(items)} probe prompts (greedy, first line scored) and {len(load_paragraphs())} held-out "
        "paragraphs (perplexity), shipped in llamo/eval/probe/.",
        f"{expectation}: {verdict}.",
    ]
    if model.config.mot:
        section.notes.append(fingerprint_note(section.data))


def fingerprint_note(data: dict[str, Any]) -> str:
    """One sentence: is the base scored here the base the handoff was trained on (from `language_section` data)?"""
    base, handoff = data["base_fingerprint"], data["handoff_fingerprint"]
    if data["fingerprints_match"] is None:
        return (
            f"Base weights NOT verified: the handoff records no base fingerprint (written before handoffs recorded "
            f"one); the base scored here has {base}. If it is the base the stage was trained on, record it with "
            f"`llamo record-fingerprint {data['stage_dir']}`."
        )
    if data["fingerprints_match"]:
        return f"Base weights verified: the base scored here has the fingerprint the handoff recorded, {base}."
    return (
        f"Base weights DIFFER from the ones the handoff was trained on: the handoff records {handoff}, the base "
        f"scored here has {base}."
    )
