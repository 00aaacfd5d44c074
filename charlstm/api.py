"""charlstm's Python API: what the command line does, as functions.

    import charlstm
    run = charlstm.train("novel.txt", time="5m", out="runs/novel")   # charlstm train
    model = charlstm.load("runs/novel")       # a run directory, .npz, safetensors or hf folder
    text = model.sample(400, prime="The ", temperature=0.8, seed=1)  # charlstm sample
    bpc = model.bpc(open("held-out.txt").read())                     # charlstm eval
    charlstm.resume("runs/novel", steps=5000)                        # charlstm resume

The command line (charlstm/cli) turns its options into these calls and formats what
they return; the results are the same for the same arguments and seed. Errors are the
package's (charlstm.UserError and its subclasses), whose messages are the one line the
command line prints.
"""
from __future__ import annotations

import math
import sys
import time as clock
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from charlstm.errors import UserError


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass
class Run:
    """What a call of ``train`` or ``resume`` left: the run directory, the step reached,
    the best validation score (NaN: none yet), why it stopped early (or None), and the
    status the command line exits with (0, or 128 + the signal that stopped it)."""

    directory: Path
    step: int
    best_val_bpc: float
    stop_reason: str | None
    status: int

    def model(self) -> "Model":
        """The run's model: best.npz, else last.npz."""
        return load(self.directory)


def _duration(value) -> float | None:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    from charlstm.training.config import parse_duration

    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise UserError(f"time: {e}") from None


def _corpus(corpus) -> tuple:
    if corpus is None:
        return ()
    if isinstance(corpus, (str, Path)):
        return (str(corpus),)
    return tuple(str(c) for c in corpus)


def train(corpus=None, *, out=None, force: bool = False, init_from=None, time=None,
          blas: str | None = None, step_weights: str | None = None,
          precision: str | None = None, bf16_products: str | None = None,
          retune: bool = False, tensorboard=None, progress: bool = False,
          echo=_stderr_line, **settings) -> Run:
    """Train a new run, as ``charlstm train`` does, and return it.

    ``corpus``: a path, a list of paths (files, directories, globs), or None for the
    built-in corpus. ``time``: the budget of this call, "90s", "10m", "1h30m" or seconds;
    with ``steps``/``epochs`` the first reached ends the run, and without any the run
    trains 10 epochs. ``settings``: any other TrainConfig field, named as the options are
    with _ for - (hidden_size=512, dropout=0.25, lr=3e-3...); those given win over the
    budget table's (a ``time`` budget alone with no model size takes the table's
    settings, as on the command line). ``out``, ``force``, ``init_from``, ``blas``,
    ``step_weights``, ``precision``, ``bf16_products``, ``retune`` and ``tensorboard``
    (a directory, or "" for RUN_DIR/tensorboard) are train's options. ``progress``:
    show the progress bar; ``echo``: where the notes and the start and end lines go (one
    line a call; default stderr). Raises UserError (its message names the fix)."""
    from charlstm.training.plan import MachineRequest, plan_new_run

    settings = dict(settings, corpus=_corpus(corpus))
    if time is not None:
        settings["time_limit"] = _duration(time)
    given = set(settings) - {"corpus"}
    request = MachineRequest(blas, step_weights, precision, bf16_products, retune)
    plan = plan_new_run(settings, given, request, Path(out) if out is not None else None,
                        force, init_from)
    return train_planned(plan, echo=echo, progress=progress, tensorboard=tensorboard)


def resume(run_dir, *, time=None, corpus=None, blas: str | None = None,
           step_weights: str | None = None, precision: str | None = None,
           bf16_products: str | None = None, retune: bool = False, tensorboard=None,
           progress: bool = False, echo=_stderr_line, **changes) -> Run:
    """Continue the run in ``run_dir`` where it stopped, as ``charlstm resume`` does.

    ``changes``: the settings to change (steps=5000, lr=1e-3...; RESUMABLE in
    training/config.py), ``time`` as in ``train``, ``corpus`` to continue on other text.
    Without changes the run goes on bit-identical to one that never stopped. Raises
    UserError (its message names the fix)."""
    from charlstm.training.plan import MachineRequest, plan_resume

    changes = {k: v for k, v in changes.items() if v is not None}
    if time is not None:
        changes["time_limit"] = _duration(time)
    if corpus is not None:
        changes["corpus"] = _corpus(corpus)
    if {"steps", "epochs", "time_limit"} & set(changes):
        for budget in ("steps", "epochs", "time_limit"):
            changes.setdefault(budget, None)  # a new budget replaces the run's
    request = MachineRequest(blas, step_weights, precision, bf16_products, retune)
    plan = plan_resume(Path(run_dir), changes, request)
    return train_planned(plan, echo=echo, progress=progress, tensorboard=tensorboard)


def train_planned(plan, ranks=None, echo=_stderr_line, progress: bool = False,
                  started: float | None = None, tensorboard=None) -> Run:
    """Start (or resume) ``plan`` (training/plan.py) and train it to its budget or to a
    stop signal. ``ranks``: this process's place in a run over MPI ranks (rank 0 alone
    speaks through ``echo``). ``started``: the time.perf_counter() a --time budget counts
    from (default: now)."""
    from charlstm.parallel.ranks import SingleProcess
    from charlstm.training.loop import checkpoint_lines, run_training
    from charlstm.training.run import resume_run, start_run

    ranks = ranks if ranks is not None else SingleProcess()
    resuming = plan.resume_from is not None
    board = None
    if tensorboard is not None and tensorboard != "":
        board = _board_dir(Path(tensorboard))  # a named one: checked before anything
    if resuming:
        if tensorboard == "" and ranks.is_root:
            board = _board_dir(plan.run_dir / "tensorboard")
        trainer, out_dir = resume_run(plan, ranks), plan.run_dir
    else:
        trainer, out_dir = start_run(plan, ranks)
        if tensorboard == "" and ranks.is_root:
            board = _board_dir(out_dir / "tensorboard")
    speak = ranks.is_root
    if speak:
        for line in plan.warnings:
            echo(f"Warning: {line}")
        for line in start_lines(trainer, out_dir):
            echo(line)
    status = run_training(trainer, out_dir, quiet=not (progress and speak),
                          started=clock.perf_counter() if started is None else started,
                          tensorboard=board)
    if speak:
        if trainer.stop_reason:
            echo(f"Note: {trainer.stop_reason}")
        for line in checkpoint_lines(trainer, out_dir, stopped=bool(status)):
            echo(line)
    return Run(Path(out_dir), trainer.step, trainer.best_val_bpc, trainer.stop_reason, status)


def _board_dir(directory: Path) -> Path:
    """A TensorBoard directory, made now: one that cannot be written is refused before
    training starts."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--tensorboard: cannot write {directory} ({e.strerror or e}); "
                        f"choose another directory") from None
    return directory


def start_lines(trainer, out_dir: Path) -> list[str]:
    """What a run says before its first step: the notes on its input, the model and the
    text, and what computes its products (and whether that was measured now)."""
    from charlstm import __version__
    from charlstm.kernels.blas import BLAS
    from charlstm.model.parameters import count_params
    from charlstm.training.config import parse_bf16_products

    cfg, data = trainer.config, trainer.data
    lines = [f"Note: {note}" for note in trainer.notes]
    lines.append(
        f"charlstm {__version__}: {cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, "
        f"{count_params(trainer.net.params.shapes):,} parameters, vocabulary {len(data.vocab)}, "
        f"{len(data.train_ids):,} training / {len(data.val_ids):,} validation characters, "
        f"{data.batches.steps_per_epoch} steps per epoch; writing {out_dir}")
    if cfg.precision == "bfloat16":
        step, chunk = parse_bf16_products(cfg.bf16_products)
        where = {"panels": "charlstm's panels", "mkl": "oneMKL"}
        on = (f"on {where[step]}" if step == chunk
              else f"step products on {where[step]}, chunk products on {where[chunk]}")
        products = (f"bfloat16 products (float32 accumulation) {on}; validation in float32 "
                    f"on {BLAS.describe()}")
    else:
        products = f"matrix products on {BLAS.describe()}; step weights {cfg.step_weights}"
    tuning = trainer.tuning
    how = ("" if tuning is None else
           "; chosen by an earlier measurement here (--retune measures again)" if tuning.remembered
           else "; measured now")
    lines.append(f"{products}, {cfg.threads} thread{'s' if cfg.threads != 1 else ''}{how}")
    return lines


# -- a trained model ------------------------------------------------------------------------

class Model:
    """A trained model, read from a checkpoint: ``sample`` and ``stream`` generate text
    (as ``charlstm sample``), ``bpc`` scores it (as ``charlstm eval``). ``path`` is the
    file read; ``config``, ``vocab``, ``step`` and ``best_val_bpc`` are the checkpoint's."""

    def __init__(self, checkpoint, path: Path):
        self.checkpoint = checkpoint
        self.path = Path(path)
        self._sampler = None

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def vocab(self):
        return self.checkpoint.vocab

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def best_val_bpc(self) -> float:
        return self.checkpoint.best_val_bpc

    def _sampler_for(self):
        from charlstm.model.sample import Sampler

        if self._sampler is None:
            self._sampler = Sampler(self.checkpoint)
        return self._sampler

    def stream(self, length: int = 500, prime: str = "", temperature: float = 0.8,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop: str | None = None, rng=None) -> Iterator[str]:
        """The prime, then generated text in pieces as they come (32 characters a piece):
        ``length`` characters at most, fewer when ``stop`` (a string the generated text
        ends at, printed) is met. ``rng``: a numpy Generator to draw from (samples after
        one another continue its draws, as --num-samples does); else one seeded with
        ``seed`` (None: fresh entropy). Raises UserError for a prime or stop outside the
        vocabulary, before any text."""
        import numpy as np

        from charlstm.model.sample import stop_at

        if length < 1:
            raise UserError(f"length must be at least 1, not {length}")
        if not temperature >= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise UserError("temperature must be >= 0, top_p in (0, 1] and top_k >= 0")
        sampler = self._sampler_for()
        if stop is not None:
            if stop == "":
                raise UserError("stop must not be empty")
            sampler.check_stop(stop)
        if prime:
            sampler.encode(prime)  # refuses a prime outside the vocabulary before any text
        rng = rng if rng is not None else np.random.default_rng(seed)
        sampler.prime(prime, rng)
        if prime:
            yield prime
        yield from stop_at(sampler.stream(length, temperature, top_k, rng, top_p=top_p), stop)

    def sample(self, length: int = 500, prime: str = "", temperature: float = 0.8,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop: str | None = None) -> str:
        """The prime and ``length`` generated characters (see ``stream``): the text
        ``charlstm sample`` prints with the same options and seed, without its final
        newline."""
        return "".join(self.stream(length, prime, temperature, top_k, top_p, seed, stop))

    def bpc(self, text: str, skip_unknown: bool = False) -> float:
        """Bits per character of ``text`` read as one stream from zero state (``charlstm
        eval``). Characters outside the vocabulary are refused (UserError naming them),
        or dropped with ``skip_unknown``."""
        return self.score(text, skip_unknown)[0]

    def score(self, text: str, skip_unknown: bool = False,
              name: str = "the text") -> tuple[float, int, str]:
        """(bits per character, characters scored, what was dropped: "" or a note) of
        ``text``, as ``bpc``; ``name`` is what the errors call the text."""
        kept, dropped = self.scorable(text, skip_unknown, name)
        return self.bpc_of_scorable(kept), len(kept), dropped

    def scorable(self, text: str, skip_unknown: bool = False,
                 name: str = "the text") -> tuple[str, str]:
        """(the part of ``text`` that is scored, "" or a note on what was dropped): the
        checks ``score`` makes before it computes anything. Raises UserError for
        characters outside the vocabulary (unless ``skip_unknown``) or fewer than two
        left to score."""
        from charlstm.data.corpus import describe_chars

        vocab = self.checkpoint.vocab
        unknown = vocab.unknown_chars(text)
        dropped = ""
        if unknown and skip_unknown:
            drop = set(unknown)
            kept = "".join(c for c in text if c not in drop)
            dropped = (f"skipped {len(text) - len(kept)} characters outside the model's "
                       f"vocabulary: {describe_chars(unknown)}")
            text = kept
        else:
            vocab.require_covers(text, name, "pass skip_unknown=True to drop them")
        if len(text) < 2:
            raise UserError(f"{name} needs at least two characters (of the vocabulary) to "
                            f"evaluate")
        return text, dropped

    def bpc_of_scorable(self, text: str) -> float:
        """Bits per character of ``text`` that ``scorable`` returned (no checks made)."""
        from charlstm.model.evaluate import stream_bits_per_char
        from charlstm.model.network import Network

        net = Network(self.checkpoint.config, len(self.checkpoint.vocab), self.checkpoint.params)
        return stream_bits_per_char(net, self.checkpoint.vocab.encode(text))

    def __repr__(self) -> str:
        cfg = self.config
        best = "" if math.isnan(self.best_val_bpc) else f", validation {self.best_val_bpc:.4f} bpc"
        return (f"<charlstm.Model {cfg.cell} {cfg.num_layers}x{cfg.hidden_size} from "
                f"{self.path} (step {self.step}{best})>")


def read_checkpoint(source) -> tuple[Path, object]:
    """(the file read, the Checkpoint) of a run directory (its best.npz, else last.npz), a
    .npz checkpoint, a .safetensors export or an `export --format hf` folder. Raises
    UserError (CheckpointError) naming what is wrong."""
    from charlstm.model import checkpoint as ckpt_io
    from charlstm.model.export import HF_WEIGHTS, is_hf_folder, load_safetensors

    if is_hf_folder(source):
        path = Path(source) / HF_WEIGHTS
        return path, load_safetensors(path)
    if str(source).endswith(".safetensors"):
        return Path(source), load_safetensors(Path(source))
    path = ckpt_io.resolve_checkpoint(source, prefer_best=True)
    return path, ckpt_io.load(path)


def load(source) -> Model:
    """The model in ``source``: a run directory (its best.npz, else last.npz), a .npz
    checkpoint, a .safetensors export or an `export --format hf` folder. Raises UserError
    (CheckpointError) naming what is wrong with it."""
    path, ckpt = read_checkpoint(source)
    return Model(ckpt, path)
