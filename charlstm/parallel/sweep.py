"""Sweeps: a grid of training options, each trial a `charlstm train` process of its own,
scheduled by Dask distributed (the optional extra ``charlstm[sweep]``).

A sweep file is TOML::

    [train]                 # the options every trial shares, as `train --config` reads them
    corpus = ["data/novel.txt"]
    time = "10m"

    [grid]                  # a list of values per option; every combination is a trial
    hidden_size = [256, 512]
    dropout = [0.0, 0.25]

    [sweep]                 # optional
    out = "sweeps/novel"    # default: sweeps/<the file's name>
    metric = "best_val_bpc" # or "final_val_bpc"; lower is better

Each trial runs the real trainer in its own process (compiled kernels do not pickle,
and a process keeps a crash to itself), in ``OUT/trial-<hash>``, the hash of its
resolved options. So running a sweep again is idempotent: a finished trial (its
trial.json written) is skipped, and one that was interrupted continues with `resume`,
bit-identical to never having stopped. A trial whose process fails, or whose worker
dies, is run again (resumed) up to ``retries`` times by Dask; after that it is recorded
as failed with the last line of its error, and the sweep goes on. Each finished trial
is one line of ``OUT/sweep.jsonl`` as it finishes.

Run directories must be on a filesystem every worker shares; corpus paths are made
absolute before the trials are sent out.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from charlstm.cli.console import STOP_SIGNALS
from charlstm.errors import UserError
from charlstm.files import (JsonLines, atomic_write, cannot_write, print_warning, read_json_lines)
from charlstm.parallel.launchers import LAUNCHER_NAMES

SWEEP_HINT = "sweeps need Dask distributed: pip install 'charlstm[sweep]'"
METRICS = ("best_val_bpc", "final_val_bpc")
RESULT_NAME = "trial.json"
RESULTS_NAME = "sweep.jsonl"
SWEEP_KEYS = ("out", "metric")  # what the [sweep] table holds
# Dask's workers set these to 1 so that libraries do not oversubscribe the cores; a trial
# decides its own threads (--threads, --cores-per-trial), so its process gets them unset.
# It gets no MPI launcher's variables either (launchers.py): a worker that mpiexec
# or srun started passed them on, and every trial took itself for one of the job's ranks.
THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LOCK_RETRY_SECONDS = 30  # how long a retried trial waits for its dying predecessor's lock
# The exit statuses of a trial that a stop signal ended after saving (console.STOP_SIGNALS).
STOPPED_STATUSES = frozenset(128 + s for s in STOP_SIGNALS)


@dataclass
class Sweep:
    base: dict  # TrainConfig field -> value, shared by every trial
    grid: dict  # TrainConfig field -> list of values
    out: Path
    metric: str


@dataclass
class Trial:
    options: dict  # TrainConfig field -> value: base and one grid combination
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_sweep(path) -> Sweep:
    """The sweep in TOML file ``path``. Raises UserError naming the file and the key for
    a missing table, an unknown key, a value of the wrong type or an empty list."""
    from charlstm.training.config_file import (TABLE, is_train_key, load_document, misplaced_key, option, train_options)

    path = Path(path)
    document = load_document(path)
    homes = {"sweep": lambda k: k in SWEEP_KEYS, TABLE: is_train_key}
    tables = (TABLE, "grid", "sweep")
    for name, value in document.items():
        if name in tables and not isinstance(value, dict):
            raise UserError(f"{path}: {name!r} is a key here, not a table; write [{name}] on a "
                            f"line of its own, with its keys on the lines under it")
        if name not in tables:
            if isinstance(value, dict):
                raise UserError(f"{path}: unknown table [{name}]; a sweep file has [train], "
                                f"[grid] and [sweep]")
            raise UserError(f"{path}: {misplaced_key(name, homes)}")
    for table in (TABLE, "grid"):
        misplaced = sorted(k for k in document.get(table, {}) if k in SWEEP_KEYS)
        if misplaced:
            raise UserError(f"{path} [{table}]: key {misplaced[0]!r} belongs in [sweep]; move it there")
    base = train_options(document.get(TABLE, {}), str(path))
    grid = {}
    for key, values in document.get("grid", {}).items():
        where = f"{path} [grid]"
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: key {key!r} must be a non-empty list of values")
        checked = [option(key, v, where) for v in values]
        grid[checked[0][0]] = [value for _, value in checked]
    settings = document.get("sweep", {})
    extra = sorted(set(settings) - set(SWEEP_KEYS))
    if extra:
        belongs = (f"; {extra[0]!r} belongs in [train] (one value) or [grid] (a list of values)"
                   if is_train_key(extra[0]) else "")
        raise UserError(f"{path} [sweep]: unknown key {extra[0]!r}; the keys are out and metric{belongs}")
    metric = settings.get("metric", "best_val_bpc")
    if metric not in METRICS:
        raise UserError(f"{path} [sweep]: metric must be one of {', '.join(METRICS)}, not {metric!r}")
    out = settings.get("out", str(Path("sweeps") / path.stem))
    if not isinstance(out, str) or not out:
        raise UserError(f"{path} [sweep]: out must be a directory path (a string), not {out!r}")
    out = Path(out)
    # Workers may run elsewhere: paths are made absolute here, where the user gave them.
    if "corpus" in base:
        base["corpus"] = tuple(p if p.startswith("builtin:") else str(Path(p).resolve())
                               for p in base["corpus"])
    return Sweep(base, grid, out.resolve(), metric)


def trials(sweep: Sweep, cores_per_trial: int | None = None) -> list[Trial]:
    """Every combination of the grid over the base options, in the grid's order, each
    checked as `train` would check it and named by a hash of its options. Raises
    UserError naming a combination that no run could use."""
    from charlstm.training.config import InvalidSetting, TrainConfig, validate

    names = list(sweep.grid)
    found, seen = [], set()
    for values in itertools.product(*(sweep.grid[n] for n in names)):
        options = {**sweep.base, **dict(zip(names, values))}
        if cores_per_trial is not None and "threads" not in options:
            options["threads"] = cores_per_trial
        try:
            validate(TrainConfig(**options))
        except (InvalidSetting, TypeError) as e:
            combo = ", ".join(f"{n} = {v!r}" for n, v in zip(names, values))
            raise UserError(f"the trial {combo or 'of [train]'} is not a valid run: {e}") from None
        key = json.dumps(json_options(options), sort_keys=True)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        if digest not in seen:  # a value listed twice is one trial
            seen.add(digest)
            found.append(Trial(options, sweep.out / f"trial-{digest}"))
    return found


# Ctrl-C and a closed terminal signal the whole process group: the sweep, which stops
# its cluster, and each trial, which saves; not the cluster's processes, which started
# deaf to them (``_cluster_deaf_to_the_terminal``) and so print no traceback each.
TERMINAL_SIGNALS = tuple(s for s in STOP_SIGNALS if s != signal.SIGTERM)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: deliver SIGTERM to the trial when the worker that started it dies, so a
    killed worker never leaves its trial training (charlstm saves and exits on it); and
    let the trial hear the terminal's signals, which its worker does not."""
    for signum in TERMINAL_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL_SIGNALS)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def json_options(options: dict) -> dict:
    """Trial options as JSON holds them (the corpus tuple as a list)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


class TrialFailed(RuntimeError):
    pass


def run_trial(options: dict, run_dir: str, metric: str) -> dict:
    """Run one trial to the end of its budget, in a `charlstm` process of its own, and
    return its result (also written to RUN_DIR/trial.json): this is the function Dask
    runs on a worker. A run directory with a checkpoint is resumed; a finished trial is
    not run again. Raises TrialFailed with the process's last error line."""
    from charlstm.training.config_file import write_options

    run_dir = Path(run_dir)
    done = run_dir / RESULT_NAME
    kept = _kept_result(done)
    if kept is not None:
        return kept
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "trial.toml"
    with atomic_write(config_path, "w", encoding="utf-8") as f:
        f.write(write_options(options, "One trial of a charlstm sweep."))
    env = {k: v for k, v in os.environ.items() if k not in THREAD_LIMITS and k not in LAUNCHER_NAMES}
    waited = 0.0
    while True:
        if (run_dir / "last.npz").is_file():
            command = [sys.executable, "-m", "charlstm", "resume", str(run_dir), "--quiet"]
        else:
            command = [sys.executable, "-m", "charlstm", "train", "--config", str(config_path),
                       "--out", str(run_dir), "--quiet"]
        proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode == 1 and "is in use by" in error and waited < LOCK_RETRY_SECONDS:
            time.sleep(0.5)  # the process of a dead worker is still saving its checkpoint
            waited += 0.5
            continue
        break
    if proc.returncode in STOPPED_STATUSES:
        # Stopped by Ctrl-C, SIGTERM or a closed terminal, its progress saved: not a
        # failure to retry or record; the next run of the sweep resumes it.
        return {"trial": run_dir.name, "run_dir": str(run_dir), "status": "interrupted",
                "options": json_options(options), "metric": None}
    if proc.returncode != 0 and not (proc.returncode == 1 and "already reached its budget" in error):
        raise TrialFailed(error)
    result = _trial_result(options, run_dir, metric)
    with atomic_write(done, "w", encoding="utf-8") as f:
        f.write(json.dumps(result))
    return result


def _trial_result(options: dict, run_dir: Path, metric: str) -> dict:
    from charlstm.model import checkpoint as ckpt_io

    last = ckpt_io.load(run_dir / "last.npz")
    rows = read_json_lines(run_dir / "metrics.jsonl").records
    scored = [r["val_bpc"] for r in rows if isinstance(r.get("val_bpc"), (int, float))]
    best = None if last.best_val_bpc != last.best_val_bpc else last.best_val_bpc  # NaN: none
    result = {"trial": run_dir.name, "run_dir": str(run_dir), "status": "finished",
              "options": json_options(options),
              "best_val_bpc": best, "final_val_bpc": scored[-1] if scored else None,
              "steps": last.step, "elapsed": last.elapsed}
    result["metric"] = result[metric]
    return result


def _is_result(record) -> bool:
    """Whether ``record`` is a trial's result as run_trial writes it: a name, a metric
    that is a number or null, options that are a table; what a report reads of it."""
    if not isinstance(record, dict) or not isinstance(record.get("trial"), str):
        return False
    metric, options = record.get("metric"), record.get("options", {})
    return (metric is None or isinstance(metric, (int, float)) and not isinstance(metric, bool)) \
        and isinstance(options, dict) and isinstance(record.get("status", ""), str) \
        and isinstance(record.get("reason", ""), str)


def _kept_result(path: Path) -> dict | None:
    """The result in a trial's trial.json, or None when there is none or it is damaged
    (cut off or zero-filled by a crash): the trial is then taken up again, and its run,
    finished, gives the result anew."""
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if _is_result(record) else None


def _latest(records: list) -> dict:
    """The trials of sweep.jsonl's ``records`` that finished, by name (the last record
    of each): a failed one is tried again by a new run of the sweep."""
    found = {record["trial"]: record for record in records}
    return {k: r for k, r in found.items() if r.get("status") == "finished"}


def _read_results(out: Path, warn) -> JsonLines:
    """The records of OUT/sweep.jsonl (none if it does not exist yet); ``warn`` is given
    one line naming the lines left out (cut off by a crash: their trials are taken up
    again). Raises UserError when the file cannot be read."""
    path = out / RESULTS_NAME
    if not path.is_file():
        return JsonLines(path)
    log = read_json_lines(path, _is_result)
    if log.skipped:
        warn(f"{log.skipped_note()}; their trials are taken up again")
    return log


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is empty, missing, or ends with a newline: a record appended to
    it starts a line of its own."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None


def _rewrite_results(out: Path, records: list) -> None:
    """OUT/sweep.jsonl holding ``records`` alone, replaced whole: a line cut by a crash
    goes, and the next result appended does not run into it."""
    path = out / RESULTS_NAME
    try:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
    except OSError as e:
        raise cannot_write(path, e, "it is kept as it was; run the sweep again once the "
                                    "disk has room") from None


def run_sweep(sweep: Sweep, workers: int | None = None, scheduler: str | None = None,
              cores_per_trial: int = 1, retries: int = 2, quiet: bool = False,
              echo=print) -> list[dict]:
    """Run every trial of ``sweep`` not yet in OUT/sweep.jsonl on Dask: on a local cluster
    of ``workers`` single-task worker processes listening on 127.0.0.1 only (default:
    cores // cores_per_trial), or on the cluster at ``scheduler``. Each result is appended
    to OUT/sweep.jsonl as its trial ends; returns them all. Raises UserError when Dask is
    not installed or the scheduler cannot be reached."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(SWEEP_HINT) from None

    from charlstm.training.lock import RunLock
    from charlstm.data.tokens import fingerprint

    planned = trials(sweep, cores_per_trial)
    # What every trial reads is checked once, here, before any worker starts.
    for corpus in dict.fromkeys(t.options.get("corpus", ()) for t in planned):
        fingerprint(corpus, sweep.base.get("encoding", "utf-8"))
    try:
        sweep.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {sweep.out} ({e.strerror or e}); choose another out") from None
    lock = RunLock(sweep.out).acquire()  # one sweep at a time writes sweep.jsonl
    try:
        return _run_trials(sweep, planned, workers, scheduler, cores_per_trial, retries, quiet, echo)
    finally:
        lock.release()


def _run_trials(sweep, planned, workers, scheduler, cores_per_trial, retries, quiet, echo):
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    results_log = _read_results(sweep.out, lambda line: echo(f"Warning: {line}"))
    if results_log.skipped or not _ends_a_line(results_log.path):
        _rewrite_results(sweep.out, results_log.records)
    finished = _latest(results_log.records)
    todo = [t for t in planned if t.name not in finished]
    echo(f"{len(planned)} trials, {len(planned) - len(todo)} finished before; writing {sweep.out}")
    results = [finished[t.name] for t in planned if t.name in finished]
    if not todo:
        return results
    cluster = None
    if scheduler is None:
        n = workers or max(1, (os.cpu_count() or 1) // max(cores_per_trial, 1))
        # The scheduler's HTTP server (its health checks and, when bokeh is installed,
        # the dashboard) on a free loopback port: never 8787, which may be taken.
        with _cluster_deaf_to_the_terminal():
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                   memory_limit=0,  # a failed trial is reported once, below
                                   silence_logs=logging.CRITICAL)
    try:
        client = Client(cluster if cluster is not None else scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        raise UserError(f"cannot reach the Dask scheduler {scheduler} ({e}); start it with "
                        f"`dask scheduler` or leave out --scheduler for a local cluster") from None
    path = sweep.out / RESULTS_NAME
    try:
        log = open(path, "a", encoding="utf-8")
    except OSError as e:
        client.close()
        if cluster is not None:
            cluster.close()
        raise cannot_write(path, e, "make it writable and run the sweep again") from None
    try:
        futures = {client.submit(run_trial, t.options, str(t.run_dir), sweep.metric, key=t.name,
                                 pure=False, retries=retries): t for t in todo}
        bar = tqdm(total=len(todo), unit="trial", disable=quiet, file=sys.stderr)
        for future in as_completed(futures):
            trial = futures[future]
            try:
                result = future.result()
            except Exception as e:  # the trial failed on every try, or its worker kept dying
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                result = {"trial": trial.name, "run_dir": str(trial.run_dir), "status": "failed",
                          "reason": reason, "options": json_options(trial.options),
                          "metric": None}
            if result.get("status") == "interrupted":
                continue  # not finished: left out of sweep.jsonl, resumed by the next run
            try:
                log.write(json.dumps(result) + "\n")
                log.flush()
            except OSError as e:
                raise cannot_write(path, e, "the finished trials keep their results in their "
                                            "run directories: run the sweep again once the "
                                            "disk has room") from None
            results.append(result)
            bar.update(1)
        bar.close()
    finally:
        try:
            log.close()
        except OSError:
            pass  # a failed write was reported above
        client.close()
        if cluster is not None:
            cluster.close()
    return results


@contextlib.contextmanager
def _cluster_deaf_to_the_terminal():
    """While the local cluster starts, TERMINAL_SIGNALS are blocked and SIGINT ignored:
    its processes (and the threads started meanwhile) inherit both and never take
    them (Python unblocks SIGINT at start-up, but leaves an ignored one ignored). A
    SIGHUP that arrives meanwhile reaches this process when the block ends; a Ctrl-C
    in those seconds is lost."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def report(out: Path, warn=print_warning) -> list[dict]:
    """The finished trials of OUT/sweep.jsonl, best first (lowest metric). Lines that are
    not whole results (cut off by a crash) are left out, and ``warn`` is given one line
    saying so. Raises UserError when there is no sweep.jsonl or no line of it is usable."""
    path = Path(out) / RESULTS_NAME
    if not path.is_file():
        raise UserError(f"{out} holds no {RESULTS_NAME}; run `charlstm sweep SWEEP.toml` first")
    log = read_json_lines(path, _is_result)
    if log.skipped and not log.records:
        raise UserError(f"{log.skipped_note()}; no result is left to report: run the sweep "
                        f"again, which takes its trials up again")
    if log.skipped:
        warn(f"{log.skipped_note()}; a new run of the sweep takes their trials up again")
    found = list(_latest(log.records).values())
    return sorted(found, key=lambda r: (r.get("metric") is None, r.get("metric") or 0.0))


def report_lines(results: list[dict], grid_keys=None) -> list[str]:
    """A table of ``results`` (as ``report`` orders them): metric, steps, the options
    that differ between trials, and the run directory."""
    varying = grid_keys or sorted({k for r in results for k in r.get("options", {})
                                   if len({json.dumps(x.get("options", {}).get(k)) for x in results}) > 1})
    lines = ["metric    steps  " + "  ".join(varying) + "  trial"]
    for r in results:
        metric = "failed" if r.get("status") == "failed" else (
            "-" if r.get("metric") is None else f"{r['metric']:.4f}")
        values = "  ".join(str(r.get("options", {}).get(k)) for k in varying)
        tail = f"  ({r.get('reason', 'no reason recorded')})" if r.get("status") == "failed" else ""
        lines.append(f"{metric:<9} {r.get('steps', '-')!s:>6}  {values}  {r['trial']}{tail}")
    return lines
