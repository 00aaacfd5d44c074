"""The environment variables Numba reads, made safe for charlstm's kernels.

Numba reads its NUMBA_* variables (and a .numba_config.yaml in the working directory)
once, when it is first imported. Some values stopped every kernel-running command with a
traceback, some filled standard output, where samples and --json go, and one could stop
training with an illegal instruction. Each variable here works, or charlstm says in one
line which variable to change:

- NUMBA_NUM_THREADS: Numba refuses to import at 0 or below, and warns with a traceback at
  a value that is not a number. charlstm never uses Numba's thread pool (shards.py runs
  threads of its own), so such a value is dropped before Numba is imported.
- A value Numba cannot parse (NUMBA_OPT=fast, NUMBA_BOUNDSCHECK=yes): Numba ignores it
  after a warning that quotes its own traceback; charlstm says the same in one line.
- NUMBA_DISABLE_JIT: charlstm's kernels call LLVM intrinsics (activations.py, sync.py,
  panels.py), which have no Python version: refused.
- NUMBA_CPU_NAME that LLVM does not know: LLVM ignores it, saying so on standard error at
  every compilation: refused. Another known CPU is fine: Numba still passes this CPU's
  own features, so no instruction it lacks is generated.
- NUMBA_CPU_FEATURES naming a feature this CPU lacks: the kernels would die of SIGILL
  (or LLVM ignores an unknown name at every compilation): refused.
- NUMBA_DEBUG*, NUMBA_DUMP_*: Numba prints on standard output: one warning line.
- NUMBA_OPT below 3: the kernels run slower, and at 0 some cannot be cached: one line.
  (The settings that change machine code, this one among them, are part of each cached
  kernel's key, jit.py, so kernels compiled under them never serve a later start.)

``prepare`` runs when the kernels package is imported, before any module imports Numba,
and imports nothing itself (``info`` and ``export`` import the package for its cell
codes and must stay free of Numba); ``check`` runs in jit.py once Numba is imported.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

from ..errors import UserError

# Numba's _readenv warns with this when it cannot parse a variable's value.
_UNPARSED = re.compile(r"Environment variable '(\w+)' is defined but its associated value "
                       r"'(.*?)' could not be parsed", re.DOTALL)
# Variables that make Numba print on standard output, and the value that means "off".
_PRINTING = {name: "0" for name in (
    "NUMBA_DEBUG", "NUMBA_DEBUG_JIT", "NUMBA_DEBUG_FRONTEND", "NUMBA_DEBUG_TYPEINFER",
    "NUMBA_DEBUG_CACHE", "NUMBA_DEBUG_NRT", "NUMBA_DEBUG_ARRAY_OPT",
    "NUMBA_DEBUG_ARRAY_OPT_RUNTIME", "NUMBA_DEBUG_ARRAY_OPT_STATS", "NUMBA_DEBUG_INLINE_CLOSURE",
    "NUMBA_DUMP_BYTECODE", "NUMBA_DUMP_CFG", "NUMBA_DUMP_IR", "NUMBA_DUMP_SSA", "NUMBA_DUMP_LLVM",
    "NUMBA_DUMP_FUNC_OPT", "NUMBA_DUMP_OPTIMIZED", "NUMBA_DUMP_ASSEMBLY",
    "NUMBA_DUMP_ANNOTATION", "NUMBA_PARALLEL_DIAGNOSTICS")}
_PRINTING.update({name: "none" for name in (
    "NUMBA_DEBUG_PRINT_AFTER", "NUMBA_DEBUG_PRINT_BEFORE", "NUMBA_DEBUG_PRINT_WRAP")})


def prepare(environ=os.environ) -> None:
    """Make ``environ`` (the process's) one Numba imports in: drop a NUMBA_NUM_THREADS that
    is not a positive integer, and keep Numba's multi-line warnings about values it cannot
    parse off standard error (``check`` reports each in one line). Imports nothing."""
    threads = environ.get("NUMBA_NUM_THREADS")
    if threads is not None and not (threads.strip().isdigit() and int(threads) > 0):
        del environ["NUMBA_NUM_THREADS"]
    warnings.filterwarnings("ignore", message=_UNPARSED.pattern, category=RuntimeWarning,
                            module=r"numba\.core\.config")


def check(config, environ=os.environ) -> None:
    """After Numba's import: raise UserError for a variable the kernels cannot run under,
    and print one "Warning: ..." line on standard error for each that works badly.
    ``config`` is numba.core.config."""
    problem = refusal(config, environ)
    if problem:
        raise UserError(problem)
    for line in warnings_about(config, environ):
        print(f"Warning: {line}", file=sys.stderr)


def refusal(config, environ=os.environ) -> str | None:
    """Why charlstm's kernels cannot run under this environment, naming the variable and
    the fix; None if they can."""
    if config.DISABLE_JIT:
        return ("NUMBA_DISABLE_JIT is set, and charlstm's kernels only run compiled (they "
                "call LLVM intrinsics); unset it: env -u NUMBA_DISABLE_JIT charlstm ...")
    import llvmlite.binding as llvm

    cpu = environ.get("NUMBA_CPU_NAME")
    if cpu and cpu != "generic" and _llvm_complains(cpu, ""):
        return (f"NUMBA_CPU_NAME={cpu} is not a processor LLVM knows; unset it (the kernels "
                f"are compiled for this machine's {llvm.get_host_cpu_name()}) or name one, "
                f"e.g. generic")
    features = (f.strip() for f in environ.get("NUMBA_CPU_FEATURES", "").split(","))
    requested = [f.lstrip("+") for f in features if f and not f.startswith("-")]
    host = llvm.get_host_cpu_features() if requested else {}
    missing = [f for f in requested if not host.get(f, False)]
    if missing:
        return (f"NUMBA_CPU_FEATURES asks for {', '.join(missing)}, which this CPU does not "
                f"have: the kernels would stop with an illegal instruction; unset "
                f"NUMBA_CPU_FEATURES or leave {'it' if len(missing) == 1 else 'them'} out")
    return None


def warnings_about(config, environ=os.environ) -> list[str]:
    """One line for each variable that works badly: a value Numba ignored, output mixed
    into charlstm's standard output, slower kernels."""
    lines = [f"{name}={value} is not a value Numba understands, so it is ignored; unset it "
             f"or correct it" for name, value in _unparsed(config)]
    printing = sorted(name for name, off in _PRINTING.items()
                      if environ.get(name, off).strip() not in ("", off))
    if printing:
        lines.append(f"{' and '.join(printing)} make{'s' if len(printing) == 1 else ''} Numba "
                     f"print its debugging output on standard output, among charlstm's; "
                     f"unset {'it' if len(printing) == 1 else 'them'} for charlstm's output alone")
    if config.OPT == 0:
        lines.append("NUMBA_OPT=0 compiles the kernels unoptimised: training and sampling run "
                     "slower, and the kernels that cannot be cached unoptimised are compiled "
                     "again at every start; unset NUMBA_OPT for full speed")
    elif config.OPT < 3:
        lines.append(f"NUMBA_OPT={int(config.OPT)} compiles the kernels less optimised, so "
                     f"training and sampling may run slower; unset NUMBA_OPT for full speed")
    return lines


def _unparsed(config) -> list[tuple[str, str]]:
    """(variable, value) for each value Numba could not parse. Numba warned at its import
    (``prepare`` kept that quiet); reading the environment again repeats the warnings."""
    reloader = getattr(config, "_env_reloader", None)
    if reloader is None:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloader.reset()
    found = (_UNPARSED.search(str(w.message)) for w in caught)
    return [m.groups() for m in found if m]


def _llvm_complains(cpu: str, features: str) -> str:
    """What LLVM writes on standard error when it makes a target machine for ``cpu`` and
    ``features`` (it only writes, it raises nothing): "" for a CPU it knows."""
    import tempfile

    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    target = llvm.Target.from_default_triple()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            target.create_target_machine(cpu=cpu, features=features)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")
