"""Text prompts of a text-to-image run: the model section's ``prompts`` (a prompts file), read and
checked before anything runs, and the prompt of each sample.

``prompts: {file: <path>, column: <name>, pick: index | seed}``:

* ``file``: UTF-8 text, one prompt per line (``.txt`` or any other suffix), or a column of a ``.csv``
  file (header row) or a ``.jsonl`` file (one JSON object per line); relative paths are also looked up
  under ``$SCOREBENCH_CKPT_DIR`` and the project checkout. Empty lines of a ``.txt`` are skipped.
* ``column``: the CSV/JSONL column (required there, refused for plain text).
* ``pick``: ``index`` (default) — sample i of the run (its position in ``eval.seeds``) takes prompt i,
  so the file needs at least ``num_samples`` prompts; ``seed`` — the prompt is drawn uniformly by the
  sample's seed alone (:func:`solvers.noise.seed_labels` over the number of prompts).

Every problem is a ValueError / FileNotFoundError naming the file and the field (the grid loader
turns it into exit 2, one line, nothing written). The file is part of the run's identity by content
hash (:func:`bench.kinds.diffusers.model_files`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

__all__ = ["PROMPT_KEYS", "PICKS", "check_prompts_section", "prompts_file", "read_prompts", "check_enough",
           "prompt_indices"]

PROMPT_KEYS = ("file", "column", "pick")
PICKS = ("index", "seed")
_TABLES = (".csv", ".jsonl")
_READ: dict[tuple, tuple[str, ...]] = {}  # (path, size, mtime, column) -> prompts, once per process


def check_prompts_section(spec) -> dict:
    """The ``prompts`` mapping with its defaults, its fields checked (not the file)."""
    if not isinstance(spec, dict):
        raise ValueError(f"field 'prompts' must be a mapping {{file, column, pick}}, got {spec!r}")
    unknown = sorted(set(spec) - set(PROMPT_KEYS))
    if unknown:
        raise ValueError(f"field 'prompts': unknown key {unknown[0]!r}; expected one of: {', '.join(PROMPT_KEYS)}")
    if not isinstance(spec.get("file"), str) or not spec["file"]:
        raise ValueError(f"field 'prompts.file' (a prompts file) must be a path, got {spec.get('file')!r}")
    pick = spec.get("pick", "index")
    if pick not in PICKS:
        raise ValueError(f"field 'prompts.pick' must be one of: {', '.join(PICKS)}; got {pick!r}")
    table = Path(spec["file"]).suffix.lower() in _TABLES
    column = spec.get("column")
    if table and not isinstance(column, str):
        raise ValueError(f"field 'prompts.column': {spec['file']} is a {Path(spec['file']).suffix} file; name the "
                         f"column that holds the prompts (prompts.column)")
    if not table and column is not None:
        raise ValueError(f"field 'prompts.column' ({column!r}) given for a plain text file {spec['file']!r} (one "
                         f"prompt per line); column applies to .csv / .jsonl files")
    return {**spec, "pick": pick}


def prompts_file(spec: dict) -> Path | None:
    """The existing prompts file of a ``prompts`` mapping, or None."""
    from bench.kinds.base import CKPT_ENV, resolve_path

    return resolve_path(spec["file"], CKPT_ENV) if isinstance(spec.get("file"), str) else None


def read_prompts(spec: dict) -> tuple[str, ...]:
    """The prompts of the file (checked: found, UTF-8, the column present, at least one prompt)."""
    from bench.kinds.base import where_env

    spec = check_prompts_section(spec)
    path = prompts_file(spec)
    if path is None:
        raise FileNotFoundError(f"prompts file {spec['file']!r} (field 'prompts.file') not found{where_env()}")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, spec.get("column"))
    if key in _READ:
        return _READ[key]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {spec['file']} (field 'prompts.file'): not UTF-8 (byte "
                         f"{e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8") from e
    suffix = path.suffix.lower()
    column = spec.get("column")
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and column not in rows[0]:
            raise ValueError(f"prompts file {spec['file']}: no column {column!r} (field 'prompts.column'); expected "
                             f"one of: {', '.join(rows[0])}")
        prompts = [str(r[column]) for r in rows]
    elif suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompts file {spec['file']} line {i}: not JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get(column), str):
                raise ValueError(f"prompts file {spec['file']} line {i}: no string field {column!r} (field "
                                 f"'prompts.column')")
            prompts.append(row[column])
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {spec['file']} (field 'prompts.file') holds no prompts")
    _READ[key] = tuple(prompts)
    return _READ[key]


def check_enough(spec: dict, num_samples: int) -> None:
    """Under ``pick: index`` the file needs one prompt per sample of the run."""
    n = len(read_prompts(spec))
    if spec.get("pick", "index") == "index" and n < num_samples:
        raise ValueError(f"prompts file {spec['file']} has {n} prompts, fewer than num_samples {num_samples} "
                         f"(prompts.pick: index gives sample i prompt i); add prompts, lower num_samples or use "
                         f"prompts.pick: seed")


def prompt_indices(spec: dict, positions: range, seeds: list[int], n_prompts: int) -> torch.Tensor:
    """The prompt index [B] int64 of the samples at ``positions`` (their places in the run) with ``seeds``."""
    from solvers.noise import seed_labels

    if spec.get("pick", "index") == "seed":
        return seed_labels(seeds, n_prompts)
    idx = torch.tensor(list(positions), dtype=torch.int64)
    if len(idx) and int(idx.max()) >= n_prompts:
        raise ValueError(f"prompts file {spec['file']}: sample {int(idx.max())} needs prompt {int(idx.max())}, the "
                         f"file has {n_prompts}")
    return idx
