"""Score networks in pure PyTorch: NCSN++ / DDPM++, DDPM and NCSNv2.

``NETWORKS`` maps the architecture name used in :mod:`models.configs` to its class; every class
takes keyword-only constructor arguments and is called as ``net(x, labels)``.
"""

from __future__ import annotations

from models.networks.ddpm import DDPM
from models.networks.ncsnpp import NCSNpp
from models.networks.ncsnv2 import NCSNv2

__all__ = ["NETWORKS", "NCSNpp", "DDPM", "NCSNv2"]

NETWORKS = {"ncsnpp": NCSNpp, "ddpm": DDPM, "ncsnv2": NCSNv2}
