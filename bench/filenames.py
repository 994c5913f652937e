"""Safe file names for everything the report writes: model keys, metric names and run ids come
from records (data, not trusted), so none of them may steer a path outside the output folder.

:func:`safe_name` maps any string to one path component of ``[A-Za-z0-9._-]`` that does not start
with a dot; a name that had to change gets a short hash of the original, so two different names
never collide. :func:`output_path` joins such components under the output folder and checks that
the result stays inside it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["safe_name", "output_path"]

_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LEN = 80


def safe_name(text: object) -> str:
    """One file-name component for ``text``: itself if already safe, else a cleaned form plus a hash.

    >>> safe_name("mixture_vp"), safe_name("../../etc/passwd")[:14]
    ('mixture_vp', 'etc_passwd-936')
    """
    s = str(text)
    clean = _ALLOWED.sub("_", s).strip("._-")[:MAX_LEN]
    if clean == s and s not in ("", ".", ".."):
        return s
    digest = hashlib.sha1(s.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{clean}-{digest}" if clean else digest


def output_path(out: str | Path, *parts: object, suffix: str = "") -> Path:
    """``out / safe_name(p1) / ... / (safe_name(pn) + suffix)``, guaranteed to lie inside ``out``.

    Raises:
        ValueError: if the path would leave ``out`` (cannot happen with safe components; checked anyway).
    """
    root = Path(out).resolve()
    names = [safe_name(p) for p in parts]
    if names:
        names[-1] += suffix
    path = root.joinpath(*names)
    if not path.resolve().is_relative_to(root) or path == root:
        raise ValueError(f"refusing to write {path}: outside the output folder {root}")
    return path
