"""Small CNN classifiers whose penultimate features define ``fd_digits`` and ``fd_fashion``.

Input convention: images in [0, 1] at the dataset's native resolution ([B, 1, 8, 8] for digits,
whose 0..16 grey levels map to level/16; [B, 1, 28, 28] for Fashion-MNIST, level/255).
Trained by ``python -m bench.metrics.train_classifier``; the weights and the train split's feature
statistics ship in ``bench/metrics/weights/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CLASSIFIERS", "SmallCNN", "load_classifier", "weights_path", "train_stats_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name → (dataset in models.datasets, architecture); a plain dict, as every registry here.
CLASSIFIERS: dict[str, dict] = {
    "digits": {"dataset": "digits", "arch": {"size": 8, "widths": (16, 32), "feature_dim": 64}},
    "fashion": {"dataset": "fashion_mnist", "arch": {"size": 28, "widths": (32, 64, 64), "feature_dim": 128}},
}


class SmallCNN(nn.Module):
    """[conv3×3 → ReLU → max-pool 2] per width, then a fully connected feature layer and logits.

    Args:
        size: input height = width.
        widths: channels of the conv blocks (each halves the resolution, rounding down).
        feature_dim: width of the penultimate (feature) layer.
        n_classes: number of classes.
        in_channels: input channels.
    """

    def __init__(self, size: int, widths: tuple[int, ...], feature_dim: int, n_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, s = in_channels, size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, s = w, s // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c * s * s, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features [B, feature_dim] of images [B, C, size, size] in [0, 1]."""
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, n_classes]."""
        return self.head(self.features(x))


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}_cnn.pt"


def train_stats_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}_cnn_train_stats.npz"


def load_classifier(name: str, device: str | torch.device = "cpu") -> tuple[SmallCNN, dict]:
    """The shipped classifier ``name`` (a key of :data:`CLASSIFIERS`) in eval mode, and its metadata.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: weights not trained yet (the message gives the command).
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; expected one of: {', '.join(CLASSIFIERS)}")
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing; train it with `python -m bench.metrics.train_classifier --data {name}`")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    net = SmallCNN(**ckpt["arch"]).to(device)
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), ckpt["meta"]
