"""Starting a run and resuming one from its plan (plan.py): the run directory claimed
and locked, the trainer built, the history recorded.

The command line and the Python API (api.py) call these same functions, so what a run
checks before it spends any training time is checked the same way everywhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from charlstm.data.tokens import write_cache
from charlstm.errors import UserError
from charlstm.model import checkpoint as ckpt_io
from charlstm.parallel.ranks import SingleProcess
from charlstm.training.config import TrainConfig
from charlstm.training.lock import RunLock
from charlstm.training.loop import Trainer, validations_without_improvement
from charlstm.training.plan import (BudgetReached, Plan, corpus_origin, default_run_dir,
                                    file_identity, token_cache_dir)


def claim_new_run_dir(out_dir: Path, attempts: int = 100) -> Path:
    """Create the default-named run directory ``out_dir`` with an exclusive mkdir, so
    no other process starting a run at the same moment has it; if its name is taken,
    another fresh name (``default_run_dir``) in the same parent. Returns the directory
    made. Raises UserError when the parent cannot be written."""
    for _ in range(attempts):
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            out_dir.mkdir()
            return out_dir
        except FileExistsError:
            out_dir = out_dir.parent / default_run_dir().name
        except OSError as e:
            raise UserError(f"cannot write to {out_dir.parent} ({e.strerror or e}); "
                            f"choose another --out") from None
    raise UserError(f"no free run directory name in {out_dir.parent}; give --out")


def prepare_run_dir(out_dir: Path, fix: str = "choose another --out") -> None:
    """Create the run directory and prove it is writable before any training time is
    spent. Raises UserError naming ``fix``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".charlstm-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {out_dir} ({e.strerror or e}); {fix}") from None


def start_run(plan: Plan, ranks=None) -> tuple[Trainer, Path]:
    """The new run ``plan`` (plan.plan_new_run) built and its directory claimed: created
    (a default name exclusively), locked (lock.py) until training ends, cleared of the
    run it replaces under --force, and given the token cache. The model is built first,
    so one too large for memory leaves no directory behind; a refusal leaves nothing.
    Returns the trainer and the run directory. Raises UserError naming the fix. Over MPI
    rank 0 alone writes; the directory it claims is every rank's."""
    ranks = ranks if ranks is not None else SingleProcess()
    error, trainer, out_dir, existed = None, None, plan.run_dir, plan.run_dir.exists()
    try:
        source = plan.init_from
        trainer = Trainer(plan.config, plan.data,
                          initial_params=source.params if source is not None else None,
                          ranks=ranks)
        trainer.tuning = plan.tuning
        trainer.history.append(dict(plan.history_event))
        trainer.notes.extend(plan.notes)
        if ranks.is_root:  # rank 0 alone writes
            out_dir = _claim_run_dir(trainer, out_dir, plan.force, existed, plan.fresh_name)
    except UserError as e:
        error = e
    try:
        out_dir = Path(ranks.agree(error, str(out_dir)))  # the name rank 0 claimed
    except BaseException:
        if ranks.is_root and error is None:  # another rank failed: undo the claim
            trainer.lock.release()
            if not existed:
                shutil.rmtree(out_dir, ignore_errors=True)
        raise
    trainer.origin = corpus_origin(out_dir)  # where the run is, once it is claimed
    return trainer, out_dir


def _claim_run_dir(trainer: Trainer, out_dir: Path, force: bool, existed: bool,
                   fresh: bool = False) -> Path:
    """Create and lock the run directory, and write the token cache: after every check,
    so a refused run leaves nothing behind (a directory it made is removed). ``fresh``:
    ``out_dir`` is a default name, created exclusively, or another if it is taken.
    Returns the run directory."""
    if fresh:
        out_dir = claim_new_run_dir(out_dir)
    prepare_run_dir(out_dir)
    try:
        trainer.lock = RunLock(out_dir).acquire()
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    try:
        # Checked again under the lock: another process may have started a run here
        # while this one read its corpus.
        if (out_dir / "last.npz").exists() and not force:
            raise UserError(
                f"{out_dir} already holds a run (another process started it meanwhile); "
                f"continue it with `charlstm resume {out_dir}` or pass --force to start over")
        if force:
            _clear_previous_run(out_dir)
        write_cache(token_cache_dir(out_dir), trainer.data.encoded)
    except BaseException:  # a refusal, or Ctrl-C before the first checkpoint
        trainer.lock.release()
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing of it was the user's
        raise
    return out_dir


def _clear_previous_run(out_dir: Path) -> None:
    """--force: the checkpoints of the run being replaced go, so that nothing in the
    directory (best.npz above all, which sample and eval prefer) speaks of the old run."""
    for old in [out_dir / "last.npz", out_dir / "best.npz", *out_dir.glob("best-before-step-*.npz")]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass


def resume_run(plan: Plan, ranks=None) -> Trainer:
    """The resume ``plan`` (plan.plan_resume) built: the trainer continues its checkpoint
    exactly; refused (BudgetReached) when it has no budget left, or stopped early for a
    patience the resume does not raise. Rank 0 locks the run directory, checks that
    last.npz is still the one planned from, writes the token cache, records the resume in
    the history and settles best.npz (``_settle_best``, whose note joins the trainer's).
    Raises UserError naming the fix."""
    ranks = ranks if ranks is not None else SingleProcess()
    config = plan.config
    error = trainer = None
    try:
        trainer = Trainer(config, plan.data, resume_from=plan.resume_from, ranks=ranks)
        trainer.tuning = plan.tuning
        trainer.train_to_schedule_end = plan.follow_schedule
        limit = trainer.step_limit()
        if limit is not None and trainer.step >= limit and plan.changes.get("time_limit") is None:
            raise BudgetReached(
                f"the run already reached its budget (step {trainer.step}); "
                f"give a larger --steps or --epochs, or --time, to train further")
        stale, best = validations_without_improvement(trainer.metrics, config.min_delta)
        if config.patience and stale >= config.patience:
            raise BudgetReached(
                f"the run stopped early: its last {stale} validations did not beat {best:.4f} bpc "
                f"by {config.min_delta:g} (--patience {config.patience}); give a larger --patience, "
                f"or --patience 0, to train further")
        if ranks.is_root:  # rank 0 alone writes
            _claim_resumed_run(trainer, plan)
    except UserError as e:
        error = e
    try:
        ranks.agree(error)
    except BaseException:
        if ranks.is_root and error is None and trainer is not None and trainer.lock is not None:
            trainer.lock.release()  # another rank failed
        raise
    return trainer


def _claim_resumed_run(trainer, plan: Plan) -> None:
    """Lock the run directory (rank 0), check that last.npz is the one planned from,
    write the token cache, record the resume in the history and settle best.npz."""
    run_dir, ckpt, config, data = plan.run_dir, plan.resume_from, plan.config, plan.data
    prepare_run_dir(run_dir, fix=f"make {run_dir} writable")
    trainer.lock = RunLock(run_dir).acquire()
    try:
        last_path, identity = plan.resume_identity
        if file_identity(last_path) != identity:
            raise UserError(f"{last_path} changed while this resume was starting (another "
                            f"process trained the run); run the resume again")
        write_cache(token_cache_dir(run_dir), data.encoded)
        trainer.origin = plan.origin
        trainer.history.append(dict(plan.history_event))
        note = _settle_best(trainer, run_dir, _validation_text_changed(ckpt, config, data))
        if note:
            trainer.notes.append(note)
    except BaseException:
        trainer.lock.release()
        raise


def _same_validation(a_files, a_config: TrainConfig, b_files, b_config: TrainConfig) -> bool:
    return ([f.sha256 for f in a_files] == [f.sha256 for f in b_files]
            and a_config.val_frac == b_config.val_frac and a_config.val_chars == b_config.val_chars)


def _validation_text_changed(ckpt, config: TrainConfig, data) -> bool:
    return not _same_validation(ckpt.corpus_files, ckpt.config, data.corpus_files, config)


def _settle_best(trainer: Trainer, run_dir: Path, changed: bool) -> str | None:
    """Make best.npz and the trainer's best score speak of the validation text the run
    goes on with. A best.npz scored on that text stays (its score becomes the trainer's:
    after a crash it can be newer than last.npz); one scored on other text (or unreadable)
    is moved aside to a name no earlier one has, and the best-so-far restarts. Returns
    the note for the user, if any."""
    best_path = Path(run_dir) / "best.npz"
    cfg, files = trainer.config, trainer.data.corpus_files
    if best_path.is_file():
        try:
            best = ckpt_io.load(best_path)
        except UserError:
            best = None
        if best is not None and _same_validation(best.corpus_files, best.config, files, cfg):
            trainer.best_val_bpc = best.best_val_bpc
            return None
        kept = Path(run_dir) / f"best-before-step-{trainer.step}.npz"
        k = 2
        while kept.exists():
            kept = Path(run_dir) / f"best-before-step-{trainer.step}-{k}.npz"
            k += 1
        os.replace(best_path, kept)
        trainer.best_val_bpc = float("nan")
        if best is None:  # damaged (a crash) or not a checkpoint: not a change of text
            return (f"{best_path} cannot be read (`charlstm info {kept}` says why): the "
                    f"best-so-far restarts, and the file is kept as {kept}")
        return (f"the validation text changed: the best-so-far restarts, and the best model "
                f"on the earlier text is kept as {kept}")
    if changed:
        trainer.best_val_bpc = float("nan")
        return "the validation text changed: the best-so-far restarts"
    return None
