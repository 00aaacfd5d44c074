"""Reading text, building the vocabulary, splitting and batching.

The batching is part of charlstm's documented contract (README, "Data layout"): the
training text is cut into B contiguous streams of L = n_train // B characters; step k of
an epoch reads ``streams[:, k*T:(k+1)*T]`` and predicts the characters one later.
"""
from __future__ import annotations

import codecs
import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

BLOCK_BYTES = 4 << 20  # files are decoded this many bytes at a time

BUILTIN = "builtin:pydoc"
BUILTIN_PREFIX = "builtin:"  # specs so prefixed name built-in corpora, never files
_GLOB_CHARS = set("*?[")
_SNIFF_BYTES = 8192


def builtin_text() -> str:
    """The English text of the Python language reference that ships with every CPython
    (``pydoc_data.topics``), topics joined in sorted order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[name].strip("\n") + "\n" for name in sorted(topics))


def builtin_corpus(specs):
    """``(path, text)`` of the built-in corpus that ``specs`` name, or None if they name
    files.

    No specs: the Python reference (``builtin:pydoc``). A spec that starts with
    ``builtin:`` is never a file path: ``builtin:pydoc`` is the Python reference again,
    ``builtin:recall:N`` the synthetic recall corpus of ``charlstm.recall``; anything else
    so prefixed is a UserError naming the forms. A built-in spec must be the only spec.
    """
    specs = [str(s) for s in specs]
    if not specs:
        return BUILTIN, builtin_text()
    named = [s for s in specs if s.startswith(BUILTIN_PREFIX)]
    if not named:
        return None
    if len(specs) > 1:
        raise UserError(f"{named[0]} is a built-in corpus and cannot be combined with other "
                        f"paths; give it alone")
    spec = specs[0]
    if spec == BUILTIN:
        return BUILTIN, builtin_text()
    from .recall import parse_recall_spec, recall_name, recall_text

    n = parse_recall_spec(spec)
    return recall_name(n), recall_text(n)


@dataclass(frozen=True)
class CorpusFile:
    path: str
    sha256: str


def resolve_paths(specs, skipped: list | None = None) -> list[Path]:
    """Files named by ``specs``: files, directories (recursed) and glob patterns; sorted,
    without duplicates. A directory walk leaves out hidden entries and files that look
    binary (see ``binary_reason``); each one it leaves out is appended to ``skipped``, if
    given, as "PATH: why", so the caller can say so. A file named directly is never
    left out: it is read, or refused with its own error."""
    found: set[Path] = set()
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = [path]
        elif path.exists():
            matches = [path]
        elif _GLOB_CHARS & set(spec):
            matches = [Path(m) for m in glob.glob(spec, recursive=True)]
            if not matches:
                raise UserError(f"no files match {spec!r}; check the pattern")
        else:
            raise UserError(f"{spec}: no such file or directory")
        for m in matches:
            if m.is_dir():
                files = list(_walk_text_files(m, skipped if skipped is not None else []))
                if not files:
                    raise UserError(f"{m}: directory holds no text files")
                found.update(files)
            elif m.is_file():
                found.add(m)
    return sorted(found, key=lambda p: str(p))


def _walk_text_files(root: Path, skipped: list):
    for dirpath, dirnames, filenames in os.walk(root):
        for d in sorted(dirnames):
            if d.startswith("."):
                skipped.append(f"{Path(dirpath) / d}{os.sep}: a hidden directory")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                skipped.append(f"{p}: a hidden file")
                continue
            if not p.is_file():
                skipped.append(f"{p}: not a regular file")
                continue
            try:
                with open(p, "rb") as f:
                    head = f.read(_SNIFF_BYTES)
            except OSError as e:
                skipped.append(f"{p}: cannot read it ({e.strerror})")
                continue
            reason = binary_reason(head)
            if reason is not None and _bom_encoding(head) is None:
                skipped.append(f"{p}: looks binary ({reason})")
                continue
            yield p


_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"),
)
# Text holds few control bytes other than layout ones (a log may hold a handful of NULs
# or escapes); binary files, and text saved as UTF-16/32 without a byte-order mark, are
# full of them.
_BINARY_SHARE = 1 / 32
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\v\x1b")


def _bom_encoding(head: bytes) -> str | None:
    """"utf-16" or "utf-32" if ``head`` starts with that byte-order mark."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return None


def binary_reason(head: bytes) -> str | None:
    """Why the first bytes of a file say it is not 8-bit text (more than 1/32 of them
    NUL or other control bytes that text does not use for layout), or None. A few such
    bytes are characters like any other: they are read, and reported with the other
    control characters (``control_chars_note``)."""
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if head and controls > len(head) * _BINARY_SHARE:
        return f"{controls} of its first {len(head)} bytes are NUL or other control bytes"
    return None


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")


def file_encoding(path: Path, head: bytes, encoding: str) -> str:
    """The codec that reads ``path``, given its first bytes: ``encoding``, except that a
    UTF-16 or UTF-32 byte-order mark (as Windows editors save "Unicode") is obeyed when
    the encoding asked for is UTF-8, which such a file can never be. Raises UserError for
    content that looks binary under an 8-bit encoding."""
    bom = _bom_encoding(head)
    if bom is not None and _is_utf8(encoding):
        return bom
    if "16" not in encoding and "32" not in encoding:
        reason = binary_reason(head)
        if reason is not None:
            raise UserError(
                f"{path} looks binary ({reason}), not text; give charlstm text files "
                f"(text saved as UTF-16 without a byte-order mark needs --encoding utf-16-le)")
    return encoding


# Codecs offered when a file is not valid in the encoding asked for: the first that
# decodes the bytes is named. cp1252 before latin-1: Windows "ANSI" text uses 0x80-0x9F
# for quotes and dashes, which latin-1 would turn into invisible control characters.
_HINT_CODECS = ("cp1252", "shift_jis", "euc-kr", "gb18030", "big5")


def suggest_encoding(data: bytes) -> str:
    """An encoding that decodes ``data`` to what its writer most likely meant, for an
    error message: the first of cp1252 and a few East Asian codecs that decodes it
    without error, else latin-1 (which decodes any bytes)."""
    for codec in _HINT_CODECS:
        try:
            data.decode(codec)
        except UnicodeDecodeError:
            continue
        return codec
    return "latin-1"


def decoded_blocks(path: Path, encoding: str, several: bool = False):
    """Yield the text of ``path`` block by block (BLOCK_BYTES at a time), without its
    byte-order mark: the one decoder of every file charlstm reads. The codec is
    ``file_encoding``'s. Raises UserError, naming the file and the fix, for an unknown
    encoding, an unreadable file, binary content, and bytes the encoding cannot decode
    (their offset in the file, and an encoding that decodes them). ``several``: the file
    is one of several, which must share one encoding (byte-order marks aside)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8") from None
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        offset = 0
        at_start = True
        decoder = None
        while True:
            try:
                block = f.read(BLOCK_BYTES)
            except OSError as e:
                raise UserError(f"{path}: cannot read it ({e.strerror})") from None
            if decoder is None:
                used = file_encoding(path, block[:_SNIFF_BYTES], encoding)
                decoder = codecs.getincrementaldecoder(used)()
            final = len(block) == 0
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as e:
                hint = "; all files must share one encoding" if several else ""
                raise UserError(
                    f"{path}: not valid {used} at byte {offset - pending + e.start}; pass "
                    f"--encoding with the file's encoding (its bytes decode as "
                    f"--encoding {suggest_encoding(block)}){hint}") from None
            except UnicodeError as e:  # not a decode error: UTF-16/32 without a byte-order mark
                raise UserError(
                    f"{path}: not valid {used} ({e}); name the byte order, e.g. "
                    f"--encoding {used}-le, or pass the file's encoding") from None
            if at_start and text:
                at_start = False
                if text.startswith("\ufeff"):
                    text = text[1:]  # a byte-order mark is not part of the text
            if text:
                yield text
            offset += len(block)
            if final:
                return


def corpus_blocks(paths, encoding: str):
    """The text of ``paths`` in order, block by block, as training reads it: each file
    decoded by ``decoded_blocks``, and a newline put between a file that does not end
    in one and the next file, so files never run into each other mid-line (README,
    "Data layout")."""
    several = len(paths) > 1
    needs_newline = False
    for path in paths:
        last = None
        for text in decoded_blocks(path, encoding, several):
            if needs_newline:
                yield "\n"
                needs_newline = False
            yield text
            last = text
        if last is not None:
            needs_newline = not last.endswith("\n")


def read_text_file(file, encoding: str = "utf-8") -> str:
    """One text file, decoded by ``decoded_blocks`` (so with its errors), and an error for
    a missing file; a ``builtin:...`` spec (see ``builtin_corpus``) gives that corpus's
    text."""
    if str(file).startswith(BUILTIN_PREFIX):
        return builtin_corpus([file])[1]
    path = Path(file)
    if not path.is_file():
        raise UserError(f"{file}: no such file")
    return "".join(decoded_blocks(path, encoding))


# Control characters a text file may hold for its layout; any other that lands in a
# vocabulary is reported, as a hint of text that is not what the user meant.
LAYOUT_CONTROLS = frozenset("\t\n\r\f\v")


def control_chars_note(vocab: "Vocab", counts=None) -> str | None:
    """A line naming the control characters (Unicode category Cc, layout ones aside) in
    ``vocab``, with how often each occurs if ``counts`` (an array indexed by code point)
    is given; None if there are none."""
    import unicodedata

    found = [c for c in vocab.chars if unicodedata.category(c) == "Cc" and c not in LAYOUT_CONTROLS
             and (counts is None or counts[ord(c)] > 0)]
    if not found:
        return None
    shown = ", ".join(repr(c) + (f" x{int(counts[ord(c)]):,}" if counts is not None else "")
                      for c in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    return (f"the corpus holds control characters {shown}{more}; they are trained on like "
            f"any other character (remove them from the text if they are noise)")


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def id_dtype(vocab_size: int):
    """The smallest unsigned dtype that holds every id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    raise ValueError("vocabulary too large")


class Vocab:
    """Sorted distinct characters; a character's id is its index."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.dtype = id_dtype(len(self.chars))

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        codes = _code_points(text)
        present = np.flatnonzero(np.bincount(codes, minlength=1))
        return cls(chr(int(c)) for c in present)

    def __len__(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - set(self.index))

    def require_covers(self, text: str, what: str, fix: str) -> None:
        """Raise outside_vocabulary(what, ..., fix) if ``text`` has characters this
        vocabulary lacks."""
        unknown = self.unknown_chars(text)
        if unknown:
            raise outside_vocabulary(what, unknown, fix)

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text``; every character must be in the vocabulary."""
        codes = _code_points(text)
        lut_size = max(int(codes.max(initial=0)), max((ord(c) for c in self.chars), default=0)) + 1
        lut = np.full(lut_size, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            lut[ord(c)] = i
        ids = lut[codes]
        if ids.size and ids.min() < 0:
            raise outside_vocabulary("the text", self.unknown_chars(text), "")
        return ids.astype(self.dtype)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def code_points(self) -> np.ndarray:
        """The characters as uint32 code points [V], increasing: how checkpoints store
        the vocabulary (a string array would turn U+0000 into an empty string)."""
        return np.array([ord(c) for c in self.chars], dtype="<u4")


def outside_vocabulary(what: str, unknown, fix: str) -> UserError:
    """The one error for text with characters a model's vocabulary lacks: ``what`` names
    the text ("the corpus", "the prime text", a file), ``fix`` says what to do."""
    return UserError(f"{what} has characters outside the model's vocabulary: "
                     f"{describe_chars(sorted(unknown))}" + (f"; {fix}" if fix else ""))


def describe_chars(chars, limit: int = 10) -> str:
    """The first few characters, quoted, for an error message."""
    shown = ", ".join(repr(c) for c in chars[:limit])
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return shown + more


def split(ids: np.ndarray, val_frac: float):
    """Training ids and validation ids: validation is the last floor(N*val_frac)."""
    n_val = int(math.floor(len(ids) * val_frac))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


class Batches:
    """B contiguous streams of the training ids, read T characters per step."""

    def __init__(self, train_ids: np.ndarray, batch_size: int, seq_len: int):
        self.B, self.T = batch_size, seq_len
        self.L = len(train_ids) // batch_size
        self.streams = train_ids[:batch_size * self.L].reshape(batch_size, self.L)
        self.steps_per_epoch = (self.L - 1) // seq_len

    @staticmethod
    def min_chars(batch_size: int, seq_len: int) -> int:
        """Training characters needed for one step of an epoch."""
        return batch_size * (seq_len + 1)

    def chunk(self, k: int):
        """Inputs and targets [B, T] of step k of an epoch."""
        T = self.T
        return self.streams[:, k * T:(k + 1) * T], self.streams[:, k * T + 1:(k + 1) * T + 1]
