"""OpenAI's ADM (guided-diffusion; Dhariwal & Nichol 2021) without OpenAI's code: the flags
(:mod:`models.adm.flags`), the project's ``UNetModel``/``EncoderUNetModel`` (:mod:`models.adm.unet`,
:mod:`models.adm.layers`), the discrete schedule and time mapping (:mod:`models.adm.schedule`), the
score model (:mod:`models.adm.score`), classifier guidance (:mod:`models.adm.guidance`) and the
strict ``weights_only`` loader (:mod:`models.adm.loader`)."""

from models.adm.loader import load_adm, load_classifier
from models.adm.score import ADMScore

__all__ = ["ADMScore", "load_adm", "load_classifier"]
