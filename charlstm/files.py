"""Writing files the way the rest of the user's files are written, and reading back the
line logs charlstm appends to.

``tempfile.mkstemp`` makes files only their owner can read (0600) whatever the umask;
a checkpoint renamed from one would stay private to its owner, unlike every other file
the user writes. charlstm's temporaries are created with mode 0666 (directories 0777),
which the process's umask narrows as it narrows any file.

Every file charlstm writes whole (checkpoints, exports, plots, a rewritten log) is
written to a temporary beside it, flushed to disk and renamed over the target: a full
disk or a crash leaves the old file or the new one, never a cut one, and no temporary.
A folder (an hf export, TensorBoard events) is built in a temporary directory beside its
target and renamed into place the same way.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


def new_temporary(directory: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file with a fresh random name ``prefix + token + suffix`` in
    ``directory``, with the permissions the umask gives a new file, and return its
    path. Raises OSError when the directory cannot be written."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"no free temporary name in {directory}")


def new_temporary_directory(directory: Path, prefix: str, suffix: str) -> Path:
    """Create an empty directory with a fresh random name in ``directory``, with the
    permissions the umask gives a new directory (``tempfile.mkdtemp`` gives 0700), and
    return its path. Raises OSError when ``directory`` cannot be written."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {directory}")


def temporary_prefix(path: Path) -> str:
    """The start of the names of ``path``'s temporaries: hidden, and naming the file."""
    return f".{Path(path).name}."


@contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None, parents: bool = False):
    """Open a temporary file beside ``path`` (``mode`` "wb" or "w"; text as
    ``encoding``) and yield it. When the block ends normally the file is flushed to disk
    and renamed over ``path``; when it raises, the temporary is deleted and the
    exception goes on, ``path`` untouched. With ``parents``, missing directories above
    ``path`` are made first, and removed again on failure. The file object's ``name``
    is the temporary's path, for checks that read it back before the rename. A path
    that is a symbolic link has its target replaced; one that is a device or a pipe
    (/dev/stdout, a FIFO) is written in place, as nothing can be renamed over it.
    Raises OSError when the directory cannot be written or the data does not fit."""
    path = Path(path)
    if is_special_file(path):
        # A device or a pipe (-o /dev/stdout, a FIFO): renaming over it would put a
        # plain file in its place (as root, even over /dev/null); it is written as it is.
        with open(path, mode, encoding=encoding) as f:
            yield f
        return
    path = through_links(path)
    made = make_parents(path.parent) if parents else []
    tmp = None
    try:
        tmp = new_temporary(path.parent, temporary_prefix(path), ".tmp")
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        _remove_directories(made)
        raise
    fsync_directory(path.parent)


@contextmanager
def atomic_directory(path):
    """Yield a new temporary directory beside ``path`` to fill; when the block ends
    normally its files are flushed to disk and it is renamed to ``path``, which must
    not exist or be an empty directory. When the block raises, the temporary directory
    goes with all it holds, and so do the parents of ``path`` this call created. A
    symbolic link ``path`` has its target made. Raises OSError when a directory cannot
    be written."""
    path = through_links(Path(path))
    made = make_parents(path.parent)
    tmp = None
    try:
        tmp = new_temporary_directory(path.parent, temporary_prefix(path), ".tmp")
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(file)
        if os.name == "nt" and path.is_dir():
            path.rmdir()  # Windows renames onto no directory, even an empty one
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_directories(made)
        raise
    fsync_directory(path.parent)


def is_special_file(path: Path) -> bool:
    """Whether ``path`` (followed through symbolic links) is there and is neither a
    regular file nor a directory: a device such as /dev/null, a pipe, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def through_links(path: Path) -> Path:
    """The path a symbolic link ``path`` leads to (which need not exist yet), else
    ``path``: a file written whole replaces the link's target, and the link stays."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost
    first, so that a failed write can remove them again. Raises OSError."""
    directory = Path(directory)
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    made = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
    except BaseException:
        _remove_directories(made)
        raise
    return made


def _remove_directories(made: list) -> None:
    """Remove the directories ``make_parents`` made, innermost first, while empty."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:
            break  # something else was put there meanwhile


def cannot_write(path, error: OSError, fix: str) -> UserError:
    """The one-line error for a write that failed: what, why (the system's words),
    and ``fix``."""
    return UserError(f"cannot write {path} ({error.strerror or error}); {fix}")


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk, where the system can."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or never made


def print_warning(line: str) -> None:
    """Say ``line`` on standard error as a warning: what a command does with its input
    that the user must know."""
    print(f"Warning: {line}", file=sys.stderr)


@dataclass
class JsonLines:
    """What a log of one JSON object a line holds: the objects that passed, and the
    numbers of the lines that did not (cut by a crash, zero-filled, not JSON)."""

    path: Path
    records: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def skipped_note(self) -> str | None:
        """One line saying which lines were left out and why, or None."""
        if not self.skipped:
            return None
        lines = _ranges(self.skipped)
        which = (f"line {lines}" if len(self.skipped) == 1
                 else f"{len(self.skipped)} lines ({lines})")
        return (f"skipped {which} of {self.path}: not a whole record (cut off or "
                f"zero-filled by a crash?)")


def read_json_lines(path, is_record=lambda record: isinstance(record, dict)) -> JsonLines:
    """The JSON objects of ``path``, one a line, that ``is_record`` accepts; blank lines
    are passed over, and the numbers of every other line (invalid UTF-8, NUL bytes, cut
    JSON, a value ``is_record`` refuses) are collected in ``skipped``. Raises UserError
    when the file cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    found = JsonLines(path)
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            record = None
        if record is not None and is_record(record):
            found.records.append(record)
        else:
            found.skipped.append(number)
    return found


def _ranges(numbers: list) -> str:
    """1, 2, 3, 7 -> "1-3, 7"."""
    spans, start = [], None
    for k, n in enumerate(numbers):
        if start is None:
            start = n
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            spans.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(spans)
