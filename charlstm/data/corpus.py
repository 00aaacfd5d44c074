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
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlstm.errors import UserError

BLOCK_BYTES = 4 << 20  # files are decoded this many bytes at a time

BUILTIN = "builtin:pydoc"
BUILTIN_PREFIX = "builtin:"  # specs so prefixed name built-in corpora, never files
_GLOB_CHARS = set("*?[")
_SURROGATE = re.compile("[\ud800-\udfff]")
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
    ``builtin:recall:N`` the synthetic recall corpus of ``charlstm.data.recall``; anything else
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
    from charlstm.data.recall import parse_recall_spec, recall_name, recall_text

    n = parse_recall_spec(spec)
    return recall_name(n), recall_text(n)


@dataclass(frozen=True)
class CorpusFile:
    path: str
    sha256: str


def resolve_paths(specs, skipped: list | None = None) -> list[Path]:
    """Files named by ``specs``: files, directories (recursed) and glob patterns; sorted,
    each file once however it is named. A directory walk (and a glob) leaves out hidden
    entries, files that look binary (``binary_reason``), charlstm's own run directories,
    symbolic links to directories (not followed, so a walk never loops) and anything that
    is not a regular file, and a walk editors' backup copies (``is_editor_backup``);
    each one left out is appended to ``skipped``, if given, as
    "PATH: why", so the caller can say so. A path named directly is never left out: it is
    read, or refused with an error naming it (a pipe, a device, a broken link)."""
    skipped = skipped if skipped is not None else []
    found: dict[Path, Path] = {}  # the real file -> the path it was first named by
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = [path]
        elif path.exists():
            if not path.is_file():
                raise UserError(f"{spec} is not a regular file (a pipe or a device); save "
                                f"the text to a file and give that")
            matches = [path]
        elif path.is_symlink():
            raise UserError(f"{spec} is a symbolic link to {os.readlink(path)}, which does "
                            f"not exist (or loops); fix the link or give the file itself")
        elif _GLOB_CHARS & set(spec):
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            if not matches:
                raise UserError(f"no files match {spec!r}; check the pattern")
        else:
            raise UserError(f"{spec}: no such file or directory")
        for m in matches:
            if m.is_dir():
                own: list = []
                files = list(_walk_text_files(m, own))
                skipped.extend(own)
                if not files:
                    left = f" (left out: {'; '.join(own[:3])}{' ...' if len(own) > 3 else ''})" if own else ""
                    raise UserError(f"{m}: directory holds no text files{left}")
                for f in files:
                    found.setdefault(f.resolve(), f)
            elif m.is_file():
                found.setdefault(m.resolve(), m)
            else:
                skipped.append(f"{m}: {'a broken symbolic link' if m.is_symlink() else 'not a regular file'}")
    return sorted(found.values(), key=lambda p: str(p))


def is_editor_backup(name: str) -> bool:
    """Whether a file name is an editor's copy of another file: ``notes.txt~`` (a backup:
    Emacs, vim, gedit) or ``#notes.txt#`` (Emacs's autosave). A walk that read them would
    train on the text twice, old and new."""
    return name.endswith("~") or (len(name) > 2 and name.startswith("#") and name.endswith("#"))


def is_run_directory(path: Path) -> bool:
    """A directory charlstm trains in (its lock file or last checkpoint is there)."""
    return (path / ".lock").is_file() or (path / "last.npz").is_file()


def is_export_folder(path: Path) -> bool:
    """An `export --format hf` folder: its model card and JSON files are text that a walk
    would add to the corpus, changing a run's text under it."""
    from charlstm.model.export import is_hf_folder

    return is_hf_folder(path)


def _walk_text_files(root: Path, skipped: list):
    def unreadable(error: OSError):
        skipped.append(f"{error.filename}: cannot read it ({error.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        kept = []
        for d in sorted(dirnames):
            sub = Path(dirpath) / d
            if d.startswith("."):
                skipped.append(f"{sub}{os.sep}: a hidden directory")
            elif sub.is_symlink():
                skipped.append(f"{sub}{os.sep}: a symbolic link to a directory (not followed; "
                               f"name it to read it)")
            elif is_run_directory(sub):
                skipped.append(f"{sub}{os.sep}: a charlstm run directory")
            elif is_export_folder(sub):
                skipped.append(f"{sub}{os.sep}: a charlstm export (name it to read it)")
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                skipped.append(f"{p}: a hidden file")
                continue
            if is_editor_backup(name):
                skipped.append(f"{p}: an editor's backup or autosave copy (name it to read it)")
                continue
            if not p.is_file():
                skipped.append(f"{p}: {'a broken symbolic link' if p.is_symlink() else 'not a regular file'}")
                continue
            try:
                with open(p, "rb") as f:
                    head = f.read(_SNIFF_BYTES)
            except OSError as e:
                skipped.append(f"{p}: cannot read it ({e.strerror})")
                continue
            reason = binary_reason(head)
            if reason is not None and bom_encoding(head) is None:
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


def bom_encoding(head: bytes) -> str | None:
    """"utf-16" or "utf-32" if ``head`` starts with that byte-order mark (the codec then
    reads the mark and drops it), else None."""
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


def _ascii_compatible(encoding: str) -> bool:
    """Whether ``encoding`` reads ASCII bytes as ASCII (UTF-16 and UTF-32 do not)."""
    try:
        return b"azAZ09 .\n".decode(encoding) == "azAZ09 .\n"
    except (UnicodeError, LookupError):
        return False


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")


def file_encoding(path: Path, head: bytes, encoding: str) -> str:
    """The codec that reads ``path``, given its first bytes: ``encoding``, except that a
    UTF-16 or UTF-32 byte-order mark (as Windows editors save "Unicode") is obeyed when
    the encoding asked for is UTF-8, which such a file can never be. Raises UserError for
    content that looks binary under an 8-bit encoding."""
    bom = bom_encoding(head)
    if bom is not None and _is_utf8(encoding):
        return bom
    if "16" not in encoding and "32" not in encoding:
        reason = binary_reason(head)
        if reason is not None:
            raise UserError(f"{path} looks binary ({reason}), not text; give charlstm text "
                            f"files{_utf16_hint(head)}")
    return encoding


def _utf16_hint(head: bytes) -> str:
    """For bytes that look binary: if they read as UTF-16 without a byte-order mark (NUL
    bytes on every other position, ASCII text between), which byte order names them."""
    even, odd = head[0::2], head[1::2]
    for zeros, order in ((odd, "le"), (even, "be")):
        if zeros and zeros.count(0) > 0.9 * len(zeros):
            return f" (or, if it is UTF-16 without a byte-order mark, pass --encoding utf-16-{order})"
    return ""


def check_text_encoding(encoding: str) -> None:
    """Raise UserError unless ``encoding`` names a codec from bytes to text (Python also
    knows bytes-to-bytes codecs such as base64 and zlib)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8") from None
    if not getattr(info, "_is_text_encoding", True):
        raise UserError(f"{encoding!r} is not a text encoding; use a text encoding such as utf-8")


# Codecs a hint may name when a file is not valid in the encoding asked for: Windows
# "ANSI" code pages for Western, Cyrillic and Greek text, and the East Asian standards.
# cp1252 comes before latin-1: Windows text uses 0x80-0x9F for quotes and dashes, which
# latin-1 turns into invisible control characters.
_HINT_CODECS = ("utf-8", "cp1252", "cp1251", "cp1253", "shift_jis", "euc-jp", "euc-kr",
                "gb18030", "big5", "latin-1")
# The most frequent non-ASCII characters of the languages these codecs serve (accented
# Latin letters and typographic punctuation; Russian, Greek, Japanese kana, simplified and
# traditional Chinese, Korean syllables). Text a person wrote, decoded right, has many of
# them; bytes decoded in the wrong codec land on them only by chance.
_COMMON = set(
    "éèêàâçùûôîïëüöäßñáíóúãõœæ’‘“”–—…«»¡¿°"
    "оеаинтсрвл" "αοειτνσηκπ"
    "のにはをたがでてとしれさいるかうなもすからっこまりくんだよあけおそえきつ"
    "ンストルラリイクドカシロテマタコアジーッ"
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "這個們來為國說時會對於過發後裡"
    "이다는의에하고를가지서한기로으사자대리도있것수그나아들면게보일어시우주해")
_LETTER_SCRIPTS = ("CJK", "HANGUL", "HIRAGANA", "KATAKANA", "CYRILLIC", "GREEK")


def _plausibility(text: str) -> float:
    """How much ``text`` looks like what a person wrote: the mean, over its non-ASCII
    characters, of +1 for one of the languages' most frequent characters (_COMMON), +0.25
    for another letter of a script that does not mix with ASCII letters inside a word, or
    a Latin letter beside an ASCII one, and -1 for anything else (symbols, superscripts,
    controls, a Cyrillic letter inside a Latin word): wrong codecs make the latter."""
    import unicodedata

    total, score = 0, 0.0
    for k, c in enumerate(text):
        if c < "\x80":
            continue
        total += 1
        if c in _COMMON:
            score += 1.0
            continue
        if unicodedata.category(c).startswith("L"):
            script = unicodedata.name(c, "").split(" ")[0]
            ascii_beside = any(0 <= j < len(text) and text[j].isascii() and text[j].isalpha()
                               for j in (k - 1, k + 1))
            if (script == "LATIN") == ascii_beside or (script in _LETTER_SCRIPTS and not ascii_beside):
                score += 0.25
                continue
        score -= 1.0
    return score / total if total else 1.0


def suggest_encoding(data: bytes, asked: str, whole: bool = False) -> str:
    """An encoding that decodes ``data`` (a file's bytes, perhaps cut mid-character at
    the end; ``whole``: up to the file's end, so every byte must decode) to what its
    writer most likely meant, for an error message: of the codecs in _HINT_CODECS other
    than ``asked`` that decode it, the one whose text scores best by ``_plausibility``
    (the first on a tie); latin-1, which decodes any bytes, last."""
    best, best_score = "latin-1", -2.0
    for codec in _HINT_CODECS:
        if codecs.lookup(codec).name == codecs.lookup(asked).name:
            continue
        try:
            # A multi-byte codec takes a lone lead byte at the end as the start of a
            # character to come: it decodes a file cut there only if more is to come.
            text = codecs.getincrementaldecoder(codec)().decode(data, final=whole)
        except UnicodeDecodeError:
            continue
        score = _plausibility(text[:200_000])
        if score > best_score:
            best, best_score = codec, score
    return best


def damaged_utf8(data: bytes) -> str | None:
    """When ``data`` is UTF-8 text with a few bad bytes, a note saying so: no other
    encoding is what was meant. None when the bytes do not look like UTF-8 at all. (A
    file cut inside its last character is told apart as it is read: ``decoded_blocks``.)"""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    good = sum(1 for c in text if c > "\x7f" and c != "\ufffd")
    if bad and good >= 4 * bad:
        return f"it is UTF-8 apart from {bad} damaged byte sequence{'s' if bad > 1 else ''}"
    return None


class NotDecodable(UserError):
    """A file that the encoding it is read with cannot decode; the message names the
    byte and the fix (``encoding_advice``). ``cut_off``: the file's only fault is a
    last character it does not finish, whatever the other files are."""

    def __init__(self, message: str, path: Path, encoding: str, offset: int, cut_off: bool = False):
        super().__init__(message)
        self.path, self.encoding, self.offset, self.cut_off = path, encoding, offset, cut_off


@dataclass
class _Survey:
    """How one file reads, for advice that is right for the whole input."""
    path: Path
    kind: str  # "ascii", "utf-8" (with non-ASCII characters), "bom" (UTF-16/32 by its mark),
    #            "damaged" (UTF-8 with faults), "mixed" (UTF-8 and another encoding), "other"
    codec: str | None = None  # "other" and "mixed": the encoding its other bytes read best as
    example: str | None = None  # "utf-8": its first non-ASCII character
    damage: str | None = None  # "damaged": damaged_utf8's note


def _genuine_utf8(data: bytes) -> bool:
    """Whether the byte sequences of ``data`` that are valid UTF-8 (and not ASCII) read
    as what a person wrote: UTF-8 text, not bytes of another encoding that happen to form
    UTF-8 sequences (in cp1252, "ß“" is the UTF-8 of an N'Ko letter)."""
    text = data.decode("utf-8", errors="replace").replace("\ufffd", " ")
    return not text.isascii() and _plausibility(text[:200_000]) > 0.5


def _survey(path: Path, asked: str) -> _Survey:
    """Read ``path`` through and say how it reads (``_Survey``); ``asked``: the encoding
    the user gave, which a file that is not UTF-8 is taken to be in when it decodes it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    example, block, at_end = None, b"", True
    with open(path, "rb") as f:
        for k, block in enumerate(iter(lambda: f.read(BLOCK_BYTES), b"")):
            if k == 0 and bom_encoding(block[:4]) is not None:
                return _Survey(path, "bom", bom_encoding(block[:4]))
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError:
                at_end = not f.read(1)
                break
            if example is None and not text.isascii():
                example = next(c for c in text if c > "\x7f")
        else:
            try:
                decoder.decode(b"", final=True)
                return _Survey(path, "ascii" if example is None else "utf-8", example=example)
            except UnicodeDecodeError:
                if example is not None:  # UTF-8 text, cut short
                    return _Survey(path, "damaged", damage="it is UTF-8 cut off inside its last character")
                # ASCII, then one byte above 0x7F: more likely "café" in cp1252 than cut UTF-8
    damage = damaged_utf8(block)
    if damage is not None:
        return _Survey(path, "damaged", damage=damage)
    if example is not None or _genuine_utf8(block):
        return _Survey(path, "mixed", suggest_encoding(_not_utf8_bytes(block), "utf-8"))
    codec = (asked if not _is_utf8(asked) and _decodes(path, asked)
             else suggest_encoding(block, "utf-8", whole=at_end))
    return _Survey(path, "other", codec)


def _not_utf8_bytes(data: bytes) -> bytes:
    """``data`` with its valid non-ASCII UTF-8 sequences blanked out: the bytes of the
    other encoding in a file that mixes it with UTF-8, for ``suggest_encoding``."""
    text = data.decode("utf-8", errors="surrogateescape")
    return "".join(c if c < "\x80" else chr(ord(c) - 0xDC00) if "\udc80" <= c <= "\udcff" else " "
                   for c in text).encode("latin-1")


def _decodes(path: Path, encoding: str) -> bool:
    """Whether ``encoding`` decodes the whole of ``path``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(BLOCK_BYTES), b""):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _listed(names: list, limit: int = 3) -> str:
    """"a", "a and b", "a, b and c", or "a, b, c and 4 more"."""
    if len(names) > limit:
        return f"{', '.join(names[:limit])} and {len(names) - limit} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def utf8_misread_note(paths, encoding: str) -> str | None:
    """When ``encoding`` (asked for, not UTF-8) reads files of ``paths`` that are UTF-8
    as other characters ("é" as "Ã©" in cp1252), a line naming them; else None. A file
    counts as UTF-8 when its first BLOCK_BYTES are valid UTF-8 with non-ASCII characters
    (text in another encoding almost never is); byte-order-marked files are read by their
    mark, not by ``encoding``."""
    if _is_utf8(encoding) or not _ascii_compatible(encoding):
        return None
    misread = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(BLOCK_BYTES)
        except OSError:
            continue  # reading it will say why
        if head.isascii() or bom_encoding(head[:4]) is not None:
            continue
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(head)
        except UnicodeDecodeError:
            continue
        example = next((c for c in text if c > "\x7f"), None)
        if example is not None:
            misread.append((str(path), example))
    if not misread:
        return None
    c = misread[0][1]
    wrong = c.encode("utf-8").decode(encoding, errors="replace")
    names = _listed([p for p, _ in misread])
    one = len(misread) == 1
    return (f"{names} {'is' if one else 'are'} valid UTF-8, which --encoding {encoding} reads "
            f"as other characters ({c!r} as {wrong!r}): if {'it is' if one else 'they are'} "
            f"UTF-8, convert the files that are not to UTF-8 (iconv -f {encoding} -t utf-8) "
            f"and drop --encoding")


def encoding_advice(paths, failing: Path, used: str, offset: int, several: bool) -> str:
    """The one-line error for ``failing`` (one of ``paths``, the whole input), which
    ``used`` (the encoding asked for, ASCII-compatible) cannot decode at byte ``offset``:
    what to do, right for every file. An encoding is recommended only if it reads every
    file as written, never one under which files or parts of a file that are valid UTF-8
    would read as other characters: a mix of UTF-8 and cp1252 files is told to convert
    the cp1252 ones, with the command. A file that is UTF-8 apart from damage is told so."""
    surveys = []
    for p in paths:
        try:
            surveys.append(_survey(Path(p), used))
        except OSError:
            if Path(p) == Path(failing):
                raise UserError(f"{failing}: not valid {used} at byte {offset}, and cannot be read "
                                f"again; check the file") from None
            # reading it in its turn will say why
    this = next(s for s in surveys if Path(s.path) == Path(failing))
    where = f"{failing}: not valid {used} at byte {offset}"
    if this.kind == "damaged":
        return f"{where}: {this.damage}; repair or remove the bytes there"
    if this.kind == "mixed":
        return (f"{where}: the file mixes UTF-8 with text in another encoding (the bytes there "
                f"read as {this.codec}), so no --encoding reads all of it as written; save the "
                f"parts that are not UTF-8 again as UTF-8, or remove them")
    utf8 = [s for s in surveys if s.kind in ("utf-8", "mixed", "damaged")]
    bom = [s for s in surveys if s.kind == "bom"]
    other = [s for s in surveys if s.kind == "other"]
    convert = ""
    if other:
        first = other[0]
        convert = (f"convert the files that are not UTF-8 to UTF-8: "
                   f"{_listed([f'{s.path} ({s.codec})' for s in other])}, e.g. iconv -f "
                   f"{first.codec} -t utf-8 {first.path} > {first.path}.new && mv {first.path}.new {first.path}")
    if this.kind in ("ascii", "utf-8"):  # the encoding asked for is the mistake
        if not other:
            return f"{where}: it is UTF-8, as is every file given; pass --encoding utf-8 (the default)"
        return f"{where}: it is UTF-8; {convert}, then pass --encoding utf-8 (the default)"
    if not utf8 and not bom and len({s.codec for s in other}) == 1:
        share = "; all files must share one encoding" if several else ""
        return (f"{where}; pass --encoding with the file's encoding (its bytes read best as "
                f"--encoding {this.codec}){share}")
    if utf8:
        garbled = ""
        sample = next((s for s in utf8 if s.example), None)
        if sample is not None:
            wrong = sample.example.encode("utf-8").decode(this.codec, errors="replace")
            garbled = f" ({sample.example!r} would read as {wrong!r})"
        why = (f"but {_listed([str(s.path) for s in utf8])} {'is' if len(utf8) == 1 else 'are'} "
               f"UTF-8, which --encoding {this.codec} would garble{garbled}")
    elif bom:
        why = (f"but {_listed([str(s.path) for s in bom])} {'is' if len(bom) == 1 else 'are'} "
               f"UTF-16 or UTF-32 (by a byte-order mark), which --encoding {this.codec} would not read")
    else:
        why = "but the files that are not UTF-8 are not all in one encoding, and --encoding takes one"
    return f"{where}: it reads as {this.codec}, {why}; {convert}"


def decoded_blocks(path: Path, encoding: str, several: bool = False):
    """Yield the text of ``path`` block by block (BLOCK_BYTES at a time), without its
    byte-order mark: the one decoder of every file charlstm reads. The codec is
    ``file_encoding``'s. Raises UserError, naming the file and the fix, for an unknown
    encoding, an unreadable file, binary content, and bytes the encoding cannot decode
    (their offset in the file, and an encoding that decodes them). ``several``: the file
    is one of several, which must share one encoding (byte-order marks aside)."""
    check_text_encoding(encoding)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        offset = 0
        at_start = True
        decoder = None
        # Evidence that the encoding is right: a file that is ASCII up to one byte above
        # 0x7F at its end is more likely "café" in cp1252 than UTF-8 cut inside a character.
        decoded_non_ascii = False
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
                where = offset - pending + e.start
                if final and (decoded_non_ascii or not _ascii_compatible(used)):
                    # the only fault: a last character cut short
                    raise NotDecodable(
                        f"{path}: cut off inside a character: "
                        f"{'its last byte is' if pending == 1 else f'its last {pending} bytes are'} "
                        f"the start of a {used} character that the file does not finish (a copy "
                        f"cut short, or `head -c`); give the whole file, or remove the unfinished "
                        f"character (truncate -s -{pending} {path})", path, used, where,
                        cut_off=True) from None
                if used != encoding or not _ascii_compatible(used):
                    raise NotDecodable(
                        f"{path}: not valid {used} at byte {where}; pass --encoding with the "
                        f"file's encoding (its bytes read best as --encoding "
                        f"{suggest_encoding(block, used)})", path, used, where) from None
                raise NotDecodable(encoding_advice([path], path, used, where, several),
                                   path, used, where) from None
            except UnicodeError as e:  # not a decode error: UTF-16/32 without a byte-order mark
                order = (f"name the byte order, e.g. --encoding {used}-le, or "
                         if used.lower().replace("_", "-") in ("utf-16", "utf-32") else "")
                raise UserError(f"{path}: not valid {used} ({e}); {order}pass the file's "
                                f"encoding") from None
            decoded_non_ascii = decoded_non_ascii or not text.isascii()
            if _SURROGATE.search(text):
                raise UserError(
                    f"{path}: --encoding {used} turns it into unpaired surrogates "
                    f"(U+D800-U+DFFF), which are not characters; pass the file's real encoding")
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
        try:
            for text in decoded_blocks(path, encoding, several):
                if needs_newline:
                    yield "\n"
                    needs_newline = False
                yield text
                last = text
        except NotDecodable as e:
            if not several or e.cut_off or e.encoding != encoding or not _ascii_compatible(encoding):
                raise
            raise NotDecodable(encoding_advice(paths, path, e.encoding, e.offset, several),
                               path, e.encoding, e.offset) from None
        if last is not None:
            needs_newline = not last.endswith("\n")


def read_text_file(file, encoding: str = "utf-8") -> str:
    """One text file (or a pipe), decoded by ``decoded_blocks`` (so with its errors), and
    an error for a missing file or a directory; a ``builtin:...`` spec (see
    ``builtin_corpus``) gives that corpus's text."""
    if str(file).startswith(BUILTIN_PREFIX):
        return builtin_corpus([file])[1]
    path = Path(file)
    if path.is_dir():
        raise UserError(f"{file} is a directory; give one text file")
    if not path.exists():
        raise UserError(f"{file}: no such file")
    # Not only a regular file: a pipe (`<(zcat text.gz)`, /dev/stdin) is read once, whole.
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
