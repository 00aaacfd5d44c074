"""What a run will use, and why: decided in one place, before anything is written.

``plan_new_run`` and ``plan_resume`` turn what the user asked (the command line's or the
Python API's options, and which of them were given) into a ``Plan``: the final
configuration, the corpus read and encoded, the checkpoint the run starts from (read
once), the lines to tell the user, and the event the run's history records. Every
default that depends on the machine or on the input is filled here: the budget when none
is given, the thread count, the model's shape under --init-from, the budget table's
recipe, the precision, and the products the tuner measures (machine/tune.py). Nothing
is written: run.py claims the run directory and builds the trainer from a plan.

Over MPI every rank plans from the same inputs; rank 0 alone measures the products, and
its choice is every rank's (ranks.agree).
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from charlstm.data.tokens import CACHE_DIR_NAME, fingerprint
from charlstm.errors import UsageProblem, UserError
from charlstm.machine.cpu import bf16_missing, resolve_precision
from charlstm.machine.tune import Choice, fall_back_if_missing, resolve
from charlstm.model import checkpoint as ckpt_io
from charlstm.parallel.ranks import SingleProcess
from charlstm.training.budget import apply_recipe, describe, recipe_for, wants_recipe
from charlstm.training.config import (ARCHITECTURE, DEFAULT_EPOCHS, OPTION_OF, RESUMABLE,
                                      InvalidSetting, TrainConfig, validate)
from charlstm.training.loop import Data, batches_for, prepare_data
from charlstm.training.time_budget import VALIDATION_SLACK_SECONDS

BUDGETS = ("steps", "epochs", "time_limit")


class BudgetReached(UserError):
    """resume was given no budget beyond the step the run already reached: a recognised
    mistake (exit status 1), not an invalid option."""


@dataclass(frozen=True)
class MachineRequest:
    """How the user asked this machine's computing to be chosen; decided by the plan.

    ``blas``: "auto" (measure, or take what this machine remembers: machine/tune.py),
    LIBRARY or STEP/CHUNK; None: for a new run "auto", for a resume the run's own.
    ``step_weights`` and ``bf16_products``: a choice, or None (measured with "auto",
    else the defaults). ``precision``: auto, float32 or bfloat16; None: for a new run
    float32 (auto when the budget table chooses the run's settings), for a resume the
    run's own. ``retune``: measure even where a choice is remembered."""

    blas: str | None = None
    step_weights: str | None = None
    precision: str | None = None
    bf16_products: str | None = None
    retune: bool = False


@dataclass
class Plan:
    """A run ready to be started (run.start_run) or resumed (run.resume_run)."""

    config: TrainConfig
    data: Data
    run_dir: Path
    history_event: dict  # what the run's history records for this invocation
    notes: list = field(default_factory=list)  # lines the user must read, before training
    warnings: list = field(default_factory=list)  # lines said as "Warning:" (resume)
    tuning: Choice | None = None  # how --blas auto chose, when it did
    init_from: ckpt_io.Checkpoint | None = None  # a new run's starting weights
    resume_from: ckpt_io.Checkpoint | None = None  # the checkpoint a resume continues
    resume_identity: tuple | None = None  # last.npz as read (run.resume_run checks it)
    origin: dict | None = None  # where a resume found the corpus (run.corpus_origin)
    follow_schedule: bool = False  # a resume that ends where its time schedule ends
    changes: dict = field(default_factory=dict)  # the settings a resume was asked to change
    fresh_name: bool = False  # run_dir is a default name, to be claimed exclusively
    force: bool = False


def checked(config: TrainConfig) -> TrainConfig:
    """``config`` if config.validate accepts it; else a UserError naming the option to fix."""
    try:
        return validate(config)
    except InvalidSetting as e:
        option = OPTION_OF.get(e.name, e.name).replace("_", "-")
        raise UserError(f"{e}; fix --{option}") from None


def token_cache_dir(run_dir: Path) -> Path:
    """Encoded corpora are cached inside the run (tokens.py), so removing a run removes
    everything it wrote."""
    return Path(run_dir) / CACHE_DIR_NAME


def default_threads(batch_size: int, ranks) -> int:
    """Cores a training step uses when --threads is not given: every core this process
    may use, at most its rows of the batch; over MPI, the machine's cores shared by the
    ranks on it."""
    from charlstm.model.shards import default_threads as one_process

    rows = -(-batch_size // ranks.size)
    if ranks.size == 1:
        return one_process(rows)
    return max(1, min(rows, one_process(rows) // ranks.local_size()))


def default_run_dir() -> Path:
    """runs/DATE-TIME-MILLISECONDS-XXXX (XXXX random hex): a name that runs started at
    the same moment, in one directory or on machines that share it, do not share.
    run.start_run creates it exclusively (run.claim_new_run_dir)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("runs") / f"{stamp}-{int(now % 1 * 1000):03d}-{secrets.token_hex(2)}"


def fix_schedule_horizon(config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """Fix the cosine schedule's horizon at the start of a run, so resuming (with any
    budget) continues the same schedule. Raises UsageProblem when nothing bounds it."""
    if config.lr_schedule != "cosine" or config.lr_horizon > 0 or config.lr_horizon_time > 0:
        return config
    limits = []
    if config.steps is not None:
        limits.append(config.steps)
    if config.epochs is not None:
        limits.append(math.ceil(config.epochs * steps_per_epoch))
    if not limits:
        if config.time_limit is not None:
            return config  # anneals over the time budget (loop.run_training sets it)
        raise UsageProblem("--lr-schedule cosine needs --steps, --epochs, --time or --lr-horizon")
    return config.replace(lr_horizon=min(limits))


def corpus_origin(run_dir: Path, base: Path | None = None) -> dict:
    """Where relative corpus paths are read from (``base``, default the working
    directory), as an absolute path and relative to the run directory, and where the run
    directory was; saved with the run (checkpoint.py)."""
    base = Path.cwd() if base is None else Path(base)
    run_dir = Path(run_dir).resolve()
    return {"absolute": str(base), "from_run": os.path.relpath(base, run_dir), "run_dir": str(run_dir)}


def _measured(config: TrainConfig, vocab_size: int, request: MachineRequest, blas: str,
              ranks) -> tuple[TrainConfig, Choice | None]:
    """``config`` with its products decided (rank 0 measures, when it must)."""
    if not ranks.is_root:
        return config, None
    return resolve(config, vocab_size, blas, request.step_weights, request.retune,
                   request.bf16_products)


# -- a new run ---------------------------------------------------------------------------

def plan_new_run(settings: dict, given: set[str] | None = None,
                 request: MachineRequest = MachineRequest(), out: Path | None = None,
                 force: bool = False, init_from: Path | None = None, ranks=None) -> Plan:
    """The plan of a new run of ``settings`` (TrainConfig fields; ``threads`` None or
    absent: ``default_threads``).

    ``given``: the settings the user chose (on the command line, in --config's file, or
    as the API's arguments): with a --time budget alone and no chosen model size, the
    others come from the budget table (budget.py), told in a note and recorded in the
    history; None: ``settings`` are taken as they are. A run that names no budget trains
    DEFAULT_EPOCHS epochs. ``init_from``: a checkpoint (file or run directory) whose
    weights, model shape and vocabulary the run starts from, with a fresh optimizer; the
    shape not given is the checkpoint's, a shape given must match it. ``out``: the run
    directory (default runs/<timestamp>-<random>, claimed exclusively when the run
    starts); one that holds a run is refused unless ``force``.

    Raises UserError (its message names the fix) for bad settings, an unreadable corpus,
    a corpus with characters outside ``init_from``'s vocabulary, a directory that holds a
    run, bfloat16 on a CPU without it, or a BLAS that is not installed."""
    ranks = ranks if ranks is not None else SingleProcess()
    given = None if given is None else set(given)
    settings = dict(settings)
    fresh = out is None
    run_dir = Path(ranks.bcast(str(out) if out is not None else str(default_run_dir())))
    source = source_path = recipe_note = None
    planned, choice, data, error = None, None, None, None
    try:
        unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise UsageProblem(f"no such setting: {', '.join(unknown)}")
        if init_from is not None:
            source_path = ckpt_io.resolve_checkpoint(init_from, prefer_best=True)
            source = ckpt_io.load(source_path)
            for name in ARCHITECTURE:  # the shape not given is the checkpoint's
                if given is None or name not in given:
                    settings[name] = getattr(source.config, name)
        if settings.get("threads") is None:
            settings["threads"] = default_threads(
                settings.get("batch_size", TrainConfig.batch_size), ranks)
        config = TrainConfig(**settings)
        if config.steps is None and config.epochs is None and config.time_limit is None:
            config = config.replace(epochs=DEFAULT_EPOCHS)
        config = checked(config.replace(ranks=ranks.size))
        if (run_dir / "last.npz").exists() and not force:
            raise UserError(
                f"{run_dir} already holds a run; continue it with `charlstm resume {run_dir}` "
                f"or pass --force to start over")
        if source is not None:
            _check_init_from(config, source, source_path)
        data = prepare_data(config, vocab=source.vocab if source is not None else None)
        table = given is not None and source is None and wants_recipe(config, given)
        if table:
            config, data, recipe_note = _take_budget_recipe(config, data, given)
        precision = request.precision or ("auto" if table else None)
        if precision is not None:
            config = config.replace(precision=resolve_precision(precision))
        config = fix_schedule_horizon(config, data.batches.steps_per_epoch)
        planned, choice = _measured(config, len(data.vocab), request, request.blas or "auto",
                                    ranks)
    except UserError as e:
        error = e
    config = ranks.agree(error, planned)
    event = {"step": 0, "event": "train"}
    notes = []
    if recipe_note is not None:
        event.update(budget_recipe=recipe_note[0], chosen=recipe_note[1])
        notes.append(recipe_note[2])
    if source is not None:
        event.update(init_from=str(source_path), init_from_step=source.step,
                     init_from_corpus=[f.sha256 for f in source.corpus_files])
        notes.append(f"starting from the weights of {source_path} (step {source.step})")
    return Plan(config, data, run_dir, event, notes, tuning=choice, init_from=source,
                fresh_name=fresh, force=force)


def _check_init_from(config: TrainConfig, source, source_path: Path) -> None:
    if config.forget_bias is not None:
        raise UsageProblem("--forget-bias sets initial weights, which --init-from takes "
                           "from the checkpoint: drop one of them")
    for name in ARCHITECTURE:
        if getattr(config, name) != getattr(source.config, name):
            raise UsageProblem(
                f"--{name.replace('_', '-')} {getattr(config, name)} differs from "
                f"{source_path}'s {getattr(source.config, name)}; --init-from takes the "
                f"model's shape from the checkpoint: drop the option")


def _take_budget_recipe(config: TrainConfig, data, given: set[str]):
    """``config`` and ``data`` with the budget table's settings the user did not give, and
    (recipe name, the settings chosen, the line that tells the user), or None when the
    table chose nothing. Raises UserError when the chosen batch does not fit the text."""
    train_chars = len(data.train_ids)
    recipe = recipe_for(train_chars, config.time_limit)
    config, chosen = apply_recipe(config, recipe, given)
    if not chosen:
        return config, data, None
    config = checked(config)
    if (data.batches.B, data.batches.T) != (config.batch_size, config.seq_len):
        data = dataclasses.replace(data, batches=batches_for(data.train_ids, config))
    return config, data, (recipe.name, chosen, describe(config, recipe, chosen, train_chars))


# -- a resume ----------------------------------------------------------------------------

def plan_resume(run_dir: Path, changes: dict | None = None,
                request: MachineRequest = MachineRequest(), ranks=None) -> Plan:
    """The plan of continuing the run in ``run_dir`` from its last.npz (read once).

    ``changes``: settings that differ from the saved ones, among RESUMABLE (budgets,
    cadence, threads, the learning-rate schedule, clipping, dropout, weight decay,
    ``corpus`` for fine-tuning); the plan's history event records each. Without a new
    corpus, the saved corpus files must still have their SHA-256 (``locate_corpus``).
    ``request``: a new choice of products or precision; without one, a run whose
    library or bfloat16 products are missing here continues on what is here, and the
    plan's warnings say what that costs. Raises UserError (CheckpointError,
    BudgetReached) naming the fix; a run may continue on another number of ranks."""
    ranks = ranks if ranks is not None else SingleProcess()
    run_dir = Path(run_dir)
    error, choice, warnings = None, None, []
    changes = dict(changes or {})
    plan = None
    try:
        refused = sorted(set(changes) - set(RESUMABLE))
        if refused:
            raise UsageProblem(f"resume cannot change {', '.join(refused)}")
        last_path = ckpt_io.resolve_checkpoint(run_dir)
        identity = file_identity(last_path)
        ckpt = ckpt_io.load(last_path)
        config = checked(ckpt.config.replace(**changes, ranks=ranks.size))
        if "corpus" not in changes:
            readable, origin = locate_corpus(ckpt, run_dir)
            data = prepare_data(config.replace(corpus=readable), vocab=ckpt.vocab,
                                cache_dir=token_cache_dir(run_dir))
            data.corpus_files = ckpt.corpus_files  # the same SHA-256, under the paths as given
        else:
            origin = corpus_origin(run_dir)
            data = prepare_data(config, vocab=ckpt.vocab, cache_dir=token_cache_dir(run_dir))
        follow_schedule = config.lr_horizon_time > 0 and not any(k in changes for k in BUDGETS)
        if follow_schedule:
            # A schedule that follows a time budget: continue to its end, no further.
            remaining = config.lr_horizon_time - ckpt.elapsed
            # What is left went to the final validation and the slack kept for it.
            if remaining <= 0.05 * config.lr_horizon_time + VALIDATION_SLACK_SECONDS:
                raise BudgetReached(
                    f"the run already spent its time budget ({config.lr_horizon_time:.0f} s of "
                    f"training); give --steps, --epochs or --time to train further")
            config = config.replace(time_limit=remaining)
        if "lr_schedule" in changes and changes["lr_schedule"] != ckpt.config.lr_schedule:
            config = fix_schedule_horizon(config.replace(lr_horizon=changes.get("lr_horizon", 0)),
                                          data.batches.steps_per_epoch)
        config = _resumed_precision(config, request, warnings)
        if (request.blas, request.step_weights, request.bf16_products) != (None, None, None):
            blas = request.blas or config.blas
            step_weights = request.step_weights or (None if blas == "auto" else config.step_weights)
            config, choice = _measured(config, len(data.vocab),
                                       dataclasses.replace(request, step_weights=step_weights),
                                       blas, ranks)
        else:
            config, warning = fall_back_if_missing(config)
            if warning:
                warnings.append(warning)
        plan = Plan(config, data, run_dir, _resume_event(ckpt, config, data), warnings=warnings,
                    tuning=choice, resume_from=ckpt, resume_identity=(last_path, identity),
                    origin=origin, follow_schedule=follow_schedule, changes=changes)
    except UserError as e:
        error = e
    config = ranks.agree(error, plan.config if plan is not None else None)
    plan.config = config
    return plan


def _resumed_precision(config: TrainConfig, request: MachineRequest, warnings: list) -> TrainConfig:
    if request.precision is not None:
        return config.replace(precision=resolve_precision(request.precision))
    if config.precision == "bfloat16" and bf16_missing():
        warnings.append(f"this run trained with bfloat16 products, which {bf16_missing()}: "
                        f"continuing in float32, which rounds differently from here on")
        return config.replace(precision="float32")
    return config


def _resume_event(ckpt, config: TrainConfig, data) -> dict:
    """The history event of a resume: what changed, and a new corpus's SHA-256."""
    changed = {name: [_plain(getattr(ckpt.config, name)), _plain(getattr(config, name))]
               for name in TrainConfig.__dataclass_fields__
               if getattr(ckpt.config, name) != getattr(config, name)}
    event = {"step": ckpt.step, "event": "resume", "changes": changed}
    if [f.sha256 for f in data.corpus_files] != [f.sha256 for f in ckpt.corpus_files]:
        event["corpus_sha256"] = [f.sha256 for f in data.corpus_files]
    return event


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def file_identity(path: Path):
    """What tells one version of a file from the next (rename replaces the inode)."""
    st = Path(path).stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def locate_corpus(ckpt, run_dir: Path) -> tuple[tuple, dict]:
    """The saved run's corpus specs made readable from here, and the origin they were
    found under. Tried in order, the first whose files have the saved SHA-256 winning:
    the place the corpus has relative to the run directory (so a run moved together with
    its corpus finds it, paths given as absolute ones included), the directory the paths
    were given in, and the working directory. Raises UserError naming the fix when the
    files are missing or changed everywhere."""
    specs = ckpt.config.corpus
    here = Path(run_dir).resolve()
    candidates = []  # (base for relative specs, specs placed)
    if ckpt.origin.get("from_run"):
        base = (here / ckpt.origin["from_run"]).resolve()
        then = ckpt.origin.get("run_dir")
        moved = tuple(str(here / os.path.relpath(s, then)) if then and os.path.isabs(s) else s
                      for s in specs)
        candidates.append((base, moved))
    if ckpt.origin.get("absolute"):
        candidates.append((Path(ckpt.origin["absolute"]), specs))
    candidates.append((Path.cwd(), specs))
    saved = [f.sha256 for f in ckpt.corpus_files]
    found_changed, looked = None, []
    for base, given in candidates:
        placed = tuple(s if s.startswith("builtin:") or os.path.isabs(s) else str(base / s)
                       for s in given)
        if placed in looked:
            continue
        looked.append(placed)
        try:
            current = fingerprint(placed, ckpt.config.encoding)
        except UserError:
            continue  # not there
        if [f.sha256 for f in current] == saved:
            if base == Path.cwd() and given == specs:
                placed = specs  # keep the paths as the user gave them
            return placed, corpus_origin(run_dir, base)
        found_changed = found_changed or placed
    if found_changed is not None:
        raise UserError(
            f"the corpus changed since the checkpoint was written (the SHA-256 of "
            f"{', '.join(found_changed)} differs); restore it, or pass --corpus PATH to "
            f"continue on new text")
    raise UserError(
        f"the run's corpus is not found: looked for {'; '.join(', '.join(p) for p in looked)}; "
        f"pass --corpus PATH to continue on it where it is now")
