import math
from types import SimpleNamespace

import numpy as np
import pytest

from charlstm.data.corpus import (BUILTIN, Batches, Vocab, builtin_text, id_dtype, resolve_paths, split)
from charlstm.errors import UserError
from charlstm.data.tokens import load_corpus


def read_corpus(specs, encoding="utf-8"):
    """What training reads (tokens.load_corpus), as text and files."""
    encoded = load_corpus(specs, encoding)
    return SimpleNamespace(text=encoded.vocab.decode(encoded.ids), files=encoded.files)


def test_files_dirs_and_globs_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("bbb\n")
    (tmp_path / "a.txt").write_text("aaa\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.txt").write_text("ccc\n")
    (sub / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")
    (tmp_path / ".hidden").write_text("hidden\n")
    corpus = read_corpus([str(tmp_path / "b.txt"), str(sub), str(tmp_path / "a*.txt")])
    assert corpus.text == "aaa\nbbb\nccc\n"
    assert [p.endswith(n) for p, n in zip((f.path for f in corpus.files), ("a.txt", "b.txt", "c.txt"))]
    # a directory is recursed, skipping binary and hidden files
    names = [p.name for p in resolve_paths([str(tmp_path)])]
    assert names == ["a.txt", "b.txt", "c.txt"]


def test_duplicates_are_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    assert read_corpus([str(tmp_path / "a.txt"), str(tmp_path)]).text == "abc"


def test_bom_dropped_and_encoding_option(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode("utf-8"))
    assert read_corpus([str(tmp_path / "bom.txt")]).text == "hello"
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert read_corpus([str(tmp_path / "latin.txt")], encoding="latin-1").text == "caf\xe9"
    with pytest.raises(UserError, match=r"latin\.txt: not valid utf-8 at byte 3.*--encoding"):
        read_corpus([str(tmp_path / "latin.txt")])


def test_utf16_without_a_byte_order_mark_is_a_user_error(tmp_path):
    """Found by fuzzing the reader training uses: the incremental UTF-16 decoder raises a
    bare UnicodeError for a stream without a byte-order mark."""
    (tmp_path / "u16.txt").write_bytes("hi".encode("utf-16-le"))
    with pytest.raises(UserError, match=r"u16\.txt: not valid utf-16 .*--encoding utf-16-le"):
        read_corpus([str(tmp_path / "u16.txt")], encoding="utf-16")
    assert read_corpus([str(tmp_path / "u16.txt")], encoding="utf-16-le").text == "hi"


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_corpus([str(tmp_path / "nope.txt")])
    with pytest.raises(UserError, match="no files match"):
        read_corpus([str(tmp_path / "*.nothing")])


def test_builtin_corpus_is_pydoc_topics():
    corpus = read_corpus([])
    assert corpus.files[0].path == BUILTIN
    assert corpus.text == builtin_text()
    assert 300_000 < len(corpus.text) < 2_000_000
    assert "assert" in corpus.text


def test_vocab_sorted_distinct_and_smallest_dtype():
    v = Vocab.from_text("hello world")
    assert v.chars == sorted(set("hello world"))
    assert v.dtype == np.uint8
    ids = v.encode("hello")
    assert ids.dtype == np.uint8 and v.decode(ids) == "hello"
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16 and id_dtype(70000) == np.uint32
    wide = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.from_text(wide).dtype == np.uint16
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        v.encode("xyz")


def test_split_takes_floor_of_fraction_from_the_end():
    ids = np.arange(1005)
    train, val = split(ids, 0.1)
    assert len(val) == math.floor(1005 * 0.1) == 100
    assert np.array_equal(np.concatenate([train, val]), ids)
    train, val = split(ids, 0.0)
    assert len(val) == 0 and len(train) == 1005


def test_batching_contract():
    ids = np.arange(1000)
    b = Batches(ids, batch_size=4, seq_len=10)
    assert b.L == 250 and b.steps_per_epoch == (250 - 1) // 10
    x, y = b.chunk(3)
    streams = ids[:1000].reshape(4, 250)
    assert np.array_equal(x, streams[:, 30:40])
    assert np.array_equal(y, streams[:, 31:41])
    # the last step of an epoch still has its targets inside the stream
    x, y = b.chunk(b.steps_per_epoch - 1)
    assert y.shape == (4, 10)
