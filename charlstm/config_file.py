"""Run configuration files: a run's training options as a TOML ``[train]`` table.

    [train]
    corpus = ["input.txt"]
    hidden_size = 512
    lr = 3e-3
    time = "30m"

``charlstm train --config FILE`` reads one (options on the command line win over it);
``charlstm info RUN --toml`` writes a run's own, so a run is repeated with one command.
The keys are TrainConfig's field names (train's options with ``_`` for ``-``), plus
``time`` (a duration, as ``--time`` takes it) and ``blas``/``step_weights``; relative
corpus paths are read from the current directory, as on the command line. Read with
the standard library's tomllib (tomli before Python 3.11).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

from .config import TrainConfig, format_duration, parse_duration
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older Pythons only
    import tomli as tomllib

TABLE = "train"
# TrainConfig fields a file may not set: those a run derives when it starts (the time
# horizon of a cosine schedule that follows --time). Keys a file may set that are not fields:
DERIVED = {"lr_horizon_time", "ranks"}
EXTRA_KEYS = {"time": "time_limit"}
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)
           if f.name not in DERIVED and f.name not in EXTRA_KEYS.values()}
_HINTS = typing.get_type_hints(TrainConfig)


def _expected_type(name: str) -> str:
    hint = str(_HINTS[name])
    if name == "corpus":
        return "a list of paths"
    if "int" in hint and "float" not in hint:
        return "an integer"
    if "float" in hint:
        return "a number"
    return "a string"


def _check_type(name: str, value, where: str):
    """``value`` for field ``name``, or UserError naming the key and the type it needs."""
    kind = _expected_type(name)
    ok = {
        "a list of paths": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
        "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "a string": lambda v: isinstance(v, str),
    }[kind](value)
    if not ok:
        raise UserError(f"{where}: key {name!r} must be {kind}, not {value!r}")
    return tuple(value) if name == "corpus" else value


def load_document(path) -> dict:
    """The TOML document in ``path``. Raises UserError for a missing or unreadable file
    and for TOML syntax errors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None


def option(key: str, value, where: str) -> tuple[str, object]:
    """The TrainConfig field and value of one ``[train]`` key (``time`` is a duration).
    Raises UserError naming ``where`` and the key for an unknown key or a wrong type."""
    if key in EXTRA_KEYS:
        # A number alone is refused: 2 could mean seconds, minutes or hours.
        if not isinstance(value, str):
            raise UserError(f"{where}: key {key!r} must be a duration with its unit in quotes, "
                            f"such as \"30m\" or \"90s\", not {value!r}")
        try:
            return EXTRA_KEYS[key], parse_duration(value)
        except ValueError as e:
            raise UserError(f"{where}: key {key!r}: {e}") from None
    if key in _FIELDS:
        return key, _check_type(key, value, where)
    raise UserError(f"{where}: unknown key {key!r}; the keys are train's options: "
                    f"{', '.join(sorted([*_FIELDS, *EXTRA_KEYS]))}")


def train_options(table, where: str) -> dict:
    """The training options of a ``[train]`` table, as TrainConfig field names and values."""
    if not isinstance(table, dict):
        raise UserError(f"{where} has no [{TABLE}] table; put the training options under [{TABLE}]")
    return dict(option(key, value, f"{where} [{TABLE}]") for key, value in table.items())


def read(path) -> dict:
    """The training options of the ``[train]`` table in ``path``, as TrainConfig field
    names and values. Raises UserError (one line, naming the file and the key) for a
    missing or unreadable file, TOML syntax errors, a missing table, unknown keys and
    values of the wrong type."""
    document = load_document(path)
    table = document.get(TABLE)
    if isinstance(table, dict):
        other = sorted(k for k in document if k != TABLE)
        if other:
            raise UserError(f"{path}: unknown table or key {other[0]!r} outside [{TABLE}]")
    return train_options(table, str(path))


def write_options(options: dict, comment: str = "") -> str:
    """Training options (TrainConfig field names, as ``read`` returns them) as a
    ``[train]`` table that ``read`` returns unchanged."""
    lines = [f"# {line}" for line in comment.splitlines()] + [f"[{TABLE}]"]
    for name, value in options.items():
        if value is None:
            continue
        if name == "time_limit":
            lines.append(f"time = \"{format_duration(value)}\"")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON's string escapes are TOML's basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def write(config: TrainConfig, comment: str = "") -> str:
    """``config`` as a ``[train]`` table that ``read`` returns unchanged (settings that
    are unset, None, are left out: unset is their default)."""
    lines = [f"# {line}" for line in comment.splitlines()] + [f"[{TABLE}]"]
    for name, value in config.to_json_dict().items():
        if value is None or name in DERIVED:
            continue
        if name == "time_limit":
            lines.append(f"time = \"{format_duration(value)}\"")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
