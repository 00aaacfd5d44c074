"""Starting a run and resuming one: everything between the options and the training loop.

The command line (cli.py) and the tests call these same functions, so what a run checks
before it spends any training time (the output directory, the corpus's fingerprint, the
budget, the BLAS) is checked the same way everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
import shutil
import time
from pathlib import Path

from charlstm.model import checkpoint as ckpt_io
from charlstm.training.budget import apply_recipe, describe, recipe_for, wants_recipe
from charlstm.training.config import (ARCHITECTURE, DEFAULT_EPOCHS, OPTION_OF, RESUMABLE,
                                      InvalidSetting, TrainConfig, validate)
from charlstm.machine.cpu import bf16_missing, resolve_precision
from charlstm.errors import UsageProblem, UserError
from charlstm.training.lock import RunLock
from charlstm.parallel.ranks import SingleProcess
from charlstm.data.tokens import CACHE_DIR_NAME, fingerprint, write_cache
from charlstm.training.loop import (VALIDATION_SLACK_SECONDS, Trainer, batches_for, prepare_data, validations_without_improvement)
from charlstm.machine.tune import fall_back_if_missing, resolve



class BudgetReached(UserError):
    """resume was given no budget beyond the step the run already reached: a recognised
    mistake (exit status 1), not an invalid option."""


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
    """runs/DATE-TIME-MILLISECONDS-XXXX (XXXX random hex): a name that runs started at
    the same moment, in one directory or on machines that share it, do not share.
    ``start_run`` creates it exclusively (``claim_new_run_dir``)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("runs") / f"{stamp}-{int(now % 1 * 1000):03d}-{secrets.token_hex(2)}"


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


def start_run(config: TrainConfig, out_dir: Path | None = None, force: bool = False,
              blas: str = "auto", step_weights: str | None = None,
              init_from: Path | None = None, ranks=None,
              given: set[str] | None = None, precision: str | None = None,
              retune: bool = False, bf16_products: str | None = None
              ) -> tuple[Trainer, Path]:
    """A new run of ``config`` in ``out_dir`` (default runs/<timestamp>), ready to train.

    ``config.threads`` is taken as given; a config with no budget trains DEFAULT_EPOCHS
    epochs. ``blas``/``step_weights`` as ``tune.resolve`` takes them. ``init_from``: a
    checkpoint (file or run directory) whose weights, model shape and vocabulary the run
    starts from, with a fresh optimizer; ``config``'s cell and sizes must match it.
    Nothing is written until every check has passed; the run directory is then locked
    (lock.py) until training ends. Raises UserError (its message names the fix) for a
    directory that already holds a run (unless ``force``) or cannot be written, bad
    settings, an unreadable corpus, a corpus with characters outside ``init_from``'s
    vocabulary, or a BLAS that is not installed.

    ``ranks``: this process's place in a run over several processes (ranks.MpiRanks):
    every rank checks and reads the same inputs, rank 0 alone measures the BLAS (its
    choice is every rank's), and claims and writes the run directory.

    ``given``: the settings (TrainConfig fields) the user chose. When it is passed and the
    run has a --time budget alone and no chosen model size, the settings it lacks come
    from the budget table (budget.py), the choice is told in a note and recorded in the
    run's history. None: ``config`` is taken as it is.

    ``precision``: auto, float32 or bfloat16 (cpu.resolve_precision), or None to keep
    ``config.precision``; bfloat16 on a CPU without its products is refused (UserError).
    ``retune``: with ``blas`` "auto", measure even if this machine remembers a choice for
    these shapes (tuning_cache.py). The trainer's ``tuning`` says how the choice was made.
    ``bf16_products``: what computes a bfloat16 run's products (tune.resolve)."""
    ranks = ranks if ranks is not None else SingleProcess()
    fresh = out_dir is None  # a default name, claimed exclusively (claim_new_run_dir)
    out_dir = Path(ranks.bcast(str(out_dir) if out_dir is not None else str(default_run_dir())))
    # Every rank checks and reads the same inputs; what one rank meets, all hear of at
    # the agreement points (ranks.agree), so an error ends every rank the same way.
    source, planned, error, recipe_note, choice = None, None, None, None, None
    try:
        if config.steps is None and config.epochs is None and config.time_limit is None:
            config = config.replace(epochs=DEFAULT_EPOCHS)
        if precision is not None:
            config = config.replace(precision=resolve_precision(precision))
        config = checked(config.replace(ranks=ranks.size))
        if (out_dir / "last.npz").exists() and not force:
            raise UserError(
                f"{out_dir} already holds a run; continue it with `charlstm resume {out_dir}` "
                f"or pass --force to start over")
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
        if given is not None and source is None and wants_recipe(config, given):
            config, data, recipe_note = _take_budget_recipe(config, data, given)
        config = fix_schedule_horizon(config, data.batches.steps_per_epoch)
        if ranks.is_root:  # rank 0 measures; its choice is every rank's
            planned, choice = resolve(config, len(data.vocab), blas, step_weights, retune,
                                      bf16_products)
    except UserError as e:
        error = e
    config = ranks.agree(error, planned)
    error, existed = None, out_dir.exists()
    try:
        # The model is built before anything is written, so one too large for memory
        # leaves no directory behind.
        trainer = Trainer(config, data, initial_params=source.params if source is not None else None,
                          ranks=ranks)
        trainer.tuning = choice
        trainer.history.append({"step": 0, "event": "train"})
        if recipe_note is not None:
            trainer.history[-1].update(budget_recipe=recipe_note[0], chosen=recipe_note[1])
            trainer.notes.append(recipe_note[2])
        if source is not None:
            trainer.history[-1].update(init_from=str(source_path), init_from_step=source.step,
                                       init_from_corpus=[f.sha256 for f in source.corpus_files])
            trainer.notes.append(f"starting from the weights of {source_path} (step {source.step})")
        if ranks.is_root:  # rank 0 alone writes
            out_dir = _claim_run_dir(trainer, out_dir, force, existed, fresh)
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


def resume_run(run_dir: Path, changes: dict | None = None, blas: str | None = None,
               step_weights: str | None = None, warn=None, ranks=None,
               precision: str | None = None, retune: bool = False,
               bf16_products: str | None = None) -> Trainer:
    """The run in ``run_dir``, from its last.npz, ready to continue.

    ``changes``: settings that differ from the saved ones, among RESUMABLE (budgets,
    cadence, threads, the learning-rate schedule, clipping, dropout, weight decay,
    ``corpus`` for fine-tuning); each change is recorded in the run's history. Without a
    new corpus, the saved corpus files must still have their SHA-256 (``locate_corpus``).
    When the validation text changes, the best-so-far restarts: best.npz is renamed
    best-before-step-N.npz and the trainer's notes say so. ``blas``/``step_weights``: a
    new choice (as ``tune.resolve`` takes them); without one, a run whose library is
    missing here continues on OpenBLAS and ``warn`` (a function of one line) says so.
    Raises UserError (CheckpointError, BudgetReached) naming the fix. ``ranks``: as
    ``start_run`` takes it; a run may continue on another number of ranks (recorded).
    ``precision``: a new one (auto, float32, bfloat16); without one, a bfloat16 run on a
    CPU without bfloat16 products continues in float32 and ``warn`` says so. ``retune``
    and ``bf16_products``: as in ``start_run``."""
    ranks = ranks if ranks is not None else SingleProcess()
    run_dir = Path(run_dir)
    error, choice = None, None
    try:
        changes = dict(changes or {})
        refused = sorted(set(changes) - set(RESUMABLE))
        if refused:
            raise UsageProblem(f"resume cannot change {', '.join(refused)}")
        last_path = ckpt_io.resolve_checkpoint(run_dir)
        ckpt = ckpt_io.load(last_path)
        loaded = _identity(last_path)
        config = checked(ckpt.config.replace(**changes, ranks=ranks.size))
        origin = ckpt.origin
        if "corpus" not in changes:
            readable, origin = locate_corpus(ckpt, run_dir)
            data = prepare_data(config.replace(corpus=readable), vocab=ckpt.vocab,
                                cache_dir=token_cache_dir(run_dir))
            data.corpus_files = ckpt.corpus_files  # the same SHA-256, under the paths as given
        else:
            origin = corpus_origin(run_dir)
            data = prepare_data(config, vocab=ckpt.vocab, cache_dir=token_cache_dir(run_dir))
        budgets = ("steps", "epochs", "time_limit")
        if config.lr_horizon_time > 0 and not any(k in changes for k in budgets):
            # A schedule that follows a time budget: continue to its end, no further.
            remaining = config.lr_horizon_time - ckpt.elapsed
            # What is left went to the final validation and the slack kept for it.
            if remaining <= 0.05 * config.lr_horizon_time + VALIDATION_SLACK_SECONDS:
                raise BudgetReached(
                    f"the run already spent its time budget ({config.lr_horizon_time:.0f} s of "
                    f"training); give --steps, --epochs or --time to train further")
            config = config.replace(time_limit=remaining)
            follow_schedule = True
        else:
            follow_schedule = False
        if "lr_schedule" in changes and changes["lr_schedule"] != ckpt.config.lr_schedule:
            config = fix_schedule_horizon(config.replace(lr_horizon=changes.get("lr_horizon", 0)),
                                          data.batches.steps_per_epoch)
        if precision is not None:
            config = config.replace(precision=resolve_precision(precision))
        elif config.precision == "bfloat16" and bf16_missing():
            config = config.replace(precision="float32")
            if warn is not None and ranks.is_root:
                warn(f"this run trained with bfloat16 products, which {bf16_missing()}: "
                     f"continuing in float32, which rounds differently from here on")
        if blas is not None or step_weights is not None or bf16_products is not None:
            if ranks.is_root:  # rank 0 measures; its choice is every rank's
                config, choice = resolve(config, len(data.vocab), blas or config.blas,
                                         step_weights or (None if blas == "auto" else config.step_weights),
                                         retune, bf16_products)
        else:
            config, warning = fall_back_if_missing(config)
            if warning and warn is not None and ranks.is_root:
                warn(warning)
    except UserError as e:
        error = e
    config, follow_schedule = ranks.agree(error, (config, follow_schedule) if error is None else None)
    error = None
    try:
        trainer = Trainer(config, data, resume_from=ckpt, ranks=ranks)
        trainer.tuning = choice
        trainer.train_to_schedule_end = follow_schedule
        limit = trainer.step_limit()
        if limit is not None and trainer.step >= limit and changes.get("time_limit") is None:
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
            _claim_resumed_run(trainer, run_dir, ckpt, config, data, origin, last_path, loaded)
    except UserError as e:
        error = e
    try:
        ranks.agree(error)
    except BaseException:
        if ranks.is_root and error is None and trainer.lock is not None:
            trainer.lock.release()  # another rank failed
        raise
    return trainer


def _claim_resumed_run(trainer, run_dir: Path, ckpt, config, data, origin, last_path: Path,
                       loaded) -> None:
    """Lock the run directory (rank 0), check that last.npz is the one read, write the
    token cache, record the resume in the history and settle best.npz."""
    prepare_run_dir(run_dir, fix=f"make {run_dir} writable")
    trainer.lock = RunLock(run_dir).acquire()
    try:
        if _identity(last_path) != loaded:
            raise UserError(f"{last_path} changed while this resume was starting (another "
                            f"process trained the run); run the resume again")
        write_cache(token_cache_dir(run_dir), data.encoded)
        trainer.origin = origin
        changed = {name: [_plain(getattr(ckpt.config, name)), _plain(getattr(config, name))]
                   for name in TrainConfig.__dataclass_fields__
                   if getattr(ckpt.config, name) != getattr(config, name)}
        entry = {"step": ckpt.step, "event": "resume", "changes": changed}
        if [f.sha256 for f in data.corpus_files] != [f.sha256 for f in ckpt.corpus_files]:
            entry["corpus_sha256"] = [f.sha256 for f in data.corpus_files]
        trainer.history.append(entry)
        note = _settle_best(trainer, run_dir, _validation_text_changed(ckpt, config, data))
        if note:
            trainer.notes.append(note)
    except BaseException:
        trainer.lock.release()
        raise


def _identity(path: Path):
    """What tells one version of a file from the next (rename replaces the inode)."""
    st = Path(path).stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


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
