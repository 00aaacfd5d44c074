"""The one place that sets how kernels are compiled.

- Cached: machine code is kept on disk, so the second start does not recompile. Numba
  invalidates a cached function only when its own file changes, so after an edit to
  activations.py or blas.py the LSTM kernels that inline them kept running the old
  code (and a change of compile options went unnoticed too). So each kernel's cache is
  stamped with a hash of the whole kernels package's source, beside its own file's:
  any edit here recompiles every kernel once (``KernelCache``).
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
import hashlib
from pathlib import Path

from numba import njit
from numba.core import caching

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


class _KernelCacheImpl(_numba_class("CompileResultCacheImpl")):
    _locator_classes = [_locator(_numba_class(name)) for name in
                        ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]


class KernelCache(caching.FunctionCache):
    """Numba's on-disk function cache, stamped with KERNELS_SOURCE_HASH."""

    _impl_class = _KernelCacheImpl


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
