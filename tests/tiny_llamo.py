"""Tiny builders shared by test_llm.py, test_mot.py, test_model.py and test_format.py (not a test module).

Random fp32 Llama configs (GQA and not, tied and untied), a word-level tokenizer with a ChatML template, a
tiny `LLaMoConfig` and a mixed text-to-motion / motion-to-text batch built through the real formatter.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from llamo.core.format import MotionSpan, MotionTextBatch, SequenceFormatter, collate_samples
from llamo.core.llm import LLMConfig, build_random_llm
from llamo.core.model import LLaMo, LLaMoConfig

VOCAB = 64
LATENT_DIM = 8

#: tiny Llama shapes: GQA + tied, MHA + untied, GQA + untied with 3 layers and head_dim != hidden / heads
LLAMA_CONFIGS: dict[str, dict[str, Any]] = {
    "gqa_tied": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    ),
    "mha_untied": dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        tie_word_embeddings=False,
    ),
    "gqa3_untied": dict(
        vocab_size=VOCAB,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=6,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),
}

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "<unk> <pad> <s> </s> <|im_start|> <|im_end|> user assistant system a person walks forward then turns left and "
    "jumps runs in circle generate motion matching the following description describe this one sentence : . ,"
).split()


def tiny_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """Word-level tokenizer (lower-case words above, ``<unk>`` otherwise) with a ChatML template."""
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = chat_template
    return tok


def random_llm(name: str, seed: int = 0) -> LlamaForCausalLM:
    """A seeded random tiny Llama whose RMSNorm weights are also random (HF initialises them to 1, which would
    hide a text/motion norm mix-up)."""
    llm = build_random_llm(LLAMA_CONFIGS[name], seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param_name, param in llm.named_parameters():
            if "norm" in param_name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return llm.eval()


def tiny_llamo_config(name: str, mot: bool = True, **overrides: Any) -> LLaMoConfig:
    """A tiny LLaMoConfig on the named Llama shape (heads of width 16)."""
    fields: dict[str, Any] = dict(
        llm=LLMConfig(config=dict(LLAMA_CONFIGS[name])),
        latent_dim=LATENT_DIM,
        cond_dim=16,
        mot=mot,
        flow_head=dict(width=16, depth=2, timestep_samples=2, sample_steps=4),
        exit_head=dict(width=16, pos_weight=3.0),
    )
    fields.update(overrides)
    return LLaMoConfig(**fields)


def tiny_llamo(name: str, mot: bool = True, seed: int = 0, **overrides: Any) -> tuple[LLaMo, LlamaForCausalLM]:
    """(LLaMo, pristine deep copy of its base model taken before LLaMo touched it)."""
    llm = random_llm(name, seed)
    reference = copy.deepcopy(llm)
    torch.manual_seed(seed)
    return LLaMo(tiny_llamo_config(name, mot, **overrides), llm=llm), reference


def mixed_batch(model: LLaMo, seed: int = 0) -> MotionTextBatch:
    """Two text-to-motion and one motion-to-text sample (different lengths, so one row is padded)."""
    gen = torch.Generator().manual_seed(seed)
    formatter = SequenceFormatter(tiny_tokenizer(), model.bom_id, model.eom_id, model.config.latent_dim)

    def latents(n: int) -> torch.Tensor:
        return torch.randn(n, model.config.latent_dim, generator=gen)

    samples = [
        formatter.text_to_motion("a person walks forward then turns left", MotionSpan(latents(5))),
        formatter.motion_to_text(MotionSpan(latents(4)), "a person jumps ."),
        formatter.text_to_motion("a person runs in circle", MotionSpan(latents(3))),
    ]
    return collate_samples(samples, formatter.pad_id)


# -- a tiny stage workspace for the LLaMo stage tests (test_stages.py, test_distributed.py) -----------------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def stage_workspace(root: Path, clips: int = 24) -> dict[str, Path]:
    """A 24-clip synthetic corpus, a random tiny VAE stage output and a tiny-model YAML overlay under ``root``."""
    from llamo.core.vae import CausalMotionVAE, VAEConfig
    from llamo.motion.synthetic import synthesize
    from stageio import save_stage_output

    data = root / "data"
    synthesize(data, clips=clips, seed=3, progress=False)
    torch.manual_seed(0)
    vae_cfg = VAEConfig(width=16, depth=1, latent_dim=LATENT_DIM)
    save_stage_output(root / "vae", CausalMotionVAE(vae_cfg), vae_cfg.to_dict(), stage="vae")
    tok_dir = root / "tokenizer"
    tiny_tokenizer().save_pretrained(tok_dir)
    core: dict[str, Any] = {
        "llm": {"config": dict(LLAMA_CONFIGS["gqa_tied"]), "tokenizer": str(tok_dir)},
        "latent_dim": LATENT_DIM,
        "cond_dim": 16,
        "flow_head": {"width": 16, "depth": 2, "timestep_samples": 2, "sample_steps": 4},
        "exit_head": {"width": 16, "pos_weight": 3.0},
    }
    overlay = {"model": {"class_path": "llamo.stages.llamo_base.LLaMoStage", "init_args": {"core": core}}}
    (root / "model.yaml").write_text(yaml.safe_dump(overlay))
    return {"root": root, "data": data, "vae": root / "vae", "model": root / "model.yaml"}


def stage_args(ws: dict[str, Path], stage: int, out: str, *extra: str, steps: int = 3) -> list[str]:
    """`llamo fit` arguments of LLaMo stage ``stage`` on a `stage_workspace`, writing under ``ws["root"]/out``."""
    return [
        "fit",
        "--config", str(EXPERIMENTS / "base.yaml"),
        "--config", str(ws["model"]),
        "--config", str(EXPERIMENTS / f"stage{stage}.yaml"),
        f"--data.init_args.root={ws['data']}",
        f"--data.init_args.vae_dir={ws['vae']}",
        "--data.init_args.batch_size=4",
        "--data.init_args.val_split=null",
        f"--trainer.max_steps={steps}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={ws['root'] / out}",
        f"--handoff.save_to={ws['root'] / out / 'handoff'}",
        *extra,
    ]  # fmt: skip


def write_tiny_run(root: Path, normalizer: Any) -> tuple[Path, LLaMo, Any]:
    """A run folder ``root/run`` with a tiny LLaMo ``stage1`` (non-zero flow head, so guidance changes the motion)
    and a tiny ``vae`` holding ``normalizer``'s Mean/Std, written with `save_stage_output`; returns (run, model, vae).
    """
    from llamo.core.vae import CausalMotionVAE, VAEConfig
    from stageio import save_stage_output

    tokenizer_dir = root / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    config = tiny_llamo_config(
        "gqa_tied", llm=LLMConfig(config=dict(LLAMA_CONFIGS["gqa_tied"]), tokenizer=str(tokenizer_dir))
    )
    torch.manual_seed(3)
    model = LLaMo(config).eval()
    with torch.no_grad():
        for p in model.flow_head.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    run = root / "run"
    core_config = config.to_dict()
    core_config.pop("loss")
    save_stage_output(run / "stage1", model, core_config, kind="LLaMo", excluded_prefixes=model.frozen_prefixes())
    vae = CausalMotionVAE(VAEConfig(width=16, depth=1, latent_dim=LATENT_DIM)).eval()
    save_stage_output(run / "vae", vae, vae.config.to_dict(), kind="CausalMotionVAE")
    normalizer.save(run / "vae")
    return run, model, vae
