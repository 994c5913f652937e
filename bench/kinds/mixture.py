"""``kind: mixture`` — an exact-score :class:`~models.gaussian.GaussianMixture`: explicit ``means``/
``stds``/``weights``, or ``components`` means drawn from N(0, ``scale``²) with seed ``seed`` on
``shape``, all with std ``std``; ``sde`` is a ``make_sde`` mapping (any path); ``data_range``.

``conditional: true`` makes it class-conditional (:class:`~models.gaussian.ClassConditionalMixture`:
class k is component k, its null class the full mixture, so classifier-free guidance has an exact
answer); ``label`` is then required (:func:`bench.kinds.base.check_label`)."""

from __future__ import annotations

import torch

from bench.kinds.base import ModelFacts, ModelKind, check_label
from models.sde import make_sde

KEYS = ("sde", "means", "stds", "std", "weights", "shape", "components", "scale", "seed", "data_range", "conditional",
        "label")


def load(section: dict, device: str, dtype: torch.dtype):
    from models.gaussian import ClassConditionalMixture, GaussianMixture

    sde = make_sde(**section.get("sde", {"kind": "vp"}))
    if "means" in section:
        means = torch.as_tensor(section["means"], dtype=torch.float64)
        stds = torch.as_tensor(section.get("stds", section.get("std", 0.1)), dtype=torch.float64)
    else:
        shape = tuple(section.get("shape", (2,)))
        k = int(section.get("components", 4))
        g = torch.Generator().manual_seed(int(section.get("seed", 0)))
        means = float(section.get("scale", 1.0)) * torch.randn(k, *shape, generator=g, dtype=torch.float64)
        stds = torch.as_tensor(float(section.get("std", 0.1)), dtype=torch.float64)
    weights = section.get("weights")
    data_range = tuple(section.get("data_range", (-1.0, 1.0)))
    mixture = GaussianMixture(means, stds, sde, weights=None if weights is None else torch.as_tensor(weights),
                              data_range=data_range)
    return ClassConditionalMixture(mixture) if section.get("conditional", False) else mixture


def check(section: dict, files: bool = True) -> None:
    del files
    sde = section.get("sde", {"kind": "vp"})
    if not isinstance(sde, dict):
        raise ValueError(f"field 'sde' must be a mapping like {{kind: vp}}, got {sde!r}")
    make_sde(**sde)
    if not isinstance(section.get("conditional", False), bool):
        raise ValueError(f"field 'conditional' must be true or false, got {section['conditional']!r}")
    model = load(section, "cpu", torch.float64)  # shapes, stds, weights
    check_label(section, int(getattr(model, "label_dim", 0)), "the mixture")


def describe(section: dict, files: bool = True) -> ModelFacts:
    del files
    model = load(section, "cpu", torch.float64)
    return ModelFacts(tuple(model.shape), model.sde)


KIND = ModelKind(KEYS, check, load, describe)
