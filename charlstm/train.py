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

from . import checkpoint as ckpt_io
from .checkpoint import METRIC_COLUMNS, Checkpoint
from .config import TrainConfig
from .corpus import Batches, Vocab, split
from .dropout import DropoutMasks
from .tokens import load_corpus
from .errors import UserError
from .evaluate import stream_bits_per_char
from .parameters import init_params
from .kernels.blas import BLAS
from .shards import ShardedNetwork
from .optim import Optimizer, clip_grad_norm, learning_rate

LN2 = math.log(2)


@dataclass
class Data:
    corpus_files: list
    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    batches: Batches


def prepare_data(config: TrainConfig, vocab: Vocab | None = None, cache_dir: Path | None = None) -> Data:
    """Read and encode the corpus (with ``vocab`` if given, else the corpus's own; through
    the token cache in ``cache_dir`` if given), split it and cut the training part into
    streams."""
    corpus = load_corpus(config.corpus, config.encoding, vocab=vocab, cache_dir=cache_dir)
    vocab, ids = corpus.vocab, corpus.ids
    train_ids, val_ids = split(ids, config.val_frac)
    need = Batches.min_chars(config.batch_size, config.seq_len)
    if len(train_ids) < need:
        raise UserError(
            f"the training text has {len(train_ids)} characters; --batch-size {config.batch_size} "
            f"with --seq-len {config.seq_len} needs at least {need}: give more text or lower them")
    if config.val_frac > 0 and len(val_ids) < 2:
        raise UserError(
            f"the validation split has {len(val_ids)} characters; raise --val-frac or give --val-frac 0")
    return Data(corpus.files, vocab, train_ids, val_ids,
                Batches(train_ids, config.batch_size, config.seq_len))


class TrainingDiverged(UserError):
    pass


class Trainer:
    """Owns the model, optimizer, data position and carried state of one run."""

    def __init__(self, config: TrainConfig, data: Data, resume_from: Checkpoint | None = None):
        self.config = config
        self.data = data
        BLAS.bind(config.blas)  # before any kernel of this process runs
        V = len(data.vocab)
        if resume_from is None:
            rng = np.random.default_rng(config.seed)
            params = init_params(config, V, rng)
            self.rng = rng
        else:
            params = resume_from.params
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = resume_from.rng_state
        self.net = ShardedNetwork(config, V, params, config.threads)
        self.optimizer = Optimizer(config, params)
        # Masks are drawn from self.rng after the initialisation's draws, so a seed fixes
        # both and a checkpoint's generator state continues both.
        self.dropout = None
        if config.dropout > 0:
            self.dropout = DropoutMasks(config.dropout, config.num_layers, config.seq_len,
                                        config.batch_size, config.hidden_size,
                                        params.flat.dtype)
        self.state = self.net.zero_state(config.batch_size)
        self.step = self.epoch = self.epoch_step = 0
        self.metrics: list = []
        self.best_val_bpc = float("nan")
        self.elapsed_before = 0.0
        if resume_from is not None:
            self.optimizer.step = resume_from.optim_step
            for stat, values in resume_from.optim_state.items():
                self.optimizer.state[stat].flat[...] = values.flat
            for key, value in resume_from.state.items():
                self.state[key][...] = value
            self.step = resume_from.step
            self.epoch = resume_from.epoch
            self.epoch_step = resume_from.epoch_step
            self.metrics = [list(row) for row in resume_from.metrics]
            self.best_val_bpc = resume_from.best_val_bpc
            self.elapsed_before = resume_from.elapsed
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

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step on the next chunk; returns (train bpc, grad norm, lr)."""
        inputs, targets = self.data.batches.chunk(self.epoch_step)
        masks = self.dropout.draw(self.rng) if self.dropout is not None else None
        loss = self.net.loss_and_grad(inputs, targets, self.state, masks)
        norm = clip_grad_norm(self.net.grads, self.config.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the {what} is not finite; "
                f"lower --lr (now {self.config.lr:g}) or clip gradients with --clip; "
                f"the last saved checkpoint is untouched")
        lr = learning_rate(self.config, self.step, self.config.lr_horizon, self.steps_per_epoch)
        self.optimizer.update(self.net.grads, lr)
        self.step += 1
        self.epoch_step += 1
        if self.epoch_step == self.steps_per_epoch:
            self._next_epoch()
        return loss / LN2, norm, lr

    def validate(self) -> float:
        return stream_bits_per_char(self.net, self.data.val_ids)

    def epoch_progress(self) -> float:
        return self.epoch + self.epoch_step / self.steps_per_epoch

    def to_checkpoint(self, elapsed: float) -> Checkpoint:
        return Checkpoint(
            config=self.config, corpus_files=self.data.corpus_files, vocab=self.data.vocab,
            params=self.net.params, optim_step=self.optimizer.step,
            optim_state=self.optimizer.state, step=self.step, epoch=self.epoch,
            epoch_step=self.epoch_step, state=self.state,
            rng_state=self.rng.bit_generator.state,
            metrics=np.array(self.metrics, dtype=np.float64).reshape(-1, len(METRIC_COLUMNS)),
            best_val_bpc=self.best_val_bpc, elapsed=elapsed)

    def step_limit(self) -> int | None:
        """The global step at which the budget in steps or epochs is reached."""
        limits = []
        if self.config.steps is not None:
            limits.append(self.config.steps)
        if self.config.epochs is not None:
            limits.append(math.ceil(self.config.epochs * self.steps_per_epoch))
        return min(limits) if limits else None


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a stop never
    lands in the middle of an update."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            # A second signal while stopping: restore the default and re-raise.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self):
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """metrics.jsonl: one JSON object a line; rewritten from the checkpoint on resume so
    lines written after the last save do not survive a crash."""

    def __init__(self, path: Path, rows: list):
        self.path = path
        try:
            with open(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(self._line(row))
            self.file = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise UserError(f"could not write {path} ({e.strerror or e})") from None

    @staticmethod
    def _line(row) -> str:
        d = {}
        for key, value in zip(METRIC_COLUMNS, row):
            if key == "step":
                d[key] = int(value)
            elif isinstance(value, float) and math.isnan(value):
                continue  # e.g. no validation at this step
            else:
                d[key] = round(float(value), 6)
        return json.dumps(d) + "\n"

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


def run_training(trainer: Trainer, out_dir: Path, quiet: bool = False) -> int:
    """Train until the budget is spent or a signal arrives; returns the exit status
    (0, or 128 + signal number after a clean stop on SIGINT/SIGTERM)."""
    cfg = trainer.config
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.npz", out_dir / "best.npz"
    ckpt_io.remove_stale_temporaries(out_dir)
    started = time.perf_counter()

    def elapsed() -> float:
        return trainer.elapsed_before + time.perf_counter() - started

    def save(path: Path) -> None:
        ckpt_io.save(trainer.to_checkpoint(elapsed()), path)

    has_val = len(trainer.data.val_ids) >= 2
    step_limit = trainer.step_limit()
    chars_per_step = cfg.batch_size * cfg.seq_len
    log = MetricsLog(out_dir / "metrics.jsonl", trainer.metrics)
    bar = tqdm(total=step_limit, initial=trainer.step, file=sys.stderr, disable=quiet,
               unit="step", dynamic_ncols=True, leave=True)
    window = {"bits": 0.0, "steps": 0, "seconds": 0.0}
    last_val = float("nan")

    def evaluate() -> float:
        nonlocal last_val
        last_val = trainer.validate()
        if not (last_val >= trainer.best_val_bpc):  # true when best is NaN
            trainer.best_val_bpc = last_val
            save(best_path)
        return last_val

    def log_row(val, lr, norm) -> None:
        steps = max(window["steps"], 1)
        cps = window["steps"] * chars_per_step / window["seconds"] if window["seconds"] > 0 else 0.0
        row = [trainer.step, trainer.epoch_progress(), window["bits"] / steps
               if window["steps"] else float("nan"), val, lr, norm, cps, elapsed()]
        trainer.metrics.append(row)
        log.write(row)
        window.update(bits=0.0, steps=0, seconds=0.0)
        val_text = "-" if math.isnan(last_val) else f"{last_val:.3f}"  # none yet, not "nan"
        bar.set_postfix_str(
            f"train {row[2]:.3f} bpc, val {val_text} bpc, {cps:,.0f} chars/s", refresh=False)

    signals = _StopSignals()

    def budget_spent() -> bool:
        return ((step_limit is not None and trainer.step >= step_limit)
                or (cfg.time_limit is not None and time.perf_counter() - started >= cfg.time_limit))

    try:
        with signals:
            while signals.signum is None and not budget_spent():
                t0 = time.perf_counter()
                bits, norm, lr = trainer.train_step()
                window["seconds"] += time.perf_counter() - t0
                window["bits"] += bits
                window["steps"] += 1
                interrupted = signals.signum is not None
                final = interrupted or budget_spent()
                val = float("nan")
                if has_val and not interrupted and (
                        final
                        or (cfg.eval_every > 0 and trainer.step % cfg.eval_every == 0)
                        or (cfg.eval_every == 0 and trainer.epoch_step == 0)):
                    val = evaluate()
                if trainer.step % cfg.log_every == 0 or not math.isnan(val) or final:
                    log_row(val, lr, norm)
                if trainer.step % cfg.save_every == 0 and not final:
                    save(last_path)
                bar.update(1)
            save(last_path)
    finally:
        bar.close()
        log.close()
        trainer.net.close()  # the shard threads; a later step would start them again
    return 128 + signals.signum if signals.signum is not None else 0
