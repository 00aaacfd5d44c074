"""Encoding a corpus to ids in bounded memory, and caching the ids on disk.

A corpus is read twice in blocks: the first pass checks and decodes each file, hashes
it and counts its characters (the vocabulary); the second writes ids straight into a
memory-mapped ``.npy``. Memory stays near the size of the ids (one byte a character for
up to 256 distinct characters), not the several copies a whole-text ``str`` would need.

The ids are cached inside the run directory (``RUN/tokens/``), named by a hash of the
files' SHA-256 (their content, not their paths: a resume spells the paths differently),
the encoding and the vocabulary, so resuming a run maps them from disk instead of
encoding again. A run keeps one entry: writing one removes the others, and removing the
run directory removes its cache.

An entry is trusted only after it is checked: its .json records the SHA-256 of the ids,
and a read compares it (about a millisecond a megabyte of ids, less than hashing the
corpus files costs). An entry that does not match (ids zeroed or cut short, a .json
emptied by a crash on a filesystem that does not order its writes) is encoded again from
the corpus, and a note says so.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charlstm.data.corpus import (BLOCK_BYTES, CorpusFile, Vocab, _code_points, builtin_corpus, control_chars_note, corpus_blocks, outside_vocabulary, resolve_paths, utf8_misread_note)
from charlstm.errors import UserError

VOCAB_FIX = "fine-tuning needs text in the characters the model was trained on"

MAX_CODE_POINT = 0x10FFFF
CACHE_DIR_NAME = "tokens"  # inside the run directory
# Part of every entry's key: entries an earlier layout wrote (without a checksum) are
# never read, only replaced.
CACHE_LAYOUT = 2


@dataclass
class EncodedCorpus:
    files: list  # of CorpusFile, in reading order
    vocab: Vocab
    ids: np.ndarray  # possibly a read-only memory map
    key: str = ""  # the cache entry these ids belong under ("" for a built-in corpus)
    notes: list = field(default_factory=list)  # lines to tell the user: the files a walk skipped
    control_note: str | None = None  # the control characters the text holds (corpus.control_chars_note)
    char_counts: list | None = None  # occurrences of each vocabulary character, when counted
    from_cache: bool = False  # the ids were mapped from a checked cache entry


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(BLOCK_BYTES), b""):
                digest.update(block)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    return digest.hexdigest()


def fingerprint(specs, encoding: str) -> list:
    """The CorpusFile list (paths and SHA-256) of ``specs`` without decoding anything."""
    builtin = builtin_corpus(specs)
    if builtin is not None:
        name, text = builtin
        return [CorpusFile(name, hashlib.sha256(text.encode("utf-8")).hexdigest())]
    return [CorpusFile(str(p), _file_sha256(p)) for p in resolve_paths(specs)]


def _cache_key(files, encoding: str, vocab: Vocab | None) -> str:
    """The name of the cache entry for ``files`` (by content: their SHA-256 in reading
    order), ``encoding`` and ``vocab`` (None: the corpus's own)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_LAYOUT, encoding, [f.sha256 for f in files],
                         None if vocab is None else vocab.chars]).encode("utf-8"))
    return h.hexdigest()[:32]


def ids_checksum(ids: np.ndarray) -> str:
    """The SHA-256 of ``ids`` (a 1-D array) as stored: what a cache entry records beside
    them."""
    return hashlib.sha256(np.ascontiguousarray(ids).view(np.uint8)).hexdigest()


class DamagedEntry(Exception):
    """A cache entry that is there but does not check out (the reason is the message)."""


def _load_cached(cache_dir: Path, key: str):
    """(vocab, ids, {code point: count}) of the entry ``key``, its ids checked against
    the checksum beside them; None when there is no entry. Raises DamagedEntry for an
    entry that is there, whole or in part, and does not check out."""
    meta_path, ids_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    if not meta_path.exists() and not ids_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        vocab = Vocab(chr(c) for c in meta["vocab"])
        if meta["key"] != key or len(meta["counts"]) != len(vocab):
            raise ValueError("its description is not this entry's")
        counts = dict(zip(meta["vocab"], meta["counts"]))
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if ids.shape != (meta["length"],) or ids.dtype != vocab.dtype:
            raise ValueError("its ids have another length or type than recorded")
        if ids_checksum(ids) != meta["ids_sha256"]:
            raise ValueError("its ids do not match their checksum")
        return vocab, ids, counts
    except FileNotFoundError as e:
        raise DamagedEntry(f"{Path(e.filename).name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        # ValueError covers a .json cut short and an .npy whose data ends early; a parser
        # may quote the bytes it choked on, over lines.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DamagedEntry(reason if len(reason) <= 80 else reason[:77] + "...") from None


def load_corpus(specs, encoding: str = "utf-8", vocab: Vocab | None = None,
                cache_dir: Path | None = None) -> EncodedCorpus:
    """Encode the files named by ``specs`` (no specs: the built-in corpus; one
    ``builtin:...`` spec: that built-in corpus, never cached) with ``vocab`` (default: the
    corpus's own sorted characters), from the cache in ``cache_dir`` if one is given and
    holds the ids (``write_cache`` writes them, once the run directory is the caller's). Files are joined as ``corpus.corpus_blocks`` joins them. The
    result's notes name the files a directory walk left out; its control_note, the
    control characters the text holds. Raises UserError for unreadable, binary or empty input and for
    characters outside ``vocab``."""
    builtin = builtin_corpus(specs)
    if builtin is not None:
        name, text = builtin
        files = [CorpusFile(name, hashlib.sha256(text.encode("utf-8")).hexdigest())]
        return _encode_in_memory(text, files, vocab)
    skipped: list = []
    paths = resolve_paths(specs, skipped)
    notes = [f"skipped {line}" for line in skipped]
    misread = utf8_misread_note(paths, encoding)
    if misread is not None:
        notes.append(misread)
    files = [CorpusFile(str(p), _file_sha256(p)) for p in paths]
    # A cache hit needs only the hashes. Ids under the corpus's own vocabulary are keyed
    # by files and encoding; ids under another (fine-tuning) vocabulary also by it.
    own_key = _cache_key(files, encoding, None)
    key = own_key if vocab is None else _cache_key(files, encoding, vocab)
    if cache_dir is not None:
        for k in dict.fromkeys((own_key, key)):
            try:
                cached = _load_cached(cache_dir, k)
            except DamagedEntry as e:
                notes.append(f"the token cache {cache_dir / k}.npy was damaged ({e}); the "
                             f"corpus is encoded again from its files")
                continue
            if cached is not None and (vocab is None or cached[0].chars == vocab.chars):
                counts = np.zeros(MAX_CODE_POINT + 1, np.int64)
                for code, n in cached[2].items():
                    counts[code] = n
                return EncodedCorpus(files, cached[0], cached[1], k, notes,
                                     control_chars_note(cached[0], counts),
                                     [cached[2][ord(c)] for c in cached[0].chars], from_cache=True)
    counts, total = np.zeros(MAX_CODE_POINT + 1, np.int64), 0
    for text in corpus_blocks(paths, encoding):
        codes = _code_points(text)
        counts += np.bincount(codes, minlength=MAX_CODE_POINT + 1)
        total += len(codes)
    if total == 0:
        if len(paths) == 1:
            raise UserError(f"{paths[0]} is empty; give a file that contains text")
        raise UserError("the corpus is empty: every file given is empty; give files that contain text")
    present = np.flatnonzero(counts)
    if vocab is None:
        vocab = Vocab(chr(int(c)) for c in present)
    else:
        unknown = set(chr(int(c)) for c in present) - set(vocab.index)
        if unknown:
            joined = (" (a newline goes between files that do not end in one)"
                      if "\n" in unknown and len(paths) > 1 else "")
            raise outside_vocabulary("the corpus", unknown, VOCAB_FIX + joined)
        if [chr(int(c)) for c in present] == vocab.chars:
            key = own_key
    lut = _lookup_table(vocab)
    char_counts = [int(counts[ord(c)]) for c in vocab.chars]

    def fill(ids):
        pos = 0
        for text in corpus_blocks(paths, encoding):
            codes = _code_points(text)
            ids[pos:pos + len(codes)] = lut[codes]
            pos += len(codes)
        assert pos == total

    ids = np.empty(total, vocab.dtype)
    fill(ids)
    return EncodedCorpus(files, vocab, ids, key, notes, control_chars_note(vocab, counts), char_counts)


def write_cache(cache_dir: Path, corpus: EncodedCorpus) -> None:
    """Keep ``corpus``'s ids in ``cache_dir`` (a run's tokens/ directory) for the next
    ``load_corpus`` of the same text, as its only entry (a damaged entry of the same name
    is replaced). Best effort: a cache that cannot be written only costs encoding again."""
    if not corpus.key or corpus.char_counts is None or corpus.from_cache:
        return

    def fill(ids):
        ids[...] = corpus.ids

    _write_cache(cache_dir, corpus.key, corpus.vocab, corpus.char_counts, len(corpus.ids), fill)


def _allocate(path: Path) -> None:
    """Give the file ``path`` its disk blocks, over its whole length, before anything is
    written through a memory map of it. The system makes a mapped file's blocks when a
    page is first written, and on a full disk it then kills the process (SIGBUS, "Bus
    error"); allocated first, a full disk is an OSError here. Raises OSError."""
    if not hasattr(os, "posix_fallocate"):  # not Linux: the map is written as it is
        return
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def _lookup_table(vocab: Vocab) -> np.ndarray:
    lut = np.zeros(MAX_CODE_POINT + 1, vocab.dtype)
    for i, c in enumerate(vocab.chars):
        lut[ord(c)] = i
    return lut


def _encode_in_memory(text: str, files, vocab: Vocab | None) -> EncodedCorpus:
    if vocab is None:
        vocab = Vocab.from_text(text)
    else:
        vocab.require_covers(text, "the corpus", VOCAB_FIX)
    return EncodedCorpus(files, vocab, vocab.encode(text))


def _write_cache(cache_dir: Path, key: str, vocab: Vocab, char_counts: list, total: int,
                 fill) -> np.ndarray:
    """Encode into a memory-mapped temporary file, then rename it into the cache, its
    description (with the ids' checksum) after it; a crash midway leaves no entry that
    ``_load_cached`` accepts. The run's other entries are removed."""
    from charlstm.files import new_temporary

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(cache_dir, f".{key}.", ".npy.tmp")
    except OSError:
        ids = np.empty(total, vocab.dtype)  # an unwritable cache only costs the cache
        fill(ids)
        return ids
    meta_tmp = None
    try:
        ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.dtype, shape=(total,))
        _allocate(tmp)
        fill(ids)
        ids.flush()
        checksum = ids_checksum(ids)
        del ids
        os.replace(tmp, cache_dir / f"{key}.npy")
        meta = {"key": key, "vocab": [ord(c) for c in vocab.chars], "counts": char_counts,
                "length": total, "ids_sha256": checksum}
        meta_tmp = new_temporary(cache_dir, f".{key}.", ".json.tmp")
        meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(meta_tmp, cache_dir / f"{key}.json")
    except OSError:  # no entry at all is better than half of one
        for left in (tmp, meta_tmp, cache_dir / f"{key}.npy", cache_dir / f"{key}.json"):
            try:
                if left is not None:
                    os.unlink(left)
            except OSError:
                pass  # nothing left to clean
        ids = np.empty(total, vocab.dtype)
        fill(ids)
        return ids
    for old in cache_dir.iterdir():
        if old.suffix in (".npy", ".json") and old.stem != key:
            try:
                old.unlink()
            except OSError:
                pass  # only space is lost
    return np.load(cache_dir / f"{key}.npy", mmap_mode="r", allow_pickle=False)
