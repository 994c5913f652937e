"""Training: tiny digits runs (finite, decreasing loss), checkpoint round trip, exact resume, seeding,
clear errors on bad files, NCSNv2's noise scales, and the shipped models' metadata."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.checkpoint_io import CheckpointError, load_model, read_checkpoint, slim_checkpoint
from models.score import NetworkScore
from models.train import TrainConfig, main, max_pairwise_distance, ncsnv2_num_scales, ncsnv2_ratio, train
from models.unet import SmallUNet, UNetConfig, build_network

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
# Shipped models: file → (dataset, sde kind, time label, data range, shape, levels).
SHIPPED = {
    "digits_vp.pt": ("digits", "vp", "continuous", (-1.0, 1.0), (1, 8, 8), 17),
    "digits_subvp.pt": ("digits", "subvp", "continuous", (-1.0, 1.0), (1, 8, 8), 17),
    "digits_ve.pt": ("digits", "ve", "continuous", (0.0, 1.0), (1, 8, 8), 17),
    "digits_ncsnv2.pt": ("digits", "ve", "smld", (0.0, 1.0), (1, 8, 8), 17),
    "fashion_mnist_vp.pt": ("fashion_mnist", "vp", "continuous", (-1.0, 1.0), (1, 28, 28), 256),
}

TINY = TrainConfig(
    data="digits", sde="vp", steps=12, batch_size=16, lr=2e-3, warmup=1, ch=8,
    log_every=3, checkpoint_every=4, progress=False,
)  # fmt: skip


def _weights(path) -> dict:
    ckpt = read_checkpoint(path)
    return {"ema": ckpt["ema"], "raw": ckpt["raw"]}


def _assert_same_weights(a: dict, b: dict) -> None:
    for kind in ("ema", "raw"):
        assert a[kind].keys() == b[kind].keys()
        for k in a[kind]:
            assert torch.equal(a[kind][k], b[kind][k]), f"{kind}/{k} differs"


# ---------------------------------------------------------------------------------------------
# The network.


def test_unet_shapes_attention_and_config_round_trip():
    cfg = UNetConfig(image_size=28, ch=8, ch_mult=(1, 2, 2), attn_resolutions=(7, 14))
    net = build_network("small_unet", cfg.to_dict())
    assert isinstance(net, SmallUNet) and UNetConfig.from_dict(cfg.to_dict()) == cfg
    x = torch.randn(3, 1, 28, 28)
    out = net(x, torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    rgb = SmallUNet(UNetConfig(in_channels=3, image_size=16, ch=8, ch_mult=(1, 2, 2)))
    assert rgb(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 2.0])).shape == (2, 3, 16, 16)


def test_unet_sigma_scaling_divides_the_output():
    torch.manual_seed(0)
    scaled = SmallUNet(UNetConfig(ch=8, embedding="fourier", sigma_scaling="label"))
    torch.nn.init.normal_(scaled.conv_out.weight)  # the output layer starts at zero
    plain = SmallUNet(UNetConfig(ch=8, embedding="fourier", sigma_scaling="none"))
    plain.load_state_dict(scaled.state_dict())
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 4.0])
    torch.testing.assert_close(scaled(x, sigma), plain(x, sigma) / sigma[:, None, None, None])
    table = SmallUNet(UNetConfig(ch=8, sigma_scaling="table", sigma_min=0.1, sigma_max=10.0, num_scales=3))
    torch.testing.assert_close(table.sigmas, torch.tensor([10.0, 1.0, 0.1]))


def test_unet_config_errors():
    with pytest.raises(ValueError, match="cannot be halved"):
        UNetConfig(image_size=28, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown embedding"):
        UNetConfig(embedding="learned")
    with pytest.raises(ValueError, match="unknown UNetConfig key"):
        UNetConfig.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="unknown network"):
        build_network("ncsnpp", {})


# ---------------------------------------------------------------------------------------------
# NCSNv2 Techniques 1 and 2.


@pytest.mark.parametrize("dim", [64, 784, 3072])
def test_ncsnv2_ratio_satisfies_the_phi_condition(dim):
    gamma = ncsnv2_ratio(dim, 0.5)
    s = math.sqrt(2 * dim)

    def phi(v):
        return 0.5 * (1 + math.erf(v / math.sqrt(2)))

    assert gamma > 1
    assert phi(s * (gamma - 1) + 3 * gamma) - phi(s * (gamma - 1) - 3 * gamma) == pytest.approx(0.5, abs=1e-6)
    # Larger dimensions need closer noise levels.
    assert ncsnv2_ratio(4 * dim) < gamma
    levels = ncsnv2_num_scales(50.0, 0.01, dim)
    assert gamma ** (levels - 1) >= 50.0 / 0.01 > gamma ** (levels - 2)


def test_ncsnv2_ratio_refuses_tiny_dimensions():
    with pytest.raises(ValueError, match="no ratio for dim=2"):
        ncsnv2_ratio(2)


def test_max_pairwise_distance_is_exact_on_small_sets():
    x = torch.randn(50, 3, 2)
    brute = torch.cdist(x.flatten(1).double(), x.flatten(1).double()).max().item()
    assert max_pairwise_distance(x) == pytest.approx(brute)
    assert max_pairwise_distance(x, max_points=10) <= brute


# ---------------------------------------------------------------------------------------------
# Tiny runs.


def test_tiny_run_loss_finite_decreasing_and_checkpoint_round_trip(tmp_path):
    cfg = replace(TINY, steps=30, log_every=5)
    out = train(cfg, tmp_path / "m.pt", command="pytest")
    model = load_model(out)
    assert isinstance(model, NetworkScore)
    prov = model.info["provenance"]
    curve = [loss for _, loss in prov["loss_curve"]]
    assert len(curve) == 6 and all(math.isfinite(v) for v in curve)
    assert curve[-1] < curve[0]
    assert prov["steps"] == 30 and prov["seed"] == 0 and prov["commands"] == ["pytest"]
    assert prov["torch"] == str(torch.__version__) and prov["wall_time_s"] > 0
    assert model.info["dataset"] == "digits" and model.info["levels"] == 17
    assert model.sde.kind == "vp" and model.shape == (1, 8, 8) and model.data_range == (-1.0, 1.0)
    # The loaded network reproduces the stored EMA weights exactly.
    ema = read_checkpoint(out)["ema"]
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, ema[k])
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.isfinite(model(x, t)).all()
    assert not load_model(out, weights="raw").net.state_dict()["conv_in.weight"].equal(ema["conv_in.weight"])


def test_same_seed_same_weights_and_other_seed_differs(tmp_path):
    a = _weights(train(TINY, tmp_path / "a.pt", command="x"))
    b = _weights(train(TINY, tmp_path / "b.pt", command="x"))
    _assert_same_weights(a, b)
    c = _weights(train(replace(TINY, seed=1), tmp_path / "c.pt", command="x"))
    assert not torch.equal(a["raw"]["conv_in.weight"], c["raw"]["conv_in.weight"])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = _weights(train(TINY, tmp_path / "full.pt", command="x"))
    part = tmp_path / "part.pt"
    train(replace(TINY, steps=5), part, command="x")  # stops between checkpoints (every 4)
    assert read_checkpoint(part)["provenance"]["steps"] == 5
    train(TINY, part, resume=True, command="y")
    _assert_same_weights(full, _weights(part))
    prov = read_checkpoint(part)["provenance"]
    assert prov["steps"] == TINY.steps and prov["commands"] == ["x", "y"]
    assert prov["loss_curve"] == read_checkpoint(tmp_path / "full.pt")["provenance"]["loss_curve"]


def test_resume_refuses_a_different_config(tmp_path):
    out = train(replace(TINY, steps=2), tmp_path / "m.pt", command="x")
    with pytest.raises(ValueError, match="config differs.*lr"):
        train(replace(TINY, lr=1e-4), out, resume=True)


@pytest.mark.parametrize("sde, time_label, data_range", [
    ("subvp", "continuous", (-1.0, 1.0)),
    ("ve", "continuous", (0.0, 1.0)),
    ("ncsnv2", "smld", (0.0, 1.0)),
])  # fmt: skip
def test_every_objective_trains_and_loads(tmp_path, sde, time_label, data_range):
    out = train(replace(TINY, sde=sde, steps=3), tmp_path / f"{sde}.pt", command="x")
    model = load_model(out)
    assert model.time_label == time_label and model.data_range == data_range
    kind = "ve" if sde == "ncsnv2" else sde
    assert model.sde.kind == kind
    if kind == "ve":
        assert 3.0 < model.sde.sigma_max < 8.0  # digits in [0, 1]^64: largest pairwise distance
    if sde == "ncsnv2":
        assert model.num_scales == ncsnv2_num_scales(model.sde.sigma_max, 0.01, 64)
        torch.testing.assert_close(
            model.net.sigmas[[0, -1]], torch.tensor([model.sde.sigma_max, 0.01], dtype=torch.float32)
        )
    x, t = torch.rand(3, 1, 8, 8), torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.isfinite(model(x, t)).all()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    main(["--data", "digits", "--sde", "vp", "--steps", "2", "--batch-size", "8", "--ch", "8",
          "--ch-mult", "1,2", "--no-progress", "--out", str(out)])  # fmt: skip
    assert "2 steps" in capsys.readouterr().out
    cfg = read_checkpoint(out)["provenance"]["config"]
    assert cfg["ch"] == 8 and cfg["ch_mult"] == [1, 2] and cfg["progress"] is False


# ---------------------------------------------------------------------------------------------
# Bad files.


def test_corrupted_and_foreign_files_give_clear_errors(tmp_path):
    good = train(replace(TINY, steps=1), tmp_path / "good.pt", command="x")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(truncated)
    foreign = tmp_path / "score_sde.pth"
    torch.save({"model": {}, "ema": {}, "optimizer": {}, "step": 1}, foreign)
    with pytest.raises(CheckpointError, match="official score_sde"):
        load_model(foreign)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_weights_that_do_not_fit_the_config(tmp_path):
    good = train(replace(TINY, steps=1), tmp_path / "good.pt", command="x")
    ckpt = torch.load(good, weights_only=True)
    ckpt["spec"]["network_config"]["ch"] = 16
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match the network config"):
        load_model(tmp_path / "bad.pt")


def test_slim_checkpoint_drops_the_resume_state(tmp_path):
    good = train(replace(TINY, steps=1), tmp_path / "good.pt", command="x")
    slim = slim_checkpoint(good, tmp_path / "slim.pt", keep_raw=False)
    assert read_checkpoint(slim)["train_state"] is None
    assert load_model(slim).info["provenance"]["steps"] == 1
    with pytest.raises(CheckpointError, match="no 'raw' weights"):
        load_model(slim, weights="raw")
    with pytest.raises(ValueError, match="no training state"):
        train(replace(TINY, steps=2), slim, resume=True)


# ---------------------------------------------------------------------------------------------
# Shipped models.


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_metadata(name):
    dataset, kind, time_label, data_range, shape, levels = SHIPPED[name]
    path = WEIGHTS / name
    assert path.exists(), f"shipped model {path} missing"
    assert path.stat().st_size < 10 * 2**20
    model = load_model(path)
    assert model.info["dataset"] == dataset and model.info["levels"] == levels
    assert model.sde.kind == kind and model.time_label == time_label
    assert model.data_range == data_range and model.shape == shape
    prov = model.info["provenance"]
    assert prov["steps"] > 0 and math.isfinite(prov["final_loss"]) and prov["wall_time_s"] > 0
    assert prov["commands"] and prov["torch"]
    x = torch.zeros(2, *shape)
    with torch.no_grad():
        assert torch.isfinite(model(x, torch.tensor([0.01, 1.0], dtype=torch.float64))).all()
