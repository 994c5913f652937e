"""Reference statistics in EDM2's format (a pickle), read as data: numpy arrays only, of a known protocol.

EDM2's ``calculate_metrics.py ref`` (NVlabs/edm2; read, not copied) writes ``pickle.dump(dict(num_images=N,
fid=dict(mu=..., sigma=...), fd_dinov2=dict(mu=..., sigma=...)))`` with float64 numpy arrays — the
published ``dataset-refs/img512.pkl`` and ``img64.pkl`` are such files. Their protocol is fixed by that code
and is not stored in the file:

* ``fid``: NVIDIA's TorchScript port of the TF Inception (the file clean-fid loads) called on uint8 images at
  their own size, resized inside the network — clean-fid's ``legacy_tensorflow`` mode;
* ``fd_dinov2``: ``DINOv2Detector(resize_mode='torch')`` (``ref`` passes no resize mode): ``F.interpolate``
  bicubic with antialiasing to 224 — ``dinov2_resize: torch`` here.

A run that asks for another protocol is refused (:func:`check_protocol`). EDM's (v1) ``fid-refs/*.npz``
(``mu``, ``sigma``) are npz files and load as any other (:class:`~bench.metrics.reference.ReferenceStats`).

Untrusted files are data, not code: the file is read by :func:`models.edm.unpickle.read_reference_stats`,
a restricted unpickler that resolves only numpy's array, dtype and scalar reconstructors (and EDM's
``EasyDict``, read as a dict) and refuses every other global, so no function of the file's choosing is
ever called; here, anything but sections of numeric ``mu`` [D] and ``sigma`` [D, D] is refused too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["EDM2_PROTOCOL", "check_protocol", "is_edm_pickle", "read_edm_reference"]

# What each section of an EDM2 reference pickle was computed with (calculate_metrics.py), as the run's fields.
EDM2_PROTOCOL = {"fid": {"mode": "legacy_tensorflow"}, "fd_dinov2": {"dinov2_resize": "torch"}}


def is_edm_pickle(path: str | Path) -> bool:
    """Whether ``path`` names EDM2's pickle format (by its ``.pkl`` suffix)."""
    return Path(path).suffix.lower() == ".pkl"


def read_edm_reference(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{section: {'mu': [D], 'sigma': [D, D]}}`` (float64) of an EDM2 reference pickle, and ``num_images``.

    Raises:
        ValueError: not such a file (names the file and the field), or a global other than numpy's arrays
            (the unpickler's refusal, naming it).
    """
    from models.edm.unpickle import UnsafePickleError, read_reference_stats  # only where a .pkl is named

    path = Path(path)
    try:
        raw = read_reference_stats(path)
    except UnsafePickleError as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of statistics, found {type(raw).__name__}")
    out: dict = {}
    for section, stats in raw.items():
        if section == "num_images":
            if isinstance(stats, int) and not isinstance(stats, bool):
                out["num_images"] = stats
            continue
        if not isinstance(stats, dict) or not {"mu", "sigma"} <= set(stats):
            raise ValueError(f"{path}: field {section!r} must hold 'mu' and 'sigma'")
        mu, sigma = stats["mu"], stats["sigma"]
        for key, arr, ndim in (("mu", mu, 1), ("sigma", sigma, 2)):
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim != ndim:
                raise ValueError(f"{path}: field '{section}.{key}' must be a {ndim}-d numeric array")
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: field '{section}.sigma' has shape {sigma.shape}, mu has {mu.shape}")
        out[section] = {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}
    return out


def check_protocol(path: str | Path, section: str, **asked: object) -> dict[str, np.ndarray]:
    """The ``section`` (``'fid'`` or ``'fd_dinov2'``) of an EDM2 reference pickle, after checking that the run's
    protocol fields ``asked`` (``mode=...`` or ``dinov2_resize=...``) are those it was computed with.

    Raises:
        ValueError: one line naming the file and the field: the section is absent, or of another protocol.
    """
    stats = read_edm_reference(path)
    if section not in stats:
        have = ", ".join(k for k in stats if k != "num_images") or "none"
        raise ValueError(f"{path}: field {section!r} is missing (sections: {have})")
    for field, value in EDM2_PROTOCOL.get(section, {}).items():
        if field in asked and asked[field] != value:
            raise ValueError(f"{path}: field {section!r} holds statistics of {field} {value!r} (EDM2's "
                             f"calculate_metrics.py), the run asks for {asked[field]!r}")
    return {**stats[section], "num_images": stats.get("num_images")}
