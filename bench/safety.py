"""Names that reach file paths, checked when a grid is loaded.

A grid name, a model key, a metric, a split or an FID mode can end up in a file name (the results
folder, ``plots/<metric>_vs_nfe_<model>.png``, a reference-statistics file name). Grids are checked at
load with :func:`check_name` (a one-line error naming the field). Records read back from disk are
data: the report makes whatever they hold safe and keeps every path inside the output folder itself
(:mod:`bench.filenames`).
"""

from __future__ import annotations

import re

__all__ = ["NAME_PATTERN", "check_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def check_name(value: object) -> str | None:
    """Why ``value`` cannot be part of a file name, or None if it can (letters, digits and ``._+=-``,
    starting with a letter or digit, at most 100 characters: no '/', no '..', no hidden files)."""
    if not isinstance(value, str):
        return f"must be a non-empty string, got {value!r}"
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        return (f"must be a non-empty string of letters, digits and '._+=-' without '/' or '..', starting "
                f"with a letter or digit, at most 100 characters; got {value!r}")
    return None
