"""The one configuration object: built from the CLI, saved in every checkpoint as JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from charlstm.model.cells import CELL_TABLE, FORGET_GATE_CELLS

CELLS = tuple(CELL_TABLE)
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adagrad")
# The state each optimizer keeps per parameter, under PyTorch's names (optim.py). Here, not
# with the optimizers, so reading a checkpoint (info, export) imports no kernel.
STATISTICS = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "sgd": ("momentum_buffer",),
    "rmsprop": ("square_avg",),
    "adagrad": ("sum",),
}
LR_SCHEDULES = ("constant", "cosine", "step")
STEP_WEIGHT_COPIES = ("stored", "transposed", "packed", "panels")
# The precision of a training step's matrix products: float32, or bfloat16 operands with
# float32 accumulation (mixed precision; kernels/bf16.py). Everything else is float32.
PRECISIONS = ("float32", "bfloat16")
# What computes a bfloat16 run's products, for the step products and the chunk products:
# charlstm's own VDPBF16PS panels (kernels/bf16.py), or oneMKL's bfloat16 GEMM (on AMX
# tiles where the CPU has them). `train --blas auto` measures them (tune.py).
BF16_PRODUCT_KINDS = ("panels", "mkl")

# Gates per cell: the G in PyTorch's [G*H, in] weight layout.
GATES = {name: cell.gates for name, cell in CELL_TABLE.items()}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _int_at_least(low):
    return lambda v: None if _is_int(v) and v >= low else f"an integer, at least {low}"


def _real_in(low, high=math.inf, low_open=False, high_open=True):
    def check(v):
        if not _is_real(v):
            return "a finite number"
        if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            return f"a number in {left}{low:g}, {high:g}{right}"
        return None
    return check


def _one_of(choices):
    return lambda v: None if v in choices else f"one of {', '.join(choices)}"


def _optional(check):
    return lambda v: None if v is None else check(v)


def _parses(parse, expected):
    def check(v):
        try:
            parse(v)
        except ValueError:
            return expected
        return None
    return check


def _corpus(v):
    ok = isinstance(v, tuple) and all(isinstance(p, str) and p for p in v)
    return None if ok else "a list of paths"


def _encoding(v):
    import codecs

    try:
        codecs.lookup(v)
    except (LookupError, TypeError):
        return "an encoding Python knows, e.g. utf-8 or latin-1"
    return None


def parse_step_weights(text: str) -> tuple[str, str]:
    """(forward, backward) of 'FORWARD/BACKWARD', each one of STEP_WEIGHT_COPIES.
    Raises ValueError otherwise."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) != 2 or any(p not in STEP_WEIGHT_COPIES for p in parts):
        raise ValueError(f"step weights {text!r} are not FORWARD/BACKWARD, each one of "
                         f"{', '.join(STEP_WEIGHT_COPIES)}")
    return parts[0], parts[1]


def parse_bf16_products(text: str) -> tuple[str, str]:
    """(step, chunk) of 'STEP/CHUNK' or 'KIND' (both), each one of BF16_PRODUCT_KINDS.
    Raises ValueError otherwise."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p not in BF16_PRODUCT_KINDS for p in parts):
        raise ValueError(f"bfloat16 products {text!r} are not STEP/CHUNK, each one of "
                         f"{', '.join(BF16_PRODUCT_KINDS)}")
    return parts[0], parts[1]


def _parse_blas(text):
    from charlstm.kernels.blas_libraries import parse_blas

    return parse_blas(text)


# What each setting is, for the code that must treat settings alike (one list each,
# derived below, never written out elsewhere):
ARCHITECTURE_KIND = "architecture"  # the model's shape: --init-from takes it from its checkpoint
RESUMABLE_KIND = "resumable"  # steers how training goes on: `resume` may change it
MACHINE_KIND = "machine"  # how this machine computes: `resume` may change it (it rounds otherwise)
DERIVED_KIND = "derived"  # set by charlstm when a run starts, never by the user
FIXED_KIND = "fixed"  # chosen when a run starts, kept for its life
DEFAULT_EPOCHS = 10  # the budget of a run that names none


def setting(default, kind: str, rule, budget: bool = False, option: str | None = None):
    """A TrainConfig field: its default, its kind (above), its validation rule (a
    function of the value returning None, or what the value should have been), whether
    the budget table may fill it (budget.py), and its command-line option when that is
    not named after it."""
    return field(default=default, metadata={"kind": kind, "rule": rule, "budget": budget,
                                            "option": option})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, saved in its checkpoint. Defaults are the command line's."""

    # corpus
    corpus: tuple = setting((), RESUMABLE_KIND, _corpus)  # as given; (): the built-in corpus
    encoding: str = setting("utf-8", RESUMABLE_KIND, _encoding)
    val_frac: float = setting(0.1, FIXED_KIND, _real_in(0, 1))
    # Validation reads the first val_chars characters of the validation split (0: all of
    # it), the same ones every time, so a large corpus does not spend minutes per check.
    val_chars: int = setting(200_000, RESUMABLE_KIND, _int_at_least(0))
    # model
    cell: str = setting("lstm", ARCHITECTURE_KIND, _one_of(CELLS))
    hidden_size: int = setting(256, ARCHITECTURE_KIND, _int_at_least(1), budget=True)
    num_layers: int = setting(2, ARCHITECTURE_KIND, _int_at_least(1), budget=True)
    # The forget gate's bias at initialisation (parameters.init_params); None: PyTorch's
    # initialisation, like every other bias. Only for cells with a forget gate.
    forget_bias: float | None = setting(None, FIXED_KIND, _optional(_real_in(-math.inf)))
    # regularisation: the probability of zeroing each layer's output (inverted dropout),
    # and the decoupled (AdamW-style) shrink per step, p -= lr * wd * p
    dropout: float = setting(0.0, RESUMABLE_KIND, _real_in(0, 1), budget=True)
    weight_decay: float = setting(0.0, RESUMABLE_KIND, _real_in(0))
    # batching
    seq_len: int = setting(64, FIXED_KIND, _int_at_least(1), budget=True)
    batch_size: int = setting(32, FIXED_KIND, _int_at_least(1), budget=True)
    # optimisation
    optimizer: str = setting("adam", FIXED_KIND, _one_of(OPTIMIZERS))
    lr: float = setting(2e-3, RESUMABLE_KIND, _real_in(0, low_open=True), budget=True)
    momentum: float = setting(0.0, FIXED_KIND, _real_in(0, 1))
    clip: float = setting(5.0, RESUMABLE_KIND, _real_in(0))
    lr_schedule: str = setting("constant", RESUMABLE_KIND, _one_of(LR_SCHEDULES), budget=True)
    warmup: int = setting(0, RESUMABLE_KIND, _int_at_least(0))
    # the factor of the 'step' schedule, and the steps between its decays (0: one epoch)
    lr_decay: float = setting(0.5, RESUMABLE_KIND, _real_in(0, 1, low_open=True, high_open=False))
    lr_decay_every: int = setting(0, RESUMABLE_KIND, _int_at_least(0))
    lr_min: float = setting(0.0, RESUMABLE_KIND, _real_in(0), budget=True)  # the cosine's floor
    # steps over which 'cosine' decays; 0 means the run's step budget
    lr_horizon: int = setting(0, RESUMABLE_KIND, _int_at_least(0))
    # Seconds of training over which 'cosine' decays when --time is the only budget: set
    # when such a run starts (loop.run_training), from the time its budget leaves for
    # the training loop; the checkpoint's `elapsed` says how far along it is. 0: none.
    lr_horizon_time: float = setting(0.0, DERIVED_KIND, _real_in(0))
    seed: int = setting(0, FIXED_KIND, _int_at_least(0))
    # compute: the cores a training step uses, one row shard of the batch each (at most
    # B shards; shards.py). Saved with the run because it fixes the order in which the
    # shards' gradients are summed, so a resume continues with the same rounding. The
    # default, every core the process may use at most B, is the plan's (plan.py).
    threads: int = setting(1, MACHINE_KIND, _int_at_least(1))
    # The processes of the run (MPI ranks, ranks.py), each training its rows of the batch
    # on `threads` cores. Saved because it fixes the gradients' summation order too.
    ranks: int = setting(1, DERIVED_KIND, _int_at_least(1))
    # compute: the BLAS behind the matrix products, as LIBRARY or STEP/CHUNK (the per-time-
    # step products of the recurrences, and all the others; kernels/blas.py), and which copy
    # of weight_hh the forward/backward step products read: "stored" (PyTorch's [G*H, H]),
    # "transposed" (a [H, G*H] copy), "packed" (packed by the step library once per chunk;
    # oneMKL only) or "panels" (packed once per chunk into column panels for charlstm's own
    # register-blocked product, kernels/panels.py, no BLAS). `train --blas auto` measures
    # these choices on the machine (tune.py); these defaults are what a run that chose
    # none computes with. Saved with the run because each choice rounds float32 its own way.
    blas: str = setting("openblas", MACHINE_KIND,
                        _parses(_parse_blas, "LIBRARY or STEP/CHUNK, e.g. openblas or mkl/openblas"))
    step_weights: str = setting("stored/stored", MACHINE_KIND,
                                _parses(parse_step_weights, "FORWARD/BACKWARD, each "
                                        + " or ".join(STEP_WEIGHT_COPIES)))
    # The operands of a training step's matrix products (PRECISIONS): bfloat16 needs a CPU
    # with AVX512_BF16 (cpu.py); validation, evaluation and sampling run in float32 either
    # way, from the float32 master weights. Saved because it decides the rounding.
    precision: str = setting("float32", MACHINE_KIND, _one_of(PRECISIONS))
    # With bfloat16: STEP/CHUNK, each of BF16_PRODUCT_KINDS. Saved: each rounds its way.
    bf16_products: str = setting("panels/panels", MACHINE_KIND,
                                 _parses(parse_bf16_products, "STEP/CHUNK, each "
                                         + " or ".join(BF16_PRODUCT_KINDS)))
    # budget: the run stops at whichever is reached first; None means no limit of that
    # kind (a run that names none trains DEFAULT_EPOCHS epochs); time_limit is seconds,
    # per invocation
    steps: int | None = setting(None, RESUMABLE_KIND, _optional(_int_at_least(0)))
    epochs: float | None = setting(None, RESUMABLE_KIND, _optional(_real_in(0, low_open=True)))
    time_limit: float | None = setting(None, RESUMABLE_KIND, _optional(_real_in(0, low_open=True)),
                                       option="time")
    # early stopping: end the run after `patience` validations in a row that do not beat
    # the best so far by at least `min_delta` bpc (0: never)
    patience: int = setting(0, RESUMABLE_KIND, _int_at_least(0))
    min_delta: float = setting(0.0, RESUMABLE_KIND, _real_in(0))
    # cadence: steps between saves, validations (0: each epoch's end) and log lines
    save_every: int = setting(200, RESUMABLE_KIND, _int_at_least(1))
    eval_every: int = setting(0, RESUMABLE_KIND, _int_at_least(0))
    log_every: int = setting(10, RESUMABLE_KIND, _int_at_least(1))

    def to_json_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["corpus"] = list(self.corpus)
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        d = dict(d)
        d["corpus"] = tuple(d.get("corpus", ()))
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def step_layouts(self) -> tuple[str, str]:
        """The copies of weight_hh the forward and the backward step products read."""
        return parse_step_weights(self.step_weights)


def _fields_where(test) -> tuple:
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if test(f.metadata))


# The lists other modules need, derived from the declaration above.
ARCHITECTURE = _fields_where(lambda m: m["kind"] == ARCHITECTURE_KIND)
RESUMABLE = _fields_where(lambda m: m["kind"] in (RESUMABLE_KIND, MACHINE_KIND)) + ("ranks",)
MACHINE = _fields_where(lambda m: m["kind"] == MACHINE_KIND)
DERIVED = _fields_where(lambda m: m["kind"] == DERIVED_KIND)
BUDGET_FILLED = _fields_where(lambda m: m["budget"])
RULES = {f.name: f.metadata["rule"] for f in dataclasses.fields(TrainConfig)}
OPTION_OF = {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)
             if f.metadata["option"]}  # settings whose option is not named after them


class InvalidSetting(ValueError):
    """A setting outside what charlstm can run; ``name`` is the TrainConfig field."""

    def __init__(self, name: str, value, expected: str):
        super().__init__(f"invalid {name}: {value!r} (expected {expected})")
        self.name, self.value, self.expected = name, value, expected


def validate(config: TrainConfig) -> TrainConfig:
    """Return ``config`` if every setting is one charlstm can run; raise InvalidSetting
    for the first that is not (its message names the setting, the value and what it
    should be)."""
    for f in dataclasses.fields(config):
        problem = RULES[f.name](getattr(config, f.name))
        if problem is not None:
            raise InvalidSetting(f.name, getattr(config, f.name), problem)
    if config.forget_bias is not None and config.cell not in FORGET_GATE_CELLS:
        raise InvalidSetting("forget_bias", config.forget_bias,
                             f"no value with cell {config.cell}, which has no forget gate; "
                             f"{', '.join(FORGET_GATE_CELLS[:-1])} and {FORGET_GATE_CELLS[-1]} "
                             f"have one")
    if config.lr_schedule == "cosine" and config.lr_min > config.lr:
        raise InvalidSetting("lr_min", config.lr_min,
                             f"at most --lr ({config.lr:g}): the cosine schedule falls from "
                             f"--lr to --lr-min")
    if config.patience > 0 and config.val_frac == 0:
        raise InvalidSetting("patience", config.patience,
                             "0 without a validation split (--val-frac 0): early stopping "
                             "counts validations")
    return config


DEFAULTS = TrainConfig()  # the one place each default is written


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
# Other spellings of a time unit, and how --time writes the same length.
_OTHER_UNITS = {**dict.fromkeys(("hr", "hrs", "hour", "hours"), ("h", 1)),
                **dict.fromkeys(("min", "mins", "minute", "minutes"), ("m", 1)),
                **dict.fromkeys(("sec", "secs", "second", "seconds"), ("s", 1)),
                **dict.fromkeys(("d", "day", "days"), ("h", 24)),
                **dict.fromkeys(("w", "week", "weeks"), ("h", 168))}
_NEXT_UNIT = {"h": "m", "m": "s"}


def parse_duration(text: str) -> float:
    """Seconds in '90s', '10m', '1.5h' or '1h30m' (spaces between the parts allowed).
    Raises ValueError for anything else, saying what to write: a number without a unit
    ('2' could mean seconds, minutes or hours), a last number without one ('1h30'), a
    unit spelled otherwise ('10min', '1d') and a clock time ('00:10:00')."""
    s = text.strip().lower()
    unreadable = f"cannot read {text!r} as a duration; use e.g. 90s, 10m or 1h30m"
    if re.fullmatch(r"\d+(:\d+){1,2}", s):
        fields = [int(f) for f in s.split(":")]
        if len(fields) == 3:
            meant = format_duration(fields[0] * 3600 + fields[1] * 60 + fields[2])
            raise ValueError(f"{text!r} is a clock time; give the duration with units: {meant}")
        as_minutes = format_duration(fields[0] * 60 + fields[1])
        as_hours = format_duration(fields[0] * 3600 + fields[1] * 60)
        raise ValueError(f"{text!r} could be minutes:seconds or hours:minutes; give the "
                         f"duration with units: {as_minutes} or {as_hours}")
    pos, total, unit = 0, 0.0, None
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(unreadable)
        number, word = m.group(1), m.group(2)
        if not word and m.end() == len(s):
            if unit is None:
                raise ValueError(f"{text!r} has no unit: give {number}s, {number}m or {number}h")
            raise ValueError(f"{text!r}: its last number, {number}, has no unit: give "
                             f"{s}{_NEXT_UNIT.get(unit, 's')}, or another unit")
        if word in _OTHER_UNITS:
            short, factor = _OTHER_UNITS[word]
            raise ValueError(f"{text!r}: a duration's units are h, m and s: give "
                             f"{format_duration(float(number) * factor * _UNIT_SECONDS[short])}")
        if word not in _UNIT_SECONDS:
            raise ValueError(unreadable)
        unit = word
        total += float(number) * _UNIT_SECONDS[unit]
        pos = m.end()
    if unit is None:
        raise ValueError(unreadable)
    return total


def format_duration(seconds: float) -> str:
    """``seconds`` as parse_duration reads it back: '90s', '3m', '1h30m', '2.5s'."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"


def config_json(config: TrainConfig) -> str:
    return json.dumps(config.to_json_dict(), sort_keys=True)
