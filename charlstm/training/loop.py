"""The training loop: budget, logging, validation, checkpoints and clean stops."""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from charlstm.model import checkpoint as ckpt_io
from charlstm.model.checkpoint import METRIC_COLUMNS, Checkpoint
from charlstm.cli.console import STOP_SIGNALS
from charlstm.training.config import TrainConfig
from charlstm.data.corpus import Batches, Vocab, split
from charlstm.model.dropout import DropoutMasks
from charlstm.data.tokens import EncodedCorpus, load_corpus
from charlstm.errors import CheckpointError, UserError
from charlstm.model.evaluate import stream_bits_per_char
from charlstm.model.parameters import init_params
from charlstm.kernels.blas import BLAS
from charlstm.parallel.ranks import SingleProcess
from charlstm.model.shards import ShardedNetwork
from charlstm.training.optim import Optimizer, clip_grad_norm, learning_rate
from charlstm.training.time_budget import TimeBudget

LN2 = math.log(2)


@dataclass
class Data:
    corpus_files: list
    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    batches: Batches
    encoded: EncodedCorpus  # the whole corpus, for the run's token cache
    notes: list  # lines to tell the user about the input (tokens.load_corpus)


def prepare_data(config: TrainConfig, vocab: Vocab | None = None, cache_dir: Path | None = None) -> Data:
    """Read and encode the corpus (with ``vocab`` if given, else the corpus's own; through
    the token cache in ``cache_dir`` if given), split it and cut the training part into
    streams."""
    corpus = load_corpus(config.corpus, config.encoding, vocab=vocab, cache_dir=cache_dir)
    vocab, ids = corpus.vocab, corpus.ids
    train_ids, val_ids = split(ids, config.val_frac)
    if config.val_frac > 0 and len(val_ids) < 2:
        raise UserError(
            f"the validation split has {len(val_ids)} characters; raise --val-frac or give --val-frac 0")
    return Data(corpus.files, vocab, train_ids, val_ids, batches_for(train_ids, config), corpus,
                list(corpus.notes))


def batches_for(train_ids: np.ndarray, config: TrainConfig) -> Batches:
    """The training text cut into config.batch_size streams of config.seq_len steps.
    Raises UserError when the text is too short for them."""
    need = Batches.min_chars(config.batch_size, config.seq_len)
    if len(train_ids) < need:
        raise UserError(
            f"the training text has {len(train_ids)} characters; --batch-size {config.batch_size} "
            f"with --seq-len {config.seq_len} needs at least {need}: give more text or lower them")
    return Batches(train_ids, config.batch_size, config.seq_len)


class TrainingDiverged(UserError):
    pass


class Trainer:
    """Owns the model, optimizer, data position and carried state of one run."""

    def __init__(self, config: TrainConfig, data: Data, resume_from: Checkpoint | None = None,
                 initial_params=None, ranks=None):
        """``resume_from``: a checkpoint to continue exactly. ``initial_params``: weights
        (FlatParams of this config's shapes) a new run starts from instead of its random
        initialisation, which is still drawn so the generator continues as in any run.
        ``ranks``: this process's place in a run over several processes (ranks.MpiRanks;
        default one process): it trains its rows of the batch and carries their state."""
        self.config = config
        self.data = data
        self.ranks = ranks if ranks is not None else SingleProcess()
        self.rows = self.ranks.rows(config.batch_size)
        try:
            BLAS.bind(config.blas)  # before any kernel of this process runs
        except RuntimeError as e:  # a second run of one Python process (the API)
            raise UserError(f"{e} (a new Python process), or give blas={BLAS.spec!r}") from None
        V = len(data.vocab)
        if resume_from is None:
            rng = np.random.default_rng(config.seed)
            params = init_params(config, V, rng)
            if initial_params is not None:
                params.flat[...] = initial_params.flat
            self.rng = rng
        else:
            params = resume_from.params
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = resume_from.rng_state
        local = config.replace(batch_size=self.rows[1] - self.rows[0])
        self.net = ShardedNetwork(local, V, params, config.threads)
        self.optimizer = Optimizer(config, params)
        # Masks are drawn from self.rng after the initialisation's draws, so a seed fixes
        # both and a checkpoint's generator state continues both.
        self.dropout = None
        if config.dropout > 0:
            self.dropout = DropoutMasks(config.dropout, config.num_layers, config.seq_len,
                                        config.batch_size, config.hidden_size,
                                        params.flat.dtype)
        self.state = self.net.zero_state(self.rows[1] - self.rows[0])
        self.step = self.epoch = self.epoch_step = 0
        self.metrics: list = []
        self.best_val_bpc = float("nan")
        self.elapsed_before = 0.0
        self.history: list = []  # events of the run, saved with it (checkpoint.Checkpoint)
        self.origin: dict = {}  # where the corpus paths were given from (run.corpus_origin)
        # Lines for the user before training starts; the control characters are told
        # when a vocabulary is first taken from the text, not again on every resume.
        self.notes: list = list(data.notes)
        if resume_from is None and data.encoded.control_note:
            self.notes.append(data.encoded.control_note)
        self.lock = None  # the run directory's lock.RunLock, held while training
        # How --blas auto chose this invocation's products (tune.Choice), or None when the
        # choice was given or kept from the checkpoint.
        self.tuning = None
        self.stop_reason = None  # why run_training stopped early, when the user should know
        # Set by a resume with no budget of a run whose schedule follows a time budget:
        # train until the schedule's time is spent (not for time_limit from start-up).
        self.train_to_schedule_end = False
        if resume_from is not None:
            self.optimizer.step = resume_from.optim_step
            for stat, values in resume_from.optim_state.items():
                self.optimizer.state[stat].flat[...] = values.flat
            lo, hi = self.rows
            for key, value in resume_from.state.items():
                self.state[key][...] = value[:, lo:hi]
            self.step = resume_from.step
            self.epoch = resume_from.epoch
            self.epoch_step = resume_from.epoch_step
            self.metrics = [list(row) for row in resume_from.metrics]
            self.best_val_bpc = resume_from.best_val_bpc
            self.elapsed_before = resume_from.elapsed
            self.history = list(resume_from.history)
            self.origin = dict(resume_from.origin)
            if self.epoch_step >= data.batches.steps_per_epoch:
                self._next_epoch()  # the corpus changed to a shorter one

    @property
    def steps_per_epoch(self) -> int:
        return self.data.batches.steps_per_epoch

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.epoch_step = 0
        for value in self.state.values():
            value[...] = 0.0

    def train_step(self, elapsed: float | None = None) -> tuple[float, float, float]:
        """One optimizer step on the next chunk, ``elapsed`` training seconds into the run
        (for a schedule that follows a time budget); returns (train bpc, grad norm, lr)."""
        inputs, targets = self.data.batches.chunk(self.epoch_step)
        masks = self.dropout.draw(self.rng) if self.dropout is not None else None
        lo, hi = self.rows
        if (lo, hi) != (0, inputs.shape[0]):  # this rank's streams of the batch
            inputs, targets = inputs[lo:hi], targets[lo:hi]
            masks = None if masks is None else masks[:, :, lo:hi]
        loss = self.net.loss_and_grad(inputs, targets, self.state, masks,
                                      mean_over=self.config.batch_size * self.config.seq_len)
        self.ranks.ordered_sum(self.net.grads.flat)
        loss = self.ranks.sum_in_order(loss)
        norm = clip_grad_norm(self.net.grads, self.config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the {what} is not finite; "
                f"lower --lr (now {self.config.lr:g}) or clip gradients with --clip")
        lr = learning_rate(self.config, self.step, self.config.lr_horizon, self.steps_per_epoch,
                           elapsed)
        self.optimizer.update(self.net.grads, lr)
        self.step += 1
        self.epoch_step += 1
        if self.epoch_step == self.steps_per_epoch:
            self._next_epoch()
        return loss / LN2, norm, lr

    def validation_ids(self) -> np.ndarray:
        """The validation text read each time: the first val_chars characters of the
        split (and the one they predict), or all of it."""
        cap = self.config.val_chars
        return self.data.val_ids if cap == 0 else self.data.val_ids[:cap + 1]

    def validate(self, should_stop=None) -> float:
        """Bits per character of the validation text, or NaN if ``should_stop()`` became
        true before it was read to the end."""
        return stream_bits_per_char(self.net, self.validation_ids(), should_stop=should_stop)

    def epoch_progress(self) -> float:
        return self.epoch + self.epoch_step / self.steps_per_epoch

    def to_checkpoint(self, elapsed: float, state: dict | None = None) -> Checkpoint:
        """The run as a checkpoint; ``state``: the whole batch's carried state (the
        ranks' rows gathered), default this process's own."""
        return Checkpoint(
            config=self.config, corpus_files=self.data.corpus_files, vocab=self.data.vocab,
            params=self.net.params, optim_step=self.optimizer.step,
            optim_state=self.optimizer.state, step=self.step, epoch=self.epoch,
            epoch_step=self.epoch_step, state=self.state if state is None else state,
            rng_state=self.rng.bit_generator.state,
            metrics=np.array(self.metrics, dtype=np.float64).reshape(-1, len(METRIC_COLUMNS)),
            best_val_bpc=self.best_val_bpc, elapsed=elapsed, history=self.history,
            origin=self.origin)

    def step_limit(self) -> int | None:
        """The global step at which the budget in steps or epochs is reached."""
        limits = []
        if self.config.steps is not None:
            limits.append(self.config.steps)
        if self.config.epochs is not None:
            limits.append(math.ceil(self.config.epochs * self.steps_per_epoch))
        return min(limits) if limits else None


class _StopSignals:
    """Turns SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session) into a flag the
    loop checks between steps, so a stop never lands in the middle of an update and
    always ends with last.npz written."""

    SIGNALS = STOP_SIGNALS

    # One event may arrive as several signals at once: a dying parent's SIGTERM
    # (PR_SET_PDEATHSIG, as sweep's trials ask for) reaches every thread of the process.
    SAME_EVENT_SECONDS = 0.5

    def __init__(self):
        self.signum = None
        self.since = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()
        elif signum == self.signum and time.monotonic() - self.since > self.SAME_EVENT_SECONDS:
            # The same signal again while stopping (Ctrl-C twice): the user wants out
            # now. A different one (SIGTERM after the SIGHUP of a closed terminal, from
            # a session manager or a dying parent) lets the save finish.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def __enter__(self):
        for s in self.SIGNALS:
            if s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) is signal.SIG_IGN:
                continue  # `nohup charlstm train ...`: the user asked to outlive the terminal
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """metrics.jsonl: one JSON object a line; rewritten from the checkpoint on resume so
    lines written after the last save do not survive a crash. The rewrite goes through
    a temporary and a rename (a full disk keeps the old file whole); rows are then
    appended."""

    def __init__(self, path: Path, rows: list):
        from charlstm.files import atomic_write

        self.path = path
        try:
            with atomic_write(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(self._line(row))
            self.file = open(path, "a", encoding="utf-8")
        except OSError as e:
            kept = "it is kept as it was" if path.exists() else "none was written"
            raise UserError(f"could not write {path} ({e.strerror or e}); {kept}: run the "
                            f"command again once the disk has room") from None

    @staticmethod
    def as_dict(row) -> dict:
        """A metrics row as metrics.jsonl writes it: NaN columns left out."""
        d = {}
        for key, value in zip(METRIC_COLUMNS, row):
            if key == "step":
                d[key] = int(value)
            elif isinstance(value, float) and math.isnan(value):
                continue  # e.g. no validation at this step
            else:
                d[key] = round(float(value), 6)
        return d

    @classmethod
    def _line(cls, row) -> str:
        return json.dumps(cls.as_dict(row)) + "\n"

    def write(self, row) -> None:
        try:
            self.file.write(self._line(row))
            self.file.flush()
        except OSError as e:
            raise UserError(f"could not write {self.path} ({e.strerror or e}); "
                            f"the last checkpoint is intact") from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # a failed flush was already reported by write()


def validations_without_improvement(metrics, min_delta: float) -> tuple[int, float]:
    """(count, best) over the validation scores in ``metrics`` (rows of METRIC_COLUMNS):
    how many validations in a row, up to the last, did not beat the best before them by
    at least ``min_delta`` bpc, and that best. The rule of Keras's EarlyStopping: a score
    counts as better when below best - min_delta, and only then becomes the best."""
    val = METRIC_COLUMNS.index("val_bpc")
    count, best = 0, math.inf
    for row in metrics:
        v = row[val]
        if v != v:  # NaN: no validation on this row
            continue
        if v < best - min_delta:
            best, count = v, 0
        else:
            count += 1
    return count, best


def step_scores(metrics) -> dict:
    """Validation score by step, from ``metrics`` (rows of METRIC_COLUMNS)."""
    val = METRIC_COLUMNS.index("val_bpc")
    return {int(row[0]): row[val] for row in metrics if row[val] == row[val]}


def checkpoint_lines(trainer: Trainer, out_dir: Path, stopped: bool = False) -> list:
    """The lines that end a run: last.npz's step and validation score, best.npz's, and
    which of the two ``sample`` and ``eval`` read (best.npz where there is one), so a
    best.npz older than last.npz, or a last step left unscored, is never a surprise."""
    out_dir = Path(out_dir)
    scores = step_scores(trainer.metrics)
    last = scores.get(trainer.step)
    tail = " (stopped by signal)" if stopped else ""
    scored = f"validation {last:.4f} bpc" if last is not None else "not validated"
    best = trainer.best_val_bpc
    if not (out_dir / "best.npz").is_file() or best != best:
        return [f"{out_dir / 'last.npz'}: step {trainer.step}, {scored}{tail}; "
                f"there is no best.npz: sample and eval read last.npz"]
    best_at = min((s for s, v in scores.items() if v == best), default=None)
    at = f"step {best_at}, " if best_at is not None else ""
    return [f"{out_dir / 'last.npz'}: step {trainer.step}, {scored}{tail}",
            f"{out_dir / 'best.npz'}: {at}validation {best:.4f} bpc, the best; "
            f"sample and eval read it"]


def _clock(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _TrainingRun:
    """One invocation of the training loop: the trainer, its clock (TimeBudget), the
    outputs (checkpoints, metrics.jsonl, TensorBoard, the progress bar) and the state the
    steps share (the best validation, early stopping's count, the last save). Every rank
    runs one; rank 0 decides what depends on its clock, validates and writes."""

    def __init__(self, trainer: Trainer, out_dir: Path, quiet: bool, started: float | None,
                 tensorboard: Path | None):
        self.trainer = trainer
        cfg = trainer.config
        self.out_dir = out_dir
        self.last_path, self.best_path = out_dir / "last.npz", out_dir / "best.npz"
        self.ranks = trainer.ranks
        self.root = self.ranks.is_root
        if self.root:
            ckpt_io.remove_stale_temporaries(out_dir)
        self.began = time.perf_counter()
        self.started = started = self.began if started is None else started
        deadline = started + cfg.time_limit if cfg.time_limit is not None else None
        if trainer.train_to_schedule_end:
            deadline = self.began + cfg.lr_horizon_time - trainer.elapsed_before
        self.has_val = len(trainer.data.val_ids) >= 2
        self.clock = TimeBudget(deadline, len(trainer.validation_ids()) - 1 if self.has_val else 0,
                                self._probe_validation)
        self.saved_step = None  # the step last.npz holds
        self.step_limit = trainer.step_limit()
        self.log = MetricsLog(out_dir / "metrics.jsonl", trainer.metrics) if self.root else None
        self.board = None
        if tensorboard is not None and self.root:
            from charlstm.tools.tensorboard import TensorBoardLog

            self.board = TensorBoardLog(tensorboard)
        self.bar = tqdm(total=self.step_limit, initial=trainer.step, file=sys.stderr,
                        disable=quiet or not self.root, unit="step", dynamic_ncols=True, leave=True)
        self.window = {"bits": 0.0, "steps": 0, "seconds": 0.0}  # since the last metrics row
        self.last_lr_and_norm = (float("nan"), float("nan"))
        self.last_val = float("nan")
        self.signals = _StopSignals()
        self.agreed_signal = 0  # the signal that stops every rank (any rank's, the largest)
        trainer.stop_reason = None
        self.stale, self.stale_best = validations_without_improvement(trainer.metrics, cfg.min_delta)
        if (cfg.lr_schedule == "cosine" and cfg.lr_horizon == 0 and cfg.lr_horizon_time == 0
                and deadline is not None and cfg.steps is None and cfg.epochs is None):
            # The time budget is the schedule's horizon: what it leaves for training once
            # start-up is done and the final validation is set aside (estimated as
            # TimeBudget.spent does), so the rate reaches lr_min as training stops.
            left = self.clock.training_seconds_left()  # first: it may time the validation
            horizon = self.ranks.bcast(self.elapsed() + left)
            trainer.config = cfg.replace(lr_horizon_time=horizon)  # rank 0's clock

    def elapsed(self) -> float:
        """Training seconds of the whole run, earlier invocations included."""
        return self.trainer.elapsed_before + time.perf_counter() - self.began

    def _probe_validation(self) -> float:
        """Seconds per character of the validation's first chunks, the kernels loaded:
        eight chunks, since one scheduler pause in a two-chunk probe, a millisecond,
        scaled to a long validation text let the final validation overrun a 4 s budget
        on a busy machine."""
        ids = self.trainer.validation_ids()
        stream_bits_per_char(self.trainer.net, ids[:2 * 256 + 1])  # loads batch-1 kernels
        probe = ids[:8 * 256 + 1]
        t0 = time.perf_counter()
        stream_bits_per_char(self.trainer.net, probe)
        return (time.perf_counter() - t0) / (len(probe) - 1)

    # -- checkpoints --------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write a checkpoint: the ranks' carried states gathered (every rank calls this
        at the same step), rank 0 writes. If best.npz cannot be written, last.npz still
        is, and the error says which step it holds."""
        trainer = self.trainer
        whole = self.ranks.gather_rows(trainer.state)
        if not self.root:
            return
        t0 = time.perf_counter()
        try:
            ckpt_io.save(trainer.to_checkpoint(self.elapsed(), whole), path)
        except CheckpointError as e:
            if path == self.last_path:
                raise
            try:
                ckpt_io.save(trainer.to_checkpoint(self.elapsed(), whole), self.last_path)
                self.saved_step = trainer.step
            except CheckpointError:
                raise CheckpointError(f"{e}; last.npz could not be written either "
                                      f"(step {self.saved_step} is the last saved)") from None
            raise CheckpointError(f"{e}; the run stopped and saved step {trainer.step} "
                                  f"in last.npz") from None
        self.clock.save_timed(time.perf_counter() - t0)
        if path == self.last_path:
            self.saved_step = trainer.step

    def begin(self) -> None:
        """last.npz before the first step, so a run directory always holds a checkpoint
        to resume; and a note if starting up spent the time budget."""
        trainer = self.trainer
        if trainer.step == 0 or not self.last_path.exists():
            self.save(self.last_path)
        else:
            self.saved_step = trainer.step  # resumed from last.npz as it is
        if self.root and self.clock.limited and self.budget_spent() and trainer.step != self.step_limit:
            trainer.stop_reason = (
                f"the --time budget ({_clock(trainer.config.time_limit)}) was spent before "
                f"the first step: starting took {time.perf_counter() - self.started:.1f} s "
                f"(compiling the kernels, on a first run); give a longer --time")

    def end(self) -> None:
        """A metrics row for the last step if it has none (a signal that arrived after
        the step was decided stops the loop before the next), the last save, and a note
        if the final validation and save ended late."""
        if self.root and self.window["steps"]:
            self.log_row(float("nan"), *self.last_lr_and_norm)
        self.save(self.last_path)
        late = self.clock.late_by() if self.root else 0.0
        if late > 0 and self.has_val and self.trainer.stop_reason is None and not self.signals.signum:
            self.trainer.stop_reason = (
                f"the machine slowed near the end: the final validation and save ended "
                f"{late:.2f} s past the --time budget (the final validation may take up "
                f"to {self.clock.overrun_allowed:.2f} s past it)")

    # -- what ends a run ----------------------------------------------------------------

    def budget_spent(self) -> bool:
        return (self.step_limit is not None and self.trainer.step >= self.step_limit) or self.clock.spent()

    def agreed_stop(self, first: bool) -> bool:
        """Whether to stop before the next step, the same on every rank: a signal on any
        rank, or, before this invocation's first step, rank 0's budget. After a step the
        budget is decided with it (``decide``), so that the last step is validated:
        asked again here, after a save had raised the time a save takes, the budget
        ended a run without its final validation."""
        self.agreed_signal = self.ranks.most(self.signals.signum or 0)
        return bool(self.agreed_signal) or (
            first and self.ranks.bcast(self.budget_spent() if self.root else None))

    def patience_ran_out(self, val: float) -> bool:
        """Count ``val`` for early stopping (rank 0) and say whether the run must end."""
        cfg = self.trainer.config
        if cfg.patience == 0 or math.isnan(val):
            return False
        if val < self.stale_best - cfg.min_delta:
            self.stale_best, self.stale = val, 0
            return False
        self.stale += 1
        if self.stale < cfg.patience:
            return False
        self.trainer.stop_reason = (
            f"stopped early: {self.stale} validations in a row did not beat "
            f"{self.stale_best:.4f} bpc by {cfg.min_delta:g} (--patience {cfg.patience}); "
            f"best.npz holds the best model")
        return True

    # -- validation ---------------------------------------------------------------------

    def validation_must_stop(self) -> bool:
        return self.signals.signum is not None or self.clock.validation_must_stop()

    def validate(self) -> tuple[float, bool]:
        """Validate (rank 0): the score, NaN if cut short, and whether it is the best."""
        trainer = self.trainer
        self.clock.validation_started()
        t0 = time.perf_counter()
        value = trainer.validate(self.validation_must_stop)
        if math.isnan(value) and not self.validation_must_stop():
            raise TrainingDiverged(f"training diverged at step {trainer.step}: the validation "
                                   f"loss is not finite; lower --lr or clip gradients with --clip")
        if math.isnan(value):
            why = "a signal" if self.signals.signum is not None else (
                f"the --time budget, and the {self.clock.overrun_allowed:.1f} s past it that "
                f"the final validation may take,")
            trainer.stop_reason = (f"{why} cut the validation at step {trainer.step} "
                                   f"short; it has no validation score")
            return value, False
        self.clock.validation_timed(time.perf_counter() - t0)
        self.last_val = value
        if not (value >= trainer.best_val_bpc):  # true when best is NaN
            trainer.best_val_bpc = value
            return value, True
        return value, False

    def validation_due(self, final: bool) -> bool:
        cfg, trainer = self.trainer.config, self.trainer
        return self.has_val and (final or (cfg.eval_every > 0 and trainer.step % cfg.eval_every == 0)
                                 or (cfg.eval_every == 0 and trainer.epoch_step == 0))

    def decide(self, interrupted: bool) -> tuple:
        """Rank 0, after a step: (whether it is the last, its validation score or NaN,
        whether that is the best, a divergence message or None)."""
        final = interrupted or self.budget_spent()
        val, improved, problem = float("nan"), False, None
        if not interrupted and self.validation_due(final):
            try:
                val, improved = self.validate()
            except TrainingDiverged as e:
                problem = str(e)
            # A validation that ran into the deadline was the last: the step it scored
            # ends the run, not one more unscored step.
            final = (final or self.patience_ran_out(val) or self.trainer.stop_reason is not None
                     or self.budget_spent())
        return final, val, improved, problem

    # -- one step -----------------------------------------------------------------------

    def step(self, first: bool) -> bool:
        """Train one step, then validate, log and save as the settings say; returns
        whether it was the last."""
        trainer, cfg = self.trainer, self.trainer.config
        t0 = time.perf_counter()
        bits, norm, lr = trainer.train_step(self.ranks.bcast(self.elapsed()))
        self.last_lr_and_norm = (lr, norm)
        seconds = time.perf_counter() - t0
        self.clock.step_timed(seconds, first)
        self.window["seconds"] += self.clock.step_seconds
        self.window["bits"] += bits
        self.window["steps"] += 1
        self.agreed_signal = self.ranks.most(self.signals.signum or 0)
        decision = self.decide(bool(self.agreed_signal)) if self.root else None
        final, val, improved, problem = self.ranks.bcast(decision)
        if problem is not None:
            raise TrainingDiverged(problem)
        if improved:
            self.save(self.best_path)
        if self.root and (trainer.step % cfg.log_every == 0 or not math.isnan(val) or final):
            self.log_row(val, lr, norm)
        if trainer.step % cfg.save_every == 0 and not final:
            self.save(self.last_path)
        self.bar.update(1)
        return final

    def log_row(self, val, lr, norm) -> None:
        """A metrics row (metrics.jsonl, TensorBoard, the run's history) and the bar's
        text, from the steps since the last row."""
        trainer, window = self.trainer, self.window
        chars_per_step = trainer.config.batch_size * trainer.config.seq_len
        steps = max(window["steps"], 1)
        cps = window["steps"] * chars_per_step / window["seconds"] if window["seconds"] > 0 else 0.0
        row = [trainer.step, trainer.epoch_progress(), window["bits"] / steps
               if window["steps"] else float("nan"), val, lr, norm, cps, self.elapsed()]
        trainer.metrics.append(row)
        self.log.write(row)
        if self.board is not None:
            self.board.write(MetricsLog.as_dict(row))
        window.update(bits=0.0, steps=0, seconds=0.0)
        val_text = "-" if math.isnan(self.last_val) else f"{self.last_val:.3f}"  # none yet, not "nan"
        budget = ""
        if self.clock.limited:
            budget = (f", {_clock(self.clock.seconds_left())} left of "
                      f"{_clock(trainer.config.time_limit)}")
        self.bar.set_postfix_str(
            f"train {row[2]:.3f} bpc, val {val_text} bpc, {cps:,.0f} chars/s{budget}", refresh=False)

    def close(self) -> None:
        """Close the outputs and the shard threads and release the run's lock, however
        the run ended."""
        trainer = self.trainer
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.board is not None:
            self.board.close(trainer.config, trainer.best_val_bpc)
        trainer.net.close()  # the shard threads; a later step would start them again
        if trainer.lock is not None:
            trainer.lock.release()
            trainer.lock = None

    def exit_status(self) -> int:
        signalled = self.agreed_signal or self.signals.signum or 0
        return 128 + signalled if signalled else 0


def run_training(trainer: Trainer, out_dir: Path, quiet: bool = False,
                 started: float | None = None, tensorboard: Path | None = None) -> int:
    """Train until the budget is spent or a signal arrives; returns the exit status
    (0, or 128 + signal number after a clean stop on SIGINT, SIGTERM or SIGHUP).

    ``started``: the time.perf_counter() at which the invocation began (default: now).
    ``tensorboard``: a directory to write each metrics row to as TensorBoard events too
    (tensorboard.py), and the hyperparameters at the end.
    A --time budget bounds the whole invocation from then (time_budget.TimeBudget):
    training stops early enough that the final validation (timed on the validation text
    as the run goes) and the last save fit. If the machine slows after that time was set
    aside, a validation still running at the deadline goes on past it by at most the time
    set aside for it (1.5 times its estimate and VALIDATION_SLACK_SECONDS), so the run
    ends with its last step scored (``stop_reason`` says how late); past that, or when a
    signal arrives, it stops within one chunk and goes unscored. last.npz is written
    before the first step, so a run directory always holds a checkpoint to resume.
    Raises TrainingDiverged, saying which checkpoint is on disk, and UserError when a
    file cannot be written."""
    run = _TrainingRun(trainer, Path(out_dir), quiet, started, tensorboard)
    try:
        with run.signals:
            run.begin()
            first = True
            while not run.agreed_stop(first):
                final = run.step(first)
                first = False
                if final:
                    break
            run.end()
    except TrainingDiverged as e:
        raise TrainingDiverged(
            f"{e}; {run.last_path} (step {run.saved_step}) is untouched: continue from it "
            f"with `charlstm resume {run.out_dir} --lr LOWER`, or start over with --force if "
            f"its weights are already too large") from None
    finally:
        run.close()
    return run.exit_status()
