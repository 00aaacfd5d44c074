"""Creating files the way the rest of the user's files are created.

``tempfile.mkstemp`` makes files only their owner can read (0600) whatever the umask;
a checkpoint renamed from one would stay private to its owner, unlike every other file
the user writes. charlstm's temporaries are created with mode 0666, which the process's
umask narrows as it narrows any file.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


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
