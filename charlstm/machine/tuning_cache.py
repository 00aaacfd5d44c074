"""What `--blas auto` measured, remembered per machine and shape (the tuner's "wisdom").

Timing the candidates takes 0.1-2 s at every start, and candidates within noise of each
other can be chosen differently by two runs, which then round differently: two fresh
runs with one seed gave different models. So the choice is kept, the way FFTW keeps its
wisdom and cuDNN its benchmark cache, in ``tuning.json`` under the user's cache
directory ($XDG_CACHE_HOME/charlstm, else ~/.cache/charlstm), keyed by everything the
measurement depends on: the CPU (vendor, family, model, name and flags), the BLAS
libraries with their versions and code paths, charlstm's version and kernels, and the
run's shapes and precision. A later run with the same key takes the choice without
measuring; `--retune` measures again and replaces it.

A cache that cannot be read or written is not an error: the run measures, as without it.
The file is replaced through a temporary name, never written in place.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILE_NAME = "tuning.json"
FORMAT = 1
MAX_ENTRIES = 256  # the oldest go first


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/charlstm, or ~/.cache/charlstm."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charlstm"


def key_for(shape: dict) -> str:
    """The cache key of a measurement of ``shape`` (the run's shapes and precision, a
    JSON-serialisable dict) on this machine with this install."""
    from charlstm import __version__
    from charlstm.machine.cpu import identity
    from charlstm.kernels import blas_libraries
    from charlstm.kernels.jit import KERNELS_SOURCE_HASH

    cpu = identity()
    libraries = {}
    for name in blas_libraries.available():
        libraries[name] = blas_libraries.load(name).describe()
    described = {
        "cpu": [cpu.name, cpu.vendor, cpu.family, cpu.model,
                hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16]],
        "libraries": libraries,
        "charlstm": [__version__, KERNELS_SOURCE_HASH],
        "shape": shape,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def lookup(key: str) -> dict | None:
    """The entry stored under ``key`` ({"blas", "step_weights", "timings", ...}), or None."""
    entry = _read(cache_dir() / FILE_NAME).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("blas"), str) \
            and isinstance(entry.get("step_weights"), str):
        return entry
    return None


def store(key: str, entry: dict) -> bool:
    """Keep ``entry`` under ``key``; returns whether it could be written."""
    from charlstm.files import new_temporary

    directory = cache_dir()
    path = directory / FILE_NAME
    entries = _read(path)
    entries.pop(key, None)
    entries[key] = entry
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(directory, f".{FILE_NAME}.", ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "entries": entries}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        return False
