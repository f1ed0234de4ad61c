"""``latent_norm: standardise``: the model works on per-channel standardised VAE latents.

The statistics are fitted on stage 1's training latents, travel in the handoff, and every contact with the VAE maps
between the two spaces: training batches and caption prompts in, generated latents out. The tests check each
boundary against a model without standardisation whose inputs are standardised by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generation import PROMPTS, _parts
from tiny_llamo import LATENT_DIM, stage_workspace
from tiny_llamo import stage_args as _args

from llamo.core.heads import LatentStandardizer
from llamo.core.model import LLaMo
from llamo.data.latents import build_latents
from llamo.inference.t2m import generate_motion
from llamo.inference.text import caption
from llamo.stages.cli import cli_main
from stageio import load_stage_output


def _standardised_copy(model: LLaMo, mean: torch.Tensor, std: torch.Tensor) -> LLaMo:
    """The same weights with ``latent_norm: standardise`` and the given statistics."""
    config = type(model.config).from_dict({**model.config.to_dict(), "latent_norm": "standardise"})
    twin = LLaMo(config, llm=model.llm).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["latent_norm.count", "latent_norm.mean", "latent_norm.std"]
    twin.latent_norm.mean.copy_(mean)
    twin.latent_norm.std.copy_(std)
    twin.latent_norm.count.fill_(1)
    return twin


def _stats(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(LATENT_DIM, generator=gen), 0.2 + torch.rand(LATENT_DIM, generator=gen)


def test_standardiser_fits_inverts_and_refuses_unfitted() -> None:
    norm = LatentStandardizer(4)
    with pytest.raises(ValueError, match="latent_norm: standardise needs latent statistics"):
        norm.normalise(torch.zeros(2, 4))
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn(n, 4, generator=gen) * torch.tensor([0.5, 2.0, 1.0, 0.1]) + 3.0 for n in (5, 9, 2)]
    norm.fit(clips)
    rows = torch.cat(clips).double()
    torch.testing.assert_close(norm.mean.double(), rows.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(norm.std.double(), rows.std(0, correction=0), rtol=1e-6, atol=1e-7)
    assert int(norm.count) == 16
    chunked = LatentStandardizer(4)
    chunked.fit(clips, chunk_clips=2)  # two chunks (14 and 2 rows) merged
    torch.testing.assert_close(chunked.mean, norm.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.std, norm.std, rtol=1e-6, atol=1e-7)
    z = norm.normalise(torch.cat(clips))
    torch.testing.assert_close(z.mean(0), torch.zeros(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(norm.denormalise(z), torch.cat(clips), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no latents"):
        LatentStandardizer(4).fit([torch.zeros(0, 4)])


def test_bad_latent_norm_is_a_clear_error() -> None:
    model, _, _, _, _ = _parts()
    with pytest.raises(ValueError, match="latent_norm must be 'none' or 'standardise', got 'unit'"):
        type(model.config).from_dict({**model.config.to_dict(), "latent_norm": "unit"})


def test_generated_latents_come_back_in_vae_space() -> None:
    model, _, vae, formatter, normalizer = _parts()
    mean, std = _stats()
    twin = _standardised_copy(model, mean, std)
    kw = dict(normalizer=normalizer, formatter=formatter, steps=2, exit_threshold=1.0, min_tokens=0, max_tokens=3)
    plain = generate_motion(model, vae, PROMPTS, generator=torch.Generator().manual_seed(4), **kw)
    standard = generate_motion(twin, vae, PROMPTS, generator=torch.Generator().manual_seed(4), **kw)
    for a, b in zip(plain, standard):
        # the model's own latents (fed back, same weights, same noise) are the same; only the VAE's view differs
        torch.testing.assert_close(b.latents, a.latents * std + mean, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(b.normalized, vae.decode(b.latents[None])[0], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(a.normalized, b.normalized)


def test_caption_prompt_latents_are_standardised() -> None:
    model, _, vae, formatter, normalizer = _parts()
    mean, std = _stats()
    twin = _standardised_copy(model, mean, std)
    latents = 0.5 * torch.randn(6, LATENT_DIM, generator=torch.Generator().manual_seed(1)) + mean
    kw = dict(formatter=formatter, normalizer=normalizer, max_new_tokens=6)
    assert caption(twin, None, latents, **kw) == caption(model, None, (latents - mean) / std, **kw)


def test_training_reads_standardised_latents() -> None:
    model, _, _, _, _ = _parts()
    from tiny_llamo import mixed_batch

    batch = mixed_batch(model)
    mean, std = _stats()
    twin = _standardised_copy(model, mean, std)
    twin.train(), model.train()
    plain = model.loss(batch.with_latents((batch.latents - mean) / std), generator=torch.Generator().manual_seed(2))
    standard = twin.loss(batch, generator=torch.Generator().manual_seed(2))
    for key in ("loss", "fm", "ntp", "end"):
        torch.testing.assert_close(standard[key], plain[key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stage_workspace(tmp_path_factory.mktemp("latent_norm"))


def test_stage1_fits_the_statistics_and_stage2_keeps_them(workspace: dict[str, Path]) -> None:
    flag = "--model.init_args.core.latent_norm=standardise"
    cli_main(_args(workspace, 1, "n1", flag))
    saved = load_stage_output(workspace["root"] / "n1" / "handoff")
    train = build_latents(workspace["vae"], workspace["data"], "train")
    rows = torch.cat([torch.as_tensor(z) for z in train.latents]).double()
    torch.testing.assert_close(saved.state_dict["latent_norm.mean"].double(), rows.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        saved.state_dict["latent_norm.std"].double(), rows.std(0, correction=0), rtol=1e-5, atol=1e-7
    )
    assert int(saved.state_dict["latent_norm.count"]) == len(rows)
    assert not np.allclose(saved.state_dict["latent_norm.std"].numpy(), 1.0)  # a tiny random VAE is not unit

    # stage 2 on other data would fit other statistics: it must keep stage 1's from the handoff instead
    second = cli_main(_args(workspace, 2, "n2", flag, f"--handoff.load_from={workspace['root'] / 'n1' / 'handoff'}"))
    for key in ("mean", "std", "count"):
        assert torch.equal(getattr(second.model.core.latent_norm, key), saved.state_dict[f"latent_norm.{key}"])

    # a stage-1 handoff without standardisation does not silently start a standardised stage 2
    cli_main(_args(workspace, 1, "p1", steps=0))
    plain = workspace["root"] / "p1" / "handoff"
    with pytest.raises(ValueError, match="config latent_norm: saved 'none' != current 'standardise'"):
        cli_main(_args(workspace, 2, "p2", flag, f"--handoff.load_from={plain}"))

    # a handoff written before these fields existed reads as holding their defaults, and only those
    record = json.loads((plain / "config.json").read_text())
    for name in ("latent_norm", "system_prompt"):
        del record["config"][name]
    (plain / "config.json").write_text(json.dumps(record))
    cli_main(_args(workspace, 2, "p3", f"--handoff.load_from={plain}", steps=0))
    with pytest.raises(ValueError, match="config latent_norm: saved 'none' != current 'standardise'"):
        cli_main(_args(workspace, 2, "p4", flag, f"--handoff.load_from={plain}", steps=0))
