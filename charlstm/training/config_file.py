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
import re
import sys
import typing
from pathlib import Path

from charlstm.training.config import DERIVED, OPTION_OF, TrainConfig, format_duration, parse_duration
from charlstm.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older Pythons only
    import tomli as tomllib

TABLE = "train"
# A file may set every TrainConfig field but those a run derives when it starts
# (config.DERIVED), under the option's name where that is not the field's (time_limit:
# time).
EXTRA_KEYS = {option: name for name, option in OPTION_OF.items()}
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
    if name == "corpus":
        for spec in value:
            if re.search(r"[\x00-\x1f]", spec) and not Path(spec).exists():
                raise UserError(
                    f"{where}: key 'corpus' holds {spec!r}, with a control character that an "
                    f"escape such as \\t or \\n made; in \"double quotes\" a backslash starts "
                    f"an escape: write Windows paths in 'single quotes' or with /")
        return tuple(value)
    return value


def load_document(path) -> dict:
    """The TOML document in ``path``, as editors save it: a UTF-8 byte-order mark
    (Notepad), UTF-16 or UTF-32 with a byte-order mark (Notepad's "Unicode"), CRLF or
    old Mac (CR) line endings, no newline at the end and tabs all read. Raises UserError,
    one line naming the file, the problem and the fix, for a missing or unreadable file,
    bytes that are not UTF-8, zero bytes (UTF-16 without a byte-order mark, a tail a crash
    filled with zeros) and TOML syntax errors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    text = _decode(path, data)
    if "\r" in text and "\n" not in text:
        text = text.replace("\r", "\n")  # old Mac line endings; a TOML value never holds a bare CR
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}{_syntax_hint(text, str(e))}") from None


def _syntax_hint(text: str, error: str) -> str:
    """For a TOML syntax error: what the line it names probably needs (Windows paths in
    double quotes, where a backslash starts an escape), else ""."""
    at = re.search(r"at line (\d+)", error)
    lines = text.splitlines()
    line = lines[int(at.group(1)) - 1] if at and 0 < int(at.group(1)) <= len(lines) else ""
    if "\\" in line and '"' in line:
        return (" (in \"double quotes\" a backslash starts an escape: write Windows paths in "
                "'single quotes' or with /)")
    curly = sorted(set(line) & set("\u201c\u201d\u2018\u2019\u201e\u00ab\u00bb"))
    if curly:
        return (f" (the line has typographic quotes {''.join(curly)}, as a word processor or "
                f"an editor's smart quotes make them: TOML needs straight \" or ')")
    if "\u00a0" in line or "\u3000" in line:
        return " (the line has a non-breaking or full-width space where TOML needs a plain space)"
    return ""


def _decode(path: Path, data: bytes) -> str:
    """The text of a TOML file's bytes (see ``load_document``)."""
    from charlstm.data.corpus import _utf16_hint, bom_encoding

    encoding = bom_encoding(data[:4]) or "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        if encoding != "utf-8-sig":
            raise UserError(f"{path}: not valid {encoding} at byte {e.start}, though it starts "
                            f"with a {encoding.upper()} byte-order mark; save it again, as UTF-8") from None
        raise UserError(_not_utf8(path, data, e.start)) from None
    if "\x00" in text:
        stripped = text.rstrip("\x00")
        if "\x00" not in stripped:
            raise UserError(f"{path} ends in {len(text) - len(stripped):,} zero bytes, as a crash "
                            f"while it was saved can leave a file; check the end of the file and "
                            f"save it again") from None
        utf16 = _utf16_hint(data[:4096])
        if utf16:
            raise UserError(f"{path} is UTF-16 without a byte-order mark; save it as UTF-8") from None
        raise UserError(f"{path} holds zero bytes (at character {text.index(chr(0)):,}); it is not "
                        f"a text file: give the TOML file") from None
    return text


def _not_utf8(path: Path, data: bytes, offset: int) -> str:
    """The one-line error for a TOML file (``data``, read from ``path``) that is not UTF-8
    at byte ``offset``. iconv is proposed only for a file wholly in another encoding: a
    UTF-8 file cut inside its last character (a crash while an editor saved it), with
    damaged bytes, or with lines in another encoding would come out of iconv garbled."""
    from charlstm.data.corpus import _survey, suggest_encoding

    where = f"{path}: not UTF-8 at byte {offset}"
    try:
        survey = _survey(path, "utf-8")
    except OSError:  # gone meanwhile: judge by the bytes read
        survey = None
    if survey is not None and survey.kind == "damaged":
        if "cut off" in survey.damage:
            return (f"{where}: {survey.damage}, as a crash while it was saved or a copy cut "
                    f"short leaves a file; check the end of the file and save it again")
        return f"{where}: {survey.damage}; correct the bytes there and save it again"
    if survey is not None and survey.kind == "mixed":
        return (f"{where}: the file mixes UTF-8 with text in {survey.codec}, so converting it "
                f"whole would garble the UTF-8 part; type the lines that are not UTF-8 again "
                f"and save it as UTF-8")
    guess = survey.codec if survey is not None and survey.codec else suggest_encoding(data, "utf-8", whole=True)
    return (f"{where} (it reads as {guess}); TOML files are UTF-8: save it as UTF-8, e.g. "
            f"iconv -f {guess} -t utf-8 {path} > {path}.new && mv {path}.new {path}")


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
    spelled = key.strip().lower().replace("-", "_").lstrip("_")
    if spelled in _FIELDS or spelled in EXTRA_KEYS:
        raise UserError(f"{where}: unknown key {key!r}; write it {spelled} (the option's name "
                        f"with _ for -)")
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
    for name, value in document.items():
        if name == TABLE:
            continue
        if isinstance(value, dict):
            sweep = (" (a sweep file: run it with `charlstm sweep FILE`)"
                     if name in ("grid", "sweep") else "")
            raise UserError(f"{path}: unknown table [{name}]; a run configuration file has one "
                            f"table, [{TABLE}]{sweep}")
        raise UserError(f"{path}: {misplaced_key(name, {TABLE: is_train_key})}")
    table = document.get(TABLE)
    if TABLE in document and not isinstance(table, dict):
        raise UserError(f"{path}: {TABLE!r} is a key here, not a table; write [{TABLE}] on a "
                        f"line of its own, with the options on the lines under it")
    return train_options(table, str(path))


def is_train_key(key: str) -> bool:
    """Whether ``key`` is one a [train] table takes."""
    return key in _FIELDS or key in EXTRA_KEYS


def misplaced_key(key: str, homes: dict) -> str:
    """The message for ``key`` found outside every table (TOML puts the keys above the
    first [table] line in none): the table it belongs in, the first of ``homes`` (table
    name -> test of a key) whose test it passes, or that no table takes it."""
    for table, takes in homes.items():
        if takes(key):
            return (f"key {key!r} is outside every table (keys above the first [table] line "
                    f"are in none); move it under [{table}]")
    tables = ", ".join(f"[{t}]" for t in homes)
    return f"unknown key {key!r}, outside every table; this file's tables are {tables}"


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
    are unset, None, are left out: unset is their default; so is bf16_products in a
    float32 run, where it means nothing and train refuses it)."""
    options = {name: value for name, value in config.to_json_dict().items()
               if name not in DERIVED
               and not (name == "bf16_products" and config.precision != "bfloat16")}
    return write_options(options, comment)
