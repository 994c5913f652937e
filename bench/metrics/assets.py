"""Where FID's files live: the TorchScript Inception and the reference statistics.

Lookup never touches the network. A missing file raises :class:`MissingAssetError` at once, naming
the file, its URL and where to put it. Downloading is a separate, explicit step for users with
internet (``python -m bench.metrics.assets inception`` or ``... stats cifar10 32 train``): urllib
into a temporary file beside the target, then an atomic rename, so an interrupted download leaves
nothing behind.

Places searched, in order:

* the TorchScript Inception ``inception-2015-12-05.pt`` (the file clean-fid's ``InceptionV3W``
  loads for both ``legacy_tensorflow`` and ``clean``): an explicit path (file or folder),
  ``$SCOREBENCH_CACHE`` (default ``~/.cache/scorebench``), then clean-fid's own download folders
  (``/tmp`` on Linux and macOS, the working directory on Windows);
* reference statistics ``{dataset}_{mode}_{split}_{res}.npz`` (clean-fid's names, lower case; KID
  features add ``_kid``): an explicit path, ``$SCOREBENCH_CACHE/stats``, then the ``stats`` folder
  inside the installed clean-fid package (found without importing it).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "STATS_URL",
    "atomic_write",
    "MissingAssetError",
    "cache_dir",
    "download",
    "find_inception",
    "find_reference_stats",
    "stats_file_name",
]

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"
MODES = ("legacy_tensorflow", "clean")


class MissingAssetError(FileNotFoundError):
    """A weights or statistics file FID needs is not on this machine."""


def cache_dir() -> Path:
    """The project's cache: ``$SCOREBENCH_CACHE``, else ``~/.cache/scorebench`` (never site-packages)."""
    env = os.environ.get("SCOREBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scorebench"


def _cleanfid_dir() -> Path | None:
    """The installed clean-fid package folder, found without importing it (it may not import)."""
    try:
        spec = importlib.util.find_spec("cleanfid")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing(what: str, name: str, url: str, searched: list[Path], put: Path, fetch: str) -> MissingAssetError:
    places = "\n".join(f"  - {p}" for p in searched)
    return MissingAssetError(
        f"{what} '{name}' not found. Searched:\n{places}\n"
        f"Nothing is downloaded automatically. With internet, run `python -m bench.metrics.assets {fetch}`, "
        f"or download\n  {url}\nand put it at\n  {put}\n(or set SCOREBENCH_CACHE to the folder holding it)."
    )


def find_inception(path: str | Path | None = None) -> Path:
    """Path of the TorchScript Inception file.

    Args:
        path: an explicit file, or a folder holding ``inception-2015-12-05.pt``.

    Raises:
        MissingAssetError: where no candidate exists.
    """
    if path is not None:
        p = Path(path).expanduser()
        candidates = [p / INCEPTION_FILE if p.is_dir() else p]
    else:
        clean_fid_home = Path.cwd() if platform.system() == "Windows" else Path("/tmp")
        candidates = [cache_dir() / INCEPTION_FILE, clean_fid_home / INCEPTION_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise _missing("TorchScript Inception", INCEPTION_FILE, INCEPTION_URL, candidates, cache_dir() / INCEPTION_FILE,
                    "inception")


def stats_file_name(dataset: str, res: int | str, split: str, mode: str, kid: bool = False) -> str:
    """clean-fid's file name for precomputed statistics, e.g. ``cifar10_legacy_tensorflow_train_32.npz``."""
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; expected one of: {', '.join(MODES)}")
    return f"{dataset}_{mode}_{split}_{res}{'_kid' if kid else ''}.npz".lower()


def find_reference_stats(dataset: str, res: int | str, split: str, mode: str, path: str | Path | None = None,
                         kid: bool = False) -> Path:
    """Path of reference statistics (``mu``/``sigma``, or ``feats`` for KID) in clean-fid's format.

    Raises:
        MissingAssetError: where no candidate exists.
    """
    name = stats_file_name(dataset, res, split, mode, kid)
    if path is not None:
        candidates = [Path(path).expanduser()]
    else:
        candidates = [cache_dir() / "stats" / name]
        pkg = _cleanfid_dir()
        if pkg is not None:
            candidates.append(pkg / "stats" / name)
    for c in candidates:
        if c.is_file():
            return c
    fetch = f"stats {dataset} {res} {split} --mode {mode}{' --kid' if kid else ''}"
    raise _missing("Reference statistics", name, STATS_URL + name, candidates, cache_dir() / "stats" / name, fetch)


def atomic_write(path: str | Path, write) -> Path:
    """Write ``path`` via ``write(binary file)`` into a temporary file beside it, fsync, then rename it into
    place: an interrupted write leaves the old file or none, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def download(url: str, dest: str | Path) -> Path:
    """Download ``url`` to ``dest`` atomically (:func:`atomic_write`)."""

    def fetch(f) -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, f)

    return atomic_write(dest, fetch)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.metrics.assets",
                                     description="Fetch FID files into the scorebench cache (needs internet).")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("inception", help=f"the TorchScript Inception ({INCEPTION_FILE})")
    st = sub.add_parser("stats", help="clean-fid's precomputed reference statistics")
    st.add_argument("dataset")
    st.add_argument("res")
    st.add_argument("split")
    st.add_argument("--mode", default="legacy_tensorflow", choices=MODES)
    st.add_argument("--kid", action="store_true", help="the KID feature file instead of mu/sigma")
    args = parser.parse_args(argv)
    if args.what == "inception":
        url, dest = INCEPTION_URL, cache_dir() / INCEPTION_FILE
    else:
        name = stats_file_name(args.dataset, args.res, args.split, args.mode, args.kid)
        url, dest = STATS_URL + name, cache_dir() / "stats" / name
    print(f"downloading {url}\n  -> {dest}")
    download(url, dest)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
