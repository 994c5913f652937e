"""Per-row conditions of a batch: what a conditional model is conditioned on, in one of three forms.

* class indices: int64 ``[B]`` (class k asks for class k; a model with a null class — DiT, the
  exact mixtures — takes its number of classes as the null index);
* label vectors: floating ``[B, D]`` (EDM/EDM2's one-hot labels; the zero vector is EDM2's null
  label);
* a mapping of tensors, each with leading dimension B (text: e.g. ``{"prompt_embeds": [B, L, D],
  "pooled_prompt_embeds": [B, D]}``).

Row i of a condition belongs to row i of the batch it is used with. :func:`cat_rows` stacks two
conditions (CFG's conditional and unconditional branches as one batch of 2B rows) and
:func:`take_rows` selects rows (a solver's row subsets, :func:`models.score.select_rows`). A class
index meets a label vector only when one of them is a model's null condition (EDM2: [B] indices
and the [B, D] zero vector): :func:`cat_rows` then writes the indices as one-hot vectors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["Condition", "num_rows", "cat_rows", "take_rows", "describe"]

Condition = Tensor | Mapping[str, Tensor]


def _is_indices(c) -> bool:
    return isinstance(c, Tensor) and c.dim() == 1 and not c.is_floating_point()


def describe(c) -> str:
    """A short description of a condition's form, for error messages."""
    if isinstance(c, Mapping):
        return "{" + ", ".join(f"{k}: {list(v.shape)}" for k, v in c.items()) + "}"
    if isinstance(c, Tensor):
        return f"{'class indices' if _is_indices(c) else 'label vectors'} {list(c.shape)}"
    return f"{type(c).__name__} {c!r}"


def num_rows(c) -> int:
    """B, the number of rows of condition ``c`` (ValueError for a mapping whose tensors disagree)."""
    if isinstance(c, Mapping):
        sizes = {k: int(v.shape[0]) for k, v in c.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"a condition mapping needs tensors with one leading dimension B, got {describe(c)}")
        return next(iter(sizes.values()))
    if isinstance(c, Tensor) and c.dim() >= 1:
        return int(c.shape[0])
    raise ValueError(f"a condition must be [B] class indices, [B, D] label vectors or a mapping of [B, ...] tensors, "
                     f"got {describe(c)}")


def _one_hot(indices: Tensor, like: Tensor) -> Tensor:
    D = like.shape[1]
    if bool(((indices < 0) | (indices >= D)).any()):
        raise ValueError(f"class indices {indices.tolist()} cannot become one-hot vectors of length {D}")
    return torch.eye(D, dtype=like.dtype, device=like.device)[indices.to(like.device)]


def cat_rows(a, b):
    """Rows of ``a`` then rows of ``b``, in their common form: [B_a + B_b, ...] (a mapping: each entry;
    class indices meeting label vectors: the indices one-hot). ValueError for forms that do not stack."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            raise ValueError(f"conditions {describe(a)} and {describe(b)} do not stack (the same keys are needed)")
        return {k: cat_rows(a[k], b[k]) for k in a}
    num_rows(a), num_rows(b)
    if _is_indices(a) and not _is_indices(b) and b.dim() == 2:
        a = _one_hot(a, b)
    elif _is_indices(b) and not _is_indices(a) and a.dim() == 2:
        b = _one_hot(b, a)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"conditions {describe(a)} and {describe(b)} do not stack (shapes beyond the rows differ)")
    return torch.cat([a, b.to(device=a.device, dtype=a.dtype)])


def take_rows(c, idx: Tensor | slice):
    """Rows ``idx`` ([k] indices, a [B] bool mask or a slice) of condition ``c``, in its form."""
    if isinstance(c, Mapping):
        num_rows(c)
        return {k: take_rows(v, idx) for k, v in c.items()}
    if isinstance(idx, Tensor):
        idx = idx.to(c.device)
    return c[idx]
