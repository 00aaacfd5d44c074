"""What this CPU is and which of charlstm's instruction-dependent paths it can run.

Read at run time, never assumed: the same install runs on an AMD EPYC Zen 3 (AVX2), a
Zen 4 (AVX-512 with AVX512_BF16), a Zen 5, or an Intel Xeon with AMX.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from charlstm.errors import UserError

PRECISION_CHOICES = ("auto", "float32", "bfloat16")
DEFAULT_PRECISION = "float32"


@dataclass(frozen=True)
class CpuIdentity:
    """The CPU as /proc/cpuinfo names it: a virtual machine may call it only "AMD EPYC",
    so vendor, family and model are kept to say which one it is."""

    name: str
    vendor: str
    family: str
    model: str
    flags: frozenset

    def describe(self) -> str:
        """E.g. 'AMD EPYC (AuthenticAMD family 25 model 17)'."""
        if not self.vendor:
            return self.name
        return f"{self.name} ({self.vendor} family {self.family} model {self.model})"


@lru_cache(maxsize=None)
def identity() -> CpuIdentity:
    """This machine's CPU (the first processor /proc/cpuinfo lists); 'unknown' fields
    where the file is missing (not Linux)."""
    fields, flags = {}, frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return CpuIdentity(fields.get("model name", "unknown CPU"), fields.get("vendor_id", ""),
                       fields.get("cpu family", ""), fields.get("model", ""), flags)


@lru_cache(maxsize=None)
def _compile_features() -> frozenset:
    """The features the kernels are compiled for: LLVM's view of the host (which checks
    that the operating system saves the AVX-512 registers too), or what NUMBA_CPU_FEATURES
    sets when a user compiles for another CPU."""
    from numba.core import config as numba_config

    if numba_config.CPU_FEATURES:
        text = numba_config.CPU_FEATURES
    else:
        import llvmlite.binding as llvm

        text = llvm.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in text.split(",") if f.startswith("+"))


def has_bf16_products() -> bool:
    """Whether the CPU has AVX512_BF16 (VDPBF16PS), which kernels/bf16.py needs."""
    return "avx512bf16" in _compile_features()


def has_amx_bf16() -> bool:
    """Whether the CPU has AMX tiles with bfloat16 (Intel Sapphire Rapids and later),
    which oneMKL's bfloat16 GEMM uses by itself."""
    return "amx-bf16" in _compile_features() or "amx_bf16" in identity().flags


def bf16_missing() -> str | None:
    """Why this CPU cannot run bfloat16 products, or None when it can."""
    if has_bf16_products():
        return None
    return (f"this CPU, {identity().describe()}, has no AVX512_BF16 (the bfloat16 dot "
            f"products of AMD Zen 4 and later and Intel Cooper Lake, Sapphire Rapids and "
            f"later)")


def resolve_precision(requested: str) -> str:
    """The precision a run uses for ``--precision requested``: 'auto' is bfloat16 where
    the CPU has its products, float32 elsewhere. Raises UserError for bfloat16 on a CPU
    without them, naming what it lacks."""
    if requested == "auto":
        return "bfloat16" if has_bf16_products() else "float32"
    if requested == "bfloat16":
        missing = bf16_missing()
        if missing:
            raise UserError(f"--precision bfloat16 cannot run here: {missing}; use "
                            f"--precision float32 (or auto)")
    return requested
