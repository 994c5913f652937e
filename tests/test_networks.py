"""Networks and configs: official layouts key for key, FIR resampling, NCSNv2 conventions."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.configs import CONFIGS, build_network, config_names, get_config
from models.networks import NETWORKS, NCSNv2
from models.networks.refinenet import InstanceNorm2dPlus
from models.networks.upfirdn import downsample_2d, fir_kernel_2d, upfirdn2d, upsample_2d, upsample_conv_2d
from models.score import NetworkScore
from tests.conftest import require_fixture

# shared/fixtures/score_sde/arch/<file> -> the config it describes (README section 1).
ARCH_FILES = {
    "ve_cifar10_ncsnpp_continuous.json": "ve/cifar10_ncsnpp_continuous",
    "ve_cifar10_ncsnpp_deep_continuous.json": "ve/cifar10_ncsnpp_deep_continuous",
    "vp_cifar10_ddpmpp_continuous.json": "vp/cifar10_ddpmpp_continuous",
    "vp_cifar10_ddpmpp_deep_continuous.json": "vp/cifar10_ddpmpp_deep_continuous",
    "subvp_cifar10_ddpmpp_continuous.json": "subvp/cifar10_ddpmpp_continuous",
    "vp_ddpm_cifar10_continuous.json": "vp/ddpm/cifar10_continuous",
}
_SDE_CLASSES = {"VESDE": "ve", "VPSDE": "vp", "subVPSDE": "subvp"}


def _arch(file: str) -> dict:
    return json.loads(Path(require_fixture(f"score_sde/arch/{file}")).read_text())


def _meta_network(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):  # layout only: no memory, no init cost
        return build_network(name, **overrides)


def test_every_arch_file_is_covered():
    folder = require_fixture("score_sde/arch/index.json").parent
    files = {p.name for p in folder.glob("*.json")} - {"index.json"}
    assert files == set(ARCH_FILES)


@pytest.mark.parametrize("file", sorted(ARCH_FILES))
def test_state_dict_layout_matches_official(file):
    arch = _arch(file)
    net = _meta_network(ARCH_FILES[file])
    params = dict(net.named_parameters())
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    got = [
        {
            "key": "module." + key,
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
            "kind": "parameter" if key in params else "buffer",
            "trainable": key in params and params[key].requires_grad,
            "ema_index": trainable.index(key) if key in trainable else None,
        }
        for key, value in net.state_dict(keep_vars=True).items()
    ]
    assert got == arch["state_dict"]  # same keys, order, shapes, dtypes, trainable flags and EMA order
    assert len(trainable) == arch["ema"]["num_shadow_params"]
    assert sum(p.numel() for p in net.parameters()) == arch["total_params"]
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == arch["trainable_params"]
    assert sum(b.numel() for b in net.buffers()) == arch["buffer_numel"]
    children = [sum(p.numel() for p in m.parameters()) for m in net.all_modules]
    assert children == [m["n_params"] for m in arch["all_modules"]]


@pytest.mark.parametrize("file", sorted(ARCH_FILES))
def test_config_values_match_official(file):
    arch = _arch(file)
    config = get_config(arch["config_name"])
    official = arch["config"]
    model = official["model"]
    accepted = set(inspect.signature(NETWORKS[config.network]).parameters)
    for key, value in model.items():
        if key in accepted and key in config.arch:  # DDPM ignores embedding_type etc. (unused_config_fields)
            expected = tuple(value) if isinstance(value, list) else value
            assert config.arch[key] == expected, key
    assert config.network == model["name"]
    assert config.ema_rate == model["ema_rate"] and config.num_scales == model["num_scales"]
    data = official["data"]
    assert config.centered == data["centered"]
    assert config.shape == (data["num_channels"], data["image_size"], data["image_size"])
    assert config.data_range == ((-1.0, 1.0) if data["centered"] else (0.0, 1.0))
    sde = arch["sde"]
    expected_sde = {k: v for k, v in sde.items() if k in ("sigma_min", "sigma_max", "beta_min", "beta_max", "T")}
    assert config.sde["kind"] == _SDE_CLASSES[sde["class"]]
    assert {k: config.sde[k] for k in expected_sde} == expected_sde
    assert config.sampling_eps == sde["sampling_eps"] and config.likelihood_eps == sde["likelihood_eps"]
    assert config.make_sde().kind == config.sde["kind"]
    assert {k: config.sampling[k] for k in official["sampling"]} == official["sampling"]
    training = {k: v for k, v in official["training"].items() if k != "sde"}
    assert {k: config.training[k] for k in training} == training
    assert config.time_label == "continuous"  # every arch file is a continuous-time config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_builds_as_a_score_model(name):
    config = get_config(name)
    net = _meta_network(name)
    score = NetworkScore(net, config.make_sde(), config.shape, config.data_range, config.time_label, config.num_scales)
    assert score.shape == config.shape and config.sampling_eps == config.make_sde().eps
    assert net.sigmas.shape == (config.num_scales,) and net.sigmas.dtype == torch.float64


@pytest.mark.parametrize(
    "name, twin",
    [
        ("vp/cifar10_ddpmpp", "vp/cifar10_ddpmpp_continuous"),
        ("subvp/cifar10_ddpmpp_deep_continuous", "vp/cifar10_ddpmpp_deep_continuous"),
        ("vp/ddpm/cifar10", "vp/ddpm/cifar10_continuous"),
        ("subvp/cifar10_ddpm_continuous", "vp/ddpm/cifar10_continuous"),
        ("ve/ncsnv2_cifar10_continuous", "ve/ncsnv2/cifar10"),
    ],
)
def test_configs_without_arch_file_share_their_twins_layout(name, twin):
    a, b = _meta_network(name).state_dict(), _meta_network(twin).state_dict()
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]


def test_discrete_ncsnpp_parameter_count():
    # shared/REFERENCE.md §1.9: positional NCSN++ drops the Fourier W and shrinks the first Linear.
    net = _meta_network("ve/cifar10_ncsnpp")
    assert sum(p.numel() for p in net.parameters()) == 62_693_251


def test_discrete_ve_ncsnpp_outputs_float64_like_the_official_code():
    # shared/REFERENCE.md §1.7: positional NCSN++ divides by the float64 sigmas[label] table.
    config = get_config("ve/cifar10_ncsnpp")
    net = config.build(nf=8, ch_mult=(1, 2), num_res_blocks=1, image_size=16).eval()
    score = NetworkScore(net, config.make_sde(), (3, 16, 16), config.data_range, config.time_label, 1000)
    with torch.no_grad():
        out = score(torch.rand(2, 3, 16, 16), torch.tensor([1.0, 0.5]))
        body = net(torch.rand(1, 3, 16, 16), torch.tensor([0]))
    assert out.dtype == torch.float64 and body.dtype == torch.float64


def test_config_names_and_errors():
    assert get_config("vp/ddpm/cifar10_continuous") is get_config("vp/ddpm_cifar10_continuous")
    assert set(CONFIGS) <= set(config_names())
    with pytest.raises(ValueError, match="unknown model config 'vp/nope'.*ve/cifar10_ncsnpp_continuous"):
        get_config("vp/nope")
    with pytest.raises(ValueError, match="unknown override.*'width'.*nf"):
        build_network("vp/cifar10_ddpmpp_continuous", width=3)


def test_reduced_width_override():
    net = _meta_network("vp/cifar10_ddpmpp_continuous", nf=16)
    assert net.state_dict()["all_modules.2.weight"].shape == (16, 3, 3, 3)


# ---------------------------------------------------------------------------------------------
# FIR resampling.


def _upfirdn_reference(x, k, up, down, p0, p1):
    """Literal definition: zero-stuff, pad, convolve with the flipped kernel, keep every down-th."""
    B, C, H, W = x.shape
    z = torch.zeros(B, C, H * up, W * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, (p0, p1, p0, p1))
    K = k.shape[0]
    out = torch.zeros(B, C, z.shape[2] - K + 1, z.shape[3] - K + 1, dtype=x.dtype)
    kf = torch.flip(k, [0, 1])
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = (z[:, :, i : i + K, j : j + K] * kf).sum((-1, -2))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up, down, pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, -1))])
def test_upfirdn2d_matches_definition(up, down, pad):
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    k = torch.randn(4, 4, dtype=torch.float64)  # asymmetric: checks the flip
    out = upfirdn2d(x, k, up=up, down=down, pad=pad)
    torch.testing.assert_close(out, _upfirdn_reference(x, k, up, down, *pad), rtol=0, atol=1e-12)


def test_fir_resampling_keeps_constants_and_sizes():
    x = torch.full((1, 2, 8, 8), 3.0, dtype=torch.float64)
    up, down = upsample_2d(x), downsample_2d(x)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))


def test_fused_upsample_conv_equals_fir_upsample_then_conv():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)  # asymmetric: checks the weight flip
    k = fir_kernel_2d((1, 3, 3, 1), gain=4.0).double()
    unfused = F.conv2d(upfirdn2d(x, k, up=2, pad=(3, 2)), w)
    torch.testing.assert_close(upsample_conv_2d(x, w), unfused, rtol=0, atol=1e-12)


NCSNPP_VARIANTS = [
    dict(resblock_type="ddpm", fir=True, progressive="residual", progressive_input="input_skip",
         progressive_combine="cat"),
    dict(resblock_type="ddpm", fir=False, progressive="output_skip", progressive_input="residual"),
    dict(resblock_type="biggan", fir=True, progressive="output_skip", progressive_input="input_skip"),
    dict(resblock_type="biggan", fir=False, progressive="residual", embedding_type="positional",
         scale_by_sigma=False, centered=True),
]  # fmt: skip


@pytest.mark.parametrize("variant", NCSNPP_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_ncsnpp_variants_run(variant):
    net = build_network(
        "ve/cifar10_ncsnpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1, image_size=16, **variant
    ).eval()
    x = torch.rand(2, 3, 16, 16)
    labels = torch.tensor([0.5, 20.0]) if variant.get("embedding_type") != "positional" else torch.tensor([3.0, 900.0])
    with torch.no_grad():
        out = net(x, labels)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_ddpm_small_runs():
    net = build_network("vp/ddpm_cifar10_continuous", nf=32, ch_mult=(1, 2), image_size=16).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="multiple of num_groups=32"):
        build_network("vp/ddpm_cifar10_continuous", nf=16)


# ---------------------------------------------------------------------------------------------
# NCSNv2.

NCSNV2_SMALL = [
    ("ve/ncsnv2_digits_continuous", 8),
    ("ve/ncsnv2_fashion_mnist_continuous", 28),
    ("ve/ncsnv2_cifar10", 32),
]


@pytest.mark.parametrize("name, size", NCSNV2_SMALL)
def test_ncsnv2_shapes_and_sigma_conditioning(name, size):
    config = get_config(name)
    net = config.build(nf=8).eval()
    C = config.shape[0]
    assert config.shape[1:] == (size, size)
    x = torch.rand(3, C, size, size)
    sigma = torch.tensor([0.05, 1.0, 3.0])
    with torch.no_grad():
        out = net(x, sigma)
        out_other = net(x, 2 * sigma)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # Technique 3: s(x, σ) = f(x)/σ, so σ·s does not depend on σ.
    torch.testing.assert_close(out * sigma[:, None, None, None], out_other * 2 * sigma[:, None, None, None])


def test_ncsnv2_integer_labels_index_the_sigma_table():
    net = get_config("ve/ncsnv2_digits_continuous").build(nf=8).eval()
    x = torch.rand(2, 1, 8, 8)
    idx = torch.tensor([0, 20])
    with torch.no_grad():
        by_index = net(x, idx)
        by_sigma = net(x, net.sigmas[idx].float())
    assert abs(net.sigmas[0].item() - 5.0) < 1e-12 and abs(net.sigmas[-1].item() - 0.01) < 1e-12  # descending
    torch.testing.assert_close(by_index, by_sigma)
    assert by_index.dtype == torch.float32


def test_ncsnv2_is_a_ve_continuous_score_model():
    config = get_config("ve/ncsnv2_digits_continuous")
    net = config.build(nf=8)
    score = NetworkScore(net, config.make_sde(), config.shape, config.data_range, config.time_label)
    x = torch.rand(2, *config.shape)
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        expected = net(x, config.make_sde().marginal(t)[1])
        torch.testing.assert_close(score(x, t), expected)


def test_ncsnv2_dilated_stages_keep_resolution():
    net = NCSNv2(nf=4, image_size=32)
    sizes = []
    for stage in (net.res1, net.res2, net.res3, net.res4):
        stage[-1].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32), torch.tensor([1.0]))
    assert sizes == [32, 16, 16, 16]


def test_instance_norm_plus_restores_channel_means():
    norm = InstanceNorm2dPlus(4)
    with torch.no_grad():
        norm.alpha.fill_(1.0), norm.gamma.fill_(1.0)
    x = torch.randn(2, 4, 5, 5) + torch.arange(4.0)[None, :, None, None]
    means = x.mean((2, 3))
    expected = (means - means.mean(1, keepdim=True)) / (means.var(1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(norm(x).mean((2, 3)), expected, atol=1e-5, rtol=1e-5)
