"""The synthetic built-in corpus ``builtin:recall:N``: a memory test of exactly N steps.

Layout. The text is a sequence of records of N + 2 characters each::

    position   0      1 ... N-1          N      N+1
               K      f_1 ... f_{N-1}    K      "\\n"

``K`` (the key) is one of the 8 characters ``KEYS`` = "ABCDEFGH"; the N - 1 fillers are
drawn from the 8 characters ``FILLERS`` = "abcdefgh" (none for N = 1); every key and
every filler is drawn independently and uniformly. Position N repeats the record's key,
so it is exactly N characters after the character it copies, and the record ends with a
newline. The alphabets are disjoint and neither holds the newline.

What is predictable from what. Every key and filler is an independent uniform draw, so
nothing predicts them (3 bits each). The newline and the fact that position N holds a
key (rather than a filler) follow from the layout, which the previous newline fixes. The
*identity* of the key at position N is a function of the character N positions back and
of nothing else: every other character before it is a newline (constant) or a draw
independent of K. So a model predicts the copies (3 bits each, one character in N + 2)
only if it carries the key N steps. The best model that does not recall reaches
(3 N + 3) / (N + 2) bits per character; the best that does, 3 N / (N + 2) (2.7 and
2.4 for N = 8).

Size and determinism. ceil(200,000 / (N + 2)) records, so 200,000 characters up to less
than one record more. The draws come from SHA-256 in counter mode (block i is
``sha256(f"charlstm-recall:{N}:{i}")``; byte b picks character b mod 8 of its alphabet),
so the text depends on N only: the same on every machine and NumPy or Python version,
which keeps the corpus SHA-256 that checkpoints record (and ``resume`` checks) stable.
"""
from __future__ import annotations

import functools
import hashlib
import math
import re

import numpy as np

from charlstm.errors import UserError

KEYS = "ABCDEFGH"
FILLERS = "abcdefgh"
TARGET_CHARS = 200_000
MIN_N, MAX_N = 1, 1000
PREFIX = "builtin:recall:"
FORM = f"builtin:recall:N with N an integer from {MIN_N} to {MAX_N}"
_SPEC = re.compile(r"builtin:recall:(0|[1-9][0-9]{0,8})")


def recall_name(n: int) -> str:
    """The corpus path recorded for ``builtin:recall:n``."""
    return f"{PREFIX}{n}"


def parse_recall_spec(spec: str) -> int:
    """N of a ``builtin:recall:N`` spec (decimal, no sign or leading zeros); a UserError
    naming the expected form otherwise."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise UserError(f"{spec!r} is not a built-in corpus; use {FORM} "
                        f"(or builtin:pydoc, the default)")
    n = int(m.group(1))
    if not MIN_N <= n <= MAX_N:
        raise UserError(f"{spec!r}: N is {n}; use {FORM}")
    return n


def _random_bytes(n: int, count: int) -> np.ndarray:
    blocks = math.ceil(count / 32)
    data = b"".join(hashlib.sha256(f"charlstm-recall:{n}:{i}".encode("ascii")).digest()
                    for i in range(blocks))
    return np.frombuffer(data, dtype=np.uint8)[:count]


@functools.lru_cache(maxsize=4)
def recall_text(n: int) -> str:
    """The text of ``builtin:recall:n`` (see the module docstring for its exact layout)."""
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_N <= n <= MAX_N:
        raise ValueError(f"N must be an integer from {MIN_N} to {MAX_N}, not {n!r}")
    width = n + 2
    records = math.ceil(TARGET_CHARS / width)
    # Per record, n draws: the key, then the n - 1 fillers.
    draws = _random_bytes(n, records * n).reshape(records, n) % 8
    keys = np.frombuffer(KEYS.encode("ascii"), np.uint8)
    fillers = np.frombuffer(FILLERS.encode("ascii"), np.uint8)
    out = np.empty((records, width), np.uint8)
    out[:, 0] = keys[draws[:, 0]]
    out[:, 1:n] = fillers[draws[:, 1:]]
    out[:, n] = out[:, 0]
    out[:, n + 1] = ord("\n")
    return out.tobytes().decode("ascii")
