"""Encoding a corpus to ids in bounded memory, and caching the ids on disk.

A corpus is read twice in blocks: the first pass checks and decodes each file, hashes
it and counts its characters (the vocabulary); the second writes ids straight into a
memory-mapped ``.npy``. Memory stays near the size of the ids (one byte a character for
up to 256 distinct characters), not the several copies a whole-text ``str`` would need.

The ids are cached in ``<run directory's parent>/.charlstm-tokens/``, named by a hash of
the files' SHA-256, the encoding and the vocabulary, so resuming a run, or the next run
over the same text, maps them from disk instead of encoding again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import (BLOCK_BYTES, CorpusFile, Vocab, _code_points, builtin_corpus, decoded_blocks,
                     outside_vocabulary, resolve_paths)
from .errors import UserError

VOCAB_FIX = "fine-tuning needs text in the characters the model was trained on"

MAX_CODE_POINT = 0x10FFFF
CACHE_DIR_NAME = ".charlstm-tokens"


@dataclass
class EncodedCorpus:
    files: list  # of CorpusFile, in reading order
    vocab: Vocab
    ids: np.ndarray  # possibly a read-only memory map


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
    h = hashlib.sha256()
    h.update(json.dumps([encoding, [(f.path, f.sha256) for f in files],
                         None if vocab is None else vocab.chars]).encode("utf-8"))
    return h.hexdigest()[:32]


def _load_cached(cache_dir: Path, key: str):
    meta_path, ids_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        vocab = Vocab(meta["vocab"])
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if ids.shape != (meta["length"],) or ids.dtype != vocab.dtype:
            return None
        return vocab, ids
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: encode again


def load_corpus(specs, encoding: str = "utf-8", vocab: Vocab | None = None,
                cache_dir: Path | None = None) -> EncodedCorpus:
    """Encode the files named by ``specs`` (no specs: the built-in corpus; one
    ``builtin:...`` spec: that built-in corpus, never cached) with ``vocab`` (default: the
    corpus's own sorted characters), through the cache if one is given."""
    builtin = builtin_corpus(specs)
    if builtin is not None:
        name, text = builtin
        files = [CorpusFile(name, hashlib.sha256(text.encode("utf-8")).hexdigest())]
        return _encode_in_memory(text, files, vocab)
    paths = resolve_paths(specs)
    several = len(paths) > 1
    files = [CorpusFile(str(p), _file_sha256(p)) for p in paths]
    # A cache hit needs only the hashes. Ids under the corpus's own vocabulary are keyed
    # by files and encoding; ids under another (fine-tuning) vocabulary also by it.
    own_key = _cache_key(files, encoding, None)
    key = own_key if vocab is None else _cache_key(files, encoding, vocab)
    if cache_dir is not None:
        for k in dict.fromkeys((own_key, key)):
            cached = _load_cached(cache_dir, k)
            if cached is not None and (vocab is None or cached[0].chars == vocab.chars):
                return EncodedCorpus(files, cached[0], cached[1])
    counts, total = np.zeros(MAX_CODE_POINT + 1, np.int64), 0
    for path in paths:
        n_file = 0
        for text in decoded_blocks(path, encoding, several):
            codes = _code_points(text)
            counts += np.bincount(codes, minlength=MAX_CODE_POINT + 1)
            n_file += len(codes)
        if n_file == 0 and len(paths) == 1:
            raise UserError(f"{path} is empty; give a file that contains text")
        total += n_file
    if total == 0:
        raise UserError("the corpus is empty: every file given is empty; give files that contain text")
    present = np.flatnonzero(counts)
    if vocab is None:
        vocab = Vocab(chr(int(c)) for c in present)
    else:
        unknown = set(chr(int(c)) for c in present) - set(vocab.index)
        if unknown:
            raise outside_vocabulary("the corpus", unknown, VOCAB_FIX)
        if [chr(int(c)) for c in present] == vocab.chars:
            key = own_key
    lut = _lookup_table(vocab)

    def fill(ids):
        pos = 0
        for path in paths:
            for text in decoded_blocks(path, encoding, several):
                codes = _code_points(text)
                ids[pos:pos + len(codes)] = lut[codes]
                pos += len(codes)
        assert pos == total

    if cache_dir is None:
        ids = np.empty(total, vocab.dtype)
        fill(ids)
        return EncodedCorpus(files, vocab, ids)
    ids = _write_cache(cache_dir, key, vocab, total, fill)
    return EncodedCorpus(files, vocab, ids)


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


def _write_cache(cache_dir: Path, key: str, vocab: Vocab, total: int, fill) -> np.ndarray:
    """Encode into a memory-mapped temporary file, then rename it into the cache; a crash
    midway leaves no half-written cache entry."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy.tmp", dir=cache_dir)
        os.close(fd)
    except OSError:
        ids = np.empty(total, vocab.dtype)  # an unwritable cache only costs the cache
        fill(ids)
        return ids
    try:
        ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.dtype, shape=(total,))
        fill(ids)
        ids.flush()
        del ids
        os.replace(tmp, cache_dir / f"{key}.npy")
        meta = {"vocab": vocab.chars, "length": total}
        meta_tmp = cache_dir / f".{key}.json.tmp"
        meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(meta_tmp, cache_dir / f"{key}.json")
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # nothing left to clean
        ids = np.empty(total, vocab.dtype)
        fill(ids)
        return ids
    return np.load(cache_dir / f"{key}.npy", mmap_mode="r", allow_pickle=False)
