"""Starting a run and resuming one: everything between the options and the training loop.

The command line (cli.py) and the tests call these same functions, so what a run checks
before it spends any training time (the output directory, the corpus's fingerprint, the
budget, the BLAS) is checked the same way everywhere.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from . import checkpoint as ckpt_io
from .config import InvalidSetting, TrainConfig, validate
from .errors import UsageProblem, UserError
from .tokens import CACHE_DIR_NAME, fingerprint
from .train import Trainer, prepare_data
from .tune import fall_back_if_missing, resolve

DEFAULT_EPOCHS = 10  # the budget of a run that names none
OPTION_OF = {"time_limit": "time"}  # settings whose option is not named after them


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
    """Encoded corpora are cached beside the run, shared by the runs of one parent."""
    return Path(run_dir).resolve().parent / CACHE_DIR_NAME


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


def start_run(config: TrainConfig, out_dir: Path | None = None, force: bool = False,
              blas: str = "auto", step_weights: str | None = None) -> tuple[Trainer, Path]:
    """A new run of ``config`` in ``out_dir`` (default runs/<timestamp>), ready to train.

    ``config.threads`` is taken as given; a config with no budget trains DEFAULT_EPOCHS
    epochs. ``blas``/``step_weights`` as ``tune.resolve`` takes them. Raises UserError
    (its message names the fix) for a directory that already holds a run (unless
    ``force``) or cannot be written, bad settings, an unreadable corpus or a BLAS that
    is not installed."""
    if config.steps is None and config.epochs is None and config.time_limit is None:
        config = config.replace(epochs=DEFAULT_EPOCHS)
    config = checked(config)
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    if (out_dir / "last.npz").exists() and not force:
        raise UserError(
            f"{out_dir} already holds a run; continue it with `charlstm resume {out_dir}` "
            f"or pass --force to start over")
    data = prepare_data(config, cache_dir=token_cache_dir(out_dir))
    config = fix_schedule_horizon(config, data.batches.steps_per_epoch)
    config, _ = resolve(config, len(data.vocab), blas, step_weights)
    prepare_run_dir(out_dir)
    return Trainer(config, data), out_dir


def resume_run(run_dir: Path, changes: dict | None = None, blas: str | None = None,
               step_weights: str | None = None, warn=None) -> Trainer:
    """The run in ``run_dir``, from its last.npz, ready to continue.

    ``changes``: settings that differ from the saved ones (budgets, cadence, threads,
    ``corpus`` for fine-tuning). Without a new corpus, the saved corpus files must still
    have their SHA-256. ``blas``/``step_weights``: a new choice (as ``tune.resolve``
    takes them); without one, a run whose library is missing here continues on OpenBLAS
    and ``warn`` (a function of one line) says so. Raises UserError (CheckpointError,
    BudgetReached) naming the fix."""
    run_dir = Path(run_dir)
    changes = dict(changes or {})
    ckpt = ckpt_io.load(ckpt_io.resolve_checkpoint(run_dir))
    config = checked(ckpt.config.replace(**changes))
    if "corpus" not in changes:
        current = fingerprint(config.corpus, config.encoding)
        if [(f.path, f.sha256) for f in current] != [(f.path, f.sha256) for f in ckpt.corpus_files]:
            raise UserError(
                "the corpus changed since the checkpoint was written (its SHA-256 differs); "
                "restore it, or pass --corpus PATH to continue on new text")
    data = prepare_data(config, vocab=ckpt.vocab, cache_dir=token_cache_dir(run_dir))
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
    return trainer
