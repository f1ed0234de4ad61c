"""MotionStreamer's Causal TAE as a llamo VAE: key map, conversion, strict loading, downstream use, clear errors.

Upstream state dicts are built here from the layer table of ``shared/reference/motionstreamer_interop.md`` §2.7
(independently of :func:`tae_key_map`), and :func:`upstream_forward` recomputes the TAE from those upstream tensors
as §2.2-2.4 describe it (functional convolutions on upstream names), so a wrong block order or a swapped layer in
the map changes numbers even where shapes agree.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from make_args import NO_INSTALL
from torch import Tensor

from llamo.cli import main as llamo_main
from llamo.core.vae import CausalMotionVAE, VAEConfig
from llamo.data.latents import check_vae_latent_dim, load_vae
from llamo.data.llamo_data import LLaMoDataModule
from llamo.data.motionstreamer_tae import TAE_CONFIG, convert_motionstreamer_tae, map_tae_state_dict, tae_key_map
from stageio import read_stage_config

#: small TAE: the layout of the released one (latent 16, predicted variance, 4x down) at width 32, depth 3
SMALL = VAEConfig(latent_dim=16, variance="predicted", width=32)


def upstream_layout(width: int, latent: int, depth: int = 3, down_t: int = 2, feat: int = 272) -> dict[str, tuple]:
    """Key -> shape of ``Causal_HumanTAE.state_dict()`` (reference §2.7, generalised over width/depth/down_t)."""
    w = width
    out: dict[str, tuple] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (c_out, c_in, k), (c_out,)

    out["tae.decode_proj.weight"], out["tae.decode_proj.bias"] = (w, latent), (w,)
    out["tae.encoder.proj.weight"], out["tae.encoder.proj.bias"] = (2 * latent, w), (2 * latent,)
    conv("tae.encoder.model.0.conv", w, feat, 3)
    for i in range(2, 2 + down_t):
        conv(f"tae.encoder.model.{i}.0.conv", w, w, 4)
        for b in range(depth):
            conv(f"tae.encoder.model.{i}.1.model.{b}.conv1", w, w, 3)
            conv(f"tae.encoder.model.{i}.1.model.{b}.conv2", w, w, 1)
    conv(f"tae.encoder.model.{2 + down_t}.conv", w, w, 3)
    conv("tae.decoder.model.0.conv", w, w, 3)
    for i in range(2, 2 + down_t):
        for b in range(depth):
            conv(f"tae.decoder.model.{i}.0.model.{b}.conv1", w, w, 3)
            conv(f"tae.decoder.model.{i}.0.model.{b}.conv2", w, w, 1)
        conv(f"tae.decoder.model.{i}.2.conv", w, w, 3)
    conv(f"tae.decoder.model.{2 + down_t}.conv", w, w, 3)
    conv(f"tae.decoder.model.{4 + down_t}.conv", feat, w, 3)
    return out


def random_upstream(width: int = 32, latent: int = 16, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in upstream_layout(width, latent).items()}


def upstream_forward(sd: dict[str, Tensor], x: Tensor, eps: Tensor, depth: int = 3, down_t: int = 2) -> tuple:
    """MotionStreamer's ``Causal_TAE.forward`` (reference §2.2-2.4) on upstream tensors: (recon, mu, logvar)."""

    def cconv(h: Tensor, name: str, stride: int = 1, dilation: int = 1) -> Tensor:
        weight = sd[f"{name}.weight"]
        pad = (weight.shape[-1] - 1) * dilation + (1 - stride)  # CausalConv1d's left padding
        return F.conv1d(F.pad(h, (pad, 0)), weight, sd[f"{name}.bias"], stride=stride, dilation=dilation)

    def resnet(h: Tensor, name: str) -> Tensor:
        for b in range(depth):  # reverse_dilation: block 0 has the largest dilation (9, 3, 1)
            d = 3 ** (depth - 1 - b)
            inner = cconv(F.relu(h), f"{name}.model.{b}.conv1", dilation=d)
            h = h + F.conv1d(F.relu(inner), sd[f"{name}.model.{b}.conv2.weight"], sd[f"{name}.model.{b}.conv2.bias"])
        return h

    h = F.relu(cconv(x.transpose(1, 2), "tae.encoder.model.0.conv"))
    for i in range(2, 2 + down_t):
        h = resnet(cconv(h, f"tae.encoder.model.{i}.0.conv", stride=2), f"tae.encoder.model.{i}.1")
    h = cconv(h, f"tae.encoder.model.{2 + down_t}.conv").transpose(1, 2)
    mu, logvar = F.linear(h, sd["tae.encoder.proj.weight"], sd["tae.encoder.proj.bias"]).chunk(2, dim=2)
    logvar = logvar.clamp(-30, 20)
    z = mu + torch.exp(0.5 * logvar) * eps
    h = F.linear(z, sd["tae.decode_proj.weight"], sd["tae.decode_proj.bias"]).transpose(1, 2)
    h = F.relu(cconv(h, "tae.decoder.model.0.conv"))
    for i in range(2, 2 + down_t):
        h = resnet(h, f"tae.decoder.model.{i}.0").repeat_interleave(2, dim=-1)
        h = cconv(h, f"tae.decoder.model.{i}.2.conv")
    h = F.relu(cconv(h, f"tae.decoder.model.{2 + down_t}.conv"))
    return cconv(h, f"tae.decoder.model.{4 + down_t}.conv").transpose(1, 2), mu, logvar


@pytest.fixture
def mean_std(tmp_path: Path) -> Path:
    folder = tmp_path / "mean_std"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "Mean.npy", rng.normal(size=272).astype(np.float32))
    np.save(folder / "Std.npy", rng.uniform(0.5, 2.0, size=272).astype(np.float32))
    return folder


@pytest.fixture
def converted(tmp_path: Path, mean_std: Path) -> tuple[Path, dict[str, Tensor]]:
    sd = random_upstream()
    torch.save({"net": sd}, tmp_path / "net_last.pth")
    return convert_motionstreamer_tae(tmp_path / "net_last.pth", tmp_path / "tae", mean_std, config=SMALL), sd


def test_released_layout_maps_one_to_one_on_meta_tensors() -> None:
    """The real-size key names and shapes of reference §2.7: 70 tensors, 76,203,312 parameters, all mapped."""
    with torch.device("meta"):
        upstream = {k: torch.empty(s) for k, s in upstream_layout(1024, 16).items()}
    assert len(upstream) == 70 and sum(t.numel() for t in upstream.values()) == 76_203_312
    # spot checks against the reference table's literal rows
    assert tuple(upstream["tae.encoder.model.0.conv.weight"].shape) == (1024, 272, 3)
    assert tuple(upstream["tae.decoder.model.3.0.model.2.conv2.weight"].shape) == (1024, 1024, 1)
    assert tuple(upstream["tae.decoder.model.6.conv.weight"].shape) == (272, 1024, 3)
    mapped = map_tae_state_dict(upstream, TAE_CONFIG)
    with torch.device("meta"):
        own = CausalMotionVAE(TAE_CONFIG).state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert TAE_CONFIG.width == 1024 and TAE_CONFIG.depth == 3 and TAE_CONFIG.downsample == 4


def test_key_map_is_a_bijection_onto_the_vae() -> None:
    key_map = tae_key_map(SMALL)
    assert set(key_map) == set(upstream_layout(32, 16))
    assert len(set(key_map.values())) == len(key_map) == 70
    assert key_map["tae.encoder.model.2.1.model.0.conv1.weight"] == "encoder.3.0.conv.weight"
    assert key_map["tae.decoder.model.3.2.conv.bias"] == "decoder.7.bias"
    with pytest.raises(ValueError, match="variance='predicted'"):
        tae_key_map(VAEConfig(latent_dim=16, variance="sampled"))


def test_converted_folder_loads_strictly_and_computes_the_upstream_function(
    converted: tuple[Path, dict[str, Tensor]], mean_std: Path
) -> None:
    folder, sd = converted
    meta = read_stage_config(folder)
    assert meta["kind"] == "CausalMotionVAE" and meta["stage"] == "vae" and meta["config"] == SMALL.to_dict()
    for name in ("Mean.npy", "Std.npy"):
        assert (folder / name).read_bytes() == (mean_std / name).read_bytes()
    vae = load_vae(folder)  # strict: every key and shape
    reference = CausalMotionVAE(SMALL).eval()
    reference.load_state_dict(map_tae_state_dict(sd, SMALL), strict=True)

    x = torch.randn(2, 32, 272)
    eps = torch.randn(2, 8, 16)
    with torch.no_grad():
        enc = vae.encode(x)
        z = enc.mu + torch.exp(0.5 * enc.logvar) * eps
        recon = vae.decode(z)
        up_recon, up_mu, up_logvar = upstream_forward(sd, x, eps)
        assert torch.equal(recon, reference.decode(z))  # the folder's VAE = the in-memory mapped VAE
    torch.testing.assert_close(enc.mu, up_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc.logvar, up_logvar, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(recon, up_recon, rtol=1e-5, atol=1e-5)
    assert recon.shape == (2, 32, 272)


def test_latent_width_mismatch_names_both_values_and_the_yaml_key(
    converted: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    folder, _ = converted
    check_vae_latent_dim(folder, 16)  # matching width: fine
    with pytest.raises(ValueError) as err:
        check_vae_latent_dim(folder, 32)
    message = str(err.value)
    assert "latent_dim=16" in message and "latent_dim=32" in message
    assert "model.init_args.core.latent_dim" in message and "data.init_args.vae_dir" in message

    # where the LLaMo stages meet the VAE: the DataModule refuses before it encodes anything
    (tmp_path / "data").mkdir()
    module = LLaMoDataModule(root=str(tmp_path / "data"), vae_dir=str(folder))
    module.formatter = types.SimpleNamespace(latent_dim=32)  # what a latent_dim-32 LLaMo core provides
    with pytest.raises(ValueError, match=r"latent_dim=16 .*latent_dim=32 \(model\.init_args\.core\.latent_dim\)"):
        module.setup("fit")
    assert not (folder / "latent_cache").exists()


def test_wrong_keys_are_listed_in_one_error_naming_the_file(tmp_path: Path, mean_std: Path) -> None:
    sd = random_upstream()
    del sd["tae.encoder.proj.bias"]
    sd["tae.decoder.model.6.conv.weight"] = torch.zeros(271, 32, 3)
    sd["module.extra"] = torch.zeros(1)
    sd["tae.decode_proj.weight"] = sd["tae.decode_proj.weight"].long()
    path = tmp_path / "net_last.pth"
    torch.save({"net": sd}, path)
    with pytest.raises(ValueError) as err:
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL)
    message = str(err.value)
    assert str(path) in message and "4 problem(s)" in message
    for part in (
        "missing key tae.encoder.proj.bias",
        "unexpected key module.extra",
        "shape tae.decoder.model.6.conv.weight: file (271, 32, 3) != expected (272, 32, 3)",
        "tae.decode_proj.weight: a torch.int64 tensor",
    ):
        assert part in message
    assert not (tmp_path / "out").exists()
    # the released width against a small file: named as a config mismatch, not a crash
    torch.save({"net": random_upstream()}, path)
    pattern = r"(?s)width=1024, depth=3, down_t=2 \(its decode_proj suggests width=32, latent_dim=16\).*decode_proj"
    with pytest.raises(ValueError, match=pattern):
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"state_dict": {"core.encoder.0.weight": torch.zeros(1)}, "epoch": 3}, "a Lightning checkpoint"),
        ({"trans": {}}, "text-to-motion transformer"),
        (random_upstream(), "has no 'net' state dict"),  # a bare state dict
        ([torch.zeros(1)], "holds a list"),
    ],
    ids=["lightning", "t2m", "bare", "list"],
)
def test_wrong_file_gives_one_clear_error(tmp_path: Path, mean_std: Path, payload: object, expected: str) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=expected) as err:
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL)
    assert str(path) in str(err.value) and "net_last.pth" in str(err.value)


def test_pickled_objects_need_allow_pickle(tmp_path: Path, mean_std: Path) -> None:
    path = tmp_path / "net_last.pth"
    torch.save({"net": random_upstream(), "args": types.SimpleNamespace(lr=5e-5)}, path)
    with pytest.raises(ValueError, match=r"(?s)net_last\.pth.*full unpickle.*--allow_pickle"):
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL)
    out = convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL, allow_pickle=True)
    assert load_vae(out).config == SMALL


def test_truncated_missing_file_and_bad_mean_std(tmp_path: Path, mean_std: Path) -> None:
    path = tmp_path / "net_last.pth"
    torch.save({"net": random_upstream()}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"net_last\.pth cannot be read: it is truncated or corrupt"):
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL)
    with pytest.raises(FileNotFoundError, match="nope.pth not found"):
        convert_motionstreamer_tae(tmp_path / "nope.pth", tmp_path / "out", mean_std, config=SMALL)
    with pytest.raises(FileNotFoundError, match="Mean.npy not found"):
        convert_motionstreamer_tae(path, tmp_path / "out", tmp_path, config=SMALL)
    np.save(mean_std / "Std.npy", np.zeros(263, dtype=np.float32))
    with pytest.raises(ValueError, match=r"Std\.npy has shape \(263,\)"):
        convert_motionstreamer_tae(path, tmp_path / "out", mean_std, config=SMALL)


def test_command_prints_and_reports_user_errors(tmp_path: Path, mean_std: Path) -> None:
    """``llamo convert motionstreamer-tae`` on a released-size file (zeros: 305 MB), then a wrong file (exit 2)."""
    path = tmp_path / "net_last.pth"
    torch.save({"net": {k: torch.zeros(s) for k, s in upstream_layout(1024, 16).items()}}, path)
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = llamo_main(["convert", "motionstreamer-tae", str(path), "--out", str(tmp_path / "tae"),
                           "--mean_std", str(mean_std)])  # fmt: skip
    assert code == 0
    assert "latent_dim 16, variance predicted, width 1024" in stdout.getvalue()
    assert "70 tensors, 76,203,312 parameters" in stdout.getvalue()
    assert load_vae(tmp_path / "tae").config == TAE_CONFIG
    path.unlink()

    torch.save({"state_dict": {}}, path)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = llamo_main(["convert", "motionstreamer-tae", str(path), "--out", str(tmp_path / "x"),
                           "--mean_std", str(mean_std)])  # fmt: skip
    assert code == 2 and stderr.getvalue().startswith("llamo convert motionstreamer-tae: error: ")
    assert "Lightning checkpoint" in stderr.getvalue()


def _make(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    command = ["make", "--no-print-directory", "-s", *NO_INSTALL, *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_ablation_links_the_converted_tae_and_fails_clearly_without_it(tmp_path: Path) -> None:
    runs, data, tae = tmp_path / "runs", tmp_path / "synth", tmp_path / "tae"
    for sub in ("motion_data", "texts", "split"):
        (data / sub).mkdir(parents=True)
    (data / "split" / "test.txt").write_text("a\n")
    # a stamp newer than pyproject.toml: the sub-makes' `install` is a no-op (`-o install` is not inherited)
    stamp = tmp_path / "installed"
    stamp.write_text("")
    common = [f"RUNS={runs}", f"DEMO_DATA={data}", f"MS_TAE={tae}", "LLAMO=echo FIT", "REUSE_ABLATIONS="]
    common.append(f"STAMP={stamp}")

    missing = _make("ablate-motionstreamer_tae", *common)
    assert missing.returncode == 2 and "FIT" not in missing.stdout
    assert f"MS_TAE={tae}" in missing.stderr and "llamo convert motionstreamer-tae" in missing.stderr

    tae.mkdir()
    for name in ("handoff.safetensors", "config.json", "Mean.npy", "Std.npy"):
        (tae / name).write_bytes(b"")
    done = _make("ablate-motionstreamer_tae", *common)
    assert done.returncode == 0, done.stderr
    run, view = runs / "ablate-motionstreamer_tae", tmp_path / "synth-motionstreamer_tae"
    assert (run / "vae").resolve() == tae.resolve() and "stage vae: linked" in done.stdout
    assert (view / "mean_std").resolve() == tae.resolve() and (view / "split").resolve() == (data / "split").resolve()
    fits = [line for line in done.stdout.splitlines() if line.startswith("FIT fit ")]
    assert len(fits) == 4  # evaluator + stages 1-3; the VAE is the converted one, never trained
    for stage in (1, 2, 3):
        line = next(f for f in fits if f"--handoff.save_to={run}/stage{stage}" in f)
        assert f"experiments/ablations/motionstreamer_tae/stage{stage}.yaml" in line
        assert f"--data.init_args.root={view}" in line and f"--data.init_args.vae_dir={run}/vae" in line
    assert f"FIT eval run {run} --data {view}" in done.stdout
