"""LLaMo: base Llama + Mixture-of-Transformers motion branch + motion adapter/projector + flow and exit heads.

Paper §3.3 and §7.2. The assembled module:

- ``mot.llm``: the base `LlamaForCausalLM` (text branch), frozen when ``mot=True``;
- ``mot.motion_layers`` / ``mot.motion_norm``: motion twins, copied from the text branch at init (`MoTLlama`);
- ``added_tokens``: [BOM]/[EOM] rows (ids ``V`` and ``V + 1``), the only trainable text-side parameters;
- ``adapter`` P(z): VAE latent -> motion input embedding; ``projector``: motion hidden -> flow condition;
- ``flow_head`` (rectified flow, k timesteps per token) and ``exit_head`` ("the motion ends here").

Training objective (eq. 7): ``L = L_FM + lambda_ntp * L_NTP + lambda_end * L_End``, each term averaged over its own
positions (`llamo.core.format` builds the masks). Input latents of generated spans get teacher-forcing noise.

``mot=False`` is the paper's "w/o MoT" ablation (Table 5): no twins, every token runs through the base model's
own layers, all of which train; adapter, heads, tokens and losses are unchanged.

Precision: ``llm.dtype`` sets the base model's dtype only. Everything that can train under MoT (motion twins,
[BOM]/[EOM] rows, adapter, projector, flow head, exit head) is held in float32 whatever it is, so these are the
fp32 master weights the optimiser updates; with a bf16 base they read bf16 activations and cast them on the way
in (see `llamo.core.mot` for the shared attention). With ``mot=False`` the base model itself trains in its own
dtype: the stages refuse a bf16/fp16 one (`llamo.stages.precision`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache

from llamo.core.format import IGNORE_INDEX, MotionTextBatch, SequenceFormatter, check_motion_layout
from llamo.core.heads import (
    ExitHead,
    ExitHeadConfig,
    FlowHead,
    FlowHeadConfig,
    LatentStandardizer,
    MotionAdapter,
    MotionProjector,
)
from llamo.core.llm import AddedTokenRows, LLMConfig, build_llm, load_tokenizer
from llamo.core.mot import MoTLlama, MoTOutput, Routing

__all__ = ["LLaMo", "LLaMoConfig", "LossConfig", "ParameterCounts"]

#: fields of the head configs that LLaMoConfig fills itself (they must not be repeated in its head dicts)
_FLOW_HEAD_DERIVED = ("latent_dim", "cond_dim")
_EXIT_HEAD_DERIVED = ("hidden_size",)


@dataclass
class LossConfig:
    """Weights of eq. 7 and the teacher-forcing noise (stage YAMLs set these; defaults are only fallbacks)."""

    lambda_ntp: float = 1.0
    """lambda_1, weight of the next-token cross-entropy on text positions."""
    lambda_end: float = 1.0
    """lambda_2, weight of the exit-head BCE."""
    input_noise_std: float = 0.1
    """Standard deviation of the Gaussian noise added to INPUT latents of generated motion spans in training
    (paper: eta ~ N(0, 0.01), following Pasini et al. 2024). We read N(mu, sigma^2) notation, i.e. variance 0.01
    -> std 0.1; set 0.01 here for the other reading. The flow-matching targets stay clean."""

    def __post_init__(self) -> None:
        for name in ("lambda_ntp", "lambda_end", "input_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class LLaMoConfig:
    """Everything that builds a `LLaMo` (experiments/model/*.yaml)."""

    llm: LLMConfig
    """The base LLM (local folder, ``smollm2``, or a random `LlamaConfig`)."""
    latent_dim: int = 32
    """Width of a motion VAE latent (the VAE's latent_dim)."""
    cond_dim: int = 1536
    """Width of the flow-head condition (the motion projector's output)."""
    mot: bool = True
    """True: Mixture-of-Transformers with a frozen text branch. False: the "w/o MoT" ablation (one shared
    branch, fully fine-tuned)."""
    flow_head: dict[str, Any] = field(default_factory=dict)
    """`FlowHeadConfig` fields except latent_dim/cond_dim (width, depth, timestep_samples, cond_dropout, ...)."""
    exit_head: dict[str, Any] = field(default_factory=dict)
    """`ExitHeadConfig` fields except hidden_size (width, pos_weight, initial_probability)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and teacher-forcing noise."""
    gradient_checkpointing: bool = False
    """Recompute each MoT layer in backward (activation memory for long sequences / big models)."""
    system_prompt: str | None = None
    """System message of every motion sample (text-to-motion, motion-to-text), training and inference alike;
    None: the chat template's own (SmolLM2's inserts a 17-token default). ``""`` keeps only the empty system
    turn, which shortens every sample; text-only chat is not affected."""
    latent_norm: Literal["none", "standardise"] = "none"
    """``none``: the model reads and generates VAE latents as they are. ``standardise``: per channel to zero mean
    and unit variance (`LatentStandardizer`), with statistics fitted on stage 1's training latents; generated
    latents are mapped back before the VAE decodes them."""

    def __post_init__(self) -> None:
        if isinstance(self.llm, dict):
            self.llm = _from_dict(LLMConfig, self.llm, "llm")
        if isinstance(self.loss, dict):
            self.loss = _from_dict(LossConfig, self.loss, "loss")
        for name, value in (("latent_dim", self.latent_dim), ("cond_dim", self.cond_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LLaMoConfig.{name} must be a positive integer, got {value!r}")
        if self.latent_norm not in ("none", "standardise"):
            raise ValueError(f"LLaMoConfig.latent_norm must be 'none' or 'standardise', got {self.latent_norm!r}")
        _check_head_keys(FlowHeadConfig, self.flow_head, _FLOW_HEAD_DERIVED, "flow_head")
        _check_head_keys(ExitHeadConfig, self.exit_head, _EXIT_HEAD_DERIVED, "exit_head")
        self.flow_head_config()  # validates the values too

    def flow_head_config(self) -> FlowHeadConfig:
        """The flow head's config (latent/condition widths from this config)."""
        return FlowHeadConfig(latent_dim=self.latent_dim, cond_dim=self.cond_dim, **self.flow_head)

    def exit_head_config(self, hidden_size: int) -> ExitHeadConfig:
        """The exit head's config for an LLM of width ``hidden_size``."""
        return ExitHeadConfig(hidden_size=hidden_size, **self.exit_head)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLaMoConfig:
        """Build from a plain dict; unknown keys at any level raise ValueError naming them and the valid ones."""
        return _from_dict(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> LLaMoConfig:
        """Read a model YAML (experiments/model/*.yaml)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"model config {p} does not exist (see experiments/model/*.yaml)")
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict) and "model" in data:
            # a LightningCLI overlay (experiments/model/*.yaml): the config sits under model.init_args.core
            data = (data["model"] or {}).get("init_args", {}).get("core")
        if not isinstance(data, dict):
            raise ValueError(f"{p} must hold a mapping of LLaMoConfig fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that `from_dict` turns back into an equal config."""
        return dataclasses.asdict(self)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or cls.__name__!r} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; valid keys: {names}"
        )
    return cls(**data)


def _check_head_keys(cls: type, data: dict[str, Any], derived: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"LLaMoConfig.{where} must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in derived]
    clash = sorted(set(data) & set(derived))
    if clash:
        raise ValueError(f"{where}.{clash[0]} is set by LLaMoConfig itself; remove it from `{where}`")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"unknown config key(s) {[f'{where}.{k}' for k in unknown]}; valid keys: {allowed}")


@dataclass
class ParameterCounts:
    """Parameters per modality (paper Table 7)."""

    text_activated: int
    """Parameters a text token passes through: the whole base LLM (embedding, layers, norm, LM head) and the
    [BOM]/[EOM] rows."""
    motion_activated: int
    """Parameters a motion token passes through: adapter, the motion branch (w/o MoT: the shared layers and
    final norm), projector, flow head and exit head."""
    total: int
    """All distinct parameters of the model."""


class LLaMo(nn.Module):
    """The unified motion-language model (see the module docstring). ``llm`` may be passed pre-built.

    The base model keeps its dtype (``config.llm.dtype``); every other module is float32 (see "Precision" in the
    module docstring).
    """

    def __init__(
        self, config: LLaMoConfig, llm: LlamaForCausalLM | None = None, device: str | torch.device | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self._tokenizer: Any = None  # loaded on first use by `sequence_formatter`
        llm = build_llm(config.llm, device) if llm is None else llm
        self.mot = MoTLlama(llm, enabled=config.mot)
        if config.mot:
            # frozen text branch (after the twins were copied, which must stay trainable): paper §7.2
            llm.requires_grad_(False)
            for param in self.mot.motion_parameters():
                param.requires_grad_(True)
        self.mot.gradient_checkpointing = config.gradient_checkpointing
        hidden = llm.config.hidden_size
        # trainable modules are built in float32 (the default dtype) whatever the base's dtype: fp32 master weights
        with torch.device(device or next(llm.parameters()).device):
            self.added_tokens = AddedTokenRows(llm, num_tokens=2)
            self.adapter = MotionAdapter(config.latent_dim, hidden, eps=llm.config.rms_norm_eps)
            self.projector = MotionProjector(hidden, config.cond_dim, eps=llm.config.rms_norm_eps)
            self.flow_head = FlowHead(config.flow_head_config())
            self.exit_head = ExitHead(config.exit_head_config(hidden))
            # buffers only when used: handoffs of models without standardisation keep their keys
            self.latent_norm = LatentStandardizer(config.latent_dim) if config.latent_norm == "standardise" else None
        for module in (self.added_tokens, self.adapter, self.projector, self.flow_head, self.exit_head):
            module.float()  # also under a non-fp32 torch default dtype (e.g. Lightning's bf16-true init context)

    # -- vocabulary ------------------------------------------------------------------------------------

    @property
    def llm(self) -> LlamaForCausalLM:
        """The base model (text branch)."""
        return self.mot.llm

    @property
    def hidden_size(self) -> int:
        """Width H of the LLM."""
        return int(self.llm.config.hidden_size)

    @property
    def base_vocab_size(self) -> int:
        """V, the base model's vocabulary (embedding rows)."""
        return self.added_tokens.base_vocab_size

    @property
    def bom_id(self) -> int:
        """Token id of [BOM] (= V)."""
        return self.base_vocab_size

    @property
    def eom_id(self) -> int:
        """Token id of [EOM] (= V + 1)."""
        return self.base_vocab_size + 1

    def sequence_formatter(self, chat_template: str | None = None) -> SequenceFormatter:
        """The `SequenceFormatter` for this model: its tokenizer (``config.llm``) and [BOM]/[EOM] ids."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.llm.tokenizer_path)
        return SequenceFormatter(
            self._tokenizer,
            self.bom_id,
            self.eom_id,
            self.config.latent_dim,
            chat_template=chat_template,
            system_prompt=self.config.system_prompt,
        )

    def frozen_prefixes(self) -> list[str]:
        """State-dict prefixes that never train (the base LLM under MoT): a handoff may leave them out."""
        return ["mot.llm."] if self.config.mot else []

    # -- latent space ----------------------------------------------------------------------------------

    def to_model_latents(self, z: Tensor) -> Tensor:
        """VAE latents ``(..., latent_dim)`` -> the latents the model reads and generates (``config.latent_norm``).

        Every motion entering the model from the VAE passes here (training batches, motion-to-text prompts)."""
        return z if self.latent_norm is None else self.latent_norm.normalise(z)

    def to_vae_latents(self, z: Tensor) -> Tensor:
        """The model's latents ``(..., latent_dim)`` -> VAE latents (what the VAE decodes)."""
        return z if self.latent_norm is None else self.latent_norm.denormalise(z)

    # -- forward ---------------------------------------------------------------------------------------

    def embed(self, input_ids: Tensor, motion_mask: Tensor | None = None, latents: Tensor | None = None) -> Tensor:
        """Input embeddings ``(B, T, H)``: text ids through the base embedding (+ [BOM]/[EOM] rows), motion slots
        (``motion_mask``) from ``adapter(latents)``, latents ``(M, latent_dim)`` in row-major slot order."""
        if motion_mask is None:
            return self.added_tokens.embed(input_ids, self.llm.get_input_embeddings())
        if motion_mask.shape != input_ids.shape:
            raise ValueError(
                f"motion_mask {tuple(motion_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
            )
        slots = int(motion_mask.sum())
        if latents is None:
            if slots:
                raise ValueError(f"the sequence has {slots} motion slot(s) but no latents were given")
            latents = torch.zeros(0, self.config.latent_dim, device=input_ids.device)
        if latents.ndim != 2 or latents.shape[-1] != self.config.latent_dim:
            raise ValueError(
                f"motion latents must have shape (M, latent_dim={self.config.latent_dim}), got "
                f"{tuple(latents.shape)}; encode motion with the VAE whose latent_dim matches the model config"
            )
        if latents.shape[0] != slots:
            raise ValueError(f"got {latents.shape[0]} motion latents for {slots} motion slot(s) in motion_mask")
        text_ids = input_ids.masked_fill(motion_mask, 0)  # slot ids are placeholders
        embeds = self.added_tokens.embed(text_ids, self.llm.get_input_embeddings())
        if not slots:
            return embeds
        motion = self.adapter(latents).to(embeds.dtype)  # (M, H): the residual stream is in the base's dtype
        return embeds.masked_scatter(motion_mask[..., None], motion)

    def forward(
        self,
        input_ids: Tensor,
        motion_mask: Tensor | None = None,
        latents: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> MoTOutput:
        """Backbone hidden states ``(B, T, H)`` (each after its modality's final norm) and the cache.

        ``input_ids (B, T)`` (values at motion slots are ignored), ``motion_mask (B, T)`` bool (None: text only),
        ``latents (M, latent_dim)`` for the motion slots; the rest as in `MoTLlama.forward`. Use `text_logits`,
        `flow_condition` and `exit_logits` on (a selection of) the hidden states.
        """
        embeds = self.embed(input_ids, motion_mask, latents)
        routing = None
        if motion_mask is not None and self.config.mot:
            routing = Routing.from_mask(motion_mask, self._frozen_prompt_mask(input_ids, motion_mask))
        return self.mot(
            embeds,
            motion_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            routing=routing,
        )

    def _frozen_prompt_mask(self, input_ids: Tensor, motion_mask: Tensor) -> Tensor | None:
        """``(B, T)`` bool: the tokens before each row's first motion slot, [BOM] or [EOM] when autograd is on and
        the text branch is frozen (MoT), else None. Those tokens read only frozen embeddings and frozen layers
        and attend only to each other, so their hidden states are constants of the trainable weights
        (`Routing.from_mask` runs them without autograd). The [BOM]/[EOM] rows are trainable, hence the cut."""
        if not torch.is_grad_enabled() or any(p.requires_grad for p in self.llm.parameters()):
            return None
        live = motion_mask | (input_ids == self.bom_id) | (input_ids == self.eom_id)
        return live.cumsum(dim=1) == 0

    def text_logits(self, hidden: Tensor) -> Tensor:
        """Logits ``(..., V + 2)``: the base LM head (bit-identical columns) then [BOM], [EOM]."""
        return self.added_tokens.logits(hidden, self.llm.get_output_embeddings())

    def flow_condition(self, hidden: Tensor) -> Tensor:
        """Flow-head condition ``(..., cond_dim)`` from motion hidden states."""
        return self.projector(hidden)

    def exit_logits(self, hidden: Tensor) -> Tensor:
        """Exit logits ``(...)`` ("the motion ends here") from motion hidden states."""
        return self.exit_head(hidden)

    # -- training --------------------------------------------------------------------------------------

    def loss(
        self,
        batch: MotionTextBatch,
        generator: torch.Generator | None = None,
        lambda_ntp: float | None = None,
        lambda_end: float | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 7 on a formatted batch: ``{"loss", "fm", "ntp", "end"}`` (scalars; a term without positions is 0).

        ``lambda_ntp``/``lambda_end`` are the stage's weights (paper Table 1); None falls back to ``config.loss``.

        In training mode, input latents of generated spans get N(0, input_noise_std^2) noise; FM targets are
        the clean latents. ``generator`` seeds the noise, the flow timesteps and the condition dropout.
        """
        check_motion_layout(batch.input_ids, batch.motion_mask, self.bom_id, self.eom_id, batch.attention_mask)
        if batch.latents is None:
            raise ValueError("the batch has no latents; fill them with batch.with_latents(vae latents) first")
        latents = self.to_model_latents(batch.latents)  # FM targets and inputs in the model's latent space
        inputs = latents
        std = self.config.loss.input_noise_std
        if self.training and std > 0 and latents.numel():
            noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype, generator=generator)
            inputs = latents + std * noise * batch.latent_noise_mask[:, None].to(latents.dtype)
        hidden = self(
            batch.input_ids, batch.motion_mask, inputs, attention_mask=batch.attention_mask
        ).hidden_states  # (B, T, H)
        zero = hidden.new_zeros(())

        ntp_positions = batch.labels != IGNORE_INDEX
        if ntp_positions.any():
            logits = self.text_logits(hidden[ntp_positions])  # (N_text, V + 2)
            ntp = F.cross_entropy(logits.float(), batch.labels[ntp_positions])
        else:
            ntp = zero

        if batch.fm_mask.any():
            cond = self.flow_condition(hidden[batch.fm_mask])  # (N_fm, cond_dim)
            fm = self.flow_head.loss(latents[batch.fm_target[batch.fm_mask]], cond, generator=generator)
        else:
            fm = zero

        if batch.end_mask.any():
            end_logits = self.exit_logits(hidden[batch.end_mask])  # (N_end,)
            targets = batch.end_target[batch.end_mask]
            end = self.exit_head.loss(end_logits, targets, torch.ones_like(targets))
        else:
            end = zero

        w_ntp = self.config.loss.lambda_ntp if lambda_ntp is None else lambda_ntp
        w_end = self.config.loss.lambda_end if lambda_end is None else lambda_end
        total = fm + w_ntp * ntp + w_end * end
        return {"loss": total, "fm": fm.detach(), "ntp": ntp.detach(), "end": end.detach()}

    # -- bookkeeping -----------------------------------------------------------------------------------

    def parameter_counts(self) -> ParameterCounts:
        """Text-activated / motion-activated / total parameter counts (paper Table 7)."""

        def count(params: Any) -> int:
            return sum(p.numel() for p in {id(p): p for p in params}.values())

        heads = count(
            [
                *self.adapter.parameters(),
                *self.projector.parameters(),
                *self.flow_head.parameters(),
                *self.exit_head.parameters(),
            ]
        )
        text = count(self.llm.parameters()) + count(self.added_tokens.parameters())
        if self.config.mot:
            motion_branch = count(self.mot.motion_parameters())
        else:
            motion_branch = count([*self.llm.model.layers.parameters(), *self.llm.model.norm.parameters()])
        return ParameterCounts(
            text_activated=text, motion_activated=motion_branch + heads, total=count(self.parameters())
        )
