"""The synthetic built-in corpus builtin:recall:N."""
import hashlib

import numpy as np
import pytest

from charlstm.data import recall, tokens
from charlstm.training.config import TrainConfig
from charlstm.data.corpus import BUILTIN, CorpusFile, builtin_text
from charlstm.errors import UserError
from charlstm.training.loop import prepare_data
from conftest import run_cli
from corpus_oracle import read_whole

KEYS, FILLERS = set(recall.KEYS), set(recall.FILLERS)


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_alphabets_are_disjoint_and_exclude_the_newline():
    assert len(KEYS) == len(recall.KEYS) == 8 and len(FILLERS) == len(recall.FILLERS) == 8
    assert not KEYS & FILLERS and "\n" not in KEYS | FILLERS


@pytest.mark.parametrize("n", [1, 2, 3, 8, 37, 1000])
def test_layout_and_the_recall_property(n):
    text = recall.recall_text(n)
    width = n + 2
    assert recall.TARGET_CHARS <= len(text) < recall.TARGET_CHARS + width
    assert len(text) % width == 0
    records = np.array(list(text)).reshape(-1, width)
    assert np.all(np.isin(records[:, 0], list(KEYS)))
    assert np.all(np.isin(records[:, 1:n], list(FILLERS)))
    assert np.array_equal(records[:, n], records[:, 0])  # the copy, exactly n back
    assert np.all(records[:, n + 1] == "\n")
    # The same, position by position over the whole text: every key that is not the
    # first character of a line is a copy of the character exactly n back, which is
    # itself a key at the start of a line.
    chars = np.array(list(text))
    is_key = np.isin(chars, list(KEYS))
    line_start = np.zeros(len(chars), bool)
    line_start[0] = True
    line_start[1:] = chars[:-1] == "\n"
    copies = np.flatnonzero(is_key & ~line_start)
    assert len(copies) == len(records)
    assert np.array_equal(chars[copies], chars[copies - n])
    assert np.all(line_start[copies - n])
    # Only the character n back predicts the copy: keys and fillers are independent
    # uniform draws, so nothing else carries the key (spot check: the copy agrees with
    # the keys of the two records before no more often than chance, 1/8).
    if len(records) > 1000:
        for offset in (n + width, n + 2 * width):
            later = copies[copies >= offset]
            agree = np.mean(chars[later] == chars[later - offset])
            assert 0.08 < agree < 0.17, (offset, agree)
        counts = np.unique(records[:, 0], return_counts=True)[1]
        assert len(counts) == 8 and counts.min() > 0.8 * len(records) / 8


def test_deterministic_and_distinct_per_n():
    first = recall.recall_text(8)
    recall.recall_text.cache_clear()
    assert recall.recall_text(8) == first
    # Pinned: a change to the generator would strand every checkpoint trained on it
    # (resume checks the corpus SHA-256).
    assert sha(first) == PINNED_SHA_8
    assert recall.recall_text(9) != first and recall.recall_text(8)[:9] != recall.recall_text(7)[:9]


PINNED_SHA_8 = "9b4ec499d563bdf4c264524f38e2a6bf5609d71640cab69629c531554be384e8"


def test_read_corpus_tokens_and_fingerprint_accept_the_spec():
    spec = "builtin:recall:8"
    text = recall.recall_text(8)
    expected = [CorpusFile(spec, sha(text))]
    corpus = read_whole([spec])
    assert corpus.text == text and corpus.files == expected
    enc = tokens.load_corpus((spec,))
    assert enc.files == expected
    assert enc.vocab.chars == sorted(KEYS | FILLERS | {"\n"})
    assert enc.vocab.decode(enc.ids) == text
    assert tokens.fingerprint((spec,), "utf-8") == expected
    # a token cache directory is not used for built-in corpora, and does no harm
    assert tokens.load_corpus((spec,)).files == expected


def test_prepare_data_trains_on_it():
    config = TrainConfig(corpus=("builtin:recall:5",), hidden_size=4, num_layers=1,
                         seq_len=16, batch_size=4, steps=1)
    data = prepare_data(config)
    assert data.corpus_files == [CorpusFile("builtin:recall:5", sha(recall.recall_text(5)))]
    assert len(data.train_ids) + len(data.val_ids) == len(recall.recall_text(5))


def test_cli_trains_and_resumes_on_it(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "builtin:recall:6", "--hidden-size", "8", "--num-layers", "1",
            "--seq-len", "8", "--batch-size", "4", "--steps", "3", "--quiet", "--out", run)
    info = run_cli("info", run, "--json").stdout
    assert '"path": "builtin:recall:6"' in info
    run_cli("resume", run, "--steps", "5", "--quiet")  # the fingerprint matches
    bad = run_cli("train", "builtin:recall:0", "--steps", "1", "--quiet", "--out", tmp_path / "x",
                  check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "builtin:recall:N" in bad.stderr


MALFORMED = ["builtin:recall", "builtin:recall:", "builtin:recall:0", "builtin:recall:1001",
             "builtin:recall:x", "builtin:recall:-1", "builtin:recall:+8", "builtin:recall:08",
             "builtin:recall: 8", "builtin:recall:8:9", "builtin:recall:8.0",
             "builtin:recall:99999999999999999999", "builtin:", "builtin:foo", "builtin:Recall:8"]


@pytest.mark.parametrize("spec", MALFORMED)
def test_malformed_specs_are_one_line_user_errors(spec):
    for call in (lambda: read_whole([spec]), lambda: tokens.load_corpus([spec]),
                 lambda: tokens.fingerprint([spec], "utf-8")):
        with pytest.raises(UserError, match=r"builtin:recall:N with N an integer from 1 to 1000") as e:
            call()
        assert "\n" not in str(e.value)


def test_a_builtin_spec_cannot_be_combined_with_files(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("abc")
    for specs in (["builtin:recall:8", str(p)], [str(p), "builtin:recall:8"]):
        with pytest.raises(UserError, match="built-in corpus and cannot be combined"):
            read_whole(specs)
        with pytest.raises(UserError, match="built-in corpus and cannot be combined"):
            tokens.load_corpus(specs)


def test_the_default_builtin_corpus_is_unchanged():
    default = read_whole([])
    assert default.files == [CorpusFile(BUILTIN, sha(builtin_text()))]
    assert tokens.fingerprint((), "utf-8") == default.files
    assert tokens.load_corpus(()).files == default.files
    # and can be named explicitly, as checkpoints record it
    assert read_whole([BUILTIN]).files == default.files
    assert tokens.fingerprint((BUILTIN,), "utf-8") == default.files
