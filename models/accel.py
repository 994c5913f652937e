"""GPU paths for score networks: autocast, channels_last, torch.compile, and batch splitting on OOM.

All are opt-in and leave the network's maths unchanged (autocast changes the precision of the
forward pass only; outputs are cast back to the input's dtype). Written for CUDA; autocast with
bfloat16 and channels_last also run on CPU (which is how the tests exercise them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.score import conditioned, select_rows

__all__ = ["Acceleration", "AcceleratedNet", "ChunkedScore", "AUTOCAST_DTYPES", "peak_memory_bytes"]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Acceleration:
    """Options of :class:`AcceleratedNet`.

    Args:
        autocast: 'none', 'bf16' or 'fp16' (mixed precision of the forward pass).
        channels_last: use the NHWC memory format for 4-D inputs and the weights.
        compile: wrap the network in ``torch.compile`` (the first calls pay the compilation).
    """

    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"invalid autocast={self.autocast!r}; expected one of: {', '.join(AUTOCAST_DTYPES)}")

    @property
    def enabled(self) -> bool:
        return self.autocast != "none" or self.channels_last or self.compile


class AcceleratedNet(nn.Module):
    """``net(x, labels, *rest)`` (``rest``: e.g. class labels) with the options of :class:`Acceleration`;
    output in x's dtype and format."""

    def __init__(self, net: nn.Module, options: Acceleration) -> None:
        super().__init__()
        self.options = options
        if options.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._forward = torch.compile(net) if options.compile else net

    def forward(self, x: Tensor, labels: Tensor, *rest) -> Tensor:
        dtype = AUTOCAST_DTYPES[self.options.autocast]
        if self.options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            out = self._forward(x, labels, *rest)
        else:
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                out = self._forward(x, labels, *rest)
        return out.to(x.dtype).contiguous()


class ChunkedScore:
    """A score model evaluated in chunks of at most ``max_batch`` samples; on a CUDA out-of-memory
    error the chunk is halved and the call retried (the size found is kept for later calls).

    One call is still one NFE for the batch: wrap *this* in the counting wrapper, not the inner model.
    Each chunk sees its own rows' class labels (:func:`~models.score.select_rows`); a
    :func:`~models.score.conditioned` view shares the chunk size found and the split count.
    """

    def __init__(self, model, max_batch: int | None = None) -> None:
        self.model = model
        self.sde, self.shape, self.data_range = model.sde, model.shape, model.data_range
        self._state = {"max_batch": max_batch, "splits": 0}  # shared with the conditioned views

    @property
    def max_batch(self) -> int | None:
        return self._state["max_batch"]

    @property
    def splits(self) -> int:  # OOM-triggered halvings, for the run record
        return self._state["splits"]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        while True:
            size = self.max_batch or x.shape[0]
            try:
                if size >= x.shape[0]:
                    return self.model(x, t)
                return torch.cat([select_rows(self.model, slice(lo, lo + size))(x[lo:lo + size], t[lo:lo + size])
                                  for lo in range(0, x.shape[0], size)])
            except torch.OutOfMemoryError:
                if size <= 1:
                    raise
                self._state["max_batch"] = max(1, size // 2)
                self._state["splits"] += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def conditioned(self, labels: Tensor) -> ChunkedScore:
        view = ChunkedScore(conditioned(self.model, labels))
        view._state = self._state
        return view

    def __getattr__(self, name: str):
        if name in ("model", "_state"):
            raise AttributeError(name)
        return getattr(self.model, name)


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """Peak allocated memory on a CUDA device since the last reset (None on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))
