"""Starting a run and resuming one: everything between the options and the training loop.

The command line (cli.py) and the tests call these same functions, so what a run checks
before it spends any training time (the output directory, the corpus's fingerprint, the
budget, the BLAS) is checked the same way everywhere.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from . import checkpoint as ckpt_io
from .config import InvalidSetting, TrainConfig, validate
from .errors import UsageProblem, UserError
from .lock import RunLock
from .tokens import CACHE_DIR_NAME, fingerprint, write_cache
from .train import Trainer, prepare_data
from .tune import fall_back_if_missing, resolve

DEFAULT_EPOCHS = 10  # the budget of a run that names none
OPTION_OF = {"time_limit": "time"}  # settings whose option is not named after them
# Settings `resume` may change: they steer how training goes on without changing what
# the checkpoint holds (the model's shape, the optimizer's statistics, the data layout).
RESUMABLE = ("lr", "lr_schedule", "warmup", "lr_decay", "lr_decay_every", "lr_min",
             "lr_horizon", "clip", "dropout", "weight_decay", "steps", "epochs",
             "time_limit", "save_every", "eval_every", "log_every", "val_chars", "threads",
             "corpus", "encoding", "blas", "step_weights")
# What --init-from takes from its checkpoint: the model's shape and vocabulary.
ARCHITECTURE = ("cell", "hidden_size", "num_layers")


class BudgetReached(UsageProblem):
    """resume was given no budget beyond the step the run already reached."""


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


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(out_dir: Path) -> None:
    """Create the run directory and prove it is writable before any training time is
    spent. Raises UserError naming the fix."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".charlstm-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {out_dir} ({e.strerror or e}); choose another --out") from None


def fix_schedule_horizon(config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """Fix the cosine schedule's horizon at the start of a run, so resuming (with any
    budget) continues the same schedule. Raises UsageProblem when nothing bounds it."""
    if config.lr_schedule != "cosine" or config.lr_horizon > 0:
        return config
    limits = []
    if config.steps is not None:
        limits.append(config.steps)
    if config.epochs is not None:
        limits.append(math.ceil(config.epochs * steps_per_epoch))
    if not limits:
        raise UsageProblem("--lr-schedule cosine needs --steps, --epochs or --lr-horizon")
    return config.replace(lr_horizon=min(limits))


def corpus_origin(run_dir: Path) -> dict:
    """Where relative corpus paths are read from (the working directory), as an absolute
    path and relative to the run directory; saved with the run (checkpoint.py)."""
    cwd = Path.cwd()
    return {"absolute": str(cwd), "from_run": os.path.relpath(cwd, Path(run_dir).resolve())}


def start_run(config: TrainConfig, out_dir: Path | None = None, force: bool = False,
              blas: str = "auto", step_weights: str | None = None,
              init_from: Path | None = None) -> tuple[Trainer, Path]:
    """A new run of ``config`` in ``out_dir`` (default runs/<timestamp>), ready to train.

    ``config.threads`` is taken as given; a config with no budget trains DEFAULT_EPOCHS
    epochs. ``blas``/``step_weights`` as ``tune.resolve`` takes them. ``init_from``: a
    checkpoint (file or run directory) whose weights, model shape and vocabulary the run
    starts from, with a fresh optimizer; ``config``'s cell and sizes must match it.
    Nothing is written until every check has passed; the run directory is then locked
    (lock.py) until training ends. Raises UserError (its message names the fix) for a
    directory that already holds a run (unless ``force``) or cannot be written, bad
    settings, an unreadable corpus, a corpus with characters outside ``init_from``'s
    vocabulary, or a BLAS that is not installed."""
    if config.steps is None and config.epochs is None and config.time_limit is None:
        config = config.replace(epochs=DEFAULT_EPOCHS)
    config = checked(config)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    if (out_dir / "last.npz").exists() and not force:
        raise UserError(
            f"{out_dir} already holds a run; continue it with `charlstm resume {out_dir}` "
            f"or pass --force to start over")
    source = None
    if init_from is not None:
        source_path = ckpt_io.resolve_checkpoint(init_from, prefer_best=True)
        source = ckpt_io.load(source_path)
        if config.forget_bias is not None:
            raise UsageProblem("--forget-bias sets initial weights, which --init-from takes "
                               "from the checkpoint: drop one of them")
        for name in ARCHITECTURE:
            if getattr(config, name) != getattr(source.config, name):
                raise UsageProblem(
                    f"--{name.replace('_', '-')} {getattr(config, name)} differs from "
                    f"{source_path}'s {getattr(source.config, name)}; --init-from takes the "
                    f"model's shape from the checkpoint: drop the option")
    data = prepare_data(config, vocab=source.vocab if source is not None else None)
    config = fix_schedule_horizon(config, data.batches.steps_per_epoch)
    config, _ = resolve(config, len(data.vocab), blas, step_weights)
    prepare_run_dir(out_dir)
    lock = RunLock(out_dir).acquire()
    write_cache(token_cache_dir(out_dir), data.encoded)
    trainer = Trainer(config, data, initial_params=source.params if source is not None else None)
    trainer.lock = lock
    trainer.origin = corpus_origin(out_dir)
    trainer.history.append({"step": 0, "event": "train"})
    if source is not None:
        trainer.history[-1].update(init_from=str(source_path), init_from_step=source.step,
                                   init_from_corpus=[f.sha256 for f in source.corpus_files])
    return trainer, out_dir


def locate_corpus(ckpt, run_dir: Path) -> tuple[tuple, dict]:
    """The saved run's corpus specs made readable from here, and the origin they were
    found under: relative paths are tried from where the run directory says they were
    given (so a run moved together with its corpus still finds it), from the absolute
    directory they were given in, and from the working directory, in that order; the
    first place whose files have the saved SHA-256 wins. Raises UserError naming the fix
    when the files are missing or changed everywhere."""
    specs = ckpt.config.corpus
    bases = []
    if ckpt.origin.get("from_run"):
        bases.append((Path(run_dir).resolve() / ckpt.origin["from_run"]).resolve())
    if ckpt.origin.get("absolute"):
        bases.append(Path(ckpt.origin["absolute"]))
    bases.append(Path.cwd())
    saved = [f.sha256 for f in ckpt.corpus_files]
    found_changed = None
    for base in dict.fromkeys(bases):
        placed = tuple(s if s.startswith("builtin:") or os.path.isabs(s) else str(base / s)
                       for s in specs)
        try:
            current = fingerprint(placed, ckpt.config.encoding)
        except UserError:
            continue  # not there
        if [f.sha256 for f in current] == saved:
            if base == Path.cwd():
                placed = specs  # keep the paths as the user gave them
            return placed, {"absolute": str(base),
                            "from_run": os.path.relpath(base, Path(run_dir).resolve())}
        found_changed = found_changed or placed
    if found_changed is not None:
        raise UserError(
            f"the corpus changed since the checkpoint was written (the SHA-256 of "
            f"{', '.join(found_changed)} differs); restore it, or pass --corpus PATH to "
            f"continue on new text")
    raise UserError(
        f"the run's corpus ({', '.join(specs)}) is not found from here, from where it was "
        f"given ({', '.join(str(b) for b in dict.fromkeys(bases[:-1])) or 'unknown'}); pass "
        f"--corpus PATH to continue on it where it is now")


def resume_run(run_dir: Path, changes: dict | None = None, blas: str | None = None,
               step_weights: str | None = None, warn=None) -> Trainer:
    """The run in ``run_dir``, from its last.npz, ready to continue.

    ``changes``: settings that differ from the saved ones, among RESUMABLE (budgets,
    cadence, threads, the learning-rate schedule, clipping, dropout, weight decay,
    ``corpus`` for fine-tuning); each change is recorded in the run's history. Without a
    new corpus, the saved corpus files must still have their SHA-256 (``locate_corpus``).
    When the validation text changes, the best-so-far restarts: best.npz is renamed
    best-before-step-N.npz and the trainer's notes say so. ``blas``/``step_weights``: a
    new choice (as ``tune.resolve`` takes them); without one, a run whose library is
    missing here continues on OpenBLAS and ``warn`` (a function of one line) says so.
    Raises UserError (CheckpointError, BudgetReached) naming the fix."""
    run_dir = Path(run_dir)
    changes = dict(changes or {})
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise UsageProblem(f"resume cannot change {', '.join(refused)}")
    ckpt = ckpt_io.load(ckpt_io.resolve_checkpoint(run_dir))
    config = checked(ckpt.config.replace(**changes))
    origin = ckpt.origin
    if "corpus" not in changes:
        readable, origin = locate_corpus(ckpt, run_dir)
        data = prepare_data(config.replace(corpus=readable), vocab=ckpt.vocab,
                            cache_dir=token_cache_dir(run_dir))
        data.corpus_files = ckpt.corpus_files  # the same SHA-256, under the paths as given
    else:
        origin = corpus_origin(run_dir)
        data = prepare_data(config, vocab=ckpt.vocab, cache_dir=token_cache_dir(run_dir))
    if "lr_schedule" in changes and changes["lr_schedule"] != ckpt.config.lr_schedule:
        config = fix_schedule_horizon(config.replace(lr_horizon=changes.get("lr_horizon", 0)),
                                      data.batches.steps_per_epoch)
    if blas is not None or step_weights is not None:
        config, _ = resolve(config, len(data.vocab), blas or config.blas,
                            step_weights or (None if blas == "auto" else config.step_weights))
    else:
        config, warning = fall_back_if_missing(config)
        if warning and warn is not None:
            warn(warning)
    trainer = Trainer(config, data, resume_from=ckpt)
    limit = trainer.step_limit()
    if limit is not None and trainer.step >= limit and changes.get("time_limit") is None:
        raise BudgetReached(
            f"the run already reached its budget (step {trainer.step}); "
            f"give a larger --steps or --epochs, or --time, to train further")
    prepare_run_dir(run_dir)
    trainer.lock = RunLock(run_dir).acquire()
    trainer.origin = origin
    changed = {name: [_plain(getattr(ckpt.config, name)), _plain(getattr(config, name))]
               for name in TrainConfig.__dataclass_fields__
               if getattr(ckpt.config, name) != getattr(config, name)}
    entry = {"step": ckpt.step, "event": "resume", "changes": changed}
    if [f.sha256 for f in data.corpus_files] != [f.sha256 for f in ckpt.corpus_files]:
        entry["corpus_sha256"] = [f.sha256 for f in data.corpus_files]
    trainer.history.append(entry)
    if _validation_text_changed(ckpt, config, data):
        trainer.best_val_bpc = float("nan")
        trainer.notes.append(_restart_best(run_dir, ckpt.step))
    return trainer


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _validation_text_changed(ckpt, config: TrainConfig, data) -> bool:
    return ([f.sha256 for f in data.corpus_files] != [f.sha256 for f in ckpt.corpus_files]
            or config.val_frac != ckpt.config.val_frac or config.val_chars != ckpt.config.val_chars)


def _restart_best(run_dir: Path, step: int) -> str:
    """Move best.npz aside (its score was measured on another validation text) and say
    where it went."""
    best = Path(run_dir) / "best.npz"
    if not best.is_file():
        return "the validation text changed: the best-so-far restarts"
    kept = Path(run_dir) / f"best-before-step-{step}.npz"
    os.replace(best, kept)
    return (f"the validation text changed: the best-so-far restarts, and the best model "
            f"on the earlier text is kept as {kept}")
