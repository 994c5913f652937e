"""FID and KID against clean-fid's formulas, on a TorchScript stand-in for its Inception file
(clean-fid's own functions run in tests/test_cleanfid.py).

The real ``inception-2015-12-05.pt`` cannot be fetched here, so a small network with the same
TorchScript interface is scripted and saved under that name in a temporary folder:
``forward(img, return_features=False)`` taking [N, 3, H, W] in [0, 255], casting to float32,
resizing to 299×299 inside and normalising by (x − 128)/128, and a ``layers`` submodule taking the
normalised 299×299 input and returning [N, 2048, 1, 1] (what clean-fid's ``InceptionV3W`` calls
in ``legacy_tensorflow`` and ``clean`` mode respectively).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bench.metrics import assets, compute_metric, make_metric
from bench.metrics.assets import INCEPTION_FILE, INCEPTION_URL, MissingAssetError, find_reference_stats
from bench.metrics.fid import compute_reference_stats
from bench.metrics.inception import InceptionFeatures, quantize_uint8, resize_clean
from bench.metrics.kid import kernel_distance
from bench.metrics.stats import StreamingStats

# TorchScript is the format of clean-fid's Inception file, so the stand-in is scripted too.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")


class _Layers(nn.Module):
    """Random Fourier features of a 23×23 average-pooled image: 2048 features whose covariance is
    full rank (condition ≈ 3e3 on uniform-noise images), unlike a near-linear map of 1587 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 23 * 23, 2048)
        with torch.no_grad():
            self.proj.weight.mul_(20.0)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(x, 13).flatten(1)  # [N, 3·23·23]
        return torch.cos(self.proj(h)).view(-1, 2048, 1, 1)


class _StandInInception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()
        self.output = nn.Linear(2048, 1008)

    def forward(self, img: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        features = self.layers((x - 128) / 128).view(-1, 2048)
        if return_features:
            return features
        logits = self.output(features)
        if no_output_bias:  # the file's IS call (StyleGAN): the softmax without the output layer's bias
            logits = logits - self.output.bias
        return F.softmax(logits, dim=1)



@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """Folder holding a scripted stand-in saved as inception-2015-12-05.pt."""
    torch.manual_seed(123)
    folder = tmp_path_factory.mktemp("inception")
    torch.jit.script(_StandInInception().eval()).save(str(folder / INCEPTION_FILE))
    return folder


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCOREBENCH_CACHE", str(cache))
    return cache


def _images(n: int, seed: int, shift: float = 0.0) -> Tensor:
    """Smooth random 'images' in [0, 1], [n, 3, 32, 32], float64."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    x = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    return (x + shift + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)


def _cleanfid_features(stand_in: Path, x: Tensor, mode: str) -> np.ndarray:
    """clean-fid's calls written out directly: uint8 images → its resize → its network call, float64."""
    net = torch.jit.load(str(stand_in / INCEPTION_FILE)).eval()
    u8 = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # PNG / save_image rounding
    with torch.no_grad():
        if mode == "legacy_tensorflow":  # InceptionV3W(resize_inside=True): base(x, return_features=True)
            return net(u8, return_features=True).view(len(x), 2048).double().numpy()
        out = []
        for im in u8.numpy().transpose(0, 2, 3, 1):  # make_resizer("PIL", False, "bicubic", (299, 299))
            chans = [np.asarray(Image.fromarray(im[:, :, c].astype(np.float32), mode="F")
                                .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
            out.append(np.stack(chans))
        x299 = torch.from_numpy(np.stack(out).astype(np.float32))  # InceptionV3W(resize_inside=False):
        return net.layers.forward((x299 - 128) / 128).view(len(x), 2048).double().numpy()  # layers((x−128)/128)


def _cleanfid_reference(stand_in: Path, gen: Tensor, ref: Tensor, mode: str, trace_sqrt) -> float:
    """clean-fid's FID: np.mean / np.cov of the features, ‖μ₁−μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr sqrtm(Σ₁Σ₂)."""
    f1, f2 = _cleanfid_features(stand_in, gen, mode), _cleanfid_features(stand_in, ref, mode)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt(f1 - mu1, f2 - mu2, s1, s2))


def _trace_sqrt_low_rank(a1, a2, s1, s2) -> float:
    """Tr sqrtm(Σ₁Σ₂) where N < D: Σᵢ = AᵢᵀAᵢ/(Nᵢ−1), so the nonzero eigenvalues of Σ₁Σ₂ are those of
    (A₁A₂ᵀ)(A₁A₂ᵀ)ᵀ/((N₁−1)(N₂−1)), and the trace is the nuclear norm of A₁A₂ᵀ, scaled."""
    del s1, s2
    return np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt((len(a1) - 1) * (len(a2) - 1))


def _trace_sqrt_sqrtm(a1, a2, s1, s2) -> float:
    """clean-fid's own evaluation: scipy.linalg.sqrtm of the product."""
    import scipy.linalg

    del a1, a2
    return float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def _project_fid(stand_in: Path, gen: Tensor, ref: Tensor, mode: str, batch: int = 50) -> tuple[float, dict]:
    ref_path = compute_reference_stats(ref.split(batch), "toy", 32, "train", mode, inception=stand_in,
                                       backend="scorebench")
    return compute_metric("fid", gen.split(batch), dataset="toy", res=32, split="train", mode=mode,
                          inception=stand_in, backend="scorebench", ref_path=ref_path, seeds="0-99")


def test_fid_matches_cleanfid_formulas(stand_in, empty_cache):
    gen, ref = _images(150, 1, shift=0.05), _images(150, 2)
    value, protocol = _project_fid(stand_in, gen, ref, "legacy_tensorflow")
    expected = _cleanfid_reference(stand_in, gen, ref, "legacy_tensorflow", _trace_sqrt_low_rank)
    assert value == pytest.approx(expected, rel=1e-6)
    assert protocol["mode"] == "legacy_tensorflow" and protocol["num_generated"] == protocol["num_reference"] == 150
    assert protocol["feature_network_sha256"] and protocol["reference_file"] == "toy_legacy_tensorflow_train_32.npz"
    assert protocol["quantization"] == "uint8, round" and protocol["seeds"] == "0-99"


def test_clean_mode_statistics_match_cleanfid(stand_in):
    """'clean' differs from the default only before the features, so its statistics are compared
    (the Fréchet step is the one checked above)."""
    x = _images(40, 1)
    net = InceptionFeatures("clean", stand_in, backend="scorebench", batch_size=16)
    ours = StreamingStats()
    for batch in x.split(16):
        ours.update(net(quantize_uint8(batch)))
    ref = _cleanfid_features(stand_in, x, "clean")
    np.testing.assert_allclose(ours.mean, ref.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.covariance, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_fid_matches_cleanfid_formulas_clean_mode(stand_in, empty_cache):
    gen, ref = _images(60, 1, shift=0.05), _images(60, 2)
    value, _ = _project_fid(stand_in, gen, ref, "clean")
    assert value == pytest.approx(_cleanfid_reference(stand_in, gen, ref, "clean", _trace_sqrt_low_rank), rel=1e-6)


@pytest.mark.slow
def test_fid_matches_cleanfid_sqrtm_full_rank(stand_in, empty_cache):
    """Full-rank 2048-d covariances, the trace from scipy.linalg.sqrtm exactly as clean-fid takes it."""
    gen = torch.rand(2200, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = torch.rand(2200, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64) ** 1.2
    value, _ = _project_fid(stand_in, gen, ref, "legacy_tensorflow", batch=200)
    expected = _cleanfid_reference(stand_in, gen, ref, "legacy_tensorflow", _trace_sqrt_sqrtm)
    assert value == pytest.approx(expected, rel=1e-6)


def _fid_noise_curve(stand_in: Path, levels: tuple[float, ...]) -> list[float]:
    ref = _images(120, 5)
    ref_path = compute_reference_stats(ref.split(60), "toy", 32, "train", inception=stand_in, backend="scorebench")
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [compute_metric("fid", (ref + s * noise).clamp(0, 1), inception=stand_in, backend="scorebench",
                           ref_path=ref_path)[0] for s in levels]


@pytest.mark.slow
def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(stand_in, empty_cache):
    """(The fast version of this sanity curve is fd_digits' in test_metrics.py: same Fréchet code.)"""
    fids = _fid_noise_curve(stand_in, (0.0, 0.03, 0.1, 0.3, 1.0))
    assert abs(fids[0]) < 1e-6
    assert all(a < b for a, b in zip(fids, fids[1:]))


def test_features_do_not_depend_on_batching_beyond_float32(stand_in):
    x = quantize_uint8(_images(30, 7))
    whole = InceptionFeatures("legacy_tensorflow", stand_in, backend="scorebench", batch_size=30)(x)
    chunked = InceptionFeatures("legacy_tensorflow", stand_in, backend="scorebench", batch_size=7)(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)  # float32 GEMM rounding differs by shape


def test_quantization_rounds_like_png_or_truncates_like_score_sde():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2, -0.1, 127.6 / 255], dtype=torch.float64)
    assert quantize_uint8(x).tolist() == [0, 1, 0, 255, 255, 0, 128]
    assert quantize_uint8(x, rounding="truncate").tolist() == [0, 0, 0, 255, 255, 0, 127]
    assert quantize_uint8(torch.tensor([-1.0, 1.0]), data_range=(-1, 1)).tolist() == [0, 255]
    with pytest.raises(ValueError, match="non-finite"):
        quantize_uint8(torch.tensor([float("nan")]))


def test_clean_resize_is_pil_bicubic_float():
    x = quantize_uint8(_images(2, 8))
    out = resize_clean(x)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 255


def test_grayscale_is_repeated_to_rgb(stand_in):
    net = InceptionFeatures("legacy_tensorflow", stand_in, backend="scorebench")
    gray = quantize_uint8(_images(3, 9)[:, :1])
    torch.testing.assert_close(net(gray), net(gray.expand(-1, 3, -1, -1)))


def test_kid_matches_cleanfid_formula():
    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(40, 16)), rng.normal(0.3, 1.0, size=(50, 16))
    # clean-fid's loop, written out with its draws from np.random after np.random.seed(0).
    state = np.random.get_state()
    np.random.seed(0)
    n, m, t = 16, 40, 0.0
    for _ in range(10):
        x = gen[np.random.choice(50, m, replace=False)]
        y = ref[np.random.choice(40, m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    np.random.set_state(state)
    assert kernel_distance(ref, gen, num_subsets=10, seed=0) == pytest.approx(t / 10 / m, rel=1e-12)


def test_kid_metric_end_to_end(stand_in, empty_cache):
    ref, gen = _images(40, 10), _images(40, 11, shift=0.1)
    compute_reference_stats(ref.split(20), "toy", 32, "train", inception=stand_in, backend="scorebench", kid=True)
    value, protocol = compute_metric("kid", gen, dataset="toy", res=32, split="train", inception=stand_in,
                                     backend="scorebench", num_subsets=5)
    same, _ = compute_metric("kid", ref, dataset="toy", res=32, split="train", inception=stand_in,
                             backend="scorebench", num_subsets=5)
    assert value > same and protocol["num_reference"] == 40 and protocol["reference_file"].endswith("_kid.npz")


# ---- offline behaviour ---------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


def test_missing_inception_is_a_fast_clear_error(empty_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # clean-fid's own location is /tmp, or the working directory on Windows: point it at the empty tmp_path.
    monkeypatch.setattr(assets.platform, "system", lambda: "Windows")
    start = time.perf_counter()
    with pytest.raises(MissingAssetError) as err:
        make_metric("fid")
    assert time.perf_counter() - start < 0.5
    msg = str(err.value)
    assert INCEPTION_FILE in msg and INCEPTION_URL in msg and str(empty_cache / INCEPTION_FILE) in msg
    assert not empty_cache.exists() and list(tmp_path.iterdir()) == []  # nothing created, nothing partial


def test_missing_reference_stats_is_a_fast_clear_error(stand_in, empty_cache):
    start = time.perf_counter()
    with pytest.raises(MissingAssetError) as err:
        make_metric("fid", dataset="cifar10", res=32, split="train", inception=stand_in)
    assert time.perf_counter() - start < 0.5
    msg = str(err.value)
    name = "cifar10_legacy_tensorflow_train_32.npz"
    assert name in msg and "https://www.cs.cmu.edu/~clean-fid/stats/" + name in msg
    assert str(empty_cache / "stats" / name) in msg
    assert _files(empty_cache) == []
    with pytest.raises(MissingAssetError, match="_kid.npz"):
        make_metric("kid", inception=stand_in)


def test_reference_lookup_uses_the_configured_cache(empty_cache):
    path = empty_cache / "stats" / "cifar10_clean_train_32.npz"
    StreamingStats().update(np.random.default_rng(0).normal(size=(5, 3))).save(path)
    assert find_reference_stats("CIFAR10", 32, "train", "clean") == path
    assert not list(path.parent.glob("*.part"))
    with pytest.raises(ValueError, match="legacy_tensorflow, clean"):
        find_reference_stats("cifar10", 32, "train", "legacy_pytorch")

