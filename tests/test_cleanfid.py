"""clean-fid's own code (0.1.35, installed by the test extra) against the project's FID and KID.

Same PNG files, same stand-in network, both sides: clean-fid reads the folders (its
``get_folder_features`` / ``compute_fid``: PIL reading, its ``build_resizer`` for the mode,
``ToTensor``, its ``InceptionV3W`` wrapper, ``np.mean`` / ``np.cov``, its ``frechet_distance`` with
``scipy.linalg.sqrtm`` and its ``kernel_distance``); the project gets the same images as uint8
tensors. clean-fid imports under the test-only torchvision stand-in (tests/torchvision_stand_in.py).

The stand-in network has clean-fid's TorchScript interface (``forward(img, return_features)`` on
[0, 255] images and a ``layers`` submodule on normalised 299×299 input, both 2048 features): random
Fourier features of an 8×8 average-pooled image, cheap enough that 2 × 2100 images (full-rank 2048-d
covariances, where ``sqrtm`` is accurate) take seconds.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bench.metrics import compute_metric
from bench.metrics.assets import INCEPTION_FILE
from bench.metrics.fid import compute_reference_stats
from bench.metrics.inception import InceptionFeatures
from bench.metrics.kid import kernel_distance
from tests.torchvision_stand_in import torchvision_stand_in

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:cleanfid"),  # its sqrtm(disp=False)
]
CPU = torch.device("cpu")
BATCH = 100  # images per network call, the same on both sides (same GEMM shapes, same float32 bits)


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 2048)
        with torch.no_grad():
            self.proj.weight.mul_(8.0)

    def forward(self, x: Tensor) -> Tensor:  # normalised image [N, 3, H, W] → [N, 2048, 1, 1]
        return torch.cos(self.proj(F.adaptive_avg_pool2d(x, 8).flatten(1))).view(-1, 2048, 1, 1)


class _StandInInception(nn.Module):
    """[0, 255] images at any size → 2048 features (the real file resizes to 299×299 inside; this
    one pools, which is all a stand-in needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        del return_features  # features are the only output clean-fid asks for
        return self.layers((img.to(torch.float32) - 128) / 128).view(-1, 2048)


@pytest.fixture(scope="module")
def cleanfid():
    with torchvision_stand_in():
        import cleanfid.fid
        import cleanfid.inception_torchscript

        yield types.SimpleNamespace(fid=cleanfid.fid, InceptionV3W=cleanfid.inception_torchscript.InceptionV3W)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    torch.manual_seed(321)
    folder = tmp_path_factory.mktemp("inception")
    torch.jit.script(_StandInInception().eval()).save(str(folder / INCEPTION_FILE))
    return folder


def _write_pngs(folder: Path, n: int, seed: int, shift: float = 0.0) -> Tensor:
    """n smooth random RGB 32×32 PNGs in ``folder``; returns them as uint8 [n, 3, 32, 32] in file order."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64), size=(32, 32), mode="bilinear")
    x = (low + shift + 0.1 * torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    u8 = (x * 255 + 0.5).floor().to(torch.uint8)
    folder.mkdir(parents=True)
    for i, im in enumerate(u8.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(folder / f"{i:05d}.png")  # clean-fid reads files sorted by name
    return u8


@pytest.fixture(scope="module")
def large_sets(tmp_path_factory) -> dict:
    """2100 generated vs 2100 reference images: full-rank 2048-d covariances."""
    root = tmp_path_factory.mktemp("large")
    return {"gen": _write_pngs(root / "gen", 2100, 1, shift=0.05), "ref": _write_pngs(root / "ref", 2100, 2),
            "gen_dir": str(root / "gen"), "ref_dir": str(root / "ref")}


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("small")
    return {"gen": _write_pngs(root / "gen", 60, 3, shift=0.1), "ref": _write_pngs(root / "ref", 50, 4),
            "gen_dir": str(root / "gen"), "ref_dir": str(root / "ref")}


def _cleanfid_features(cleanfid, stand_in: Path, folder: str, mode: str) -> np.ndarray:
    """clean-fid's folder pipeline: PIL read → build_resizer(mode) → ToTensor → InceptionV3W."""
    net = cleanfid.InceptionV3W(str(stand_in), download=False, resize_inside=mode == "legacy_tensorflow").eval()
    return cleanfid.fid.get_folder_features(folder, net, num_workers=0, batch_size=BATCH, device=CPU, mode=mode,
                                            verbose=False)


def _project_fid(stand_in: Path, gen: Tensor, ref: Tensor, backend: str) -> tuple[float, dict]:
    ref_path = compute_reference_stats(ref.split(BATCH), "toy", 32, "train", inception=stand_in, backend=backend)
    return compute_metric("fid", gen.split(BATCH), dataset="toy", res=32, split="train", inception=stand_in,
                          backend=backend, ref_path=ref_path, batch_size=BATCH)


@pytest.mark.parametrize("mode", ["legacy_tensorflow", "clean"])
def test_features_are_cleanfids_bit_for_bit(cleanfid, stand_in, small_sets, mode):
    """Resize included: clean-fid's folder pipeline and the project's, on the same files, give the same
    float32 features, whichever backend the project uses."""
    theirs = _cleanfid_features(cleanfid, stand_in, small_sets["gen_dir"], mode)
    for backend in ("scorebench", "cleanfid"):
        net = InceptionFeatures(mode, stand_in, backend=backend, batch_size=BATCH)
        assert net.backend == backend
        np.testing.assert_array_equal(net(small_sets["gen"]).numpy(), theirs)


def test_fid_equals_cleanfid_compute_fid(cleanfid, stand_in, large_sets, tmp_path, monkeypatch):
    """The project's FID against clean-fid's ``compute_fid`` on two folders (full-rank covariances).

    clean-fid keeps the means of the float32 features in float32 (``np.mean``, then ``diff.dot(diff)``
    in float32) and takes everything else in float64 (``np.cov`` converts; its ``sqrtm`` of the
    product); the project accumulates in float64. The only difference allowed is therefore the change
    of ‖μ₁ − μ₂‖² between clean-fid's float32 term and the float64 one, recomputed from clean-fid's
    own features exactly as it computes it; after that the two agree to float64 round-off."""
    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path / "cache"))
    net = cleanfid.InceptionV3W(str(stand_in), download=False, resize_inside=True).eval()
    theirs = cleanfid.fid.compute_fid(large_sets["gen_dir"], large_sets["ref_dir"], mode="legacy_tensorflow",
                                      custom_feat_extractor=net, num_workers=0, batch_size=BATCH, device=CPU,
                                      verbose=False)
    ours, protocol = _project_fid(stand_in, large_sets["gen"], large_sets["ref"], "scorebench")
    f_gen, f_ref = (_cleanfid_features(cleanfid, stand_in, large_sets[k], "legacy_tensorflow")
                    for k in ("gen_dir", "ref_dir"))
    for f in (f_gen, f_ref):
        assert f.dtype == np.float32 and np.linalg.matrix_rank(np.cov(f, rowvar=False)) == 2048
    d32 = np.mean(f_gen, axis=0) - np.mean(f_ref, axis=0)  # clean-fid's means (float32)
    d64 = f_gen.astype(np.float64).mean(0) - f_ref.astype(np.float64).mean(0)
    mean_term = float(d32.dot(d32)) - float(d64 @ d64)  # clean-fid's float32 term − the float64 one
    assert protocol["frechet"] == "scorebench eigh (float64)" and protocol["num_generated"] == 2100
    # Measured (2026-12-01): 1.0e-14 relative after the mean term, 5.7e-10 before it (FID 407.97);
    # tolerances 9.7× and 8.8× those.
    assert ours == pytest.approx(theirs - mean_term, rel=1e-13, abs=0)
    assert abs(ours - theirs) <= 5e-9 * theirs


def test_cleanfid_backend_fid_equals_eigh_fid(cleanfid, stand_in, large_sets, tmp_path, monkeypatch):
    """``backend='cleanfid'`` (clean-fid's InceptionV3W and frechet_distance inside the project's
    streaming statistics) against the project's own eigh Fréchet distance, full rank."""
    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path / "cache"))
    via_cleanfid, protocol = _project_fid(stand_in, large_sets["gen"], large_sets["ref"], "cleanfid")
    ours, _ = _project_fid(stand_in, large_sets["gen"], large_sets["ref"], "scorebench")
    assert protocol["backend"] == "cleanfid" and protocol["frechet"] == "cleanfid.fid.frechet_distance"
    assert via_cleanfid == pytest.approx(ours, rel=5e-14, abs=0)  # measured 6.7e-15 (sqrtm vs eigh); 7.5×


def test_kid_equals_cleanfid_kernel_distance(cleanfid, stand_in, small_sets, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path / "cache"))
    f_gen, f_ref = (_cleanfid_features(cleanfid, stand_in, small_sets[k], "legacy_tensorflow")
                    for k in ("gen_dir", "ref_dir"))

    def theirs(ref, gen):  # compute_kid(fdir_ref, fdir_gen) calls kernel_distance(feats_ref, feats_gen)
        state = np.random.get_state()
        np.random.seed(0)
        try:
            return cleanfid.fid.kernel_distance(ref, gen)
        finally:
            np.random.set_state(state)

    # The estimator itself, in float64 on both sides, the same subsets from the same seed (measured: equal
    # to the last bit; 1e-12 allows a different summation order).
    assert kernel_distance(f_ref, f_gen, seed=0) == pytest.approx(
        theirs(f_ref.astype(np.float64), f_gen.astype(np.float64)), rel=1e-12, abs=0)
    # The metric end to end: with backend='cleanfid' it is clean-fid's float32 computation exactly;
    # the project's own backend sums in float64 (measured 1.8e-6 relative from clean-fid's float32 sums;
    # 1e-5 is 5.7× that).
    kid32 = theirs(f_ref, f_gen)
    for backend in ("cleanfid", "scorebench"):
        compute_reference_stats(small_sets["ref"].split(BATCH), "toy", 32, "train", inception=stand_in,
                                backend=backend, kid=True)
        value, protocol = compute_metric("kid", small_sets["gen"], dataset="toy", res=32, split="train",
                                         inception=stand_in, backend=backend, batch_size=BATCH, subset_seed=0)
        assert protocol["num_reference"] == 50 and protocol["num_generated"] == 60
        if backend == "cleanfid":
            assert value == kid32
        else:
            assert value == pytest.approx(kid32, rel=1e-5)
