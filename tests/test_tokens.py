"""Streaming encoding and the token cache give exactly what the plain path gives."""
import numpy as np
import pytest

from charlstm.data import tokens
from charlstm.data import corpus
from charlstm.data.corpus import Vocab
from charlstm.errors import UserError
from conftest import make_text
from corpus_oracle import read_whole


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 7)  # multi-byte characters straddle blocks


def test_streaming_matches_plain_decoding(tmp_path, small_blocks):
    (tmp_path / "a.txt").write_bytes("\ufeffcafé ünïcode → ✓ 漢字\n".encode("utf-8") * 5)
    (tmp_path / "b.txt").write_text(make_text(500), encoding="utf-8")
    specs = [str(tmp_path)]
    plain = read_whole(specs)
    enc = tokens.load_corpus(specs)
    assert enc.vocab.chars == Vocab.from_text(plain.text).chars
    assert enc.vocab.decode(enc.ids) == plain.text
    assert [f.sha256 for f in enc.files] == [f.sha256 for f in plain.files]
    assert tokens.fingerprint(specs, "utf-8") == enc.files


def test_decode_error_offset_is_absolute(tmp_path, small_blocks):
    p = tmp_path / "x.txt"
    p.write_bytes(b"a" * 40 + b"\xff" + b"b" * 10)
    with pytest.raises(UserError, match=r"x\.txt: not valid utf-8 at byte 40"):
        tokens.load_corpus([str(p)])


def test_cache_is_written_once_asked_reused_and_survives_damage(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(make_text(3000))
    cache = tmp_path / "cache"
    first = tokens.load_corpus([str(p)], cache_dir=cache)
    assert not cache.exists()  # reading never writes: the run writes once it owns its directory
    tokens.write_cache(cache, first)
    entries = sorted(x.name for x in cache.iterdir())
    assert len(entries) == 2 and not any(n.endswith(".tmp") for n in entries)
    again = tokens.load_corpus([str(p)], cache_dir=cache)
    assert isinstance(again.ids, np.memmap)
    assert np.array_equal(first.ids, again.ids) and again.vocab.chars == first.vocab.chars
    assert again.char_counts == first.char_counts
    # the checkpoint's own vocabulary hits the same entry
    assert np.array_equal(tokens.load_corpus([str(p)], vocab=first.vocab, cache_dir=cache).ids, first.ids)
    expected = np.array(first.ids)
    del first, again
    npy = next(cache.glob("*.npy"))
    npy.unlink()
    npy.write_bytes(b"garbage")
    rebuilt = tokens.load_corpus([str(p)], cache_dir=cache)
    assert np.array_equal(rebuilt.ids, expected)
    # changing the file changes the key, and writing its entry replaces the old one
    p.write_text(make_text(3000, seed=9))
    other = tokens.load_corpus([str(p)], cache_dir=cache)
    assert other.vocab.decode(other.ids) == make_text(3000, seed=9)
    tokens.write_cache(cache, other)
    assert sorted(x.stem for x in cache.iterdir()) == [other.key, other.key]


def test_fine_tuning_vocabulary(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcabc")
    vocab = Vocab("abcdef")
    enc = tokens.load_corpus([str(p)], vocab=vocab, cache_dir=tmp_path / "cache")
    assert list(enc.ids) == [0, 1, 2, 0, 1, 2]
    with pytest.raises(UserError, match="outside the model's vocabulary: 'c'"):
        tokens.load_corpus([str(p)], vocab=Vocab("abz"))
