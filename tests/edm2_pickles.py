"""Writing EDM2-format pickles in tests without EDM2's code: records read by the restricted unpickler
(:class:`~models.edm.unpickle.Persistent`, :class:`~models.edm.unpickle.Container`) written back
under the names EDM2's files use (``torch_utils.persistence._reconstruct_persistent_obj``,
``torch.nn.modules.container.ModuleDict``, ``dnnlib.util.EasyDict``); tensors and numpy arrays pickle
as torch and numpy write them."""

from __future__ import annotations

import io
import pickle

from models.edm.unpickle import Container, Persistent


def _reconstruct(meta):  # written as torch_utils.persistence._reconstruct_persistent_obj
    return meta


class _ModuleDict:  # written as torch.nn.modules.container.ModuleDict
    pass


class _EasyDict(dict):  # written as dnnlib.util.EasyDict
    pass


NAMES = {_reconstruct: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
         _ModuleDict: ("torch.nn.modules.container", "ModuleDict"),
         _EasyDict: ("dnnlib.util", "EasyDict")}


class EDM2Pickler(pickle._Pickler):
    """Protocol-4 pickler writing records and dicts as EDM2's snapshots hold them (README §2)."""

    def __init__(self, file, names: dict | None = None) -> None:
        super().__init__(file, protocol=4)
        self.names = {**NAMES, **(names or {})}

    def save(self, obj, save_persistent_id=True):
        if any(obj is stub for stub in self.names):
            module, name = self.names[obj]
            super().save(module)
            super().save(name)
            self.write(pickle.STACK_GLOBAL)
            return
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj):
        if isinstance(obj, Persistent):
            meta = {"type": "class", "version": 6, "module_src": f"# {obj.class_name} (test)\n",
                    "class_name": obj.class_name, "state": obj.state}
            return _reconstruct, (meta,)
        if isinstance(obj, Container):
            return _ModuleDict, (), obj.state
        if type(obj) is _EasyDict:
            return _EasyDict, (), None, None, iter(obj.items())
        return NotImplemented


def dumps_snapshot(data: dict, names: dict | None = None) -> bytes:
    """``data`` (entries: records, dicts, tensors, numpy arrays) as an EDM2 snapshot pickle; ``names``
    maps further functions or classes to the (module, name) they are written as."""
    buf = io.BytesIO()
    EDM2Pickler(buf, names).dump(_EasyDict(data))
    return buf.getvalue()
