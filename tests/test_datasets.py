"""Datasets: source values kept (uint8, levels), deterministic splits, scaling, and offline errors."""

from __future__ import annotations

import gzip
import pickle
import tarfile

import numpy as np
import pytest
import torch

from models import datasets
from models.datasets import DATASETS, Dataset, DatasetNotFoundError, load_dataset, read_idx
from tests.conftest import missing


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never download: any call to the download function fails loudly."""

    def refuse(url, dest):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(datasets, "download_file", refuse)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_source_values_and_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.data.dtype == torch.uint8 and train.levels == 17
    assert train.shape == (1, 8, 8) == test.shape
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert int(train.data.max()) == 16 and int(train.data.min()) == 0
    # Deterministic.
    again = load_dataset("digits", "train")
    assert torch.equal(again.data, train.data) and torch.equal(again.labels, train.labels)
    assert train.bits == pytest.approx(np.log2(17))


def test_digits_split_matches_sklearn_ordering():
    from sklearn.datasets import load_digits

    full = torch.from_numpy(load_digits().images.astype(np.uint8))
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    merged = torch.cat([train.data, test.data])[:, 0]
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, full.numpy()))


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_to_model_range_and_back(data_range):
    ds = load_dataset("digits", "test")
    x = ds.to_model_range(data_range=data_range)
    assert x.dtype == torch.float32 and x.shape == ds.data.shape
    assert x.min().item() == data_range[0] and x.max().item() == data_range[1]
    assert torch.equal(ds.from_model_range(x, data_range), ds.data)
    # Noise beyond half a level is rounded away.
    step = (data_range[1] - data_range[0]) / (ds.levels - 1)
    assert torch.equal(ds.from_model_range(x + 0.4 * step, data_range), ds.data)


def test_dequantization_convention():
    """(v + u)/levels in [0, 1), then the scaler (shared/REFERENCE.md §1.6)."""
    ds = load_dataset("digits", "test")
    g = torch.Generator().manual_seed(0)
    unit = ds.to_model_range(data_range=(0.0, 1.0), dequantize=g)
    v = ds.data.float()
    assert bool(((unit * ds.levels - v) >= 0).all()) and bool(((unit * ds.levels - v) < 1).all())
    g = torch.Generator().manual_seed(0)
    centered = ds.to_model_range(data_range=(-1.0, 1.0), dequantize=g)
    torch.testing.assert_close(centered, 2 * unit - 1)


def test_quantized_data_must_be_uint8():
    with pytest.raises(ValueError, match="uint8"):
        Dataset("x", "train", torch.zeros(2, 1, 2, 2), levels=256)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("digits", "val")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_root(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    ds = load_dataset("fashion_mnist", "test", root=tmp_path)
    assert ds.shape == (1, 28, 28) and ds.levels == 256 and ds.data.dtype == torch.uint8
    np.testing.assert_array_equal(ds.data[:, 0].numpy(), images)
    assert ds.labels.tolist() == list(range(5))


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)


def test_fashion_mnist_missing_offline_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", "train", root=tmp_path / "nowhere")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "root=" in msg and "download=True" in msg


def test_fashion_mnist_download_path(tmp_path, monkeypatch):
    """download=True goes through download_file (replaced here by a local writer; no network)."""
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        name = dest.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_idx(dest, np.zeros((2, 28, 28)) if "images" in name else np.zeros(2))
        return dest

    monkeypatch.setattr(datasets, "download_file", fake_download)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "system")
    monkeypatch.setattr(datasets, "default_cache_dir", lambda: tmp_path / "cache")
    ds = load_dataset("fashion_mnist", "test", download=True)
    assert len(ds) == 2 and len(fetched) == 2 and fetched[0].startswith(datasets.FASHION_MNIST_URL)


def test_fashion_mnist_debian_package():
    if not datasets.FASHION_MNIST_DIR.exists():
        missing(f"{datasets.FASHION_MNIST_DIR} not found (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion_mnist", "test")
    assert ds.data.shape == (10000, 1, 28, 28) and ds.data.dtype == torch.uint8 and ds.levels == 256
    assert set(ds.labels.unique().tolist()) == set(range(10))


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _fake_cifar(folder, n=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_from_folder_and_tarball(tmp_path):
    _fake_cifar(tmp_path / "src" / "cifar-10-batches-py")
    for root in (tmp_path / "src", tmp_path / "src" / "cifar-10-batches-py"):
        train = load_dataset("cifar10", "train", root=root)
        assert train.data.shape == (20, 3, 32, 32) and train.levels == 256
        assert load_dataset("cifar10", "test", root=root).data.shape == (4, 3, 32, 32)
    tarball = tmp_path / "tar" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(load_dataset("cifar10", "test", root=tarball)) == 4


def test_cifar10_missing_offline(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cs.toronto.edu.*download=True"):
        load_dataset("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# PNG folder and toys


def test_png_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(
            tmp_path / f"{i:02d}.png"
        )
    train, test = load_dataset("png_folder", "train", tmp_path), load_dataset("png_folder", "test", tmp_path)
    assert train.shape == (1, 6, 6) and len(train) == 18 and len(test) == 2
    assert len(load_dataset("png_folder", "all", tmp_path)) == 20
    with pytest.raises(DatasetNotFoundError, match="png_folder needs root"):
        load_dataset("png_folder", "train", tmp_path / "missing")


@pytest.mark.parametrize("name", ["two_moons", "eight_gaussians", "checkerboard"])
def test_toys(name):
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.data.shape == (10000, 2) and test.data.shape == (2000, 2) and train.levels is None
    assert torch.equal(load_dataset(name, "train").data, train.data)
    assert not torch.equal(train.data[:2000], test.data)
    assert torch.equal(train.to_model_range(), train.data)
    assert train.data.abs().max() < 4


def test_registry_is_a_plain_dict():
    assert isinstance(DATASETS, dict)
    assert {"digits", "fashion_mnist", "cifar10", "png_folder", "two_moons"} <= set(DATASETS)
