"""charlstm's command line: a thin layer that turns options into calls.

Installed as the ``charlstm`` console script (``charlstm.cli:main``); ``python -m
charlstm ...`` runs it too, and ``python cli.py ...`` from a checkout.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path


def _quiet_ctrl_c_while_loading():
    """Ctrl-C while this module and its imports load (click, numpy: a few tenths of a
    second) ends the process as the signal does by default, quietly, with status 130;
    Python's KeyboardInterrupt would print a traceback from whatever was importing.
    Returns the handler to put back once loading is done (None: nothing changed)."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            return signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # imported outside the main thread: signals are not its to set
        pass
    return None


_SIGINT_AFTER_LOADING = _quiet_ctrl_c_while_loading()


from charlstm.training.time_budget import process_age  # noqa: E402 (light: no kernels)

# A --time budget bounds the whole invocation, interpreter start-up and imports included.
INVOCATION_STARTED = time.perf_counter() - process_age()

import click

from charlstm import __version__
from charlstm.cli import console, standard_output
from charlstm.tools.bench import QUALITY_RECIPES
from charlstm.training.config import CELLS, DEFAULTS, LR_SCHEDULES, OPTIMIZERS, parse_duration
from charlstm.machine.cpu import DEFAULT_PRECISION, PRECISION_CHOICES
from charlstm.errors import AnotherRankFailed, UsageProblem, UserError
from charlstm.tools.gradflow import (DEFAULT_CHUNKS as DEFAULT_FLOW_CHUNKS, DEFAULT_LENGTH as DEFAULT_FLOW_LENGTH)
from charlstm.cli.options import Real



class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if seconds <= 0:
            self.fail("must be positive", param, ctx)
        return seconds


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)


def _budget_options(f, train: bool = False):
    table = (" With no other budget, no --hidden-size/--num-layers and no --init-from, the "
             "model size, batch, learning rate, its cosine schedule over the budget and "
             "dropout that are not given come from a table measured for the budget and the "
             "text's size, and the defaults shown here for them do not apply (README, \"A "
             "time budget\")." if train else "")
    f = click.option("--time", "time_limit", type=Duration(), default=None,
                     help="Stop so that this whole invocation (start-up, training, the final "
                          "validation and save) takes at most this long, e.g. 90s, 10m, "
                          "1h30m." + table)(f)
    f = click.option("--epochs", type=Real(min=0, min_open=True), default=None,
                     help="Stop when this many epochs (in total) are done.")(f)
    f = click.option("--steps", type=NON_NEGATIVE, default=None,
                     help="Stop at this total number of optimizer steps (0: only write the initial checkpoint).")(f)
    return f


def _steering_options(f, resume: bool):
    """Options that steer training without changing what a checkpoint holds: `train`
    sets them, `resume` may change them (each change is recorded in the run's history).
    On resume their default is the run's own (None here)."""
    def default(name):
        return None if resume else getattr(DEFAULTS, name)

    def shown(name):
        return "  [default: the run's own]" if resume else ""

    options = [
        click.option("--lr", type=Real(min=0, min_open=True), default=default("lr"),
                     help="Learning rate." + shown("lr")),
        click.option("--clip", type=Real(min=0), default=default("clip"),
                     help="Clip the global gradient norm to this; 0 disables clipping." + shown("clip")),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=default("lr_schedule"),
                     help="How the learning rate changes with the step." + shown("lr_schedule")),
        click.option("--warmup", type=NON_NEGATIVE, default=default("warmup"),
                     help="Steps of linear learning-rate warmup (counted from step 0 of the run)."
                          + shown("warmup")),
        click.option("--lr-decay", type=Real(0, 1, min_open=True), default=default("lr_decay"),
                     help="Factor of the 'step' schedule." + shown("lr_decay")),
        click.option("--lr-decay-every", type=NON_NEGATIVE, default=default("lr_decay_every"),
                     help="Steps between 'step' decays; 0: one epoch." + shown("lr_decay_every")),
        click.option("--lr-min", type=Real(min=0), default=default("lr_min"),
                     help="Floor of the 'cosine' schedule." + shown("lr_min")),
        click.option("--lr-horizon", type=NON_NEGATIVE, default=default("lr_horizon"),
                     help="Steps over which 'cosine' anneals; 0: the run's step budget."
                          + shown("lr_horizon")),
        click.option("--dropout", type=Real(0, 1, max_open=True), default=default("dropout"),
                     help="Zero each layer's output, as the layer above and the decoder read it, "
                          "with this probability while training (inverted dropout; off in eval "
                          "and sampling)." + shown("dropout")),
        click.option("--weight-decay", type=Real(min=0), default=default("weight_decay"),
                     help="Decoupled weight decay (AdamW style): every step shrinks all "
                          "parameters by the factor 1 - lr * weight_decay before the "
                          "optimizer's update." + shown("weight_decay")),
        click.option("--patience", type=NON_NEGATIVE, default=default("patience"),
                     help="Stop after this many validations in a row without an improvement "
                          "of at least --min-delta bpc over the best; 0: never." + shown("patience")),
        click.option("--min-delta", type=Real(min=0), default=default("min_delta"),
                     help="The improvement in validation bpc that counts, for --patience."
                          + shown("min_delta")),
        click.option("--val-chars", type=NON_NEGATIVE, default=default("val_chars"),
                     help="Validate on the first N characters of the validation split, the "
                          "same ones each time; 0: all of it." + shown("val_chars")),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _steering_options_train(f):
    return _steering_options(f, resume=False)


def _steering_options_resume(f):
    return _steering_options(f, resume=True)


def _distributed_option(f):
    return click.option(
        "--distributed", type=click.Choice(["none", "mpi"]), default="none",
        help="mpi: this process is one rank of `mpiexec -n N charlstm ...`; the batch's "
             "streams are split over the ranks, gradients summed in rank order (pip install "
             "'charlstm[mpi]').  --threads is then per rank [default: the cores of the "
             "machine shared by its ranks].")(f)


def _tensorboard_option(f):
    return click.option(
        "--tensorboard", "tensorboard", default=None, is_flag=False, flag_value="",
        metavar="[DIR]", help="Also write the metrics as TensorBoard events to DIR "
        "(--tensorboard alone: RUN_DIR/tensorboard), and the run's hyperparameters at the "
        "end (pip install 'charlstm[tensorboard]').")(f)


def _cadence_options(f):
    f = click.option("--quiet", is_flag=True,
                     help="Hide the progress bar; the notes, the start-up lines and the lines "
                          "naming the checkpoints at the end still show.")(f)
    f = click.option("--log-every", type=POSITIVE, default=None,
                     help=f"Write a metrics.jsonl line every N steps.  [default: {DEFAULTS.log_every}]")(f)
    f = click.option("--eval-every", type=NON_NEGATIVE, default=None,
                     help="Validate every N steps; 0: at the end of each epoch and of the run.  "
                          f"[default: {DEFAULTS.eval_every}]")(f)
    f = click.option("--save-every", type=POSITIVE, default=None,
                     help=f"Write last.npz every N steps (and always at the end).  [default: {DEFAULTS.save_every}]")(f)
    return f


class _Group(click.Group):
    """Turns charlstm's user errors into one "Error: ..." line and exit status 1, unless
    --debug asks for the traceback. In a run over MPI ranks, rank 0 reports an error the
    ranks agreed on (ranks.agree) and every rank exits with its status; an error one
    rank met alone ends the whole job (the others would wait for it for ever)."""

    def main(self, *args, **kwargs):
        # The standard streams are guarded before click parses the command line: --help
        # and --version print while it does, and a full disk under them is one line too.
        _guard_standard_streams()
        try:
            return super().main(*args, **kwargs)
        except standard_output.StandardOutputFailed as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)

    def invoke(self, ctx):
        try:
            return self._convert(ctx)
        except AnotherRankFailed as e:
            sys.exit(e.exit_code)  # rank 0 reports the error for the job

    def _convert(self, ctx):
        def debug():  # --debug is known once the group's callback has run
            return (ctx.obj or {}).get("debug")

        try:
            result = self._guard_ranks(ctx)
            if sys.stdout is not None:
                sys.stdout.flush()  # fails here, as a user error, rather than at exit
            return result
        except UsageProblem as e:
            if debug():
                raise
            raise click.UsageError(str(e)) from None
        except UserError as e:
            if debug():
                raise
            raise click.ClickException(str(e)) from None
        except MemoryError:
            if debug():
                raise
            raise click.ClickException(
                "out of memory; use a smaller model, --batch-size or --seq-len") from None
        except KeyboardInterrupt as e:
            # Ctrl-C, SIGTERM or SIGHUP outside training (which stops itself cleanly):
            # quietly, with 128 + the signal, as training and sample end, not click's
            # "Aborted!" and 1.
            if debug():
                raise
            sys.exit(console.exit_status(e))

    def _guard_ranks(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            ranks = (ctx.obj or {}).get("ranks")
            if ranks is not None:  # over MPI, one rank's error ends the job (ranks.py)
                ranks.abort_for(e, _error_line)
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="charlstm")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.pass_context
def main(ctx, debug):
    """Train character-level LSTM (plain, peephole or CIFG), GRU and RNN language models,
    sample from them, resume them."""
    ctx.obj = {"debug": debug}
    # Every command ends cleanly on SIGTERM and SIGHUP, as on Ctrl-C (console.py).
    console.stop_on_signals()


def _error_line(line: str) -> None:
    click.echo(line, err=True)
    sys.stderr.flush()


def _guard_standard_streams() -> None:
    """Standard output and error as every command needs them: UTF-8, never failing a
    command for a note it cannot print, and whole or one line of error under a full
    disk or a file size limit."""
    # Text goes out as UTF-8 whatever the locale: a redirected stdout on a western Windows
    # machine (cp1252) or under LC_ALL=C (ASCII) cannot encode most generated text, and a
    # UnicodeEncodeError halfway through a sample left an empty or cut file.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            # surrogateescape: a path that a C locale decoded with escapes (a corpus
            # name in `info`) goes out as the bytes it was.
            stream.reconfigure(encoding="utf-8", errors="surrogateescape" if stream is sys.stdout
                               else "backslashreplace")
    # No command fails because it cannot print its notes (console.py); a full disk or a
    # file size limit under `> FILE` is one line, never a traceback or text silently cut
    # (standard_output.py).
    console.guard_standard_streams()
    standard_output.guard()


def _read_run_file(ctx, param, value):
    """--config FILE: its [train] table becomes the defaults of this invocation, so any
    option given on the command line wins over the file."""
    if value is None:
        return None
    from charlstm.training.config_file import read

    options = read(value)
    ctx.meta["run_file_corpus"] = options.pop("corpus", ())
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--config", "run_file", type=click.Path(dir_okay=False), default=None,
              is_eager=True, expose_value=False, callback=_read_run_file,
              help="Read options from this TOML file's [train] table (as `charlstm info RUN "
                   "--toml` writes one); options on the command line win over it.")
@click.option("--encoding", default=DEFAULTS.encoding, help="Text encoding of the corpus files.")
@click.option("--val-frac", type=Real(0, 1, max_open=True), default=DEFAULTS.val_frac,
              help="Fraction of the corpus, taken from its end, held out for validation.")
@click.option("--cell", type=click.Choice(CELLS), default=DEFAULTS.cell,
              help="lstm (PyTorch's nn.LSTM); peephole: an LSTM whose gates also see the cell "
                   "state (Gers et al. 2002); cifg: an LSTM with the forget gate tied to 1 - "
                   "input gate (Greff et al. 2017); gru (nn.GRU); rnn (tanh).")
@click.option("--hidden-size", type=POSITIVE, default=DEFAULTS.hidden_size)
@click.option("--num-layers", type=POSITIVE, default=DEFAULTS.num_layers)
@click.option("--forget-bias", type=Real(), default=DEFAULTS.forget_bias,
              help="Start the forget gate's bias at this value (bias_ih's forget rows; "
                   "bias_hh's start at 0), as char-rnn does with 1. For cifg, whose forget "
                   "gate is 1 - input gate, the input gate's bias starts at minus this. "
                   "lstm, peephole and cifg only.  [default: PyTorch's initialisation, "
                   "like every other bias]")
@click.option("--seq-len", type=POSITIVE, default=DEFAULTS.seq_len, help="Characters per stream per step (T).")
@click.option("--batch-size", type=POSITIVE, default=DEFAULTS.batch_size, help="Parallel streams (B).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULTS.optimizer)
@click.option("--momentum", type=Real(0, 1, max_open=True), default=DEFAULTS.momentum, help="Momentum for sgd.")
@click.option("--seed", type=NON_NEGATIVE, default=DEFAULTS.seed, help="Seed of the initialisation.")
@click.option("--init-from", type=click.Path(), default=None, metavar="CHECKPOINT",
              help="Start from this checkpoint's weights (a .npz file, or a run directory: "
                   "its best.npz, else last.npz) with a fresh optimizer: fine-tuning. The "
                   "model's cell, sizes and vocabulary are the checkpoint's; the text must "
                   "use only characters of that vocabulary.")
@_steering_options_train
@click.option("--threads", type=POSITIVE, default=None,
              help="Cores a training step uses: the batch's streams split into one shard per "
                   "core.  [default: every core this process may use, at most --batch-size]")
@click.option("--blas", default="auto",
              help="The BLAS behind the matrix products: auto (time every installed library "
                   "on this run's shapes and keep the fastest), openblas, mkl (pip install "
                   "'charlstm[mkl]'), or STEP/CHUNK, e.g. mkl/openblas: one library for the "
                   "recurrences' per-step products, one for the rest. Saved with the run.")
@click.option("--step-weights", default=None, metavar="FORWARD/BACKWARD",
              help="Which copy of weight_hh the per-step products read in each direction: "
                   "stored, transposed, or packed (once per chunk by mkl), e.g. "
                   "transposed/stored.  [default: measured with --blas auto, else stored/stored]")
@click.option("--bf16-products", default=None, metavar="STEP/CHUNK",
              help="With --precision bfloat16: what computes the step products and the "
                   "chunk products, each panels (charlstm's own, AVX512_BF16) or mkl (oneMKL's "
                   "bfloat16 GEMM, on AMX tiles where the CPU has them), e.g. panels/mkl.  "
                   "[default: measured with --blas auto, else panels/panels]")
@click.option("--retune", is_flag=True,
              help="With --blas auto: measure the products again even if this machine "
                   "remembers a choice for these shapes (in ~/.cache/charlstm/tuning.json), "
                   "and remember the new one.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=DEFAULT_PRECISION,
              help="The operands of a training step's matrix products: float32, or "
                   "bfloat16 with float32 accumulation and everything else float32 (needs "
                   "a CPU with AVX512_BF16); auto: bfloat16 where the CPU has it. Saved "
                   "with the run.")
@functools.partial(_budget_options, train=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory.  [default: runs/<timestamp>]")
@click.option("--force", is_flag=True, help="Start over in an --out directory that already holds a run.")
@_cadence_options
@_distributed_option
@_tensorboard_option
@click.pass_context
def train(ctx, paths, out, force, quiet, blas, step_weights, bf16_products, retune, precision,
          init_from, distributed, tensorboard, **options):
    """Train a model on the text in PATHS (files, directories, globs).

    With no PATHS it trains on the corpus of --config's file, if it names one, else on
    the built-in corpus: the Python language reference that ships with every CPython.
    Writes RUN_DIR/last.npz, best.npz and metrics.jsonl.
    """
    from click.core import ParameterSource

    from charlstm.api import train_planned
    from charlstm.training.plan import MachineRequest, plan_new_run

    if retune and blas != "auto":
        raise click.UsageError("--retune measures the products again: it goes with --blas auto")
    ranks = _ranks(ctx, distributed)
    settings = {k: v for k, v in options.items() if v is not None}  # None: the default
    settings["corpus"] = tuple(paths or ctx.meta.get("run_file_corpus", ()))
    if ctx.get_parameter_source("precision") is ParameterSource.DEFAULT:
        precision = None  # float32, or the budget table's choice (auto) with --time alone
    plan = plan_new_run(settings, _given(ctx, options),
                        MachineRequest(blas, step_weights, precision, bf16_products, retune),
                        Path(out) if out else None, force, init_from, ranks)
    run = train_planned(plan, ranks, echo=_say, progress=not quiet, started=INVOCATION_STARTED,
                        tensorboard=tensorboard)
    if run.status:
        sys.exit(run.status)


def _say(line: str) -> None:
    click.echo(line, err=True)


def _given(ctx, options: dict) -> set[str]:
    """The settings among ``options`` that the user chose, on the command line or in
    --config's file: the budget table (budget.py) fills only the others."""
    from click.core import ParameterSource

    return {name for name in options
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}


def _ranks(ctx, distributed: str):
    """The run's processes: this one alone, or the ranks of the MPI job it is part of;
    refused when that does not match how the process was started (ranks.ranks_for)."""
    from charlstm.parallel.ranks import ranks_for

    ranks = ranks_for(distributed)
    ctx.obj["ranks"] = ranks
    return ranks


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_budget_options
@click.option("--corpus", "corpus", multiple=True,
              help="Continue on this text instead (fine-tuning); its characters must fit the vocabulary.")
@click.option("--threads", type=POSITIVE, default=None,
              help="Split each batch over this many cores from now on. A count other than "
                   "the run's own rounds differently in float32's last bits than never "
                   "stopping would have.  [default: the run's own]")
@click.option("--blas", default=None,
              help="Continue on this BLAS (as train --blas, auto included). Another choice "
                   "than the run's own rounds differently.  [default: the run's own]")
@click.option("--step-weights", default=None, metavar="FORWARD/BACKWARD",
              help="As train --step-weights.  [default: the run's own]")
@click.option("--bf16-products", default=None, metavar="STEP/CHUNK",
              help="As train --bf16-products.  [default: the run's own]")
@click.option("--retune", is_flag=True,
              help="With --blas auto: measure the products again (as train --retune).")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="Continue in this precision (as train --precision). Another choice than "
                   "the run's own rounds differently.  [default: the run's own]")
@_steering_options_resume
@_cadence_options
@_distributed_option
@_tensorboard_option
@click.pass_context
def resume(ctx, run_dir, steps, epochs, time_limit, corpus, threads, blas, step_weights,
           bf16_products, retune, precision, quiet, distributed, tensorboard, **settings):
    """Continue the run in RUN_DIR from its last.npz, exactly where it stopped.

    Without options that change how it trains, the run goes on bit-identical to one that
    never stopped. A new --lr, schedule, --clip, --dropout, --weight-decay or --corpus
    continues from the same weights and optimizer state under the new setting (recorded
    in the run's history), which is then no longer that run."""
    from charlstm.api import train_planned
    from charlstm.training.plan import MachineRequest, plan_resume

    changes = {k: v for k, v in settings.items() if v is not None}
    if steps is not None or epochs is not None or time_limit is not None:
        changes.update(steps=steps, epochs=epochs, time_limit=time_limit)
    if corpus:
        changes["corpus"] = tuple(corpus)
    if threads is not None:
        changes["threads"] = threads
    if retune and blas != "auto":
        raise click.UsageError("--retune measures the products again: it goes with --blas auto")
    ranks = _ranks(ctx, distributed)
    plan = plan_resume(Path(run_dir), changes,
                       MachineRequest(blas, step_weights, precision, bf16_products, retune), ranks)
    run = train_planned(plan, ranks, echo=_say, progress=not quiet, started=INVOCATION_STARTED,
                        tensorboard=tensorboard)
    if run.status:
        sys.exit(run.status)


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--length", type=POSITIVE, default=500,
              help="Characters to generate after the prime (the most, with --stop).")
@click.option("--temperature", type=Real(min=0), default=0.8,
              help="Softmax temperature; 0 picks the most likely character.")
@click.option("--top-k", type=NON_NEGATIVE, default=0, help="Draw only from the K most likely characters; 0: all.")
@click.option("--top-p", type=Real(0, 1, min_open=True), default=1.0,
              help="Nucleus sampling: draw only from the fewest most likely characters whose "
                   "probability (after temperature and --top-k) adds up to P; 1: all.")
@click.option("--prime", default="", help="Text that warms up the state; printed first.")
@click.option("--prime-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Read the prime from this file (- for standard input), verbatim: as UTF-8, "
                   "trailing newlines kept. For primes too long for the command line.")
@click.option("--num-samples", type=POSITIVE, default=1,
              help="Samples to generate, each from the prime, the draws continuing; "
                   "printed one after another with a line '---' between them.")
@click.option("--stop", metavar="STRING", default=None,
              help="End a sample as soon as its generated text (not the prime) contains STRING, "
                   "which is printed.")
@click.option("--seed", type=NON_NEGATIVE, default=None, help="Seed for the draws; the same seed gives the same text.")
def sample(checkpoint, length, temperature, top_k, top_p, prime, prime_file, num_samples, stop,
           seed):
    """Generate text from CHECKPOINT (a .npz file, or a run directory: its best.npz, else
    last.npz), streaming it to stdout."""
    import numpy as np

    ctx = click.get_current_context()
    if stop == "":
        raise click.BadParameter("must not be empty", ctx, param_hint="'--stop'")
    prime, stop = _argument_text(prime, "--prime"), _argument_text(stop, "--stop")
    if prime_file is not None:
        if prime:
            raise click.UsageError("give the prime as --prime or as --prime-file, not both")
        from charlstm.data.corpus import bom_encoding

        name = prime_file
        raw = _read_bytes(prime_file, "--prime-file")
        codec = bom_encoding(raw) or "utf-8"  # a UTF-16/32 byte-order mark names its encoding
        try:
            prime = raw.decode(codec)
        except UnicodeDecodeError as e:
            raise UserError(f"{name}: not valid {codec.upper()} at byte {e.start}; save the "
                            f"prime as UTF-8") from None
        if prime.startswith("\ufeff"):
            prime = prime[1:]  # a byte-order mark is not part of the text
    _require_standard_output("the sample")
    model, say_which = _load(checkpoint)
    rng = np.random.default_rng(seed)  # one generator: samples after the first continue it

    def one_sample():
        return model.stream(length, prime, temperature, top_k, top_p, stop=stop, rng=rng)

    first = one_sample()
    head = next(first, "")  # a prime or stop outside the vocabulary is refused here
    say_which()
    out = sys.stdout
    try:
        for i in range(num_samples):
            if i:
                out.write("---\n")
            for piece in itertools.chain([head], first) if i == 0 else one_sample():
                out.write(piece)
                out.flush()
            out.write("\n")
            out.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): that is the user's way to stop, not an error.
        sys.stdout = None
        sys.exit(0)
    except KeyboardInterrupt as e:
        # Ctrl-C, SIGTERM or SIGHUP end a sample as they end training: quietly, with 128 +
        # the signal, and what was generated so far stays written (ended by a newline,
        # where the output can still be written: not to a terminal that hung up).
        try:
            out.write("\n")
            out.flush()
        except OSError:
            sys.stdout = None  # nothing left to flush at exit, which would fail again
        sys.exit(console.exit_status(e))


def _require_standard_output(what: str) -> None:
    """Refuse, before any work, a command whose product is what it prints (``what``)
    when it was started with standard output closed (``>&-``, a daemon): it would end
    with status 0 having shown nothing. Raises UserError."""
    if sys.stdout is None:
        raise UserError(f"standard output is closed, so {what} would go nowhere; redirect "
                        f"it to a file (> FILE) or a pipe")


def _read_bytes(path: str, option: str) -> bytes:
    """The bytes of the file ``path`` (- for standard input) that ``option`` names. A file
    that cannot be read is a UserError (status 1, as for every file charlstm reads), not
    an invalid option."""
    if path == "-":
        return sys.stdin.buffer.read() if sys.stdin is not None else b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}; check the path given to {option}") from None


def _read_checkpoint(checkpoint):
    """(path, Checkpoint, say_which) of a CHECKPOINT argument (api.read_checkpoint): a
    file, or a run directory's best.npz (else last.npz). sample, eval and info read the
    same one and, given a directory, call ``say_which()`` once their input has passed its
    checks: it names the checkpoint on stderr, so they never quietly speak of different
    models (and an error stays one line)."""
    from charlstm.api import read_checkpoint

    path, ckpt = read_checkpoint(checkpoint)

    def say_which():
        if Path(checkpoint).is_dir():
            best = ckpt.best_val_bpc
            scored = f", validation {best:.4f} bpc" if not math.isnan(best) else ""
            click.echo(f"reading {path} (step {ckpt.step}{scored})", err=True)
    return path, ckpt, say_which


def _load(checkpoint):
    """(api.Model, say_which) of a CHECKPOINT argument, as ``_read_checkpoint``."""
    from charlstm.api import Model

    path, ckpt, say_which = _read_checkpoint(checkpoint)
    return Model(ckpt, path), say_which


def _repeat_note(history: list) -> str:
    """The last line of `info --toml`'s header: how the file repeats the run, or why it
    cannot on its own (a run started from another's weights, or resumed with changes)."""
    from charlstm.training.config import RESUMABLE

    budgets = {"steps", "epochs", "time_limit", "save_every", "eval_every", "log_every", "threads"}
    if any("init_from" in e for e in history):
        return ("The run started from another checkpoint's weights (--init-from), which this "
                "file does not name: add --init-from CHECKPOINT to repeat it.")
    changed = sorted({k for e in history for k in e.get("changes", {}) if k in RESUMABLE} - budgets)
    if changed:
        return (f"The run was resumed with new {', '.join(changed)}: this file holds the last "
                f"values, so it repeats the run's settings, not its history.")
    return "Repeat the run: charlstm train --config FILE --out DIR"


def _argument_text(value: str | None, option: str) -> str | None:
    """Text from the command line as the user typed it. Under a locale Python cannot
    decode UTF-8 with (LC_ALL=C, say), argv arrives with the bytes it could not decode
    escaped as lone surrogates; they are turned back into bytes and read as UTF-8."""
    if value is None or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    raw = value.encode(sys.getfilesystemencoding(), "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{option} is not valid UTF-8; give it in UTF-8 or use --prime-file") from None


@main.command("eval")
@click.argument("checkpoint", type=click.Path())
@click.argument("file", type=click.Path())
@click.option("--encoding", default="utf-8", help="Text encoding of FILE.")
@click.option("--skip-unknown", is_flag=True, help="Drop characters outside the model's vocabulary instead of refusing.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"bpc\": ..., \"chars\": ...}.")
def eval_(checkpoint, file, encoding, skip_unknown, as_json):
    """Bits per character of FILE under CHECKPOINT, read as one stream from zero state.

    FILE may also name a built-in corpus: builtin:pydoc or builtin:recall:N."""
    _require_standard_output("the score")
    from charlstm.data.corpus import read_text_file

    model, say_which = _load(checkpoint)
    text = read_text_file(file, encoding)
    if not skip_unknown:
        model.vocab.require_covers(text, str(file), "pass --skip-unknown to drop them")
    text, dropped = model.scorable(text, skip_unknown, str(file))
    if dropped:
        click.echo(dropped, err=True)
    say_which()  # before scoring, which can take minutes
    bpc = model.bpc_of_scorable(text)
    if as_json:
        click.echo(json.dumps({"bpc": bpc, "chars": len(text)}))
    else:
        click.echo(f"{bpc:.4f}")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
@click.option("--toml", "as_toml", is_flag=True,
              help="Print the run's configuration as a file for `charlstm train --config`.")
def info(checkpoint, as_json, as_toml):
    """Configuration, size and progress of CHECKPOINT (a .npz file or a run directory)."""
    _require_standard_output("the information")
    from charlstm.model import checkpoint as ckpt_io
    from charlstm.model.parameters import count_params

    path, ckpt, say_which = _read_checkpoint(checkpoint)
    say_which()
    last = Path(checkpoint) / "last.npz"
    last_step, history = None, ckpt.history
    if Path(checkpoint).is_dir() and path.name != "last.npz" and last.is_file():
        latest = ckpt_io.load(last)  # the run's progress and its whole history
        last_step, history = latest.step, latest.history
    if as_toml:
        from charlstm.training.config_file import write

        click.echo(write(ckpt.config, f"The configuration of {path} (step {ckpt.step}).\n"
                                      + _repeat_note(ckpt.history)), nl=False)
        return
    best = ckpt.best_val_bpc
    summary = {
        "checkpoint": str(path),
        "config": ckpt.config.to_json_dict(),
        "corpus": [{"path": f.path, "sha256": f.sha256} for f in ckpt.corpus_files],
        "parameters": count_params(ckpt.params.shapes),
        "step": ckpt.step,
        "epoch": ckpt.epoch,
        "best_val_bpc": None if math.isnan(best) else best,
        "vocab_size": len(ckpt.vocab),
        "elapsed_seconds": ckpt.elapsed,
        "last_step": ckpt.step if last_step is None else last_step,
        "history": history,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    cfg = ckpt.config
    click.echo(f"checkpoint     {path}")
    click.echo(f"model          {cfg.cell}, {cfg.num_layers} layers x {cfg.hidden_size} hidden")
    click.echo(f"parameters     {summary['parameters']:,}")
    click.echo(f"vocabulary     {summary['vocab_size']} characters")
    click.echo(f"step           {ckpt.step} (epoch {ckpt.epoch}, {ckpt.epoch_step} steps into it)")
    if last_step is not None:
        click.echo(f"last.npz       step {last_step}")
    click.echo(f"best val bpc   {'-' if summary['best_val_bpc'] is None else f'{best:.4f}'}")
    click.echo(f"training time  {ckpt.elapsed:.1f} s")
    click.echo("corpus         " + ", ".join(f.path for f in ckpt.corpus_files))
    for event in history:
        changes = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in event.get("changes", {}).items())
        origin = f" from {event['init_from']} (step {event['init_from_step']})" if "init_from" in event else ""
        if "budget_recipe" in event:
            changes = (f"budget table's '{event['budget_recipe']}' recipe chose "
                       + ", ".join(f"{k} {v}" for k, v in event.get("chosen", {}).items()))
        click.echo(f"history        step {event.get('step')}: {event.get('event')}{origin}"
                   + (f": {changes}" if changes else ""))
    click.echo("configuration")
    for key, value in summary["config"].items():
        click.echo(f"  {key:<17}{value}")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx", "hf", "tensorboard"]),
              required=True, help="safetensors (pip install 'charlstm[safetensors]'), onnx "
              "('charlstm[onnx]'), hf (a folder: safetensors, config, vocabulary, model card) "
              "or tensorboard (a run directory's metrics as events; 'charlstm[tensorboard]').")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="The file to write (safetensors, onnx) or the directory (hf, tensorboard).")
def export(checkpoint, fmt, output):
    """Write CHECKPOINT (a .npz, or a run directory: its best.npz, else last.npz) in a
    format other tools read. See the README, "export"."""
    from charlstm.model import export as exports

    output = Path(output)
    exports.check_output(checkpoint, output, fmt)
    try:
        if fmt == "tensorboard":
            rows = exports.export_tensorboard(Path(checkpoint), output)
            click.echo(f"{rows} metrics rows written to {output}")
            return
        path, ckpt, say_which = _read_checkpoint(checkpoint)
        say_which()
        {"safetensors": exports.export_safetensors, "onnx": exports.export_onnx,
         "hf": exports.export_hf}[fmt](ckpt, output)
    except OSError as e:
        raise UserError(f"cannot write {output} ({e.strerror or e}); nothing was written: "
                        f"free space or choose another -o") from None
    click.echo(str(output))


@main.command()
@click.argument("sweep_file", required=False, type=click.Path(dir_okay=False))
@click.option("--workers", type=POSITIVE, default=None,
              help="Workers of the local Dask cluster, one trial each at a time.  "
                   "[default: cores // --cores-per-trial]")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run on this Dask cluster instead of a local one.")
@click.option("--cores-per-trial", type=POSITIVE, default=1,
              help="--threads of every trial that does not set it.")
@click.option("--retries", type=NON_NEGATIVE, default=2,
              help="Times a failed trial is resumed before it is recorded as failed.")
@click.option("--dry-run", is_flag=True, help="List the trials and their run directories; run nothing.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Instead: print the results in this sweep directory, best first.")
@click.option("--json", "as_json", is_flag=True, help="With --report or --dry-run: JSON.")
@click.option("--quiet", is_flag=True, help="Hide the progress bar (the other lines still show).")
def sweep(sweep_file, workers, scheduler, cores_per_trial, retries, dry_run, report_dir,
          as_json, quiet):
    """Train every combination of the [grid] of SWEEP_FILE on Dask (pip install
    'charlstm[sweep]'), each trial a `charlstm train` process of its own; results go to
    OUT/sweep.jsonl as trials finish. Running it again skips finished trials and resumes
    interrupted ones."""
    from charlstm.parallel import sweep as sweeps

    if report_dir is not None and sweep_file is not None:
        raise click.UsageError("give a sweep file to run, or --report DIR, not both")
    if scheduler is not None and workers is not None:
        raise click.UsageError("--workers sizes the local cluster; with --scheduler the cluster "
                               "is yours: drop one")
    if as_json and report_dir is None and not dry_run:
        raise click.UsageError("--json goes with --report or --dry-run")
    if report_dir is not None or dry_run:
        _require_standard_output("the report" if report_dir is not None else "the trials' list")
    if report_dir is not None:
        results = sweeps.report(Path(report_dir))
        click.echo(json.dumps(results, indent=2) if as_json else "\n".join(sweeps.report_lines(results)))
        return
    if sweep_file is None:
        raise click.UsageError("give a sweep file, or --report DIR")
    spec = sweeps.read_sweep(sweep_file)
    if dry_run:
        planned = sweeps.trials(spec, cores_per_trial)
        if as_json:
            click.echo(json.dumps([{"trial": t.name, "run_dir": str(t.run_dir), "options": sweeps.json_options(t.options)}
                                   for t in planned], indent=2))
        else:
            for t in planned:
                combo = ", ".join(f"{k}={t.options[k]!r}" for k in spec.grid)
                click.echo(f"{t.run_dir}  {combo}")
        return
    from charlstm.parallel.launchers import refuse_launched_copies

    refuse_launched_copies("run the whole sweep (its trials run on Dask)")
    results = sweeps.run_sweep(spec, workers, scheduler, cores_per_trial, retries, quiet,
                               echo=lambda line: click.echo(line, err=True))
    ranked = sorted(results, key=lambda r: (r.get("metric") is None, r.get("metric") or 0.0))
    click.echo("\n".join(sweeps.report_lines(ranked, list(spec.grid) or None)))
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} trials failed; see {spec.out / sweeps.RESULTS_NAME}", err=True)
        sys.exit(1)


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--order", "orders", type=POSITIVE, multiple=True,
              help="n of the n-gram model: each character predicted from the n-1 before it "
                   "(repeatable).  [default: 3, 5 and 7]")
@click.option("--encoding", default=DEFAULTS.encoding, help="Text encoding of the corpus files.")
@click.option("--val-frac", type=Real(0, 1, min_open=True, max_open=True), default=DEFAULTS.val_frac,
              help="As train --val-frac: the split scored.")
@click.option("--val-chars", type=NON_NEGATIVE, default=DEFAULTS.val_chars,
              help="As train --val-chars: the first N characters of the split; 0: all.")
@click.option("--discount", type=Real(0, 1, min_open=True, max_open=True), default=0.75,
              help="The absolute discount D of every order.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def baseline(paths, orders, encoding, val_frac, val_chars, discount, as_json):
    """Bits per character of a counting model on the validation split `train` would use.

    An interpolated Kneser-Ney character n-gram model (Chen & Goodman 1999) counted on
    the training part of PATHS (files, directories, globs; none: the built-in corpus),
    scored on the same validation text as `charlstm train PATHS` with the same
    --val-frac and --val-chars: a network that does not beat it has learned no more than
    counting."""
    _require_standard_output("the scores")
    from charlstm.tools.baseline import baseline_report

    report = baseline_report(paths, orders or (3, 5, 7), encoding, val_frac, val_chars, discount)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"# interpolated Kneser-Ney, discount {discount:g}; counted on "
               f"{report['train_chars']:,} characters, scored on {report['val_chars'] - 1:,} "
               f"validation predictions (vocabulary {report['vocab_size']})")
    for r in report["results"]:
        click.echo(f"order {r['order']:>2}  {r['bpc']:.4f} bpc")


@main.command()
@click.option("--config", "configs", multiple=True, type=click.Choice(["S", "M", "L", "R"]),
              help="Configurations to run (repeatable).  [default: S M L R]")
@click.option("--corpus", type=click.Path(dir_okay=False), default=None,
              help="Text to train on.  [default: the built-in corpus]")
@click.option("--steps", type=POSITIVE, default=20, help="Timed training steps per configuration.")
@click.option("--warmup", type=NON_NEGATIVE, default=3, help="Untimed steps first.")
@click.option("--compare-torch", is_flag=True, help="Also run the same models in PyTorch, if it is installed.")
@click.option("--threads", type=POSITIVE, default=None,
              help="Cores charlstm's training step uses (see train --threads).  "
                   "[default: all cores, at most the batch size]")
@click.option("--torch-threads", type=POSITIVE, default=None, help="PyTorch's threads.  [default: all cores]")
@click.option("--blas", default="auto", help="charlstm's BLAS, as train --blas.")
@click.option("--repeat", type=POSITIVE, default=1, help="Runs per configuration; medians are reported.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(("float32", "bfloat16")),
              help="charlstm's precisions to run (repeatable); PyTorch runs both ways, float32 "
                   "and bfloat16 autocast.  [default: float32, and bfloat16 where the CPU has "
                   "AVX512_BF16]")
@click.option("--quality", type=Duration(), default=None,
              help="Instead: train config M (or one --config) this long in charlstm and in PyTorch "
                   "and compare validation bpc against time (needs torch).")
@click.option("--seed", type=NON_NEGATIVE, default=0,
              help="With --quality: the seed of both tools' initial weights.")
@click.option("--same-init", is_flag=True,
              help="With --quality: charlstm starts from PyTorch's initial weights (of --seed), "
                   "so the runs differ only in the implementation, not in the draw of weights.")
@click.option("--recipe", type=click.Choice(QUALITY_RECIPES), default="budget",
              show_default=True,
              help="With --quality: how both tools train.  budget: the learning rate, cosine "
                   "decay over the budget and dropout that train --time picks for this text "
                   "and budget; constant: the configuration's constant rate, no dropout.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(configs, corpus, steps, warmup, compare_torch, threads, torch_threads, blas, repeat,
          precisions, quality, seed, same_init, recipe, as_json):
    """Measure training and sampling speed for S, M, L and R (see docs/BENCHMARKS.md)."""
    _require_standard_output("the measurements")
    from charlstm.parallel.launchers import refuse_launched_copies

    refuse_launched_copies("measure while the others take the same cores")
    import os

    from charlstm.tools.bench import run_bench, run_quality

    echo = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    if corpus is not None and not Path(corpus).is_file():  # a recognised mistake: status 1
        raise UserError(f"{corpus}: no such file; give --corpus a text file")
    torch_threads = torch_threads or os.cpu_count()
    if quality is not None:
        if len(configs) > 1:
            raise UserError(f"--quality compares one configuration, not {len(configs)}: "
                            f"give one --config (or none, for M)")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UserError("--quality compares against PyTorch, which is not installed "
                            "(pip install torch==2.13.0 for a CPU build)") from None
        results = run_quality((configs or ("M",))[0], corpus, quality, max(quality / 10, 5.0),
                              torch_threads, echo=echo, seed=seed, same_init=same_init,
                              threads=threads, blas=blas, recipe=recipe)
    else:
        if "bfloat16" in precisions:
            from charlstm.machine.cpu import resolve_precision

            resolve_precision("bfloat16")  # one line, naming what the CPU lacks
        results = run_bench(configs or ("S", "M", "L", "R"), corpus, steps, warmup, compare_torch,
                            torch_threads, echo=echo, repeat=repeat, threads=threads,
                            blas=blas, precisions=precisions or None)
    if as_json:
        click.echo(json.dumps(results, indent=2))


@main.command()
@click.option("--cell", type=click.Choice(CELLS + ("all",)), default="all",
              help="Cell to check; all: every cell.")
@click.option("--seed", type=NON_NEGATIVE, default=0,
              help="Seed of the random model, chunk and initial state.")
@click.option("--dropout", type=Real(0, 1, max_open=True), default=0.0,
              help="Check the gradient under one fixed dropout mask of this probability.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def gradcheck(cell, seed, dropout, as_json):
    """Check every gradient against central finite differences.

    Builds a tiny float64 model (vocabulary 5, hidden size 3, 2 layers, batch 2, 3 steps)
    with a random non-zero initial state, and compares the gradient of the mean loss with
    respect to every entry of every parameter, and of h0 (and c0 for the LSTM family), with
    central differences (eps 1e-6). Prints the norm-based relative error per tensor;
    each must be below 1e-6. Exits with status 1 if any is not. With --dropout, the check
    is of the network under one fixed random mask.
    """
    _require_standard_output("the check")
    from charlstm.tools import gradcheck as gc

    cells = CELLS if cell == "all" else (cell,)
    results = [r for c in cells for r in gc.check_gradients(c, seed=seed, dropout=dropout)]
    if as_json:
        click.echo(json.dumps(gc.report_json(results, seed, dropout), indent=2))
    else:
        click.echo("\n".join(gc.report_lines(results)))
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("text", type=click.Path())
@click.option("--length", type=POSITIVE, default=DEFAULT_FLOW_LENGTH,
              help="T: the largest distance; each chunk is T+1 characters read and the one they predict.")
@click.option("--chunks", type=POSITIVE, default=DEFAULT_FLOW_CHUNKS,
              help="Chunks (evenly spaced over TEXT) the norms are averaged over.")
@click.option("--encoding", default="utf-8", help="Text encoding of TEXT.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also draw the curves to this PNG (log scale; needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def gradflow(checkpoint, text, length, chunks, encoding, output, as_json):
    """How far back the gradient of one prediction reaches in CHECKPOINT's model.

    For chunks of TEXT, each read from zero state, L_T is the cross-entropy of the
    prediction at the chunk's last position T. Prints the norm of dL_T/dh_t (and
    dL_T/dc_t for the LSTM family) of every layer (l0 is the bottom one) against the distance
    T - t, averaged over the chunks; computed in float64 with charlstm's own kernels.
    TEXT is a file, or a built-in corpus such as builtin:recall:48.
    """
    _require_standard_output("the table")
    from charlstm.tools.gradflow import gradflow_report, report_lines

    result = gradflow_report(checkpoint, text, length, chunks, encoding, output)
    if Path(checkpoint).is_dir():  # say which checkpoint of the run, as sample and eval do
        click.echo(f"reading {result['checkpoint']}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo("\n".join(report_lines(result)))
    if output is not None:
        click.echo(f"# plot written to {output}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write.  [default: RUN_DIR/curve.png]")
def plot(run_dir, output):
    """Plot the learning curves of the run in RUN_DIR: training and validation bits per
    character from its metrics.jsonl, against steps and against elapsed training time,
    as a PNG (needs matplotlib: pip install 'charlstm[plot]')."""
    from charlstm.tools.plot import plot_run

    click.echo(str(plot_run(run_dir, output)))


if _SIGINT_AFTER_LOADING is not None:  # loaded: Ctrl-C is a KeyboardInterrupt again
    signal.signal(signal.SIGINT, _SIGINT_AFTER_LOADING)


if __name__ == "__main__":
    main()
