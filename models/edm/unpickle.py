"""Read an EDM network pickle without executing its code (Karras et al. 2022, NVlabs/edm).

EDM's snapshots (``network-snapshot-*.pkl``, the released ``edm-*.pkl``) store every network object
through ``torch_utils.persistence``: ``REDUCE(_reconstruct_persistent_obj, (meta,))`` with ``meta`` =
{type, version, module_src, class_name, state}; EDM's own loader ``exec``s ``module_src``. This
module's :class:`RestrictedUnpickler` resolves only the globals such a file needs — the persistence
record (returned as an inert :class:`Persistent`), ``ModuleDict`` (as an inert :class:`Container`),
``OrderedDict``, torch's tensor/parameter rebuilders, legacy storage blobs (read with
``torch.load(weights_only=True)``) and numpy float scalars — and refuses every other global with an
:class:`UnsafePickleError` naming it. Nothing stored is imported or executed; ``module_src`` is
kept as an inert string (only its sha256 is used). EDM2's snapshots (Karras et al. 2024, NVlabs/edm2)
use the same records plus ``dnnlib.util.EasyDict`` (read as a ``dict``) and, in a latent model's
``StabilityVAEEncoder``, float32 numpy arrays (read as :class:`NDArray` records, data only).

:func:`read_snapshot` returns the top-level dict with its network records; :func:`state_dict`
walks a record into the ordered ``state_dict()`` of the object EDM would have rebuilt.
:func:`read_reference_stats` reads EDM/EDM2's reference statistics (``dataset-refs/*.pkl``) as plain
numpy arrays.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["UnsafePickleError", "Persistent", "Container", "NDArray", "RestrictedUnpickler", "read_snapshot",
           "state_dict", "plain", "read_reference_stats"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something the EDM loader does not accept (a global, a class, an opcode); a
    ValueError too (bad input: a grid check reports it as one line, exit 2)."""


@dataclass
class Persistent:
    """EDM's persistent-object record: the short class name, its constructor kwargs and state."""

    class_name: str
    state: dict
    module_sha256: str

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def modules(self) -> dict:
        return dict(self.state.get("_modules") or {})


class Container:
    """A non-persistent ``torch.nn.ModuleDict`` rebuilt as data (``NEWOBJ`` + ``BUILD``): its ``state``."""

    class_name = "ModuleDict"

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state) -> None:  # BUILD
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.class_name}: state must be a dict, got {type(state).__name__}")
        self.state = state

    def __deepcopy__(self, memo) -> Container:
        new = Container()
        new.state = copy.deepcopy(self.state, memo)
        return new

    @property
    def modules(self) -> dict:
        return dict(self.state.get("_modules") or {})


def _reconstruct_persistent_obj(meta):
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: a record, no exec."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError(f"persistent object: expected a dict with type 'class', got {type(meta).__name__}")
    if meta.get("version") != 6:
        raise UnsafePickleError(f"persistent object: version {meta.get('version')!r} is not EDM's 6")
    name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(name, str) or not isinstance(src, str) or not isinstance(state, dict):
        raise UnsafePickleError("persistent object: class_name/module_src must be strings and state a dict")
    return Persistent(name, state, hashlib.sha256(src.encode()).hexdigest())


def _load_from_bytes(b):
    """A legacy ``torch.save`` storage blob, read with ``weights_only=True`` (data only)."""
    if not isinstance(b, bytes | bytearray):
        raise UnsafePickleError(f"storage: expected bytes, got {type(b).__name__}")
    return torch.load(io.BytesIO(b), weights_only=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"tensor: expected a storage, got {type(storage).__name__}")
    if backward_hooks:
        raise UnsafePickleError("tensor: backward hooks are not accepted")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"parameter: expected a tensor, got {type(data).__name__}")
    if backward_hooks:
        raise UnsafePickleError("parameter: backward hooks are not accepted")
    return torch.nn.Parameter(data, requires_grad=False)


def _numpy_scalar(dtype, data=None):
    """numpy's scalar reconstructor, for float64/float32/int64 scalars only."""
    if not isinstance(dtype, np.dtype) or dtype.str not in ("<f8", "<f4", "<i8", "<i4", "|b1"):
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not accepted")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError("numpy scalar: bad data")
    return np.frombuffer(data, dtype=dtype)[0].item()  # a plain Python number (exact)


def _numpy_dtype(name, align=False, copy=True):
    if name not in ("f8", "f4", "i8", "i4", "b1"):
        raise UnsafePickleError(f"numpy dtype {name!r} is not accepted")
    return np.dtype(name)


class NDArray:
    """A numpy array rebuilt as data: ``_reconstruct(ndarray, (0,), b'b')`` then ``BUILD`` with the
    state (version, shape, dtype, fortran, raw bytes); only the dtypes in ``DTYPES`` (EDM2 snapshots:
    float32) and raw bytes of the exact size are accepted. ``array`` is the numpy array."""

    DTYPES = ("<f4",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:  # BUILD
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError(f"numpy array: state must be (version, shape, dtype, fortran, data), got "
                                    f"{type(state).__name__}")
        _, shape, dtype, fortran, data = state
        self.array = _array_from_bytes(data, dtype, shape, "F" if fortran else "C", self.DTYPES)


class _StatsArray(NDArray):
    DTYPES = ("<f4", "<f8")


def _array_from_bytes(data, dtype, shape, order: str, dtypes: tuple[str, ...]) -> np.ndarray:
    """A copy of ``data`` as an array of ``dtype`` (one of ``dtypes``) and ``shape``, or UnsafePickleError."""
    if not isinstance(dtype, np.dtype) or dtype.str not in dtypes:
        raise UnsafePickleError(f"numpy array of dtype {dtype!r} is not accepted; expected one of: "
                                f"{', '.join(dtypes)}")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"numpy array: bad shape {shape!r}")
    if not isinstance(data, bytes | bytearray) or len(data) != dtype.itemsize * math.prod(shape):
        raise UnsafePickleError(f"numpy array: {type(data).__name__} of the wrong size for shape {shape} and {dtype}")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"numpy array: bad order {order!r}")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order=order).copy()


class _NDArrayType:
    """What ``numpy.ndarray`` resolves to: accepted only as ``_reconstruct``'s first argument."""


def _numpy_reconstruct(holder: type[NDArray]):
    def reconstruct(cls, shape, typecode):
        if cls is not _NDArrayType or shape != (0,) or typecode not in (b"b", "b"):
            raise UnsafePickleError(f"numpy _reconstruct: only numpy.ndarray((0,), b'b') is accepted, got "
                                    f"{getattr(cls, '__name__', cls)!r}, {shape!r}, {typecode!r}")
        return holder()
    return reconstruct


def _stats_frombuffer(buf, dtype, shape, order):
    """numpy's protocol-5 array reconstructor (in-band buffer): float arrays only."""
    holder = _StatsArray()
    holder.array = _array_from_bytes(buf, dtype, tuple(shape) if isinstance(shape, list) else shape, order,
                                     _StatsArray.DTYPES)
    return holder


# (module, name) -> callable. numpy 1.x pickles (the 2022 releases) name 'numpy.core.multiarray'.
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.nn.modules.container", "ModuleDict"): Container,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    # EDM2 (Karras et al. 2024): the snapshot's EasyDicts and a StabilityVAEEncoder's float32 arrays.
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(NDArray),
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(NDArray),
    ("numpy", "ndarray"): _NDArrayType,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` (refuses everything else)."""

    ALLOWED = ALLOWED_GLOBALS
    WHAT = "an EDM snapshot holds only EDM's persistence records, tensors and plain containers"

    def __init__(self, file, *, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        fn = self.ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"{self.source}: refused global {module}.{name}: {self.WHAT} (accepted: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in self.ALLOWED))})")
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r} (not used by EDM snapshots)")


class _Skipped:
    """What a tensor reads as when :func:`read_snapshot` is asked for the records only."""


_SKIPPED = _Skipped()


class _RecordsOnlyUnpickler(RestrictedUnpickler):
    """:class:`RestrictedUnpickler` that reads tensors as :data:`_SKIPPED` (same accepted globals; the
    storage bytes are read but never deserialised): the constructor arguments of a large snapshot
    for checks made before anything runs."""

    _SKIP = {("torch.storage", "_load_from_bytes"), ("torch._utils", "_rebuild_tensor_v2"),
             ("torch._utils", "_rebuild_parameter")}

    def find_class(self, module: str, name: str):
        fn = super().find_class(module, name)
        return (lambda *args, **kwargs: _SKIPPED) if (module, name) in self._SKIP else fn


def read_snapshot(path: str | Path, tensors: bool = True) -> dict:
    """The top-level dict of an EDM pickle (``ema``, ``loss_fn``, ...), networks as :class:`Persistent`
    (``tensors=False``: their tensors are left unread, for a look at the constructor arguments)."""
    path = Path(path)
    unpickler = RestrictedUnpickler if tensors else _RecordsOnlyUnpickler
    with open(path, "rb") as f:
        try:
            data = unpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise UnsafePickleError(f"{path}: not a readable EDM snapshot ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise UnsafePickleError(f"{path}: an EDM snapshot is a dict at the top level, got {type(data).__name__}")
    return data


def _children(obj) -> dict:
    return obj.modules if isinstance(obj, Persistent | Container) else {}


def state_dict(obj, prefix: str = "") -> collections.OrderedDict:
    """The ordered ``state_dict()`` of a record: ``_parameters`` then non-None ``_buffers``, recursively
    through ``_modules`` (the order of ``nn.Module.state_dict``)."""
    out = collections.OrderedDict()
    state = obj.state
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise UnsafePickleError(f"{prefix}{name}: expected a tensor, got {type(value).__name__}")
            out[prefix + name] = value
    for name, child in _children(obj).items():
        if child is not None:
            out.update(state_dict(child, f"{prefix}{name}."))
    return out


def plain(value):
    """Constructor kwargs as plain Python values (lists for tuples, floats for numpy floats, numpy
    arrays for :class:`NDArray` records)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, NDArray):
        return value.array
    return value


class _StatsUnpickler(RestrictedUnpickler):
    """Reference statistics: dicts (EasyDicts) of float32/float64 numpy arrays and numbers, nothing else."""

    ALLOWED = {
        ("dnnlib.util", "EasyDict"): dict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(_StatsArray),
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(_StatsArray),
        ("numpy._core.numeric", "_frombuffer"): _stats_frombuffer,
        ("numpy.core.numeric", "_frombuffer"): _stats_frombuffer,
        ("numpy", "ndarray"): _NDArrayType,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    }
    WHAT = "reference statistics hold only dicts of numpy float arrays and numbers"


def read_reference_stats(path: str | Path) -> dict:
    """EDM/EDM2 reference statistics (``dataset-refs/*.pkl``, ``calculate_metrics.py ref``), e.g.
    ``{'fid': {'mu': [2048], 'sigma': [2048, 2048]}, 'fd_dinov2': {...}}``, read without executing
    anything: nested plain dicts of numpy float32/float64 arrays (and numbers, strings).

    Raises:
        UnsafePickleError: a global other than numpy's array/dtype/scalar reconstructors and
            EasyDict/OrderedDict (named in the message), another dtype, or not a dict of that.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            data = _StatsUnpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise UnsafePickleError(f"{path}: not readable reference statistics ({type(e).__name__}: {e})") from e

    def convert(value, where: str):
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise UnsafePickleError(f"{path}: {where}: key {bad[0]!r} is not a string")
            return {k: convert(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, NDArray):
            if value.array is None:
                raise UnsafePickleError(f"{path}: {where}: a numpy array without data")
            return value.array
        if isinstance(value, int | float | str | bool) or value is None:
            return value
        raise UnsafePickleError(f"{path}: {where}: a {type(value).__name__}; expected dicts of numpy arrays")

    if not isinstance(data, dict):
        raise UnsafePickleError(f"{path}: reference statistics are a dict at the top level, got {type(data).__name__}")
    return convert(data, "stats")
