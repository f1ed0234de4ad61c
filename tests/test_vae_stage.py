"""VAE stage end to end on a tiny on-disk corpus: experiments/vae.yaml parses and trains, the handoff is written,
the data module's windows, the previews callback, and `llamo eval vae` (perfect reconstruction -> zeros)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from callbacks.handoff import StageHandoff
from callbacks.previews import ReconstructionPreviews
from llamo.cli import main as llamo_main
from llamo.core.vae import CausalMotionVAE, VAEConfig, VAEOutput
from llamo.data.humanml272 import MotionCorpus
from llamo.data.motion_windows import MotionWindowDataModule
from llamo.eval.vae import evaluate_vae
from llamo.motion.normalization import Normalizer, compute_mean_std
from llamo.motion.representation import features_from_motion
from llamo.motion.rotation import axis_angle_to_matrix
from llamo.motion.skeleton import forward_kinematics
from llamo.stages.cli import cli_main
from stageio import load_stage_output

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": 6, "val": 2, "test": 3}


def _clip(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A smooth kinematic clip on the 22-joint skeleton -> (T, 272) features."""
    t = np.linspace(0, 1, frames)[:, None, None]
    freq, phase = rng.uniform(0.5, 2.0, (1, 22, 3)), rng.uniform(0, 2 * np.pi, (1, 22, 3))
    axis_angle = 0.3 * np.sin(2 * np.pi * freq * t + phase)  # (T, 22, 3)
    local_rot = axis_angle_to_matrix(torch.from_numpy(axis_angle))
    root = torch.from_numpy(np.stack([0.5 * t[:, 0, 0], np.full(frames, 0.9), 1.0 * t[:, 0, 0]], -1))
    joints, _ = forward_kinematics(local_rot, root)
    return features_from_motion(joints, local_rot).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    (root / "motion_data" / "vector_272").mkdir(parents=True)
    (root / "texts").mkdir()
    (root / "split").mkdir()
    train_clips, index = [], 0
    for split, count in SPLITS.items():
        ids = []
        for _ in range(count):
            clip_id = f"{index:06d}"
            features = _clip(rng, int(rng.integers(64, 90)))
            np.save(root / "motion_data" / "vector_272" / f"{clip_id}.npy", features)
            (root / "texts" / f"{clip_id}.txt").write_text("a person sways.#a/DET person/NOUN sway/VERB#0.0#0.0\n")
            ids.append(clip_id)
            if split == "train":
                train_clips.append(features)
            index += 1
        (root / "split" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    Normalizer(*compute_mean_std(train_clips)).save(root / "mean_std")
    return root


def test_windows_and_validation_clips(corpus_dir: Path) -> None:
    dm = MotionWindowDataModule(str(corpus_dir), window=32, batch_size=4, windows_per_clip=2, val_max_frames=40)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["motion"].shape == (4, 32, 272) and batch["motion"].dtype == torch.float32
    assert batch["lengths"].tolist() == [32] * 4
    assert len(dm.train_set) == 12
    # each window is a normalised crop of its clip
    corpus = MotionCorpus(corpus_dir, split="train", min_length=1)
    window = dm.train_set[0].numpy()
    raw = corpus.normalizer.denormalise(window.astype(np.float64))
    source = corpus[0].features.astype(np.float64)
    starts = [s for s in range(len(source) - 31) if np.allclose(source[s : s + 32], raw, atol=1e-4)]
    assert starts, "window is not a crop of its clip"
    val = next(iter(dm.val_dataloader()))
    assert val["motion"].shape[1] == 40 and val["lengths"].tolist() == [40, 40]  # cropped to val_max_frames
    with pytest.raises(ValueError, match="--data.window"):
        MotionWindowDataModule(str(corpus_dir), window=30)


def test_fit_writes_handoff_and_eval_prints_a_row(corpus_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out_dir = tmp_path / "vae"
    args = [
        "fit",
        "--config",
        str(REPO / "experiments" / "base.yaml"),
        "--config",
        str(REPO / "experiments" / "vae.yaml"),
        "--model.init_args.vae.width=16",
        "--model.init_args.vae.depth=1",
        "--model.init_args.vae.latent_dim=8",
        "--model.init_args.warmup_steps=1",
        f"--data.init_args.root={corpus_dir}",
        "--data.init_args.batch_size=4",
        "--data.init_args.window=32",
        "--data.init_args.windows_per_clip=1",  # 1 batch per epoch: validation (and previews) run in 4 steps
        "--trainer.max_steps=4",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--handoff.save_to={out_dir}",
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 4
    assert isinstance(next(cb for cb in cli.trainer.callbacks if isinstance(cb, StageHandoff)), StageHandoff)
    saved = load_stage_output(out_dir)
    assert saved.kind == "CausalMotionVAE" and saved.stage == "vae"
    assert VAEConfig(**saved.config) == VAEConfig(width=16, depth=1, latent_dim=8)
    for key, value in cli.model.core.state_dict().items():
        assert torch.equal(saved.state_dict[key], value), key
    metrics = cli.trainer.callback_metrics
    for key in ("val/mpjpe", "val/mpjre", "val/sjpe", "val/loss"):
        assert torch.isfinite(metrics[key]), key
    events = list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert events and b"val_previews/clip0" in events[0].read_bytes(), "no preview image in the TensorBoard log"
    # resuming from the Lightning checkpoint (hparams hold a VAEConfig) continues the same run
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    resumed = cli_main(
        [*args[:-1], f"--handoff.save_to={tmp_path / 'vae2'}", f"--ckpt_path={last}", "--trainer.max_steps=5"]
    )
    assert resumed.trainer.global_step == 5

    capsys.readouterr()
    assert (
        llamo_main(
            [
                "eval",
                "vae",
                "--ckpt",
                str(out_dir),
                "--data",
                str(corpus_dir),
                "--json",
                str(tmp_path / "row.json"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| model | MPJPE ↓ | MPJRE ↓ | sJPE ↓ | T.Down | Comp. ↓ |" in printed
    assert "| 4 | ×0.74% |" in printed  # 8 / (4 * 272)
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["clips"] == SPLITS["test"] and row["t_down"] == 4
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("mpjpe", "mpjre", "sjpe"))


class _Identity(CausalMotionVAE):
    """A 'perfect' VAE: reconstruction = input; checks the evaluation plumbing (masks, de-normalisation)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, **kwargs: object) -> VAEOutput:
        mu = x.new_zeros(x.shape[0], x.shape[1] // 4, self.config.latent_dim)
        return VAEOutput(recon=x.clone(), mu=mu, logvar=None, z=mu)


def test_perfect_reconstruction_scores_zero(corpus_dir: Path) -> None:
    vae = _Identity(VAEConfig(width=4, depth=1, latent_dim=8))
    corpus = MotionCorpus(corpus_dir, split="test", min_length=1)
    result = evaluate_vae(vae, corpus, min_frames=60, max_frames=70, batch_size=2, progress=False)
    assert result.mpjpe == pytest.approx(0, abs=1e-6)
    assert result.mpjre == pytest.approx(0, abs=1e-3)
    assert result.sjpe == pytest.approx(0, abs=1e-6)
    assert result.clips == 3 and result.comp == pytest.approx(8 / (4 * 272))


def test_previews_render_gt_above_reconstruction(corpus_dir: Path) -> None:
    dm = MotionWindowDataModule(str(corpus_dir), window=32, batch_size=2, val_max_frames=40)
    dm.setup("fit")

    class Stage(torch.nn.Module):
        core = CausalMotionVAE(VAEConfig(width=8, depth=1, latent_dim=8))
        normalizer = dm.normalizer

    batch = next(iter(dm.val_dataloader()))
    images = ReconstructionPreviews(num_clips=1, panels=3).render(Stage(), batch)
    assert len(images) == 2 and images[0].dtype == np.uint8 and images[0].ndim == 3 and images[0].shape[2] == 3
    assert images[0].shape[0] > images[0].shape[1] / 3  # two filmstrips stacked
    with pytest.raises(ValueError, match="num_clips"):
        ReconstructionPreviews(num_clips=0)
