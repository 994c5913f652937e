"""A diffusers ε-prediction ``UNet2DModel`` (e.g. the DDPM CIFAR-10 model users download from the hub)
seen as a VP score model. Optional extra: ``pip install 'scorebench[diffusers]'``.

DDPM's linear schedule β_i = linspace(β_start, β_end, N) is score_sde's discrete VP table with
β_min = N·β_start and β_max = N·β_end, so the model is wrapped with score_sde's discrete DDPM label
convention (REFERENCE §1.7): label t·(N − 1) as a float, score = −ε̂ / √(1 − ᾱ)[floor(label)].
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from models.score import NetworkScore
from models.sde import VPSDE

__all__ = ["DiffusersEpsilonNet", "from_diffusers", "load_diffusers"]


class DiffusersEpsilonNet(nn.Module):
    """``net(x, labels) -> ε̂``: a diffusers UNet2DModel with the (float) timestep as label."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        return self.unet(x, labels).sample


def from_diffusers(unet: nn.Module, scheduler_config: dict | None = None) -> NetworkScore:
    """Wrap an ε-prediction UNet2DModel as a VP score model.

    Args:
        unet: a diffusers ``UNet2DModel`` predicting ε.
        scheduler_config: the DDPM scheduler's config (``num_train_timesteps``, ``beta_start``,
            ``beta_end``, ``beta_schedule``, ``prediction_type``); default DDPM's 1000 steps, 1e-4 to 0.02.

    Raises:
        ValueError: a schedule or prediction type other than DDPM's linear ε-prediction.
    """
    cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
           "prediction_type": "epsilon", **(scheduler_config or {})}
    if cfg["beta_schedule"] != "linear":
        raise ValueError(f"diffusers adapter: beta_schedule {cfg['beta_schedule']!r} is not supported; "
                         f"expected one of: linear")
    if cfg["prediction_type"] != "epsilon":
        raise ValueError(f"diffusers adapter: prediction_type {cfg['prediction_type']!r} is not supported; "
                         f"expected one of: epsilon")
    N = int(cfg["num_train_timesteps"])
    sde = VPSDE(beta_min=cfg["beta_start"] * N, beta_max=cfg["beta_end"] * N)
    c = unet.config
    shape = (c.in_channels, c.sample_size, c.sample_size)
    return NetworkScore(DiffusersEpsilonNet(unet), sde, shape, (-1.0, 1.0), time_label="ddpm", num_scales=N)


def load_diffusers(path: str | Path) -> NetworkScore:
    """Load a diffusers DDPM pipeline folder (``unet/`` and ``scheduler/``) saved on disk.

    Hub downloads are left to diffusers (``DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')`` with
    internet, then ``save_pretrained(path)``); this function reads local files only.
    """
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError as e:
        raise ImportError("the diffusers adapter needs `pip install 'scorebench[diffusers]'`") from e
    path = Path(path)
    if not (path / "unet").is_dir():
        raise FileNotFoundError(f"{path}: no diffusers pipeline folder (expected {path / 'unet'}); download one "
                                f"with internet (DDPMPipeline.from_pretrained(...).save_pretrained('{path}'))")
    unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True)
    config = dict(DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True).config)
    return from_diffusers(unet, config)
