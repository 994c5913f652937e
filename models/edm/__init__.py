"""EDM networks (Karras et al. 2022) without NVIDIA's code: a restricted reader for their pickles
(:mod:`models.edm.unpickle`), the project's SongUNet/DhariwalUNet (:mod:`models.edm.networks`) and
VP/VE/EDM preconditionings (:mod:`models.edm.precond`), and the loader that makes a snapshot a score
model (:mod:`models.edm.loader`)."""

from models.edm.loader import EDMScore, load_edm, load_network
from models.edm.unpickle import UnsafePickleError

__all__ = ["EDMScore", "load_edm", "load_network", "UnsafePickleError"]
