"""Datasets for training and evaluating small score models, with the source values kept for bpd.

Every loader returns a :class:`Dataset` whose ``data`` holds the *source* values: uint8 grey levels
``0 .. levels−1`` for images ([N, C, H, W]; digits have 17 levels 0..16, 8-bit images 256), float32
points for the 2-D toy distributions ([N, 2], ``levels=None``). Mapping to a model's data range is
explicit (:meth:`Dataset.to_model_range`), as is the uniform dequantization of the likelihood
convention (shared/REFERENCE.md §1.6: ``(pixel + u) / levels``, then the scaler).

Splits are deterministic: the official train/test files where a dataset has them (Fashion-MNIST,
CIFAR-10), otherwise a fixed seeded permutation (digits, PNG folders) or fixed seeds (toys).

Sources, in order: an explicit ``root`` path, then the usual system location (Debian's
``dataset-fashion-mnist`` package), then a download when ``download=True``. Tests never download;
offline, a missing dataset raises :class:`DatasetNotFoundError` naming how to get it.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DATASETS",
    "load_dataset",
    "download_file",
    "FASHION_MNIST_DIR",
    "default_cache_dir",
]

SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and was not downloaded; the message says how to get it."""


def default_cache_dir() -> Path:
    """Where downloads go: ``~/.cache/scorebench/data``."""
    return Path.home() / ".cache" / "scorebench" / "data"


def download_file(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` atomically (write a ``.part`` file, then rename). Needs internet."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:  # noqa: S310
        while chunk := response.read(1 << 20):
            f.write(chunk)
    part.replace(dest)
    return dest


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset, holding its source values.

    Attributes:
        name: registry name ('digits', 'fashion_mnist', ...).
        split: 'train' or 'test'.
        data: uint8 [N, C, H, W] grey levels 0..levels−1 for images; float32 [N, D] for toys.
        levels: number of grey levels of the source values (17 for digits, 256 for 8-bit images);
            None for continuous (toy) data.
        labels: class labels [N] (long) where the dataset has them, else None.
    """

    name: str
    split: str
    data: Tensor
    levels: int | None
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.levels is not None and self.data.dtype != torch.uint8:
            raise ValueError(f"{self.name}: quantized data must be uint8, got {self.data.dtype}")
        if self.labels is not None and len(self.labels) != len(self.data):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.data)} samples")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 8, 8)."""
        return tuple(self.data.shape[1:])

    @property
    def bits(self) -> float | None:
        """log2(levels): the bits per dimension of the uniform dequantization's scale (8 for 8-bit)."""
        return None if self.levels is None else math.log2(self.levels)

    def to_model_range(
        self,
        x: Tensor | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
        dequantize: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Map source values to the model's data range.

        Args:
            x: source values (defaults to all of ``data``), e.g. a batch ``data[idx]``.
            data_range: (lo, hi): (−1, 1) for centered models, (0, 1) for uncentered ones.
            dequantize: if given, uniform dequantization ``(v + u)/levels`` with u ~ U[0, 1) drawn
                from this generator (the likelihood convention); otherwise ``v/(levels − 1)``, so
                the extreme levels map exactly to lo and hi.
            dtype: floating dtype of the result.

        Returns:
            A float tensor shaped like x. Toy data (levels None) is returned unchanged (as dtype).
        """
        x = self.data if x is None else x
        if self.levels is None:
            return x.to(dtype)
        v = x.to(dtype)
        if dequantize is not None:
            u = torch.rand(v.shape, generator=dequantize, dtype=dtype)
            unit = (v + u) / self.levels
        else:
            unit = v / (self.levels - 1)
        lo, hi = data_range
        return lo + (hi - lo) * unit

    def from_model_range(self, x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
        """Inverse of :meth:`to_model_range` (no dequantization): clip and round to uint8 source levels."""
        if self.levels is None:
            return x
        lo, hi = data_range
        unit = ((x - lo) / (hi - lo)).clamp(0, 1)
        return torch.round(unit * (self.levels - 1)).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Helpers.


def _check_split(name: str, split: str, allowed: tuple[str, ...] = SPLITS) -> None:
    if split not in allowed:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of: {', '.join(allowed)}")


def _seeded_split(n: int, split: str, test_fraction: float, seed: int = 0) -> Tensor:
    """Indices of a split from a fixed permutation (the last ``test_fraction`` is the test split)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    idx = perm[: n - n_test] if split == "train" else perm[n - n_test :]
    return idx.sort().values


# ----------------------------------------------------------------------------------------------
# scikit-learn digits: 1797 images, 1×8×8, 17 grey levels (0..16), shipped with scikit-learn.

DIGITS_TEST_FRACTION = 0.2


def load_digits(split: str = "train", root: str | Path | None = None, download: bool = False) -> Dataset:
    """scikit-learn's digits (shipped in the package). Split: fixed permutation (seed 0), 20 % test.

    Args:
        split: 'train' (1438 images) or 'test' (359 images).
        root: unused (the data ships with scikit-learn).
        download: unused.
    """
    del root, download
    _check_split("digits", split)
    images, labels = _sklearn_digits()
    idx = _seeded_split(len(images), split, DIGITS_TEST_FRACTION)
    return Dataset("digits", split, images[idx].contiguous(), levels=17, labels=labels[idx])


@functools.cache
def _sklearn_digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits [1797, 1, 8, 8] uint8 (0..16) and labels, parsed once per process."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1), torch.from_numpy(bunch.target.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST: 70000 images, 1×28×28, 8-bit, gzipped IDX files.


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({data.size} bytes for shape {dims})")
    return data.reshape(dims)


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = False
) -> Dataset:
    """Fashion-MNIST, official split (60000 train / 10000 test), 1×28×28, 256 levels.

    Looked up in ``root`` (a folder holding the four ``*-idx*-ubyte.gz`` files), else in
    /usr/share/datasets/fashion-mnist (Debian: ``apt-get install dataset-fashion-mnist``), else
    downloaded into ``~/.cache/scorebench/data/fashion-mnist`` when ``download=True``.
    """
    _check_split("fashion_mnist", split)
    image_file, label_file = FASHION_MNIST_FILES[split]
    candidates = (
        [Path(root)] if root is not None else [FASHION_MNIST_DIR, default_cache_dir() / "fashion-mnist"]
    )
    folder = next((c for c in candidates if (c / image_file).exists() and (c / label_file).exists()), None)
    if folder is None and download:
        folder = candidates[-1]
        for name in (image_file, label_file):
            download_file(FASHION_MNIST_URL + name, folder / name)
    if folder is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST ({split}) not found in {', '.join(str(c) for c in candidates)}. Install Debian's "
            f"package (`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DIR}), pass root= a "
            f"folder holding {image_file} and {label_file}, or pass download=True to fetch them from "
            f"{FASHION_MNIST_URL}"
        )
    images = torch.from_numpy(read_idx(folder / image_file).copy()).unsqueeze(1)  # [N, 1, 28, 28]
    labels = torch.from_numpy(read_idx(folder / label_file).astype(np.int64))
    return Dataset("fashion_mnist", split, images, levels=256, labels=labels)


# ----------------------------------------------------------------------------------------------
# CIFAR-10: 60000 images, 3×32×32, 8-bit, the python-pickle tarball layout.


def load_cifar10(split: str = "train", root: str | Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-10, official split (50000 / 10000), 3×32×32, 256 levels, from the python pickle batches.

    ``root`` may be the ``cifar-10-batches-py`` folder, a folder containing it, or the
    ``cifar-10-python.tar.gz`` tarball itself. Without root, ``~/.cache/scorebench/data`` is tried,
    and with ``download=True`` the tarball is fetched there from the official URL.
    """
    _check_split("cifar10", split)
    base = Path(root) if root is not None else default_cache_dir()
    if base.is_file() and base.name.endswith(".tar.gz"):
        if not (base.parent / CIFAR10_DIRNAME / "test_batch").exists():
            with tarfile.open(base) as tar:
                tar.extractall(base.parent, filter="data")
        base = base.parent
    folder = base if (base / "data_batch_1").exists() else base / CIFAR10_DIRNAME
    if not (folder / "test_batch").exists() and download:
        tarball = download_file(CIFAR10_URL, base / "cifar-10-python.tar.gz")
        with tarfile.open(tarball) as tar:
            tar.extractall(base, filter="data")
        folder = base / CIFAR10_DIRNAME
    if not (folder / "test_batch").exists():
        raise DatasetNotFoundError(
            f"CIFAR-10 not found in {base} (expected {CIFAR10_DIRNAME}/data_batch_1..5 and test_batch). "
            f"Pass root= the extracted folder or the tarball from {CIFAR10_URL}, or download=True"
        )
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 (the official format is a pickle)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Dataset(
        "cifar10",
        split,
        torch.from_numpy(np.concatenate(images)),
        256,
        torch.from_numpy(np.concatenate(labels)),
    )


# ----------------------------------------------------------------------------------------------
# A folder of PNGs (all of one size and mode).

PNG_TEST_FRACTION = 0.1


def load_png_folder(split: str = "train", root: str | Path | None = None, download: bool = False) -> Dataset:
    """Every ``*.png`` under ``root`` (sorted), 8-bit grey or RGB; split: seeded permutation, 10 % test.

    Args:
        split: 'train', 'test' or 'all'.
        root: the folder (required).
        download: unused.
    """
    del download
    _check_split("png_folder", split, SPLITS + ("all",))
    if root is None or not Path(root).is_dir():
        raise DatasetNotFoundError(f"png_folder needs root= an existing folder of PNG files, got {root!r}")
    files = sorted(Path(root).rglob("*.png"))
    if not files:
        raise DatasetNotFoundError(f"no *.png files under {root}")
    from PIL import Image

    arrays = []
    for f in files:
        with Image.open(f) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB").convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"png_folder {root}: images differ in shape/mode: {sorted(shapes)}")
    images = torch.from_numpy(np.stack(arrays))
    if split != "all":
        images = images[_seeded_split(len(images), split, PNG_TEST_FRACTION)]
    return Dataset("png_folder", split, images.contiguous(), levels=256)


# ----------------------------------------------------------------------------------------------
# 2-D toy distributions: float points, train drawn with seed 0, test with seed 1.

TOY_SIZES = {"train": 10000, "test": 2000}


def _two_moons(n: int, g: torch.Generator) -> Tensor:
    half = n // 2
    theta = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([theta.cos(), theta.sin()], 1)
    lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
    x = torch.cat([upper[:half], lower[half:]])
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.5  # centred, roughly in [−2, 2]


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    k = torch.randint(0, 8, (n,), generator=g)
    return centres[k] + 0.1 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # 4×4 board on [−2, 2]², points uniform on the 8 dark squares.
    col = torch.randint(0, 4, (n,), generator=g)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
    x = col + torch.rand(n, generator=g) - 2
    y = row + torch.rand(n, generator=g) - 2
    return torch.stack([x, y], 1)


TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "two_moons": _two_moons,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
}


def _toy_loader(toy: str) -> Callable[..., Dataset]:
    def load(split: str = "train", root: str | Path | None = None, download: bool = False) -> Dataset:
        del root, download
        _check_split(toy, split)
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return Dataset(toy, split, TOYS[toy](TOY_SIZES[split], g).float(), levels=None)

    load.__doc__ = f"2-D toy '{toy}': {TOY_SIZES} float32 points, train seed 0, test seed 1."
    return load


# ----------------------------------------------------------------------------------------------
# Registry.

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "png_folder": load_png_folder,
    **{toy: _toy_loader(toy) for toy in TOYS},
}


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> Dataset:
    """Load one split of a registered dataset.

    Args:
        name: a key of :data:`DATASETS`.
        split: 'train' or 'test' ('all' also for png_folder).
        root: where the files are (dataset-specific; see each loader).
        download: fetch missing files when online (never done by default).

    Raises:
        ValueError: unknown name or split.
        DatasetNotFoundError: the files are missing; the message says how to get them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    return DATASETS[name](split, root=root, download=download)
