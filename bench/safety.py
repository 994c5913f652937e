"""Names that reach file paths, and the check that nothing is written outside the output folder.

A grid name, a model key, a metric, a split or an FID mode can end up in a file name (the results
folder, ``plots/<metric>_vs_nfe_<model>.png``, a reference-statistics file name). Grids are checked at
load with :func:`check_name` (a one-line error naming the field); records read back from disk are
data, so :func:`file_component` makes whatever they hold safe, and :func:`inside` refuses a path that
would resolve outside the output folder.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["NAME_PATTERN", "check_name", "file_component", "inside"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def check_name(value: object) -> str | None:
    """Why ``value`` cannot be part of a file name, or None if it can (letters, digits and ``._+=-``,
    starting with a letter or digit, at most 100 characters: no '/', no '..', no hidden files)."""
    if not isinstance(value, str):
        return f"must be a non-empty string, got {value!r}"
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        return (f"must be a non-empty string of letters, digits and '._+=-' without '/' or '..', starting "
                f"with a letter or digit, at most 100 characters; got {value!r}")
    return None


def file_component(value: object) -> str:
    """``value`` as one safe file-name component: unsafe characters become '_', and '..' cannot form."""
    text = _UNSAFE.sub("_", str(value)).replace("..", "_")
    text = text.lstrip(".") or "_"
    return text[:100]


def inside(root: Path, path: Path) -> Path:
    """``path`` if it resolves inside ``root``; ValueError otherwise (nothing is written there)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(f"refusing to write {path}: it resolves outside the output folder {root}")
    return path
