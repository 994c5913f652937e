"""EDM network snapshots as score models (Karras et al. 2022; NVlabs/edm's ``network-snapshot-*.pkl``
and the released ``edm-*.pkl``), without NVIDIA's code.

:func:`load_network` reads the pickle with :class:`~models.edm.unpickle.RestrictedUnpickler`, builds
the project's own preconditioning and U-Net from the stored constructor arguments, checks the module
tree against the stored one (class names and plain attributes) and loads the tensors strictly (keys
and shapes). :class:`EDMScore` turns the denoiser into the score protocol of every other model:

    s(x, t) = (α_t D(x/α_t; σ_ve) − x) / σ_t²,   σ_ve = σ_t/α_t,

i.e. (D − x)/σ² in σ-space, on the SDE of the network's own formulation (Karras et al. 2022, Table 1):

* VP → :class:`~models.sde.VPSDE` (β_min, β_min + β_d): the VP preconditioning's σ(t) is exactly its σ_ve(t),
  and c_noise = (M − 1)σ⁻¹(σ) = 999 t is score_sde's label;
* VE and EDM → :class:`~models.sde.VESDE` (α = 1, σ_t = σ): σ(t) = σ_lo (σ_max/σ_lo)^t with σ_lo set
  so that σ(eps) = ``sigma_min``.

The sampling range defaults to ``generate.py``'s σ ∈ [0.002, 80], clamped to the network's own range
(VP [σ(ε_t), σ(1)], VE [0.02, 100], EDM [0, ∞)); on VP it sets T = t(σ_max) and eps = t(σ_min).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.edm.precond import PRECONDS
from models.edm.unpickle import Container, Persistent, UnsafePickleError, plain, read_snapshot, state_dict
from models.score import class_indices
from models.sde import VESDE, VPSDE, expand_like

__all__ = ["load_network", "network_from_record", "network_label_dim", "load_edm", "EDMScore", "EDMDenoiser",
           "sde_for", "SIGMA_RANGE"]

SIGMA_RANGE = (0.002, 80.0)  # generate.py's edm_sampler defaults
VE_EPS = 1e-5  # where VE/EDM sampling stops in t (score_sde's VE eps); σ(eps) = sigma_min exactly


@dataclass(frozen=True)
class NetworkInfo:
    source: str  # file and entry
    class_name: str  # the preconditioning
    model_type: str  # the U-Net
    init_kwargs: dict
    num_params: int
    module_sha256: str  # sha256 of the stored networks.py source (never executed)


def _check_tree(record, module: nn.Module, where: str, path: str) -> None:
    """The stored module tree equals the built one: class names, children, plain attributes."""
    name = record.class_name
    if name != type(module).__name__:
        raise ValueError(f"{path}: module {where or '<root>'} is a {name} in the snapshot but the project's "
                         f"network builds a {type(module).__name__} there")
    for attr, value in record.state.items():
        if attr.startswith("_") or attr == "training" or isinstance(value, torch.Tensor):
            continue
        if not hasattr(module, attr) or isinstance(getattr(module, attr), nn.Module | torch.Tensor):
            continue
        ours = getattr(module, attr)
        if isinstance(value, int | float | bool | str) or value is None:
            same = ours == value or (isinstance(value, float) and isinstance(ours, float) and
                                     math.isclose(ours, value, rel_tol=1e-12))
            if not same:
                raise ValueError(f"{path}: {where or '<root>'}.{attr} is {value!r} in the snapshot, "
                                 f"{ours!r} in the project's {type(module).__name__}")
    stored = {k: v for k, v in record.modules.items() if v is not None}
    built = dict(module.named_children())
    if set(stored) != set(built):
        raise ValueError(f"{path}: {where or '<root>'} has children {sorted(stored)} in the snapshot, "
                         f"{sorted(built)} in the project's {type(module).__name__}")
    for child_name, child in stored.items():
        if not isinstance(child, Persistent | Container):
            raise UnsafePickleError(f"{path}: {where}.{child_name} is a {type(child).__name__}, not a module record")
        _check_tree(child, built[child_name], f"{where}.{child_name}" if where else child_name, path)


def load_network(path: str | Path, key: str = "ema") -> tuple[nn.Module, NetworkInfo]:
    """The preconditioned network stored under ``key`` of an EDM pickle, in eval mode, float32, on CPU.

    Raises:
        UnsafePickleError: the file needs a global or construct the loader does not accept.
        ValueError: unknown key or class, constructor arguments the project's classes do not take, a
            module tree, key or shape that differs from the project's network.
    """
    path = Path(path)
    data = read_snapshot(path)
    if key not in data:
        raise ValueError(f"{path}: no entry {key!r}; expected one of: {', '.join(map(str, data))}")
    return network_from_record(data[key], f"{path} entry {key!r}")


def network_label_dim(path: str | Path, key: str = "ema", preconds: dict[str, type] = PRECONDS) -> int:
    """The number of classes of the network under ``key`` (0: unconditional), read from its stored
    constructor arguments without deserialising its tensors (a check before anything runs);
    ``preconds``: the network classes accepted (as :func:`network_from_record`)."""
    path = Path(path)
    data = read_snapshot(path, tensors=False)
    if key not in data:
        raise ValueError(f"{path}: no entry {key!r}; expected one of: {', '.join(map(str, data))}")
    record = data[key]
    if not isinstance(record, Persistent) or record.class_name not in preconds:
        name = record.class_name if isinstance(record, Persistent) else type(record).__name__
        raise ValueError(f"{path} entry {key!r}: {name!r} is not a network the loader builds; expected one of: "
                         f"{', '.join(preconds)}")
    label_dim = plain(record.init_kwargs).get("label_dim", 0)
    if not isinstance(label_dim, int) or isinstance(label_dim, bool) or label_dim < 0:
        raise ValueError(f"{path} entry {key!r}: label_dim {label_dim!r} is not a number of classes")
    return label_dim


def network_from_record(record, source: str = "<record>", preconds: dict[str, type] = PRECONDS
                        ) -> tuple[nn.Module, NetworkInfo]:
    """The project's network for one persistent record (see :func:`load_network`), built by the class
    of ``preconds`` its class name names (EDM's by default; :mod:`models.edm2` passes EDM2's)."""
    path = source
    if not isinstance(record, Persistent):
        raise ValueError(f"{source}: a {type(record).__name__}, not an EDM network record")
    if record.class_name not in preconds:
        raise ValueError(f"{source}: class {record.class_name!r} is not a network the loader builds; expected one "
                         f"of: {', '.join(preconds)}")
    if record.state.get("_init_args"):
        raise ValueError(f"{source}: {record.class_name} was built with positional arguments; expected keywords only")
    kwargs = plain(record.init_kwargs)
    try:
        net = preconds[record.class_name](**kwargs)
    except TypeError as e:
        raise ValueError(f"{source}: {record.class_name}({', '.join(kwargs)}): {e}") from e
    _check_tree(record, net, "", str(path))
    tensors = state_dict(record)
    ours = net.state_dict()
    missing, unexpected = sorted(set(ours) - set(tensors)), sorted(set(tensors) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{path}: state_dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(f"{path}: {name} has shape {tuple(value.shape)} in the snapshot, "
                             f"{tuple(ours[name].shape)} in the project's network")
    net.load_state_dict(tensors, strict=True)
    net.eval().requires_grad_(False)
    inner = next(net.children())  # the U-Net (EDM: 'model', EDM2: 'unet')
    info = NetworkInfo(source, record.class_name, kwargs.get("model_type", type(inner).__name__), kwargs,
                       sum(p.numel() for p in net.parameters()), record.module_sha256)
    return net, info


def sde_for(net: nn.Module, sigma_min: float | None = None, sigma_max: float | None = None):
    """The SDE of the network's formulation, spanning σ_ve ∈ [sigma_min, sigma_max] between eps and T
    (defaults: generate.py's [0.002, 80], clamped to the network's own range as generate.py clamps)."""
    lo = max(SIGMA_RANGE[0] if sigma_min is None else sigma_min, float(net.sigma_min))
    hi = min(SIGMA_RANGE[1] if sigma_max is None else sigma_max, float(net.sigma_max))
    if not 0 < lo < hi < math.inf:
        raise ValueError(f"{type(net).__name__}: need 0 < sigma_min < sigma_max < inf within the network's range "
                         f"[{net.sigma_min}, {net.sigma_max}], got [{lo}, {hi}]")
    if net.kind == "vp":
        base = VPSDE(beta_min=net.beta_min, beta_max=net.beta_min + net.beta_d)
        t = base.inverse_ve_sigma(torch.tensor([lo, hi], dtype=torch.float64))
        return VPSDE(beta_min=net.beta_min, beta_max=net.beta_min + net.beta_d, T=float(t[1]), eps=float(t[0]))
    # σ(t) = s0 (hi/s0)^t with σ(VE_EPS) = lo: log s0 = (log lo − eps log hi) / (1 − eps).
    s0 = math.exp((math.log(lo) - VE_EPS * math.log(hi)) / (1 - VE_EPS))
    return VESDE(sigma_min=s0, sigma_max=hi, T=1.0, eps=VE_EPS)


class EDMDenoiser(nn.Module):
    """``net(x_ve, sigma [B], class_labels [1 or B, label_dim] or None) -> D(x_ve; σ)``; a
    class-conditional network called without labels is an error (EDM would feed zeros)."""

    def __init__(self, precond: nn.Module) -> None:
        super().__init__()
        self.precond = precond

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        label_dim = self.precond.label_dim
        if label_dim and class_labels is None:
            raise ValueError(f"EDM model: the network is class-conditional ({label_dim} classes) and was called "
                             f"without class labels; give load_edm(label=...) or condition it per batch "
                             f"(models.score.conditioned)")
        if class_labels is not None and class_labels.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"EDM model: {class_labels.shape[0]} per-sample class labels for a batch of {x.shape[0]} "
                             f"(a row subset must go through models.score.select_rows)")
        return self.precond(x, sigma, class_labels)


def one_hot_labels(label_dim: int, label) -> Tensor | None:
    """Class labels [1 or n, label_dim]: None without a label (a class-conditional network must then be
    conditioned per batch before it is called); a fixed class index; or a sequence of n per-sample
    class indices."""
    if label_dim == 0 and label is not None:
        raise ValueError(f"EDM model: 'label' given ({label!r}) but the network is unconditional")
    if label is None:
        return None
    idx = torch.as_tensor(label if isinstance(label, list | tuple | Tensor) else [label])
    valid = not idx.is_floating_point() and idx.dim() == 1 and bool(((idx >= 0) & (idx < label_dim)).all())
    if not valid:
        raise ValueError(f"EDM model: 'label' must be class indices in 0..{label_dim - 1}, got {label!r}")
    return torch.eye(label_dim)[idx.long()]


class EDMScore:
    """The score model of an EDM denoiser: s(x, t) = (α_t D(x/α_t; σ_t/α_t) − x)/σ_t² (module docstring).

    Args:
        precond: a loaded :mod:`models.edm.precond` network.
        sde: its SDE (:func:`sde_for`).
        class_labels: label vectors for class-conditional networks: [1, label_dim] (every sample, e.g.
            a fixed class) or [B, label_dim] (one per row; they follow the rows a solver evaluates).
            Per batch, :meth:`conditioned` replaces them (what the harness does for ``label: random``).
    """

    def __init__(self, precond: nn.Module, sde, class_labels: Tensor | None = None) -> None:
        self.net = EDMDenoiser(precond).eval()
        self.precond = precond
        self.sde = sde
        self.shape = (precond.img_channels, precond.img_resolution, precond.img_resolution)
        self.data_range = (-1.0, 1.0)
        self.label_dim = int(precond.label_dim)
        self.class_labels: Tensor | None = None  # [1 or B, label_dim], fed to the network
        self.row_labels: Tensor | None = None  # the per-sample labels that follow the rows (None: broadcast)
        if class_labels is not None:
            self._set_labels(torch.as_tensor(class_labels), per_sample=class_labels.shape[0] > 1)

    def _set_labels(self, labels: Tensor, per_sample: bool) -> None:
        D = self.label_dim
        if labels.dim() == 1:
            vectors = torch.eye(D)[class_indices(labels, D, "EDM model")]
        elif D and labels.dim() == 2 and labels.shape[1] == D:
            vectors = labels
        else:
            raise ValueError(f"EDM model: class labels must be [B] class indices or [B, {D}] label vectors, "
                             f"got shape {list(labels.shape)}" + (" (the network is unconditional)" if not D else ""))
        param = next(self.precond.parameters())
        self.class_labels = vectors.to(device=param.device, dtype=param.dtype)
        self.row_labels = labels.to(param.device) if per_sample else None

    def conditioned(self, labels: Tensor) -> EDMScore:
        """The same network with per-sample labels (:func:`models.score.conditioned`): [B] class indices
        or [B, label_dim] label vectors; no copy of the network."""
        new = copy.copy(self)
        new._set_labels(torch.as_tensor(labels), per_sample=True)
        return new

    def denoise(self, x_ve: Tensor, sigma: Tensor) -> Tensor:
        """D(x_ve; σ) in x_ve's dtype (one network call)."""
        labels = () if self.class_labels is None else (self.class_labels,)  # net(x, σ) when unconditional
        return self.net(x_ve, sigma, *labels).to(x_ve.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        if self.sde.kind == "ve":  # α = 1: D(x; σ_t)
            return (self.denoise(x, sigma) - x) / expand_like(sigma**2, x)
        a = expand_like(alpha, x)
        return (a * self.denoise(x / a, sigma / alpha) - x) / expand_like(sigma**2, x)


def load_edm(path: str | Path, key: str = "ema", label=None, sigma_min: float | None = None,
             sigma_max: float | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> EDMScore:
    """An EDM snapshot as a score model (:class:`EDMScore`) on ``device`` in ``dtype``.

    Args:
        path: ``network-snapshot-*.pkl`` or a released ``edm-*.pkl``.
        key: the snapshot entry ('ema', the only network in released files).
        label: class index (or per-sample indices) for class-conditional networks; None: unconditional,
            or conditioned per batch later (:func:`models.score.conditioned`).
        sigma_min, sigma_max: the sampling range in σ (default generate.py's, clamped to the network's).
    """
    net, _ = load_network(path, key)
    net = net.to(device=device, dtype=dtype)
    labels = one_hot_labels(net.label_dim, label)
    labels = None if labels is None else labels.to(device=device, dtype=dtype)
    return EDMScore(net, sde_for(net, sigma_min, sigma_max), labels)
