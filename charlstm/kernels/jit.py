"""The one place that sets how kernels are compiled.

- Cached: machine code is kept on disk, so the second start does not recompile. Numba
  invalidates a cached function only when its own file changes, so after an edit to
  activations.py or blas.py the LSTM kernels that inline them kept running the old
  code (and a change of compile options went unnoticed too). So each kernel's cache is
  stamped with a hash of the whole kernels package's source, beside its own file's:
  any edit here recompiles every kernel once (``KernelCache``). Where no cache directory
  can be written (a read-only install and home), kernels are compiled in memory, an
  existing cache beside the source is still read, and a one-line note names
  NUMBA_CACHE_DIR, the way to keep them.
- error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising; the
  per-division check Python semantics need blocks vectorisation of the gate loops.
- fastmath={"contract"} only: multiplies and adds may fuse into FMA instructions (one
  rounding instead of two, never less accurate), and nothing is reassociated, so results
  stay deterministic and the float64 gradient checks keep IEEE semantics otherwise. The
  fused LSTM gate step went from 2.4 to 1.7 ns per hidden unit on an AMD EPYC Zen 5
  (benchmarks/activation_cost.py); the other fastmath flags (reassociation, no NaNs)
  would change results and hide NaNs.
- nogil=True: kernels touch no Python objects, so they release the GIL; the shards of a
  batch (shards.py) then run their kernels on separate cores from separate threads.
"""
import functools
import hashlib
import inspect
import os
import sys
from pathlib import Path

from numba import njit
from numba.core import caching, config as numba_config
from numba.misc.appdirs import AppDirs

from . import environment

environment.check(numba_config)

JIT_OPTIONS = dict(error_model="numpy", fastmath={"contract"}, nogil=True)


def package_source_hash(directory: Path = Path(__file__).resolve().parent) -> str:
    """SHA-256 (hex, 16 digits) over the names and bytes of the package's .py files."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


KERNELS_SOURCE_HASH = package_source_hash()


def _locator(base):
    """``base`` (one of Numba's source-file cache locators) with the package hash in its
    stamp. Numba keeps the stamp in each cached function's index and treats an index with
    another stamp as empty, so the function compiles again and overwrites it."""

    class PackageStampedLocator(base):
        def get_source_stamp(self):
            return (KERNELS_SOURCE_HASH, super().get_source_stamp())

    PackageStampedLocator.__name__ = f"PackageStamped{base.__name__}"
    return PackageStampedLocator


def _numba_class(name):
    # Numba 0.59 dropped the leading underscore of these names.
    return getattr(caching, name, None) or getattr(caching, f"_{name}")


class _ReadOnlyInTreeLocator(_locator(_numba_class("InTreeCacheLocator"))):
    """The kernels' own __pycache__, read where no cache directory can be written: what
    a read-only install holds is still loaded, and nothing new can be saved."""


# Numba's settings (from NUMBA_* variables) that change the machine code of a kernel.
_CODE_SETTINGS = ("OPT", "BOUNDSCHECK", "LOOP_VECTORIZE", "SLP_VECTORIZE", "ENABLE_AVX",
                  "DISABLE_INTEL_SVML", "DEBUGINFO_DEFAULT")


class _KernelCacheImpl(_numba_class("CompileResultCacheImpl")):
    _locator_classes = [_locator(_numba_class(name)) for name in
                        ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]

    def __init__(self, py_func):
        # Numba's CacheImpl.__init__ with two differences. NUMBA_CACHE_LOCATOR_CLASSES is
        # not consulted: its locators would drop the package stamp, and kernels would
        # outlive an edit to what they inline. And where no directory can be written (a
        # read-only install and home), the kernels' own __pycache__ is still read, so an
        # image whose cache was filled when it was built starts without compiling;
        # KernelCache.save_overload then says once that new kernels cannot be kept.
        source = inspect.getfile(py_func)
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = (self._writable_locator(py_func, source)
                         or _ReadOnlyInTreeLocator(py_func, source))
        fullname = f"{os.path.splitext(os.path.basename(source))[0]}.{py_func.__qualname__}"
        self._filename_base = self.get_filename_base(fullname, getattr(sys, "abiflags", ""))

    def _writable_locator(self, py_func, source):
        for cls in self._locator_classes:
            locator = cls.from_function(py_func, source)
            if locator is not None:
                if numba_config.CACHE_DIR and cls is not self._locator_classes[0]:
                    _note(f"NUMBA_CACHE_DIR={numba_config.CACHE_DIR} cannot be written; "
                          f"compiled kernels are kept in {locator.get_cache_path()} instead")
                return locator
        return None

    def check_cachable(self, cres):
        # At NUMBA_OPT=0 a few kernels keep addresses LLVM would have optimised away,
        # and cannot be cached; environment.py says so once instead of a warning each.
        if numba_config.OPT == 0 and cres.library.has_dynamic_globals:
            return False
        return super().check_cachable(cres)


class KernelCache(caching.FunctionCache):
    """Numba's on-disk function cache, stamped with KERNELS_SOURCE_HASH; where nothing
    can be written, kernels are compiled in memory and the user is told once."""

    _impl_class = _KernelCacheImpl

    def _index_key(self, sig, codegen):
        # Numba's key holds the CPU, not the settings the machine code was compiled
        # under: a kernel compiled once under NUMBA_OPT=0 was loaded, unoptimised, by every
        # later start. With them in the key, each setting has its own entry.
        settings = tuple((name, str(getattr(numba_config, name, None)))
                         for name in _CODE_SETTINGS)
        return super()._index_key(sig, codegen) + (settings,)

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except OSError as e:
            locator = self._impl.locator
            if isinstance(locator, _ReadOnlyInTreeLocator):
                _note(f"no directory to keep compiled kernels in ({_unwritable_places(locator)} "
                      f"cannot be written), so every start compiles them again; set "
                      f"NUMBA_CACHE_DIR to a writable directory to keep them")
            else:
                _note(f"compiled kernels cannot be kept in {self.cache_path} "
                      f"({e.strerror or e}), so the next start compiles them again; set "
                      f"NUMBA_CACHE_DIR to a writable directory to keep them")


def _unwritable_places(locator) -> str:
    """The directories a kernel's cache was refused, as a phrase."""
    places = [locator.get_cache_path(), AppDirs(appname="numba", appauthor=False).user_cache_dir]
    if numba_config.CACHE_DIR:
        return f"NUMBA_CACHE_DIR={numba_config.CACHE_DIR}, {places[0]} and {places[1]}"
    return f"NUMBA_CACHE_DIR is not set, and {places[0]} and {places[1]}"


@functools.cache  # each note once per process, not once per kernel
def _note(line: str) -> None:
    print(f"Note: {line}", file=sys.stderr)


def kernel(fn=None, **extra):
    """``@kernel`` or ``@kernel(inline="always")``: njit with charlstm's options and
    its package-stamped cache."""
    options = dict(JIT_OPTIONS, **extra)

    def compile_lazily(f):
        dispatcher = njit(**options)(f)
        # What Dispatcher.enable_caching does (njit(cache=True)), with charlstm's cache.
        dispatcher._cache = KernelCache(dispatcher.py_func)
        return dispatcher

    return compile_lazily if fn is None else compile_lazily(fn)
