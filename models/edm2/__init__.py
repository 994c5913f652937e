"""EDM2 networks (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models") without NVIDIA's code: the magnitude-preserving layers (:mod:`models.edm2.layers`), U-Net
(:mod:`models.edm2.unet`) and preconditioning (:mod:`models.edm2.precond`), what the samples are
(:mod:`models.edm2.encoders`), and the loader that reads a snapshot through the restricted unpickler
of :mod:`models.edm.unpickle` and makes it a score model (:mod:`models.edm2.loader`)."""

from models.edm2.loader import EDM2Score, load_edm2, load_network, read_edm2_snapshot

__all__ = ["EDM2Score", "load_edm2", "load_network", "read_edm2_snapshot"]
