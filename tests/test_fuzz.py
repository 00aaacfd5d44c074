"""Fuzzing the corpus reader and the checkpoint loader: every input ends in a clean
UserError or a correct result; never another exception, never a hang."""
import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.model import checkpoint as ckpt_io
from charlstm.training.config import TrainConfig
from charlstm.data import corpus as corpus_module
from charlstm.errors import CheckpointError, UserError
from charlstm.model.parameters import init_params
from charlstm.training.optim import Optimizer
from charlstm.data.corpus import Vocab, CorpusFile
from charlstm.data.tokens import load_corpus
from corpus_oracle import read_whole

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid_checkpoint_bytes():
    config = TrainConfig(hidden_size=4, num_layers=2, batch_size=2, seq_len=3)
    vocab = Vocab.from_text("abcdef \n")
    params = init_params(config, len(vocab), np.random.default_rng(0))
    opt = Optimizer(config, params)
    state = {k: np.zeros((2, 2, 4), np.float32) for k in ("h", "c")}
    ckpt = ckpt_io.Checkpoint(config=config, corpus_files=[CorpusFile("x.txt", "0" * 64)], vocab=vocab,
                              params=params, optim_step=0, optim_state=opt.state, step=0, epoch=0,
                              epoch_step=0, state=state, rng_state=np.random.default_rng(1).bit_generator.state)
    buf = io.BytesIO()
    np.savez(buf, **ckpt_io.to_arrays(ckpt))
    return buf.getvalue()


def _load(tmp_path, data: bytes):
    p = tmp_path / "fuzz.npz"
    p.write_bytes(data)
    try:
        return ckpt_io.load(p)
    except CheckpointError:
        return None


@FUZZ
@given(data=st.binary(max_size=3000), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "ascii", "cp1252"]),
       block=st.integers(min_value=1, max_value=64))
def test_corpus_reader_on_random_bytes(tmp_path, data, encoding, block):
    """charlstm's one reader (decoded in blocks of any size) gives a clean one-line error
    or the text that decoding the whole file at once gives."""
    p = tmp_path / "f.txt"
    p.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus_module, "BLOCK_BYTES", block)
        try:
            corpus = load_corpus([str(p)], encoding=encoding)
        except UserError as e:
            assert str(e) and "\n" not in str(e)
            return
    assert corpus.vocab.decode(corpus.ids) == read_whole([str(p)], encoding).text
    assert len(corpus.ids) > 0


@FUZZ
@given(data=st.binary(max_size=5000))
def test_loader_on_random_bytes(tmp_path, data):
    assert _load(tmp_path, data) is None or data.startswith(b"PK")


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_loader_on_truncations(tmp_path, valid_checkpoint_bytes, cut):
    cut = cut % len(valid_checkpoint_bytes)
    assert _load(tmp_path, valid_checkpoint_bytes[:cut]) is None


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10**9), st.integers(1, 255)),
                      min_size=1, max_size=8))
def test_loader_on_corrupted_bytes(tmp_path, valid_checkpoint_bytes, flips):
    data = bytearray(valid_checkpoint_bytes)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    result = _load(tmp_path, bytes(data))
    if result is not None:  # a flip in array data can leave a valid, different checkpoint
        assert np.all(np.isfinite(result.params.flat))


@FUZZ
@given(keep=st.lists(st.booleans(), min_size=40, max_size=40))
def test_loader_on_random_key_sets(tmp_path, valid_checkpoint_bytes, keep):
    with zipfile.ZipFile(io.BytesIO(valid_checkpoint_bytes)) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    buf = io.BytesIO()
    kept = 0
    with zipfile.ZipFile(buf, "w") as out:
        for (name, blob), k in zip(members, keep + [True] * len(members)):
            if k:
                out.writestr(name, blob)
                kept += 1
    result = _load(tmp_path, buf.getvalue())
    assert (result is not None) == (kept == len(members))


@FUZZ
@given(key=st.sampled_from(["vocab", "step", "metrics", "state.h", "rng", "config", "decoder.bias"]),
       value=st.one_of(
           st.just(np.zeros((0,), np.float32)), st.just(np.array(3.5)), st.just(np.array("x")),
           st.just(np.arange(6, dtype=np.int64).reshape(2, 3)), st.just(np.array(["ab", "c"])),
           st.just(np.array('{"format_version": 1}')), st.just(np.array("[1, 2]")),
           st.just(np.full(8, np.nan, np.float32))))
def test_loader_on_swapped_arrays(tmp_path, valid_checkpoint_bytes, key, value):
    arrays = dict(np.load(io.BytesIO(valid_checkpoint_bytes), allow_pickle=False))
    arrays[key] = value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    assert _load(tmp_path, buf.getvalue()) is None
